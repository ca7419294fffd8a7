"""The run folder: one per DAG run, the only thing tasks pass between them. `RunDir` owns its layout.

    config.json            the resolved RunConfig            stages/<stage>.json  each stage's state and record
    mlflow.json            the run's MLflow run              logs/<stage>.log     each stage's log (and airflow.log)
    input/                 synthetic source files            gates/<gate>/        GX report and Data Docs
    dbt/                   dbt target and logs               marts/               cleaned marts exported to Parquet
    features/              the Spark features (split.json)   als/                 the ALS baseline's factors
    train/                 trainer config, checkpoints, result.json, progress.json
    evaluation/            model comparison tables and charts
    scores/                scores Parquet files, progress.json
    summary.json           what the run did, for people and for MLflow
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from ltvrec.config import RunConfig, ltvrec_home

STAGES = ("prepare", "ingest", "gate_raw", "dbt_build", "quarantine", "gate_cleaned", "features", "gate_features",
          "ltv_prior", "ltv_backtest", "train", "als_baseline", "evaluate", "register", "score", "gate_scores", "publish",
          "summarize")
SERVING_TABLES = ("recommendations", "ltv_estimates")


def write_json(path: Path, value) -> None:
    """Write atomically: readers (the CLI's live view, other tasks) never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str))
    os.replace(tmp, path)


def read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def for_run_id(cls, run_id: str) -> "RunDir":
        """The run folder of an Airflow run id."""
        return cls(ltvrec_home() / "runs" / re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id))

    @property
    def name(self) -> str:
        return self.path.name

    # what the stages read and write
    input = property(lambda self: self.path / "input")
    dbt = property(lambda self: self.path / "dbt")
    marts = property(lambda self: self.path / "marts")
    features = property(lambda self: self.path / "features")
    als = property(lambda self: self.path / "als")
    train = property(lambda self: self.path / "train")
    evaluation = property(lambda self: self.path / "evaluation")
    scores = property(lambda self: self.path / "scores")
    logs = property(lambda self: self.path / "logs")
    summary_file = property(lambda self: self.path / "summary.json")

    def gate(self, name: str) -> Path:
        return self.path / "gates" / name

    def scores_file(self, table: str) -> Path:
        return self.scores / f"{table}.parquet"

    def log_file(self, stage: str) -> Path:
        return self.logs / f"{stage}.log"

    def progress_file(self, stage: str) -> Path:
        return {"train": self.train, "score": self.scores}[stage] / "progress.json"

    def progress(self, stage: str) -> dict:
        """What the trainer or the scorer last wrote to its progress file ({} before it wrote any)."""
        return read_json(self.progress_file(stage), {})

    def config(self) -> RunConfig:
        return RunConfig.load(self.path / "config.json")

    def save_config(self, cfg: RunConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        cfg.save(self.path / "config.json")

    @property
    def mlflow_run_id(self) -> str:
        return json.loads((self.path / "mlflow.json").read_text())["run_id"]

    def save_mlflow_run(self, run_id: str, experiment_id: str) -> None:
        write_json(self.path / "mlflow.json", {"run_id": run_id, "experiment_id": experiment_id})

    def split(self) -> dict:
        """The Spark features job's split: cut-offs, run date (as_of), horizon and event types."""
        return json.loads((self.features / "split.json").read_text())

    @property
    def run_date(self) -> str:
        """The date this run is for, the serving tables' partition it publishes: its events end the day before
        (split `end`: the run_date param, or the day after as_of, by default the day after the last event)."""
        return self.split()["end"][:10]

    def train_result(self) -> dict:
        return json.loads((self.train / "result.json").read_text())

    @property
    def final_checkpoint(self) -> Path:
        return self.train / "final.pt"

    # stage states and records: stages/<stage>.json holds {"state": running | done | failed, ...}
    def stage(self, name: str) -> dict | None:
        return read_json(self.path / "stages" / f"{name}.json")

    def mark_running(self, name: str) -> None:
        write_json(self.path / "stages" / f"{name}.json", {"state": "running", "started": time.time()})

    def mark_started(self, name: str) -> None:
        """Mark running a stage that several tasks make up (the dbt models), once: its first task starts it."""
        if (self.stage(name) or {}).get("state") != "running":
            self.mark_running(name)

    def mark_done(self, name: str, record: dict) -> None:
        write_json(self.path / "stages" / f"{name}.json", {"state": "done", **record})

    def mark_failed(self, name: str, error: BaseException | str, seconds: float | None = None) -> None:
        message = str(error) or type(error).__name__
        write_json(self.path / "stages" / f"{name}.json", {"state": "failed", "error": message, "seconds": seconds})

    def records(self) -> dict[str, dict]:
        """The records of the stages that are done, in pipeline order (without their state)."""
        found = {name: self.stage(name) for name in STAGES}
        return {name: {k: v for k, v in rec.items() if k != "state"}
                for name, rec in found.items() if rec and rec.get("state") == "done"}

    def failure(self) -> tuple[str, dict] | None:
        """(stage, record) of the first failed stage, or None."""
        return next(((name, rec) for name in STAGES if (rec := self.stage(name)) and rec.get("state") == "failed"),
                    None)
