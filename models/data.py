"""Model inputs from the Spark feature folder: item vocabulary, user sequences, LTV features.

All cut-offs are epoch seconds; a user's history "before t" is found with a binary search over the
user's sorted timestamps, so one sequence table serves training, validation, test and scoring.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from models.ltv_prior import PRIOR_COLUMNS

LTV_FEATURES = [
    "n_purchases", "n_purchase_days", "net_spend", "gross_spend", "returned_spend", "recency_days",
    "tenure_days", "n_events", "n_items", "spend_30d", "spend_90d", "spend_past_h", "avg_order_value",
    "returns_share", "btyd_frequency", "btyd_recency", "btyd_T", "btyd_monetary_value", "spend_365d",
    "spend_last_year_h",
]
PRIOR_FILE = "ltv_prior"  # written beside the Spark features by the ltv_prior stage (models/ltv_prior.py)


def epoch(iso: str) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=timezone.utc).timestamp())


def in_stock(items: pd.DataFrame) -> np.ndarray:
    """Availability of each row of a features `items` table; unknown (or no column) means in stock."""
    if "in_stock" not in items:
        return np.ones(len(items), dtype=bool)
    return items["in_stock"].fillna(True).to_numpy(dtype=bool)


def ltv_head_features(use_prior: bool) -> list[str]:
    """The features the ZILN head reads (and the boosted trees beside it): the RFM features, and the prior's columns
    where the head corrects a prior (models/ltv_prior.py)."""
    return LTV_FEATURES + (PRIOR_COLUMNS if use_prior else [])


def load_ltv(features_dir: Path) -> pd.DataFrame:
    """The Spark LTV features, with the prior's columns (models/ltv_prior.py) joined in where it was fitted."""
    ltv = pq.read_table(features_dir / "ltv_features").to_pandas()
    if (features_dir / PRIOR_FILE).exists():
        prior = pq.read_table(features_dir / PRIOR_FILE).to_pandas()
        ltv = ltv.merge(prior, on=["user_id", "cutoff"], how="left", validate="one_to_one")
    return ltv


@dataclass
class FeatureSet:
    item_ids: np.ndarray  # item_ids[idx - 1] is the id of item index idx
    item_price: np.ndarray  # by item index (0 for padding)
    users: np.ndarray  # user ids, aligned with the three lists below
    items: list[np.ndarray]
    types: list[np.ndarray]
    ts: list[np.ndarray]
    ltv: pd.DataFrame
    split: dict  # split.json: cut-offs, horizon, and the event types in code order (a type's code is its position + 1)
    # like item_ids: catalogue category (None when unknown) and availability (out-of-stock items are not recommended)
    item_category: np.ndarray | None = None
    item_in_stock: np.ndarray | None = None

    @property
    def n_items(self) -> int:
        return len(self.item_ids) + 1

    @property
    def event_types(self) -> list[str]:
        return list(self.split["event_types"])

    @property
    def return_code(self) -> int:
        """The code of a return in `types` (returns are never targets)."""
        return self.event_types.index("return") + 1

    @classmethod
    def load(cls, features_dir: Path) -> "FeatureSet":
        features_dir = Path(features_dir)
        items = pq.read_table(features_dir / "items").to_pandas().sort_values("item_idx")
        if not (items["item_idx"].to_numpy() == np.arange(1, len(items) + 1)).all():
            raise ValueError(f"{features_dir / 'items'}: item_idx must be 1..n without gaps")
        seq = pq.read_table(features_dir / "sequences").to_pandas().sort_values("user_id", ignore_index=True)
        split = json.loads((features_dir / "split.json").read_text())
        if "event_types" not in split:
            raise ValueError(f"{features_dir / 'split.json'} has no event_types: these features come from an older "
                             "features job; run the features stage again")
        price = np.concatenate([[0.0], items["price"].fillna(0.0).to_numpy(dtype=float)])
        return cls(
            item_ids=items["item_id"].to_numpy(dtype=object),
            item_price=price,
            users=seq["user_id"].to_numpy(dtype=object),
            items=[np.asarray(x, dtype=np.int64) for x in seq["items"]],
            types=[np.asarray(x, dtype=np.int64) for x in seq["types"]],
            ts=[np.asarray(x, dtype=np.int64) for x in seq["ts"]],
            ltv=load_ltv(features_dir),
            split=split,
            item_category=items["category"].to_numpy(dtype=object) if "category" in items else None,
            item_in_stock=in_stock(items) if "in_stock" in items else None,
        )

    @property
    def recommendable_ids(self) -> np.ndarray:
        """Item ids that may be recommended: the catalogue's items that are not out of stock."""
        return self.item_ids if self.item_in_stock is None else self.item_ids[self.item_in_stock]

    def cut(self, u: int, before: int) -> int:
        """Number of user u's events strictly before epoch second `before`."""
        return int(np.searchsorted(self.ts[u], before, side="left"))

    def histories(self, before: int, users: np.ndarray | None = None
                  ) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """(user positions, items, types, event times) before the cut-off: for the given users (histories may be
        empty), else for every user with at least one event before it."""
        pos, its, tys, times = [], [], [], []
        for u in range(len(self.users)) if users is None else users:
            n = self.cut(u, before)
            if n or users is not None:
                pos.append(u)
                its.append(self.items[u][:n])
                tys.append(self.types[u][:n])
                times.append(self.ts[u][:n])
        return np.asarray(pos, dtype=np.int64), its, tys, times

    def holdout(self, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, list[set[int]]]:
        """Users with history before their `start` event and new (unseen) non-return items in events
        [start, end) (per-user event positions): their positions and target sets."""
        users, targets, return_code = [], [], self.return_code
        for u in range(len(self.users)):
            a, b = int(start[u]), int(end[u])
            if a == 0 or b <= a:
                continue
            window = self.items[u][a:b][self.types[u][a:b] != return_code]
            new = set(window.tolist()) - set(self.items[u][:a].tolist())
            if new:
                users.append(u)
                targets.append(new)
        return np.asarray(users, dtype=np.int64), targets

    def prefixes(self, ends: np.ndarray, users: np.ndarray
                 ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """Items, types and event times (epoch seconds) of each given user's first ends[u] events."""
        return ([self.items[u][: ends[u]] for u in users], [self.types[u][: ends[u]] for u in users],
                [self.ts[u][: ends[u]] for u in users])

    def ltv_train_cutoffs(self) -> list[str]:
        """Names of the LTV training cut-offs (train = D-2H, then train_1 = D-3H, ...)."""
        return [name for name in self.split["ltv_cutoffs"] if name == "train" or name.startswith("train_")]

    def ltv_train_frame(self) -> pd.DataFrame:
        """The LTV rows of every training cut-off, one frame."""
        return pd.concat([self.ltv_frame(name) for name in self.ltv_train_cutoffs()], ignore_index=True)

    def ltv_frame(self, cutoff: str) -> pd.DataFrame:
        """LTV rows of one cut-off ('train', 'eval' or 'score'), with the user's sequence position."""
        frame = self.ltv[self.ltv["cutoff"] == cutoff].copy()
        index = pd.Series(np.arange(len(self.users)), index=self.users)
        frame["user_pos"] = index.reindex(frame["user_id"]).to_numpy()
        return frame[frame["user_pos"].notna()].astype({"user_pos": np.int64}).sort_values("user_id", ignore_index=True)


@dataclass
class Protocol:
    """Per-user event positions of an evaluation protocol: events [0, train_end) train the model,
    [train_end, valid_end) is the validation window and [valid_end, test_end) the test window."""

    name: str
    train_end: np.ndarray
    valid_end: np.ndarray
    test_end: np.ndarray

    @classmethod
    def build(cls, fs: FeatureSet, name: str) -> "Protocol":
        lengths = np.array([len(x) for x in fs.items], dtype=np.int64)
        if name == "temporal":  # global time cut-offs; the production default
            cuts = [np.array([fs.cut(u, epoch(fs.split[key])) for u in range(len(lengths))], dtype=np.int64)
                    for key in ("valid_start", "test_start", "end")]
            return cls(name, *cuts)
        if name == "leave_one_out":  # each user's last event is test, the one before validation
            return cls(name, np.maximum(lengths - 2, 0), np.maximum(lengths - 1, 0), lengths)
        raise ValueError(f"unknown evaluation protocol {name!r}: use temporal or leave_one_out")


def pad_left(seqs: list[np.ndarray], max_len: int) -> np.ndarray:
    """Keep the last max_len codes of each sequence, left-padded with 0."""
    out = np.zeros((len(seqs), max_len), dtype=np.int64)
    for i, s in enumerate(seqs):
        s = s[-max_len:]
        if len(s):
            out[i, max_len - len(s):] = s
    return out


@dataclass
class FeatureScaler:
    """log1p of magnitudes (sign kept), then standardised with the training cut-off's statistics."""

    mean: np.ndarray
    std: np.ndarray
    features: list[str]  # the columns, in order

    def __post_init__(self):
        self.features = list(self.features)
        if len(self.features) != len(self.mean):
            raise ValueError(f"scaler: {len(self.mean)} statistics for {len(self.features)} features")

    def _log(self, frame: pd.DataFrame) -> np.ndarray:
        missing = [c for c in self.features if c not in frame.columns]
        if missing:
            raise ValueError(f"LTV features: missing column(s) {missing} (the ltv_prior stage writes the prior's)")
        x = frame[self.features].fillna(0.0).to_numpy(dtype=np.float64)
        return np.sign(x) * np.log1p(np.abs(x))

    @classmethod
    def fit(cls, frame: pd.DataFrame, features: list[str]) -> "FeatureScaler":
        x = cls(np.zeros(len(features)), np.ones(len(features)), features)._log(frame)
        std = x.std(axis=0)
        return cls(x.mean(axis=0), np.where(std > 1e-6, std, 1.0), features)  # a constant column stays finite

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        return ((self._log(frame) - self.mean) / self.std).astype(np.float32)

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "features": self.features}

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureScaler":
        return cls(np.asarray(d["mean"]), np.asarray(d["std"]), d["features"])
