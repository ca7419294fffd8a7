"""End-to-end: the whole DAG on synthetic data of a given size, and its stage timings from summary.json.

    .venv/bin/python bench/pipeline.py [--events 1000000 10000000] [--conf '{"max_train_minutes": 10}']

Each size runs `ltvrec run --source synthetic` in a fresh temporary LTVREC_HOME (embedded defaults: DuckDB,
Spark local[2], torchrun with 2 CPU processes, MLflow on SQLite). The generator makes about 66 raw events per
user, so --events sets the user count. Training stops at its time budget (`max_train_minutes`, 10 by default).
One JSON object on stdout: per size, users, raw and clean events, rows published, seconds per stage, wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAW_EVENTS_PER_USER = 66.0  # the generator's mean (measured)


def run(events: int, conf: dict) -> dict:
    home = Path(tempfile.mkdtemp(prefix=f"ltvrec-pipeline-{events}-"))
    users = max(10, round(events / RAW_EVENTS_PER_USER))
    env = {**os.environ, "LTVREC_HOME": str(home)}
    for key in ("AIRFLOW_HOME", "MLFLOW_TRACKING_URI", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
        env.pop(key, None)
    started = time.time()
    proc = subprocess.run([str(Path(sys.executable).parent / "ltvrec"), "run", "--synthetic-users", str(users),
                           "--conf", json.dumps(conf)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"run with {events} events failed:\n{proc.stderr[-3000:]}")
    summary = json.loads(next((home / "runs").glob("*/summary.json")).read_text())
    return {"users": users, "raw_events": summary["rows"]["ingest"]["raw_events"],
            "clean_events": summary["rows"]["quarantine"]["fct_events"],
            "published": summary["rows"]["publish"], "timings_s": summary["timings_s"],
            "stages_total_s": round(sum(summary["timings_s"].values()), 1), "wall_s": round(time.time() - started, 1),
            "training": {k: summary["training"].get(k) for k in ("epochs_run", "best_epoch", "train_seconds")},
            "home": str(home)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--conf", default="{}", help="extra DAG params as JSON")
    args = ap.parse_args()
    print(json.dumps({str(n): run(n, json.loads(args.conf)) for n in args.events}))


if __name__ == "__main__":
    main()
