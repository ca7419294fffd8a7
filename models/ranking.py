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
    rows_t, cols_t = (torch.as_tensor(a, dtype=torch.long).to(scores.device) for a in (rows, cols))
    scores[rows_t, cols_t] = float("-inf")
    scores[:, 0] = float("-inf")


def trimmed(seqs: list[np.ndarray], max_len: int) -> np.ndarray:
    """Left-padded codes, only as wide as the longest sequence (at most max_len): leading columns that are
    padding for every row change nothing (padding is never attended to), so they are not computed."""
    width = min(max_len, max((len(s) for s in seqs), default=1)) or 1
    return pad_left(seqs, width)


@torch.no_grad()
def model_topk(model, items: list[np.ndarray], types: list[np.ndarray], k: int, chunk: int = 1024,
               item_value: np.ndarray | None = None, allowed: np.ndarray | None = None,
               ts: list[np.ndarray] | None = None):
    """Top-k (indices, scores) and final user vectors for each history; seen items excluded, and with
    `allowed` (bool by model item index) every item it marks False (e.g. no longer in the catalogue).

    By default items are ranked by the model's logit (relevance). With `item_value` (by model item index,
    e.g. the catalogue price) they are ranked by expected value instead: P(next new item = i) x value_i, the
    softmax taken over the items the user has not seen; the scores returned are then those expected values,
    and items of value <= 0 are never recommended.
    `ts`: each history's event times (epoch seconds), needed by a model that embeds time gaps.
    Runs on the model's device (on CUDA under bf16 autocast); results come back as CPU arrays / tensors.
    """
    model.eval()
    device = next(model.parameters()).device
    k = min(k, model.cfg.n_items - 1)
    log_value = None
    if item_value is not None:
        value = torch.as_tensor(np.asarray(item_value, dtype=np.float32), device=device)
        log_value = torch.where(value > 0, value.clamp(min=1e-30).log(), torch.tensor(float("-inf"), device=device))
    banned = None
    if allowed is not None and not np.asarray(allowed, dtype=bool)[1:].all():  # (padding is masked anyway)
        banned = torch.as_tensor(np.flatnonzero(~np.asarray(allowed, dtype=bool)), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    # shortest histories first: each sub-batch is padded only to its own longest history
    order = np.argsort([len(s) for s in items], kind="stable")
    with autocast:
        item_vecs = model.item_vectors()  # once: with item text it is a (n_items x text_dim) projection
    idx, val, vecs = [], [], []
    for start in range(0, len(items), chunk):
        rows = order[start : start + chunk]
        its, tys = [items[r] for r in rows], [types[r] for r in rows]
        x = torch.as_tensor(trimmed(its, model.cfg.max_len), device=device)
        t = torch.as_tensor(trimmed(tys, model.cfg.max_len), device=device)
        times = None if ts is None else torch.as_tensor(trimmed([ts[r] for r in rows], model.cfg.max_len), device=device)
        with autocast:
            h = model.encode(x, t, last_only=True, item_vecs=item_vecs, ts=times)[:, -1]
            scores = model.item_logits(h, item_vecs).float()
        mask_seen(scores, its)
        if banned is not None:
            scores.index_fill_(1, banned, float("-inf"))
        if log_value is not None:  # (a user who has seen every item gets NaN rows: nothing to recommend)
            scores = torch.nan_to_num(torch.log_softmax(scores, dim=1) + log_value, nan=float("-inf"))
        top = scores.topk(k, dim=1)
        idx.append(top.indices.cpu().numpy())
        values = top.values.float()
        if log_value is not None:  # -inf (nothing to recommend at that rank) stays -inf
            values = torch.where(torch.isfinite(values), values.exp(), values)
        val.append(values.cpu().numpy())
        vecs.append(h.float().cpu())
        del scores, top  # before the next sub-batch allocates its own (n x items) scores
    if not idx:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32), torch.zeros(0, model.cfg.d_model)
    back = np.argsort(order, kind="stable")  # the callers' order again
    return np.concatenate(idx)[back], np.concatenate(val)[back], torch.cat(vecs)[torch.as_tensor(back)]


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


def interaction_counts(fs, ends: np.ndarray):
    """The implicit-feedback matrix of the ALS baseline (jobs/als_baseline.py): (user_pos, item_idx, weight = the
    user's events on the item) over each user's first ends[u] events."""
    import pandas as pd

    users = np.arange(len(fs.users))
    items, _, _ = fs.prefixes(ends, users)
    pairs = pd.DataFrame({"user_pos": np.repeat(users, [len(i) for i in items]).astype(np.int32),
                          "item_idx": np.concatenate(items).astype(np.int32)})
    return pairs.value_counts().rename("weight").reset_index().astype({"weight": np.float32})


def als_inputs(fs, protocol, folder, tune: bool = True) -> list[str]:
    """Write the ALS job's (jobs/als_baseline.py) inputs into `folder`; its arguments for them: every user's
    history before the test window and, with `tune` and where the validation window has targets, the histories
    before it and its new items per user (the job then tunes on them)."""
    from pathlib import Path

    import pandas as pd

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def write(name: str, frame: pd.DataFrame) -> str:
        frame.to_parquet(folder / name, index=False)
        return str(folder / name)

    args = ["--interactions", write("interactions.parquet", interaction_counts(fs, protocol.valid_end)),
            "--n-items", str(fs.n_items), "--out", str(folder)]
    users, targets = fs.holdout(protocol.train_end, protocol.valid_end)
    if tune and len(users):
        valid = pd.DataFrame({"user_pos": np.repeat(users, [len(t) for t in targets]).astype(np.int32),
                              "item_idx": np.concatenate([sorted(t) for t in targets]).astype(np.int32)})
        args += ["--tune-interactions", write("tune_interactions.parquet", interaction_counts(fs, protocol.train_end)),
                 "--valid-targets", write("valid_targets.parquet", valid)]
    return args


def load_factors(als_dir, n_users: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """The ALS job's (user vectors by user position, item vectors by item index with row 0 = padding); zeros where
    the job has no vector (a user or item without interactions)."""
    from pathlib import Path

    import pyarrow.parquet as pq

    def load(name: str, n: int) -> np.ndarray:
        return dense_factors(pq.ParquetDataset(Path(als_dir) / name).read().to_pandas(), n)

    return load("user_factors", n_users), load("item_factors", n_items)


def dense_factors(frame, rows: int) -> np.ndarray:
    """ALS factors as Spark writes them (a frame of id, features) as a (rows, rank) array; zeros where an id has no
    vector."""
    out = np.zeros((rows, len(frame["features"].iloc[0])), dtype=np.float32)
    out[frame["id"].to_numpy()] = np.stack(frame["features"].to_numpy())
    return out
