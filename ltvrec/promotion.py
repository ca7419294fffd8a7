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

from dataclasses import dataclass, field


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
