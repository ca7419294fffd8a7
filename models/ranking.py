"""Chunked full-catalogue top-K: user vectors x all item vectors, seen items masked, then topk.

Peak memory is bounded by chunk x n_items, never users x items.
"""

from __future__ import annotations

import numpy as np
import torch

from models.data import pad_left


def mask_seen(scores: torch.Tensor, seen: list[np.ndarray]) -> None:
    """Set the scores of already-seen items (and padding) to -inf, in place."""
    rows = np.repeat(np.arange(len(seen)), [len(s) for s in seen])
    cols = np.concatenate(seen) if len(seen) else np.zeros(0, dtype=np.int64)
    scores[torch.as_tensor(rows), torch.as_tensor(cols, dtype=torch.long)] = float("-inf")
    scores[:, 0] = float("-inf")


@torch.no_grad()
def model_topk(model, items: list[np.ndarray], types: list[np.ndarray], k: int, chunk: int = 1024,
               item_value: np.ndarray | None = None, allowed: np.ndarray | None = None):
    """Top-k (indices, scores) and final user vectors for each history; seen items excluded, and with
    `allowed` (bool by model item index) every item it marks False (e.g. no longer in the catalogue).

    By default items are ranked by the model's logit (relevance). With `item_value` (by model item index,
    e.g. the catalogue price) they are ranked by expected value instead: P(next new item = i) x value_i, the
    softmax taken over the items the user has not seen; the scores returned are then those expected values,
    and items of value <= 0 are never recommended.
    """
    model.eval()
    k = min(k, model.cfg.n_items - 1)
    log_value = None
    if item_value is not None:
        value = torch.as_tensor(np.asarray(item_value, dtype=np.float32))
        log_value = torch.where(value > 0, value.clamp(min=1e-30).log(), torch.tensor(float("-inf")))
    banned = None if allowed is None else torch.as_tensor(~np.asarray(allowed, dtype=bool))
    idx, val, vecs = [], [], []
    for start in range(0, len(items), chunk):
        its, tys = items[start : start + chunk], types[start : start + chunk]
        x = torch.as_tensor(pad_left(its, model.cfg.max_len))
        t = torch.as_tensor(pad_left(tys, model.cfg.max_len))
        h = model.encode(x, t)[:, -1]
        scores = model.item_logits(h)
        mask_seen(scores, its)
        if banned is not None:
            scores[:, banned] = float("-inf")
        if log_value is not None:  # (a user who has seen every item gets NaN rows: nothing to recommend)
            scores = torch.nan_to_num(torch.log_softmax(scores.float(), dim=1) + log_value, nan=float("-inf"))
        top = scores.topk(k, dim=1)
        idx.append(top.indices.numpy())
        values = top.values.float()
        if log_value is not None:  # -inf (nothing to recommend at that rank) stays -inf
            values = torch.where(torch.isfinite(values), values.exp(), values)
        val.append(values.numpy())
        vecs.append(h)
    if not idx:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32), torch.zeros(0, model.cfg.d_model)
    return np.concatenate(idx), np.concatenate(val), torch.cat(vecs)


def popularity_topk(counts: np.ndarray, seen: list[np.ndarray], k: int, chunk: int = 4096):
    """Most frequent items not yet seen by the user."""
    base = torch.as_tensor(counts, dtype=torch.float32)
    k = min(k, len(counts) - 1)
    out = []
    for start in range(0, len(seen), chunk):
        part = seen[start : start + chunk]
        scores = base.expand(len(part), -1).clone()
        mask_seen(scores, part)
        out.append(scores.topk(k, dim=1).indices.numpy())
    return np.concatenate(out) if out else np.zeros((0, k), np.int64)


@torch.no_grad()
def factor_topk(user_vecs: torch.Tensor, item_vecs: torch.Tensor, seen: list[np.ndarray], k: int, chunk: int = 1024):
    """Top-k by dot product of user and item factors (ALS); row 0 of item_vecs is padding."""
    k = min(k, len(item_vecs) - 1)
    out = []
    for start in range(0, len(seen), chunk):
        scores = user_vecs[start : start + chunk].float() @ item_vecs.float().T
        mask_seen(scores, seen[start : start + chunk])
        out.append(scores.topk(k, dim=1).indices.numpy())
    return np.concatenate(out) if out else np.zeros((0, k), np.int64)
