"""A run's evaluation: the challenger, the baselines and the champion side by side, as metrics, a comparison table
(evaluation/model_comparison.csv and .md) and LTV charts. The numbers come from models/evaluate.py, the same code
for every model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from models.charts import ltv_charts
from models.checkpoint import LoadedModel
from models.data import FeatureSet, Protocol
from models.evaluate import evaluate_recommendations, head_estimates, ltv_predictions
from models.metrics import ltv_metrics


@dataclass
class Evaluation:
    recommendation: dict[str, dict[str, float]]  # by model: "model", "popularity", "als", "champion", ...
    ltv: dict[str, dict[str, float]]  # by model: "ziln", "bgnbd_gamma_gamma", "champion", ...
    actual: np.ndarray  # actual spend of the LTV holdout's customers
    ltv_values: dict[str, np.ndarray] = field(default_factory=dict)  # each LTV model's predictions
    ndcg_per_user: dict[str, np.ndarray] = field(default_factory=dict)  # each ranking's NDCG@10 by holdout user
    total_from: str = "model"  # where ZILN's published total comes from (the LTV backtest's ltv_total_from)

    @property
    def metrics(self) -> dict:
        return {"recommendation": self.recommendation, "ltv": self.ltv}

    def add_model(self, name: str, evaluated: "ModelEvaluation") -> None:
        """Another model's results on the same holdout (evaluate_model), beside the challenger's."""
        if evaluated.recommendation is not None:
            self.recommendation[name] = evaluated.recommendation
            self.ndcg_per_user[name] = evaluated.ndcg_per_user
        if evaluated.ltv is not None:
            self.ltv[name] = evaluated.ltv
            self.ltv_values[name] = evaluated.ltv_values

    def flat_metrics(self) -> dict[str, float]:
        """MLflow metric names: test_<model>_<metric> and ltv_<model>_<metric>."""
        flat = {f"test_{m}_{k}": v for m, vals in self.recommendation.items() if not m.startswith("_")
                for k, v in vals.items()}
        return flat | {f"ltv_{m}_{k}": v for m, vals in self.ltv.items() for k, v in vals.items()}

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(
            [{"task": "recommendation", "model": m, **v} for m, v in self.recommendation.items() if not m.startswith("_")]
            + [{"task": "ltv", "model": m, **v} for m, v in self.ltv.items()])


@dataclass
class ModelEvaluation:
    """One more model (a champion) on the run's holdout: a head's metrics and per-user values, None where not
    evaluated."""
    recommendation: dict[str, float] | None = None
    ndcg_per_user: np.ndarray | None = None
    ltv: dict[str, float] | None = None
    ltv_values: np.ndarray | None = None


def evaluate_run(fs: FeatureSet, loaded: LoadedModel, protocol: Protocol,
                 factors: tuple[np.ndarray, np.ndarray] | None = None, total_from: str = "model") -> Evaluation:
    """The challenger and every baseline on the run's holdout (recommendations: the protocol's test window; LTV:
    the `eval` cut-off; ZILN at the total of `total_from`, as it is published)."""
    recommendation, ndcg = evaluate_recommendations(fs, loaded, protocol, factors=factors)
    actual, predictions = ltv_predictions(fs, loaded, total_from=total_from)
    ltv = {name: ltv_metrics(actual, value, activity) for name, (value, activity) in predictions.items()}
    return Evaluation(recommendation, ltv, actual, {name: value for name, (value, _) in predictions.items()}, ndcg,
                      total_from)


def evaluate_model(fs: FeatureSet, loaded: LoadedModel, protocol: Protocol, actual: np.ndarray,
                   heads: tuple[str, ...] = ("recommendation", "ltv"), total_from: str = "model"
                   ) -> ModelEvaluation:
    """One more model on the same holdout as the challenger, without the baselines, for the given heads (its ZILN
    estimates at the total of `total_from`, like the challenger's)."""
    found = ModelEvaluation()
    if "recommendation" in heads:
        metrics, ndcg = evaluate_recommendations(fs, loaded, protocol, baselines=False)
        if "model" in metrics:
            found.recommendation, found.ndcg_per_user = metrics["model"], ndcg["model"]
    if "ltv" in heads and len(actual):
        _, p_active, expected_value = head_estimates(fs, loaded, "eval", total_from)
        found.ltv, found.ltv_values = ltv_metrics(actual, expected_value, p_active), expected_value
    return found


def write_report(evaluation: Evaluation, out_dir: Path) -> None:
    """model_comparison.csv / .md and the LTV charts (ltv_decile_calibration.png, ltv_cumulative_gain.png)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = evaluation.table()
    table.to_csv(out_dir / "model_comparison.csv", index=False)
    (out_dir / "model_comparison.md").write_text(table.to_markdown(index=False))
    ltv_charts(evaluation.actual, evaluation.ltv_values, out_dir)
