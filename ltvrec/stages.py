"""The DAG's stages. Each takes the run folder (the only thing passed between tasks), reads its config,
does one job with that job's tool, and records its timing and row counts in `stages/<name>.json`.

The Airflow DAG, the CLI and the tests all call these same functions.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ltvrec import sources, synthetic, warehouse
from ltvrec.config import PROJECT_ROOT, RunConfig, ltvrec_home, mlflow_tracking_uri, redact_url

log = logging.getLogger("ltvrec")
STAGE_ORDER = ["prepare", "ingest", "gate_raw", "dbt_build", "gate_cleaned", "features", "gate_features",
               "ltv_prior", "train", "als_baseline", "evaluate", "register", "score", "gate_scores", "publish"]


def stage(fn):
    """Time a stage and store what it returns as stages/<name>.json."""

    @functools.wraps(fn)
    def wrapper(run_dir: str, *args, **kwargs):
        started = time.time()
        info = fn(Path(run_dir), *args, **kwargs) or {}
        record = {"seconds": round(time.time() - started, 3), **info}
        out = Path(run_dir) / "stages"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{fn.__name__}.json").write_text(json.dumps(record, indent=2, default=str))
        log.info("stage %s done in %.1fs: %s", fn.__name__, record["seconds"], json.dumps(info, default=str)[:500])
        return record

    return wrapper


def strict_json(value):
    """`value` with NaN / infinite floats as None: summary.json stays valid JSON for every parser."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def _bin(name: str) -> str:
    """A console script of the running interpreter's environment (torchrun, spark-submit, ...)."""
    return str(Path(sys.executable).parent / name)


def _mlflow_run_id(run_dir: Path) -> str:
    return json.loads((run_dir / "mlflow.json").read_text())["run_id"]


def _split(run_dir: Path) -> dict:
    return json.loads((run_dir / "features" / "split.json").read_text())


def run_folder(run_id: str) -> Path:
    """The run folder of an Airflow run id."""
    return ltvrec_home() / "runs" / re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)


def record_failure(run_id: str, task_id: str, error: object) -> None:
    """Note a failed stage in its run folder (`failed.json`), for the CLI and for people."""
    run_dir = run_folder(run_id)
    if run_dir.exists():
        (run_dir / "failed.json").write_text(json.dumps({"stage": task_id, "error": str(error), "run_id": run_id}, indent=2))


def prepare(params: dict, run_id: str, dag_id: str = "ltvrec_batch") -> str:
    """Validate the config, create the run folder and the run's MLflow run; return the run folder."""
    import mlflow

    from ltvrec.tracking import configure

    cfg = RunConfig.from_dict({k: v for k, v in params.items() if v is not None})
    run_dir = run_folder(run_id)
    run_key = run_dir.name
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir)
    started = time.time()
    experiment_id = configure(cfg.experiment)
    with mlflow.start_run(run_name=run_key, tags={"airflow_run_id": run_id, "airflow_dag_id": dag_id,
                                                  "source": cfg.source}) as run:
        logged = cfg.to_dict() | {"warehouse_url": redact_url(cfg.warehouse_url)}
        mlflow.log_params({f"cfg_{k}": v for k, v in logged.items()})
        (run_dir / "mlflow.json").write_text(json.dumps({"run_id": run.info.run_id, "experiment_id": experiment_id}))
    (run_dir / "stages").mkdir(exist_ok=True)
    (run_dir / "stages" / "prepare.json").write_text(json.dumps({"seconds": round(time.time() - started, 3)}))
    log.info("run folder %s, MLflow run %s", run_dir, run.info.run_id)
    return str(run_dir)


@stage
def ingest(run_dir: Path) -> dict:
    """Read the source into canonical raw tables and load them into the warehouse's `raw` schema."""
    cfg = RunConfig.load(run_dir)
    if cfg.source == "synthetic":
        ev_path, it_path = synthetic.write(run_dir / "input", n_users=cfg.synthetic_users, n_items=cfg.synthetic_items,
                                           days=cfg.synthetic_days, seed=cfg.seed)
        events, items = sources.load_events(ev_path, it_path)
        inputs = [ev_path, it_path]
    elif cfg.source == "events":
        events, items = sources.load_events(Path(cfg.path), Path(cfg.items_path) if cfg.items_path else None)
        inputs = [Path(cfg.path)] + ([Path(cfg.items_path)] if cfg.items_path else [])
    elif cfg.source == "online_retail":
        events, items = sources.load_online_retail(Path(cfg.path))
        inputs = [Path(cfg.path)]
    else:
        events, items = sources.load_movielens(Path(cfg.path))
        inputs = [Path(cfg.path)]
    wh = warehouse.connect(cfg.resolved_warehouse_url)
    wh.replace_table("raw", "events", events)
    wh.replace_table("raw", "items", items)
    return {"rows": {"raw_events": events.num_rows, "raw_items": items.num_rows},
            "dataset_digest": sources.file_digest(*inputs), "warehouse": wh.kind}


def _gate(run_dir: Path, name: str, frames: dict[str, pd.DataFrame], params: dict) -> dict:
    from expectations.gate import run_gate

    return {"gate": run_gate(name, frames, params, run_dir / "gates" / name)}


@stage
def gate_raw(run_dir: Path) -> dict:
    """Raw contract, plus the volume check: this run's raw event count against the last published run's (of the
    same registered model), within a factor of `max_volume_ratio` either way."""
    cfg = RunConfig.load(run_dir)
    wh = warehouse.connect(cfg.resolved_warehouse_url)
    frames = {"raw_events": wh.query("select * from raw.events").to_pandas(),
              "raw_items": wh.query("select * from raw.items").to_pandas()}
    previous = wh.last_published(cfg.registered_model)
    n_raw = len(frames["raw_events"])
    frames["volume"] = pd.DataFrame(
        [] if previous is None else
        [{"raw_events": n_raw, "previous_raw_events": previous["raw_events"], "previous_run": previous["run_id"],
          "ratio": n_raw / max(previous["raw_events"], 1)}], columns=["raw_events", "previous_raw_events", "previous_run", "ratio"])
    result = _gate(run_dir, "raw", frames, {"max_volume_ratio": cfg.max_volume_ratio})
    return result | {"volume": frames["volume"].to_dict("records")[0] if previous is not None else None}


@stage
def dbt_build(run_dir: Path) -> dict:
    """`dbt build` (models + schema tests) on the configured warehouse, in process."""
    from dbt.cli.main import dbtRunner

    cfg = RunConfig.load(run_dir)
    wh = warehouse.connect(cfg.resolved_warehouse_url)
    target, env = wh.dbt_target()
    os.environ.update(env)
    project = PROJECT_ROOT / "dbt_project"
    # without an explicit as-of date, "in the future" means after today (UTC), not after the latest event
    dbt_vars = {"as_of": cfg.as_of or datetime.now(timezone.utc).date().isoformat()}
    result = dbtRunner().invoke(["build", "--project-dir", str(project), "--profiles-dir", str(project),
                                 "--target", target, "--vars", json.dumps(dbt_vars),
                                 "--target-path", str(run_dir / "dbt" / "target"),
                                 "--log-path", str(run_dir / "dbt" / "logs")])
    if not result.success:
        failed = [f"{r.node.name}: {r.status} {r.message}" for r in (result.result or []) if str(r.status) in ("error", "fail")]
        raise RuntimeError(f"dbt build failed: {result.exception or ''} {'; '.join(failed)}; logs in {run_dir / 'dbt' / 'logs'}")
    counts = wh.query("select reject_reason, n_rows from marts.quarantine_summary").to_pylist()
    n_clean = wh.query("select count(*) as n from marts.fct_events").to_pylist()[0]["n"]
    return {"rows": {"fct_events": int(n_clean), "quarantined": int(sum(r["n_rows"] for r in counts))},
            "quarantine": {r["reject_reason"]: int(r["n_rows"]) for r in counts}}


@stage
def gate_cleaned(run_dir: Path) -> dict:
    cfg = RunConfig.load(run_dir)
    wh = warehouse.connect(cfg.resolved_warehouse_url)
    n_raw = wh.query("select count(*) as n from raw.events").to_pylist()[0]["n"]
    n_bad = wh.query("select count(*) as n from marts.events_quarantine").to_pylist()[0]["n"]
    frames = {"fct_events": wh.query("select * from marts.fct_events").to_pandas(),
              "dim_items": wh.query("select * from marts.dim_items").to_pandas(),
              "quarantine_share": pd.DataFrame({"share": [n_bad / max(n_raw, 1)]})}
    return _gate(run_dir, "cleaned", frames, {"max_quarantine_share": cfg.max_quarantine_share})


@stage
def features(run_dir: Path) -> dict:
    """Export the marts to Parquet and run the Spark feature job on them (spark-submit)."""
    cfg = RunConfig.load(run_dir)
    wh = warehouse.connect(cfg.resolved_warehouse_url)
    marts = run_dir / "marts"
    marts.mkdir(exist_ok=True)
    rows = {t: wh.export_parquet("marts", t, marts / f"{t}.parquet") for t in ("fct_events", "dim_items")}
    args = ["--events", str(marts / "fct_events.parquet"), "--items", str(marts / "dim_items.parquet"),
            "--out", str(run_dir / "features"), "--horizon-days", str(cfg.horizon_days),
            "--holdout-days", str(cfg.holdout_days), "--ltv-train-windows", str(cfg.ltv_train_windows)]
    _spark_submit(cfg, "features.py", args + (["--as-of", cfg.as_of] if cfg.as_of else []))
    out = run_dir / "features"
    ltv = pq.read_table(out / "ltv_features", columns=["cutoff"]).to_pandas()["cutoff"].value_counts().to_dict()
    return {"rows": {**rows, "items": pq.ParquetDataset(out / "items").read(columns=["item_idx"]).num_rows,
                     "sequences": pq.ParquetDataset(out / "sequences").read(columns=["user_id"]).num_rows,
                     **{f"ltv_{k}": int(v) for k, v in ltv.items()}}, "split": _split(run_dir)}


@stage
def gate_features(run_dir: Path) -> dict:
    seq = pq.ParquetDataset(run_dir / "features" / "sequences").read(columns=["user_id", "items", "n_events"]).to_pandas()
    seq["min_item"] = seq["items"].map(min)
    seq["max_item"] = seq["items"].map(max)
    n_items = pq.ParquetDataset(run_dir / "features" / "items").read(columns=["item_idx"]).num_rows
    ltv = pq.ParquetDataset(run_dir / "features" / "ltv_features").read().to_pandas()
    return _gate(run_dir, "features", {"sequences": seq.drop(columns="items"), "ltv_features": ltv}, {"n_items": n_items})


@stage
def ltv_prior(run_dir: Path) -> dict:
    """Fit BG/NBD + Gamma-Gamma at every LTV cut-off and write the ZILN head's seasonal prior (models/ltv_prior.py)
    beside the features (features/ltv_prior); with ltv_prior=false, nothing is fitted here."""
    from models.data import PRIOR_FILE
    from models.ltv_prior import fit_prior

    cfg = RunConfig.load(run_dir)
    if not cfg.ltv_prior:
        return {"skipped": "ltv_prior=false"}
    ltv = pq.ParquetDataset(run_dir / "features" / "ltv_features").read().to_pandas()
    if ltv.empty:  # e.g. ratings only: no customers, no LTV head to correct
        return {"customers": 0}
    prior, factors = fit_prior(ltv, cfg.horizon_days)
    out = run_dir / "features" / PRIOR_FILE
    out.mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pandas(prior, preserve_index=False), out / "part-0.parquet")
    return {"seasonal_factors": factors, "rows": {"ltv_prior": len(prior)}}


@stage
def train(run_dir: Path) -> dict:
    """torchrun the trainer (DDP over `nproc` processes: gloo on CPU, NCCL on GPUs)."""
    cfg = RunConfig.load(run_dir)
    nproc = int(os.environ.get("LTVREC_TORCHRUN_NPROC", cfg.nproc))
    cmd = [_bin("torchrun"), "--standalone", f"--nproc-per-node={nproc}", "-m", "models.train", "--run-dir", str(run_dir)]
    init = _champion_checkpoint(cfg, run_dir) if cfg.warm_start else None
    if init:
        cmd += ["--init-from", str(init)]

    _run(cmd, {"MLFLOW_TRACKING_URI": mlflow_tracking_uri(), "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))})
    return json.loads((run_dir / "train" / "result.json").read_text())


def _champion_checkpoint(cfg: RunConfig, run_dir: Path) -> Path | None:
    """The current @champion's checkpoint, copied into the run folder; None when there is no champion yet."""
    import shutil

    from mlflow.exceptions import MlflowException

    from models.checkpoint import registry_checkpoint

    tracking_setup(cfg)
    try:
        found = registry_checkpoint(f"models:/{cfg.registered_model}@champion")
    except MlflowException as exc:
        log.info("warm start requested but no champion of %s (%s): training from scratch", cfg.registered_model, exc)
        return None
    target = run_dir / "train" / "init_champion.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(found, target)
    return target


@stage
def als_baseline(run_dir: Path) -> dict:
    """Fit the Spark MLlib ALS baseline on every user's test-input history (spark-submit)."""
    import numpy as np

    from models.data import FeatureSet, Protocol

    cfg = RunConfig.load(run_dir)
    fs = FeatureSet.load(run_dir / "features")
    protocol = Protocol.build(fs, cfg.eval_protocol)
    users = np.arange(len(fs.users))
    items, _, _ = fs.prefixes(protocol.valid_end, users)
    pairs = pd.DataFrame({"user_pos": np.repeat(users, [len(i) for i in items]).astype(np.int32),
                          "item_idx": np.concatenate(items).astype(np.int32)})
    weights = pairs.value_counts().rename("weight").reset_index().astype({"weight": np.float32})
    out = run_dir / "als"
    out.mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pandas(weights, preserve_index=False), out / "interactions.parquet")
    _spark_submit(cfg, "als_baseline.py", ["--interactions", str(out / "interactions.parquet"), "--out", str(out)])
    return {"rows": {"als_interactions": len(weights)}}


def _als_factors(run_dir: Path, n_users: int, n_items: int):
    """(user vectors by user position, item vectors by item index with row 0 = padding), zeros where missing."""
    import numpy as np

    def load(name: str, n: int) -> np.ndarray:
        frame = pq.ParquetDataset(run_dir / "als" / name).read().to_pandas()
        out = np.zeros((n, len(frame["features"].iloc[0])), dtype=np.float32)
        out[frame["id"].to_numpy()] = np.stack(frame["features"].to_numpy())
        return out

    return load("user_factors", n_users), load("item_factors", n_items)


@stage
def evaluate(run_dir: Path) -> dict:
    """Test metrics for the trained model and the baselines, logged to the run's MLflow run."""
    import mlflow

    from models.checkpoint import LoadedModel
    from models.data import FeatureSet, Protocol
    from models.charts import ltv_charts
    from models.evaluate import evaluate_recommendations, ltv_predictions
    from models.metrics import ltv_metrics

    cfg = RunConfig.load(run_dir)
    fs = FeatureSet.load(run_dir / "features")
    loaded = LoadedModel.from_file(run_dir / "train" / "final.pt")
    rec = evaluate_recommendations(fs, loaded, Protocol.build(fs, cfg.eval_protocol),
                                   factors=_als_factors(run_dir, len(fs.users), fs.n_items))
    actual, predictions = ltv_predictions(fs, loaded)
    ltv = {name: ltv_metrics(actual, value, activity) for name, (value, activity) in predictions.items()}
    champion = _evaluate_champion(cfg, fs, actual)
    if champion.get("recommendation"):
        rec["champion"] = champion["recommendation"]
    if champion.get("ltv"):
        ltv["champion"] = champion["ltv"]
    table = pd.DataFrame(
        [{"task": "recommendation", "model": m, **v} for m, v in rec.items() if not m.startswith("_")]
        + [{"task": "ltv", "model": m, **v} for m, v in ltv.items()]
    )
    out = run_dir / "evaluation"
    out.mkdir(exist_ok=True)
    table.to_csv(out / "model_comparison.csv", index=False)
    (out / "model_comparison.md").write_text(table.to_markdown(index=False))
    ltv_charts(actual, {name: value for name, (value, _) in predictions.items()}, out)
    metrics = {f"test_{m}_{k}": v for m, vals in rec.items() if not m.startswith("_") for k, v in vals.items()}
    metrics |= {f"ltv_{m}_{k}": v for m, vals in ltv.items() for k, v in vals.items()}
    tracking_setup(cfg)
    with mlflow.start_run(run_id=_mlflow_run_id(run_dir)):
        mlflow.log_metrics({k: v for k, v in metrics.items() if pd.notna(v)})
        mlflow.log_artifacts(str(out), artifact_path="evaluation")
    return {"metrics": {"recommendation": rec, "ltv": ltv},
            "champion": {k: v for k, v in champion.items() if k in ("version", "error")}}


def _evaluate_champion(cfg: RunConfig, fs, actual) -> dict:
    """The current @champion on this run's holdout, by the same code as the challenger: {"version",
    "recommendation", "ltv"}, or {"version", "error"} when it cannot be evaluated; {} when there is none."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from models.checkpoint import LoadedModel
    from models.data import Protocol
    from models.evaluate import evaluate_recommendations, predict_ltv
    from models.metrics import ltv_metrics

    tracking_setup(cfg)
    try:
        version = MlflowClient().get_model_version_by_alias(cfg.registered_model, "champion").version
    except MlflowException:
        return {}
    try:
        loaded = LoadedModel.from_registry(f"models:/{cfg.registered_model}/{version}")
        rec = evaluate_recommendations(fs, loaded, Protocol.build(fs, cfg.eval_protocol)).get("model")
        _, p, ev = predict_ltv(fs, loaded, "eval")
        ltv = ltv_metrics(actual, ev, p) if len(actual) else None
    except Exception as exc:  # e.g. a champion from an older feature set: the gate then says so
        log.warning("champion v%s of %s could not be evaluated: %r", version, cfg.registered_model, exc)
        return {"version": str(version), "error": f"{type(exc).__name__}: {exc}"}
    return {"version": str(version), "recommendation": rec, "ltv": ltv}


def tracking_setup(cfg: RunConfig) -> None:
    from ltvrec.tracking import configure

    configure(cfg.experiment)


@stage
def register(run_dir: Path) -> dict:
    """Register the challenger; the model gate (ltvrec.promotion) decides whether it becomes `@champion`.

    A rejected challenger stays registered, tagged with the reasons, for comparison in the MLflow UI; the
    champion keeps its alias and scores this run.
    """
    import mlflow
    from mlflow import MlflowClient

    from ltvrec.promotion import decide

    cfg = RunConfig.load(run_dir)
    tracking_setup(cfg)
    result = json.loads((run_dir / "train" / "result.json").read_text())
    evaluated = json.loads((run_dir / "stages" / "evaluate.json").read_text())
    metrics, champion = evaluated["metrics"], evaluated.get("champion") or {}
    decision = decide(metrics | {"champion_error": champion.get("error")}, champion.get("version"),
                      cfg.ndcg_tolerance, cfg.gini_tolerance)
    version = mlflow.register_model(result["model_uri"], cfg.registered_model,
                                    tags={"airflow_run": run_dir.name, "mlflow_run_id": _mlflow_run_id(run_dir)}).version
    client = MlflowClient()
    tags = {"promotion": decision.verdict, "promotion_reasons": "; ".join(decision.reasons),
            "champion_before": champion.get("version") or "none", "rubber_stamp": str(decision.rubber_stamp).lower()}
    for model, group, key in [("model", "recommendation", "ndcg_10"), ("popularity", "recommendation", "ndcg_10"),
                              ("champion", "recommendation", "ndcg_10"), ("ziln", "ltv", "gini"),
                              ("champion", "ltv", "gini")]:
        value = metrics.get(group, {}).get(model, {}).get(key)
        if value is not None:
            tags[f"{'challenger' if model in ('model', 'ziln') else model}_{key}"] = f"{value:.6f}"
    for key, value in tags.items():
        client.set_model_version_tag(cfg.registered_model, version, key, value)
    if decision.promote:
        client.set_registered_model_alias(cfg.registered_model, "champion", version)
    champion_now = version if decision.promote else champion.get("version")
    (log.info if decision.promote else log.warning)(
        "model gate: %s v%s %s (champion is now v%s): %s", cfg.registered_model, version, decision.verdict,
        champion_now, "; ".join(decision.reasons))
    info = {"model_name": cfg.registered_model, "version": str(version), "decision": decision.verdict,
            "reasons": decision.reasons, "rubber_stamp": decision.rubber_stamp,
            "champion_before": champion.get("version"), "champion": str(champion_now)}
    (run_dir / "registry.json").write_text(json.dumps(info))
    with mlflow.start_run(run_id=_mlflow_run_id(run_dir)):
        mlflow.set_tags({"model_gate": decision.verdict, "model_gate_reasons": "; ".join(decision.reasons)[:5000]})
    return info


@stage
def score(run_dir: Path) -> dict:
    """Score every user with the `@champion` model, streaming Arrow batches into the scores Parquet files.

    `score_engine=local`: chunks of users on this machine (GPU when there is one); `spark`: jobs/score.py runs
    the same scoring function over user partitions on the Spark cluster.
    """
    import pyarrow.dataset as pads
    from mlflow import MlflowClient

    from models.checkpoint import LoadedModel, registry_checkpoint
    from models.data import FeatureSet
    from models.score import LTV_SCHEMA, RECS_SCHEMA, stream_scores

    cfg = RunConfig.load(run_dir)
    tracking_setup(cfg)
    champion = MlflowClient().get_model_version_by_alias(cfg.registered_model, "champion")
    checkpoint = registry_checkpoint(f"models:/{cfg.registered_model}@champion")
    run_date = _split(run_dir)["as_of"]
    generated_at = datetime.now(timezone.utc).replace(tzinfo=None)
    meta = {"run_date": pa.scalar(pd.Timestamp(run_date).date(), pa.date32()), "generated_at": pa.scalar(generated_at, pa.timestamp("us")),
            "model_version": pa.scalar(str(champion.version)), "mlflow_run_id": pa.scalar(_mlflow_run_id(run_dir)),
            "model_name": pa.scalar(cfg.registered_model), "horizon_days": pa.scalar(cfg.horizon_days, pa.int32())}
    columns = {"recommendations": ["run_date", "user_id", "rank", "item_id", "score", "model_name", "model_version",
                                   "mlflow_run_id", "generated_at"],
               "ltv_estimates": ["run_date", "user_id", "horizon_days", "p_active", "expected_value", "model_version",
                                 "mlflow_run_id", "generated_at"]}
    base = {"recommendations": RECS_SCHEMA, "ltv_estimates": LTV_SCHEMA}
    schemas = {t: pa.schema([base[t].field(c) if c in base[t].names else pa.field(c, meta[c].type) for c in cols])
               for t, cols in columns.items()}

    def with_meta(table: str, batch: pa.RecordBatch) -> pa.RecordBatch:
        return pa.RecordBatch.from_arrays(
            [batch.column(c) if c in batch.schema.names else pa.repeat(meta[c], batch.num_rows) for c in columns[table]],
            schema=schemas[table])

    out = run_dir / "scores"
    out.mkdir(exist_ok=True)
    writers = {t: pq.ParquetWriter(out / f"{t}.parquet", schemas[t]) for t in columns}
    try:
        if cfg.score_engine == "spark":
            spark_out = out / "spark"
            args = ["--features", str(run_dir / "features"), "--checkpoint", str(checkpoint), "--out", str(spark_out),
                    "--top-n", str(cfg.top_n), "--rank-by", cfg.rank_by]
            if cfg.max_per_category is not None:
                args += ["--max-per-category", str(cfg.max_per_category)]
            _spark_submit(cfg, "score.py", args)
            for t in columns:
                for batch in pads.dataset(spark_out / t, format="parquet").to_batches(columns=base[t].names, batch_size=100_000):
                    writers[t].write_batch(with_meta(t, batch.cast(base[t])))
        else:
            fs = FeatureSet.load(run_dir / "features")
            for recs, ltv in stream_scores(fs, LoadedModel.from_file(checkpoint), cfg.top_n, cfg.rank_by,
                                           cfg.score_chunk_users, max_per_category=cfg.max_per_category):
                writers["recommendations"].write_batch(with_meta("recommendations", recs))
                writers["ltv_estimates"].write_batch(with_meta("ltv_estimates", ltv))
    finally:
        for writer in writers.values():
            writer.close()
    rows = {t: pq.ParquetFile(out / f"{t}.parquet").metadata.num_rows for t in columns}
    users = pq.read_table(out / "recommendations.parquet", columns=["user_id"]).column("user_id")
    if rows["recommendations"] == 0:
        log.warning("no recommendations: every user has already interacted with every item of the catalogue; "
                    "only LTV estimates are published")
    return {"rows": rows | {"users_scored": len(users.unique())}, "champion_version": str(champion.version),
            "run_date": run_date, "engine": cfg.score_engine}


@stage
def gate_scores(run_dir: Path) -> dict:
    from expectations.gate import scores_frames
    from models.data import in_stock

    cfg = RunConfig.load(run_dir)
    recs = pq.read_table(run_dir / "scores" / "recommendations.parquet").to_pandas()
    ltv = pq.read_table(run_dir / "scores" / "ltv_estimates.parquet").to_pandas()
    seq = pq.ParquetDataset(run_dir / "features" / "sequences").read(columns=["user_id", "items"]).to_pandas()
    items = pq.ParquetDataset(run_dir / "features" / "items").read().to_pandas()
    seen = seq.explode("items").merge(items, left_on="items", right_on="item_idx")[["user_id", "item_id"]]
    frames, params = scores_frames(recs, ltv, seen, items.loc[in_stock(items), "item_id"], seq["user_id"], cfg.top_n)
    return _gate(run_dir, "scores", frames, params)


@stage
def publish(run_dir: Path) -> dict:
    """Replace the run date's rows of both serving tables in one transaction (and note the run in
    ops.published_runs for the next run's volume check)."""
    cfg = RunConfig.load(run_dir)
    wh = warehouse.connect(cfg.resolved_warehouse_url)
    run_date = _split(run_dir)["as_of"]
    raw_events = json.loads((run_dir / "stages" / "ingest.json").read_text())["rows"]["raw_events"]
    tables = {t: pq.ParquetFile(run_dir / "scores" / f"{t}.parquet") for t in ("recommendations", "ltv_estimates")}
    rows = wh.publish(run_date, {t: pa.RecordBatchReader.from_batches(f.schema_arrow, f.iter_batches(100_000))
                                 for t, f in tables.items()},
                      record={"model_name": cfg.registered_model, "run_id": run_dir.name, "raw_events": raw_events})
    return {"rows": rows, "run_date": run_date, "warehouse": wh.kind}


def finalize(run_dir: str) -> dict:
    """Collect every stage's record into summary.json and log it to MLflow."""
    import mlflow

    run_dir = Path(run_dir)
    cfg = RunConfig.load(run_dir)
    stages = {p.stem: json.loads(p.read_text()) for p in (run_dir / "stages").glob("*.json")}
    ordered = {name: stages[name] for name in STAGE_ORDER if name in stages}
    summary = {
        "run_id": run_dir.name,
        "mlflow_run_id": _mlflow_run_id(run_dir),
        "dataset_digest": ordered.get("ingest", {}).get("dataset_digest"),
        "config": cfg.to_dict(),
        "run_date": ordered.get("publish", {}).get("run_date"),
        "rows": {name: s["rows"] for name, s in ordered.items() if "rows" in s},
        "quarantine": ordered.get("dbt_build", {}).get("quarantine", {}),
        "metrics": ordered.get("evaluate", {}).get("metrics", {}),
        "training": {k: v for k, v in ordered.get("train", {}).items() if k != "seconds"},
        "registry": ordered.get("register", {}),
        "timings_s": {name: s["seconds"] for name, s in ordered.items()},
    }
    (run_dir / "summary.json").write_text(json.dumps(strict_json(summary), indent=2, default=str, allow_nan=False))
    tracking_setup(cfg)
    with mlflow.start_run(run_id=summary["mlflow_run_id"]):
        mlflow.log_artifact(str(run_dir / "summary.json"))
    return summary


def _spark_submit(cfg: RunConfig, job: str, args: list[str]) -> None:
    """spark-submit a job of jobs/ to the configured master (local[2] by default)."""
    cmd = [_bin("spark-submit"), "--master", cfg.resolved_spark_master, "--driver-memory", "2g",
           "--conf", "spark.sql.shuffle.partitions=8", "--conf", "spark.ui.enabled=false",
           str(PROJECT_ROOT / "jobs" / job), *args]
    _run(cmd, {"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable})


def _run(cmd: list[str], extra_env: dict[str, str]) -> None:
    """Run a subprocess, streaming its output into our log; raise with its tail on failure."""
    log.info("running: %s", " ".join(cmd))
    env = {**os.environ, **extra_env}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=PROJECT_ROOT)
    tail: list[str] = []
    for line in proc.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-40:]
        log.info("%s", line)
    if proc.wait() != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} exited with {proc.returncode}:\n" + "\n".join(tail))
