"""The model gate's paired bootstrap: seconds per comparison as the holdout grows.

    .venv/bin/python bench/gate_bootstrap.py [--customers 5000 50000] [--resamples 1000]

LTV-shaped data (gamma-distributed spend, two models' predictions with lognormal error) and per-user NDCG@10
values for four times as many users; the same functions the evaluate stage calls (models/compare.py).
One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from models.compare import compare_ltv, compare_ndcg


def timed(fn) -> tuple[float, dict]:
    started = time.perf_counter()
    found = fn()
    return round(time.perf_counter() - started, 2), found.to_dict()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, nargs="+", default=[5000, 50000])
    ap.add_argument("--resamples", type=int, default=1000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for n in args.customers:
        actual = rng.gamma(1.0, 100.0, n)
        better, worse = (actual * rng.lognormal(0, s, n) for s in (0.3, 0.5))
        row = {"customers": n, "users": 4 * n}
        for metric in ("gini", "decile_mape"):
            row[f"{metric}_s"], found = timed(lambda: compare_ltv(metric, actual, worse, better, "b", args.resamples,
                                                                  0.95, 0))
            row[f"{metric}_interval"] = [round(found["low"], 4), round(found["high"], 4)]
        hits = [rng.binomial(1, p, 4 * n) * rng.uniform(0.3, 1.0, 4 * n) for p in (0.30, 0.29)]
        row["ndcg_s"], found = timed(lambda: compare_ndcg(*hits, "b", args.resamples, 0.95, 0))
        row["ndcg_interval"] = [round(found["low"], 4), round(found["high"], 4)]
        rows.append(row)
    print(json.dumps({"bench": "gate_bootstrap", "resamples": args.resamples, "results": rows}))


if __name__ == "__main__":
    main()
