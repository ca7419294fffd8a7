"""Batch scoring: top-N unseen items for every user and an LTV estimate for every customer."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from models.checkpoint import LoadedModel
from models.data import FeatureSet, epoch
from models.evaluate import predict_ltv, to_model_index
from models.ranking import model_topk


def score_recommendations(fs: FeatureSet, loaded: LoadedModel, top_n: int, rank_by: str = "relevance") -> pa.Table:
    """One row per user and rank (fewer ranks only where a user has seen nearly every item); only items of this
    run's catalogue are recommended (a champion trained earlier may know items that are gone).

    rank_by="relevance": score = the model's logit; "expected_value": score = P(next new item) x catalogue price,
    items without a price are not recommended.
    """
    value = None
    if rank_by == "expected_value":
        if not (loaded.item_price > 0).any():
            raise ValueError("rank_by=expected_value needs item prices, but no item of the model's catalogue has a "
                             "price > 0 (items file column 'price', or unit_price of purchases)")
        value = loaded.item_price
    pos, own_items, own_types = fs.histories(epoch(fs.split["end"]))
    its, tys = to_model_index(fs, loaded, own_items, own_types)
    in_catalogue = np.isin(np.asarray([""] + list(loaded.item_ids), dtype=object), np.asarray(fs.item_ids, dtype=object))
    topk, scores, _ = model_topk(loaded.model, its, tys, k=top_n, item_value=value, allowed=in_catalogue)
    keep = np.isfinite(scores)  # -inf: nothing unseen left to recommend at that rank
    n_rank = topk.shape[1]
    item_ids = np.asarray([""] + list(loaded.item_ids), dtype=object)
    return pa.table(
        {
            "user_id": pa.array(np.repeat(fs.users[pos], n_rank)[keep.ravel()], pa.string()),
            "rank": pa.array(np.tile(np.arange(1, n_rank + 1), len(pos))[keep.ravel()], pa.int32()),
            "item_id": pa.array(item_ids[topk.ravel()][keep.ravel()], pa.string()),
            "score": pa.array(scores.ravel()[keep.ravel()].astype(float), pa.float64()),
        }
    )


def score_ltv(fs: FeatureSet, loaded: LoadedModel) -> pa.Table:
    """One row per customer (at least one purchase before the end of the as-of day)."""
    frame, p, ev = predict_ltv(fs, loaded, "score")
    return pa.table(
        {
            "user_id": pa.array(frame["user_id"].astype(str).to_numpy() if len(frame) else [], pa.string()),
            "p_active": pa.array(p, pa.float64()),
            "expected_value": pa.array(ev, pa.float64()),
        }
    )
