"""Synthetic customer events with learnable structure, for tests and the demo.

Users have preferred categories and an activity rate; browsing follows item "successor" chains inside a
category (so a sequence model can beat popularity), views lead to carts and purchases, some purchases are
returned, and some users churn (so past value predicts future value only partly). A little realistic dirt
is added on purpose: exact duplicate rows, unknown items, future timestamps and missing user ids, which
the dbt models must quarantine.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ADJECTIVES = ["vintage", "classic", "modern", "rustic", "bright", "cosy", "elegant", "playful", "minimal", "bold"]
NOUNS = ["mug", "lamp", "candle", "notebook", "cushion", "clock", "vase", "bag", "poster", "frame", "tray", "bowl"]
CATEGORIES = ["kitchen", "home", "stationery", "garden", "party", "toys", "fashion", "decor", "lighting", "gifts"]


def generate(
    n_users: int = 2000,
    n_items: int = 300,
    days: int = 365,
    end: datetime = datetime(2026, 6, 30),
    seed: int = 42,
    dirt: bool = True,
) -> tuple[pa.Table, pa.Table]:
    """Return (events, items) in the `events` source contract."""
    rng = np.random.default_rng(seed)
    n_cat = max(1, min(len(CATEGORIES), n_items // 20))
    item_cat = np.arange(n_items) % n_cat
    cat_items = [np.flatnonzero(item_cat == c) for c in range(n_cat)]
    price = np.round(rng.lognormal(mean=1.5 + 0.15 * item_cat, sigma=0.6), 2)
    # Zipf-like popularity inside each category.
    pop = 1.0 / (1.0 + rng.permutation(n_items)) ** 0.8

    start = end - timedelta(days=days)
    span_s = days * 86400
    rate = rng.gamma(shape=1.2, scale=0.25, size=n_users)  # interactions per day while active
    first = rng.uniform(0, 0.75, size=n_users) * span_s
    lifetime = rng.exponential(scale=0.6, size=n_users) * span_s

    cols: dict[str, list] = {k: [] for k in ("user_id", "item_id", "event_type", "event_ts", "quantity", "unit_price")}
    for u in range(n_users):
        active_s = min(lifetime[u], span_s - first[u])
        n = max(1, min(400, rng.poisson(rate[u] * active_s / 86400) + 1))
        ts = np.sort(rng.uniform(first[u], first[u] + active_s, size=n))
        prefs = rng.choice(n_cat, size=min(2, n_cat), replace=False)
        item = -1
        for t in ts:
            if item >= 0 and rng.random() < 0.6:
                same = cat_items[item_cat[item]]
                item = same[(np.searchsorted(same, item) + 1) % len(same)]
            else:
                cands = cat_items[rng.choice(prefs)]
                w = pop[cands] / pop[cands].sum()
                item = int(rng.choice(cands, p=w))
            qty = int(rng.integers(1, 4))
            steps = [("view", 0)]
            if rng.random() < 0.35:
                steps.append(("cart", 60))
                if rng.random() < 0.6:
                    steps.append(("purchase", 120))
                    if rng.random() < 0.05:
                        steps.append(("return", 86400 * 7))
            for etype, delay in steps:
                when = start + timedelta(seconds=float(t + delay))
                if when > end:
                    break
                cols["user_id"].append(f"u{u:06d}")
                cols["item_id"].append(f"i{item:05d}")
                cols["event_type"].append(etype)
                cols["event_ts"].append(when)
                cols["quantity"].append(float(qty))
                cols["unit_price"].append(float(price[item]))

    if dirt:
        _add_dirt(cols, rng, end)
    events = pa.table(
        {
            "user_id": pa.array(cols["user_id"], pa.string()),
            "item_id": pa.array(cols["item_id"], pa.string()),
            "event_type": pa.array(cols["event_type"], pa.string()),
            "event_ts": pa.array(cols["event_ts"], pa.timestamp("us")),
            "quantity": pa.array(cols["quantity"], pa.float64()),
            "unit_price": pa.array(cols["unit_price"], pa.float64()),
        }
    )
    items = pa.table(
        {
            "item_id": [f"i{i:05d}" for i in range(n_items)],
            "title": [f"{ADJECTIVES[i % 10]} {NOUNS[(i // 10) % 12]} no. {i}" for i in range(n_items)],
            "category": [CATEGORIES[c] for c in item_cat],
            "price": price.astype(float),
        }
    )
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
