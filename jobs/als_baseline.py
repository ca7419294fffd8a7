"""Spark MLlib ALS baseline (implicit feedback), a matrix-factorisation reference for the recommender.

    spark-submit --master local[2] jobs/als_baseline.py --interactions I.parquet --out DIR \
        --rank 64 --reg 0.05 --alpha 20 --iters 10 --seed 42

--interactions: Parquet with user_pos (int), item_idx (int), weight (number of the user's events on the
item). Writes DIR/user_factors and DIR/item_factors (id, features), scored by ltvrec's shared ranking code.
"""

from __future__ import annotations

import argparse

from pyspark.ml.recommendation import ALS
from pyspark.sql import SparkSession


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Spark MLlib implicit ALS baseline")
    ap.add_argument("--interactions", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rank", type=int, required=True, help="factors")
    ap.add_argument("--reg", type=float, required=True, help="L2 regularisation")
    ap.add_argument("--alpha", type=float, required=True, help="confidence of implicit feedback")
    ap.add_argument("--iters", type=int, required=True)
    ap.add_argument("--seed", type=int, required=True)
    args = ap.parse_args(argv)

    spark = SparkSession.builder.appName("ltvrec-als").getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    data = spark.read.parquet(args.interactions)
    als = ALS(userCol="user_pos", itemCol="item_idx", ratingCol="weight", implicitPrefs=True, rank=args.rank,
              regParam=args.reg, alpha=args.alpha, maxIter=args.iters, seed=args.seed, coldStartStrategy="drop")
    model = als.fit(data)
    model.userFactors.write.mode("overwrite").parquet(f"{args.out}/user_factors")
    model.itemFactors.write.mode("overwrite").parquet(f"{args.out}/item_factors")
    spark.stop()


if __name__ == "__main__":
    main()
