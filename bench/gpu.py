"""The GPU path, proven and measured in one command: DDP training on every visible GPU, and batch scoring.

    .venv/bin/python bench/gpu.py                      # on a GPU machine: MovieLens-1M shape, 1M x 50k scoring
    .venv/bin/python bench/gpu.py --device cpu --users 200 --items 300 --max-len 20 \\
        --score-users 5000 --score-items 2000          # the same code on CPU, tiny shapes (tests/test_bench_gpu.py)

1. Training: MovieLens-1M-shaped ratings (6,040 users, 3,706 movies, sequence length 200; bench/movielens.py's
   generator) go through the real ingest -> dbt -> Spark features stages, then `torchrun` runs the trainer with one
   process per visible GPU: DDP over NCCL, bf16 autocast, TF32 matmuls (models/train.py: Runtime). Reported:
   processes, backend, seconds and sequences/s per epoch, peak GPU memory of rank 0.
2. Scoring: a randomly initialised model of the production shape scores --score-users users against
   --score-items items through `models.score.Scorer` (the score stage's code) on the device, beside a bare bf16
   `torch.matmul` of the same shapes (users x d @ d x items, in the scorer's chunks) as the ceiling.

One JSON line on stdout; the stages' own output goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

from movielens import write_ml1m_shaped  # noqa: E402
from scoring import chunks, random_model  # noqa: E402
from train_speed import epoch_lines, features_run, train_config_file  # noqa: E402


def build_features(home: Path, users: int, items: int, max_len: int) -> Path:
    """ML-1M-shaped ratings through ingest -> dbt -> Spark features, in a temporary LTVREC_HOME."""
    data = write_ml1m_shaped(home / "ml-1m-shaped", n_users=users, n_items=items)
    return features_run(home, {"source": "movielens", "path": str(data), "eval_protocol": "leave_one_out",
                               "item_text": False, "max_seq_len": max_len}, "bench_gpu")


def train(run_dir: Path, device: str, epochs: int, nproc: int) -> dict:
    """torchrun the trainer for exactly `epochs` epochs on `device` with `nproc` processes; figures from its log."""
    config = train_config_file(run_dir, epochs=epochs, patience=epochs + 1, refit_epochs=0, max_train_minutes=1e6)
    env = {**os.environ, "LTVREC_TRAIN_DEVICE": device, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}
    started = time.time()
    proc = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc-per-node={nproc}",
                           "-m", "models.train", "--config", str(config)], capture_output=True, text=True, cwd=ROOT,
                          env=env)
    if proc.returncode != 0:
        raise SystemExit(f"training failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    lines = epoch_lines(proc.stdout)
    result = json.loads((run_dir / "train" / "result.json").read_text())
    return {"processes": nproc, "device": result.get("device"), "world_size": result.get("world_size"),
            "backend": "nccl" if device == "cuda" else "gloo", "bf16_autocast": device == "cuda",
            "tf32": device == "cuda", "wall_seconds": round(time.time() - started, 1),
            "seconds_per_epoch": [round(float(e["epoch_seconds"]), 2) for e in lines],
            "sequences_per_s": [round(float(e["sequences_per_s"]), 1) for e in lines],
            "peak_gpu_mb_rank0": max((round(float(e["peak_gpu_mb"])) for e in lines if "peak_gpu_mb" in e), default=None),
            "val_ndcg_10": [round(float(e.get("val_ndcg_10", "nan")), 4) for e in lines]}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def score(device: torch.device, users: int, items: int, dim: int, max_len: int, top_n: int) -> dict:
    """The scorer on `device` over `users` x `items`, and a bare bf16 matmul of the same shapes in its chunks."""
    from models.score import GROUP, Scorer

    loaded = random_model(items, dim, max_len)
    scorer = Scorer(loaded, [f"i{j}" for j in range(items)], top_n, "relevance", device)
    rows = 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    started = time.perf_counter()
    for user_ids, histories, types, feats in chunks(users, items, max_len, scorer.chunk * GROUP):
        recs, _ = scorer.score(user_ids, histories, types, feats)
        rows += recs.num_rows
    sync(device)
    seconds = time.perf_counter() - started
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # CPUs here lack fast bf16 matmuls
    item_vectors = torch.randn(dim, items + 1, device=device, dtype=dtype)
    user_vectors = torch.randn(scorer.chunk, dim, device=device, dtype=dtype)
    user_vectors @ item_vectors  # warm-up
    sync(device)
    reps = max(1, users // scorer.chunk)
    started_matmul = time.perf_counter()
    for _ in range(reps):
        user_vectors @ item_vectors
    sync(device)
    matmul_seconds = (time.perf_counter() - started_matmul) * users / (reps * scorer.chunk)
    return {"users": users, "items": items, "dim": dim, "top_n": top_n, "chunk_users": scorer.chunk,
            "recommendation_rows": rows, "seconds": round(seconds, 2), "users_per_s": round(users / seconds, 1),
            "matmul_dtype": str(dtype).replace("torch.", ""), "matmul_seconds": round(matmul_seconds, 3),
            "matmul_users_per_s": round(users / matmul_seconds, 1),
            "scorer_over_matmul_seconds": round(seconds / matmul_seconds, 1),
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--users", type=int, default=6040)
    ap.add_argument("--items", type=int, default=3706)
    ap.add_argument("--max-len", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--nproc", type=int, default=None, help="training processes (default: one per GPU; 2 on CPU)")
    ap.add_argument("--score-users", type=int, default=1_000_000)
    ap.add_argument("--score-items", type=int, default=50_000)
    ap.add_argument("--score-max-len", type=int, default=50, help="events per scored history (the default max_seq_len)")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--top-n", type=int, default=20)
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible: run on a GPU machine, or with --device cpu")
    nproc = args.nproc or (torch.cuda.device_count() if args.device == "cuda" else 2)
    out = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else f"cpu x{os.cpu_count()}",
           "gpus": torch.cuda.device_count() if args.device == "cuda" else 0, "torch": torch.__version__}
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="ltvrec-bench-gpu-") as home:
        run_dir = build_features(Path(home), args.users, args.items, args.max_len)
        out["features_seconds"] = round(time.time() - started, 1)
        out["training"] = train(run_dir, args.device, args.epochs, nproc)
    out["scoring"] = score(torch.device(args.device), args.score_users, args.score_items, args.dim,
                           args.score_max_len, args.top_n)
    out["total_seconds"] = round(time.time() - started, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
