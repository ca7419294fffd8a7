"""The run's parameters, state locations and the project's event vocabulary: each fact declared once.

Every knob of a DAG run is one `RunConfig` field declared with `knob(...)`: type, default, allowed values, bounds,
help and group. The DAG's Params (`dag_params`), the CLI's options (ltvrec/cli.py), the validation and the
README's params table (`params_markdown`) are all generated from those declarations.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

# The clean event types; a type's integer code in sequences is its position + 1 (0 is padding). Passed to the
# Spark features job (--event-types), dbt (var event_types), the GX suites (params) and, through the features'
# metadata, to the model.
EVENT_TYPES = ("view", "cart", "purchase", "rating", "return")
# Accepted by the raw contract, always quarantined by dbt (Online Retail's fees and adjustments).
RAW_ONLY_EVENT_TYPES = ("non_product",)
SOURCES = ("synthetic", "events", "online_retail", "movielens", "warehouse")
TABLE_NAME = r"[a-z_][a-z0-9_]*"  # a warehouse schema, table or column name (ltvrec.warehouse.IDENT)
# "auto" and the LTV families the run fits and can publish (models/ltv_backtest.py)
LTV_MODELS = ("auto", "ziln", "gbdt", "bgnbd_gamma_gamma", "seasonal_bgnbd_prior", "naive_past_spend")
SYNTHETIC_REGIMES = ("steady", "ageing", "growing", "seasonal")  # ltvrec/synthetic.py
DAG_ID = "ltvrec_batch"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Settings every Airflow process of ltvrec gets (in-process, the stack): astronomer-cosmos reports usage to a remote
# endpoint unless told not to
AIRFLOW_SETTINGS = {"AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False"}

# Knobs whose default depends on the data source (None = not given: the source's value, else the generic one).
# MovieLens is the literature's benchmark: leave-one-out, long-lived users (165 ratings on average), so it gets
# SASRec's sequence length of 200, a longer budget and the published SASRec+ recipe's patience of 10.
SOURCE_DEFAULTS = {
    "movielens": {"eval_protocol": "leave_one_out", "max_seq_len": 200, "max_train_minutes": 60.0, "patience": 10},
}
GENERIC_DEFAULTS = {"eval_protocol": "temporal", "max_seq_len": 50, "max_train_minutes": 10.0, "patience": 4}
GROUPS = ("data", "outputs", "evaluation", "gates", "model", "training", "ltv", "scoring", "services", "experimental")


def knob(default, help: str, group: str, *, choices: tuple | None = None, minimum: float | None = None,
         maximum: float | None = None, above: float | None = None, pattern: str | None = None):
    """A RunConfig field with what the DAG Params, the CLI, validation and the README need to know of it.
    `above`: exclusive lower bound; `pattern`: a regular expression the whole value must match."""
    if group not in GROUPS:
        raise ValueError(f"unknown knob group {group!r}")
    meta = {"help": help, "group": group, "choices": choices, "minimum": minimum, "maximum": maximum,
            "above": above, "pattern": pattern}
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    """All knobs of one DAG run. Unknown keys are rejected; values are checked against their declarations."""

    # data
    source: str = knob("synthetic", "input layout", "data", choices=SOURCES)
    path: str | None = knob(None, "input file or folder (the events, online_retail and movielens sources)", "data")
    items_path: str | None = knob(None, "item catalogue file (events source)", "data")
    raw_schema: str = knob("raw", "schema of the tables the team loads (warehouse source)", "data", pattern=TABLE_NAME)
    events_table: str = knob("events", "the team's events table in raw_schema (warehouse source)", "data",
                             pattern=TABLE_NAME)
    items_table: str = knob("items", "the team's item catalogue in raw_schema (warehouse source)", "data",
                            pattern=TABLE_NAME)
    loaded_at_field: str = knob("loaded_at", "column of events_table with each row's load time, UTC (warehouse "
                                "source)", "data", pattern=TABLE_NAME)
    freshness_hours: int = knob(36, "a warehouse-source run stops when events_table's newest row was loaded longer "
                                "ago than this (dbt source freshness)", "data", minimum=1)
    as_of: str | None = knob(None, "the last day whose events the run sees, YYYY-MM-DD (its run_date is the day "
                             "after); default: the day of the last event", "data",
                             pattern=r"\d{4}-\d{2}-\d{2}")
    run_date: str | None = knob(None, "the date this run is for: it sees only events before it and publishes its "
                                "partition; default: the day after as_of; scheduled and backfilled runs get their "
                                "data interval's end", "data", pattern=r"\d{4}-\d{2}-\d{2}")
    synthetic_users: int = knob(2000, "users of the synthetic source", "data", minimum=1)
    synthetic_items: int = knob(300, "items of the synthetic source", "data", minimum=2)
    synthetic_days: int = knob(365, "days of history of the synthetic source", "data", minimum=30)
    synthetic_regime: str = knob("steady", "how the synthetic customer base changes over time (ltvrec/synthetic.py)",
                                 "data", choices=SYNTHETIC_REGIMES)
    seed: int = knob(42, "random seed (synthetic data, training)", "data")
    # outputs
    top_n: int = knob(10, "recommendations per user", "outputs", minimum=1)
    rank_by: str = knob("relevance", "order of the published top-N: the model's relevance, or expected_value "
                        "(P(next new item) x catalogue price)", "outputs", choices=("relevance", "expected_value"))
    horizon_days: int = knob(90, "LTV horizon H in days", "outputs", minimum=1)
    max_per_category: int | None = knob(None, "at most this many items of one category in a user's list", "outputs",
                                        minimum=1)
    # evaluation
    holdout_days: int = knob(14, "days of the test window (and of the validation window before it)", "evaluation",
                             minimum=1)
    eval_protocol: str | None = knob(None, "temporal (global time cut-off) or leave_one_out (each user's last event)",
                                     "evaluation", choices=("temporal", "leave_one_out"))
    outcome_days: int = knob(7, "days after a run date in which what a user did with a published recommendation "
                             "counts (marts.recommendation_outcomes, serving.model_performance)", "evaluation",
                             minimum=1)
    als_tuning: bool = knob(True, "tune the ALS baseline's rank, reg and alpha on the validation window (nine more "
                            "Spark fits), else fit jobs/als_baseline.py's defaults", "evaluation")
    # gates
    max_quarantine_share: float = knob(0.5, "cleaned gate: share of raw events dbt may quarantine", "gates",
                                       minimum=0, maximum=1)
    max_volume_ratio: float = knob(10.0, "raw gate: raw events within this factor of the last published run's",
                                   "gates", above=1)
    ndcg_tolerance: float = knob(0.005, "model gate: how far the challenger's NDCG@10 may be shown to fall below "
                                 "the champion's (negative: must improve)", "gates")
    gini_tolerance: float = knob(0.01, "model gate: the same for its LTV normalized Gini", "gates")
    decile_mape_tolerance: float = knob(0.02, "model gate: how far its LTV decile MAPE may be shown to rise above the "
                                        "champion's", "gates")
    gate_confidence: float = knob(0.95, "model gate: confidence of the paired bootstrap interval; a challenger is "
                                  "rejected only when the whole interval is worse than the tolerance", "gates",
                                  minimum=0.5, maximum=0.999)
    gate_resamples: int = knob(1000, "model gate: bootstrap resamples of the holdout's users", "gates", minimum=100)
    champion_min_known_share: float = knob(0.5, "model gate: a champion that knows less than this share of the "
                                           "catalogue's items or of the users' recent items is unfit (replaced by a "
                                           "challenger that beats the baselines)", "gates", minimum=0, maximum=1)
    # model
    max_seq_len: int | None = knob(None, "events per user sequence", "model", minimum=1)
    d_model: int = knob(64, "width of the transformer", "model", minimum=1)
    n_heads: int = knob(2, "attention heads", "model", minimum=1)
    n_layers: int = knob(2, "transformer blocks", "model", minimum=1)
    dropout: float = knob(0.2, "dropout", "model", minimum=0, maximum=0.9)
    item_text: bool = knob(True, "add pretrained sentence embeddings of item titles and categories", "model")
    target: str | None = knob(None, "what a position learns to predict; default: next_basket under temporal, "
                              "else next_item", "model", choices=("next_item", "next_basket"))
    repeat_targets: bool = knob(False, "also train on items the user already had", "model")
    loss: str = knob("auto", "next-item loss: full softmax, sampled softmax, or auto (sampled above "
                     "50,000 items)", "model", choices=("auto", "full", "sampled"))
    n_negatives: int = knob(2048, "shared negatives per batch of the sampled softmax", "model", minimum=1)
    # training
    epochs: int | None = knob(None, "a limit of training epochs; default: none, early stopping (patience) or the time "
                              "budget (max_train_minutes) ends training", "training", minimum=1)
    patience: int | None = knob(None, "epochs without a better validation NDCG@10 before stopping", "training",
                                minimum=1)
    max_train_minutes: float | None = knob(None, "training budget, checked between epochs", "training", above=0)
    refit_epochs: int = knob(1, "epochs of the best model on the validation window too, after early stopping",
                             "training", minimum=0)
    lr: float = knob(2e-3, "AdamW peak learning rate", "training", above=0)
    lr_schedule: str = knob("cosine", "after a linear warm-up: cosine decay to 10% of lr by the end of the planned "
                            "epochs (the epochs limit, or as many as fit the time budget), or constant", "training",
                            choices=("cosine", "constant"))
    weight_decay: float = knob(0.01, "AdamW weight decay", "training", minimum=0)
    batch_size: int = knob(128, "global batch size (split over the processes)", "training", minimum=1)
    nproc: int = knob(2, "torchrun processes", "training", minimum=1)
    nnodes: int = knob(1, "machines training together, one torchrun agent each (the train task is node 0; "
                          "`ltvrec train-node` joins the others)", "training", minimum=1)
    rdzv_endpoint: str | None = knob(None, "host:port of the c10d rendezvous on node 0 (nnodes > 1)", "training")
    training: str = knob("auto", "scratch: train a new model; continue: the @champion's weights learn from the users "
                         "with events since its data end and a replay sample, for continue_epochs; auto: continue "
                         "unless a drift check asks for a full retrain (docs/model.md); none: train nothing, the "
                         "@champion scores (and is evaluated on) this run's data", "training",
                         choices=("scratch", "continue", "auto", "none"))
    continue_epochs: int = knob(2, "epochs of a continued run", "training", minimum=1)
    replay_share: float = knob(0.2, "a continued run also learns from this share of the users without events since "
                               "the champion's data end", "training", minimum=0, maximum=1)
    retrain_new_item_share: float = knob(0.2, "auto retrains when more than this share of the events since the "
                                         "champion's data end are on items it never saw", "training", minimum=0,
                                         maximum=1)
    retrain_feature_psi: float = knob(0.25, "auto retrains when an LTV feature's population stability index, this "
                                      "run's training customers against the champion's, exceeds this beyond chance",
                                      "training", above=0)
    retrain_realised_drop: float = knob(0.2, "auto retrains when the champion's realised NDCG@N (serving."
                                        "model_performance) fell by more than this share since its first measured "
                                        "date", "training", minimum=0, maximum=1)
    max_continued_runs: int = knob(6, "auto retrains after this many continued runs in a row", "training", minimum=0)
    # ltv
    ltv_weight: float = knob(1.0, "weight of the LTV loss beside the next-item loss", "ltv", minimum=0)
    ltv_sigma_max: float = knob(2.0, "upper bound of the ZILN lognormal sigma", "ltv", above=0.05)
    ltv_prior: bool = knob(True, "the ZILN head corrects a seasonal BG/NBD + Gamma-Gamma prior", "ltv")
    ltv_correction_weight: float | None = knob(None, "share of the head's correction of the prior kept (log space); "
                                               "default: chosen by the LTV backtest", "ltv", minimum=0, maximum=1)
    ltv_backtest_origins: int = knob(2, "LTV backtest origins D-3H, D-4H, ..., each checked H days later, where "
                                     "history allows: they choose ltv_correction_weight and measure the level",
                                     "ltv", minimum=0)
    ltv_calibration: str = knob("auto", "the published ZILN estimates' total: the head's own (none), times the level "
                                "the LTV backtest found such a head off by H days later (level), the seasonal "
                                "prior's (prior_total), BG/NBD + Gamma-Gamma's times its ratio to actual spend in the "
                                "latest label window (recent_total), or auto: whichever of the last two was nearer "
                                "the actual totals at the LTV backtest's checks", "ltv",
                                choices=("auto", "none", "level", "prior_total", "recent_total"))
    ltv_model: str = knob("auto", "LTV family whose estimates are published; auto: the LTV backtest's pick (ZILN "
                          "unless another beat its Gini there with no worse decile MAPE)", "ltv", choices=LTV_MODELS)
    # scoring
    score_engine: str = knob("local", "where scoring runs: this machine, or the Spark cluster", "scoring",
                             choices=("local", "spark"))
    score_chunk_users: int | None = knob(None, "users per scoring chunk; default: chosen from the memory available",
                                         "scoring", minimum=1)
    # services
    warehouse_url: str | None = knob(None, "duckdb:///file or postgresql://...; default: $LTVREC_WAREHOUSE_URL, "
                                     "else DuckDB in LTVREC_HOME", "services")
    warehouse_conn_id: str | None = knob(None, "Airflow connection holding the warehouse URI (wins over "
                                         "warehouse_url)", "services")
    spark_master: str | None = knob(None, "Spark master; default: $LTVREC_SPARK_MASTER, else local[2]", "services")
    model_name: str | None = knob(None, "registered model (one @champion per name); default: ltvrec-<source> and, for "
                                  "a path, its folder and file name without dates", "services",
                                  pattern=r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
    experiment: str = knob("ltvrec", "MLflow experiment", "services")
    # experimental: measured without a clear gain (docs/model.md), off by default
    time_gaps: bool = knob(False, "embed the time since each event's predecessor", "experimental")
    ltv_user_dim: int = knob(0, "width of the shared user vector's way into the LTV head (0: features only)",
                             "experimental", minimum=0)
    ltv_train_windows: int = knob(1, "LTV training cut-offs D-2H, D-3H, ...", "experimental", minimum=1)

    def __post_init__(self) -> None:
        for key, generic in GENERIC_DEFAULTS.items():
            if getattr(self, key) is None:
                setattr(self, key, SOURCE_DEFAULTS.get(self.source, {}).get(key, generic))
        if self.target is None:
            self.target = "next_basket" if self.eval_protocol == "temporal" else "next_item"
        for f in dataclasses.fields(self):
            check_value(f, getattr(self, f.name))
        if self.run_date:
            self.as_of = check_run_date(self.run_date, self.as_of)
        if self.source not in ("synthetic", "warehouse") and not self.path:
            raise ValueError(f"source {self.source!r} needs a path (--path)")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError(f"nnodes {self.nnodes} needs rdzv_endpoint (host:port on the first node)")

    @classmethod
    def from_dict(cls, values: dict) -> "RunConfig":
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: Path) -> "RunConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    @property
    def resolved_warehouse_url(self) -> str:
        if self.warehouse_conn_id:
            return connection_uri(self.warehouse_conn_id)
        return self.warehouse_url or default_warehouse_url()

    @property
    def registered_model(self) -> str:
        if self.source == "warehouse":
            return self.model_name or f"ltvrec-warehouse-{self.raw_schema}-{self.events_table}".replace("_", "-")
        return self.model_name or default_model_name(self.source, self.path)

    @property
    def resolved_spark_master(self) -> str:
        return self.spark_master or os.environ.get("LTVREC_SPARK_MASTER", "local[2]")


def check_run_date(run_date: str, as_of: str | None) -> str:
    """The as_of of a run for `run_date` (the day before: the last day whose events it sees); raises when an as_of is
    also given and says otherwise."""
    try:
        day_before = (date.fromisoformat(run_date) - timedelta(days=1)).isoformat()
    except ValueError as exc:
        raise ValueError(f"config key 'run_date': {run_date!r} is not a date ({exc})") from None
    if as_of and as_of != day_before:
        raise ValueError(f"run_date {run_date} sees events up to {day_before}, as_of says {as_of}: give one of them")
    return day_before


def default_model_name(source: str, path: str | None) -> str:
    """One registered model per dataset: two shops run through the same source kind never compete for one
    @champion. The name is the source and the input's folder and file name, without dates (a daily export,
    events_2026-12-01.csv, keeps its name); e.g. ltvrec-events-shop-a-events."""
    parts = [source]
    if path:
        resolved = Path(path).expanduser().resolve()
        stem = resolved.name.split(".")[0] if resolved.name else ""
        parts += [resolved.parent.name, stem]
    slug = re.sub(r"(19|20)\d{2}-?[01]\d-?[0-3]\d", "", "-".join(parts).lower())
    slug = re.sub(r"[^a-z0-9]+", "-", slug).strip("-")
    return f"ltvrec-{slug}"[:200]


PY_TYPES = {"int": int, "float": float, "str": str, "bool": bool}
JSON_TYPES = {"int": "integer", "float": "number", "str": "string", "bool": "boolean"}


def knobs() -> list[dataclasses.Field]:
    return list(dataclasses.fields(RunConfig))


def kind_of(f: dataclasses.Field) -> tuple[str, bool]:
    """('int' | 'float' | 'str' | 'bool', whether None is allowed) of a knob."""
    return f.type.removesuffix(" | None"), f.type.endswith("| None")


def check_value(f: dataclasses.Field, value) -> None:
    """Raise ValueError naming the knob when `value` breaks its declaration."""
    kind, optional = kind_of(f)
    if value is None:
        if optional:
            return
        raise ValueError(f"config key {f.name!r}: expected {f.type}, got None")
    expected = (int, float) if kind == "float" else PY_TYPES[kind]
    if not isinstance(value, expected) or (isinstance(value, bool) and kind != "bool"):
        raise ValueError(f"config key {f.name!r}: expected {f.type}, got {value!r}")
    meta = f.metadata
    if meta["choices"] and value not in meta["choices"]:
        raise ValueError(f"config key {f.name!r}: {value!r} is not one of {', '.join(meta['choices'])}")
    if meta["minimum"] is not None and value < meta["minimum"]:
        raise ValueError(f"config key {f.name!r} must be >= {meta['minimum']}, got {value!r}")
    if meta["maximum"] is not None and value > meta["maximum"]:
        raise ValueError(f"config key {f.name!r} must be <= {meta['maximum']}, got {value!r}")
    if meta["above"] is not None and value <= meta["above"]:
        raise ValueError(f"config key {f.name!r} must be > {meta['above']}, got {value!r}")
    if meta["pattern"] and not re.fullmatch(meta["pattern"], value):
        raise ValueError(f"config key {f.name!r}: {value!r} is not in the expected format ({meta['help']})")


def default_text(f: dataclasses.Field) -> str:
    """The default as the docs show it, including defaults that depend on the source or the protocol."""
    if f.name in GENERIC_DEFAULTS:
        by_source = "; ".join(f"{src}: {vals[f.name]}" for src, vals in SOURCE_DEFAULTS.items() if f.name in vals)
        return f"{GENERIC_DEFAULTS[f.name]} ({by_source})" if by_source else str(GENERIC_DEFAULTS[f.name])
    return "none" if f.default is None else json.dumps(f.default)


def default_params() -> dict:
    """The params' defaults a deployment sets in $LTVREC_PARAMS (JSON): what its scheduled runs use (a manual run's
    params win). Checked here, so a bad value fails the DAG's import naming the knob."""
    raw = os.environ.get("LTVREC_PARAMS") or "{}"
    try:
        values = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"LTVREC_PARAMS is not valid JSON ({exc}): {raw!r}") from None
    if not isinstance(values, dict):
        raise ValueError(f"LTVREC_PARAMS must be a JSON object of params, got {raw!r}")
    try:
        RunConfig.from_dict(values)
    except ValueError as exc:
        raise ValueError(f"LTVREC_PARAMS: {exc}") from None
    return values


def dag_params(defaults: dict | None = None) -> dict:
    """The DAG's Params, one per knob, with its JSON-schema type, allowed values and bounds; `defaults` replace the
    knobs' own defaults."""
    from airflow.sdk import Param

    params = {}
    for f in knobs():
        kind, optional = kind_of(f)
        meta = f.metadata
        schema = {"type": ["null", JSON_TYPES[kind]] if optional else JSON_TYPES[kind],
                  "description": f"{meta['help']} (default: {default_text(f)})", "section": meta["group"]}
        if meta["choices"]:
            schema["enum"] = ([None] if optional else []) + list(meta["choices"])
        for key, schema_key in (("minimum", "minimum"), ("maximum", "maximum"), ("above", "exclusiveMinimum")):
            if meta[key] is not None:
                schema[schema_key] = meta[key]
        if meta["pattern"]:
            schema["pattern"] = f"^{meta['pattern']}$"
        params[f.name] = Param((defaults or {}).get(f.name, f.default), **schema)
    return params


def params_markdown() -> str:
    """The README's params table."""
    lines = ["| param | default | allowed | what it sets |", "|---|---|---|---|"]
    for group in GROUPS:
        for f in (f for f in knobs() if f.metadata["group"] == group):
            meta, kind = f.metadata, kind_of(f)[0]
            allowed = ", ".join(meta["choices"]) if meta["choices"] else kind
            bounds = [f"{sign} {meta[key]}" for key, sign in (("minimum", ">="), ("above", ">"), ("maximum", "<="))
                      if meta[key] is not None]
            allowed += (" " + ", ".join(bounds)) if bounds else ""
            lines.append(f"| `{f.name}` | {default_text(f)} | {allowed} | {group}: {meta['help']} |")
    return "\n".join(lines)


def ltvrec_home() -> Path:
    """State directory: warehouse file, MLflow store, Airflow home and run folders."""
    return Path(os.environ.get("LTVREC_HOME", Path.cwd() / ".ltvrec")).resolve()


def default_warehouse_url() -> str:
    return os.environ.get("LTVREC_WAREHOUSE_URL") or f"duckdb:///{ltvrec_home() / 'warehouse.duckdb'}"


def connection_uri(conn_id: str) -> str:
    """URI of an Airflow connection (metadata DB, AIRFLOW_CONN_<ID> environment variable or secrets backend)."""
    from airflow.sdk import Connection

    return Connection.get(conn_id).get_uri()


def redact_url(url: str | None) -> str | None:
    """The URL with any password replaced by ***, for logs and MLflow params."""
    return re.sub(r"(://[^:/@]*:)[^/?#]*@", r"\1***@", url) if url else url


def mlflow_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{ltvrec_home() / 'mlflow.db'}"


def mlflow_artifact_root() -> str:
    return (ltvrec_home() / "mlartifacts").as_uri()
