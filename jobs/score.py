"""Batch scoring inside Spark: the scale-out path of the `score` stage, for when users outgrow one machine.

    spark-submit --master local[2] jobs/score.py --features DIR --checkpoint final.pt --out DIR \
        --top-n 10 --rank-by relevance|expected_value --users-per-batch 2048 [--max-per-category C]

The checkpoint is broadcast once (the driver never loads it); each Python worker builds one `models.score.Scorer` from it and scores its
user partitions with `mapInArrow`, the same function the local path runs. The project's packages must be
importable by the workers (installed in their environment, or shipped with `--py-files`).
Writes DIR/recommendations and DIR/ltv_estimates (Parquet folders with the local path's columns).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow as pa
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from models.data import PRIOR_FILE

OUT_SCHEMA = pa.schema([("kind", pa.string()), ("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()),
                        ("score", pa.float64()), ("p_active", pa.float64()), ("expected_value", pa.float64())])
_SCORERS: dict = {}  # one Scorer per Python worker process
NOT_FEATURES = {"user_id", "cutoff", "cutoff_ts", "label_value", "label_active"}


def _scorer(checkpoint: bytes, catalogue: dict, top_n: int, rank_by: str, max_per_category: int | None):
    key = (id(checkpoint), top_n, rank_by, max_per_category)
    if key not in _SCORERS:
        import io

        import torch

        from models.checkpoint import LoadedModel
        from models.score import Scorer

        torch.set_num_threads(1)  # Spark runs one task per core
        loaded = LoadedModel(torch.load(io.BytesIO(checkpoint), map_location="cpu", weights_only=False))
        _SCORERS[key] = Scorer(loaded, catalogue["item_ids"], top_n, rank_by, torch.device("cpu"),
                               recommendable_ids=catalogue["recommendable"], item_categories=catalogue["categories"],
                               max_per_category=max_per_category)
    return _SCORERS[key]


def score_partitions(checkpoint, catalogue, top_n: int, rank_by: str, max_per_category: int | None = None):
    """mapInArrow function: batches of (user_id, items, types, ts, LTV features...) -> recommendation and LTV rows."""

    def run(batches):
        import numpy as np

        scorer = _scorer(checkpoint.value, catalogue.value, top_n, rank_by, max_per_category)
        for batch in batches:
            if batch.num_rows == 0:
                continue
            users = batch.column("user_id").to_numpy(zero_copy_only=False)
            items = [np.asarray(x, dtype=np.int64) for x in batch.column("items").to_pylist()]
            types = [np.asarray(x, dtype=np.int64) for x in batch.column("types").to_pylist()]
            ts = [np.asarray(x, dtype=np.int64) for x in batch.column("ts").to_pylist()]
            features = pa.Table.from_batches([batch.select(catalogue.value["ltv_columns"])]).to_pandas()
            recs, ltv = scorer.score(users, items, types, features, ts)
            n, m = recs.num_rows, ltv.num_rows
            yield pa.RecordBatch.from_arrays([
                pa.array(["rec"] * n, pa.string()), recs.column("user_id"), recs.column("rank"), recs.column("item_id"),
                recs.column("score"), pa.nulls(n, pa.float64()), pa.nulls(n, pa.float64())], schema=OUT_SCHEMA)
            yield pa.RecordBatch.from_arrays([
                pa.array(["ltv"] * m, pa.string()), ltv.column("user_id"), pa.nulls(m, pa.int32()), pa.nulls(m, pa.string()),
                pa.nulls(m, pa.float64()), ltv.column("p_active"), ltv.column("expected_value")], schema=OUT_SCHEMA)

    return run


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="ltvrec batch scoring in Spark")
    ap.add_argument("--features", required=True, help="the features job's output folder")
    ap.add_argument("--checkpoint", required=True, help="model checkpoint (final.pt)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--top-n", type=int, required=True)
    ap.add_argument("--rank-by", required=True, choices=["relevance", "expected_value"])
    ap.add_argument("--users-per-batch", type=int, required=True, help="users per Arrow batch of mapInArrow")
    ap.add_argument("--max-per-category", type=int, default=None, help="no cap when not given")
    args = ap.parse_args(argv)

    spark = (SparkSession.builder.appName("ltvrec-score")
             .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(args.users_per_batch)).getOrCreate())
    spark.sparkContext.setLogLevel("WARN")
    users, ltv_columns = users_with_features(spark, args.features)
    catalogue = spark.sparkContext.broadcast(read_catalogue(spark, args.features) | {"ltv_columns": ltv_columns})
    checkpoint = spark.sparkContext.broadcast(Path(args.checkpoint).read_bytes())
    partitions = max(spark.sparkContext.defaultParallelism, 1)
    scored = users.repartition(partitions, "user_id").mapInArrow(
        score_partitions(checkpoint, catalogue, args.top_n, args.rank_by, args.max_per_category),
        "kind string, user_id string, rank int, item_id string, score double, p_active double, expected_value double")
    scored.write.mode("overwrite").partitionBy("kind").parquet(f"{args.out}/_scored")
    done = spark.read.parquet(f"{args.out}/_scored")
    done.where("kind = 'rec'").select("user_id", "rank", "item_id", "score").write.mode("overwrite").parquet(
        f"{args.out}/recommendations")
    done.where("kind = 'ltv'").select("user_id", "p_active", "expected_value").write.mode("overwrite").parquet(
        f"{args.out}/ltv_estimates")
    spark.stop()


def read_catalogue(spark: SparkSession, features: str) -> dict:
    """Item ids by item index, their categories, and the recommendable (in stock) ones."""
    items = spark.read.parquet(f"{features}/items").select("item_idx", "item_id", "category", "in_stock")
    rows = items.orderBy("item_idx").collect()
    if [r.item_idx for r in rows] != list(range(1, len(rows) + 1)):
        raise SystemExit(f"{features}/items: item_idx must be 1..n without gaps")
    return {"item_ids": [r.item_id for r in rows], "categories": [r.category for r in rows],
            "recommendable": [r.item_id for r in rows if r.in_stock is not False]}


def users_with_features(spark: SparkSession, features: str):
    """(every user's sequence joined with its LTV features at the `score` cut-off, the feature columns). Features are
    NULL for users who are not customers; the scorer reads the columns its checkpoint's scaler names."""
    sequences = spark.read.parquet(f"{features}/sequences").select("user_id", "items", "types", "ts")
    ltv = spark.read.parquet(f"{features}/ltv_features").where(F.col("cutoff") == "score")
    if Path(features, PRIOR_FILE).exists():  # the prior's columns (models/ltv_prior.py)
        prior = spark.read.parquet(f"{features}/{PRIOR_FILE}").where(F.col("cutoff") == "score").drop("cutoff")
        ltv = ltv.join(prior, "user_id", "left")
    columns = [c for c, kind in ltv.dtypes if c not in NOT_FEATURES and kind in ("double", "float", "int", "bigint")]
    ltv = ltv.select("user_id", *[F.coalesce(F.col(c).cast("double"), F.lit(0.0)).alias(c) for c in columns])
    return sequences.join(ltv, "user_id", "left"), columns


if __name__ == "__main__":
    main()
