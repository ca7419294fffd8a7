"""Run configuration, state locations and the project's fixed vocabularies.

Everything a DAG run needs is one `RunConfig`, resolved from DAG params / CLI options and stored as
`config.json` in the run folder; later stages read it back from there (XCom carries only the path).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

# Event types, in the order of their integer codes (0 is padding in sequences).
EVENT_TYPES = ("view", "cart", "purchase", "rating", "return")
EVENT_TYPE_CODE = {name: i + 1 for i, name in enumerate(EVENT_TYPES)}
SOURCES = ("synthetic", "events", "online_retail", "movielens")
DAG_ID = "ltvrec_batch"
# Catalogues larger than this train with sampled softmax under loss="auto": a full softmax's logits for a
# batch of 128 sequences x 50 positions x 50k items would already take 1.3 GB in float32.
SAMPLED_SOFTMAX_ABOVE = 50_000

# Defaults that depend on the data source (a key left unset takes its source's value, then the generic one).
# MovieLens is the literature's benchmark: its protocol is leave-one-out and its users are long-lived (165
# ratings on average), so it gets SASRec's sequence length of 200, a longer training budget and the early-stopping
# patience of the published SASRec+ recipe (10 epochs without a better validation NDCG@10).
SOURCE_DEFAULTS = {
    "movielens": {"eval_protocol": "leave_one_out", "max_seq_len": 200, "max_train_minutes": 60.0, "patience": 10},
}
GENERIC_DEFAULTS = {"eval_protocol": "temporal", "max_seq_len": 50, "max_train_minutes": 10.0, "patience": 4}

PROJECT_ROOT = Path(__file__).resolve().parents[1]


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


@dataclass
class RunConfig:
    """All knobs of one DAG run. Unknown keys are rejected; types are checked on load."""

    source: str = "synthetic"
    path: str | None = None
    items_path: str | None = None
    as_of: str | None = None  # YYYY-MM-DD; default: date of the last event
    top_n: int = 10
    # how the published top-N is ordered: relevance (the model's score) or expected_value (the probability that
    # the user's next new item is this one x its catalogue price: the expected revenue of the recommendation)
    rank_by: str = "relevance"
    horizon_days: int = 90
    holdout_days: int = 14
    eval_protocol: str | None = None  # temporal or leave_one_out (each user's last event is test); by source
    max_quarantine_share: float = 0.5  # gate: share of raw events dbt may reject
    # gate: raw event count may be at most this many times (or at least 1/this) the last published run's
    max_volume_ratio: float = 10.0
    # model gate: a challenger is promoted when it beats popularity on NDCG@10 and is not worse than the champion
    # by more than these (absolute) amounts on NDCG@10 and on the LTV normalized Gini; negative = must improve
    ndcg_tolerance: float = 0.005
    gini_tolerance: float = 0.01
    warehouse_url: str | None = None
    # an Airflow connection holding the warehouse URI (credentials stay in Airflow / the environment); wins over
    # warehouse_url
    warehouse_conn_id: str | None = None
    spark_master: str | None = None
    # synthetic source
    synthetic_users: int = 2000
    synthetic_items: int = 300
    synthetic_days: int = 365
    seed: int = 42
    # model and training
    max_seq_len: int | None = None  # by source: 200 for movielens, else 50
    d_model: int = 64
    n_heads: int = 2
    n_layers: int = 2
    dropout: float = 0.2
    lr: float = 2e-3
    weight_decay: float = 0.01
    batch_size: int = 128
    epochs: int = 30
    patience: int | None = None  # epochs without a better validation NDCG@10; by source: 10 for movielens, else 4
    max_train_minutes: float | None = None  # by source: 60 for movielens, else 10
    refit_epochs: int = 1  # after early stopping, train the best model this many epochs on the validation window too
    ltv_weight: float = 1.0
    ltv_sigma_max: float = 2.0  # bound of the ZILN sigma (0: unbounded)
    # width of the shared user vector's way into the LTV head; 0: the head reads the RFM and prior features only.
    # The encoder trains on events after the LTV training cut-off, so its user vector at that cut-off carries
    # signal that does not carry over to later cut-offs: on Online Retail II, a head trained on the same
    # encoder's 8-d projection scored Gini 0.78 / decile MAPE 0.69 against 0.84 / 0.15 without it.
    ltv_user_dim: int = 0
    ltv_prior: bool = True  # the ZILN head corrects a seasonal BG/NBD + Gamma-Gamma prior (models/ltv_prior.py)
    ltv_correction_weight: float = 0.5  # share of the head's correction kept in predictions (log space)
    # LTV training cut-offs D-2H, D-3H, ...: more label windows. Off by default: on Online Retail II, 4 windows
    # lowered the normalized Gini of a features-only ZILN from 0.827 to 0.794 and made its tail unstable.
    ltv_train_windows: int = 1
    repeat_targets: bool = False  # also train on items the user already had (evaluation counts only new ones)
    # what each position learns to predict: next_item, or next_basket (an item of the next group of events sharing
    # a timestamp; see models/train.py). Default by protocol: next_basket for temporal, next_item for leave_one_out.
    target: str | None = None
    loss: str = "auto"  # full | sampled | auto (full softmax up to SAMPLED_SOFTMAX_ABOVE items)
    n_negatives: int = 2048  # shared negatives per batch for the sampled softmax
    warm_start: bool = False  # initialise from the current @champion (continual training)
    time_gaps: bool = False  # embed the time since each event's predecessor (models/sasrec.py: TIME_GAP_BUCKETS)
    item_text: bool = True  # add pretrained sentence embeddings of item titles/categories (cold start)
    nproc: int = 2
    # scoring: users per chunk (None: chosen from the memory available) and where: local (this machine, CPU or GPU)
    # or spark (jobs/score.py on spark_master, for more users than one machine holds)
    score_chunk_users: int | None = None
    score_engine: str = "local"
    max_per_category: int | None = None  # diversity: at most this many items of one category in a user's list
    # registry
    model_name: str | None = None  # registered model; default "ltvrec-<source>", one champion per data source
    experiment: str = "ltvrec"

    def __post_init__(self) -> None:
        for key, generic in GENERIC_DEFAULTS.items():
            if getattr(self, key) is None:
                setattr(self, key, SOURCE_DEFAULTS.get(self.source, {}).get(key, generic))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            kind = f.type.removesuffix(" | None")
            expected = {"int": int, "float": (int, float), "str": str, "bool": bool}[kind]
            if not isinstance(value, expected) or (isinstance(value, bool) and kind != "bool"):
                raise ValueError(f"config key {f.name!r}: expected {f.type}, got {value!r}")
        if self.source not in SOURCES:
            raise ValueError(f"config key 'source': {self.source!r} is not one of {', '.join(SOURCES)}")
        if self.source != "synthetic" and not self.path:
            raise ValueError(f"source {self.source!r} needs a path (--path)")
        if self.rank_by not in ("relevance", "expected_value"):
            raise ValueError(f"config key 'rank_by': {self.rank_by!r} is not relevance or expected_value")
        if self.score_engine not in ("local", "spark"):
            raise ValueError(f"config key 'score_engine': {self.score_engine!r} is not local or spark")
        if self.max_per_category is not None and self.max_per_category < 1:
            raise ValueError(f"config key 'max_per_category' must be >= 1, got {self.max_per_category}")
        if self.score_chunk_users is not None and self.score_chunk_users < 1:
            raise ValueError(f"config key 'score_chunk_users' must be >= 1, got {self.score_chunk_users}")
        if self.loss not in ("auto", "full", "sampled"):
            raise ValueError(f"config key 'loss': {self.loss!r} is not auto, full or sampled")
        if self.eval_protocol not in ("temporal", "leave_one_out"):
            raise ValueError(f"config key 'eval_protocol': {self.eval_protocol!r} is not temporal or leave_one_out")
        if self.target is None:
            self.target = "next_basket" if self.eval_protocol == "temporal" else "next_item"
        if self.target not in ("next_item", "next_basket"):
            raise ValueError(f"config key 'target': {self.target!r} is not next_item or next_basket")
        if self.as_of is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", self.as_of):
            raise ValueError(f"config key 'as_of': expected YYYY-MM-DD, got {self.as_of!r}")
        for key in ("top_n", "horizon_days", "holdout_days", "nproc", "epochs", "batch_size", "max_seq_len", "patience"):
            if getattr(self, key) < 1:
                raise ValueError(f"config key {key!r} must be >= 1, got {getattr(self, key)}")
        if self.max_volume_ratio <= 1:
            raise ValueError(f"config key 'max_volume_ratio' must be > 1, got {self.max_volume_ratio}")
        if self.refit_epochs < 0:
            raise ValueError(f"config key 'refit_epochs' must be >= 0, got {self.refit_epochs}")

    @classmethod
    def from_dict(cls, values: dict) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, run_dir: Path) -> None:
        (run_dir / "config.json").write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, run_dir: Path) -> "RunConfig":
        return cls.from_dict(json.loads((Path(run_dir) / "config.json").read_text()))

    @property
    def resolved_warehouse_url(self) -> str:
        if self.warehouse_conn_id:
            return connection_uri(self.warehouse_conn_id)
        return self.warehouse_url or default_warehouse_url()

    @property
    def registered_model(self) -> str:
        return self.model_name or f"ltvrec-{self.source.replace('_', '-')}"

    @property
    def resolved_spark_master(self) -> str:
        return self.spark_master or os.environ.get("LTVREC_SPARK_MASTER", "local[2]")
