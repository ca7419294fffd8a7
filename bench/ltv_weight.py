"""How much of the ZILN head's correction of the LTV prior to keep (`ltv_correction_weight` w): a backtest.

    .venv/bin/ltvrec run --source online_retail --conf '{"ltv_train_windows": 2}'
    .venv/bin/python bench/ltv_weight.py --features .ltvrec/runs/<run>/features [--seeds 3]

Needs a run's features with two LTV training cut-offs (train = D-2H, train_1 = D-3H) and the ltv_prior stage's
output. A head of the model's LTV head's shape (RFM + prior features -> ZILN, mu offset by log prior) is trained
on one cut-off's customers and tested on a later one, for each w: train_1 -> train (a backtest that uses nothing
after D-H) and train -> eval (the evaluation window). Prints JSON: normalized Gini and decile MAPE per w and seed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from models.data import LTV_FEATURES, FeatureScaler, load_ltv  # noqa: E402
from models.ltv_prior import PRIOR_COLUMNS  # noqa: E402
from models.metrics import ltv_metrics  # noqa: E402
from models.sasrec import ziln_loss  # noqa: E402

WEIGHTS = (0.0, 0.25, 0.5, 0.7, 1.0)


def fit_and_test(train, test, seed: int, epochs: int = 15) -> dict[float, dict[str, float]]:
    torch.manual_seed(seed)
    columns = LTV_FEATURES + PRIOR_COLUMNS
    scaler = FeatureScaler.fit(train, columns)
    head = torch.nn.Sequential(torch.nn.Linear(len(columns), 64), torch.nn.GELU(), torch.nn.Linear(64, 64),
                               torch.nn.GELU(), torch.nn.Linear(64, 3))
    optimizer = torch.optim.AdamW(head.parameters(), 2e-3, weight_decay=0.01)
    x = torch.as_tensor(scaler.transform(train))
    log_prior = torch.log(torch.as_tensor(train["ltv_prior"].to_numpy(np.float32)))
    y = torch.as_tensor(train["label_value"].to_numpy(np.float32))
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            j = order[i : i + 128]
            out = head(x[j])
            loss = ziln_loss(out[:, 0], out[:, 1] + log_prior[j], 0.05 + 1.95 * torch.sigmoid(out[:, 2]), y[j])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        out = head(torch.as_tensor(scaler.transform(test)))
        log_prior = torch.log(torch.as_tensor(test["ltv_prior"].to_numpy(np.float32)))
        sigma = 0.05 + 1.95 * torch.sigmoid(out[:, 2])
        log_ziln = torch.nn.functional.logsigmoid(out[:, 0]) + out[:, 1] + log_prior + sigma**2 / 2
    actual = test["label_value"].to_numpy(dtype=float)
    results = {}
    for w in WEIGHTS:
        predicted = torch.exp(log_prior + w * (log_ziln - log_prior)).numpy().astype(float)
        m = ltv_metrics(actual, predicted)
        results[w] = {"gini": round(m["gini"], 4), "decile_mape": round(m["decile_mape"], 4)}
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--features", required=True, type=Path)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    ltv = load_ltv(args.features)
    if "ltv_prior" not in ltv:
        raise SystemExit(f"{args.features}: no ltv_prior (run with ltv_prior=true)")
    frames = {c: ltv[ltv["cutoff"] == c].sort_values("user_id", ignore_index=True) for c in ("train_1", "train", "eval")}
    if frames["train_1"].empty:
        raise SystemExit(f"{args.features}: no train_1 cut-off (run with ltv_train_windows >= 2)")
    out = {}
    for name, (a, b) in {"backtest train_1 -> train": ("train_1", "train"), "train -> eval": ("train", "eval")}.items():
        out[name] = {str(seed): fit_and_test(frames[a], frames[b], seed) for seed in range(args.seeds)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
