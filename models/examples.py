"""What the trainer learns from: next-item targets per position, chunks of each user's events, the customers'
LTV examples, and the sampled softmax's negatives (models/train.py puts them in batches)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from models.config import TrainConfig
from models.data import FeatureScaler, FeatureSet, epoch, ltv_head_features, pad_left


def first_occurrence(items: np.ndarray) -> np.ndarray:
    """True where an item appears for the first time in the sequence."""
    first = np.zeros(len(items), dtype=bool)
    first[np.unique(items, return_index=True)[1]] = True
    return first


def position_targets(items: np.ndarray, types: np.ndarray, ts: np.ndarray, kind: str, repeats: bool,
                     return_code: int) -> np.ndarray:
    """The training target of each position of one user's events (0: none).

    A return (type `return_code`) is never a target; an item the user already had is not one either unless
    `repeats`, because evaluation and scoring recommend only items new to the user.
    next_item: the next event's item.
    next_basket: an item of the next basket (the next group of events sharing a timestamp), the basket's
    usable items assigned round-robin to the positions of the current basket. At prediction time the history
    ends with a complete basket and the question is the next visit; within-basket order (invoice line
    order) says little about it. With distinct timestamps this equals next_item.
    """
    usable = types != return_code
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


def next_item_chunks(fs: FeatureSet, cfg: TrainConfig, ends: np.ndarray) -> dict[str, list[np.ndarray]]:
    """Each user's first ends[u] events cut into chunks of at most max_seq_len input positions, from the most
    recent backwards; chunks without a target are left out. One array per chunk under items, types, targets, ts."""
    chunks = {"items": [], "types": [], "targets": [], "ts": []}
    return_code = fs.return_code
    for u in range(len(fs.users)):
        end = int(ends[u])
        events = {"items": fs.items[u][:end], "types": fs.types[u][:end], "ts": fs.ts[u][:end]}
        events["targets"] = position_targets(events["items"], events["types"], events["ts"], cfg.target,
                                             cfg.repeat_targets, return_code)
        stop = end - 1  # the last event has no successor
        while stop > 0:
            start = max(0, stop - cfg.max_seq_len)
            if events["targets"][start:stop].any():
                for key, values in events.items():
                    chunks[key].append(values[start:stop])
            stop = start
    return chunks


def ltv_examples(fs: FeatureSet, cfg: TrainConfig, scaler: FeatureScaler) -> dict[str, torch.Tensor]:
    """Every LTV training cut-off's customers: scaled features, label, loss mask, the prior where the head corrects
    it and, where the head reads the user vector (ltv_user_dim > 0), the history before the cut-off. Without
    customers (e.g. ratings-only data), one placeholder row that the loss masks out."""
    frames = [fs.ltv_frame(name) for name in fs.ltv_train_cutoffs()]
    ltv = pd.concat(frames, ignore_index=True)
    # histories only where the head reads the user vector; their event times only where the model embeds time gaps
    history_keys = ("ltv_items", "ltv_types", "ltv_ts")[:3 if cfg.time_gaps else 2] if cfg.ltv_user_dim else ()
    if ltv.empty:
        placeholder = {"ltv_feats": torch.zeros(1, len(scaler.features)), "ltv_label": torch.zeros(1),
                       "ltv_mask": torch.zeros(1)}
        placeholder |= {key: torch.ones(1, cfg.max_seq_len, dtype=torch.long) for key in history_keys}
        return placeholder | ({"ltv_prior": torch.ones(1)} if "ltv_prior" in scaler.features else {})
    examples = {"ltv_feats": torch.as_tensor(scaler.transform(ltv)),
                "ltv_label": torch.as_tensor(ltv["label_value"].to_numpy(dtype=np.float32)),
                "ltv_mask": torch.ones(len(ltv))}
    if "ltv_prior" in scaler.features:
        examples["ltv_prior"] = torch.as_tensor(ltv["ltv_prior"].to_numpy(dtype=np.float32))
    return examples | (ltv_histories(fs, frames, history_keys, cfg.max_seq_len) if history_keys else {})


def ltv_histories(fs: FeatureSet, frames: list[pd.DataFrame], keys: tuple[str, ...], length: int
                  ) -> dict[str, torch.Tensor]:
    """The customers' events before their cut-off (one frame per training cut-off): items, types and, with a third
    key, event times, left-padded to `length`."""
    histories = {key: [] for key in keys}
    for name, frame in zip(fs.ltv_train_cutoffs(), frames):
        _, *history = fs.histories(epoch(fs.split["ltv_cutoffs"][name]), frame["user_pos"].to_numpy())
        for key, part in zip(keys, history):
            histories[key] += part
    return {key: torch.as_tensor(pad_left(seqs, length)) for key, seqs in histories.items()}


class TrainingExamples(Dataset):
    """Next-item chunks of each user's first ends[u] events, paired round-robin with the LTV examples.
    `notes`: what cannot be learned from them, for people."""

    def __init__(self, fs: FeatureSet, cfg: TrainConfig, scaler: FeatureScaler, ends: np.ndarray, protocol_name: str):
        self.notes: list[str] = []
        chunks = next_item_chunks(fs, cfg, ends)
        has_rec = bool(chunks["items"])
        if not has_rec:  # e.g. a one-item catalogue: every later event repeats an item the user already has
            self.notes.append(f"no next-item targets before the validation window ({protocol_name} protocol): no user "
                              "has a new item after a first event; the recommender part is skipped, only the LTV head "
                              "learns")
            chunks = {key: [np.zeros(1, np.int64)] for key in chunks}
        self.items, self.types, self.targets = (torch.as_tensor(pad_left(chunks[key], cfg.max_seq_len))
                                                for key in ("items", "types", "targets"))
        # event times only where the model embeds the time between events
        self.ts = torch.as_tensor(pad_left(chunks["ts"], cfg.max_seq_len)) if cfg.time_gaps else None
        self.ltv = ltv_examples(fs, cfg, scaler)
        self.n_customers = int(self.ltv["ltv_mask"].sum())  # LTV rows that count in the loss
        if self.n_customers == 0:
            self.notes.append("no customer has a purchase before the LTV training cut-off: the LTV head is not trained")
        if not (has_rec or self.n_customers):
            raise ValueError(f"nothing to train on before the validation window ({protocol_name} protocol): no user has "
                             "a new item after a first event and no customer has a purchase before the LTV cut-off")

    def __len__(self) -> int:
        return max(len(self.items), self.n_customers)

    def _by_example(self, codes: torch.Tensor) -> np.ndarray:
        """The real (non-zero) codes of each example's next-item chunk, counted, by example index (see __getitem__)."""
        return (codes != 0).sum(dim=1).numpy()[np.arange(len(self)) % len(self.items)]

    def chunk_lengths(self) -> np.ndarray:
        """Events in each example's next-item chunk (its padding excluded), by example index."""
        return self._by_example(self.items)

    def targets_per_example(self) -> float:
        """Next-item targets of an example on average over the examples (the loss's unit, see models/train.py)."""
        return float(self._by_example(self.targets).mean())

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        r, j = i % len(self.items), i % len(self.ltv["ltv_label"])
        example = {key: values[j] for key, values in self.ltv.items()}
        example |= {"items": self.items[r], "types": self.types[r], "targets": self.targets[r]}
        if self.ts is not None:
            example["ts"] = self.ts[r]
        return example


class LengthBatches(Sampler[list[int]]):
    """Batches of examples whose next-item chunks have similar lengths, so a batch trimmed of its common leading
    padding (trim_padding) costs what its events cost, not what max_seq_len costs. Each epoch shuffles the
    examples, sorts each window of `window` batches by length, cuts it into batches, and shuffles the batches: every
    batch is a random draw of one length band, and the bands come in random order. With several processes each
    batch is global: process `rank` gets its share (every world-th example) of the same batches."""

    def __init__(self, lengths: np.ndarray, batch_size: int, rank: int, world: int, seed: int, window: int = 50):
        self.lengths, self.rank, self.world, self.seed, self.window = lengths, rank, world, seed, window
        self.batch_size = max(1, batch_size // world) * world  # global, a multiple of the world size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self._padded_size() // self.batch_size)

    def _padded_size(self) -> int:
        return -(-len(self.lengths) // self.world) * self.world  # every process gets the same number of examples

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        order = np.concatenate([order, order[:self._padded_size() - len(order)]])
        batches, span = [], self.batch_size * self.window
        for start in range(0, len(order), span):
            part = order[start:start + span]
            part = part[np.argsort(self.lengths[part], kind="stable")]
            batches += [part[b:b + self.batch_size] for b in range(0, len(part), self.batch_size)]
        for k in rng.permutation(len(batches)):
            yield batches[k][self.rank::self.world].tolist()


def trim_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch without the leading positions that are padding in every next-item chunk (models/sasrec.py's
    encode reads the last L positions of max_len)."""
    length = max(1, int((batch["items"] != 0).sum(dim=1).max()))
    return batch | {key: batch[key][:, -length:] for key in ("items", "types", "targets", "ts") if key in batch}


class NegativeSampler:
    """The sampled softmax's negatives: shared by the batch, drawn with replacement from Q, the training targets'
    smoothed popularity; log Q corrects the logits (models/sasrec.py: sampled_softmax_loss)."""

    def __init__(self, targets: torch.Tensor, n_items: int, n_negatives: int, seed: int, device: torch.device):
        counts = torch.bincount(targets.flatten(), minlength=n_items).double()
        q = (counts + 1.0) ** 0.75
        q[0] = 0.0
        self.q = (q / q.sum()).float().to(device)
        self.log_q = torch.log(self.q.clamp(min=1e-12))
        self.n_negatives = n_negatives
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(self) -> dict[str, torch.Tensor]:
        negatives = torch.multinomial(self.q, self.n_negatives, replacement=True, generator=self.generator)
        return {"neg_items": negatives, "log_q": self.log_q}


def fit_scaler(fs: FeatureSet, use_prior: bool) -> FeatureScaler:
    """The LTV features' scaling, from the training cut-offs' customers (the identity when there are none)."""
    features = ltv_head_features(use_prior)
    train_ltv = fs.ltv_train_frame()
    if train_ltv.empty:
        return FeatureScaler(np.zeros(len(features)), np.ones(len(features)), features)
    return FeatureScaler.fit(train_ltv, features)
