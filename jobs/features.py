"""Spark feature job: cleaned marts (Parquet) -> model features (Parquet).

    spark-submit --master local[2] jobs/features.py --events E.parquet --items I.parquet --out DIR \
        --as-of 2011-12-09 --horizon-days 90 --holdout-days 14 --ltv-train-windows 1 \
        --event-types "$(python -c 'from ltvrec.config import EVENT_TYPES; print(*EVENT_TYPES, sep=",")')"

Writes, under --out:
  items/          item_idx (1..n; 0 is padding), item_id, title, category, price, n_events, n_users
  sequences/      per user, time-ordered arrays: items, types, ts (epoch s); runs of the same item collapsed
                  to their last (strongest) event, e.g. view -> cart -> purchase becomes one purchase token
  ltv_features/   per customer and cut-off (train = D-2H and, with --ltv-train-windows, train_1 = D-3H, ...;
                  eval = D-H; score = D; ref_<name> = that cut-off - 365 days): RFM features computed from
                  events strictly before the cut-off (btyd_*: the BG/NBD + Gamma-Gamma summary of models/btyd.py),
                  and the label: net spend in [cut-off, cut-off + H)
  split.json      the cut-off timestamps of the temporal split, and the event types in code order (--event-types:
                  a type's code in `types` is its position + 1; 0 is padding)
D is the end of the --as-of day (default: the day of the last event). Nothing at or after a cut-off reaches
that cut-off's features.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timedelta
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

DAY = 86400.0


def build_items(events: DataFrame, items: DataFrame) -> DataFrame:
    stats = events.groupBy("item_id").agg(F.count("*").alias("n_events"), F.countDistinct("user_id").alias("n_users"))
    return (
        items.select("item_id", "title", "category", "price", "in_stock")
        .join(stats, "item_id", "left")
        .fillna({"n_events": 0, "n_users": 0, "in_stock": True})
        .withColumn("item_idx", F.row_number().over(Window.orderBy("item_id")))
        .select("item_idx", "item_id", "title", "category", "price", "in_stock", "n_events", "n_users")
    )


def build_sequences(events: DataFrame, items: DataFrame, event_types: list[str]) -> DataFrame:
    type_code = F.create_map(*[x for i, name in enumerate(event_types) for x in (F.lit(name), F.lit(i + 1))])
    by_time = Window.partitionBy("user_id").orderBy("event_ts", "event_id")
    ev = (
        events.join(items.select("item_id", "item_idx"), "item_id")
        .withColumn("type", type_code[F.col("event_type")])
        .withColumn("ts", F.col("event_ts").cast("long"))
        .withColumn("next_item", F.lead("item_idx").over(by_time))
        .where(F.col("next_item").isNull() | (F.col("next_item") != F.col("item_idx")))
    )
    ordered = F.array_sort(F.collect_list(F.struct("ts", "event_id", "item_idx", "type")))
    return (
        ev.groupBy("user_id")
        .agg(ordered.alias("ev"))
        .select(
            "user_id",
            F.col("ev.item_idx").alias("items"),
            F.col("ev.type").alias("types"),
            F.col("ev.ts").alias("ts"),
            F.size("ev").alias("n_events"),
        )
    )


def build_btyd_summary(past: DataFrame, cutoff: datetime) -> DataFrame:
    """Buy-Till-You-Die summary (models/btyd.py) of events before the cut-off, in calendar days of purchase.

    A purchase day is a (UTC) day with at least one purchase; its net spend is the sum of `amount` that day
    (returns that day included, as in net_spend; returns on days without a purchase do not enter monetary value).
    btyd_frequency = purchase days - 1, btyd_recency = last - first purchase day, btyd_T = cut-off - first
    purchase day (days), btyd_monetary_value = mean net spend of the repeat purchase days (0 without any).
    """
    day_ts = F.col("day").cast("timestamp").cast("long")
    days = (
        past.groupBy("user_id", F.to_date("event_ts").alias("day"))
        .agg(F.sum("amount").alias("day_spend"), F.max((F.col("event_type") == "purchase").cast("int")).alias("buy"))
        .where(F.col("buy") == 1)
    )
    per_user = days.groupBy("user_id").agg(
        (F.count("*") - 1).alias("btyd_frequency"),
        ((F.max(day_ts) - F.min(day_ts)) / DAY).alias("btyd_recency"),
        ((F.lit(cutoff).cast("timestamp").cast("long") - F.min(day_ts)) / DAY).alias("btyd_T"),
        (F.sum("day_spend") - F.min_by("day_spend", "day")).alias("repeat_spend"),
    )
    return per_user.select(
        "user_id",
        "btyd_frequency",
        "btyd_recency",
        "btyd_T",
        F.when(F.col("btyd_frequency") > 0, F.col("repeat_spend") / F.col("btyd_frequency"))
        .otherwise(0.0)
        .alias("btyd_monetary_value"),
    )


def ltv_train_cutoffs(end: datetime, horizon_days: int, windows: int, first_event: datetime) -> dict[str, str]:
    """LTV training cut-offs D-2H, D-3H, ... (names train, train_1, ...): every label window ends by D-H, so
    nothing of the evaluation window leaks; earlier windows add seasons (a year back holds the same season as
    the evaluation window when 4H >= 365 days). A cut-off needs 30 days of history before it to be kept."""
    cutoffs = {}
    for k in range(max(1, windows)):
        cutoff = end - timedelta(days=(2 + k) * horizon_days)
        if k == 0 or cutoff - first_event >= timedelta(days=30):
            cutoffs["train" if k == 0 else f"train_{k}"] = cutoff.isoformat()
    return cutoffs


def ltv_backtest_cutoffs(end: datetime, horizon_days: int, origins: int, first_event: datetime) -> dict[str, str]:
    """The LTV backtest's origins D-3H, D-4H, ... (names backtest_1, backtest_2, ...; models/ltv_backtest.py fits at
    backtest_k and checks at backtest_{k-1}, backtest_0 being the training cut-off D-2H): every label window ends by
    D-2H, so nothing the backtest decides has seen the evaluation window. Each needs 30 days of history before it."""
    cutoffs = {}
    for k in range(1, origins + 1):
        cutoff = end - timedelta(days=(2 + k) * horizon_days)
        if cutoff - first_event >= timedelta(days=30):
            cutoffs[f"backtest_{k}"] = cutoff.isoformat()
    return cutoffs


def reference_cutoffs(cutoffs: dict[str, str], horizon_days: int, first_event: datetime) -> dict[str, str]:
    """A year before each cut-off (names ref_<cut-off>), for models/ltv_prior.py's seasonal factor: how far the
    BG/NBD + Gamma-Gamma level was from actual spend in the same season a year earlier. Only with H <= 365 days
    (the reference label window then ends before its cut-off) and H days of history before the reference."""
    if horizon_days > 365:
        return {}
    refs = {}
    for name, iso in cutoffs.items():
        ref = datetime.fromisoformat(iso) - timedelta(days=365)
        if ref - first_event >= timedelta(days=horizon_days):
            refs[f"ref_{name}"] = ref.isoformat()
    return refs


def build_ltv_features(events: DataFrame, cutoff: datetime, horizon_days: int, name: str) -> DataFrame:
    c = F.lit(cutoff).cast("timestamp")
    end = F.lit(cutoff + timedelta(days=horizon_days)).cast("timestamp")
    days_before = (c.cast("long") - F.col("event_ts").cast("long")) / DAY
    past = events.where(F.col("event_ts") < c)
    is_purchase = F.col("event_type") == "purchase"
    gross = F.when(is_purchase, F.col("amount")).otherwise(0.0)
    returned = F.when(F.col("event_type") == "return", -F.col("amount")).otherwise(0.0)
    feats = past.groupBy("user_id").agg(
        F.sum(F.when(is_purchase, 1).otherwise(0)).alias("n_purchases"),
        F.countDistinct(F.when(is_purchase, F.to_date("event_ts"))).alias("n_purchase_days"),
        F.sum("amount").alias("net_spend"),
        F.sum(gross).alias("gross_spend"),
        F.sum(returned).alias("returned_spend"),
        F.min(F.when(is_purchase, days_before)).alias("recency_days"),
        F.max(days_before).alias("tenure_days"),
        F.count("*").alias("n_events"),
        F.countDistinct("item_id").alias("n_items"),
        F.sum(F.when(days_before <= 30, F.col("amount")).otherwise(0.0)).alias("spend_30d"),
        F.sum(F.when(days_before <= 90, F.col("amount")).otherwise(0.0)).alias("spend_90d"),
        F.sum(F.when(days_before <= horizon_days, F.col("amount")).otherwise(0.0)).alias("spend_past_h"),
        F.sum(F.when(days_before <= 365, F.col("amount")).otherwise(0.0)).alias("spend_365d"),
        # the same season a year back: [c - 365d, c - 365d + H), which ends before c when H <= 365
        F.sum(F.when((days_before <= 365) & (days_before > 365 - horizon_days), F.col("amount")).otherwise(0.0))
        .alias("spend_last_year_h"),
    ).where(F.col("n_purchases") > 0)  # customers: at least one purchase before the cut-off
    btyd = build_btyd_summary(past, cutoff)
    label = (
        events.where((F.col("event_ts") >= c) & (F.col("event_ts") < end))
        .groupBy("user_id")
        .agg(F.sum("amount").alias("future_spend"), F.max(is_purchase.cast("int")).alias("future_active"))
    )
    return (
        feats.join(label, "user_id", "left")
        .join(btyd, "user_id", "left")
        .withColumn("label_value", F.greatest(F.coalesce("future_spend", F.lit(0.0)), F.lit(0.0)))
        .withColumn("label_active", F.coalesce("future_active", F.lit(0)))
        .withColumn("avg_order_value", F.col("gross_spend") / F.greatest("n_purchase_days", F.lit(1)))
        .withColumn("returns_share", F.col("returned_spend") / F.greatest("gross_spend", F.lit(1e-9)))
        .withColumn("cutoff", F.lit(name))
        .withColumn("cutoff_ts", c)
        .drop("future_spend", "future_active")
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", required=True)
    ap.add_argument("--items", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--as-of", default=None, help="YYYY-MM-DD; default: the day of the last event")
    ap.add_argument("--horizon-days", type=int, required=True)
    ap.add_argument("--holdout-days", type=int, required=True)
    ap.add_argument("--ltv-train-windows", type=int, required=True,
                    help="LTV training cut-offs D-2H, D-3H, ... (each labelled by the H days after it)")
    ap.add_argument("--ltv-backtest-origins", type=int, default=0,
                    help="LTV backtest origins D-3H, D-4H, ... (each checked at the next one, the last at D-2H)")
    ap.add_argument("--event-types", required=True, help="comma-separated; a type's code is its position + 1")
    args = ap.parse_args(argv)

    spark = SparkSession.builder.appName("ltvrec-features").config("spark.sql.session.timeZone", "UTC").getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    out = Path(args.out)
    events = spark.read.parquet(args.events).withColumn("event_ts", F.col("event_ts").cast("timestamp")).cache()
    items_in = spark.read.parquet(args.items)

    first, last = events.agg(F.min("event_ts"), F.max("event_ts")).first()
    if last is None:
        raise SystemExit("features: no clean events to build features from")
    as_of = datetime.fromisoformat(args.as_of) if args.as_of else datetime(last.year, last.month, last.day)
    end = as_of + timedelta(days=1)
    cutoffs = {**ltv_train_cutoffs(end, args.horizon_days, args.ltv_train_windows, first),
               **ltv_backtest_cutoffs(end, args.horizon_days, args.ltv_backtest_origins, first),
               "eval": (end - timedelta(days=args.horizon_days)).isoformat(), "score": end.isoformat()}
    split = {
        "as_of": as_of.date().isoformat(),
        "end": end.isoformat(),
        "test_start": (end - timedelta(days=args.holdout_days)).isoformat(),
        "valid_start": (end - timedelta(days=2 * args.holdout_days)).isoformat(),
        "ltv_cutoffs": {**cutoffs, **reference_cutoffs(cutoffs, args.horizon_days, first)},
        "horizon_days": args.horizon_days,
        "holdout_days": args.holdout_days,
        "event_types": args.event_types.split(","),
    }
    events = events.where(F.col("event_ts") < F.lit(end).cast("timestamp"))

    items = build_items(events, items_in).cache()
    items.write.mode("overwrite").parquet(str(out / "items"))
    build_sequences(events, items, split["event_types"]).write.mode("overwrite").parquet(str(out / "sequences"))
    ltv = None
    for name, ts in split["ltv_cutoffs"].items():
        part = build_ltv_features(events, datetime.fromisoformat(ts), args.horizon_days, name)
        ltv = part if ltv is None else ltv.unionByName(part)
    ltv.write.mode("overwrite").parquet(str(out / "ltv_features"))
    (out / "split.json").write_text(json.dumps(split, indent=2))
    spark.stop()


if __name__ == "__main__":
    main()
