"""Evaluate a trained model and the baselines on held-out data, with the same code for every model.

Recommendations: the test window [test_start, end); input = each user's history before test_start; targets
= items new to the user in the window; full ranking over the catalogue with seen items excluded.
LTV: features at the `eval` cut-off (D - H) against actual net spend in [D - H, D).
"""

from __future__ import annotations

import numpy as np
import torch

from models.checkpoint import LoadedModel
from models.data import FeatureSet, epoch, pad_left
from models.metrics import ltv_metrics, ranking_metrics
from models.ranking import model_topk, popularity_topk
from models.sasrec import ziln_expected_value

KS = (10, 20)


def remap(fs: FeatureSet, loaded: LoadedModel) -> np.ndarray:
    """Index map from this run's item indices to the model's (0 where the model does not know the item)."""
    model_index = {item: i + 1 for i, item in enumerate(loaded.item_ids)}
    return np.array([0] + [model_index.get(i, 0) for i in fs.item_ids], dtype=np.int64)


def model_histories(fs: FeatureSet, loaded: LoadedModel, before: int, users=None):
    """Histories before a cut-off, in the model's item indices (unknown items dropped)."""
    pos, its, tys = fs.histories(before, users)
    m = remap(fs, loaded)
    mapped = [(m[i][m[i] > 0], t[m[i] > 0]) for i, t in zip(its, tys)]
    return pos, [a for a, _ in mapped], [b for _, b in mapped], its


def evaluate_recommendations(fs: FeatureSet, loaded: LoadedModel) -> dict[str, dict[str, float]]:
    start, end = epoch(fs.split["test_start"]), epoch(fs.split["end"])
    users, targets = fs.holdout(start, end)
    if len(users) == 0:
        return {}
    _, its, tys, own = model_histories(fs, loaded, start, users)
    topk_model, _, _ = model_topk(loaded.model, its, tys, k=max(KS))
    # model indices -> this run's indices, for comparison with targets
    run_index = {item: i + 1 for i, item in enumerate(fs.item_ids)}
    to_run = np.array([0] + [run_index.get(i, 0) for i in loaded.item_ids], dtype=np.int64)
    topk_model = to_run[topk_model]
    counts = np.bincount(np.concatenate(own), minlength=fs.n_items).astype(float)
    topk_pop = popularity_topk(counts, own, k=max(KS))
    n = fs.n_items - 1
    return {
        "model": ranking_metrics(topk_model, targets, KS, n),
        "popularity": ranking_metrics(topk_pop, targets, KS, n),
        "_users": {"n_test_users": float(len(users))},
    }


@torch.no_grad()
def predict_ltv(fs: FeatureSet, loaded: LoadedModel, cutoff: str):
    """(frame, p_active, expected_value) for every customer at a cut-off."""
    frame = fs.ltv_frame(cutoff)
    if frame.empty:
        return frame, np.zeros(0), np.zeros(0)
    _, its, tys, _ = model_histories(fs, loaded, epoch(fs.split["ltv_cutoffs"][cutoff]), frame["user_pos"].to_numpy())
    feats = torch.as_tensor(loaded.scaler.transform(frame))
    p_all, ev_all = [], []
    for s in range(0, len(frame), 2048):
        x = torch.as_tensor(pad_left(its[s : s + 2048], loaded.model.cfg.max_len))
        t = torch.as_tensor(pad_left(tys[s : s + 2048], loaded.model.cfg.max_len))
        h = loaded.model.encode(x, t)[:, -1]
        p, ev = ziln_expected_value(*loaded.model.ltv_params(h, feats[s : s + 2048]))
        p_all.append(p.numpy()), ev_all.append(ev.numpy())
    return frame, np.concatenate(p_all).astype(float), np.concatenate(ev_all).astype(float)


def evaluate_ltv(fs: FeatureSet, loaded: LoadedModel) -> dict[str, dict[str, float]]:
    frame, _, ev = predict_ltv(fs, loaded, "eval")
    if frame.empty:
        return {}
    actual = frame["label_value"].to_numpy(dtype=float)
    naive = np.maximum(frame["spend_past_h"].to_numpy(dtype=float), 0.0)
    return {"ziln": ltv_metrics(actual, ev), "naive_past_spend": ltv_metrics(actual, naive)}
