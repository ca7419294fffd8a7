"""LTV on the synthetic regimes (ltvrec/synthetic.py: steady, ageing, growing, seasonal): the whole DAG once per
regime, and every LTV model's figures at the evaluation cut-off against the issue's targets (JSON).

    .venv/bin/python bench/ltv_regimes.py [--regimes steady ageing growing seasonal] [--users 3000] [--days 730]
        [--horizon-days 90] [--keep DIR]

Per regime: normalized Gini, decile MAPE and predicted / actual total of ZILN, boosted trees, BG/NBD +
Gamma-Gamma, the seasonal prior and naive past spend; the LTV backtest's decisions, levels and published family
(`published`: ZILN unless the backtest picked another) and where its total came from; and whether the published
estimate beats BG/NBD + GG, the boosted trees and naive on Gini, BG/NBD + GG on decile MAPE, and has its total
within 10% of actual. State goes to a temporary LTVREC_HOME per regime, or to DIR/<regime> with --keep.
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

from ltvrec.config import SYNTHETIC_REGIMES

TOTAL_TOLERANCE = 0.10


def run_regime(regime: str, users: int, days: int, seed: int, home: Path, horizon_days: int = 90) -> dict:
    env = {**os.environ, "LTVREC_HOME": str(home)}
    for key in ("AIRFLOW_HOME", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    conf = {"synthetic_regime": regime, "synthetic_users": users, "synthetic_days": days, "seed": seed,
            "horizon_days": horizon_days}
    started = time.time()
    proc = subprocess.run([str(Path(sys.executable).parent / "ltvrec"), "run", "--source", "synthetic", "--conf",
                           json.dumps(conf)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"regime {regime}: the run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    summary = json.loads(max((home / "runs").glob("*/summary.json"), key=lambda p: p.stat().st_mtime).read_text())
    ltv = summary["metrics"]["ltv"]
    figures = {name: {"gini": m["gini"], "decile_mape": m["decile_mape"],
                      "total_ratio": m["total_predicted"] / m["total_actual"] if m["total_actual"] else None}
               for name, m in ltv.items()}
    backtest = summary.get("ltv_backtest", {})
    published = backtest.get("ltv_model", "ziln")
    return {"wall_seconds": round(time.time() - started, 1), "customers": ltv.get("ziln", {}).get("n_customers"),
            "published": published, "ltv": figures, "targets": targets(figures, published),
            "backtest": {k: backtest.get(k) for k in ("decisions", "reasons", "levels", "gini", "decile_mape",
                                                      "total_error", "ltv_total_from", "total_sources")}}


def targets(figures: dict[str, dict], published: str = "ziln") -> dict[str, bool | None]:
    """The issue's targets for the published estimate against the run's own baselines (None: not comparable, as
    a family against itself)."""
    mine = figures.get(published)
    if not mine:
        return {}

    def beats(model: str, metric: str, higher: bool = True) -> bool | None:
        if model == published or model not in figures or figures[model][metric] is None:
            return None
        return mine[metric] > figures[model][metric] if higher else mine[metric] < figures[model][metric]

    return {"gini_beats_bgnbd": beats("bgnbd_gamma_gamma", "gini"), "gini_beats_gbdt": beats("gbdt", "gini"),
            "gini_beats_naive": beats("naive_past_spend", "gini"),
            "decile_mape_beats_bgnbd": beats("bgnbd_gamma_gamma", "decile_mape", higher=False),
            "total_within_10pct": abs(mine["total_ratio"] - 1) <= TOTAL_TOLERANCE}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--regimes", nargs="+", default=list(SYNTHETIC_REGIMES), choices=SYNTHETIC_REGIMES)
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--days", type=int, default=730, help="two years: the seasonal prior needs a year and H days")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--horizon-days", type=int, default=90, help="H; with --days under 3H + 30, no backtest origin")
    ap.add_argument("--keep", type=Path, help="a new folder to keep each regime's LTVREC_HOME in")
    args = ap.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=False)
    out = {"users": args.users, "days": args.days, "horizon_days": args.horizon_days, "seed": args.seed,
           "regimes": {}}
    for regime in args.regimes:
        with tempfile.TemporaryDirectory(prefix=f"ltvrec-{regime}-") as scratch:
            home = args.keep / regime if args.keep else Path(scratch)
            out["regimes"][regime] = run_regime(regime, args.users, args.days, args.seed, home, args.horizon_days)
        print(f"{regime}: {json.dumps(out['regimes'][regime]['targets'])}", file=sys.stderr)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
