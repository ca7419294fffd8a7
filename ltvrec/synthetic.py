"""Synthetic customer events with learnable structure, for tests and the demo.

Users have preferred categories and an activity rate; browsing follows item "successor" chains inside a
category (so a sequence model can beat popularity), views lead to carts and purchases, some purchases are
returned, and some users churn (so past value predicts future value only partly). A little realistic dirt
is added on purpose: exact duplicate rows, unknown items, future timestamps and missing user ids, which
the dbt models must quarantine.

A `regime` shapes the customer base over time, so that an LTV level learned on one window is wrong for the next:
- `steady`: users join over the first three quarters of the span and stay for an exponential lifetime;
- `ageing`: every user joins in the first 15% of the span and buys less and less (activity halves every
  AGEING_HALF_LIFE of the span), as in a cohort that joined early;
- `growing`: ever more users join as time goes on (join times with a density rising linearly);
- `seasonal`: events are thinned outside a yearly peak around SEASON_PEAK_DAY (late November), as in retail.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ltvrec.config import SYNTHETIC_REGIMES

ADJECTIVES = ["vintage", "classic", "modern", "rustic", "bright", "cosy", "elegant", "playful", "minimal", "bold"]
NOUNS = ["mug", "lamp", "candle", "notebook", "cushion", "clock", "vase", "bag", "poster", "frame", "tray", "bowl"]
CATEGORIES = ["kitchen", "home", "stationery", "garden", "party", "toys", "fashion", "decor", "lighting", "gifts"]
AGEING_HALF_LIFE = 0.25  # of the span
SEASON_PEAK_DAY = 330  # day of the year
SEASON_TROUGH_SHARE = 0.25  # events kept at the trough, against all of them at the peak


@dataclass
class Catalogue:
    category: np.ndarray  # category code by item
    by_category: list[np.ndarray]  # item indices of each category, in order (the "successor" chains)
    price: np.ndarray
    popularity: np.ndarray  # Zipf-like

    @classmethod
    def draw(cls, rng: np.random.Generator, n_items: int) -> "Catalogue":
        n_cat = max(1, min(len(CATEGORIES), n_items // 20))
        category = np.arange(n_items) % n_cat
        price = np.round(rng.lognormal(mean=1.5 + 0.15 * category, sigma=0.6), 2)
        popularity = 1.0 / (1.0 + rng.permutation(n_items)) ** 0.8
        return cls(category, [np.flatnonzero(category == c) for c in range(n_cat)], price, popularity)

    def next_item(self, rng: np.random.Generator, item: int, prefs: np.ndarray) -> int:
        """The successor in the item's category (60%), else a popular item of a preferred category."""
        if item >= 0 and rng.random() < 0.6:
            same = self.by_category[self.category[item]]
            return same[(np.searchsorted(same, item) + 1) % len(same)]
        candidates = self.by_category[rng.choice(prefs)]
        weights = self.popularity[candidates] / self.popularity[candidates].sum()
        return int(rng.choice(candidates, p=weights))


def funnel(rng: np.random.Generator) -> list[tuple[str, int]]:
    """(event type, seconds after the view) of one visit: a view, maybe a cart, a purchase, a return."""
    steps = [("view", 0)]
    if rng.random() < 0.35:
        steps.append(("cart", 60))
        if rng.random() < 0.6:
            steps.append(("purchase", 120))
            if rng.random() < 0.05:
                steps.append(("return", 86400 * 7))
    return steps


def generate(
    n_users: int = 2000,
    n_items: int = 300,
    days: int = 365,
    end: datetime = datetime(2026, 6, 30),
    seed: int = 42,
    dirt: bool = True,
    regime: str = "steady",
) -> tuple[pa.Table, pa.Table]:
    """Return (events, items) in the `events` source contract."""
    if regime not in SYNTHETIC_REGIMES:
        raise ValueError(f"synthetic regime {regime!r}: expected one of {', '.join(SYNTHETIC_REGIMES)}")
    rng = np.random.default_rng(seed)
    catalogue = Catalogue.draw(rng, n_items)
    span_s = days * 86400
    rate = rng.gamma(shape=1.2, scale=0.25, size=n_users)  # interactions per day while active
    first, lifetime = join_and_lifetime(rng, regime, n_users, span_s)
    start = end - timedelta(days=days)
    cols: dict[str, list] = {k: [] for k in ("user_id", "item_id", "event_type", "event_ts", "quantity", "unit_price")}
    for u in range(n_users):
        active_s = min(lifetime[u], span_s - first[u])
        n = max(1, min(400, rng.poisson(rate[u] * exposure(regime, active_s, span_s) / 86400) + 1))
        ts = event_times(rng, regime, first[u], active_s, n, span_s, start)
        prefs = rng.choice(len(catalogue.by_category), size=min(2, len(catalogue.by_category)), replace=False)
        item = -1
        for t in ts:
            item = catalogue.next_item(rng, item, prefs)
            qty = int(rng.integers(1, 4))
            for etype, delay in funnel(rng):
                when = end - timedelta(days=days) + timedelta(seconds=float(t + delay))
                if when > end:
                    break
                for key, value in zip(cols, (f"u{u:06d}", f"i{item:05d}", etype, when, float(qty),
                                             float(catalogue.price[item]))):
                    cols[key].append(value)
    if dirt:
        _add_dirt(cols, rng, end)
    return _tables(cols, catalogue)


def join_and_lifetime(rng: np.random.Generator, regime: str, n_users: int, span_s: float
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Each user's first moment and active lifetime, in seconds from the start of the span."""
    if regime == "ageing":
        return rng.uniform(0, 0.15, size=n_users) * span_s, np.full(n_users, span_s)
    if regime == "growing":
        return np.sqrt(rng.uniform(0, 1, size=n_users)) * 0.95 * span_s, rng.exponential(0.6, n_users) * span_s
    return rng.uniform(0, 0.75, size=n_users) * span_s, rng.exponential(scale=0.6, size=n_users) * span_s


def ageing_time_constant(span_s: float) -> float:
    """tau of the ageing regime's activity exp(-t / tau), in seconds: it halves every AGEING_HALF_LIFE of the span."""
    return AGEING_HALF_LIFE * span_s / np.log(2)


def exposure(regime: str, active_s: float, span_s: float) -> float:
    """Seconds of full activity a lifetime of `active_s` amounts to: its activity decays in the ageing regime."""
    if regime != "ageing":
        return active_s
    tau = ageing_time_constant(span_s)
    return tau * (1 - np.exp(-active_s / tau))


def event_times(rng: np.random.Generator, regime: str, first: float, active_s: float, n: int, span_s: float,
                start: datetime) -> np.ndarray:
    """`n` sorted event times (seconds from the start of the span) in [first, first + active_s), shaped by the
    regime; the seasonal regime keeps fewer of them (at least one)."""
    if regime == "ageing":  # density exp(-t / tau) from the user's first moment: inverse CDF of a truncated exponential
        tau = ageing_time_constant(span_s)
        u = rng.uniform(0, 1, size=n)
        ts = first - tau * np.log(1 - u * (1 - np.exp(-active_s / tau)))
    else:
        ts = rng.uniform(first, first + active_s, size=n)
    if regime == "seasonal":
        day = (start.timetuple().tm_yday + ts / 86400) % 365.25
        keep = SEASON_TROUGH_SHARE + (1 - SEASON_TROUGH_SHARE) * (1 + np.cos(2 * np.pi * (day - SEASON_PEAK_DAY)
                                                                             / 365.25)) / 2
        kept = ts[rng.uniform(0, 1, size=n) < keep]
        ts = kept if len(kept) else ts[:1]
    return np.sort(ts)


def _tables(cols: dict[str, list], catalogue: Catalogue) -> tuple[pa.Table, pa.Table]:
    types = {"user_id": pa.string(), "item_id": pa.string(), "event_type": pa.string(),
             "event_ts": pa.timestamp("us"), "quantity": pa.float64(), "unit_price": pa.float64()}
    events = pa.table({key: pa.array(cols[key], kind) for key, kind in types.items()})
    n_items = len(catalogue.category)
    items = pa.table({
        "item_id": [f"i{i:05d}" for i in range(n_items)],
        "title": [f"{ADJECTIVES[i % 10]} {NOUNS[(i // 10) % 12]} no. {i}" for i in range(n_items)],
        "category": [CATEGORIES[c] for c in catalogue.category],
        "price": catalogue.price.astype(float),
    })
    return events, items


def _add_dirt(cols: dict[str, list], rng: np.random.Generator, end: datetime) -> None:
    n = len(cols["user_id"])
    for i in rng.choice(n, size=max(1, n // 100), replace=False):  # exact duplicates
        for k in cols:
            cols[k].append(cols[k][i])
    for i, (k, bad) in enumerate(
        [("item_id", "i99999"), ("event_ts", end + timedelta(days=400)), ("user_id", None)] * max(1, n // 1000)
    ):
        j = int(rng.integers(n))
        for c in cols:
            cols[c].append(bad if c == k else cols[c][j])


def write(out_dir: Path, **kwargs) -> tuple[Path, Path]:
    """Generate and write `events.parquet` and `items.parquet` into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    events, items = generate(**kwargs)
    ev_path, it_path = out_dir / "events.parquet", out_dir / "items.parquet"
    pq.write_table(events, ev_path)
    pq.write_table(items, it_path)
    return ev_path, it_path
