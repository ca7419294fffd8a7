"""
### ltvrec_batch

Raw customer events -> top-N recommendations and customer lifetime value in the warehouse.

ingest -> GX gate (raw) -> dbt (a task per model, with its tests) -> quarantine record -> GX gate (cleaned) -> Spark features -> GX gate (features)
-> LTV prior -> LTV backtest -> torchrun training (beside it: Spark MLlib ALS baseline)
-> evaluation vs baselines and the champion
-> MLflow registry + model gate (only a challenger that passes becomes `@champion`) -> batch scoring with `@champion`
-> GX gate (scores) -> atomic publish to `serving.recommendations` / `serving.ltv_estimates` -> summary.

Trigger with params (UI "Trigger DAG w/ config", `airflow dags trigger -c`, or `ltvrec run`), e.g.
`{"source": "online_retail", "path": "/data/online_retail_II.parquet", "top_n": 10}`; every param is documented in
the trigger form. Tasks pass only the run folder between them; every stage lives in `ltvrec.stages`.

Scheduled: `LTVREC_SCHEDULE` (a cron expression or preset such as `@daily`; unset: manual runs only) and
`LTVREC_PARAMS` (JSON: the params' defaults, which scheduled runs use). A scheduled or backfilled run is for the date
of its data interval's end (`run_date`): it sees only the events before that date and publishes its partition.
Backfill with Airflow's own `airflow backfill create` or `ltvrec backfill`.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta

from airflow.sdk import Asset, dag, get_current_context, task

from cosmos import DbtTaskGroup, ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
from cosmos.constants import InvocationMode, LoadMode, TestBehavior

from ltvrec import cleaning
from ltvrec.config import DAG_ID, dag_params, default_params

# Executors that route by queue (the stack's Edge workers, Celery) send training to workers of this queue only;
# scoring goes there too when LTVREC_SCORE_QUEUE says so (local scoring uses the GPU it finds)
GPU_QUEUE = os.environ.get("LTVREC_GPU_QUEUE", "gpu")
SCORE_QUEUE = os.environ.get("LTVREC_SCORE_QUEUE", "default")
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


def dbt_task_group(group_id: str) -> DbtTaskGroup:
    """The dbt project as tasks (astronomer-cosmos): one per model, running `dbt build` of that model (its unit tests,
    the model, its data tests), wired as the models depend on each other; a test of several models runs once they
    are all built. Rendered from the pre-built manifest, so parsing this file never parses dbt. Each task points
    itself at the run's warehouse and vars (`cleaning.for_this_run`)."""
    if not cleaning.MANIFEST.exists():
        raise FileNotFoundError(f"{cleaning.MANIFEST} is missing; the DAG's dbt tasks are rendered from it. "
                                "Build it with `ltvrec dbt-manifest` (make, `ltvrec stack up` and `ltvrec run` do).")
    return DbtTaskGroup(
        group_id=group_id,
        project_config=ProjectConfig(manifest_path=cleaning.MANIFEST, project_name="ltvrec"),
        # the target here is a placeholder: for_this_run sets the run's (duckdb or postgres)
        profile_config=ProfileConfig(profile_name="ltvrec", target_name="duckdb",
                                     profiles_yml_filepath=cleaning.PROFILES),
        execution_config=ExecutionConfig(dbt_project_path=cleaning.DBT_PROJECT,
                                         invocation_mode=InvocationMode.DBT_RUNNER),
        render_config=RenderConfig(load_method=LoadMode.DBT_MANIFEST, test_behavior=TestBehavior.BUILD,
                                   should_detach_multiple_parents_tests=True),
        operator_args={"interceptors": [cleaning.for_this_run], "install_deps": False},
    )


def stage_task(name: str, **kwargs):
    """A task that runs `ltvrec.stages.<name>` on the run folder and hands the folder on."""

    @task(task_id=name, **kwargs)
    def run(run_dir: str) -> str:
        from ltvrec import stages

        getattr(stages, name)(run_dir)
        return run_dir

    return run


@dag(dag_id=DAG_ID, schedule=os.environ.get("LTVREC_SCHEDULE") or None, start_date=datetime(2024, 1, 1),
     catchup=False, max_active_runs=1, default_args=default_args, tags=["ltvrec", "ml", "recommendations", "ltv"],
     doc_md=__doc__, params=dag_params(default_params()))
def ltvrec_batch():
    @task
    def prepare() -> str:
        from ltvrec import stages

        context = get_current_context()
        params = stages.for_data_interval(dict(context["params"]), context["dag_run"].run_type,
                                          context.get("data_interval_end"))
        return stages.prepare(params, context["run_id"])

    run_dir = stage_task("gate_raw")(stage_task("ingest")(prepare()))
    dbt = dbt_task_group("dbt_build")
    run_dir >> dbt
    run_dir = stage_task("quarantine")(run_dir)
    dbt >> run_dir
    for name in ["gate_cleaned", "features", "gate_features"]:
        run_dir = stage_task(name)(run_dir)
    als = stage_task("als_baseline")(run_dir)  # independent of training: may run beside it
    run_dir = stage_task("ltv_prior")(run_dir)
    run_dir = stage_task("ltv_backtest")(run_dir)
    run_dir = stage_task("train", queue=GPU_QUEUE)(run_dir)
    run_dir = stage_task("evaluate")(run_dir)
    als >> run_dir
    run_dir = stage_task("register")(run_dir)
    run_dir = stage_task("score", queue=SCORE_QUEUE)(run_dir)
    run_dir = stage_task("gate_scores")(run_dir)
    run_dir = stage_task("publish", outlets=[RECOMMENDATIONS, LTV_ESTIMATES])(run_dir)
    stage_task("summarize")(run_dir)


ltvrec_batch()
