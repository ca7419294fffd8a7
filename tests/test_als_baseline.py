"""The ALS baseline job (jobs/als_baseline.py), run with spark-submit in local mode: tuned on the validation window,
then refitted on all the histories it is given."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ltvrec.config import PROJECT_ROOT

N_ITEMS = 121  # 120 items and the padding row 0
GROUPS = 4  # each user buys within one group of 30 items


def shop(seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(history before validation, validation targets, history before test) of 300 users who each buy in one group:
    what ALS's factors can learn, and its tuning can tell apart."""
    rng = np.random.default_rng(seed)
    tune, valid, full = [], [], []
    for user in range(300):
        group = np.arange(1, N_ITEMS).reshape(GROUPS, -1)[user % GROUPS]
        items = rng.choice(group, size=12, replace=False)
        tune += [(user, int(i), float(rng.integers(1, 4))) for i in items[:10]]
        valid += [(user, int(items[10]))]
        full += tune[-10:] + [(user, int(items[10]), 1.0)]
    columns = ["user_pos", "item_idx", "weight"]
    frame = lambda rows, cols: pd.DataFrame(rows, columns=cols).astype({"user_pos": "int32", "item_idx": "int32"})
    return frame(tune, columns), frame(valid, columns[:2]), frame(full, columns)


def run_job(tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    tune, valid, full = shop(seed=7)
    for name, frame in {"tune": tune, "valid": valid, "full": full}.items():
        frame.astype({"weight": "float32"} if "weight" in frame else {}).to_parquet(tmp / f"{name}.parquet")
    cmd = [str(Path(sys.executable).parent / "spark-submit"), "--master", "local[2]", "--conf",
           "spark.ui.enabled=false", str(PROJECT_ROOT / "jobs" / "als_baseline.py"),
           "--interactions", str(tmp / "full.parquet"), "--out", str(tmp / "als"), "--n-items", str(N_ITEMS),
           "--seed", "3", "--iters", "5", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env=os.environ | {"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable})


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("als")
    (tmp / "als").mkdir()
    done = run_job(tmp, "--tune-interactions", str(tmp / "tune.parquet"), "--valid-targets", str(tmp / "valid.parquet"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return tmp / "als"


def test_one_coordinate_pass_keeps_the_best_trial(tuned):
    tuning = json.loads((tuned / "tuning.json").read_text())
    trials = tuning["trials"]
    assert len(trials) == 4 + 3 + 2  # alpha's 4 values, then reg's 3 others, then rank's 2 others
    assert len({(t["alpha"], t["reg"], t["rank"]) for t in trials}) == len(trials)
    best = max(trials, key=lambda t: t["valid_ndcg_10"])
    assert tuning["chosen"] == {k: best[k] for k in ("alpha", "reg", "rank")}
    # the groups were learned: a random top 10 of the user's group's 20 unseen items gets 0.23, of the catalogue 0.04
    assert best["valid_ndcg_10"] > 0.15


def test_the_chosen_parameters_are_refitted_on_every_history(tuned):
    from models.ranking import load_factors

    rank = json.loads((tuned / "tuning.json").read_text())["chosen"]["rank"]
    users, items = load_factors(tuned, 300, N_ITEMS)
    assert users.shape == (300, rank) and items.shape == (N_ITEMS, rank)
    assert not items[0].any() and (np.abs(items[1:]).sum(axis=1) > 0).all()  # every item, the targets' too


def test_without_validation_targets_the_defaults_are_fitted_and_nothing_tuned(tmp_path):
    (tmp_path / "als").mkdir()
    done = run_job(tmp_path, "--rank", "8")
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / "als" / "tuning.json").exists()
    from models.ranking import load_factors

    assert load_factors(tmp_path / "als", 300, N_ITEMS)[1].shape == (N_ITEMS, 8)
    half = run_job(tmp_path, "--tune-interactions", str(tmp_path / "tune.parquet"))
    assert half.returncode == 2 and "--tune-interactions and --valid-targets go together" in half.stdout + half.stderr
