"""The DAG file parses cleanly and is wired the way the docs say."""

import pytest

from ltvrec.config import PROJECT_ROOT


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(PROJECT_ROOT / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "ltvrec_batch" in dagbag.dags


def test_retries_tags_and_failure_callback(dagbag):
    dag = dagbag.dags["ltvrec_batch"]
    assert {"ltvrec", "ml"} <= set(dag.tags)
    for task in dag.tasks:
        assert task.retries >= 2, task.task_id
        assert task.retry_exponential_backoff, task.task_id
        assert task.on_failure_callback, task.task_id


def test_stage_order(dagbag):
    dag = dagbag.dags["ltvrec_batch"]
    order = ["prepare", "ingest", "gate_raw", "quarantine", "gate_cleaned", "features", "gate_features", "ltv_prior",
             "ltv_backtest", "train", "evaluate", "register", "score", "gate_scores", "publish", "summarize"]
    dbt_tasks = {t for t in dag.task_ids if t.startswith("dbt_build.")}
    assert set(dag.task_ids) == set(order) | {"als_baseline"} | dbt_tasks
    for upstream, downstream in zip(order, order[1:]):
        expected = {upstream, "als_baseline"} if downstream == "evaluate" else {upstream}
        found = dag.get_task(downstream).upstream_task_ids
        assert found >= expected and found - expected <= dbt_tasks  # quarantine also waits for the dbt tasks
    assert dag.get_task("als_baseline").upstream_task_ids == {"gate_features"}


def test_every_dbt_model_is_a_task_between_the_raw_gate_and_the_quarantine_record(dagbag):
    import json

    from ltvrec.cleaning import MANIFEST

    dag = dagbag.dags["ltvrec_batch"]
    models = {n["name"] for n in json.loads(MANIFEST.read_text())["nodes"].values() if n["resource_type"] == "model"}
    dbt_tasks = {t for t in dag.task_ids if t.startswith("dbt_build.")}
    assert {f"dbt_build.{m}_model_build" for m in models} <= dbt_tasks
    for task_id in dbt_tasks:
        task = dag.get_task(task_id)
        assert task.upstream_task_ids <= dbt_tasks | {"gate_raw"}
        assert "quarantine" in dag.get_task(task_id).get_flat_relative_ids(upstream=False)
        assert task.on_failure_callback and task.retries >= 2
    # a test of several models runs once, after all of them: its own task (conservation of raw rows)
    conserved = dag.get_task("dbt_build.assert_events_conserved_test").upstream_task_ids
    assert conserved == {"dbt_build.fct_events_model_build", "dbt_build.events_quarantine_model_build",
                         "dbt_build.int_events_checked_model_build"}  # which counts the events deferred


def test_parsing_the_dag_imports_neither_dbt_nor_the_heavy_libraries_and_routes_scoring_when_asked():
    import os
    import subprocess
    import sys

    code = ("import sys; from airflow.dag_processing.dagbag import DagBag; b = DagBag(dag_folder='dags'); "
            "assert not b.import_errors, b.import_errors; d = b.dags['ltvrec_batch']; "
            "print([m for m in ('dbt.cli.main', 'torch', 'mlflow', 'great_expectations') if m in sys.modules], "
            "d.get_task('train').queue, d.get_task('score').queue)")
    env = os.environ | {"LTVREC_SCORE_QUEUE": "gpu"}
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
                         env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[] gpu gpu"


def test_a_deployment_schedules_the_dag_and_sets_the_scheduled_runs_params():
    import json
    import os
    import subprocess
    import sys

    code = ("from airflow.dag_processing.dagbag import DagBag; b = DagBag(dag_folder='dags'); "
            "print(b.import_errors or '', b.dags['ltvrec_batch'].schedule if b.dags else '', "
            "b.dags['ltvrec_batch'].params['source'] if b.dags else '', b.dags['ltvrec_batch'].params['top_n'] "
            "if b.dags else '')")

    def parse(**env) -> str:
        out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                             timeout=300, env=os.environ | env)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.strip().splitlines()[-1]

    params = {"source": "events", "path": "/data/events.parquet", "top_n": 20}
    assert parse(LTVREC_SCHEDULE="@daily", LTVREC_PARAMS=json.dumps(params)) == " @daily events 20"
    assert parse(LTVREC_SCHEDULE="", LTVREC_PARAMS="") == " None synthetic 10"
    # a bad default fails the DAG's import naming the knob, not every scheduled run
    assert "top_n" in parse(LTVREC_SCHEDULE="@daily", LTVREC_PARAMS='{"top_n": 0}')


def test_a_scheduled_or_backfilled_run_is_for_its_data_intervals_end():
    from datetime import datetime, timedelta, timezone

    from ltvrec.stages import for_data_interval

    end = datetime(2026, 6, 8, tzinfo=timezone.utc)
    from airflow.sdk.api.datamodels._generated import DagRunType  # what a task's context holds

    assert for_data_interval({"top_n": 5}, "scheduled", end) == {"top_n": 5, "run_date": "2026-06-08"}
    assert for_data_interval({}, DagRunType.SCHEDULED, end) == {"run_date": "2026-06-08"}
    assert for_data_interval({}, DagRunType.BACKFILL, end) == {"run_date": "2026-06-08"}
    assert for_data_interval({}, DagRunType.MANUAL, end) == {}
    assert for_data_interval({}, "backfill", end + timedelta(hours=6)) == {"run_date": "2026-06-08"}
    assert for_data_interval({}, "backfill", datetime(2026, 6, 8, 1, tzinfo=timezone(timedelta(hours=2)))) == {
        "run_date": "2026-06-07"}  # the date in UTC
    assert for_data_interval({}, "manual", end) == {}  # a manual run: the last event's day, or its as_of
    assert for_data_interval({"as_of": "2026-05-01"}, "scheduled", end) == {"as_of": "2026-05-01"}
    assert for_data_interval({"run_date": "2026-05-01"}, "backfill", end) == {"run_date": "2026-05-01"}


def test_only_training_goes_to_the_gpu_queue_by_default(dagbag):
    queues = {task.task_id: task.queue for task in dagbag.dags["ltvrec_batch"].tasks}
    assert queues.pop("train") == "gpu" and set(queues.values()) == {"default"}


def test_publish_declares_the_serving_assets(dagbag):
    outlets = {a.uri for a in dagbag.dags["ltvrec_batch"].get_task("publish").outlets}
    assert outlets == {"ltvrec://serving/recommendations", "ltvrec://serving/ltv_estimates"}


def test_params_have_documented_defaults(dagbag):
    params = dagbag.dags["ltvrec_batch"].params
    assert params["source"] == "synthetic" and params["top_n"] == 10 and params["horizon_days"] == 90


def test_every_param_is_a_config_key_with_the_same_default(dagbag):
    from ltvrec.config import RunConfig

    defaults = RunConfig().to_dict()
    params = dagbag.dags["ltvrec_batch"].params
    for name in params:
        value = params[name]
        assert name in defaults, f"DAG param {name} is not a RunConfig key"
        if value is not None:
            assert value == defaults[name], f"DAG param {name}: {value!r} vs RunConfig {defaults[name]!r}"
