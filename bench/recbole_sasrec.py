"""Reference benchmark: RecBole's SASRec on the same interactions and machine as our model.

    make recbole-venv
    .venv-recbole/bin/python bench/recbole_sasrec.py --interactions FILE.parquet [--epochs 5] [--max-len 50]
        [--d-model 64] [--batch-size 128] [--eval-protocol leave_one_out] [--threads N] [--max-batches N]

FILE.parquet: columns user_id (string), item_id (string), ts (int64 epoch seconds), one row per implicit interaction.
It is written as RecBole atomic files (.inter) into a temporary directory, then SASRec is trained with the full-softmax
CE loss (no negative sampling), leave-one-out split ordered by time, full ranking over all items, NDCG@10 / Hit@10,
selection of the best epoch on validation NDCG@10, test at that epoch. Runs on CPU with torch threads = os.cpu_count().

Prints ONE JSON object to stdout; RecBole's logs go to stderr (and to a log file in the temporary directory, kept with
--keep-tmp). Needs the separate virtualenv of `make recbole-venv` (RecBole 1.2.1 wants numpy < 2; ray, thop and
plotly are not installed because nothing here imports them).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--interactions", required=True, help="parquet with user_id, item_id, ts")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--max-len", type=int, default=50, help="MAX_ITEM_LIST_LENGTH")
    p.add_argument("--d-model", type=int, default=64, help="hidden_size (inner_size = 4 x d-model, as ours)")
    p.add_argument("--batch-size", type=int, default=128, help="train_batch_size")
    p.add_argument("--eval-protocol", default="leave_one_out", choices=["leave_one_out"])
    p.add_argument("--eval-step", type=int, default=1, help="validate every N epochs (the last epoch always counts: N is capped at --epochs)")
    p.add_argument("--eval-batch-size", type=int, default=2048, help="sequences per full-ranking batch")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (RecBole default)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    p.add_argument("--max-batches", type=int, default=0,
                   help="speed probe: train only N batches per epoch; seconds_per_epoch is then extrapolated to the full epoch")
    p.add_argument("--progress", action="store_true", help="RecBole tqdm bars (stderr)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary dir (atomic files, RecBole log)")
    return p.parse_args(argv)


def write_atomic_files(path: str, root: Path, name: str) -> dict:
    """user_id/item_id strings -> integer tokens (safe in a tab-separated file); rows sorted by user, then time (stable)."""
    import pandas as pd

    df = pd.read_parquet(path, columns=["user_id", "item_id", "ts"]).dropna()
    users, _ = pd.factorize(df["user_id"].astype(str), sort=False)
    items, _ = pd.factorize(df["item_id"].astype(str), sort=False)
    inter = pd.DataFrame({"user_id:token": users, "item_id:token": items, "timestamp:float": df["ts"].astype("int64").to_numpy()})
    inter = inter.sort_values(["user_id:token", "timestamp:float"], kind="stable")
    (root / name).mkdir(parents=True)
    inter.to_csv(root / name / f"{name}.inter", sep="\t", index=False)
    return {"n_users": int(users.max()) + 1, "n_items": int(items.max()) + 1, "n_interactions": len(inter)}


class Limited:
    """The first n batches of a RecBole dataloader (for --max-batches); everything else is delegated."""

    def __init__(self, loader, n):
        self._loader, self._n = loader, n

    def __iter__(self):
        return itertools.islice(iter(self._loader), self._n)

    def __len__(self):
        return min(self._n, len(self._loader))

    def __getattr__(self, name):
        return getattr(self._loader, name)


def main(argv=None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    json_out = sys.stdout
    warnings.filterwarnings("ignore", category=FutureWarning)  # pandas 2.x / torch.amp deprecations inside RecBole
    sys.stdout = sys.stderr  # anything RecBole (or a library) prints must not reach stdout

    import numpy as np
    import torch

    threads = args.threads
    torch.set_num_threads(threads)

    interactions = os.path.abspath(args.interactions)
    tmp = Path(tempfile.mkdtemp(prefix="recbole_sasrec_"))
    cwd = os.getcwd()
    try:
        stats = write_atomic_files(interactions, tmp / "dataset", "bench")
        os.chdir(tmp)  # RecBole writes ./log, ./log_tensorboard and ./saved relative to the working directory
        result = run(args, stats, tmp, threads)
    finally:
        os.chdir(cwd)
        if args.keep_tmp:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    import recbole

    result = {
        "recbole_version": recbole.__version__,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "torch_threads": threads,
        **result,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result), file=json_out, flush=True)


def run(args: argparse.Namespace, stats: dict, tmp: Path, threads: int) -> dict:
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_logger, init_seed

    class BenchTrainer(Trainer):
        """Times each training epoch and validation; keeps the best weights in memory instead of a checkpoint file
        (so no torch.load, whose weights_only=True default since torch 2.6 rejects RecBole's pickled Config)."""

        def __init__(self, config, model):
            super().__init__(config, model)
            self.epoch_seconds, self.valid_seconds, self.history = [], [], []
            self.best_state, self.best_epoch = None, None

        def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
            data = Limited(train_data, args.max_batches) if args.max_batches else train_data
            t = time.perf_counter()
            loss = super()._train_epoch(data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
            seconds = time.perf_counter() - t
            batches = min(len(train_data), args.max_batches or len(train_data))
            self.epoch_seconds.append(seconds * len(train_data) / batches)  # = seconds unless --max-batches
            self.history.append({"epoch": epoch_idx, "train_seconds": round(seconds, 2), "batches": batches,
                                 "loss": round(float(sum(loss) if isinstance(loss, tuple) else loss) / batches, 4)})
            return loss

        def _valid_epoch(self, valid_data, show_progress=False):
            t = time.perf_counter()
            score, res = super()._valid_epoch(valid_data, show_progress=show_progress)
            self.valid_seconds.append(time.perf_counter() - t)
            self.history[-1].update(valid_seconds=round(self.valid_seconds[-1], 2), valid_ndcg10=round(float(score), 4))
            return score, res

        def _save_checkpoint(self, epoch, verbose=True, **kwargs):
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.best_epoch = epoch

    config_dict = {
        # environment
        "data_path": str(tmp / "dataset"), "checkpoint_dir": str(tmp / "saved"),
        "use_gpu": False, "gpu_id": "", "device": "cpu", "worker": 0,
        "seed": args.seed, "reproducibility": True, "show_progress": args.progress, "log_wandb": False,
        # data
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": args.max_len,
        # model (as ours: 2 layers, 2 heads, dropout 0.2, FFN 4 x d_model, GELU)
        "hidden_size": args.d_model, "inner_size": 4 * args.d_model, "n_layers": 2, "n_heads": 2,
        "hidden_dropout_prob": 0.2, "attn_dropout_prob": 0.2, "hidden_act": "gelu", "loss_type": "CE",
        # training
        "epochs": args.epochs, "train_batch_size": args.batch_size, "learner": "adam", "learning_rate": args.lr,
        "train_neg_sample_args": None, "eval_step": args.eval_step, "stopping_step": 10,
        # evaluation: leave-one-out by time, full ranking
        "eval_args": {"split": {"LS": "valid_and_test"}, "group_by": "user", "order": "TO", "mode": "full"},
        "metrics": ["NDCG", "Hit"], "topk": [10], "valid_metric": "NDCG@10", "eval_batch_size": args.eval_batch_size,
    }
    sys.argv = sys.argv[:1]  # RecBole's Config would also parse our --key=value arguments as config overrides
    config = Config(model="SASRec", dataset="bench", config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    torch.set_num_threads(threads)

    t = time.perf_counter()
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    prep_seconds = time.perf_counter() - t

    init_seed(config["seed"], config["reproducibility"])
    model = SASRec(config, train_data._dataset).to(config["device"])
    trainer = BenchTrainer(config, model)
    trainer.fit(train_data, valid_data, saved=True, show_progress=config["show_progress"])

    best_valid = trainer.best_valid_result or {}
    if trainer.best_state is not None:
        model.load_state_dict(trainer.best_state)
    t = time.perf_counter()
    test = trainer.evaluate(test_data, load_best_model=False, show_progress=config["show_progress"])
    test_seconds = time.perf_counter() - t

    samples = len(train_data._dataset)
    sec = sum(trainer.epoch_seconds) / max(len(trainer.epoch_seconds), 1)
    return {
        "n_users": dataset.user_num - 1,  # RecBole counts the [PAD] token
        "n_items": dataset.item_num - 1,
        "n_interactions": stats["n_interactions"],
        "eval_protocol": args.eval_protocol,
        "params": {"max_len": args.max_len, "d_model": args.d_model, "batch_size": args.batch_size, "lr": args.lr,
                   "epochs": args.epochs, "eval_step": trainer.eval_step, "seed": args.seed, "loss": "CE (full softmax)"},
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "train_samples_per_epoch": samples,
        "epochs_run": len(trainer.epoch_seconds),
        "seconds_per_epoch": round(sec, 2),
        "seconds_per_epoch_extrapolated": bool(args.max_batches and args.max_batches < len(train_data)),
        "train_sequences_per_s": round(samples / sec, 1) if sec else None,
        "best_epoch": trainer.best_epoch,
        "best_valid": {"ndcg@10": best_valid.get("ndcg@10"), "hit@10": best_valid.get("hit@10")},
        "test": {"ndcg@10": test.get("ndcg@10"), "hit@10": test.get("hit@10")},
        "valid_users": len(valid_data._dataset), "test_users": len(test_data._dataset),
        "prep_seconds": round(prep_seconds, 1),
        "test_seconds": round(test_seconds, 1),
        "history": trainer.history,
    }


if __name__ == "__main__":
    main()
