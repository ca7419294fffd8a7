"""Train the multi-task sequential recommender, alone or under torchrun (DDP).

    python -m models.train --config RUN/train/config.json                                    # one process
    torchrun --standalone --nproc-per-node 2 -m models.train --config RUN/train/config.json  # 2 processes, gloo on CPU
    torchrun --nnodes 2 --node-rank R --master-addr HOST --nproc-per-node 8 -m models.train --config CONFIG

CONFIG is a `TrainConfig` (models/config.py, JSON) that the pipeline's train stage writes: where the Spark
features are, where to write, and the model and training knobs; what a batch holds is built in models/examples.py. Rank and world size come from the
environment torchrun sets; gloo on CPU, NCCL + bf16 autocast + TF32 on GPUs. Only rank 0 validates, logs (one
line per epoch, the progress file, MLflow) and writes into out_dir: last.pt every epoch, best.pt on a new best
validation NDCG@10; a restarted run resumes from last.pt. After early stopping, `refit_epochs` more epochs train
the best model on the events of the validation window too (final.pt, the model that is registered). result.json
sums the run up, with `notes`: what the trainer decided that a person should know.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from models.checkpoint import LoadedModel, warm_start
from models.config import SAMPLED_SOFTMAX_ABOVE, TrainConfig
from models.continual import feature_profile, recent_and_replayed
from models.data import LTV_FEATURES, FeatureScaler, FeatureSet, Protocol, epoch
from models.examples import LengthBatches, NegativeSampler, TrainingExamples, fit_scaler, trim_padding
from models.metrics import ranking_metrics
from models.ranking import model_topk
from models.sasrec import ModelConfig, SeqRecModel
from models.text import item_text_matrix

@dataclass
class Runtime:
    """This process: under torchrun (RANK, LOCAL_RANK, WORLD_SIZE in the environment) or alone. Rank 0 is the
    master: it validates, logs and writes the checkpoints."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    ddp: bool

    @classmethod
    def start(cls) -> "Runtime":
        ddp = "RANK" in os.environ
        cuda = torch.cuda.is_available() and os.environ.get("LTVREC_TRAIN_DEVICE", "auto") != "cpu"
        if ddp:
            dist.init_process_group(backend="nccl" if cuda else "gloo")
        rank, world = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
        local_rank = int(os.environ.get("LOCAL_RANK", 0)) if ddp else 0
        device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(device)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        else:  # the machine's cores, shared by this node's processes
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
        return cls(rank, world, local_rank, device, ddp)

    @property
    def master(self) -> bool:
        return self.rank == 0

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()

    def barrier(self) -> None:
        if self.ddp:
            dist.barrier()

    def rank0_says(self, flag: bool) -> bool:
        """Rank 0's flag, on every rank."""
        return bool(self.rank0_value(float(flag)))

    def rank0_value(self, value: float) -> float:
        """Rank 0's number, on every rank."""
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        if self.ddp:
            dist.broadcast(tensor, src=0)
        return float(tensor.item())

    @contextmanager
    def node_cores(self):
        """On CPU, this process uses all of the node's cores meanwhile: for rank 0's validation, while this node's
        other processes wait for it."""
        if self.device.type != "cpu":
            yield
            return
        threads = torch.get_num_threads()
        torch.set_num_threads(os.cpu_count() or threads)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def close(self) -> None:
        if self.ddp:
            dist.destroy_process_group()


@dataclass
class TrainState:
    """Where training stands: saved in every checkpoint, restored on resume."""

    epoch: int = 0  # training-phase epochs done
    best_ndcg: float = -1.0  # best validation NDCG@10 (-1: none yet)
    best_epoch: int = -1
    bad_epochs: int = 0  # epochs since the best
    stopped: bool = False  # the training phase is over
    refit_done: int = 0  # refit epochs done
    planned_epochs: int = 0  # training epochs the learning rate decays over (0: not planned yet; see plan_epochs)
    init: str = "scratch"
    notes: list[str] = field(default_factory=list)  # for people (result.json)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def best_val(self) -> float | None:
        return None if self.best_ndcg < 0 else self.best_ndcg


WARMUP_STEPS = 100  # at most: never longer than the first epoch
FINAL_LR_SHARE = 0.1  # the cosine decay ends at this share of cfg.lr


def learning_rate(cfg: TrainConfig, step: int, steps_per_epoch: int, planned_epochs: int) -> float:
    """The learning rate of optimizer step `step` (0-based) of the training phase: a linear warm-up over the first
    epoch's first WARMUP_STEPS steps, then, with lr_schedule "cosine", a cosine decay from cfg.lr to
    FINAL_LR_SHARE x cfg.lr at the end of the planned epochs (cfg.lr is held while none are planned)."""
    warmup = max(1, min(WARMUP_STEPS, steps_per_epoch))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.lr_schedule == "constant" or planned_epochs <= 0:
        return cfg.lr
    progress = min(1.0, (step - warmup) / max(1, planned_epochs * steps_per_epoch - 1 - warmup))
    return cfg.lr * (FINAL_LR_SHARE + (1 - FINAL_LR_SHARE) * 0.5 * (1 + math.cos(math.pi * progress)))


def plan_epochs(cfg: TrainConfig, epochs_done: int, epochs_timed: int, seconds_timed: float) -> int:
    """How many training epochs the schedule decays over: the explicit limit `epochs`, or fewer when the time budget
    (max_train_minutes; `epochs_timed` epochs, validation included, took `seconds_timed` in this process) ends
    training first. Early stopping may still end it sooner."""
    pace = seconds_timed / max(1, epochs_timed)
    remaining = cfg.max_train_minutes * 60 - seconds_timed
    fit_in_budget = epochs_done + max(0, math.ceil(remaining / pace)) if pace > 0 else epochs_done
    return min(cfg.epochs, fit_in_budget) if cfg.epochs else fit_in_budget


def validate(model: SeqRecModel, fs: FeatureSet, protocol: Protocol, max_users: int = 5000) -> dict[str, float]:
    """Full-ranking NDCG/HR@10 on the validation window (seen items excluded)."""
    users, targets = fs.holdout(protocol.train_end, protocol.valid_end)
    users, targets = users[:max_users], targets[:max_users]
    if len(users) == 0:
        return {}
    its, tys, times = fs.prefixes(protocol.train_end, users)
    topk, _, _ = model_topk(model, its, tys, k=10, ts=times)
    return ranking_metrics(topk, targets, ks=(10,))


def build_model(cfg: TrainConfig, fs: FeatureSet, scaler: FeatureScaler, use_prior: bool,
                item_text: np.ndarray | None) -> SeqRecModel:
    model = SeqRecModel(ModelConfig(
        n_items=fs.n_items, n_ltv_features=len(scaler.features), n_event_types=len(fs.event_types) + 1,
        max_len=cfg.max_seq_len, d_model=cfg.d_model, n_heads=cfg.n_heads, n_layers=cfg.n_layers, dropout=cfg.dropout,
        text_dim=0 if item_text is None else item_text.shape[1], time_gaps=cfg.time_gaps,
        ltv_user_dim=cfg.ltv_user_dim, ltv_sigma_max=cfg.ltv_sigma_max, ltv_prior=use_prior,
        ltv_correction_weight=cfg.ltv_correction_weight if use_prior else 1.0, ltv_level=cfg.ltv_level))
    if item_text is not None:
        model.item_text.copy_(torch.as_tensor(item_text))
    return model


def write_json(path: Path, value) -> None:
    """Atomically (a temporary file, then os.replace): a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2))
    os.replace(tmp, path)


class Progress:
    """Rank 0's progress file (phase, epoch, batch, throughput, best validation NDCG@10), rewritten at most about
    once a second and at every epoch end. Without a path, nothing is written."""

    def __init__(self, path: str | None):
        self.path = Path(path) if path else None
        self.fields: dict = {}
        self.written_at = 0.0

    def update(self, force: bool = False, **fields) -> None:
        self.fields |= fields
        if self.path is None or (not force and time.time() - self.written_at < 1.0):
            return
        write_json(self.path, self.fields)
        self.written_at = time.time()


class Checkpointer:
    """Rank 0's checkpoints in out_dir: last.pt after every epoch (with the optimizer: a killed run resumes from
    it), best.pt at each better validation NDCG@10, final.pt (the registered model) after each refit epoch. Each
    write is atomic: a kill never leaves half a checkpoint."""

    def __init__(self, out_dir: Path, cfg: TrainConfig, fs: FeatureSet, scaler: FeatureScaler):
        self.out_dir = out_dir
        self.fixed = {"train_config": asdict(cfg), "item_ids": fs.item_ids.tolist(),
                      "item_price": fs.item_price.tolist(), "scaler": scaler.to_dict(),
                      "horizon_days": fs.split["horizon_days"], "lineage": lineage(cfg, fs)}

    def path(self, name: str) -> Path:
        return self.out_dir / f"{name}.pt"

    def save(self, name: str, model: SeqRecModel, state: TrainState, optimizer=None) -> None:
        ckpt = {"model": model.state_dict(), "model_config": asdict(model.cfg), **self.fixed, "state": asdict(state)}
        if optimizer is not None:
            ckpt["optimizer"] = optimizer.state_dict()
        torch.save(ckpt, self.out_dir / f"{name}.tmp")
        os.replace(self.out_dir / f"{name}.tmp", self.path(name))

    def load(self, name: str, device: torch.device) -> dict | None:
        path = self.path(name)
        return torch.load(path, map_location=device, weights_only=False) if path.exists() else None


def lineage(cfg: TrainConfig, fs: FeatureSet) -> dict:
    """What a later run's continual-training checks read (models/continual.py): the data end these weights learned
    up to (the refit's or a continued run's window ends where the test window starts), the continued runs behind
    them, and the profile of the training cut-off's customers' LTV features."""
    if cfg.eval_protocol == "leave_one_out":
        until = fs.split["end"]
    else:
        until = fs.split["test_start"] if cfg.refit_epochs or cfg.continual_since else fs.split["valid_start"]
    customers = fs.ltv_frame("train") if "train" in fs.split["ltv_cutoffs"] else pd.DataFrame()
    return {"trained_until": until, "continued_runs": cfg.continued_runs,
            "ltv_profile": feature_profile(customers, LTV_FEATURES) if len(customers) else {}}


class Trainer:
    """One training run: data, model, optimizer, checkpoints, and where training stands."""

    def __init__(self, cfg: TrainConfig, rt: Runtime):
        self.cfg, self.rt, self.out_dir = cfg, rt, Path(cfg.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.state = TrainState()
        self.fs = FeatureSet.load(Path(cfg.features_dir))
        # the prior (models/ltv_prior.py, fitted by the ltv_prior stage) enters as mu's offset and as features
        use_prior = cfg.ltv_prior and "ltv_prior" in self.fs.ltv.columns
        self.scaler = fit_scaler(self.fs, use_prior)
        self.protocol = Protocol.build(self.fs, cfg.eval_protocol)
        self.examples = self.training_examples(self.continual_ends() if cfg.continual_since
                                               else self.protocol.train_end)
        self.raw_model = build_model(cfg, self.fs, self.scaler, use_prior, self.item_text()).to(rt.device)
        self.optimizer = self.new_optimizer()
        self.checkpoints = Checkpointer(self.out_dir, cfg, self.fs, self.scaler)
        self.warm_start_or_resume()
        # an explicit limit plans the decay from the first step; the time budget may shorten the plan later
        self.state.planned_epochs = self.state.planned_epochs or (cfg.epochs or 0)
        self.model = self.raw_model
        if rt.ddp:
            self.model = DDP(self.raw_model, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None)
        self.negatives = self.negative_sampler()
        self.progress = Progress(cfg.progress_file if rt.master else None)
        self.tracking, self.started = None, time.time()

    def training_examples(self, ends: np.ndarray) -> TrainingExamples:
        examples = TrainingExamples(self.fs, self.cfg, self.scaler, ends, self.protocol.name)
        for text in examples.notes:
            self.state.note(text)
        return examples

    def continual_ends(self) -> np.ndarray:
        """A continued run's examples, up to the validation window's end (the champion's weights already had the
        earlier windows): the users with events since the champion's data end, a replay sample of the others."""
        since, ends = epoch(self.cfg.continual_since), self.protocol.valid_end
        cut = np.array([self.fs.cut(u, since) for u in range(len(self.fs.users))], dtype=np.int64)
        keep, recent, replayed = recent_and_replayed(cut, ends, self.cfg.replay_share, self.cfg.seed)
        self.state.note(f"continued from the champion: {recent:,} users with events since {self.cfg.continual_since}"
                        f" and {replayed:,} replayed ({self.cfg.replay_share:g} of the others)")
        return np.where(keep, ends, 0)

    def item_text(self) -> np.ndarray | None:
        """Item text vectors by item index: encoded once by rank 0 (cached by text digest), read by every rank."""
        if not self.cfg.item_text:
            return None
        path = self.out_dir / "item_text.npy"
        if self.rt.master and not path.exists():
            cache = Path(self.cfg.text_cache) if self.cfg.text_cache else self.out_dir / "item_text_cache.parquet"
            item_text_matrix(Path(self.cfg.features_dir), path, cache)
        self.rt.barrier()
        return np.load(path)

    def new_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.raw_model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def warm_start_or_resume(self) -> None:
        """Start from init_from's weights (warm start), then continue an interrupted run from last.pt if any."""
        if self.cfg.init_from:
            ckpt = torch.load(self.cfg.init_from, map_location=self.rt.device, weights_only=False)
            carried = warm_start(self.raw_model, ckpt, self.fs.item_ids.tolist())
            self.state.init = f"warm start from {self.cfg.init_from}: {carried}"
            self.state.note(f"warm start from the checkpoint {self.cfg.init_from}: {carried['items_carried']} items "
                            f"carried over, {carried['items_new']} new")
        last = self.checkpoints.load("last", self.rt.device)
        if last is None:
            return
        self.raw_model.load_state_dict(last["model"])
        self.optimizer.load_state_dict(last["optimizer"])
        notes, self.state = self.state.notes, TrainState(**last["state"])
        resumed = f"resuming from {self.checkpoints.path('last')} after epoch {self.state.epoch}"
        for text in notes + [resumed]:
            self.state.note(text)
        if self.rt.master:
            print(resumed, flush=True)

    def negative_sampler(self) -> NegativeSampler | None:
        cfg, n_items = self.cfg, self.fs.n_items - 1
        if not (cfg.loss == "sampled" or (cfg.loss == "auto" and n_items > SAMPLED_SOFTMAX_ABOVE)):
            return None
        if cfg.loss == "auto":
            self.state.note(f"{n_items:,} items (over {SAMPLED_SOFTMAX_ABOVE:,}): the next-item loss is a sampled "
                            f"softmax with {cfg.n_negatives} shared negatives per batch")
        return NegativeSampler(self.examples.targets, self.fs.n_items, cfg.n_negatives, cfg.seed + self.rt.rank,
                               self.rt.device)

    def loader(self, examples: TrainingExamples) -> DataLoader:
        """Batches of similar chunk lengths (LengthBatches); the global batch is batch_size whatever the world size,
        so N processes follow 1 process's recipe."""
        batches = LengthBatches(examples.chunk_lengths(), self.cfg.batch_size, self.rt.rank, self.rt.world,
                                self.cfg.seed)
        return DataLoader(examples, batch_sampler=batches)

    def run(self, tracking) -> None:
        """The training phase, then the refit; `tracking`: the mlflow module on rank 0 of a tracked run, else None."""
        self.tracking, self.started = tracking, time.time()
        if tracking is not None and self.state.epoch == 0 and self.state.refit_done == 0:
            self.log_params()
        if self.cfg.continual_since:  # no validation: the champion's weights have seen the validation window
            self.fit("continue", self.examples, self.cfg.epochs)
        else:
            if not self.state.stopped:
                self.fit("train", self.examples, self.cfg.epochs)
            self.state.stopped = True
            if self.rt.master:
                self.checkpoints.save("last", self.raw_model, self.state, self.optimizer)
            self.refit()
        if self.rt.master:
            self.finish(time.time() - self.started)

    def fit(self, phase: str, examples: TrainingExamples, epochs: int | None) -> None:
        """The epochs of a phase not done yet (a resumed run skips the others). "train" validates after each
        epoch, keeps best.pt and stops early (patience), when the time budget is spent or after `epochs` (None: no
        limit); "refit" and "continue" run all their epochs, each ending in final.pt. Every epoch ends in last.pt."""
        loader = self.loader(examples)
        done = self.state.epoch if phase == "train" else self.state.refit_done
        for i in range(done, epochs) if epochs else itertools.count(done):
            metrics = self.train_epoch(loader, phase, i, epochs)
            if phase == "train":
                plan = plan_epochs(self.cfg, i + 1, i + 1 - done, time.time() - self.started)
                self.state.planned_epochs = int(self.rt.rank0_value(plan))
            else:
                self.state.refit_done = i + 1
            if self.rt.master:
                self.end_epoch(phase, i, epochs, metrics)
            if phase == "train" and self.rt.rank0_says(self.rt.master and self.should_stop()):
                break

    def planned(self, phase: str, epochs: int | None) -> int | None:
        """The epochs of the phase as planned now: the refit's count, or the training plan (None before one)."""
        return epochs if phase == "refit" else self.state.planned_epochs or None

    def train_epoch(self, loader: DataLoader, phase: str, i: int, epochs: int | None) -> dict[str, float]:
        # a new order each epoch; the refit's follow training's
        loader.batch_sampler.set_epoch(i if phase == "train" else self.state.epoch + i)
        self.model.train()
        self.progress.update(phase=phase, epoch=i + 1, epochs=self.planned(phase, epochs), batch=0,
                             batches=len(loader),
                             sequences_per_s=0.0, best_val_ndcg_10=self.state.best_val())
        started, seen, totals = time.time(), 0, np.zeros(2)
        # the next-item targets of this process's average batch: the unit each batch's loss is weighed in
        target_unit = loader.dataset.targets_per_example() * loader.batch_sampler.batch_size / self.rt.world or 1.0
        for number, batch in enumerate(loader, 1):
            step = i * len(loader) + number - 1
            for group in self.optimizer.param_groups:
                # the refit: a fresh optimizer at the peak rate for its whole epochs, as before the schedule; a
                # continued run warms up and decays over its epochs like a training
                group["lr"] = (self.cfg.lr if phase == "refit"
                               else learning_rate(self.cfg, step, len(loader), self.state.planned_epochs))
            losses = self.step(batch, target_unit)
            seen += len(batch["items"]) * self.rt.world
            totals += [losses["rec_loss"].item(), losses["ltv_loss"].item()]
            self.progress.update(batch=number, sequences_per_s=seen / (time.time() - started))
        seconds, n_batches = time.time() - started, max(1, len(loader))
        metrics = {"rec_loss": totals[0] / n_batches, "ltv_loss": totals[1] / n_batches, "epoch_seconds": seconds,
                   "sequences_per_s": seen / seconds, "lr": self.optimizer.param_groups[0]["lr"]}
        if self.rt.device.type == "cuda":
            metrics["peak_gpu_mb"] = torch.cuda.max_memory_allocated(self.rt.device) / 2**20
        return metrics

    def step(self, batch: dict[str, torch.Tensor], target_unit: float) -> dict[str, torch.Tensor]:
        """One optimizer step on a batch; returns the two losses (the next-item loss per target of the batch).
        `target_unit`: the next-item targets of an average batch of this process."""
        batch = trim_padding({k: v.to(self.rt.device, non_blocking=True) for k, v in batch.items()})
        if self.negatives is not None:
            batch |= self.negatives()
        with self.rt.autocast():
            losses = self.model(batch)
        # every target weighs the same, in a batch of short chunks as in one of long chunks: the batch's mean loss
        # counts as many times as its targets are average batches' worth
        targets_share = (batch["targets"] != 0).sum() / target_unit
        loss = losses["rec_loss"] * targets_share + self.cfg.ltv_weight * losses["ltv_loss"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        return losses

    def end_epoch(self, phase: str, i: int, epochs: int | None, metrics: dict[str, float]) -> None:
        """Rank 0: validate (training phase) and checkpoint, then one printed line, MLflow and the progress file."""
        if phase == "train":
            metrics |= self.validate_epoch(i)
            label, step = "epoch", i + 1
        else:
            self.checkpoints.save("final", self.raw_model, self.state)
            metrics = {f"{phase}_{k}": v for k, v in metrics.items()}
            label, step = f"{phase} epoch", self.state.epoch + i + 1
        self.checkpoints.save("last", self.raw_model, self.state, self.optimizer)
        values = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        print(f"{label} {i + 1}/{self.planned(phase, epochs)}: {values}", flush=True)
        if self.tracking is not None:
            self.tracking.log_metrics(metrics, step=step)
        self.progress.update(force=True, best_val_ndcg_10=self.state.best_val())

    def validate_epoch(self, i: int) -> dict[str, float]:
        """Validation NDCG@10 of epoch i (and the seconds it took); keeps best.pt at a new best."""
        started = time.time()
        with self.rt.node_cores():
            val = validate(self.raw_model, self.fs, self.protocol)
        seconds = time.time() - started
        ndcg, state = val.get("ndcg_10", 0.0), self.state
        state.epoch = i + 1
        if ndcg > state.best_ndcg:
            state.best_ndcg, state.best_epoch, state.bad_epochs = ndcg, i + 1, 0
            self.checkpoints.save("best", self.raw_model, state)
        else:
            state.bad_epochs += 1
        if not val:
            state.note("no user has a new item in the validation window: validation NDCG@10 is 0 for every epoch, "
                       "so the first epoch's model is kept as the best")
        return {f"val_{k}": v for k, v in val.items()} | {"val_seconds": seconds}

    def should_stop(self) -> bool:
        """Early stopping (patience) or the time budget, checked between epochs; the reason becomes a note."""
        state, cfg = self.state, self.cfg
        if state.bad_epochs >= cfg.patience:
            state.note(f"early stopping after epoch {state.epoch}: validation NDCG@10 has not improved since epoch "
                       f"{state.best_epoch} (patience {cfg.patience})")
            return True
        if (time.time() - self.started) / 60 > cfg.max_train_minutes:
            state.note(f"training stopped after epoch {state.epoch}: the time budget of {cfg.max_train_minutes:g} "
                       "minutes (max_train_minutes) is spent")
            return True
        if cfg.epochs and state.epoch >= cfg.epochs:
            state.note(f"training stopped after epoch {state.epoch}: the epochs limit ({cfg.epochs})")
            return True
        return False

    def refit(self) -> None:
        """The best model learns from the validation window too (the most recent data: new items, current trends)
        for refit_epochs, the number of epochs the validation window chose. The test window stays unseen."""
        if self.state.refit_done >= self.cfg.refit_epochs:
            if self.rt.master and not self.checkpoints.path("final").exists():
                shutil.copy(self.checkpoints.path("best"), self.checkpoints.path("final"))  # no refit: the best one
            return
        self.rt.barrier()  # rank 0 has written best.pt and last.pt
        if self.state.refit_done == 0:  # (a resumed refit has its weights and optimizer from last.pt)
            self.raw_model.load_state_dict(self.checkpoints.load("best", self.rt.device)["model"])
            self.optimizer = self.new_optimizer()
        self.fit("refit", self.training_examples(self.protocol.valid_end), self.cfg.refit_epochs)

    def log_params(self) -> None:
        """The model's shape and the data's size (a retried task must not re-log changed params)."""
        params = {f"model_{k}": v for k, v in asdict(self.raw_model.cfg).items()}
        params |= {"world_size": self.rt.world, "device": self.rt.device.type,
                   "train_sequences": len(self.examples.items), "ltv_train_customers": self.examples.n_customers,
                   "rec_loss_kind": "full_softmax" if self.negatives is None else "sampled_softmax_logq"}
        logged = self.tracking.get_run(self.cfg.mlflow_run_id).data.params
        self.tracking.log_params({k: v for k, v in params.items() if k not in logged})

    def finish(self, seconds: float) -> None:
        """result.json (with the MLflow model's URI in a tracked run), and the same as one printed line. A continued
        run validated nothing: it has no best epoch."""
        state = self.state
        if self.cfg.continual_since:
            summary = {"mode": "continue", "epochs_run": state.refit_done}
        else:
            summary = {"mode": "scratch", "best_epoch": state.best_epoch, "epochs_run": state.epoch,
                       "refit_epochs": state.refit_done, "best_val_ndcg_10": state.best_ndcg}
        result = summary | {"init": state.init, "train_seconds": seconds, "world_size": self.rt.world,
                            "device": self.rt.device.type, "notes": state.notes}
        if self.tracking is not None:
            result = log_model(self.tracking, self.checkpoints.path("final")) | result
            self.tracking.log_metrics({k: v for k, v in result.items() if k in ("best_val_ndcg_10", "best_epoch",
                                                                                 "train_seconds")})
        write_json(self.out_dir / "result.json", result)
        print(f"training done: {json.dumps(result)}", flush=True)


def log_model(mlflow, checkpoint: Path) -> dict[str, str]:
    """Log the final checkpoint as an MLflow PyTorch model (the checkpoint travels as an extra file)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar is noise in a log file
    # pickled on purpose: the checkpoint travelling beside it is what ltvrec loads, so MLflow's warning says nothing
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
    info = mlflow.pytorch.log_model(
        LoadedModel.from_file(checkpoint).model, name="model", extra_files=[str(checkpoint)],
        serialization_format="pickle", pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy", "pandas"],
    )
    return {"model_uri": info.model_uri, "model_id": info.model_id}


@contextmanager
def mlflow_run(run_id: str | None):
    """The pipeline's MLflow run, resumed: yields the mlflow module, or None when there is no run."""
    if run_id is None:
        yield None
        return
    import mlflow

    with mlflow.start_run(run_id=run_id):
        yield mlflow


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Train ltvrec's sequential recommender + LTV head")
    ap.add_argument("--config", required=True, type=Path, help="TrainConfig JSON (RUN/train/config.json)")
    cfg = TrainConfig.load(ap.parse_args(argv).config)
    rt = Runtime.start()
    torch.manual_seed(cfg.seed + rt.rank)
    np.random.seed(cfg.seed + rt.rank)
    trainer = Trainer(cfg, rt)
    with mlflow_run(cfg.mlflow_run_id if rt.master else None) as tracking:
        trainer.run(tracking)
    rt.close()


if __name__ == "__main__":
    main()
