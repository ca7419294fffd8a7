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
from models.evaluate import evaluate_recommendations, ltv_predictions, predict_ltv
from models.metrics import ltv_metrics


@dataclass
class Evaluation:
    recommendation: dict[str, dict[str, float]]  # by model: "model", "popularity", "als", "champion", ...
    ltv: dict[str, dict[str, float]]  # by model: "ziln", "bgnbd_gamma_gamma", "champion", ...
    actual: np.ndarray  # actual spend of the LTV holdout's customers
    ltv_values: dict[str, np.ndarray] = field(default_factory=dict)  # each LTV model's predictions, for the charts

    @property
    def metrics(self) -> dict:
        return {"recommendation": self.recommendation, "ltv": self.ltv}

    def add_champion(self, champion: dict) -> None:
        """The champion's metrics (promotion.evaluate_champion) beside the challenger's."""
        if champion.get("recommendation"):
            self.recommendation["champion"] = champion["recommendation"]
        if champion.get("ltv"):
            self.ltv["champion"] = champion["ltv"]

    def flat_metrics(self) -> dict[str, float]:
        """MLflow metric names: test_<model>_<metric> and ltv_<model>_<metric>."""
        flat = {f"test_{m}_{k}": v for m, vals in self.recommendation.items() if not m.startswith("_")
                for k, v in vals.items()}
        return flat | {f"ltv_{m}_{k}": v for m, vals in self.ltv.items() for k, v in vals.items()}

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(
            [{"task": "recommendation", "model": m, **v} for m, v in self.recommendation.items() if not m.startswith("_")]
            + [{"task": "ltv", "model": m, **v} for m, v in self.ltv.items()])


def evaluate_run(fs: FeatureSet, loaded: LoadedModel, protocol: Protocol,
                 factors: tuple[np.ndarray, np.ndarray] | None = None) -> Evaluation:
    """The challenger and every baseline on the run's holdout (recommendations: the protocol's test window; LTV:
    the `eval` cut-off)."""
    recommendation = evaluate_recommendations(fs, loaded, protocol, factors=factors)
    actual, predictions = ltv_predictions(fs, loaded)
    ltv = {name: ltv_metrics(actual, value, activity) for name, (value, activity) in predictions.items()}
    return Evaluation(recommendation, ltv, actual, {name: value for name, (value, _) in predictions.items()})


def evaluate_model(fs: FeatureSet, loaded: LoadedModel, protocol: Protocol, actual: np.ndarray) -> dict:
    """One more model (the champion) on the same holdout, without the baselines: {"recommendation", "ltv"}."""
    recommendation = evaluate_recommendations(fs, loaded, protocol, baselines=False).get("model")
    _, p_active, expected_value = predict_ltv(fs, loaded, "eval")
    return {"recommendation": recommendation,
            "ltv": ltv_metrics(actual, expected_value, p_active) if len(actual) else None}


def write_report(evaluation: Evaluation, out_dir: Path) -> None:
    """model_comparison.csv / .md and the LTV charts (ltv_decile_calibration.png, ltv_cumulative_gain.png)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = evaluation.table()
    table.to_csv(out_dir / "model_comparison.csv", index=False)
    (out_dir / "model_comparison.md").write_text(table.to_markdown(index=False))
    ltv_charts(evaluation.actual, evaluation.ltv_values, out_dir)
