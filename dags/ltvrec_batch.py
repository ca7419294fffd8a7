"""
### ltvrec_batch

Raw customer events -> top-N recommendations and customer lifetime value in the warehouse.

ingest -> GX gate (raw) -> dbt build -> GX gate (cleaned) -> Spark features -> GX gate (features)
-> torchrun training (beside it: Spark MLlib ALS baseline) -> evaluation vs baselines and the champion
-> MLflow registry + model gate (only a challenger that passes becomes `@champion`) -> batch scoring with `@champion`
-> GX gate (scores) -> atomic publish to `serving.recommendations` / `serving.ltv_estimates` -> summary.

Trigger with params (UI "Trigger DAG w/ config", `airflow dags trigger -c`, or `ltvrec run`), e.g.
`{"source": "online_retail", "path": "/data/online_retail_II.parquet", "top_n": 10}`.
Tasks pass only the run folder between them; every stage lives in `ltvrec.stages`.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta

from airflow.sdk import Asset, Param, dag, get_current_context, task

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


@dag(
    dag_id="ltvrec_batch",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=default_args,
    tags=["ltvrec", "ml", "recommendations", "ltv"],
    doc_md=__doc__,
    params={
        "source": Param("synthetic", enum=["synthetic", "events", "online_retail", "movielens"]),
        "path": Param(None, type=["null", "string"], description="input file or folder (not for synthetic)"),
        "items_path": Param(None, type=["null", "string"], description="optional item catalogue (events source)"),
        "as_of": Param(None, type=["null", "string"], description="YYYY-MM-DD; default: day of the last event"),
        "top_n": Param(10, type="integer", minimum=1),
        "rank_by": Param("relevance", enum=["relevance", "expected_value"],
                         description="expected_value: P(item) x catalogue price (expected revenue)"),
        "horizon_days": Param(90, type="integer", minimum=1),
        "holdout_days": Param(14, type="integer", minimum=1),
        "eval_protocol": Param(None, enum=[None, "temporal", "leave_one_out"],
                               description="default: leave_one_out for movielens, else temporal"),
        "target": Param(None, enum=[None, "next_item", "next_basket"],
                        description="what training predicts; default: next_basket for temporal, else next_item"),
        "max_quarantine_share": Param(0.5, type="number", minimum=0, maximum=1,
                                      description="cleaned gate: share of raw events dbt may quarantine"),
        "max_volume_ratio": Param(10.0, type="number", exclusiveMinimum=1,
                                  description="raw gate: events may be at most this factor above/below the last published run's"),
        "ndcg_tolerance": Param(0.005, type="number",
                                description="model gate: how much lower than the champion's the challenger's NDCG@10 may be"),
        "gini_tolerance": Param(0.01, type="number",
                                description="model gate: how much lower than the champion's its LTV normalized Gini may be"),
        "epochs": Param(30, type="integer", minimum=1),
        "nproc": Param(2, type="integer", minimum=1, description="torchrun processes per node"),
        "warm_start": Param(False, type="boolean", description="fine-tune the current @champion on the new data"),
        "score_engine": Param("local", enum=["local", "spark"],
                              description="spark: score user partitions on the Spark cluster (jobs/score.py)"),
        "max_per_category": Param(None, type=["null", "integer"], minimum=1,
                                  description="diversity: at most this many items of one category per user's list"),
        "score_chunk_users": Param(None, type=["null", "integer"], minimum=1,
                                   description="users scored per chunk; default: chosen from the memory available"),
        "item_text": Param(True, type="boolean", description="embed item titles with the pretrained sentence model"),
        "time_gaps": Param(False, type="boolean", description="embed the time since each event's predecessor"),
        "synthetic_users": Param(2000, type="integer", minimum=1),
        "warehouse_url": Param(None, type=["null", "string"], description="default: $LTVREC_WAREHOUSE_URL or DuckDB"),
        "warehouse_conn_id": Param(None, type=["null", "string"],
                                   description="Airflow connection with the warehouse URI (keeps credentials out of params)"),
    },
)
def ltvrec_batch():
    @task
    def prepare() -> str:
        from ltvrec import stages

        context = get_current_context()
        return stages.prepare(dict(context["params"]), context["run_id"])

    def stage_task(name: str, **kwargs):
        @task(task_id=name, **kwargs)
        def run(run_dir: str) -> str:
            from ltvrec import stages

            getattr(stages, name)(run_dir)
            return run_dir

        return run

    @task
    def summarize(run_dir: str) -> str:
        from ltvrec import stages

        summary = stages.finalize(run_dir)
        logging.getLogger("ltvrec").info("summary: %s/summary.json (%s)", run_dir, summary["rows"])
        return run_dir

    run_dir = prepare()
    for name in ["ingest", "gate_raw", "dbt_build", "gate_cleaned", "features", "gate_features"]:
        run_dir = stage_task(name)(run_dir)
    als = stage_task("als_baseline")(run_dir)  # independent of training: may run beside it
    run_dir = stage_task("ltv_prior")(run_dir)
    run_dir = stage_task("train")(run_dir)
    evaluated = stage_task("evaluate")(run_dir)
    als >> evaluated
    run_dir = evaluated
    for name in ["register", "score", "gate_scores"]:
        run_dir = stage_task(name)(run_dir)
    run_dir = stage_task("publish", outlets=[RECOMMENDATIONS, LTV_ESTIMATES])(run_dir)
    summarize(run_dir)


ltvrec_batch()
