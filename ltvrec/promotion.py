"""The model gate: should a freshly trained challenger replace the `@champion`?

Both models are evaluated by the same code on the same frozen holdout of the current run (`evaluate` stage);
this module only applies the rules, so that they can be read and tested in one place:

- the first model of a registered name is promoted without comparison (a "rubber stamp", recorded as such);
- otherwise the challenger must beat the popularity baseline on NDCG@10, and must not be worse than the
  champion by more than `ndcg_tolerance` on NDCG@10 nor by more than `gini_tolerance` on the LTV head's
  normalized Gini (absolute differences; a negative tolerance demands an improvement).

A check whose metric does not exist for this run (no recommendation holdout, e.g. a one-item catalogue; no LTV
customers) is skipped, and the reasons say so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger("ltvrec")


@dataclass
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)
    rubber_stamp: bool = False

    @property
    def verdict(self) -> str:
        return "promoted" if self.promote else "rejected"


def _metric(metrics: dict, group: str, model: str, key: str) -> float | None:
    value = metrics.get(group, {}).get(model, {}).get(key)
    return None if value is None or value != value else float(value)  # NaN: not measured


def decide(evaluation: dict, champion_version: str | None, ndcg_tolerance: float, gini_tolerance: float) -> Decision:
    """`evaluation`: the evaluate stage's metrics, {"recommendation": {model: {...}}, "ltv": {model: {...}}},
    holding the challenger ("model", "ziln"), "popularity" and, when there is a champion, "champion"."""
    ndcg = _metric(evaluation, "recommendation", "model", "ndcg_10")
    gini = _metric(evaluation, "ltv", "ziln", "gini")
    if champion_version is None:
        reasons = ["first model of this name: promoted without comparison (rubber stamp)"]
        pop = _metric(evaluation, "recommendation", "popularity", "ndcg_10")
        if ndcg is not None and pop is not None and ndcg <= pop:
            reasons.append(f"warning: its NDCG@10 {ndcg:.4f} does not beat popularity {pop:.4f}")
        return Decision(True, reasons, rubber_stamp=True)

    failed, passed = [], []
    if evaluation.get("champion_error"):
        passed.append(f"champion v{champion_version} could not be evaluated on this run's holdout "
                      f"({evaluation['champion_error']}): compared with popularity only")
    pop = _metric(evaluation, "recommendation", "popularity", "ndcg_10")
    champ_ndcg = _metric(evaluation, "recommendation", "champion", "ndcg_10")
    champ_gini = _metric(evaluation, "ltv", "champion", "gini")
    if ndcg is None:
        passed.append("no recommendation holdout in this run: NDCG@10 checks skipped")
    else:
        if pop is not None:
            (passed if ndcg > pop else failed).append(
                f"NDCG@10 {ndcg:.4f} {'beats' if ndcg > pop else 'does not beat'} popularity {pop:.4f}")
        if champ_ndcg is not None:
            ok = ndcg >= champ_ndcg - ndcg_tolerance
            (passed if ok else failed).append(
                f"NDCG@10 {ndcg:.4f} vs champion v{champion_version} {champ_ndcg:.4f} "
                f"({'within' if ok else 'outside'} tolerance {ndcg_tolerance})")
    if gini is None or champ_gini is None:
        passed.append("no LTV holdout for both models: Gini check skipped")
    else:
        ok = gini >= champ_gini - gini_tolerance
        (passed if ok else failed).append(
            f"LTV normalized Gini {gini:.4f} vs champion v{champion_version} {champ_gini:.4f} "
            f"({'within' if ok else 'outside'} tolerance {gini_tolerance})")
    return Decision(not failed, failed + passed)


def evaluate_champion(cfg, fs, protocol, actual) -> dict:
    """The current @champion on this run's holdout, by the same code as the challenger: {"version",
    "recommendation", "ltv"}, or {"version", "error"} when it cannot be evaluated; {} when there is none."""
    from models.checkpoint import LoadedModel
    from models.report import evaluate_model

    from ltvrec import tracking

    version = tracking.champion_version(cfg)
    if version is None:
        return {}
    try:
        loaded = LoadedModel.from_registry(f"models:/{cfg.registered_model}/{version}")
        return {"version": version, **evaluate_model(fs, loaded, protocol, actual)}
    except Exception as exc:  # e.g. a champion from an older feature set: the gate then says so
        log.warning("champion v%s of %s could not be evaluated: %r", version, cfg.registered_model, exc)
        return {"version": version, "error": f"{type(exc).__name__}: {exc}"}


GATE_METRICS = [("challenger_ndcg_10", "recommendation", "model", "ndcg_10"),
                ("popularity_ndcg_10", "recommendation", "popularity", "ndcg_10"),
                ("champion_ndcg_10", "recommendation", "champion", "ndcg_10"),
                ("challenger_gini", "ltv", "ziln", "gini"), ("champion_gini", "ltv", "champion", "gini")]


def register(cfg, model_uri: str, metrics: dict, champion: dict, run_name: str, mlflow_run_id: str) -> dict:
    """Register the challenger, tag the version with the gate's decision and reasons, give it a one-line
    description, and move `@champion` to it when it passes. A rejected challenger stays registered for comparison
    in the MLflow UI; the champion keeps its alias and scores this run."""
    import mlflow
    from mlflow import MlflowClient

    from ltvrec import tracking

    tracking.configure(cfg.experiment)
    decision = decide(metrics | {"champion_error": champion.get("error")}, champion.get("version"),
                      cfg.ndcg_tolerance, cfg.gini_tolerance)
    version = str(mlflow.register_model(model_uri, cfg.registered_model,
                                        tags={"airflow_run": run_name, "mlflow_run_id": mlflow_run_id}).version)
    client = MlflowClient()
    for key, value in version_tags(decision, metrics, champion).items():
        client.set_model_version_tag(cfg.registered_model, version, key, value)
    client.update_model_version(cfg.registered_model, version, description=describe(cfg, metrics, decision, run_name))
    if decision.promote:
        client.set_registered_model_alias(cfg.registered_model, "champion", version)
    champion_now = version if decision.promote else champion.get("version")
    (log.info if decision.promote else log.warning)(
        "model gate: %s v%s %s (champion is now v%s): %s", cfg.registered_model, version, decision.verdict,
        champion_now, "; ".join(decision.reasons))
    tracking.set_run_tags(cfg, mlflow_run_id, {"model_gate": decision.verdict,
                                               "model_gate_reasons": "; ".join(decision.reasons)[:5000]})
    return {"model_name": cfg.registered_model, "version": version, "decision": decision.verdict,
            "reasons": decision.reasons, "rubber_stamp": decision.rubber_stamp,
            "champion_before": champion.get("version"), "champion": str(champion_now)}


def version_tags(decision: Decision, metrics: dict, champion: dict) -> dict[str, str]:
    tags = {"promotion": decision.verdict, "promotion_reasons": "; ".join(decision.reasons),
            "champion_before": champion.get("version") or "none", "rubber_stamp": str(decision.rubber_stamp).lower()}
    for tag, group, model, key in GATE_METRICS:
        value = _metric(metrics, group, model, key)
        if value is not None:
            tags[tag] = f"{value:.6f}"
    return tags


def describe(cfg, metrics: dict, decision: Decision, run_name: str) -> str:
    """One line for the registry's version list: data, run, headline metrics and the gate's verdict."""
    parts = [f"{cfg.source} run {run_name}"]
    ndcg = _metric(metrics, "recommendation", "model", "ndcg_10")
    pop = _metric(metrics, "recommendation", "popularity", "ndcg_10")
    if ndcg is not None:
        parts.append(f"NDCG@10 {ndcg:.4f}" + (f" (popularity {pop:.4f})" if pop is not None else ""))
    gini = _metric(metrics, "ltv", "ziln", "gini")
    if gini is not None:
        parts.append(f"LTV Gini {gini:.3f} at H={cfg.horizon_days}d")
    return "; ".join(parts) + f"; {decision.verdict}" + (" (first model)" if decision.rubber_stamp else "")
