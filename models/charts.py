"""LTV evaluation charts (PNG, logged to MLflow beside model_comparison.csv).

decile calibration: customers in 10 groups by predicted value; mean predicted vs mean actual spend per group.
cumulative gain: customers ordered by predicted value; share of all actual spend captured by the top x %.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.metrics import decile_table, gain_curve


def ltv_charts(actual: np.ndarray, predictions: dict[str, np.ndarray], out_dir: Path) -> list[Path]:
    """Write ltv_decile_calibration.png (one panel per model) and ltv_cumulative_gain.png (one line per model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    if len(actual) < 10 or not predictions:
        return []
    names = list(predictions)
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.8), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], names):
        table = decile_table(actual, predictions[name])
        ax.bar(table["decile"] - 0.2, table["actual"], width=0.4, label="actual")
        ax.bar(table["decile"] + 0.2, table["predicted"], width=0.4, label="predicted")
        ax.set_title(name)
        ax.set_xlabel("decile of predicted value")
        ax.set_xticks(range(1, 11))
    axes[0][0].set_ylabel("mean spend per customer")
    axes[0][0].legend()
    fig.tight_layout()
    calibration = out_dir / "ltv_decile_calibration.png"
    fig.savefig(calibration, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    x, best = gain_curve(actual, actual)
    ax.plot(x, best, "k--", label="perfect")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="random")
    for name in names:
        ax.plot(*gain_curve(actual, predictions[name]), label=name)
    ax.set_xlabel("share of customers (ordered by prediction)")
    ax.set_ylabel("share of actual spend")
    ax.legend()
    fig.tight_layout()
    gain = out_dir / "ltv_cumulative_gain.png"
    fig.savefig(gain, dpi=100)
    plt.close(fig)
    return [calibration, gain]
