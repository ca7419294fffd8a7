"""bench/gpu.py, kept working for the day a GPU is lent: the same code on CPU with tiny shapes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_runs_on_cpu_with_tiny_shapes():
    cmd = [sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "cpu", "--users", "150", "--items", "200",
           "--max-len", "20", "--epochs", "1", "--nproc", "2", "--score-users", "3000", "--score-items", "1000",
           "--score-max-len", "10"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1  # one JSON line
    out = json.loads(lines[0])
    training, scoring = out["training"], out["scoring"]
    assert training["world_size"] == 2 and training["backend"] == "gloo" and len(training["sequences_per_s"]) == 1
    assert training["sequences_per_s"][0] > 0 and training["peak_gpu_mb_rank0"] is None
    assert scoring["recommendation_rows"] == 3000 * 20 and scoring["users_per_s"] > 0
    assert scoring["matmul_users_per_s"] > scoring["users_per_s"] * 0.5  # the bare product is the ceiling
