"""The trainer's config: everything models/train.py reads, written by the pipeline's train stage
(ltvrec.stages.train_config) as RUN/train/config.json and stored in every checkpoint."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

# Catalogues larger than this train with sampled softmax under loss="auto": a full softmax's logits for a
# batch of 128 sequences x 50 positions x 50k items would already take 1.3 GB in float32.
SAMPLED_SOFTMAX_ABOVE = 50_000


@dataclass
class TrainConfig:
    """Everything the trainer reads: written by the pipeline's train stage, stored in every checkpoint."""

    features_dir: str
    out_dir: str
    eval_protocol: str  # temporal | leave_one_out: which events validate
    target: str  # next_item | next_basket (see position_targets)
    repeat_targets: bool
    seed: int
    max_seq_len: int
    d_model: int
    n_heads: int
    n_layers: int
    dropout: float
    item_text: bool
    time_gaps: bool
    loss: str  # full | sampled | auto (sampled above SAMPLED_SOFTMAX_ABOVE items)
    n_negatives: int
    ltv_weight: float
    ltv_sigma_max: float
    ltv_user_dim: int
    ltv_prior: bool
    ltv_correction_weight: float  # decided by the LTV backtest unless the run config sets it
    ltv_level: float  # the backtest's level calibration of the ZILN estimates (1: none)
    lr: float
    lr_schedule: str  # cosine | constant, after a warm-up (models.train.learning_rate)
    weight_decay: float
    batch_size: int  # global: split over the processes
    epochs: int | None  # an explicit limit; None: early stopping or the time budget ends training
    patience: int
    max_train_minutes: float
    refit_epochs: int
    mlflow_run_id: str | None  # None: nothing is logged to MLflow
    init_from: str | None  # a checkpoint to warm-start from
    continual_since: str | None  # a continued run: the champion's data end (ISO); None: a full training
    replay_share: float  # a continued run's sample of the users without events since then
    continued_runs: int  # continued runs behind this one's weights since the last full training (lineage)
    text_cache: str | None  # item text embedding cache; None: <out_dir>/item_text_cache.parquet
    progress_file: str | None  # rewritten by rank 0 while training; None: none

    def save(self, path: Path | str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path | str) -> "TrainConfig":
        values = json.loads(Path(path).read_text())
        names = {f.name for f in fields(cls)}
        if set(values) != names:
            raise ValueError(f"{path}: unknown keys {sorted(set(values) - names)}, missing keys "
                             f"{sorted(names - set(values))} (write it with ltvrec.stages.train_config)")
        return cls(**values)
