"""Continual training: whether a run continues from the @champion or trains from scratch, and what it checks.

A continued run starts from the champion's weights and learns, for a few epochs, from the users with events since
the champion's data end and a replay sample of the others (models/train.py). `auto` continues unless one of these
says retrain: the share of new events on items the champion never saw, the shift of the LTV features (population
stability index against the champion's training customers), a drop of the champion's realised NDCG since its first
measured run date (serving.model_performance), or too many continued runs since the last full retrain.
The PSI counts beyond what two samples of one distribution may show by chance (`chance_psi`).

The champion's checkpoint carries what the checks need (`lineage`, written by the trainer): the data end its weights
learned up to, the continued runs behind it and the profile of its training customers' LTV features.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from statistics import NormalDist

import numpy as np
import pandas as pd

PSI_BINS = 10
PSI_FLOOR = 1e-4  # an empty bin counts as this share: the index stays finite
ARCHITECTURE = ("d_model", "n_heads", "n_layers", "max_len", "time_gaps", "ltv_user_dim")  # ModelConfig's


def feature_profile(frame: pd.DataFrame, features: list[str]) -> dict[str, dict]:
    """Each feature's inner decile edges, the share of rows in each bin and the number of rows."""
    profile = {}
    for name in features:
        values = frame[name].to_numpy(dtype=float)
        edges = np.unique(np.quantile(values, np.linspace(0, 1, PSI_BINS + 1)[1:-1])) if len(values) else np.array([])
        profile[name] = {"edges": edges.tolist(), "shares": bin_shares(values, edges).tolist(), "rows": len(values)}
    return profile


def bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return counts / max(1, counts.sum())


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two binnings of one feature: sum of (actual - expected) ln(actual / expected)."""
    e, a = np.maximum(np.asarray(expected, dtype=float), PSI_FLOOR), np.maximum(np.asarray(actual, dtype=float),
                                                                                PSI_FLOOR)
    return float(((a - e) * np.log(a / e)).sum())


def chance_psi(bins: int, rows: int, other_rows: int, features: int, confidence: float = 0.99) -> float:
    """The PSI that two samples of one distribution stay under at `confidence`, for all of `features` features at
    once (Bonferroni): PSI is a chi-square divergence, so about chi2(bins - 1) x (1/rows + 1/other_rows); the
    quantile by Wilson and Hilferty's approximation. A few hundred customers alone often show the usual 0.1."""
    df = max(bins - 1, 1)
    z = NormalDist().inv_cdf(1 - (1 - confidence) / max(features, 1))
    quantile = df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3
    return quantile * (1 / max(rows, 1) + 1 / max(other_rows, 1))


def smoothed(shares: np.ndarray, rows: int) -> np.ndarray:
    """Bin shares with half a row added to every bin: an empty bin of a small sample is not an infinite shift."""
    return (np.asarray(shares) * rows + 0.5) / (rows + 0.5 * len(shares))


def largest_shift(profile: dict, frame: pd.DataFrame) -> tuple[str | None, float]:
    """(feature, PSI beyond chance_psi) of the profiled feature whose distribution in `frame` moved most."""
    found = []
    for name, p in profile.items():
        if name not in frame.columns or not len(frame):
            continue
        now = bin_shares(frame[name].to_numpy(dtype=float), np.asarray(p["edges"]))
        shift = psi(smoothed(p["shares"], p["rows"]), smoothed(now, len(frame)))
        found.append((name, shift - chance_psi(len(now), p["rows"], len(frame), len(profile))))
    return max(found, key=lambda pair: pair[1], default=(None, 0.0))


def new_item_share(items: list[np.ndarray], ts: list[np.ndarray], item_ids: np.ndarray, known: set[str],
                   since: int) -> tuple[int, float]:
    """(events at or after `since`, the share of them on items not in `known`): `items` holds each user's item
    indices (1-based into item_ids), `ts` their epoch seconds."""
    recent = np.concatenate([its[t >= since] for its, t in zip(items, ts)] or [np.array([], dtype=np.int64)])
    if len(recent) == 0:
        return 0, 0.0
    unknown = np.array([item not in known for item in item_ids], dtype=bool)
    return len(recent), float(unknown[recent - 1].mean())


def recent_and_replayed(cut_at_since: np.ndarray, ends: np.ndarray, replay_share: float, seed: int
                        ) -> tuple[np.ndarray, int, int]:
    """Which users a continued run learns from: those with an event between the champion's data end and their
    `ends` (cut_at_since < ends: fewer of their events lie before the data end), and a random `replay_share` of the
    others with a history. Returns (mask, recent users, replayed users)."""
    recent = cut_at_since < ends
    earlier = np.flatnonzero(~recent & (ends > 1))
    replayed = np.random.default_rng(seed).choice(earlier, size=int(round(replay_share * len(earlier))),
                                                  replace=False)
    keep = recent.copy()
    keep[replayed] = True
    return keep, int(recent.sum()), len(replayed)


@dataclass
class Thresholds:
    new_item_share: float
    feature_psi: float
    realised_drop: float
    max_continued_runs: int


@dataclass
class Decision:
    mode: str  # scratch | continue
    reasons: list[str]
    checks: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def realised_drop(ndcg_by_date: list[float]) -> float | None:
    """How far the latest realised NDCG fell below the first (a share of the first); None before two."""
    if len(ndcg_by_date) < 2 or ndcg_by_date[0] <= 0:
        return None
    return 1 - ndcg_by_date[-1] / ndcg_by_date[0]


def decide(requested: str, lineage: dict | None, checks: dict, limits: Thresholds) -> Decision:
    """scratch or continue for a run that asked for `requested` (scratch, continue or auto); `lineage`: the
    champion's (None: no champion, or one from before lineages); `checks`: what the drift checks measured (keys as
    below; a missing one did not apply)."""
    if requested == "scratch":
        return Decision("scratch", ["training=scratch"], checks)
    if lineage is None:
        return Decision("scratch", ["no @champion with a recorded data end to continue from"], checks)
    if checks.get("architecture_changes"):
        return Decision("scratch", [f"the model's shape changed ({checks['architecture_changes']}): the champion's "
                                    "weights do not fit"], checks)
    if checks.get("champion_saw_the_test_window"):
        return Decision("scratch", ["the champion learned from events of this run's test window (a backfill of an "
                                    "earlier date): continuing from it would not be judged fairly"], checks)
    if requested == "continue":
        return Decision("continue", ["training=continue"], checks)
    retrain = []
    if checks.get("events_since", 0) == 0:
        retrain.append("no event since the champion's data end: nothing new to continue on")
    if checks.get("new_item_share", 0.0) > limits.new_item_share:
        retrain.append(f"{checks['new_item_share']:.1%} of the events since the champion's data end are on items it "
                       f"never saw (> {limits.new_item_share:.0%})")
    if checks.get("feature_psi_beyond_chance", 0.0) > limits.feature_psi:
        retrain.append(f"the LTV feature {checks['shifted_feature']} moved (PSI beyond chance "
                       f"{checks['feature_psi_beyond_chance']:.3f} > {limits.feature_psi:g})")
    if (checks.get("realised_drop") or 0.0) > limits.realised_drop:
        retrain.append(f"the champion's realised NDCG fell {checks['realised_drop']:.0%} since its first measured "
                       f"date (> {limits.realised_drop:.0%})")
    if lineage.get("continued_runs", 0) >= limits.max_continued_runs:
        retrain.append(f"{lineage['continued_runs']} continued runs since the last full retrain "
                       f"(max {limits.max_continued_runs})")
    if retrain:
        return Decision("scratch", retrain, checks)
    return Decision("continue", ["no drift check asks for a full retrain"], checks)


def architecture_changes(champion_config: dict, wanted: dict) -> str:
    """Where the champion's model (its ModelConfig) and the one this run asks for (`wanted`: the ARCHITECTURE keys
    and item_text) differ, as 'knob a -> b' ('' when they do not)."""
    champion = {k: champion_config.get(k) for k in ARCHITECTURE} | {"item_text": bool(champion_config.get("text_dim"))}
    return ", ".join(f"{k} {champion[k]} -> {wanted.get(k)}" for k in champion if champion[k] != wanted.get(k))
