"""The LTV backtest and what its decisions give on the evaluation window, per family and seed (JSON).

    .venv/bin/python bench/ltv_backtest.py --features .ltvrec/runs/<run>/features [--seeds 42 1 2]

Needs a run's features with backtest origins (ltv_backtest_origins >= 1, where history allows) and the
ltv_prior stage's output. For each seed: models/ltv_backtest.py's backtest (origins before D - 2H), then every
family fitted at the training cut-off (D - 2H) and checked at the evaluation cut-off (D - H), raw and multiplied
by the level the backtest found. The evaluation window only reports here; it decides nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.data import load_ltv  # noqa: E402
from models.ltv_backtest import ltv_figures, family_predictions, run_backtest  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--features", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    ap.add_argument("--width", type=int, default=64, help="the LTV head's width (the model's d_model)")
    ap.add_argument("--sigma-max", type=float, default=2.0)
    args = ap.parse_args()
    features = Path(args.features)
    split = json.loads((features / "split.json").read_text())
    ltv = load_ltv(features)
    use_prior = "ltv_prior" in ltv.columns
    prior_stage = features.parent / "stages" / "ltv_prior.json"  # the run's seasonal factors, where it has them
    seasons = json.loads(prior_stage.read_text()).get("seasonal_factors") if prior_stage.exists() else None
    frames = {name: frame.sort_values("user_id", ignore_index=True) for name, frame in ltv.groupby("cutoff")}
    out = {"features": str(features), "cutoffs": split["ltv_cutoffs"], "seeds": {}}
    for seed in args.seeds:
        backtest = run_backtest(ltv, split["ltv_cutoffs"], use_prior, args.sigma_max, args.width, seed,
                                seasons=seasons)
        evaluation = family_predictions(frames["train"], frames["eval"], use_prior, args.sigma_max, args.width, seed)
        actual = frames["eval"]["label_value"].to_numpy(dtype=float)
        levels = backtest.get("levels", {})
        out["seeds"][seed] = {
            "backtest": backtest,
            "evaluation_raw": {f: ltv_figures(actual, ev) for f, ev in evaluation.items()},
            "evaluation_calibrated": {f: ltv_figures(actual, ev * levels.get(f, 1.0)) for f, ev in evaluation.items()},
        }
    print(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
