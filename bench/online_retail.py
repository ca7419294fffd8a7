"""Benchmark on UCI Online Retail II: our model vs popularity vs Spark ALS, under both protocols.

    .venv/bin/python bench/online_retail.py [--path ../shared/data/online_retail_II.parquet] [--protocols temporal leave_one_out]

Runs the whole DAG once per protocol (state in a temporary LTVREC_HOME) and prints one JSON object:
per protocol, NDCG/HR/Recall/MRR/coverage at 10 and 20 for every model, LTV metrics, training seconds per
epoch and sequences per second (from the MLflow run), the validation curve (epoch, training seconds so far,
validation NDCG@10) and stage timings.
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

ROOT = Path(__file__).resolve().parents[1]


def run_source(source: str, path: str, protocol: str | None, home: Path, conf: str | None = None) -> dict:
    """`ltvrec run` in a fresh LTVREC_HOME; metrics, training speed and stage timings of the run."""
    env = {**os.environ, "LTVREC_HOME": str(home)}
    for key in ("AIRFLOW_HOME", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    started = time.time()
    cmd = [str(Path(sys.executable).parent / "ltvrec"), "run", "--source", source, "--path", path]
    cmd += (["--eval-protocol", protocol] if protocol else []) + (["--conf", conf] if conf else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{source} ({protocol or 'default protocol'}) run failed:\n{proc.stderr[-3000:]}")
    summary = json.loads(max((home / "runs").glob("*/summary.json"), key=lambda p: p.stat().st_mtime).read_text())
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{home}/mlflow.db")
    client = mlflow.MlflowClient()
    history = client.get_metric_history(summary["mlflow_run_id"], "epoch_seconds")
    speed = client.get_metric_history(summary["mlflow_run_id"], "sequences_per_s")
    ndcg = client.get_metric_history(summary["mlflow_run_id"], "val_ndcg_10")
    val_seconds = client.get_metric_history(summary["mlflow_run_id"], "val_seconds")
    return {
        "wall_seconds": round(time.time() - started, 1),
        "recommendation": {k: v for k, v in summary["metrics"]["recommendation"].items()},
        "ltv": summary["metrics"]["ltv"],
        "epochs_run": summary["training"]["epochs_run"],
        "best_epoch": summary["training"].get("best_epoch"),
        "seconds_per_epoch": round(sum(m.value for m in history) / max(len(history), 1), 2),
        "sequences_per_second": round(sum(m.value for m in speed) / max(len(speed), 1), 1),
        "validation_curve": validation_curve(history, ndcg, val_seconds),
        "timings_s": summary["timings_s"],
    }


def validation_curve(epoch_seconds: list, val_ndcg: list, val_seconds: list = ()) -> list[dict]:
    """Time to quality, from the run's MLflow metric histories: each training epoch's validation NDCG@10, the
    seconds of training epochs by its end and, where the run logged its validations' seconds, those included."""
    seconds, validating = {m.step: m.value for m in epoch_seconds}, {m.step: m.value for m in val_seconds}
    curve, spent, spent_validating = [], 0.0, 0.0
    for epoch, value in sorted((m.step, m.value) for m in val_ndcg):
        spent += seconds.get(epoch, 0.0)
        spent_validating += validating.get(epoch, 0.0)
        point = {"epoch": epoch, "train_seconds": round(spent, 1), "val_ndcg_10": round(value, 4)}
        if validating:
            point["seconds_with_validation"] = round(spent + spent_validating, 1)
        curve.append(point)
    return curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--path", default=str(ROOT.parent / "shared" / "data" / "online_retail_II.parquet"))
    ap.add_argument("--protocols", nargs="+", default=["temporal", "leave_one_out"])
    args = ap.parse_args()
    out = {"dataset": "online_retail_II", "machine_cpus": os.cpu_count(), "protocols": {}}
    for protocol in args.protocols:
        with tempfile.TemporaryDirectory(prefix=f"ltvrec-bench-{protocol}-") as home:
            out["protocols"][protocol] = run_source("online_retail", args.path, protocol, Path(home))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
