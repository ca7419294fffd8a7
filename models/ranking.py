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
def model_topk(model, items: list[np.ndarray], types: list[np.ndarray], k: int, chunk: int = 1024):
    """Top-k (indices, scores) and final user vectors for each history; seen items excluded."""
    model.eval()
    k = min(k, model.cfg.n_items - 1)
    idx, val, vecs = [], [], []
    for start in range(0, len(items), chunk):
        its, tys = items[start : start + chunk], types[start : start + chunk]
        x = torch.as_tensor(pad_left(its, model.cfg.max_len))
        t = torch.as_tensor(pad_left(tys, model.cfg.max_len))
        h = model.encode(x, t)[:, -1]
        scores = model.item_logits(h)
        mask_seen(scores, its)
        top = scores.topk(k, dim=1)
        idx.append(top.indices.numpy())
        val.append(top.values.float().numpy())
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
