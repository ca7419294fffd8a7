"""The ALS baseline with its default parameters and tuned on the validation window, beside the run's own model, on
the features of a finished run (issue 19: an honest baseline).

    .venv/bin/python bench/als.py --run-dir $LTVREC_HOME/runs/<run>     # a run folder with features/ and train/

Fits jobs/als_baseline.py twice on the run's features with its evaluation protocol (spark-submit, local[2]): once
with the job's default parameters, once tuned as the `als_baseline` stage tunes it. Both are scored on the run's
test window by models/evaluate.py, with the run's trained model and popularity beside them. Prints JSON: each one's
test NDCG/HR@10, the tuning's trials, and each fit's seconds. Writes nothing into the run folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from ltvrec import launch
    from ltvrec.rundir import RunDir
    from models.checkpoint import LoadedModel
    from models.data import FeatureSet, Protocol
    from models.evaluate import evaluate_recommendations
    from models.ranking import als_inputs, load_factors

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", type=Path, required=True)
    args = ap.parse_args()
    run = RunDir(args.run_dir.resolve())
    cfg, fs = run.config(), FeatureSet.load(run.features)
    protocol = Protocol.build(fs, cfg.eval_protocol)
    model = LoadedModel.from_file(run.final_checkpoint)
    out = {"run": run.name, "eval_protocol": cfg.eval_protocol, "users": len(fs.users), "items": fs.n_items - 1}
    with tempfile.TemporaryDirectory(prefix="ltvrec-als-") as tmp:
        for name, tune in (("default", False), ("tuned", True)):
            folder = Path(tmp) / name
            started = time.time()
            launch.spark_submit("als_baseline.py", als_inputs(fs, protocol, folder, tune=tune) + ["--seed",
                                str(cfg.seed)], "local[2]", Path(tmp) / f"{name}.log")
            factors = load_factors(folder, len(fs.users), fs.n_items)
            metrics, _ = evaluate_recommendations(fs, model, protocol, factors)
            out[f"als_{name}"] = {k: round(metrics["als"][k], 4) for k in ("ndcg_10", "hr_10", "ndcg_20", "hr_20")}
            out[f"als_{name}"]["seconds"] = round(time.time() - started, 1)
            if tune:
                out["tuning"] = json.loads((folder / "tuning.json").read_text())
        for name in ("model", "popularity"):
            out[name] = {k: round(metrics[name][k], 4) for k in ("ndcg_10", "hr_10", "ndcg_20", "hr_20")}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
