"""Warehouse I/O for DuckDB (embedded default) and PostgreSQL, behind one small interface.

Bulk paths: DuckDB scans Arrow tables directly; PostgreSQL loads with `COPY ... FROM STDIN` fed from
Arrow batches written as CSV. `publish` bulk-loads each serving table's new rows into a staging table, then
replaces the run date's rows of every serving table in ONE transaction, together with a row of
`ops.published_runs`: readers see the old rows or the new rows of all tables, never a mix, a rerun never
duplicates, and a crash at any point leaves the previous rows. DuckDB stages in a temporary table and swaps by
delete + insert; PostgreSQL partitions the serving tables by run_date and swaps the date's partition for the
staging table (metadata only, so the publish costs about one plain COPY).
Identifiers are never taken from input: they are checked against a strict pattern before use.
"""

from __future__ import annotations

import io
import re
import uuid
from datetime import date, datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ltvrec.config import TABLE_NAME
from ltvrec.serving import ADDED_COLUMNS, SERVING_SCHEMAS

IDENT = re.compile(f"^{TABLE_NAME}$")

# One row per successful publish: what the next run's raw-volume gate compares with.
PUBLISHED_RUNS_DDL = """(
    run_date DATE NOT NULL, model_name VARCHAR NOT NULL, run_id VARCHAR NOT NULL, raw_events BIGINT NOT NULL,
    published_at TIMESTAMP NOT NULL)"""

PG_TYPES = {
    pa.string(): "TEXT", pa.large_string(): "TEXT", pa.int64(): "BIGINT", pa.int32(): "INTEGER",
    pa.float64(): "DOUBLE PRECISION", pa.float32(): "REAL", pa.bool_(): "BOOLEAN", pa.date32(): "DATE",
    pa.timestamp("us"): "TIMESTAMP",
}


def serving_ddl(table: str) -> str:
    """Column definitions of a serving table, from its Arrow schema (every column NOT NULL)."""
    columns = [f'"{f.name}" {PG_TYPES[f.type]} NOT NULL' for f in SERVING_SCHEMAS[table]]
    return "(" + ", ".join(columns) + ")"


def quoted(name: str) -> str:
    if not IDENT.match(name):
        raise ValueError(f"invalid SQL identifier {name!r}")
    return f'"{name}"'


def qualified(schema: str, table: str) -> str:
    return f"{quoted(schema)}.{quoted(table)}"


def connect(url: str) -> "Warehouse":
    if url.startswith("duckdb://"):
        return DuckDBWarehouse(url)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresWarehouse(url)
    raise ValueError(f"unsupported warehouse URL {url!r}: use duckdb:///path or postgresql://...")


def _check_tables(tables: dict) -> None:
    for table in tables:
        if table not in SERVING_SCHEMAS:
            raise ValueError(f"unknown serving table {table!r}: one of {', '.join(SERVING_SCHEMAS)}")


def _add_new_columns(cur, table: str, placeholder: str) -> None:
    """Add the columns of SERVING_SCHEMAS a serving table made by an older ltvrec lacks; its rows get the value
    ADDED_COLUMNS gives (for ltv_model: ziln, the only family published before)."""
    cur.execute("select column_name from information_schema.columns where table_schema = 'serving' and "
                f"table_name = {placeholder}", [table])
    have = {row[0] for row in cur.fetchall()}
    for f in SERVING_SCHEMAS[table]:
        if f.name not in have:
            default = ADDED_COLUMNS[(table, f.name)]
            if not IDENT.match(default):
                raise ValueError(f"invalid default {default!r} for serving.{table}.{f.name}")
            cur.execute(f"alter table {qualified('serving', table)} add column {quoted(f.name)} {PG_TYPES[f.type]} "
                        f"default '{default}'")


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _batches(data: pa.Table | pa.RecordBatchReader, size: int = 100_000):
    return data.to_batches(max_chunksize=size) if isinstance(data, pa.Table) else data


def _csv_chunks(data: pa.Table | pa.RecordBatchReader, ahead: int = 2):
    """CSV bytes of each Arrow batch, encoded by a helper thread (pyarrow releases the GIL) while the caller
    sends the previous ones: the encoding overlaps the server's COPY instead of adding to it."""
    import queue
    import threading

    chunks: queue.Queue = queue.Queue(maxsize=ahead)
    done = object()
    stop = threading.Event()

    def put(item) -> bool:  # False once the caller has stopped reading
        while not stop.is_set():
            try:
                chunks.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def encode() -> None:
        try:
            for batch in _batches(data):
                buf = io.BytesIO()
                pacsv.write_csv(batch, buf, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
                if not put(buf.getvalue()):
                    return
            put(done)
        except BaseException as exc:  # re-raised in the caller's thread
            put(exc)

    worker = threading.Thread(target=encode, daemon=True)
    worker.start()
    try:
        while (item := chunks.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


def _wrong_date_error(table: str, run_date: str, n: int) -> ValueError:
    return ValueError(f"publish {table} for run_date {run_date}: {n} row(s) have another or no run_date; nothing published")


class Warehouse:
    url: str
    kind: str
    placeholder = "?"

    def replace_table(self, schema: str, table: str, data: pa.Table) -> None:
        raise NotImplementedError

    def query(self, sql: str, params: tuple = ()) -> pa.Table:
        raise NotImplementedError

    def publish(self, run_date: str, tables: dict[str, pa.Table | pa.RecordBatchReader],
                record: dict | None = None) -> dict[str, int]:
        """Replace `run_date`'s rows of each serving table with `tables[name]` (all in one transaction) and, when
        given, add `record` (model_name, run_id, raw_events) to ops.published_runs; returns rows per table."""
        raise NotImplementedError

    def create_serving(self) -> None:
        """The serving tables and ops.published_runs, where they do not exist yet: before the first publish, dbt's
        outcome models read them."""
        raise NotImplementedError

    def table_exists(self, schema: str, table: str) -> bool:
        qualified(schema, table)
        found = self.query("select count(*) as n from information_schema.tables where table_schema = ? and table_name = ?"
                           .replace("?", self.placeholder), (schema, table))
        return found.to_pylist()[0]["n"] > 0

    def columns(self, schema: str, table: str) -> dict[str, str]:
        """{column name: its type, lower case} of a table or view, in table order; empty when there is none."""
        qualified(schema, table)
        found = self.query("select column_name, data_type from information_schema.columns where table_schema = ? "
                           "and table_name = ? order by ordinal_position".replace("?", self.placeholder),
                           (schema, table))
        return {r["column_name"]: r["data_type"].lower() for r in found.to_pylist()}

    def last_published(self, model_name: str) -> dict | None:
        """The latest ops.published_runs row of a registered model, or None before its first publish."""
        if not self.table_exists("ops", "published_runs"):
            return None
        rows = self.query("select * from ops.published_runs where model_name = ? order by published_at desc limit 1"
                          .replace("?", self.placeholder), (model_name,)).to_pylist()
        return rows[0] if rows else None

    def create_schemas(self, names: list[str]) -> None:
        """Create the schemas of `names` that do not exist yet. Called before tasks that may run at the same time
        build into them (dbt's models): two concurrent `create schema if not exists` of one name can fail on
        PostgreSQL (duplicate key in pg_namespace)."""
        with self._connect() as con:
            for name in names:
                con.execute(f"create schema if not exists {quoted(name)}")

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

    def publish(self, run_date: str, tables: dict[str, pa.Table | pa.RecordBatchReader],
                record: dict | None = None) -> dict[str, int]:
        _check_tables(tables)
        counts = {}
        with self._connect() as con:
            self._create_serving(con, list(tables))
            for table, data in tables.items():  # the bulk load, into connection-private staging tables
                con.register("incoming", data)
                con.execute(f'create or replace temp table "staged_{table}" as select * from incoming')
                con.unregister("incoming")
                counts[table], wrong = con.execute(
                    f'select count(*), count(*) filter (where run_date is distinct from cast(? as date)) from "staged_{table}"',
                    [run_date]).fetchall()[0]
                if wrong:
                    raise _wrong_date_error(table, run_date, wrong)
            con.execute("begin transaction")
            try:
                for table in tables:
                    name = qualified("serving", table)
                    con.execute(f"delete from {name} where run_date = cast(? as date)", [run_date])
                    con.execute(f'insert into {name} by name select * from "staged_{table}"')
                if record is not None:
                    con.execute("insert into ops.published_runs values (cast(? as date), ?, ?, ?, ?)",
                                [run_date, record["model_name"], record["run_id"], int(record["raw_events"]), _utcnow()])
                con.execute("commit")
            except BaseException:
                con.execute("rollback")
                raise
        return counts

    def create_serving(self) -> None:
        with self._connect() as con:
            self._create_serving(con, list(SERVING_SCHEMAS))

    @staticmethod
    def _create_serving(con, tables: list[str]) -> None:
        for schema, table, ddl in [("serving", t, serving_ddl(t)) for t in tables] + [("ops", "published_runs",
                                                                                          PUBLISHED_RUNS_DDL)]:
            con.execute(f'create schema if not exists "{schema}"')
            con.execute(f"create table if not exists {qualified(schema, table)} {ddl}")
            if schema == "serving":
                _add_new_columns(con, table, "?")

    def dbt_target(self) -> tuple[str, dict[str, str]]:
        return "duckdb", {"LTVREC_DUCKDB_PATH": str(self.path)}


class PostgresWarehouse(Warehouse):
    kind = "postgres"
    placeholder = "%s"

    def __init__(self, url: str):
        self.url = url

    def _connect(self):
        import psycopg

        return psycopg.connect(self.url)

    def _copy_in(self, cur, name: str, data: pa.Table | pa.RecordBatchReader) -> None:
        for column in data.schema.names:
            if not IDENT.match(column):
                raise ValueError(f"invalid column name {column!r}")
        cols = ", ".join(f'"{c}"' for c in data.schema.names)
        with cur.copy(f"copy {name} ({cols}) from stdin (format csv)") as copy:
            for chunk in _csv_chunks(data):
                copy.write(chunk)

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
            self._copy_in(cur, name, data)

    def query(self, sql: str, params: tuple = ()) -> pa.Table:
        with self._connect() as con, con.cursor() as cur:
            cur.execute(sql, params)
            names = [d.name for d in cur.description]
            rows = cur.fetchall()
        return pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)})

    def publish(self, run_date: str, tables: dict[str, pa.Table | pa.RecordBatchReader],
                record: dict | None = None) -> dict[str, int]:
        """Serving tables are partitioned by run_date, one partition per date. In one transaction, each table's
        new rows are COPYed into a fresh staging table, which then REPLACES the date's partition (detach and drop
        the old one, attach the staging table): the bulk load is a plain COPY, the swap only changes metadata."""
        _check_tables(tables)
        day = date.fromisoformat(run_date)
        counts = {}
        with self._connect() as con, con.cursor() as cur:
            self._create_serving(cur, list(tables))
            con.commit()
            staged = {}
            for table, data in tables.items():  # the bulk load (the serving tables are not locked meanwhile)
                staged[table] = f"{table}_staging_{uuid.uuid4().hex[:12]}"
                cur.execute(f"create table {qualified('serving', staged[table])} (like {qualified('serving', table)})")
                self._copy_in(cur, qualified("serving", staged[table]), data)
                cur.execute(f"select count(*), count(*) filter (where run_date is distinct from %s::date) "
                            f"from {qualified('serving', staged[table])}", (run_date,))
                counts[table], wrong = cur.fetchone()
                if wrong:
                    raise _wrong_date_error(table, run_date, wrong)
            for table in tables:  # the swap: readers wait here for the commit, then see the new partition
                parent, partition = qualified("serving", table), qualified("serving", f"{table}_p{day:%Y%m%d}")
                cur.execute("select to_regclass(%s) is not null", (partition,))
                if cur.fetchone()[0]:
                    cur.execute(f"alter table {parent} detach partition {partition}")
                    cur.execute(f"drop table {partition}")
                cur.execute(f"alter table {qualified('serving', staged[table])} rename to {partition.split('.')[1]}")
                # DDL takes no bind parameters: `day` is a parsed date, so its ISO text is safe to inline
                cur.execute(f"alter table {parent} attach partition {partition} for values in ('{day.isoformat()}')")
            if record is not None:
                cur.execute("insert into ops.published_runs values (%s::date, %s, %s, %s, %s)",
                            (run_date, record["model_name"], record["run_id"], int(record["raw_events"]), _utcnow()))
            con.commit()
        return counts

    def create_serving(self) -> None:
        with self._connect() as con, con.cursor() as cur:
            self._create_serving(cur, list(SERVING_SCHEMAS))
            con.commit()

    def _create_serving(self, cur, tables: list[str]) -> None:
        """Serving tables partitioned by run_date (and ops.published_runs), where they do not exist yet."""
        for schema in ("serving", "ops"):
            cur.execute(f'create schema if not exists "{schema}"')
        cur.execute(f"create table if not exists {qualified('ops', 'published_runs')} {PUBLISHED_RUNS_DDL}")
        for table in tables:
            cur.execute(f"create table if not exists {qualified('serving', table)} {serving_ddl(table)} "
                        f"partition by list (run_date)")
            cur.execute("select c.relkind from pg_class c join pg_namespace n on n.oid = c.relnamespace "
                        "where n.nspname = 'serving' and c.relname = %s", (table,))
            if cur.fetchone()[0] != "p":
                raise RuntimeError(f"serving.{table} exists but is not partitioned by run_date (made by an older "
                                   f"ltvrec): rename it, publish again, then copy its old dates in")
            _add_new_columns(cur, table, "%s")

    def create_reader_role(self, password: str, role: str = "ltvrec_reader") -> None:
        """A login role that can read `serving` (now and tables created later) and nothing else."""
        from psycopg import sql

        if not IDENT.match(role):
            raise ValueError(f"invalid role name {role!r}")
        ident = sql.Identifier(role)
        with self._connect() as con, con.cursor() as cur:
            cur.execute("select 1 from pg_roles where rolname = %s", (role,))
            verb = "alter" if cur.fetchone() else "create"
            cur.execute(sql.SQL(verb + " role {} with login nosuperuser nocreatedb nocreaterole password {}")
                        .format(ident, sql.Literal(password)))
            cur.execute('create schema if not exists "serving"')
            cur.execute(sql.SQL('grant usage on schema "serving" to {}').format(ident))
            cur.execute(sql.SQL('grant select on all tables in schema "serving" to {}').format(ident))
            cur.execute(sql.SQL('alter default privileges in schema "serving" grant select on tables to {}').format(ident))

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
