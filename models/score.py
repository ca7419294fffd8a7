"""Batch scoring: top-N unseen items for every user and an LTV estimate for every customer, in one pass.

Users are scored in chunks. The encoder gives each user's vector; user vectors x all item vectors is one
matrix product; seen items and items outside this run's catalogue are masked; `topk` picks the N best; the LTV
head reads the same user vectors. Peak memory is bounded by the chunk size (chosen from the memory available,
or `score_chunk_users`), never by users x items, and results leave as Arrow record batches: no table of all
rows is ever built. `Scorer.score` is the one scoring function: `stream_scores` runs it locally, and
`jobs/score.py` runs it inside Spark (`mapInArrow` over user partitions, the checkpoint broadcast).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from models.checkpoint import LoadedModel
from models.data import FeatureSet, epoch
from models.evaluate import ltv_prior, remap, to_model_index
from models.ranking import model_topk

RECS_SCHEMA = pa.schema([("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()), ("score", pa.float64())])
GROUP = 8  # chunks per streamed batch
LTV_SCHEMA = pa.schema([("user_id", pa.string()), ("p_active", pa.float64()), ("expected_value", pa.float64())])


def available_memory() -> int:
    """Bytes of memory this process may still use: the machine's available memory, or the cgroup's if lower."""
    import psutil

    free = psutil.virtual_memory().available
    try:  # cgroup v2 limit (containers)
        limit, used = (open(f"/sys/fs/cgroup/memory.{n}").read().strip() for n in ("max", "current"))
        if limit != "max":
            free = min(free, int(limit) - int(used))
    except OSError:
        pass
    return max(free, 256 << 20)


def auto_chunk_size(n_items: int, max_len: int, d_model: int, budget_bytes: int | None = None) -> int:
    """Users per chunk so that one chunk's working set fits `budget_bytes` (default: a quarter of the available
    memory, at most 2 GiB). Per user: float32 scores over the catalogue, about three copies alive at once
    (logits, masked/value-weighted scores, topk's work space), and the encoder's activations."""
    budget = budget_bytes if budget_bytes is not None else min(available_memory() // 4, 2 << 30)
    per_user = 3 * 4 * n_items + 4 * max_len * d_model * 16
    return int(np.clip(budget // per_user, 16, 65536))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cap_per_category(idx: np.ndarray, scores: np.ndarray, categories: np.ndarray, cap: int, n: int):
    """Per row, the first `n` candidates (in score order) such that no category occurs more than `cap` times.
    When a row's candidates run out, the best skipped ones fill it, so a row is as long as it would be without the
    cap. `categories`: integer code by item index, -1 = no category (never capped). Returns (idx, scores)."""
    rows, k = idx.shape
    cats = categories[idx]
    occurrence = pd.DataFrame({"row": np.repeat(np.arange(rows), k), "cat": cats.ravel()}).groupby(
        ["row", "cat"]).cumcount().to_numpy().reshape(rows, k)
    over = (occurrence >= cap) & (cats >= 0)
    tier = np.where(np.isfinite(scores), over.astype(np.int64), 2)  # kept, then over the cap, then nothing left
    order = np.argsort(tier * k + np.arange(k), axis=1, kind="stable")[:, :n]
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(scores, order, axis=1)


class Scorer:
    """A loaded model ready to score users given in this run's item indices (the features' `item_idx`).

    Candidates: items of this run's catalogue (`recommendable_ids`, default all of `run_item_ids`: pass the
    in-stock ones) that the user has not seen. `max_per_category` (with `item_categories`, by run item) caps the
    items of one category in a user's list, from a candidate pool of 5 x top_n.
    """

    CANDIDATES_PER_SLOT = 5

    def __init__(self, loaded: LoadedModel, run_item_ids, top_n: int, rank_by: str = "relevance",
                 device: torch.device | None = None, chunk: int | None = None, recommendable_ids=None,
                 item_categories=None, max_per_category: int | None = None):
        self.device = device or default_device()
        cfg = loaded.model.cfg
        self.chunk = chunk or auto_chunk_size(cfg.n_items, cfg.max_len, cfg.d_model)  # users per matrix product
        if self.device.type == "cpu":
            torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        self.model = loaded.model.to(self.device).eval()
        self.scaler = loaded.scaler
        self.item_ids = np.asarray([""] + list(loaded.item_ids), dtype=object)  # by model item index
        run_item_ids = np.asarray(run_item_ids, dtype=object)
        self.remap = remap(run_item_ids, loaded)  # run item index -> model item index
        recommendable = run_item_ids if recommendable_ids is None else np.asarray(recommendable_ids, dtype=object)
        self.allowed = np.isin(self.item_ids, recommendable)  # only items of this run's catalogue are recommended
        self.top_n = top_n
        self.max_per_category, self.categories = max_per_category, None
        if max_per_category is not None:
            if item_categories is None:
                raise ValueError("max_per_category needs the items' categories")
            by_id = dict(zip(run_item_ids, item_categories))
            names = [by_id.get(i) for i in self.item_ids]
            codes = {c: j for j, c in enumerate(sorted({c for c in names if c not in (None, "", "unknown")}))}
            self.categories = np.array([codes.get(c, -1) for c in names], dtype=np.int64)
        self.value = None
        if rank_by == "expected_value":
            if not (loaded.item_price > 0).any():
                raise ValueError("rank_by=expected_value needs item prices, but no item of the model's catalogue has a "
                                 "price > 0 (items file column 'price', or unit_price of purchases)")
            self.value = loaded.item_price
        elif rank_by != "relevance":
            raise ValueError(f"rank_by {rank_by!r}: use relevance or expected_value")

    @torch.no_grad()
    def score(self, user_ids: np.ndarray, items: list[np.ndarray], types: list[np.ndarray],
              ltv_features: pd.DataFrame | None = None, ts: list[np.ndarray] | None = None
              ) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        """One chunk of users (histories in this run's item indices) -> (recommendation rows, LTV rows).

        `ltv_features`: raw LTV features aligned with the users, NaN rows for users who are not customers (no
        LTV row for them); None: no LTV rows at all. `ts`: the events' times (epoch seconds), needed by a model
        that embeds time gaps. Ranks stop early only where a user has nothing left."""
        its, tys, times = to_model_index(self.remap, items, types, ts)
        k = self.top_n * (self.CANDIDATES_PER_SLOT if self.max_per_category is not None else 1)
        topk, scores, user_vecs = model_topk(self.model, its, tys, k=k, item_value=self.value,
                                             allowed=self.allowed, chunk=self.chunk, ts=times)
        if self.max_per_category is not None:
            topk, scores = cap_per_category(topk, scores, self.categories, self.max_per_category, self.top_n)
        keep = np.isfinite(scores)  # -inf: nothing unseen left to recommend at that rank
        n_rank = topk.shape[1]
        users = np.asarray(user_ids, dtype=object)
        recs = pa.RecordBatch.from_arrays([
            pa.array(np.repeat(users, n_rank)[keep.ravel()], pa.string()),
            pa.array(np.tile(np.arange(1, n_rank + 1, dtype=np.int32), len(users))[keep.ravel()], pa.int32()),
            pa.array(self.item_ids[topk.ravel()][keep.ravel()], pa.string()),
            pa.array(scores.ravel()[keep.ravel()].astype(np.float64), pa.float64()),
        ], schema=RECS_SCHEMA)
        p_all = ev_all = np.zeros(0)
        customers = np.zeros(len(users), dtype=bool)
        if ltv_features is not None and len(users):
            customers = ltv_features[self.scaler.features].notna().any(axis=1).to_numpy()
        if customers.any():
            rows = ltv_features[customers]
            feats = torch.as_tensor(self.scaler.transform(rows), device=self.device)
            prior = ltv_prior(rows, self.model)
            prior = None if prior is None else prior.to(self.device)
            h = user_vecs[torch.from_numpy(customers.copy()).to(user_vecs.device)].float()
            p, ev = (t.float() for t in self.model.ltv_estimate(h, feats, prior))
            p_all, ev_all = p.cpu().numpy().astype(np.float64), ev.cpu().numpy().astype(np.float64)
        ltv = pa.RecordBatch.from_arrays([pa.array(users[customers], pa.string()), pa.array(p_all, pa.float64()),
                                          pa.array(ev_all, pa.float64())], schema=LTV_SCHEMA)
        return recs, ltv


def stream_scores(fs: FeatureSet, loaded: LoadedModel, top_n: int, rank_by: str = "relevance",
                  chunk: int | None = None, device: torch.device | None = None, max_per_category: int | None = None
                  ) -> Iterator[tuple[pa.RecordBatch, pa.RecordBatch]]:
    """Every user with events before the end of the as-of day: `chunk` users per matrix product (default: auto),
    GROUP chunks per yielded batch (sorted by history length inside, so that short histories are padded little)."""
    scorer = Scorer(loaded, fs.item_ids, top_n, rank_by, device, chunk, recommendable_ids=fs.recommendable_ids,
                    item_categories=fs.item_category, max_per_category=max_per_category)
    group = scorer.chunk * GROUP
    end = epoch(fs.split["end"])
    ltv = fs.ltv_frame("score")
    columns = loaded.scaler.features
    features = pd.DataFrame(np.nan, index=np.arange(len(fs.users)), columns=columns)
    features.loc[ltv["user_pos"].to_numpy(), columns] = ltv[columns].fillna(0.0).to_numpy(dtype=float)
    ends = np.array([fs.cut(u, end) for u in range(len(fs.users))], dtype=np.int64)
    for start in range(0, len(fs.users), group):
        users = np.flatnonzero(ends[start:start + group] > 0) + start
        items, types, times = fs.prefixes(ends, users)
        yield scorer.score(fs.users[users], items, types, features.iloc[users].reset_index(drop=True), times)


def score_recommendations(fs: FeatureSet, loaded: LoadedModel, top_n: int, rank_by: str = "relevance",
                          chunk: int | None = None, max_per_category: int | None = None) -> pa.Table:
    """All recommendation rows as one table (small runs and tests; the score stage streams)."""
    batches = stream_scores(fs, loaded, top_n, rank_by, chunk, max_per_category=max_per_category)
    return pa.Table.from_batches([r for r, _ in batches], RECS_SCHEMA)


def score_ltv(fs: FeatureSet, loaded: LoadedModel, chunk: int | None = None) -> pa.Table:
    """One row per customer (at least one purchase before the end of the as-of day)."""
    return pa.Table.from_batches([l for _, l in stream_scores(fs, loaded, 1, "relevance", chunk)], LTV_SCHEMA)
