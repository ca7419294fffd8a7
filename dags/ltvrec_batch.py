"""
### ltvrec_batch

Raw customer events -> top-N recommendations and customer lifetime value in the warehouse.

ingest -> GX gate (raw) -> dbt build -> GX gate (cleaned) -> Spark features -> GX gate (features)
-> LTV prior -> torchrun training (beside it: Spark MLlib ALS baseline) -> evaluation vs baselines and the champion
-> MLflow registry + model gate (only a challenger that passes becomes `@champion`) -> batch scoring with `@champion`
-> GX gate (scores) -> atomic publish to `serving.recommendations` / `serving.ltv_estimates` -> summary.

Trigger with params (UI "Trigger DAG w/ config", `airflow dags trigger -c`, or `ltvrec run`), e.g.
`{"source": "online_retail", "path": "/data/online_retail_II.parquet", "top_n": 10}`; every param is documented in
the trigger form. Tasks pass only the run folder between them; every stage lives in `ltvrec.stages`.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta

from airflow.sdk import Asset, dag, get_current_context, task

from ltvrec.config import DAG_ID, dag_params

# Executors that route by queue (the stack's Edge workers, Celery) send training to workers of this queue only
GPU_QUEUE = os.environ.get("LTVREC_GPU_QUEUE", "gpu")
RECOMMENDATIONS = Asset("ltvrec://serving/recommendations")
LTV_ESTIMATES = Asset("ltvrec://serving/ltv_estimates")


def _log_failure(context) -> None:
    from ltvrec import stages

    task_id, run_id = getattr(context.get("task_instance"), "task_id", "?"), context.get("run_id")
    logging.getLogger("ltvrec").error("ltvrec stage %s failed in run %s: %s", task_id, run_id, context.get("exception"))
    stages.record_failure(run_id, task_id, context.get("exception"))


default_args = {
    "retries": int(os.environ.get("LTVREC_TASK_RETRIES", 2)),
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "on_failure_callback": _log_failure,
}


def stage_task(name: str, **kwargs):
    """A task that runs `ltvrec.stages.<name>` on the run folder and hands the folder on."""

    @task(task_id=name, **kwargs)
    def run(run_dir: str) -> str:
        from ltvrec import stages

        getattr(stages, name)(run_dir)
        return run_dir

    return run


@dag(dag_id=DAG_ID, schedule=None, start_date=datetime(2024, 1, 1), catchup=False, max_active_runs=1,
     default_args=default_args, tags=["ltvrec", "ml", "recommendations", "ltv"], doc_md=__doc__, params=dag_params())
def ltvrec_batch():
    @task
    def prepare() -> str:
        from ltvrec import stages

        context = get_current_context()
        return stages.prepare(dict(context["params"]), context["run_id"])

    run_dir = prepare()
    for name in ["ingest", "gate_raw", "dbt_build", "gate_cleaned", "features", "gate_features"]:
        run_dir = stage_task(name)(run_dir)
    als = stage_task("als_baseline")(run_dir)  # independent of training: may run beside it
    run_dir = stage_task("ltv_prior")(run_dir)
    run_dir = stage_task("train", queue=GPU_QUEUE)(run_dir)
    run_dir = stage_task("evaluate")(run_dir)
    als >> run_dir
    for name in ["register", "score", "gate_scores"]:
        run_dir = stage_task(name)(run_dir)
    run_dir = stage_task("publish", outlets=[RECOMMENDATIONS, LTV_ESTIMATES])(run_dir)
    stage_task("summarize")(run_dir)


ltvrec_batch()
