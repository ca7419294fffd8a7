"""The DAG's stages. Each takes the run folder (the only thing passed between tasks), reads its inputs, calls the
domain code in its technology's home (sources, dbt, GX, Spark, PyTorch, MLflow, the warehouse) and returns its
record: timing and counts, kept in stages/<name>.json and gathered into summary.json.

The Airflow DAG, the CLI and the tests call these same functions.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import time
from contextlib import contextmanager
from datetime import timezone
from pathlib import Path

from ltvrec import cleaning, launch, promotion, serving, sources, synthetic, tracking, warehouse
from ltvrec.config import DAG_ID, EVENT_TYPES, RunConfig, ltvrec_home
from ltvrec.rundir import RunDir, write_json

log = logging.getLogger("ltvrec")
QUIET_LOGGERS = ("matplotlib",)  # GX and MLflow are quieted where they are used (expectations/gate.py, tracking.py)


def stage(fn):
    """Mark the stage running, log it to logs/<name>.log, time it and keep its record (or its failure)."""

    @functools.wraps(fn)
    def wrapper(run_dir: str) -> dict:
        run, name, started = RunDir(Path(run_dir)), fn.__name__, time.time()
        run.mark_running(name)
        with stage_log(run.log_file(name)):
            try:
                record = {"seconds": 0.0, **(fn(run) or {})}
            except BaseException as exc:
                run.mark_failed(name, exc, round(time.time() - started, 3))
                log.error("stage %s failed: %s", name, exc)
                raise
            record["seconds"] = round(time.time() - started, 3)
            run.mark_done(name, record)
            log.info("stage %s done in %.1fs", name, record["seconds"])
        return record

    return wrapper


@contextmanager
def stage_log(log_file: Path):
    """Everything logged meanwhile (ltvrec's and the libraries' warnings) also goes to the stage's log file."""
    for name in QUIET_LOGGERS:  # silenced at the source: their INFO lines bury ours
        logging.getLogger(name).setLevel(logging.WARNING)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def record_failure(run_id: str, task_id: str, error: object) -> None:
    """Note a task that failed outside its stage function (on import; a dbt model's task) in its run folder. A task
    of a group (dbt_build.<model>_model_build) fails its group's stage, naming the task."""
    run = RunDir.for_run_id(run_id)
    name, _, task = task_id.partition(".")
    if run.path.exists() and (run.stage(name) or {}).get("state") != "failed":
        run.mark_failed(name, f"{task}: {error}" if task else str(error))


def for_data_interval(params: dict, run_type, interval_end) -> dict:
    """A scheduled or backfilled run is for the date (UTC) of its data interval's end, its run_date, unless its params
    name a date (run_date or as_of); a manual run keeps its params. `run_type`: Airflow's DagRunType (or its value)."""
    if getattr(run_type, "value", run_type) not in ("scheduled", "backfill") or interval_end is None:
        return params
    if params.get("run_date") or params.get("as_of"):
        return params
    return params | {"run_date": interval_end.astimezone(timezone.utc).date().isoformat()}


def prepare(params: dict, run_id: str, dag_id: str = DAG_ID) -> str:
    """Validate the params and the input (a file's path, type and header; the warehouse source's tables), create the
    run folder and its MLflow run."""
    started = time.time()
    cfg = RunConfig.from_dict({k: v for k, v in params.items() if v is not None})
    check_run(cfg)
    run = RunDir.for_run_id(run_id)
    run.save_config(cfg)
    tracking.start_run(cfg, run, run_id, dag_id)
    run.mark_done("prepare", {"seconds": round(time.time() - started, 3)})
    log.info("run folder %s, MLflow run %s", run.path, run.mlflow_run_id)
    return str(run.path)


def check_run(cfg: RunConfig) -> None:
    """What must hold before a run starts (`ltvrec run` checks it before Airflow starts, the prepare task again): its
    input, and with training=none a @champion to score with."""
    check_input(cfg)
    if cfg.training == "none" and not tracking.champion_version(cfg):
        raise ValueError(f"training=none scores with the @champion of {cfg.registered_model}, and it has none yet: "
                         "run once with training=auto (or scratch) first")


def check_input(cfg: RunConfig) -> None:
    """Refuse input that cannot work before a run starts: a file source's paths, types and headers; the warehouse
    source's tables and columns."""
    if cfg.source == "warehouse":
        sources.check_tables(warehouse.connect(cfg.resolved_warehouse_url), cfg.raw_schema, cfg.events_table,
                             cfg.items_table, cfg.loaded_at_field)
    else:
        sources.check_input(cfg.source, cfg.path, cfg.items_path)


@stage
def ingest(run: RunDir) -> dict:
    """Read a file source into canonical raw tables and load them into the warehouse's `raw` schema; of the warehouse
    source, check the team's tables and their freshness, copying nothing."""
    cfg = run.config()
    if cfg.source == "warehouse":
        return ingest_in_place(run, cfg)
    if cfg.source == "synthetic":
        paths = synthetic.write(run.input, n_users=cfg.synthetic_users, n_items=cfg.synthetic_items,
                                days=cfg.synthetic_days, seed=cfg.seed, regime=cfg.synthetic_regime)
        events, items = sources.load_events(*paths)
    else:
        events, items = sources.load(cfg.source, cfg.path, cfg.items_path)
        paths = [p for p in (cfg.path, cfg.items_path) if p]
    wh = warehouse.connect(cfg.resolved_warehouse_url)
    load_raw(wh, events, items)
    prepare_warehouse(wh)
    return {"rows": {"raw_events": events.num_rows, "raw_items": items.num_rows},
            "dataset_digest": sources.file_digest(*paths), "warehouse": wh.kind}


def load_raw(wh, events, items) -> None:
    """Replace raw.events and raw.items with a file source's load, unless one of them is not ltvrec's (a table the
    team loads there, which the warehouse source reads): InputError, and nothing replaced."""
    for table in ("events", "items"):
        columns = wh.columns("raw", table)
        if columns and "source_row" not in columns:
            raise sources.InputError(f"raw.{table}: exists in the {wh.kind} warehouse and is not ltvrec's load (no "
                                     "source_row column): a table your team loads? Read it with source=warehouse; a "
                                     "file source would replace raw.events and raw.items")
    wh.replace_table("raw", "events", events)
    wh.replace_table("raw", "items", items)


def ingest_in_place(run: RunDir, cfg: RunConfig) -> dict:
    """The warehouse source: its tables still have the contract's columns and its events were loaded recently
    enough (dbt source freshness); dbt reads them where they are."""
    wh = warehouse.connect(cfg.resolved_warehouse_url)
    sources.check_tables(wh, cfg.raw_schema, cfg.events_table, cfg.items_table, cfg.loaded_at_field)
    freshness = cleaning.check_freshness(wh, cleaning.run_vars(cfg), run.dbt / "freshness", run.dbt / "logs")
    log.info("%s: newest row loaded %s h ago (limit %s h)", freshness["table"], freshness["age_hours"],
             freshness["limit_hours"])
    rows = {}
    for name, table in (("raw_events", cfg.events_table), ("raw_items", cfg.items_table)):
        found = wh.query(f"select count(*) as n from {warehouse.qualified(cfg.raw_schema, table)}")
        rows[name] = int(found.to_pylist()[0]["n"])
    prepare_warehouse(wh)
    digest = hashlib.sha256(json.dumps([freshness["table"], cfg.items_table, rows, freshness["max_loaded_at"]])
                            .encode()).hexdigest()
    return {"rows": rows, "freshness": freshness, "dataset_digest": digest, "warehouse": wh.kind}


def prepare_warehouse(wh) -> None:
    wh.create_schemas(cleaning.model_schemas())  # before dbt's tasks, which may run at the same time
    wh.create_serving()  # dbt's outcome models read what earlier runs published


@stage
def gate_raw(run: RunDir) -> dict:
    """The raw contract, and the volume check against the last published run of the same registered model."""
    from expectations import frames
    from expectations.gate import run_gate

    cfg = run.config()
    wh = warehouse.connect(cfg.resolved_warehouse_url)
    found, params = frames.raw(wh, cleaning.raw_vars(cfg), wh.last_published(cfg.registered_model),
                               cfg.max_volume_ratio)
    volume = found["volume"].to_dict("records")
    return {"gate": run_gate("raw", found, params, run.gate("raw")), "volume": volume[0] if volume else None}


@stage
def dbt_build(run: RunDir) -> dict:
    """The whole dbt project in one `dbt build` (models, schema and unit tests) on the run's warehouse, for callers
    outside Airflow (tests, benchmarks). The DAG runs the same project as a task per model (dags/ltvrec_batch.py)."""
    cfg = run.config()
    cleaning.dbt_build(warehouse.connect(cfg.resolved_warehouse_url), cleaning.run_vars(cfg), run.dbt / "target",
                       run.dbt / "logs")
    return {}


@stage
def quarantine(run: RunDir) -> dict:
    """What dbt cleaned and quarantined (rows and reject reasons, of events and of the catalogue). In the DAG it also
    closes the record of dbt_build, the stage the per-model dbt tasks make up."""
    built = run.stage("dbt_build") or {}
    if built.get("state") == "running":
        run.mark_done("dbt_build", {"seconds": round(time.time() - built["started"], 3)})
    record = cleaning.cleaning_record(warehouse.connect(run.config().resolved_warehouse_url))
    log.info("dbt: %s; dbt's own log: %s", record["rows"], run.dbt / "logs" / "dbt.log")
    items = sum(record.get("quarantine_items", {}).values())
    notes = [f"{items:,} catalogue row(s) quarantined ({', '.join(record['quarantine_items'])}): see "
             "marts.items_quarantine"] if items else []
    return record | {"notes": notes}


@stage
def gate_cleaned(run: RunDir) -> dict:
    from expectations import frames
    from expectations.gate import run_gate

    cfg = run.config()
    found, params = frames.cleaned(warehouse.connect(cfg.resolved_warehouse_url), cfg.max_quarantine_share)
    return {"gate": run_gate("cleaned", found, params, run.gate("cleaned"))}


@stage
def features(run: RunDir) -> dict:
    """Export the marts to Parquet and run the Spark feature job on them (jobs/features.py)."""
    cfg = run.config()
    wh = warehouse.connect(cfg.resolved_warehouse_url)
    run.marts.mkdir(exist_ok=True)
    rows = {t: wh.export_parquet("marts", t, run.marts / f"{t}.parquet") for t in ("fct_events", "dim_items")}
    args = ["--events", str(run.marts / "fct_events.parquet"), "--items", str(run.marts / "dim_items.parquet"),
            "--out", str(run.features), "--horizon-days", str(cfg.horizon_days),
            "--holdout-days", str(cfg.holdout_days), "--ltv-train-windows", str(cfg.ltv_train_windows),
            "--ltv-backtest-origins", str(cfg.ltv_backtest_origins),
            "--event-types", ",".join(EVENT_TYPES), *(["--as-of", cfg.as_of] if cfg.as_of else [])]
    launch.spark_submit("features.py", args, cfg.resolved_spark_master, run.log_file("features"), launch.C1_JIT)
    split = run.split()
    tracking.name_run(cfg, run.mlflow_run_id, run.run_date)
    return {"rows": rows | feature_rows(run.features), "split": split}


def feature_rows(features_dir: Path) -> dict[str, int]:
    import pyarrow.parquet as pq

    ltv = pq.read_table(features_dir / "ltv_features", columns=["cutoff"]).column("cutoff").value_counts()
    return {"items": pq.ParquetDataset(features_dir / "items").read(columns=["item_idx"]).num_rows,
            "sequences": pq.ParquetDataset(features_dir / "sequences").read(columns=["user_id"]).num_rows,
            **{f"ltv_{v['values']}": v["counts"] for v in ltv.to_pylist()}}


@stage
def gate_features(run: RunDir) -> dict:
    from expectations import frames
    from expectations.gate import run_gate

    found, params = frames.features(run.features, run.config().eval_protocol)
    return {"gate": run_gate("features", found, params, run.gate("features"))}


@stage
def ltv_prior(run: RunDir) -> dict:
    """BG/NBD + Gamma-Gamma at every LTV cut-off: the ZILN head's seasonal prior (models/ltv_prior.py)."""
    from models.ltv_prior import write_prior

    if not run.config().ltv_prior:
        return {"skipped": "ltv_prior=false"}
    return write_prior(run.features, run.split()["horizon_days"])  # the horizon the features' labels span


@stage
def ltv_backtest(run: RunDir) -> dict:
    """Rolling origins before D - 2H decide the ZILN correction weight and level calibration, and compare every LTV
    family there (models/ltv_backtest.py); the figures go to MLflow and the run's summary."""
    from models.data import load_ltv
    from models.ltv_backtest import decide

    cfg = run.config()
    if cfg.training == "none":
        return {"skipped": "training=none: nothing to train"}
    ltv = load_ltv(run.features)
    if ltv.empty:
        return {"skipped": "no customers: nothing to backtest"}
    record = decide(ltv, run.split()["ltv_cutoffs"], cfg.ltv_prior and "ltv_prior" in ltv.columns, cfg.ltv_sigma_max,
                    cfg.d_model, cfg.seed, cfg.ltv_correction_weight, cfg.ltv_calibration,
                    (run.stage("ltv_prior") or {}).get("seasonal_factors"), cfg.ltv_model)
    tracking.log_metrics_tags(cfg, run.mlflow_run_id, flat_backtest_metrics(record),
                              {"ltv_backtest_best_family": record.get("best_family", "none"),
                               "ltv_published_model": record["ltv_model"], "ltv_total_from": record["ltv_total_from"]})
    for reason in record["reasons"]:
        log.info("LTV backtest: %s", reason)
    return record


def flat_backtest_metrics(record: dict) -> dict[str, float]:
    """backtest_<family>_<metric> averaged over the origins, and the decisions (backtest_ltv_*), for MLflow."""
    out = {f"backtest_{k}": v for k, v in record["decisions"].items()}
    for name in ("gini", "decile_mape", "calibrated_decile_mape", "levels", "total_error"):
        for family, value in record.get(name, {}).items():
            out[f"backtest_{family.replace('.', '_')}_{name.removesuffix('s')}"] = value
    for source, found in record.get("total_sources", {}).items():
        out[f"backtest_{source}_total_error"] = found["error"]
    return out


def ltv_decisions(run: RunDir) -> dict:
    """The LTV backtest's decisions for the trainer (ltv_correction_weight, ltv_level); {} before it ran."""
    return dict((run.stage("ltv_backtest") or {}).get("decisions", {}))


def train_config(cfg: RunConfig, features_dir: Path | str, out_dir: Path | str, **wiring):
    """The trainer's own config (models.train.TrainConfig): the run config's model and training knobs, plus where
    to read and write (`wiring`: mlflow_run_id, init_from, text_cache, progress_file; None when not given) and the
    LTV backtest's decisions (ltv_correction_weight, ltv_level; without them, an explicit weight or the fallback,
    and no calibration)."""
    from models.config import TrainConfig
    from models.ltv_backtest import FALLBACK_WEIGHT

    names = [f.name for f in dataclasses.fields(TrainConfig)]
    values = {name: getattr(cfg, name) for name in names if hasattr(cfg, name)}
    values |= {"mlflow_run_id": None, "init_from": None, "text_cache": None, "progress_file": None, "ltv_level": 1.0,
               "continual_since": None, "continued_runs": 0,
               "ltv_correction_weight": FALLBACK_WEIGHT if cfg.ltv_correction_weight is None
               else cfg.ltv_correction_weight}
    return TrainConfig(**values | wiring, features_dir=str(features_dir), out_dir=str(out_dir))


@stage
def train(run: RunDir) -> dict:
    """torchrun the trainer (models/train.py; DDP over `nproc` processes: gloo on CPU, NCCL on GPUs): from scratch,
    or continued from the @champion, as `training` and the drift checks decide (models/continual.py)."""
    cfg = run.config()
    if cfg.training == "none":
        version = tracking.champion_version(cfg)
        tracking.log_metrics_tags(cfg, run.mlflow_run_id, {}, {"training_mode": "none",
                                                               "training_reasons": "training=none"})
        return {"skipped": f"training=none: @champion v{version} scores this run", "mode": "none",
                "decision": {"mode": "none", "reasons": ["training=none"], "checks": {"champion_version": version}}}
    decision, continued = training_plan(cfg, run)
    for reason in decision.reasons:
        log.info("training: %s (%s)", decision.mode, reason)
    tracking.log_metrics_tags(cfg, run.mlflow_run_id, {}, {"training_mode": decision.mode,
                                                           "training_reasons": "; ".join(decision.reasons)})
    config_file = run.train / "config.json"
    train_config(cfg, run.features, run.train, mlflow_run_id=run.mlflow_run_id,
                 text_cache=str(ltvrec_home() / "cache" / "item_text_minilm.parquet"),
                 progress_file=str(run.progress_file("train")), **ltv_decisions(run), **continued).save(config_file)
    launch.torchrun(config_file, launch.processes_per_node(cfg.nproc), run.log_file("train"), cfg.nnodes,
                    cfg.rdzv_endpoint, rdzv_id=run.name)
    result = run.train_result()
    notes = [f"{decision.mode}: {reason}" for reason in decision.reasons] + result.get("notes", [])
    return result | {"decision": decision.to_dict(), "notes": notes}


def training_plan(cfg: RunConfig, run: RunDir):
    """(models.continual.Decision, the trainer's wiring of a continued run: the champion's checkpoint, its data end,
    the lineage's count and the epochs; {} for a full training)."""
    import shutil

    import torch

    from models.continual import Decision, Thresholds, decide

    if cfg.training == "scratch":
        return Decision("scratch", ["training=scratch"]), {}
    version = tracking.champion_version(cfg)
    checkpoint = tracking.model_checkpoint(cfg, version) if version else None
    champion = torch.load(checkpoint, map_location="cpu", weights_only=False) if checkpoint else {}
    lineage = champion.get("lineage")
    checks = drift_checks(cfg, run, champion, version) if lineage else {}
    limits = Thresholds(cfg.retrain_new_item_share, cfg.retrain_feature_psi, cfg.retrain_realised_drop,
                        cfg.max_continued_runs)
    decision = decide(cfg.training, lineage, checks, limits)
    if decision.mode == "scratch":
        return decision, {}
    init = run.train / "init_champion.pt"
    init.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(checkpoint, init)
    return decision, {"init_from": str(init), "continual_since": lineage["trained_until"],
                      "continued_runs": lineage.get("continued_runs", 0) + 1, "epochs": cfg.continue_epochs}


def drift_checks(cfg: RunConfig, run: RunDir, champion: dict, version: str) -> dict:
    """What auto's decision reads (models/continual.py): this run's data and the champion's lineage compared."""
    from models.continual import architecture_changes, largest_shift, new_item_share, realised_drop
    from models.data import FeatureSet, epoch

    fs, lineage = FeatureSet.load(run.features), champion["lineage"]
    events, share = new_item_share(fs.items, fs.ts, fs.item_ids, set(champion["item_ids"]),
                                   epoch(lineage["trained_until"]))
    # like with like: features counted over the whole history (tenure, purchases) grow with it at any cut-off
    feature, shift = largest_shift(lineage["ltv_profile"], fs.ltv_frame("train"))
    wanted = {"d_model": cfg.d_model, "n_heads": cfg.n_heads, "n_layers": cfg.n_layers, "max_len": cfg.max_seq_len,
              "time_gaps": cfg.time_gaps, "ltv_user_dim": cfg.ltv_user_dim, "item_text": cfg.item_text}
    history = serving.realised_ndcg_history(warehouse.connect(cfg.resolved_warehouse_url), cfg.registered_model,
                                            version)
    return {"champion_version": version, "champion_trained_until": lineage["trained_until"],
            "champion_saw_the_test_window": epoch(lineage["trained_until"]) > epoch(fs.split["test_start"]),
            "architecture_changes": architecture_changes(champion["model_config"], wanted), "events_since": events,
            "new_item_share": share, "shifted_feature": feature, "feature_psi_beyond_chance": shift,
            "realised_drop": realised_drop(history), "continued_runs": lineage.get("continued_runs", 0)}


@stage
def als_baseline(run: RunDir) -> dict:
    """Spark MLlib ALS (jobs/als_baseline.py) on every user's history before the test window, its rank, reg and
    alpha tuned first on the validation window (fitted on the histories before it), as the recommender is."""
    import pyarrow.parquet as pq

    from models.data import FeatureSet, Protocol
    from models.ranking import als_inputs

    cfg = run.config()
    fs = FeatureSet.load(run.features)
    if fs.n_items - 1 < 2:
        log.info("ALS baseline skipped: %d item(s) in the catalogue, nothing to rank", fs.n_items - 1)
        return {"skipped": f"{fs.n_items - 1} item(s) in the catalogue"}
    args = als_inputs(fs, Protocol.build(fs, cfg.eval_protocol), run.als, tune=cfg.als_tuning)
    launch.spark_submit("als_baseline.py", args + ["--seed", str(cfg.seed)], cfg.resolved_spark_master,
                        run.log_file("als_baseline"))
    rows = {"als_interactions": pq.read_metadata(run.als / "interactions.parquet").num_rows}
    if "--tune-interactions" not in args:
        why = "no validation targets to tune on" if cfg.als_tuning else "als_tuning is off"
        log.info("ALS baseline: %s; jobs/als_baseline.py's default parameters", why)
        return {"rows": rows, "tuning": f"skipped: {why}"}
    tuning = json.loads((run.als / "tuning.json").read_text())
    best = max(trial["valid_ndcg_10"] for trial in tuning["trials"])
    log.info("ALS baseline: tuned on the validation window: %s (NDCG@10 %.4f, %d trials)", tuning["chosen"], best,
             len(tuning["trials"]))
    tracking.log_metrics_tags(cfg, run.mlflow_run_id, {"als_valid_ndcg_10": best},
                              {f"als_{name}": str(value) for name, value in tuning["chosen"].items()})
    return {"rows": rows,
            "tuning": {"chosen": tuning["chosen"], "valid_ndcg_10": best, "trials": len(tuning["trials"])}}


@stage
def evaluate(run: RunDir) -> dict:
    """The challenger, the baselines and the current @champion on this run's holdout, by the same code; with
    training=none, the champions (as "model", their versions in model_versions) and the baselines."""
    from models.checkpoint import LoadedModel
    from models.data import FeatureSet, Protocol
    from models.report import evaluate_run, write_report
    from models.ranking import load_factors

    cfg = run.config()
    fs = FeatureSet.load(run.features)
    protocol = Protocol.build(fs, cfg.eval_protocol)
    factors = load_factors(run.als, len(fs.users), fs.n_items) if (run.als / "item_factors").exists() else None
    if cfg.training == "none":  # no challenger: the champions are "model", the gate has nothing to decide
        versions = tracking.champion_versions(cfg)
        checkpoint, _ = champion_model(cfg, versions, run.evaluation, fs.split["horizon_days"])
        report, gate = evaluate_run(fs, LoadedModel.from_file(checkpoint), protocol, factors), {}
        evaluated = {"model_versions": versions}
    else:
        report = evaluate_run(fs, LoadedModel.from_file(run.final_checkpoint), protocol, factors,
                              total_from=ltv_total_from(run))
        champions = promotion.evaluate_champions(cfg, fs, protocol, report)
        comparisons = promotion.compare(cfg, report, champions)
        gate = {"champions": champions, "coupled": promotion.coupling(cfg, champions),
                "comparisons": {h: [c.to_dict() for c in found] for h, found in comparisons.items()}}
        versions, evaluated = {head: found["version"] for head, found in champions.items()}, {}
    write_report(report, run.evaluation)
    tracking.log_evaluation(cfg, run.mlflow_run_id, report.flat_metrics(), run.evaluation)
    realised = serving.realised_performance(warehouse.connect(cfg.resolved_warehouse_url), cfg.registered_model,
                                            versions)
    tracking.log_metrics_tags(cfg, run.mlflow_run_id, {
        f"realised_champion_{key}": float(figures[key]) for head, figures in realised.items()
        for key in serving.REALISED[head] if figures[key] is not None}, {})
    return {"metrics": report.metrics, "gate": gate, "realised": realised, **evaluated}


@stage
def register(run: RunDir) -> dict:
    """Register the challenger; the model gate (ltvrec/promotion.py) decides whether it becomes `@champion`."""
    cfg, evaluated = run.config(), run.stage("evaluate")
    if cfg.training == "none":
        versions = tracking.champion_versions(cfg)
        return {"skipped": "training=none: no challenger", "decision": "kept", "model_name": cfg.registered_model,
                "champion": versions["recommendation"], "ltv_champion": versions["ltv"]}
    return promotion.register(cfg, run.train_result()["model_uri"], evaluated["metrics"], evaluated["gate"],
                              run.name, run.mlflow_run_id)


@stage
def score(run: RunDir) -> dict:
    """Top-N for every user and an LTV estimate for every customer with the `@champion`, streamed into the scores
    files: on this machine (CPU or GPU), or with score_engine=spark in jobs/score.py on the Spark cluster."""
    cfg = run.config()
    versions = tracking.champion_versions(cfg)
    if not versions:  # register runs first: only a failed registration gets here
        raise RuntimeError(f"no @champion of {cfg.registered_model} in the registry to score with")
    split = run.split()
    checkpoint, horizon_days = champion_model(cfg, versions, run.scores, split["horizon_days"])
    family, expected_values = published_ltv_model(run, checkpoint)
    meta = serving.run_metadata(run.run_date, cfg.registered_model, versions, run.mlflow_run_id, horizon_days, family)
    with serving.ScoresWriter(run.scores, meta, run.progress_file("score"), expected_values) as writer:
        if cfg.score_engine == "spark":
            spark_out = run.scores / "spark"
            launch.spark_submit("score.py", serving.spark_score_args(cfg, run.features, checkpoint, spark_out),
                                cfg.resolved_spark_master, run.log_file("score"))
            writer.write_spark_output(spark_out)
        else:
            writer.write_local(run.features, checkpoint, cfg)
    notes = []
    if writer.rows["recommendations"] == 0:
        notes.append("no recommendations: every user has already interacted with every item of the catalogue; "
                     "only LTV estimates are published")
        log.warning(notes[-1])
    return {"rows": writer.rows | {"users_scored": writer.users}, "champion_version": versions["recommendation"],
            "ltv_champion_version": versions["ltv"], "ltv_model": family, "ltv_horizon_days": horizon_days,
            "run_date": run.run_date, "engine": cfg.score_engine, "notes": notes}


def ltv_total_from(run: RunDir) -> str:
    """Where the published ZILN estimates take their total from (models/ltv_backtest.py): `model`, `prior` or
    `recent`."""
    return (run.stage("ltv_backtest") or {}).get("ltv_total_from", "model")  # no backtest (training=none): model


def published_ltv_model(run: RunDir, checkpoint: Path):
    """(the LTV family the backtest chose to publish, its estimates by user_id: None where they are the scorer's,
    the head's at its own level)."""
    import pandas as pd

    from models.checkpoint import LoadedModel
    from models.data import FeatureSet
    from models.evaluate import head_estimates
    from models.ltv_backtest import published_estimates

    record = run.stage("ltv_backtest") or {}
    family = record.get("ltv_model", "ziln")  # no backtest (training=none): the champion's head
    if family == "ziln" and ltv_total_from(run) == "model":
        return family, None
    fs = FeatureSet.load(run.features)
    if family == "ziln":
        log.info("publishing the LTV head's estimates at the %s total (the LTV backtest's choice)", ltv_total_from(run))
        frame, _, expected = head_estimates(fs, LoadedModel.from_file(checkpoint), "score", ltv_total_from(run))
        return family, pd.Series(expected, index=frame["user_id"].to_numpy())
    log.info("publishing the LTV estimates of %s (the LTV backtest's choice)", family)
    use_prior = run.config().ltv_prior and "ltv_prior" in fs.ltv.columns  # as the backtest decided it
    return family, published_estimates(fs, family, use_prior, record.get("ltv_model_level", 1.0))


def champion_model(cfg: RunConfig, versions: dict[str, str], folder: Path, run_horizon: int) -> tuple[Path, int]:
    """The checkpoint that scores this run (the recommender's champion, with the LTV champion's head when the model
    gate chose another version for it) and the LTV horizon its head was trained for: the horizon the published
    estimates are labelled with."""
    import torch

    from models.checkpoint import combine_heads

    checkpoint = tracking.model_checkpoint(cfg, versions["recommendation"])
    if versions["ltv"] != versions["recommendation"]:
        folder.mkdir(parents=True, exist_ok=True)
        checkpoint = combine_heads(checkpoint, tracking.model_checkpoint(cfg, versions["ltv"]),
                                   folder / "champions.pt")
        log.info("scoring with v%s's recommender and v%s's LTV head", versions["recommendation"], versions["ltv"])
    horizon = torch.load(checkpoint, map_location="cpu", weights_only=False).get("horizon_days")
    if horizon is None:
        log.warning("the LTV champion's horizon is not recorded (an older model): its estimates are labelled with "
                    "this run's horizon, %d days", run_horizon)
        return checkpoint, run_horizon
    if horizon != run_horizon:  # its features (spend_past_h, ...) would be read over the wrong window
        raise RuntimeError(f"the LTV champion v{versions['ltv']} of {cfg.registered_model} was trained for a "
                           f"{horizon}-day horizon, this run's features for {run_horizon} days, and the challenger's "
                           "LTV head did not pass the model gate (see the register stage): no LTV estimate fit to "
                           f"publish. Rerun with --horizon-days {horizon}, or with a model_name of its own.")
    return checkpoint, int(horizon)


@stage
def gate_scores(run: RunDir) -> dict:
    from expectations import frames
    from expectations.gate import run_gate

    found, params = frames.scores_files(run.scores_file("recommendations"), run.scores_file("ltv_estimates"),
                                        run.features, run.config().top_n)
    return {"gate": run_gate("scores", found, params, run.gate("scores"))}


@stage
def publish(run: RunDir) -> dict:
    """Replace the run date's rows of both serving tables in one transaction (and note the run in
    ops.published_runs for the next run's volume check)."""
    cfg = run.config()
    wh = warehouse.connect(cfg.resolved_warehouse_url)
    record = {"model_name": cfg.registered_model, "run_id": run.name,
              "raw_events": run.stage("ingest")["rows"]["raw_events"]}
    rows = wh.publish(run.run_date, serving.read_scores(run.scores), record=record)
    return {"rows": rows, "run_date": run.run_date, "warehouse": wh.kind}


def summarize(run_dir: str) -> dict:
    """Gather every stage's record into summary.json and log it to MLflow."""
    run, started = RunDir(Path(run_dir)), time.time()
    cfg, records = run.config(), run.records()
    summary = {
        "run_id": run.name,
        "mlflow_run_id": run.mlflow_run_id,
        "dataset_digest": records.get("ingest", {}).get("dataset_digest"),
        "config": cfg.to_dict(),
        "run_date": records.get("publish", {}).get("run_date"),
        "rows": {name: rec["rows"] for name, rec in records.items() if "rows" in rec},
        "quarantine": records.get("quarantine", {}).get("quarantine", {}),
        "quarantine_items": records.get("quarantine", {}).get("quarantine_items", {}),
        "metrics": records.get("evaluate", {}).get("metrics", {}),
        "realised": records.get("evaluate", {}).get("realised", {}),
        "ltv_backtest": {k: v for k, v in records.get("ltv_backtest", {}).items() if k not in ("seconds", "state")},
        "als_tuning": records.get("als_baseline", {}).get("tuning"),
        "training": {k: v for k, v in records.get("train", {}).items() if k != "seconds"},
        "registry": records.get("register", {}),
        "timings_s": {name: rec["seconds"] for name, rec in records.items()},
    }
    write_json(run.summary_file, strict_json(summary))
    tracking.log_artifact(cfg, run.mlflow_run_id, run.summary_file)
    run.mark_done("summarize", {"seconds": round(time.time() - started, 3)})
    return summary


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
