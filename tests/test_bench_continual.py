"""bench/continual.py's paired comparison of two policies' realised NDCG@10, user by user."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from continual import paired_difference  # noqa: E402


def test_the_paired_difference_averages_weekly_means_over_the_users_both_policies_scored():
    a = {("d1", "u1"): 1.0, ("d1", "u2"): 0.5, ("d2", "u1"): 0.2, ("d2", "u3"): 0.9}
    b = {("d1", "u1"): 0.0, ("d1", "u2"): 0.5, ("d2", "u1"): 0.4}  # u3 of d2 scored by one policy only: not paired
    found = paired_difference(a, b, ["d1", "d2"])
    assert found["mean"] == pytest.approx(((1.0 + 0.0) / 2 + (-0.2)) / 2)
    assert found["weeks"] == 2 and found["users"] == 3
    assert paired_difference(a, b, ["d3"]) is None


def test_the_interval_covers_the_true_gap_and_shrinks_with_more_users():
    rng = np.random.default_rng(3)

    def policies(n):
        base = {("d1", f"u{i}"): float(rng.random()) for i in range(n)}
        return base, {key: value - 0.05 + float(rng.normal(0, 0.2)) for key, value in base.items()}

    small, large = paired_difference(*policies(100), ["d1"]), paired_difference(*policies(4000), ["d1"])
    assert small["ci95"][0] < 0.05 < small["ci95"][1] and large["ci95"][0] < 0.05 < large["ci95"][1]
    assert large["ci95"][1] - large["ci95"][0] < (small["ci95"][1] - small["ci95"][0]) / 4
    identical = paired_difference(*[{("d1", "u1"): 0.3, ("d1", "u2"): 0.7}] * 2, ["d1"])
    assert identical["mean"] == 0 and identical["ci95"] == [0, 0]


def test_the_verdict_says_whether_noise_decides_the_gap_to_scratch():
    from continual import verdict

    def said(low, high):
        return verdict({}, {"continue_minus_scratch": {"mean": (low + high) / 2, "ci95": [low, high]}})["aims"][
            "continue_vs_scratch_beyond_noise"]

    assert said(-0.004, 0.01) == "within 0.005"
    assert said(-0.02, -0.006) == "more than 0.005 below"
    assert said(-0.02, 0.01) == "undecided"
    assert "continue_vs_scratch_beyond_noise" not in verdict({})["aims"]
