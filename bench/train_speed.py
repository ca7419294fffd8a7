"""Training speed and memory on the project's synthetic data: our trainer vs RecBole's SASRec.

    .venv/bin/python bench/train_speed.py [--events 1000000] [--epochs 2] [--recbole [--recbole-max-batches 150]]

Generates about --events synthetic events, runs the real ingest -> dbt -> Spark features stages in a
temporary LTVREC_HOME, then trains under torchrun (2 gloo processes, leave-one-out protocol, fixed epoch
count, no early stopping) and measures seconds per epoch, sequences/s, next-item targets/s, peak RSS of
the training processes and NDCG/HR@10 on the test events. With --recbole (needs `make recbole-venv`)
RecBole's SASRec trains on the same interactions, same sequence length, width, batch size and epochs, and
the ratios are reported; RecBole trains one (prefix -> next item) sample per target, so its full epoch on 1M
events is long (docs/benchmarks.md): --recbole-max-batches N trains N batches per epoch and extrapolates the
epoch time (choose N so that its training time matches ours for an equal-time quality comparison).
`--users-sweep 2000 8000 32000` instead reports peak training RSS per user count.
One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EVENTS_PER_USER = 40.4  # clean events per synthetic user after dbt (measured; the raw generator makes ~66)


def build_features(home: Path, users: int, items: int, seed: int) -> Path:
    return features_run(home, {"synthetic_users": users, "synthetic_items": items, "seed": seed,
                               "eval_protocol": "leave_one_out", "item_text": False}, f"speed_{users}")


def features_run(home: Path, params: dict, name: str) -> Path:
    """A run folder with `params`, through the real ingest -> dbt -> Spark features stages in LTVREC_HOME `home`."""
    os.environ["LTVREC_HOME"] = str(home)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home}/mlflow.db"
    from ltvrec import stages

    saved = os.dup(1)
    os.dup2(2, 1)  # the stages' tool output (dbt, Spark) goes to stderr: stdout carries only the JSON
    try:
        run_dir = Path(stages.prepare(params, name))
        for stage in ("ingest", "dbt_build", "features"):
            getattr(stages, stage)(str(run_dir))
        return run_dir
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def epoch_lines(stdout: str) -> list[dict[str, str]]:
    """The trainer's printed `epoch i/n: key=value ...` lines, as dicts."""
    return [dict(re.findall(r"(\w+)=([-\d.e+]+)", line)) for line in stdout.splitlines()
            if re.match(r"epoch \d+/\d+: ", line)]


def train_config_file(run_dir: Path, **overrides) -> Path:
    """The trainer's config for the run folder, with the run config's knobs changed by `overrides`."""
    from ltvrec.config import RunConfig
    from ltvrec.rundir import RunDir
    from ltvrec.stages import ltv_decisions, train_config

    run = RunDir(run_dir)
    cfg = RunConfig.from_dict(run.config().to_dict() | overrides)
    path = run.train / "config.json"
    train_config(cfg, run.features, run.train, **ltv_decisions(run)).save(path)
    return path


def train(run_dir: Path, epochs: int, nproc: int) -> dict:
    """torchrun the trainer for exactly `epochs` epochs; speed from its log, peak RSS of its processes."""
    config = train_config_file(run_dir, epochs=epochs, patience=epochs + 1, refit_epochs=0, max_train_minutes=1e6)
    started = time.time()
    # a wrapper process runs torchrun, so its RUSAGE_CHILDREN peak covers the training processes only
    # (not the Spark JVMs this process started before)
    wrapper = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
               "print(f'PEAK_RSS_KB={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}'); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", wrapper, str(BIN / "torchrun"), "--standalone", f"--nproc-per-node={nproc}",
                           "-m", "models.train", "--config", str(config)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))})
    if proc.returncode != 0:
        raise SystemExit(f"training failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    peak_kb = int(re.search(r"PEAK_RSS_KB=(\d+)", proc.stdout).group(1))
    epochs_log = epoch_lines(proc.stdout)
    seconds = [float(e["epoch_seconds"]) for e in epochs_log]
    return {"wall_seconds": round(time.time() - started, 1), "seconds_per_epoch": [round(s, 1) for s in seconds],
            "sequences_per_s": [round(float(e["sequences_per_s"]), 1) for e in epochs_log],
            "val_ndcg_10": [round(float(e.get("val_ndcg_10", "nan")), 4) for e in epochs_log],
            "peak_rss_mb_largest_process": round(peak_kb / 1024, 1)}


def test_metrics(features: Path, checkpoint: Path, protocol: str = "leave_one_out") -> dict:
    """NDCG/HR@10 on the test window of every model the evaluation stage compares, `checkpoint` being ours."""
    from models.checkpoint import LoadedModel
    from models.data import FeatureSet, Protocol
    from models.evaluate import evaluate_recommendations

    fs = FeatureSet.load(features)
    rec, _ = evaluate_recommendations(fs, LoadedModel.from_file(checkpoint), Protocol.build(fs, protocol))
    return {m: {k: round(v, 4) for k, v in vals.items() if k in ("ndcg_10", "hr_10", "n_test_users")} for m, vals in rec.items()}


def dataset_stats(run_dir: Path) -> dict:
    """Users, items, events and the trainer's next-item targets per epoch (first purchases/views, no returns)."""
    from models.data import LTV_FEATURES, FeatureScaler, FeatureSet, Protocol
    from models.examples import TrainingExamples
    from models.config import TrainConfig

    fs = FeatureSet.load(run_dir / "features")
    protocol = Protocol.build(fs, "leave_one_out")
    scaler = FeatureScaler.fit(fs.ltv_frame("train"), LTV_FEATURES)
    cfg = TrainConfig.load(train_config_file(run_dir))
    examples = TrainingExamples(fs, cfg, scaler, protocol.train_end, protocol.name)
    return {"users": len(fs.users), "items": fs.n_items - 1, "events": int(sum(len(x) for x in fs.items)),
            "training_sequences": len(examples.items), "training_targets": int((examples.targets != 0).sum())}


def export_interactions(run_dir: Path, out: Path) -> Path:
    """The same events for RecBole: one row per (user, item, ts), in the trainer's order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from models.data import FeatureSet

    fs = FeatureSet.load(run_dir / "features")
    users, items, ts = [], [], []
    for u, (its, t) in enumerate(zip(fs.items, fs.ts)):
        users += [str(fs.users[u])] * len(its)
        items += [str(fs.item_ids[i - 1]) for i in its]
        ts += t.tolist()
    pq.write_table(pa.table({"user_id": users, "item_id": items, "ts": pa.array(ts, pa.int64())}), out)
    return out


def recbole(interactions: Path, epochs: int, max_len: int, d_model: int, batch: int, max_batches: int) -> dict:
    python = ROOT / ".venv-recbole" / "bin" / "python"
    if not python.exists():
        return {"skipped": "no .venv-recbole: run `make recbole-venv` first"}
    proc = subprocess.run([str(python), str(ROOT / "bench" / "recbole_sasrec.py"), "--interactions", str(interactions),
                           "--epochs", str(epochs), "--max-len", str(max_len), "--d-model", str(d_model),
                           "--batch-size", str(batch), "--eval-step", str(epochs), "--max-batches", str(max_batches)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"failed": proc.stderr[-2000:]}
    return json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--recbole", action="store_true", help="also train RecBole's SASRec on the same data")
    ap.add_argument("--recbole-max-batches", type=int, default=0,
                    help="speed probe: RecBole trains only N batches per epoch and its epoch time is extrapolated "
                         "(its test NDCG then means nothing); 0 = full epochs")
    ap.add_argument("--users-sweep", type=int, nargs="*", help="peak training RSS for these user counts (1 epoch each)")
    args = ap.parse_args()
    out: dict = {"machine_cpus": os.cpu_count(), "torch_processes": args.nproc}
    if args.users_sweep:
        out["rss_by_users"] = []
        for users in args.users_sweep:
            with tempfile.TemporaryDirectory(prefix="ltvrec-speed-") as home:
                run_dir = build_features(Path(home), users, args.items, args.seed)
                stats = dataset_stats(run_dir)
                trained = train(run_dir, 1, args.nproc)
                out["rss_by_users"].append({**stats, "peak_rss_mb": trained["peak_rss_mb_largest_process"],
                                            "seconds_per_epoch": trained["seconds_per_epoch"][0]})
        print(json.dumps(out, indent=2))
        return
    users = max(10, round(args.events / EVENTS_PER_USER))
    with tempfile.TemporaryDirectory(prefix="ltvrec-speed-") as home:
        run_dir = build_features(Path(home), users, args.items, args.seed)
        from ltvrec.rundir import RunDir

        cfg = RunDir(run_dir).config()
        out["data"] = dataset_stats(run_dir)
        out["ltvrec"] = train(run_dir, args.epochs, args.nproc)
        out["ltvrec"]["targets_per_s"] = round(out["data"]["training_targets"] / min(out["ltvrec"]["seconds_per_epoch"]), 1)
        out["ltvrec"]["test"] = test_metrics(run_dir / "features", run_dir / "train" / "final.pt")
        if args.recbole:
            rb = recbole(export_interactions(run_dir, Path(home) / "interactions.parquet"), args.epochs,
                         cfg.max_seq_len, cfg.d_model, cfg.batch_size, args.recbole_max_batches)
            out["recbole_sasrec"] = rb
            if "seconds_per_epoch" in rb:
                out["ratio_epoch_time_recbole_over_ltvrec"] = round(
                    float(min(rb["seconds_per_epoch"]) if isinstance(rb["seconds_per_epoch"], list) else rb["seconds_per_epoch"])
                    / min(out["ltvrec"]["seconds_per_epoch"]), 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
