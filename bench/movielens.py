"""Benchmark on MovieLens-1M under leave-one-out: our model vs published SASRec, popularity and Spark ALS.

    .venv/bin/python bench/movielens.py --path ml-1m/            # folder with ratings.dat and movies.dat
    .venv/bin/python bench/movielens.py --shape-only             # timing only, on ML-1M-shaped synthetic data

Runs `ltvrec run --source movielens` (its defaults: leave_one_out, sequence length 200, full softmax) in a
temporary LTVREC_HOME and prints one JSON object with every model's NDCG/HR@10 and @20, the published
SASRec reference (full cross-entropy, full ranking, seen items filtered: NDCG@10 0.182, HR@10 0.315 --
Klenitskiy & Vasilev, RecSys 2023), seconds per epoch, sequences per second, the validation curve (time to
quality) and stage timings.
`--shape-only` writes a ratings.dat/movies.dat pair with ML-1M's shape (6,040 users, 3,706 movies, ~1M
ratings, heavy-tailed user lengths, sequential structure) so the run time can be measured where the real
data is not available; its quality numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from online_retail import run_source  # noqa: E402

PUBLISHED_SASREC = {"ndcg_10": 0.182, "hr_10": 0.315, "source": "Klenitskiy & Vasilev, RecSys 2023 (SASRec+, full CE)"}


def write_ml1m_shaped(folder: Path, seed: int = 0, n_users: int = 6040, n_items: int = 3706) -> Path:
    """ratings.dat / movies.dat with MovieLens-1M's shape; users drift along a random item order."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lengths = np.clip(rng.lognormal(np.log(96), 1.0, n_users).astype(int) + 20, 20, 2314)
    popularity = 1.0 / (1.0 + np.arange(n_items)) ** 0.9
    order = rng.permutation(n_items)  # a hidden "taste axis": neighbours on it are watched together
    rows = []
    for u in range(n_users):
        n = min(lengths[u], n_items // 2)
        position = rng.integers(n_items)
        seen: set[int] = set()
        t = 956_703_932 + int(rng.integers(0, 80_000_000))
        for _ in range(n):
            for _attempt in range(20):
                if rng.random() < 0.6:
                    position = (position + int(rng.integers(-15, 16))) % n_items
                    item = int(order[position])
                else:
                    item = int(rng.choice(n_items, p=popularity / popularity.sum()))
                if item not in seen:
                    break
            seen.add(item)
            t += int(rng.exponential(3000))
            rows.append(f"{u + 1}::{item + 1}::{int(rng.integers(1, 6))}::{t}")
    (folder / "ratings.dat").write_text("\n".join(rows) + "\n", encoding="latin-1")
    genres = ["Action", "Comedy", "Drama", "Thriller", "Romance", "Sci-Fi", "Horror", "Children's"]
    (folder / "movies.dat").write_text(
        "\n".join(f"{i + 1}::Movie {i + 1} ({1950 + i % 50})::{genres[i % len(genres)]}" for i in range(n_items)) + "\n",
        encoding="latin-1")
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--path", help="MovieLens-1M folder (ratings.dat, movies.dat)")
    ap.add_argument("--shape-only", action="store_true", help="time a run on ML-1M-shaped synthetic data")
    ap.add_argument("--conf", default=None, help="extra DAG params as JSON")
    args = ap.parse_args()
    if not args.path and not args.shape_only:
        ap.error("give --path to MovieLens-1M or --shape-only")
    with tempfile.TemporaryDirectory(prefix="ltvrec-bench-ml1m-") as home:
        path = args.path or str(write_ml1m_shaped(Path(home) / "ml-1m-shaped"))
        result = run_source("movielens", path, None, Path(home), args.conf)
    out = {"dataset": "movielens-1m" if args.path else "movielens-1m-shaped synthetic (timing only)",
           "protocol": "leave_one_out", "machine_cpus": os.cpu_count(), "published_sasrec": PUBLISHED_SASREC, **result}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
