"""`ltvrec backfill`: one in-process DAG run per date, each seeing only the events before its date and publishing
its own partition of the serving tables. The events are the warehouse source's: tables a team loads into the
warehouse (synthetic data in `shop.events` and `shop.items`), which every run reads where they are."""

import json
from datetime import date, datetime, timedelta, timezone

import duckdb
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ltvrec import synthetic
from ltvrec.rundir import RunDir
from test_e2e import CONF, ltvrec

pytestmark = pytest.mark.slow
RUN_DATES = ["2026-06-17", "2026-06-24", "2026-07-01"]  # the synthetic history ends on 2026-06-30
WAREHOUSE = ("--source", "warehouse", "--raw-schema", "shop")


def load_shop(home) -> None:
    """The team's tables: the synthetic shop's events with a load time (an hour ago) and no row numbers, and its
    catalogue, in schema shop of the warehouse the runs use."""
    events, items = (pq.read_table(p) for p in synthetic.write(home / "shop", n_users=200, n_items=60, days=365))
    loaded_at = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(hours=1)
    with duckdb.connect(str(home / "warehouse.duckdb")) as con:
        con.execute("create schema shop")
        con.execute("create table shop.events as select *, ? as loaded_at from events", [loaded_at])
        con.execute("create table shop.items as select * from items")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("ltvrec_backfill")
    load_shop(home)
    done = ltvrec(home, "backfill", "--from", RUN_DATES[0], "--to", "2026-07-03", "--every", "7d", *WAREHOUSE,
                  "--epochs", "1", "--top-n", "5", "--no-item-text", "--conf", CONF)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    assert f"backfilled 3 date(s): {', '.join(RUN_DATES)}" in done.stdout
    return home


@pytest.fixture(scope="module")
def runs(home) -> dict[str, RunDir]:
    found = [RunDir(p.parent) for p in (home / "runs").glob("*/summary.json")]
    return {run.run_date: run for run in found}


def published(home, sql: str):
    with duckdb.connect(str(home / "warehouse.duckdb")) as con:
        return con.sql(sql).fetchall()


def test_each_date_has_its_own_run_and_partition(home, runs):
    assert sorted(runs) == RUN_DATES
    rows = dict(published(home, "select cast(run_date as varchar), count(*) from serving.recommendations group by 1"))
    assert sorted(rows) == RUN_DATES
    for run_date, run in runs.items():
        users = pq.read_table(run.marts / "fct_events.parquet", columns=["user_id"]).column("user_id")
        assert rows[run_date] == 5 * len(pc.unique(users))  # every user seen before the date, top 5 each
        assert json.loads(run.summary_file.read_text())["run_date"] == run_date
    assert [r[0] for r in published(home, "select cast(run_date as varchar) from ops.published_runs order by 1")] \
        == RUN_DATES


def test_no_run_saw_an_event_of_its_date_or_later(runs):
    for run_date, run in runs.items():
        cutoff = date.fromisoformat(run_date)
        split = run.split()
        assert split["end"] == f"{run_date}T00:00:00" and split["as_of"] == (cutoff - timedelta(days=1)).isoformat()
        events = pq.read_table(run.marts / "fct_events.parquet", columns=["event_ts"]).column("event_ts")
        assert pc.max(events).as_py().date() < cutoff
        deferred = run.stage("quarantine")["rows"]["deferred"]
        assert (deferred > 0) == (run_date != RUN_DATES[-1])  # the later events wait for their run, not quarantined


def test_each_run_learned_from_more_history_than_the_one_before(runs):
    counts = [run.stage("quarantine")["rows"]["fct_events"] for _, run in sorted(runs.items())]
    assert counts == sorted(counts) and len(set(counts)) == 3


def test_the_last_run_measured_how_the_earlier_dates_turned_out(home, runs):
    """Its dbt build joined what the two earlier dates published with the events after them: the first date's
    7-day window is over, the second's is not (the history ends on 2026-06-30)."""
    rows = published(home, "select cast(run_date as varchar), window_complete, users_covered, users_active, "
                           "hit_rate_at_n, ndcg_at_n from serving.model_performance order by run_date")
    assert [(r[0], r[1]) for r in rows] == [(RUN_DATES[0], True), (RUN_DATES[1], False)]
    assert all(covered >= active > 0 and 0 <= hr <= 1 and 0 <= ndcg <= 1 for _, _, covered, active, hr, ndcg in rows)
    outcomes = published(home, "select count(*) from marts.recommendation_outcomes")[0][0]
    assert outcomes == published(home, "select count(*) from serving.recommendations "
                                       f"where run_date < date '{RUN_DATES[-1]}'")[0][0]
    realised = json.loads(runs[RUN_DATES[-1]].summary_file.read_text())["realised"]["recommendation"]
    assert realised["run_date"] in RUN_DATES[:2] and realised["users_active"] > 0


def test_the_later_dates_continued_from_the_champion_and_said_why(runs):
    first, *later = (json.loads(runs[d].summary_file.read_text())["training"] for d in RUN_DATES)
    assert first["mode"] == "scratch" and first["decision"]["reasons"] == [
        "no @champion with a recorded data end to continue from"]
    for training in later:  # a week of the same synthetic shop: nothing asks for a full retrain
        checks = training["decision"]["checks"]
        assert training["mode"] == "continue", training["decision"]
        assert checks["events_since"] > 0 and checks["new_item_share"] == 0
        assert checks["feature_psi_beyond_chance"] < 0.25
        assert training["epochs_run"] == 2 and "best_epoch" not in training


def test_every_run_read_the_teams_tables_where_they_are(home, runs):
    for run in runs.values():
        ingest = run.stage("ingest")
        assert ingest["freshness"]["table"] == "shop.events" and 0.9 < ingest["freshness"]["age_hours"] < 36
        assert ingest["rows"]["raw_events"] == published(home, "select count(*) from shop.events")[0][0]
    assert published(home, "select count(*) from information_schema.tables where table_schema = 'raw'") == [(0,)]
    assert published(home, "select distinct source_file from staging.stg_events") == [("shop.events",)]


def test_training_none_scores_with_the_champion_and_registers_nothing(home, runs):
    from mlflow import MlflowClient

    registry = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    model = json.loads(runs[RUN_DATES[-1]].summary_file.read_text())["registry"]["model_name"]
    versions = len(registry.search_model_versions(f"name = '{model}'"))
    champion = registry.get_model_version_by_alias(model, "champion").version
    done = ltvrec(home, "run", "--run-date", RUN_DATES[-1], *WAREHOUSE, "--training", "none", "--top-n", "5",
                  "--conf", CONF)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    assert f"no challenger (training=none); scored with @champion v{champion}" in done.stdout
    summary = json.loads(max((home / "runs").glob("*/summary.json"), key=lambda p: p.stat().st_mtime).read_text())
    assert summary["training"]["mode"] == "none" and summary["registry"]["decision"] == "kept"
    assert summary["metrics"]["recommendation"]["model"]["ndcg_10"] >= 0  # the champion, on this run's holdout
    assert len(registry.search_model_versions(f"name = '{model}'")) == versions
    assert published(home, "select distinct model_version from serving.recommendations "
                           f"where run_date = date '{RUN_DATES[-1]}'") == [(str(champion),)]
    refused = ltvrec(home, "run", *WAREHOUSE, "--training", "none", "--model-name", "ltvrec-nobody", "--conf", CONF)
    assert refused.returncode != 0
    assert "training=none scores with the @champion of ltvrec-nobody, and it has none yet" in refused.stdout + \
        refused.stderr


def test_a_stale_table_stops_the_run_before_anything_is_read(home):
    """The team's load stopped two days ago: the run fails at ingest naming the table and its age, and the
    serving tables keep what the backfill published."""
    before = published(home, "select run_date, count(*) from serving.recommendations group by 1 order by 1")
    with duckdb.connect(str(home / "warehouse.duckdb")) as con:
        con.execute("update shop.events set loaded_at = loaded_at - interval 47 hour")
    try:
        done = ltvrec(home, "run", "--run-date", "2026-07-01", *WAREHOUSE, "--epochs", "1", "--conf", CONF)
    finally:
        with duckdb.connect(str(home / "warehouse.duckdb")) as con:
            con.execute("update shop.events set loaded_at = loaded_at + interval 47 hour")
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "ingest" in output and "shop.events is stale" in output and "freshness_hours 36" in output, output[-3000:]
    assert published(home, "select run_date, count(*) from serving.recommendations group by 1 order by 1") == before
