"""Evaluate a trained model and the baselines on held-out data, with the same code for every model.

Recommendations: the protocol's test window (temporal: [test_start, end); leave_one_out: each user's last
event); input = each user's history before it; targets = items new to the user in the window; full ranking
over the catalogue with seen items excluded.
LTV: features at the `eval` cut-off (D - H) against actual net spend in [D - H, D).
"""

from __future__ import annotations

import numpy as np
import torch

from models.checkpoint import LoadedModel
from models.data import FeatureSet, Protocol, epoch, pad_left
from models.metrics import ndcg_per_user, ranking_metrics
from models.ranking import factor_topk, model_topk, popularity_topk

KS = (10, 20)


def remap(run_item_ids, loaded: LoadedModel) -> np.ndarray:
    """Index map from a run's item indices (run_item_ids[idx - 1] is item idx) to the model's (0 where the model
    does not know the item)."""
    model_index = {item: i + 1 for i, item in enumerate(loaded.item_ids)}
    return np.array([0] + [model_index.get(i, 0) for i in run_item_ids], dtype=np.int64)


def to_model_index(mapping: np.ndarray, items: list[np.ndarray], types: list[np.ndarray],
                   ts: list[np.ndarray] | None = None):
    """(items, types, ts) of histories in the model's item indices through `remap`'s map; the events of items
    the model does not know are dropped. `ts` (event times) may be None, and then stays None."""
    mapped = [mapping[np.asarray(i, dtype=np.int64)] for i in items]
    keep = [m > 0 for m in mapped]
    times = None if ts is None else [np.asarray(t, dtype=np.int64)[k] for t, k in zip(ts, keep)]
    return [m[k] for m, k in zip(mapped, keep)], [np.asarray(t, dtype=np.int64)[k] for t, k in zip(types, keep)], times


def evaluate_recommendations(fs: FeatureSet, loaded: LoadedModel, protocol: Protocol,
                             factors: tuple[np.ndarray, np.ndarray] | None = None,
                             baselines: bool = True) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """Test-window metrics of the model and, with `baselines`, of its value-aware ranking, popularity and (when
    given, ALS) factor baselines; and each one's per-user NDCG@10 (the holdout users in one order, for the model
    gate's paired comparisons)."""
    users, targets = fs.holdout(protocol.valid_end, protocol.test_end)
    if len(users) == 0:
        return {}, {}
    own_items, own_types, own_ts = fs.prefixes(protocol.valid_end, users)
    its, tys, times = to_model_index(remap(fs.item_ids, loaded), own_items, own_types, own_ts)
    topk_model, _, _ = model_topk(loaded.model, its, tys, k=max(KS), ts=times)
    run_index = {item: i + 1 for i, item in enumerate(fs.item_ids)}
    to_run = np.array([0] + [run_index.get(i, 0) for i in loaded.item_ids], dtype=np.int64)
    n, price = fs.n_items - 1, fs.item_price

    results, per_user = {}, {}

    def measure(name: str, topk: np.ndarray) -> None:
        results[name] = ranking_metrics(topk, targets, KS, n, item_price=price)
        per_user[name] = ndcg_per_user(topk, targets, 10)

    measure("model", to_run[topk_model])
    if not baselines:
        return results, per_user
    if (loaded.item_price > 0).any():  # value-aware ranking (rank_by=expected_value), where items have prices
        topk_value, _, _ = model_topk(loaded.model, its, tys, k=max(KS), item_value=loaded.item_price, ts=times)
        measure("model_expected_value", to_run[topk_value])
    counts = np.bincount(np.concatenate(own_items), minlength=fs.n_items).astype(float)
    measure("popularity", popularity_topk(counts, own_items, k=max(KS)))
    if factors is not None:
        user_vecs, item_vecs = factors
        measure("als", factor_topk(torch.as_tensor(user_vecs[users]), torch.as_tensor(item_vecs), own_items, k=max(KS)))
    results["_users"] = {"n_test_users": float(len(users))}
    return results, per_user


def known_item_shares(fs: FeatureSet, loaded: LoadedModel, protocol: Protocol) -> dict[str, float]:
    """How much of this run's items a model knows: the share of the catalogue, and the share of the holdout
    users' recent events (the last max_len before the test window, what the model would read)."""
    mapping = remap(fs.item_ids, loaded)
    users, _ = fs.holdout(protocol.valid_end, protocol.test_end)
    own_items, _, _ = fs.prefixes(protocol.valid_end, users)
    recent = [np.asarray(i, dtype=np.int64)[-loaded.model.cfg.max_len:] for i in own_items]
    recent = np.concatenate(recent) if recent else np.zeros(0, dtype=np.int64)
    return {"known_catalogue_share": float((mapping[1:] > 0).mean()) if len(mapping) > 1 else 0.0,
            "known_recent_share": float((mapping[recent] > 0).mean()) if len(recent) else 1.0}


@torch.no_grad()
def predict_ltv(fs: FeatureSet, loaded: LoadedModel, cutoff: str):
    """(frame, p_active, expected_value) for every customer at a cut-off."""
    frame = fs.ltv_frame(cutoff)
    if frame.empty:
        return frame, np.zeros(0), np.zeros(0)
    model = loaded.model
    if model.cfg.ltv_user_dim:  # the head reads the user vector: encode each customer's history before the cut-off
        _, own_items, own_types, own_ts = fs.histories(epoch(fs.split["ltv_cutoffs"][cutoff]), frame["user_pos"].to_numpy())
        its, tys, times = to_model_index(remap(fs.item_ids, loaded), own_items, own_types, own_ts)
    feats = torch.as_tensor(loaded.scaler.transform(frame))
    prior = ltv_prior(frame, model)
    p_all, ev_all = [], []
    for s in range(0, len(frame), 2048):
        h = None
        if model.cfg.ltv_user_dim:
            x = torch.as_tensor(pad_left(its[s : s + 2048], model.cfg.max_len))
            t = torch.as_tensor(pad_left(tys[s : s + 2048], model.cfg.max_len))
            ts = torch.as_tensor(pad_left(times[s : s + 2048], model.cfg.max_len))
            h = model.encode(x, t, ts=ts)[:, -1]
        p, ev = model.ltv_estimate(h, feats[s : s + 2048], None if prior is None else prior[s : s + 2048])
        p_all.append(p.numpy()), ev_all.append(ev.numpy())
    return frame, np.concatenate(p_all).astype(float), np.concatenate(ev_all).astype(float)


def ltv_prior(frame, model) -> torch.Tensor | None:
    """The customers' prior values (rows of `frame`) when the model's LTV head corrects a prior
    (models/ltv_prior.py), else None. Every customer needs one, > 0 (missing, NaN or 0 raise)."""
    if not model.cfg.ltv_prior:
        return None
    values = frame["ltv_prior"].to_numpy(dtype=np.float32) if "ltv_prior" in frame else None
    if values is None or not (values > 0).all():
        raise ValueError("the model's LTV head corrects a prior, but the features have no ltv_prior > 0 for every "
                         "customer: run the ltv_prior stage (models/ltv_prior.py) on them")
    return torch.as_tensor(values)


def head_estimates(fs: FeatureSet, loaded: LoadedModel, cutoff: str, total_from: str = "model"):
    """predict_ltv's (frame, p_active, expected_value), the expected values rescaled to the total `total_from` gives
    over the cut-off's customers (the LTV backtest's ltv_total_from, models/ltv_backtest.py; `model`: as they are)."""
    frame, p, ev = predict_ltv(fs, loaded, cutoff)
    return frame, p, at_source_total(fs, frame, cutoff, ev, total_from)


def at_source_total(fs: FeatureSet, frame, cutoff: str, expected: np.ndarray, total_from: str) -> np.ndarray:
    """`expected` (of `frame`'s customers at a cut-off) rescaled to the total of `total_from`
    (models.ltv_backtest.published_total; as they are where it has none)."""
    from models.ltv_backtest import at_total, published_total

    if total_from == "model" or not len(frame):
        return expected
    frames = dict(tuple(fs.ltv.groupby("cutoff"))) | {cutoff: frame}
    return at_total(expected, published_total(frames, fs.split["ltv_cutoffs"], fs.split["horizon_days"], cutoff,
                                              total_from))


def ltv_predictions(fs: FeatureSet, loaded: LoadedModel, with_btyd: bool = True, total_from: str = "model"):
    """(actual spend, {model: (expected value, activity score)}) at the `eval` cut-off (D - H).

    The activity score orders customers by their chance of buying in the horizon (for AUC-PR): ZILN's
    p_active, BG/NBD's expected number of purchases, the naive model's past spend, the boosted trees' value.
    BG/NBD + Gamma-Gamma comes from the ltv_prior stage's fit when there is one, and with it the prior itself
    (BTYD x seasonal factor). The boosted trees (`gbdt`, models/ltv_backtest.py) are fitted on the training
    cut-offs' customers with the features the ZILN head reads. With `total_from` other than `model`, `ziln` is the
    published estimate at that source's total (head_estimates), and `ziln_own_level` the head's own.
    """
    from models.ltv_backtest import fit_family, fittable

    frame, p, ev = predict_ltv(fs, loaded, "eval")
    if frame.empty:
        return np.zeros(0), {}
    actual = frame["label_value"].to_numpy(dtype=float)
    naive = np.maximum(frame["spend_past_h"].to_numpy(dtype=float), 0.0)
    predictions = {"ziln": (ev, p), "naive_past_spend": (naive, naive)}
    if total_from != "model":
        predictions["ziln_own_level"] = (ev, p)
        predictions["ziln"] = (at_source_total(fs, frame, "eval", ev, total_from), p)
    train = fs.ltv_train_frame()
    with_prior = "ltv_prior" in frame and bool(frame["ltv_prior"].notna().all())
    if fittable(train):  # the same fit as the one the score stage publishes when the backtest picks it
        gbdt = fit_family("gbdt", train, with_prior)(frame)
        predictions["gbdt"] = (gbdt, gbdt)
    if with_prior:
        purchases = frame["btyd_expected_purchases"].to_numpy(dtype=float)
        predictions["bgnbd_gamma_gamma"] = (frame["btyd_expected_value"].to_numpy(dtype=float), purchases)
        predictions["seasonal_bgnbd_prior"] = (frame["ltv_prior"].to_numpy(dtype=float), purchases)
    elif with_btyd:
        from models.ltv_prior import btyd_predictions

        btyd = btyd_predictions(frame, fs.split["horizon_days"])
        predictions["bgnbd_gamma_gamma"] = (btyd["expected_value"].to_numpy(dtype=float),
                                            btyd["expected_purchases"].to_numpy(dtype=float))
    return actual, predictions
