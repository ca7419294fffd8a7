"""The production topology, for real: `ltvrec stack up` in a temporary LTVREC_HOME, the DAG triggered through Airflow's
REST API on small synthetic data with the PostgreSQL warehouse, and every claim read back from the services
themselves: Postgres, the MLflow server's REST API, Airflow's REST API, the Spark master's JSON status. Then
`ltvrec stack down`, and no process of the stack is left."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import psutil
import pytest

from ltvrec.stack import Stack, http_json

pytestmark = [pytest.mark.slow, pytest.mark.integration]
LTVREC = str(Path(sys.executable).parent / "ltvrec")
RUN = ["run", "--on-stack", "--synthetic-users", "200", "--epochs", "1", "--top-n", "5", "--nproc", "1",
       "--no-item-text", "--no-als-tuning", "--conf", json.dumps({"synthetic_items": 60, "holdout_days": 21,
                                                                   "horizon_days": 60})]


def ltvrec(env: dict, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([LTVREC, *args], env=env, capture_output=True, text=True, timeout=timeout)


def stack_processes(home: Path) -> list[psutil.Process]:
    """Every process whose command line names the stack's folder (services, workers, Spark executors)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(home) in part for part in proc.info["cmdline"] or []) and proc.pid != os.getpid():
            found.append(proc)
    return found


@contextmanager
def running_stack(prefix: str, **settings: str):
    """`ltvrec stack up` in a fresh home with `settings` in its environment; yields (Stack, env); then `stack down`,
    and no process of the stack is left."""
    # not under pytest's basetemp: another pytest session may tighten its mode to 700 meanwhile, and PostgreSQL runs
    # as its own user when the tests run as root
    home = Path(tempfile.mkdtemp(prefix=prefix))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW", "LTVREC_"))}
    env |= {"LTVREC_HOME": str(home), "LTVREC_TASK_RETRIES": "0", "LTVREC_SPARK_WORKER_MEMORY": "2g", **settings}
    up = ltvrec(env, "stack", "up", timeout=420)
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        yield Stack(home), env
    finally:
        down = ltvrec(env, "stack", "down", timeout=300)
        assert down.returncode == 0, down.stdout + down.stderr
        left = [p for p in stack_processes(home) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not left, [" ".join(p.cmdline()[:4]) for p in left]
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def stack():
    with running_stack("ltvrec-stack-test-") as started:
        yield started


@pytest.fixture(scope="module")
def first_run(stack):
    st, env = stack
    result = ltvrec(env, *RUN)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return dag_run(result.stdout)


def dag_run(stdout: str) -> dict:
    run_id = re.search(r"triggered ltvrec_batch run (\S+)", stdout).group(1)
    folder = Path(re.search(r"run folder: (\S+)", stdout).group(1))
    summary = json.loads((folder / "summary.json").read_text())
    return {"run_id": run_id, "summary": summary}


def serving_rows(st: Stack, run_date: str) -> dict:
    import psycopg

    with psycopg.connect(st.pg_uri("ltvrec")) as con:
        def one(sql):
            return con.execute(sql, (run_date,)).fetchone()

        return {
            "recommendations": one("select count(*), count(distinct (user_id, rank)), count(distinct user_id), "
                                   "min(mlflow_run_id), max(mlflow_run_id) from serving.recommendations "
                                   "where run_date = %s"),
            "ltv_estimates": one("select count(*), count(distinct user_id), min(mlflow_run_id), max(mlflow_run_id) "
                                 "from serving.ltv_estimates where run_date = %s"),
        }


def test_the_stack_reports_every_service_healthy(stack):
    st, env = stack
    status = ltvrec(env, "stack", "status")
    assert status.returncode == 0, status.stdout + status.stderr
    names = {row["service"] for row in st.status() if row["healthy"]}
    assert {"postgres", "mlflow", "spark-master", "spark-worker", "airflow-api-server", "airflow-scheduler",
            "airflow-dag-processor", "airflow-triggerer", "airflow-worker-default", "airflow-worker-gpu"} <= names


def test_postgres_serving_tables_hold_one_row_per_user_rank_and_customer(stack, first_run):
    st, _ = stack
    summary = first_run["summary"]
    recs, ltv = serving_rows(st, summary["run_date"]).values()
    assert recs[0] == recs[1] == summary["rows"]["publish"]["recommendations"] > 0
    assert recs[2] * 5 == recs[0]  # top_n 5 for every user
    assert ltv[0] == ltv[1] == summary["rows"]["publish"]["ltv_estimates"] > 0
    assert recs[3] == recs[4] == ltv[2] == summary["mlflow_run_id"]


def test_mlflow_server_has_the_runs_metrics_and_the_champion(stack, first_run):
    st, _ = stack
    summary = first_run["summary"]
    run = http_json(f"{st.mlflow_url}/api/2.0/mlflow/runs/get?run_id={summary['mlflow_run_id']}")["run"]
    metrics = {m["key"]: m["value"] for m in run["data"].get("metrics", [])}
    assert metrics["test_model_ndcg_10"] == pytest.approx(summary["metrics"]["recommendation"]["model"]["ndcg_10"])
    assert metrics["ltv_ziln_gini"] == pytest.approx(summary["metrics"]["ltv"]["ziln"]["gini"])
    name = summary["registry"]["model_name"]
    alias = http_json(f"{st.mlflow_url}/api/2.0/mlflow/registered-models/alias?name={quote(name)}&alias=champion")
    assert alias["model_version"]["run_id"] == summary["mlflow_run_id"]
    assert run["info"]["artifact_uri"].startswith("mlflow-artifacts:")  # artifacts served by the server, no file path


def test_train_ran_on_the_gpu_queue_worker_and_the_rest_on_default(stack, first_run):
    st, _ = stack
    instances = st.airflow().get(f"/api/v2/dags/ltvrec_batch/dagRuns/{quote(first_run['run_id'])}/taskInstances")
    by_task = {ti["task_id"]: ti for ti in instances["task_instances"]}
    assert by_task["train"]["queue"] == "gpu" and by_task["train"]["hostname"].startswith("gpu-worker")
    assert {"dbt_build.fct_events_model_build", "dbt_build.assert_events_conserved_test"} <= set(by_task)
    others = [ti for task, ti in by_task.items() if task != "train"]
    assert others and all(ti["queue"] == "default" and ti["hostname"].startswith("default-worker") for ti in others)
    assert all(ti["state"] == "success" for ti in by_task.values())


def test_spark_master_lists_the_feature_and_als_jobs_as_completed(stack, first_run):
    st, _ = stack
    completed = {app["name"]: app["state"] for app in st.spark_status()["completedapps"]}
    assert completed.get("ltvrec-features") == "FINISHED" and completed.get("ltvrec-als") == "FINISHED", completed


def test_a_second_trigger_of_the_date_replaces_its_rows(stack, first_run):
    st, env = stack
    before = serving_rows(st, first_run["summary"]["run_date"])
    result = ltvrec(env, *RUN)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    second = dag_run(result.stdout)["summary"]
    assert second["run_date"] == first_run["summary"]["run_date"]
    after = serving_rows(st, second["run_date"])
    assert after["recommendations"][:3] == before["recommendations"][:3]
    assert after["ltv_estimates"][:2] == before["ltv_estimates"][:2]
    assert after["recommendations"][3] == after["recommendations"][4] == second["mlflow_run_id"]
    assert second["mlflow_run_id"] != first_run["summary"]["mlflow_run_id"]
