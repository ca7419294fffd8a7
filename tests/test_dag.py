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
    order = ["prepare", "ingest", "gate_raw", "dbt_build", "gate_cleaned", "features", "gate_features", "ltv_prior", "train",
             "evaluate", "register", "score", "gate_scores", "publish", "summarize"]
    assert set(dag.task_ids) == set(order) | {"als_baseline"}
    for upstream, downstream in zip(order, order[1:]):
        expected = {upstream, "als_baseline"} if downstream == "evaluate" else {upstream}
        assert dag.get_task(downstream).upstream_task_ids == expected
    assert dag.get_task("als_baseline").upstream_task_ids == {"gate_features"}


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
