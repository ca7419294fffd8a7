"""Train the multi-task sequential recommender, alone or under torchrun (DDP).

    python -m models.train --run-dir RUN                              # one process
    torchrun --standalone --nproc-per-node 2 -m models.train --run-dir RUN   # 2 processes, gloo on CPU
    torchrun --nnodes 2 --node-rank R --master-addr HOST --nproc-per-node 8 -m models.train --run-dir RUN

RUN is a ltvrec run folder holding config.json and the Spark features. Rank and world size come from the
environment torchrun sets; gloo on CPU, NCCL + bf16 autocast + TF32 on GPUs. Only rank 0 validates, logs
to MLflow and writes checkpoints (RUN/train/last.pt every epoch, best.pt on a new best validation
NDCG@10); a restarted run resumes from last.pt. After early stopping, `refit_epochs` more epochs train the
best model on the events of the validation window too (RUN/train/final.pt, the model that is registered).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from ltvrec.config import SAMPLED_SOFTMAX_ABOVE, RunConfig, ltvrec_home
from models.checkpoint import warm_start
from models.data import LTV_FEATURES, RETURN_CODE, FeatureScaler, FeatureSet, Protocol, epoch, pad_left
from models.ltv_prior import PRIOR_COLUMNS
from models.metrics import ranking_metrics
from models.ranking import model_topk
from models.sasrec import ModelConfig, SeqRecModel
from models.text import item_text_matrix


class TrainingExamples(Dataset):
    """Next-item chunks of each user's first ends[u] events, paired round-robin with LTV examples."""

    def __init__(self, fs: FeatureSet, cfg: RunConfig, scaler: FeatureScaler, ends: np.ndarray, protocol_name: str):
        length = cfg.max_seq_len
        inputs, types, targets, times = [], [], [], []
        for u in range(len(fs.users)):
            end = int(ends[u])
            target = position_targets(fs.items[u][:end], fs.types[u][:end], fs.ts[u][:end], cfg.target,
                                      cfg.repeat_targets)
            stop = end - 1  # the last event has no successor
            while stop > 0:  # chunks of `length` input positions, from the most recent backwards
                start = max(0, stop - length)
                if target[start:stop].any():
                    inputs.append(fs.items[u][start:stop]), types.append(fs.types[u][start:stop])
                    targets.append(target[start:stop]), times.append(fs.ts[u][start:stop])
                stop = start
        self.has_rec = bool(inputs)
        if not inputs:  # e.g. a one-item catalogue: every later event repeats an item the user already has
            print(f"no next-item targets before the validation window ({protocol_name} protocol): no user has a "
                  "new item after a first event; the recommender part is skipped, only the LTV head learns", flush=True)
            inputs, types, targets = [np.zeros(1, np.int64)], [np.zeros(1, np.int64)], [np.zeros(1, np.int64)]
            times = [np.zeros(1, np.int64)]
        # event times only where the model embeds the time between events (cfg.time_gaps)
        self.ts = torch.as_tensor(pad_left(times, length)) if cfg.time_gaps else None
        self.items = torch.as_tensor(pad_left(inputs, length))
        self.types = torch.as_tensor(pad_left(types, length))
        self.targets = torch.as_tensor(pad_left(targets, length))

        # every training cut-off's customers, each with the history before that cut-off
        frames = [fs.ltv_frame(name) for name in fs.ltv_train_cutoffs()]
        ltv = pd.concat(frames, ignore_index=True)
        self.has_ltv = len(ltv) > 0
        if self.has_ltv:
            self.ltv_feats = torch.as_tensor(scaler.transform(ltv))
            self.ltv_label = torch.as_tensor(ltv["label_value"].to_numpy(dtype=np.float32))
        else:  # no customers (e.g. ratings-only data): the LTV loss is masked out
            self.ltv_feats = torch.zeros(1, scaler.mean.shape[0])
            self.ltv_label = torch.zeros(1)
        # the customers' histories before their cut-off, only where the LTV head reads the user vector
        self.ltv_history: dict[str, torch.Tensor] = {}
        if cfg.ltv_user_dim:
            keys = ["ltv_items", "ltv_types"] + (["ltv_ts"] if cfg.time_gaps else [])
            seqs = {key: [] for key in keys}
            for name, frame in zip(fs.ltv_train_cutoffs(), frames):
                _, *history = fs.histories(epoch(fs.split["ltv_cutoffs"][name]), frame["user_pos"].to_numpy())
                for key, part in zip(keys, history):
                    seqs[key] += part
            self.ltv_history = {key: torch.as_tensor(pad_left(s, length)) if self.has_ltv
                                else torch.ones(1, length, dtype=torch.long) for key, s in seqs.items()}
        self.ltv_prior = None  # set where the head corrects the prior (models/ltv_prior.py)
        if "ltv_prior" in scaler.features:
            self.ltv_prior = torch.as_tensor(ltv["ltv_prior"].to_numpy(dtype=np.float32)) if self.has_ltv else torch.ones(1)
        if not (self.has_rec or self.has_ltv):
            raise ValueError(f"nothing to train on before the validation window ({protocol_name} protocol): no user has "
                             "a new item after a first event and no customer has a purchase before the LTV cut-off")

    def __len__(self) -> int:
        return max(len(self.items), len(self.ltv_label) if self.has_ltv else 0)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        r, j = i % len(self.items), i % len(self.ltv_label)
        extra = {key: values[j] for key, values in self.ltv_history.items()}
        if self.ltv_prior is not None:
            extra["ltv_prior"] = self.ltv_prior[j]
        if self.ts is not None:
            extra["ts"] = self.ts[r]
        return extra | {
            "items": self.items[r], "types": self.types[r], "targets": self.targets[r],
            "ltv_feats": self.ltv_feats[j], "ltv_label": self.ltv_label[j], "ltv_mask": torch.tensor(float(self.has_ltv)),
        }


def first_occurrence(items: np.ndarray) -> np.ndarray:
    """True where an item appears for the first time in the sequence."""
    first = np.zeros(len(items), dtype=bool)
    first[np.unique(items, return_index=True)[1]] = True
    return first


def position_targets(items: np.ndarray, types: np.ndarray, ts: np.ndarray, kind: str, repeats: bool) -> np.ndarray:
    """The training target of each position of one user's events (0: none).

    A return is never a target; an item the user already had is not one either unless `repeats`, because
    evaluation and scoring recommend only items new to the user.
    next_item: the next event's item.
    next_basket: an item of the next basket (the next group of events sharing a timestamp), the basket's
    usable items assigned round-robin to the positions of the current basket. At prediction time the history
    ends with a complete basket and the question is the next visit; within-basket order (invoice line
    order) says little about it. With distinct timestamps this equals next_item.
    """
    usable = types != RETURN_CODE
    if not repeats:
        usable &= first_occurrence(items)
    target = np.zeros(len(items), dtype=np.int64)
    if kind == "next_item":
        target[:-1] = np.where(usable[1:], items[1:], 0)
        return target
    if kind != "next_basket":
        raise ValueError(f"unknown training target {kind!r}: use next_item or next_basket")
    starts = np.flatnonzero(np.r_[True, ts[1:] != ts[:-1]])  # first event of each basket
    bounds = np.r_[starts, len(items)]
    for g in range(len(starts) - 1):
        candidates = items[bounds[g + 1]:bounds[g + 2]][usable[bounds[g + 1]:bounds[g + 2]]]
        if len(candidates):
            size = bounds[g + 1] - bounds[g]
            target[bounds[g]:bounds[g + 1]] = candidates[np.arange(size) % len(candidates)]
    return target


def validate(model: SeqRecModel, fs: FeatureSet, protocol: Protocol, max_users: int = 5000) -> dict[str, float]:
    """Full-ranking NDCG/HR@10 on the validation window (seen items excluded)."""
    users, targets = fs.holdout(protocol.train_end, protocol.valid_end)
    users, targets = users[:max_users], targets[:max_users]
    if len(users) == 0:
        return {}
    its, tys, times = fs.prefixes(protocol.train_end, users)
    topk, _, _ = model_topk(model, its, tys, k=10, ts=times)
    return ranking_metrics(topk, targets, ks=(10,))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Train ltvrec's sequential recommender + LTV head")
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--init-from", type=Path, default=None,
                    help="checkpoint to warm-start from (e.g. the current champion's best.pt)")
    args = ap.parse_args(argv)
    run_dir: Path = args.run_dir
    cfg = RunConfig.load(run_dir)
    out_dir = run_dir / "train"

    ddp = "RANK" in os.environ
    use_cuda = torch.cuda.is_available() and os.environ.get("LTVREC_TRAIN_DEVICE", "auto") != "cpu"
    if ddp:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
    else:
        rank, world, local_rank = 0, 1, 0
    master = rank == 0
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_cuda else nullcontext()
    torch.manual_seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)

    fs = FeatureSet.load(run_dir / "features")
    train_ltv = pd.concat([fs.ltv_frame(name) for name in fs.ltv_train_cutoffs()], ignore_index=True)
    # the prior (models/ltv_prior.py, fitted by the ltv_prior stage) enters as mu's offset and as features
    use_prior = cfg.ltv_prior and "ltv_prior" in fs.ltv.columns
    features = LTV_FEATURES + (PRIOR_COLUMNS if use_prior else [])
    scaler = FeatureScaler.fit(train_ltv, features) if len(train_ltv) else FeatureScaler(
        mean=np.zeros(len(features)), std=np.ones(len(features)), features=features)
    protocol = Protocol.build(fs, cfg.eval_protocol)
    data = TrainingExamples(fs, cfg, scaler, protocol.train_end, protocol.name)
    item_text = None
    if cfg.item_text:  # encoded once by rank 0 (cached by text digest), then read by every rank
        text_path = out_dir / "item_text.npy"
        if master and not text_path.exists():
            item_text_matrix(run_dir / "features", text_path, ltvrec_home() / "cache" / "item_text_minilm.parquet")
        if ddp:
            dist.barrier()
        item_text = np.load(text_path)
    mcfg = ModelConfig(n_items=fs.n_items, n_ltv_features=len(scaler.mean), max_len=cfg.max_seq_len,
                       d_model=cfg.d_model, n_heads=cfg.n_heads, n_layers=cfg.n_layers, dropout=cfg.dropout,
                       text_dim=0 if item_text is None else item_text.shape[1], time_gaps=cfg.time_gaps, ltv_sigma_max=cfg.ltv_sigma_max or None,
                       ltv_user_dim=cfg.ltv_user_dim, ltv_prior=use_prior, ltv_correction_weight=cfg.ltv_correction_weight if use_prior else 1.0)
    model = SeqRecModel(mcfg)
    if item_text is not None:
        model.item_text.copy_(torch.as_tensor(item_text))
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    state = {"epoch": 0, "best_ndcg": -1.0, "best_epoch": -1, "bad_epochs": 0, "init": "scratch", "stopped": False,
             "refit_done": 0}
    if args.init_from:
        carried = warm_start(model, torch.load(args.init_from, map_location=device, weights_only=False), fs.item_ids.tolist())
        state["init"] = f"warm start from {args.init_from}: {carried}"
        if master:
            print(state["init"], flush=True)
    last_path = out_dir / "last.pt"
    if last_path.exists():  # resume after an interrupted run
        ckpt = torch.load(last_path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        if master:
            print(f"resuming from {last_path} after epoch {state['epoch']}", flush=True)
    raw_model = model
    if ddp:
        model = DDP(model, device_ids=[local_rank] if use_cuda else None)

    sampled = cfg.loss == "sampled" or (cfg.loss == "auto" and fs.n_items - 1 > SAMPLED_SOFTMAX_ABOVE)
    if sampled:  # Q: smoothed target popularity; negatives shared by the batch, drawn with replacement
        counts = torch.bincount(data.targets.flatten(), minlength=fs.n_items).double()
        q = (counts + 1.0) ** 0.75
        q[0] = 0.0
        q = (q / q.sum()).float().to(device)
        log_q = torch.log(q.clamp(min=1e-12))
        sampler_gen = torch.Generator(device=device).manual_seed(cfg.seed + rank)

    def loader_for(examples: TrainingExamples) -> DataLoader:
        sampler = DistributedSampler(examples, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed) if ddp else None
        # the global batch is cfg.batch_size whatever the world size, so N processes follow 1 process's recipe
        return DataLoader(examples, batch_size=max(1, cfg.batch_size // world), shuffle=sampler is None, sampler=sampler)

    def train_epoch(loader: DataLoader, ep: int, desc: str) -> dict[str, float]:
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(ep)
        model.train()
        t0, seen, totals = time.time(), 0, np.zeros(2)
        bar = tqdm(loader, desc=desc, disable=not master, unit="batch", leave=False)
        for batch in bar:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            if sampled:
                batch["neg_items"] = torch.multinomial(q, cfg.n_negatives, replacement=True, generator=sampler_gen)
                batch["log_q"] = log_q
            with autocast:
                losses = model(batch)
            loss = losses["rec_loss"] + cfg.ltv_weight * losses["ltv_loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            seen += len(batch["items"]) * world
            totals += [losses["rec_loss"].item(), losses["ltv_loss"].item()]
            bar.set_postfix(loss=f"{loss.item():.3f}", seq_s=f"{seen / (time.time() - t0):.0f}")
        seconds = time.time() - t0
        n_batches = max(1, len(loader))
        return {"rec_loss": totals[0] / n_batches, "ltv_loss": totals[1] / n_batches,
                "epoch_seconds": seconds, "sequences_per_s": seen / seconds}

    def save_last() -> None:
        ckpt = _checkpoint(raw_model, cfg, fs, scaler, state)
        torch.save({**ckpt, "optimizer": optimizer.state_dict()}, out_dir / "last.tmp")
        os.replace(out_dir / "last.tmp", last_path)  # atomic: a kill never leaves half a checkpoint

    mlflow_run_id = json.loads((run_dir / "mlflow.json").read_text())["run_id"] if master else None
    tracking = _mlflow_run(mlflow_run_id) if master else nullcontext()
    t_start = time.time()
    with tracking:
        if master and state["epoch"] == 0:
            import mlflow

            params = {f"model_{k}": v for k, v in asdict(mcfg).items()}
            params |= {"world_size": world, "device": device.type, "train_sequences": len(data.items),
                       "ltv_train_customers": len(data.ltv_label) if data.has_ltv else 0}
            logged = mlflow.get_run(mlflow_run_id).data.params  # a retried task must not re-log changed params
            params["rec_loss_kind"] = "sampled_softmax_logq" if sampled else "full_softmax"
            mlflow.log_params({k: v for k, v in params.items() if k not in logged})
        loader = loader_for(data)
        stop = torch.zeros(1)
        for ep in range(state["epoch"], 0 if state.get("stopped") else cfg.epochs):
            metrics = train_epoch(loader, ep, f"epoch {ep + 1}/{cfg.epochs}")
            if master:
                val = validate(raw_model, fs, protocol)
                ndcg = val.get("ndcg_10", 0.0)
                state["epoch"] = ep + 1
                improved = ndcg > state["best_ndcg"]
                if improved:
                    state.update(best_ndcg=ndcg, best_epoch=ep + 1, bad_epochs=0)
                else:
                    state["bad_epochs"] += 1
                out_dir.mkdir(parents=True, exist_ok=True)
                if improved:
                    torch.save(_checkpoint(raw_model, cfg, fs, scaler, state), out_dir / "best.pt")
                save_last()
                metrics |= {f"val_{k}": v for k, v in val.items()}
                _log_epoch(metrics, ep + 1)
                out_of_time = (time.time() - t_start) / 60 > cfg.max_train_minutes
                stop[0] = float(state["bad_epochs"] >= cfg.patience or out_of_time)
            if ddp:
                dist.broadcast(stop, src=0)
            if stop.item():
                break
        state["stopped"] = True
        if master:
            save_last()
        if state.get("refit_done", 0) < cfg.refit_epochs:
            # Refit: the validation window chose the epoch count; now let the best model also learn from that
            # window (the most recent data: new items, current trends). The test window stays unseen.
            if ddp:
                dist.barrier()  # best.pt and last.pt are written
            if state.get("refit_done", 0) == 0:  # (a resumed refit has its weights and optimizer from last.pt)
                raw_model.load_state_dict(torch.load(out_dir / "best.pt", map_location=device, weights_only=False)["model"])
                optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            refit_loader = loader_for(TrainingExamples(fs, cfg, scaler, protocol.valid_end, protocol.name))
            for i in range(state.get("refit_done", 0), cfg.refit_epochs):
                metrics = train_epoch(refit_loader, cfg.epochs + i, f"refit {i + 1}/{cfg.refit_epochs}")
                state["refit_done"] = i + 1
                if master:
                    torch.save(_checkpoint(raw_model, cfg, fs, scaler, state), out_dir / "final.tmp")
                    os.replace(out_dir / "final.tmp", out_dir / "final.pt")
                    save_last()
                    _log_epoch({f"refit_{k}": v for k, v in metrics.items()}, state["epoch"] + i + 1)
        elif master and not (out_dir / "final.pt").exists():
            shutil.copy(out_dir / "best.pt", out_dir / "final.pt")
        if master:
            _finish(run_dir, out_dir, state, time.time() - t_start, world, device)
    if ddp:
        dist.destroy_process_group()


def _log_epoch(metrics: dict[str, float], step: int) -> None:
    import mlflow

    mlflow.log_metrics(metrics, step=step)
    print(f"epoch {step}: " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()), flush=True)


def _mlflow_run(run_id: str):
    import mlflow

    return mlflow.start_run(run_id=run_id)


def _checkpoint(model: SeqRecModel, cfg: RunConfig, fs: FeatureSet, scaler: FeatureScaler, state: dict) -> dict:
    return {
        "model": model.state_dict(),
        "model_config": asdict(model.cfg),
        "run_config": cfg.to_dict(),
        "item_ids": fs.item_ids.tolist(),
        "item_price": fs.item_price.tolist(),
        "scaler": scaler.to_dict(),
        "state": dict(state),
    }


def _finish(run_dir: Path, out_dir: Path, state: dict, seconds: float, world: int, device: torch.device) -> None:
    """Log the final checkpoint as an MLflow PyTorch model (the checkpoint travels as an extra file)."""
    import mlflow

    ckpt = torch.load(out_dir / "final.pt", map_location="cpu", weights_only=False)
    model = SeqRecModel(ModelConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    info = mlflow.pytorch.log_model(
        model, name="model", extra_files=[str(out_dir / "final.pt")], serialization_format="pickle",
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy", "pandas"],
    )
    mlflow.log_metrics({"best_val_ndcg_10": state["best_ndcg"], "best_epoch": state["best_epoch"],
                        "train_seconds": seconds})
    result = {"model_uri": info.model_uri, "model_id": info.model_id, "init": state["init"], "best_epoch": state["best_epoch"],
              "epochs_run": state["epoch"], "refit_epochs": state["refit_done"], "best_val_ndcg_10": state["best_ndcg"], "train_seconds": seconds,
              "world_size": world, "device": device.type}
    (out_dir / "result.json").write_text(json.dumps(result, indent=2))
    print(f"training done: {json.dumps(result)}", flush=True)


if __name__ == "__main__":
    main()
