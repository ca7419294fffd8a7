"""Batch scoring throughput and memory: ltvrec's chunked scorer against the machine's own matmul.

    .venv/bin/python bench/scoring.py [--users 1000000] [--items 50000] [--dim 64] [--top-n 20] [--chunk N]
    .venv/bin/python bench/scoring.py --users-sweep 100000 1000000   # peak RSS by user count, one process each

A randomly initialised model of the production shape (2 pre-norm blocks, sequences of up to 50 events, an LTV
head) scores synthetic users through `models.score.Scorer.score`, the function the `score` stage and the Spark
job run: encoder, user vectors x all item vectors, seen items masked, top-N, the LTV head for every second user
(a customer). Histories (1 to 50 events, uniform) and LTV features are generated one chunk at a time, and the
result batches go to a counting sink (or `--parquet FILE`), so memory reflects the scorer, not the inputs.

References on the same threads and chunk size: `torch.matmul` of the same shapes alone (chunk x d @ d x items),
and matmul + topk. One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from ltvrec.config import EVENT_TYPES  # noqa: E402
from models.checkpoint import LoadedModel  # noqa: E402
from models.data import LTV_FEATURES, FeatureScaler  # noqa: E402
from models.sasrec import ModelConfig, SeqRecModel  # noqa: E402
from models.score import GROUP, RECS_SCHEMA, Scorer  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_model(n_items: int, dim: int, max_len: int) -> LoadedModel:
    torch.manual_seed(0)
    cfg = ModelConfig(n_items=n_items + 1, n_ltv_features=len(LTV_FEATURES), n_event_types=len(EVENT_TYPES) + 1,
                      max_len=max_len, d_model=dim, n_heads=2, n_layers=2, ltv_sigma_max=2.0)
    model = SeqRecModel(cfg)
    scaler = FeatureScaler(mean=np.zeros(len(LTV_FEATURES)), std=np.ones(len(LTV_FEATURES)), features=LTV_FEATURES)
    ckpt = {"model": model.state_dict(), "model_config": asdict(cfg),
            "item_ids": [f"i{j}" for j in range(n_items)], "item_price": [0.0] + [1.0] * n_items, "scaler": scaler.to_dict()}
    return LoadedModel(ckpt)


def chunks(n_users: int, n_items: int, max_len: int, chunk: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for start in range(0, n_users, chunk):
        n = min(chunk, n_users - start)
        lengths = rng.integers(1, max_len + 1, n)
        items = [rng.integers(1, n_items + 1, size=k) for k in lengths]
        types = [rng.integers(1, 4, size=k) for k in lengths]
        feats = pd.DataFrame(rng.gamma(2.0, 5.0, (n, len(LTV_FEATURES))), columns=LTV_FEATURES)
        feats.iloc[1::2] = np.nan  # every second user is not a customer: no LTV row
        yield np.array([f"u{start + i}" for i in range(n)], dtype=object), items, types, feats


def reference(n_users: int, n_items: int, dim: int, top_n: int, chunk: int) -> dict:
    """users/s of the bare matmul, and of matmul + topk, over the same number of users in the same chunks."""
    items = torch.randn(n_items + 1, dim)
    users = torch.randn(chunk, dim)
    out = {}
    for name, fn in (("matmul", lambda: users @ items.T), ("matmul_topk", lambda: (users @ items.T).topk(top_n, dim=1))):
        fn()  # warm-up
        reps = max(1, n_users // chunk)
        started = time.perf_counter()
        for _ in range(reps):
            fn()
        out[f"{name}_users_per_s"] = round(reps * chunk / (time.perf_counter() - started), 1)
    return out


def run(args) -> dict:
    loaded = random_model(args.items, args.dim, args.max_len)
    scorer = Scorer(loaded, [f"i{j}" for j in range(args.items)], args.top_n, "relevance", torch.device("cpu"), args.chunk)
    chunk = scorer.chunk
    writer = pq.ParquetWriter(args.parquet, RECS_SCHEMA) if args.parquet else None
    rec_rows = ltv_rows = 0
    rss_before = peak_rss_mb()
    started = time.perf_counter()
    for users, items, types, feats in chunks(args.users, args.items, args.max_len, chunk * GROUP):
        recs, ltv = scorer.score(users, items, types, feats)
        rec_rows, ltv_rows = rec_rows + recs.num_rows, ltv_rows + ltv.num_rows
        if writer:
            writer.write_batch(recs)
    seconds = time.perf_counter() - started
    if writer:
        writer.close()
    result = {
        "users": args.users, "items": args.items, "dim": args.dim, "top_n": args.top_n, "max_len": args.max_len,
        "chunk_users": chunk, "threads": torch.get_num_threads(), "seconds": round(seconds, 1),
        "users_per_s": round(args.users / seconds, 1), "recommendation_rows": rec_rows, "ltv_rows": ltv_rows,
        "peak_rss_mb": round(peak_rss_mb(), 0), "peak_rss_mb_before_scoring": round(rss_before, 0),
    }
    if not args.no_reference:
        ref = reference(min(args.users, 200_000), args.items, args.dim, args.top_n, chunk)
        result |= ref | {"matmul_over_ours": round(ref["matmul_users_per_s"] / result["users_per_s"], 2),
                         "matmul_topk_over_ours": round(ref["matmul_topk_users_per_s"] / result["users_per_s"], 2)}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--top-n", type=int, default=20)
    ap.add_argument("--max-len", type=int, default=50)
    ap.add_argument("--chunk", type=int, default=None, help="users per chunk (default: automatic)")
    ap.add_argument("--parquet", default=None, help="write the recommendation rows to this file")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--users-sweep", type=int, nargs="+", help="one process per user count; peak RSS of each")
    args = ap.parse_args()
    if args.users_sweep:
        rows = []
        for n in args.users_sweep:
            cmd = [sys.executable, __file__, "--users", str(n), "--items", str(args.items), "--dim", str(args.dim),
                   "--top-n", str(args.top_n), "--max-len", str(args.max_len), "--no-reference"]
            if args.chunk:
                cmd += ["--chunk", str(args.chunk)]
            rows.append(json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]))
        print(json.dumps({"sweep": [{k: r[k] for k in ("users", "users_per_s", "peak_rss_mb", "chunk_users")} for r in rows]}))
        return
    print(json.dumps(run(args)))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    main()
