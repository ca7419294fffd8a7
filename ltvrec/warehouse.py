"""Warehouse I/O for DuckDB (embedded default) and PostgreSQL, behind one small interface.

Bulk paths: DuckDB scans Arrow tables directly; PostgreSQL loads with `COPY ... FROM STDIN` fed from
Arrow batches written as CSV. `publish` replaces one run date's rows of a serving table inside a single
transaction, so readers see the old rows or the new rows, never a mix, and a rerun never duplicates.
Identifiers are never taken from input: they are checked against a strict pattern before use.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")

SERVING_DDL = {
    "recommendations": """(
        run_date DATE NOT NULL, user_id VARCHAR NOT NULL, rank INTEGER NOT NULL, item_id VARCHAR NOT NULL,
        score DOUBLE PRECISION NOT NULL, model_name VARCHAR NOT NULL, model_version VARCHAR NOT NULL,
        mlflow_run_id VARCHAR NOT NULL, generated_at TIMESTAMP NOT NULL)""",
    "ltv_estimates": """(
        run_date DATE NOT NULL, user_id VARCHAR NOT NULL, horizon_days INTEGER NOT NULL,
        p_active DOUBLE PRECISION NOT NULL, expected_value DOUBLE PRECISION NOT NULL,
        model_version VARCHAR NOT NULL, mlflow_run_id VARCHAR NOT NULL, generated_at TIMESTAMP NOT NULL)""",
}

PG_TYPES = {
    pa.string(): "TEXT", pa.large_string(): "TEXT", pa.int64(): "BIGINT", pa.int32(): "INTEGER",
    pa.float64(): "DOUBLE PRECISION", pa.float32(): "REAL", pa.bool_(): "BOOLEAN", pa.date32(): "DATE",
}


def qualified(schema: str, table: str) -> str:
    for name in (schema, table):
        if not IDENT.match(name):
            raise ValueError(f"invalid SQL identifier {name!r}")
    return f'"{schema}"."{table}"'


def connect(url: str) -> "Warehouse":
    if url.startswith("duckdb://"):
        return DuckDBWarehouse(url)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresWarehouse(url)
    raise ValueError(f"unsupported warehouse URL {url!r}: use duckdb:///path or postgresql://...")


class Warehouse:
    url: str
    kind: str

    def replace_table(self, schema: str, table: str, data: pa.Table) -> None:
        raise NotImplementedError

    def query(self, sql: str, params: tuple = ()) -> pa.Table:
        raise NotImplementedError

    def publish(self, table: str, run_date: str, data: pa.Table) -> int:
        raise NotImplementedError

    def export_parquet(self, schema: str, table: str, path: Path) -> int:
        data = self.query(f"select * from {qualified(schema, table)}")
        pq.write_table(data, path)
        return data.num_rows

    def dbt_target(self) -> tuple[str, dict[str, str]]:
        """dbt `--target` name and the environment its profile reads."""
        raise NotImplementedError


class DuckDBWarehouse(Warehouse):
    kind = "duckdb"

    def __init__(self, url: str):
        # SQLAlchemy convention: duckdb:///relative/file.duckdb, duckdb:////absolute/file.duckdb
        self.url = url
        if not url.startswith("duckdb:///") or url == "duckdb:///":
            raise ValueError(f"duckdb URL needs a file path (duckdb:////abs/path.duckdb), got {url!r}")
        self.path = Path(url.removeprefix("duckdb:///")).resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _connect(self):
        import duckdb

        return duckdb.connect(str(self.path))

    def replace_table(self, schema: str, table: str, data: pa.Table) -> None:
        name = qualified(schema, table)
        with self._connect() as con:
            con.execute(f'create schema if not exists "{schema}"')
            con.register("incoming", data)
            con.execute(f"create or replace table {name} as select * from incoming")

    def query(self, sql: str, params: tuple = ()) -> pa.Table:
        with self._connect() as con:
            return con.sql(sql, params=list(params) or None).to_arrow_table()

    def export_parquet(self, schema: str, table: str, path: Path) -> int:
        with self._connect() as con:
            con.execute(f"copy (select * from {qualified(schema, table)}) to '{Path(path)}' (format parquet)")
            return con.execute(f"select count(*) from {qualified(schema, table)}").fetchone()[0]

    def publish(self, table: str, run_date: str, data: pa.Table) -> int:
        name = qualified("serving", table)
        with self._connect() as con:
            con.execute('create schema if not exists "serving"')
            con.execute(f"create table if not exists {name} {SERVING_DDL[table]}")
            con.register("incoming", data)
            con.execute("begin transaction")
            try:
                con.execute(f"delete from {name} where run_date = cast(? as date)", [run_date])
                con.execute(f"insert into {name} by name select * from incoming")
                con.execute("commit")
            except BaseException:
                con.execute("rollback")
                raise
        return data.num_rows

    def dbt_target(self) -> tuple[str, dict[str, str]]:
        return "duckdb", {"LTVREC_DUCKDB_PATH": str(self.path)}


class PostgresWarehouse(Warehouse):
    kind = "postgres"

    def __init__(self, url: str):
        self.url = url

    def _connect(self):
        import psycopg

        return psycopg.connect(self.url)

    def _copy_in(self, cur, name: str, columns: list[str], data: pa.Table) -> None:
        cols = ", ".join(f'"{c}"' for c in columns)
        with cur.copy(f"copy {name} ({cols}) from stdin (format csv)") as copy:
            for batch in data.select(columns).to_batches(max_chunksize=100_000):
                buf = io.BytesIO()
                pacsv.write_csv(batch, buf, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
                copy.write(buf.getvalue())

    def replace_table(self, schema: str, table: str, data: pa.Table) -> None:
        name = qualified(schema, table)
        columns = []
        for field in data.schema:
            if not IDENT.match(field.name):
                raise ValueError(f"invalid column name {field.name!r}")
            pg_type = "TIMESTAMP" if pa.types.is_timestamp(field.type) else PG_TYPES.get(field.type, "TEXT")
            columns.append(f'"{field.name}" {pg_type}')
        with self._connect() as con, con.cursor() as cur:
            cur.execute(f'create schema if not exists "{schema}"')
            cur.execute(f"drop table if exists {name} cascade")
            cur.execute(f"create table {name} ({', '.join(columns)})")
            self._copy_in(cur, name, data.column_names, data)

    def query(self, sql: str, params: tuple = ()) -> pa.Table:
        with self._connect() as con, con.cursor() as cur:
            cur.execute(sql, params)
            names = [d.name for d in cur.description]
            rows = cur.fetchall()
        return pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)})

    def publish(self, table: str, run_date: str, data: pa.Table) -> int:
        name = qualified("serving", table)
        with self._connect() as con:  # one transaction: commit on success, rollback on any error
            with con.cursor() as cur:
                cur.execute('create schema if not exists "serving"')
                cur.execute(f"create table if not exists {name} {SERVING_DDL[table]}")
                cur.execute(f"create temp table incoming (like {name}) on commit drop")
                self._copy_in(cur, "incoming", data.column_names, data)
                cur.execute(f"delete from {name} where run_date = %s::date", (run_date,))
                cur.execute(f"insert into {name} select * from incoming")
        return data.num_rows

    def dbt_target(self) -> tuple[str, dict[str, str]]:
        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(self.url)  # also understands ?host=/socket/dir URIs
        return "postgres", {
            "LTVREC_PG_HOST": str(info.get("host") or "localhost"),
            "LTVREC_PG_PORT": str(info.get("port") or 5432),
            "LTVREC_PG_USER": str(info.get("user") or ""),
            "LTVREC_PG_PASSWORD": str(info.get("password") or ""),
            "LTVREC_PG_DBNAME": str(info.get("dbname") or "postgres"),
        }
