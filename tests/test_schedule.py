"""The learning-rate schedule: a linear warm-up, then a cosine decay over the planned epochs; the plan is the epochs
limit or what fits the time budget."""

import dataclasses

import pytest

from ltvrec.config import RunConfig
from ltvrec.stages import train_config
from models.train import FINAL_LR_SHARE, WARMUP_STEPS, learning_rate, plan_epochs


def config(**knobs):
    return train_config(RunConfig.from_dict(knobs), "features", "out")


def test_the_warm_up_is_linear_and_never_longer_than_the_first_epoch():
    cfg = config(lr=1e-3)
    assert learning_rate(cfg, 0, 500, 10) == pytest.approx(1e-3 / WARMUP_STEPS)
    assert learning_rate(cfg, WARMUP_STEPS // 2 - 1, 500, 10) == pytest.approx(0.5e-3)
    assert learning_rate(cfg, WARMUP_STEPS - 1, 500, 10) == pytest.approx(1e-3)
    # 4 steps an epoch: warmed up within the first epoch
    assert [learning_rate(cfg, s, 4, 0) for s in range(5)] == pytest.approx([0.25e-3, 0.5e-3, 0.75e-3, 1e-3, 1e-3])


def test_the_cosine_decays_to_its_final_share_at_the_end_of_the_plan():
    cfg, steps, planned = config(lr=1e-3), 200, 10
    end = planned * steps - 1
    rates = [learning_rate(cfg, s, steps, planned) for s in range(WARMUP_STEPS, end + 1)]
    assert rates[0] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    middle = WARMUP_STEPS + (end - WARMUP_STEPS) // 2
    assert learning_rate(cfg, middle, steps, planned) == pytest.approx(1e-3 * (1 + FINAL_LR_SHARE) / 2, rel=0.01)
    assert rates[-1] == pytest.approx(1e-3 * FINAL_LR_SHARE)
    assert learning_rate(cfg, end + 1000, steps, planned) == pytest.approx(1e-3 * FINAL_LR_SHARE)


def test_constant_and_unplanned_hold_the_peak_after_the_warm_up():
    assert learning_rate(config(lr=1e-3, lr_schedule="constant"), 1900, 200, 10) == pytest.approx(1e-3)
    assert learning_rate(config(lr=1e-3), 150, 200, 0) == pytest.approx(1e-3)


def test_the_plan_is_the_epochs_limit_or_what_fits_the_time_budget():
    cfg = config(max_train_minutes=10.0)
    assert cfg.epochs is None
    assert plan_epochs(cfg, 2, 2, 120.0) == 10  # 60 s an epoch: 8 more fit in the 480 s left
    assert plan_epochs(cfg, 5, 2, 120.0) == 13  # resumed after 3 epochs: this process's pace, its own budget
    assert plan_epochs(cfg, 3, 3, 700.0) == 3  # the budget is spent
    assert plan_epochs(dataclasses.replace(cfg, epochs=6), 2, 2, 120.0) == 6
    assert plan_epochs(dataclasses.replace(cfg, epochs=60), 2, 2, 120.0) == 10
