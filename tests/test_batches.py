"""Length-banded batches (models/examples.py: LengthBatches, trim_padding): every example once an epoch, the same
global batches split over the processes, and nothing of an event trimmed."""

import numpy as np
import pytest
import torch

from models.examples import LengthBatches, trim_padding


def lengths(n: int = 1000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 201, n)


@pytest.mark.parametrize("n", [1000, 999, 7])
def test_one_process_sees_every_example_once_an_epoch(n):
    batches = list(LengthBatches(lengths(n), 64, rank=0, world=1, seed=3))
    assert len(batches) == -(-n // 64)
    assert sorted(i for batch in batches for i in batch) == list(range(n))


def test_processes_split_the_same_global_batches_and_together_see_every_example():
    sizes = lengths(999)
    ranks = [list(LengthBatches(sizes, 64, rank=r, world=2, seed=3)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1])
    assert all(len(a) == len(b) > 0 for a, b in zip(*ranks))
    seen = [i for share in ranks for batch in share for i in batch]
    assert set(seen) == set(range(999)) and len(seen) == 1000  # one example repeats so both get 500
    for a, b in zip(*ranks):  # one global batch: both shares come from the same length band
        assert abs(np.median(sizes[a]) - np.median(sizes[b])) <= 10


def test_a_batch_is_one_length_band_and_the_bands_come_in_random_order():
    sizes = lengths(6400)
    batches = list(LengthBatches(sizes, 64, rank=0, world=1, seed=3))
    spreads = [np.ptp(sizes[b]) for b in batches]
    assert np.median(spreads) <= 10  # random batches of 64 span nearly all of 1..200
    medians = [np.median(sizes[b]) for b in batches]
    assert not (np.all(np.diff(medians) >= 0) or np.all(np.diff(medians) <= 0))


def test_each_epoch_has_its_own_order_and_a_seed_repeats_it():
    sampler = LengthBatches(lengths(), 64, rank=0, world=1, seed=3)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_trim_padding_drops_only_the_columns_that_are_padding_in_every_row():
    items = torch.tensor([[0, 0, 0, 5, 6], [0, 0, 7, 8, 9]])
    batch = {"items": items, "types": items.clamp(max=1), "targets": items + 1, "ts": items * 10,
             "ltv_feats": torch.ones(2, 3)}
    trimmed = trim_padding(batch)
    assert trimmed["items"].tolist() == [[0, 5, 6], [7, 8, 9]]
    assert trimmed["targets"].tolist() == [[1, 6, 7], [8, 9, 10]]
    assert trimmed["ts"].shape == trimmed["types"].shape == (2, 3)
    assert trimmed["ltv_feats"] is batch["ltv_feats"]
    assert trim_padding({"items": torch.zeros(2, 4, dtype=torch.long)})["items"].shape == (2, 1)
