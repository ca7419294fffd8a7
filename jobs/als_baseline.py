"""Spark MLlib ALS baseline (implicit feedback), a matrix-factorisation reference for the recommender, tuned on the
validation window as the recommender is.

    spark-submit --master local[2] jobs/als_baseline.py --interactions I.parquet --out DIR --n-items N --seed 42 \
        [--rank 64 --reg 0.05 --alpha 20 --iters 10] [--tune-interactions T.parquet --valid-targets V.parquet]

--interactions: Parquet with user_pos (int), item_idx (int), weight (number of the user's events on the item),
every user's history before the test window. Writes DIR/user_factors and DIR/item_factors (id, features), scored by
ltvrec's shared ranking code.

With --tune-interactions (the histories before the validation window, same columns) and --valid-targets (user_pos,
item_idx: the items new to each user in the validation window), rank, reg and alpha are first tuned: one coordinate
pass over TUNING_GRID from the given values (alpha, then reg, then rank), each candidate fitted on the tune histories
and scored by full-ranking NDCG@10 on the validation targets (seen items excluded, the catalogue's N - 1 items
ranked), as the recommender's validation is. The best is refitted on --interactions; DIR/tuning.json records every
trial and the choice.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.ml.recommendation import ALS
from pyspark.sql import SparkSession

TUNING_GRID = {"alpha": [1.0, 5.0, 20.0, 80.0], "reg": [0.01, 0.05, 0.2, 1.0], "rank": [32, 64, 128]}


def fit(data, params: dict, iters: int, seed: int):
    als = ALS(userCol="user_pos", itemCol="item_idx", ratingCol="weight", implicitPrefs=True, rank=params["rank"],
              regParam=params["reg"], alpha=params["alpha"], maxIter=iters, seed=seed, coldStartStrategy="drop")
    return als.fit(data)


def validation_ndcg(model, seen: pd.Series, targets: pd.Series, n_items: int) -> float:
    """Full-ranking NDCG@10 of a fitted model on the validation targets (the recommender's metric code)."""
    import torch

    from models.metrics import ranking_metrics
    from models.ranking import dense_factors, factor_topk

    users = targets.index.to_numpy()
    user_vecs = dense_factors(model.userFactors.toPandas(), int(max(users.max(), seen.index.max())) + 1)[users]
    item_vecs = dense_factors(model.itemFactors.toPandas(), n_items)
    history = [seen.get(u, np.zeros(0, dtype=np.int64)) for u in users]
    topk = factor_topk(torch.as_tensor(user_vecs), torch.as_tensor(item_vecs), history, k=10)
    return ranking_metrics(topk, [set(t) for t in targets], ks=(10,))["ndcg_10"]


def tune(spark, tune_path: str, valid_path: str, start: dict, n_items: int, iters: int, seed: int
         ) -> tuple[dict, list[dict]]:
    """The coordinate pass: the best parameters and every trial (parameters and validation NDCG@10)."""
    data = spark.read.parquet(tune_path).cache()
    pairs = pd.read_parquet(tune_path, columns=["user_pos", "item_idx"])
    seen = pairs.groupby("user_pos")["item_idx"].apply(lambda s: s.to_numpy(np.int64))
    targets = pd.read_parquet(valid_path).groupby("user_pos")["item_idx"].apply(lambda s: s.to_numpy(np.int64))
    trials: dict[tuple, dict] = {}

    def score(params: dict) -> float:
        key = tuple(sorted(params.items()))
        if key not in trials:
            started = time.time()
            ndcg = validation_ndcg(fit(data, params, iters, seed), seen, targets, n_items)
            trials[key] = params | {"valid_ndcg_10": round(ndcg, 6), "seconds": round(time.time() - started, 1)}
            print(f"ALS trial {json.dumps(trials[key])}", flush=True)
        return trials[key]["valid_ndcg_10"]

    best = dict(start)
    for name, values in TUNING_GRID.items():
        best[name] = max(values, key=lambda v: score(best | {name: v}))  # ties: the earlier value
    data.unpersist()
    return best, list(trials.values())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Spark MLlib implicit ALS baseline, tuned on the validation window")
    ap.add_argument("--interactions", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n-items", type=int, required=True, help="catalogue size, padding row 0 included")
    ap.add_argument("--rank", type=int, default=64, help="factors (where the tuning starts)")
    ap.add_argument("--reg", type=float, default=0.05, help="L2 regularisation (where the tuning starts)")
    ap.add_argument("--alpha", type=float, default=20.0, help="confidence of implicit feedback (where the tuning "
                                                               "starts)")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--tune-interactions", help="histories before the validation window: tune on them")
    ap.add_argument("--valid-targets", help="the validation window's new items per user")
    args = ap.parse_args(argv)
    if bool(args.tune_interactions) != bool(args.valid_targets):
        ap.error("--tune-interactions and --valid-targets go together")

    spark = SparkSession.builder.appName("ltvrec-als").getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    params = {"alpha": args.alpha, "reg": args.reg, "rank": args.rank}
    if args.tune_interactions:
        params, trials = tune(spark, args.tune_interactions, args.valid_targets, params, args.n_items, args.iters,
                              args.seed)
        Path(args.out, "tuning.json").write_text(json.dumps({"chosen": params, "trials": trials}, indent=1))
    model = fit(spark.read.parquet(args.interactions), params, args.iters, args.seed)
    model.userFactors.write.mode("overwrite").parquet(f"{args.out}/user_factors")
    model.itemFactors.write.mode("overwrite").parquet(f"{args.out}/item_factors")
    spark.stop()


if __name__ == "__main__":
    main()
