"""The trainer on a real (tiny) run folder: DDP over 2 gloo processes matches 1 process; a killed run resumes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ltvrec.config import RunConfig
from ltvrec.stages import train_config

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def features_run(tmp_path_factory):
    """ingest -> dbt -> Spark features on 300 synthetic users, through the real stages."""
    home = tmp_path_factory.mktemp("home")
    saved = {k: os.environ.get(k) for k in ("LTVREC_HOME", "MLFLOW_TRACKING_URI")}
    os.environ["LTVREC_HOME"] = str(home)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home}/mlflow.db"
    try:
        from ltvrec import stages

        run_dir = stages.prepare({"synthetic_users": 300, "synthetic_items": 60, "holdout_days": 21,
                                  "horizon_days": 60, "epochs": 3, "patience": 10}, "features_fixture")
        for name in ("ingest", "dbt_build", "features"):
            getattr(stages, name)(run_dir)
        yield Path(run_dir)
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def clone(run_dir: Path, tmp_path: Path, name: str, tracked: bool = True, progress: bool = False,
          **overrides) -> Path:
    """A fresh run folder sharing the fixture's features (and, when tracked, its MLflow run), with the trainer's
    config in train/config.json."""
    out = tmp_path / name
    out.mkdir()
    (out / "features").symlink_to(run_dir / "features")
    cfg = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()) | overrides)
    wiring = {"mlflow_run_id": json.loads((run_dir / "mlflow.json").read_text())["run_id"] if tracked else None,
              "text_cache": str(run_dir.parent / "item_text_cache.parquet"),  # shared: texts are encoded once
              "progress_file": str(out / "train" / "progress.json") if progress else None}
    train_config(cfg, out / "features", out / "train", **wiring).save(out / "train" / "config.json")
    return out


def train(run_dir: Path, nproc: int, **popen) -> subprocess.Popen:
    cmd = [str(BIN / "torchrun"), "--standalone", f"--nproc-per-node={nproc}", "-m", "models.train",
           "--config", str(run_dir / "train" / "config.json")]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    return out


def result(run_dir: Path) -> dict:
    return json.loads((run_dir / "train" / "result.json").read_text())


@pytest.fixture(scope="module")
def trained(features_run, tmp_path_factory) -> Path:
    """A model trained by one process for 3 epochs; its printed output in train.out."""
    run_dir = clone(features_run, tmp_path_factory.mktemp("trained"), "one")
    (run_dir / "train.out").write_text(finish(train(run_dir, 1)))
    return run_dir


def test_the_learning_rate_warms_up_then_decays_over_the_epochs_limit(trained):
    import re

    rates = [float(r) for r in re.findall(r"^epoch \d+/3: .*\blr=([-\d.e+]+)", (trained / "train.out").read_text(),
                                          re.MULTILINE)]
    assert len(rates) == 3 and rates[0] > rates[1] > rates[2], rates  # each epoch's last step
    assert rates[2] == pytest.approx(0.1 * 2e-3, rel=0.05)  # the end of the plan: FINAL_LR_SHARE of lr


def test_without_an_epochs_limit_the_time_budget_ends_training(features_run, tmp_path):
    run_dir = clone(features_run, tmp_path, "budget", tracked=False, epochs=None, max_train_minutes=0.001,
                    refit_epochs=0)
    out = finish(train(run_dir, 1))
    assert result(run_dir)["epochs_run"] == 1, out[-2000:]
    assert any("time budget" in note for note in result(run_dir)["notes"])


def test_two_gloo_processes_match_one(features_run, trained, tmp_path):
    one, two = trained, clone(features_run, tmp_path, "two")
    finish(train(two, 2))
    r1, r2 = result(one), result(two)
    assert r1["world_size"] == 1 and r2["world_size"] == 2
    assert r1["epochs_run"] == r2["epochs_run"] == 3
    assert r2["best_val_ndcg_10"] == pytest.approx(r1["best_val_ndcg_10"], abs=0.05)
    assert r1["best_val_ndcg_10"] > 0


def test_two_torchrun_agents_joined_by_a_c10d_rendezvous_match_one_process(features_run, trained, tmp_path):
    """Multi-node training, here as two agents on localhost (one gloo process each) meeting at a c10d rendezvous."""
    from concurrent.futures import ThreadPoolExecutor

    from ltvrec import launch
    from ltvrec.stack import free_port

    run_dir = clone(features_run, tmp_path, "two_nodes", tracked=False)
    endpoint = f"127.0.0.1:{free_port()}"
    with ThreadPoolExecutor(2) as pool:
        agents = [pool.submit(launch.torchrun, run_dir / "train" / "config.json", 1,
                              run_dir / "logs" / f"train-node-{node}.log", 2, endpoint, "two-nodes") for node in (0, 1)]
        for agent in agents:
            agent.result(timeout=900)
    r1, r2 = result(trained), result(run_dir)
    assert r2["world_size"] == 2 and r2["epochs_run"] == r1["epochs_run"] == 3
    assert r2["best_val_ndcg_10"] == pytest.approx(r1["best_val_ndcg_10"], abs=0.05)


def test_a_killed_run_resumes_from_its_last_checkpoint(features_run, tmp_path):
    run_dir = clone(features_run, tmp_path, "resume", epochs=4)
    proc = train(run_dir, 2, start_new_session=True)
    last = run_dir / "train" / "last.pt"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert last.exists(), "no checkpoint was written"
    os.killpg(proc.pid, signal.SIGKILL)  # the whole torchrun process group, mid-training
    proc.wait()
    out = finish(train(run_dir, 2))
    assert "resuming from" in out
    assert result(run_dir)["epochs_run"] == 4


def test_sampled_softmax_training_runs(features_run, tmp_path):
    run_dir = clone(features_run, tmp_path, "sampled", loss="sampled", n_negatives=32, epochs=1)
    out = finish(train(run_dir, 1))
    assert result(run_dir)["epochs_run"] == 1 and result(run_dir)["best_val_ndcg_10"] > 0, out[-2000:]


def test_the_refit_trains_the_best_model_on_the_validation_window(features_run, tmp_path):
    import torch

    run_dir = clone(features_run, tmp_path, "refit", progress=True, epochs=2, refit_epochs=1)
    out = finish(train(run_dir, 2))
    assert result(run_dir)["refit_epochs"] == 1, out[-2000:]
    progress = json.loads((run_dir / "train" / "progress.json").read_text())
    assert progress["phase"] == "refit" and progress["epoch"] == progress["epochs"] == 1
    assert progress["batch"] == progress["batches"] > 0
    assert progress["best_val_ndcg_10"] == result(run_dir)["best_val_ndcg_10"]
    best = torch.load(run_dir / "train" / "best.pt", weights_only=False)
    final = torch.load(run_dir / "train" / "final.pt", weights_only=False)
    assert final["state"]["refit_done"] == 1 and best["state"]["refit_done"] == 0
    assert not torch.equal(best["model"]["item_emb.weight"], final["model"]["item_emb.weight"])
    # no refit: the registered model is the best validated one
    plain = clone(features_run, tmp_path, "plain", tracked=False, epochs=1, refit_epochs=0)
    finish(train(plain, 1))
    assert "model_uri" not in result(plain)  # no MLflow run: nothing logged
    assert torch.equal(torch.load(plain / "train" / "best.pt", weights_only=False)["model"]["item_emb.weight"],
                       torch.load(plain / "train" / "final.pt", weights_only=False)["model"]["item_emb.weight"])


def test_a_time_gap_model_trains_evaluates_and_scores(features_run, tmp_path):
    import numpy as np

    from models.checkpoint import LoadedModel
    from models.data import FeatureSet, Protocol
    from models.evaluate import evaluate_recommendations, predict_ltv
    from models.score import score_recommendations
    from models.config import TrainConfig

    # ltv_user_dim=8: the LTV examples' histories are encoded too, with their own event times
    run_dir = clone(features_run, tmp_path, "gaps", time_gaps=True, ltv_user_dim=8, epochs=1)
    out = finish(train(run_dir, 2))
    loaded = LoadedModel.from_file(run_dir / "train" / "final.pt")
    assert loaded.model.cfg.time_gaps and result(run_dir)["best_val_ndcg_10"] > 0, out[-2000:]
    fs = FeatureSet.load(run_dir / "features")
    protocol = Protocol.build(fs, TrainConfig.load(run_dir / "train" / "config.json").eval_protocol)
    metrics, _ = evaluate_recommendations(fs, loaded, protocol)
    assert metrics["model"]["ndcg_10"] > 0
    frame, _, expected_value = predict_ltv(fs, loaded, "eval")
    assert len(frame) and np.isfinite(expected_value).all()
    assert score_recommendations(fs, loaded, 5).num_rows > 0


def test_the_model_gate_rejects_a_champion_copy_with_shuffled_items(trained, tmp_path):
    """The same model with each item's embedding and text given to another item: clearly worse on the same
    holdout, so the paired interval of its NDCG@10 gain excludes zero and the gate rejects its recommender."""
    import torch

    from ltvrec.promotion import decide
    from models.checkpoint import LoadedModel
    from models.compare import compare_ndcg
    from models.config import TrainConfig
    from models.data import FeatureSet, Protocol
    from models.report import evaluate_model, evaluate_run

    ckpt = torch.load(trained / "train" / "final.pt", weights_only=False)
    shuffle = torch.randperm(len(ckpt["item_ids"]), generator=torch.Generator().manual_seed(0)) + 1
    for name in ("item_emb.weight", "item_text"):  # row 0 is padding; no item_text without item text
        if name in ckpt["model"]:
            ckpt["model"][name][1:] = ckpt["model"][name][shuffle]
    torch.save(ckpt, tmp_path / "shuffled.pt")
    fs = FeatureSet.load(trained / "features")
    protocol = Protocol.build(fs, TrainConfig.load(trained / "train" / "config.json").eval_protocol)
    report = evaluate_run(fs, LoadedModel.from_file(tmp_path / "shuffled.pt"), protocol)
    report.add_model("champion", evaluate_model(fs, LoadedModel.from_file(trained / "train" / "final.pt"), protocol,
                                                report.actual))
    found = compare_ndcg(report.ndcg_per_user["model"], report.ndcg_per_user["champion"], "champion v1", 1000, 0.95, 0)
    assert found.high < 0, found
    champions = {h: {"version": "1", "unfit": [], "facts": {}} for h in ("recommendation", "ltv")}
    decision = decide(report.metrics, champions, {"recommendation": [found]},
                      {"ndcg_10": 0.005, "gini": 0.01, "decile_mape": 0.02})
    assert not decision.heads["recommendation"]
    assert "worse beyond tolerance 0.005" in decision.reasons[0] and "vs champion v1" in decision.reasons[0]


def test_a_continued_run_starts_from_the_champion_and_learns_from_the_recent_users(features_run, trained, tmp_path):
    import torch

    champion = torch.load(trained / "train" / "final.pt", map_location="cpu", weights_only=False)
    split = json.loads((features_run / "features" / "split.json").read_text())
    assert champion["lineage"]["trained_until"] == split["test_start"]  # after the refit on the validation window
    assert champion["lineage"]["continued_runs"] == 0 and "net_spend" in champion["lineage"]["ltv_profile"]

    out = tmp_path / "continued"
    (out / "train").mkdir(parents=True)
    (out / "features").symlink_to(features_run / "features")
    cfg = RunConfig.from_dict(json.loads((features_run / "config.json").read_text()))
    since = split["valid_start"]  # as if the champion's data had ended a window earlier: users since then are new
    train_config(cfg, out / "features", out / "train", mlflow_run_id=None,
                 init_from=str(trained / "train" / "final.pt"), continual_since=since, continued_runs=1, epochs=2,
                 text_cache=str(features_run.parent / "item_text_cache.parquet")).save(out / "train" / "config.json")
    printed = finish(train(out, 1))
    done = result(out)
    assert done["mode"] == "continue" and done["epochs_run"] == 2 and done["init"].startswith("warm start from")
    assert "continue epoch 2/2" in printed and "val_ndcg" not in printed and "best_epoch" not in done  # no validation
    assert any(n.startswith("continued from the champion: ") and f"events since {since}" in n for n in done["notes"])
    final = torch.load(out / "train" / "final.pt", map_location="cpu", weights_only=False)
    assert final["lineage"]["continued_runs"] == 1 and final["lineage"]["trained_until"] == split["test_start"]
    assert not torch.equal(final["model"]["item_emb.weight"], champion["model"]["item_emb.weight"])  # it learned
