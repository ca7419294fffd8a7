"""Retrain a finished run's model with changed trainer knobs, and compare: the A/B tool for training choices.

    .venv/bin/python bench/retrain.py RUN_FOLDER --set lr_schedule=constant --set seed=1 [--nproc 2] [--out DIR]

Takes RUN_FOLDER/train/config.json (the trainer config the run's train stage wrote), applies each `--set KEY=VALUE`
(VALUE as JSON, else as a string), trains under torchrun in a fresh folder (nothing of the run is touched, nothing is
logged to MLflow) and prints one JSON object: the knobs changed, wall seconds, the trainer's result (epochs, best
epoch, best validation NDCG@10, notes), each epoch's printed line, and test NDCG/HR@10 of best.pt (before the refit)
and final.pt (after it), as bench/train_speed.py measures them. Decide by the validation figures; the test
figures are for information. Where the data has customers, `ltv_best` and `ltv_final` are the LTV head's figures
at the evaluation cut-off (D - H): normalized Gini, Spearman, decile MAPE and predicted / actual total.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # models/, for the evaluation
from train_speed import test_metrics  # noqa: E402  (a script's own folder, bench/, is on its path)


def knob(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_folder", type=Path)
    ap.add_argument("--set", dest="knobs", action="append", default=[], type=knob, help="KEY=VALUE (JSON)")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--out", type=Path, help="where to train (default: a new temporary folder)")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="ltvrec-retrain-"))
    out.mkdir(parents=True, exist_ok=True)
    config = json.loads((args.run_folder / "train" / "config.json").read_text())
    config |= {"out_dir": str(out), "mlflow_run_id": None, "progress_file": None, "init_from": None}
    config |= dict(args.knobs)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    started = time.time()
    proc = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--standalone",
                           f"--nproc-per-node={args.nproc}", "-m", "models.train", "--config", str(out / "config.json")],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise SystemExit(f"training failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = json.loads((out / "result.json").read_text())
    features = Path(config["features_dir"])
    print(json.dumps({
        "run_folder": str(args.run_folder), "changed": dict(args.knobs), "out": str(out),
        "wall_seconds": round(time.time() - started, 1),
        "result": {k: result[k] for k in ("epochs_run", "best_epoch", "best_val_ndcg_10", "refit_epochs", "notes")},
        "epochs": [line for line in proc.stdout.splitlines() if re.match(r"(refit )?epoch \d+/", line)],
        "test_best": test_metrics(features, out / "best.pt", config["eval_protocol"])["model"],
        "test_final": test_metrics(features, out / "final.pt", config["eval_protocol"])["model"],
        "ltv_best": ltv_head_figures(features, out / "best.pt"),
        "ltv_final": ltv_head_figures(features, out / "final.pt"),
    }, indent=2))


def ltv_head_figures(features: Path, checkpoint: Path) -> dict:
    """The LTV head's figures at the evaluation cut-off, as the evaluate stage computes them ({} without customers)."""
    from models.checkpoint import LoadedModel
    from models.data import FeatureSet
    from models.evaluate import predict_ltv
    from models.ltv_backtest import ltv_figures

    frame, _, expected = predict_ltv(FeatureSet.load(features), LoadedModel.from_file(checkpoint), "eval")
    if frame.empty:
        return {}
    found = ltv_figures(frame["label_value"].to_numpy(dtype=float), expected)
    return {k: round(found[k], 4) for k in ("gini", "spearman", "decile_mape", "total_ratio")}


if __name__ == "__main__":
    main()
