"""The model gate: which heads of a freshly trained challenger replace the current champions?

The registry holds one champion per head: `@champion` recommends, `@ltv_champion` estimates LTV (usually the same
version). The `evaluate` stage measures the challenger, the baselines and each champion by the same code on this
run's holdout, checks whether each champion is fit for this run's data, and compares the challenger with it by a
paired bootstrap (models/compare.py). This module applies the rules, so that they can be read and tested in one
place:

- the first model of a registered name is promoted without comparison (a "rubber stamp", recorded as such);
- recommendations: the challenger's NDCG@10 must beat popularity's, and must not be shown worse than the champion's
  by more than `ndcg_tolerance` (the whole `gate_confidence` interval of the difference below -tolerance);
- LTV: its normalized Gini and decile MAPE must not be shown worse than the champion's by more than
  `gini_tolerance` / `decile_mape_tolerance`;
- an unfit champion (it knows too little of this run's items, was trained for another LTV horizon, or cannot be
  evaluated on this run's data) is not compared with: the challenger replaces it when it passes the baselines
  (popularity; for LTV, not shown worse than the naive past spend on Gini), and the reasons say so;
- the heads are decided separately, unless they cannot be separated (the LTV head reads the shared user vector,
  or the models differ in width): then both must pass, and both move together.

A check whose metric does not exist for this run (no recommendation holdout, e.g. a one-item catalogue; no LTV
customers) is skipped, and the reasons say so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy and pandas stay out of the DAG file's import
    from models.compare import Comparison

log = logging.getLogger("ltvrec")
HEADS = ("recommendation", "ltv")
HEAD_NAMES = {"recommendation": "recommendations", "ltv": "LTV"}


@dataclass
class Decision:
    heads: dict[str, bool]  # head -> promoted
    reasons: list[str] = field(default_factory=list)
    rubber_stamp: bool = False

    @property
    def promote(self) -> bool:
        return any(self.heads.values())

    @property
    def verdict(self) -> str:
        if all(self.heads.values()):
            return "promoted"
        if not self.promote:
            return "rejected"
        return f"promoted for {' and '.join(HEAD_NAMES[h] for h, ok in self.heads.items() if ok)} only"


def _metric(metrics: dict, group: str, model: str, key: str) -> float | None:
    value = metrics.get(group, {}).get(model, {}).get(key)
    return None if value is None or value != value else float(value)  # NaN: not measured


def tolerances(cfg) -> dict[str, float]:
    return {"ndcg_10": cfg.ndcg_tolerance, "gini": cfg.gini_tolerance, "decile_mape": cfg.decile_mape_tolerance}


def decide(metrics: dict, champions: dict[str, dict], comparisons: dict[str, list[Comparison]],
           tolerance: dict[str, float], coupled: str | None = None) -> Decision:
    """`metrics`: the evaluate stage's {"recommendation": {model: {...}}, "ltv": {model: {...}}}; `champions`:
    {head: {"version", "unfit": [reasons]}} (empty before the first promotion); `comparisons`: each head's paired
    comparisons (with the champion where it is fit, else with the baseline); `coupled`: why the heads cannot be
    decided separately, or None."""
    if not champions:
        reasons = ["first model of this name: promoted without comparison (rubber stamp)"]
        ndcg, pop = (_metric(metrics, "recommendation", m, "ndcg_10") for m in ("model", "popularity"))
        if ndcg is not None and pop is not None and ndcg <= pop:
            reasons.append(f"warning: its NDCG@10 {ndcg:.4f} does not beat popularity {pop:.4f}")
        return Decision({h: True for h in HEADS}, reasons, rubber_stamp=True)

    failed, passed = [], []
    for head in HEADS:
        head_failed, head_passed = head_checks(head, metrics, champions.get(head), comparisons.get(head, []),
                                               tolerance)
        failed += [(head, r) for r in head_failed]
        passed += [(head, r) for r in head_passed]
    heads = {h: not any(fh == h for fh, _ in failed) for h in HEADS}
    reasons = [f"{HEAD_NAMES[h]}: {r}" for h, r in failed + passed]
    if coupled and not all(heads.values()) and any(heads.values()):
        heads = {h: False for h in HEADS}
        reasons.insert(0, f"both heads rejected: they are decided together because {coupled}")
    return Decision(heads, reasons)


def head_checks(head: str, metrics: dict, champion: dict | None, comparisons: list[Comparison],
                tolerance: dict[str, float]) -> tuple[list[str], list[str]]:
    """(failed, passed) checks of one head."""
    failed, passed = [], []
    if head == "recommendation":
        ndcg = _metric(metrics, "recommendation", "model", "ndcg_10")
        if ndcg is None:
            return [], ["no recommendation holdout in this run: NDCG@10 checks skipped"]
        pop = _metric(metrics, "recommendation", "popularity", "ndcg_10")
        if pop is not None:
            (passed if ndcg > pop else failed).append(
                f"NDCG@10 {ndcg:.4f} {'beats' if ndcg > pop else 'does not beat'} popularity {pop:.4f}")
    elif _metric(metrics, "ltv", "ziln", "gini") is None:
        return [], ["no LTV holdout in this run: LTV checks skipped"]
    if champion is None:
        passed.append("no champion of this head yet")
    elif champion["unfit"]:
        baseline = "popularity" if head == "recommendation" else "the naive past spend"
        passed.append(f"champion v{champion['version']} is unfit for this run's data "
                      f"({'; '.join(champion['unfit'])}): compared with {baseline} only")
    elif not comparisons:
        passed.append(f"champion v{champion['version']} has no result on this holdout: not compared")
    for comparison in comparisons:
        tol = tolerance[comparison.metric]
        (failed if comparison.worse_beyond(tol) else passed).append(comparison.text(tol))
    return failed, passed


def evaluate_champions(cfg, fs, protocol, report) -> dict[str, dict]:
    """Each head's champion on this run's holdout, by the same code as the challenger (its results are added to
    `report` as "champion"), with the facts that say whether it is fit for this run's data:
    {head: {"version", "unfit": [reasons], "facts": {...}}}; {} before the first promotion."""
    from models.checkpoint import LoadedModel
    from models.evaluate import known_item_shares
    from models.report import ModelEvaluation, evaluate_model

    from ltvrec import tracking

    versions = tracking.champion_versions(cfg)
    champions = {}
    for version in sorted(set(versions.values()), key=int):
        heads = tuple(h for h in HEADS if versions[h] == version)
        error, facts = None, {}
        try:
            loaded = LoadedModel.from_registry(f"models:/{cfg.registered_model}/{version}")
            facts = known_item_shares(fs, loaded, protocol) | {
                "horizon_days": loaded.horizon_days, "ltv_user_dim": loaded.model.cfg.ltv_user_dim,
                "d_model": loaded.model.cfg.d_model}
            report.add_model("champion", evaluate_model(fs, loaded, protocol, report.actual, heads,
                                                        report.total_from))
        except Exception as exc:  # e.g. a champion from an older feature set: unfit, and the gate says why
            log.warning("champion v%s of %s could not be evaluated: %r", version, cfg.registered_model, exc)
            report.add_model("champion", ModelEvaluation())
            error = f"{type(exc).__name__}: {exc}"
        for head in heads:
            champions[head] = {"version": version, "facts": facts,
                               "unfit": unfit_reasons(head, facts, error, cfg.champion_min_known_share,
                                                      fs.split["horizon_days"])}
    return champions


def unfit_reasons(head: str, facts: dict, error: str | None, min_known_share: float, horizon_days: int) -> list[str]:
    """Why a champion cannot be trusted with this run's data (empty: it is fit). A drop of its realised
    performance will join these once runs measure their published outcomes."""
    if error:
        return [f"it cannot be evaluated on this run's data: {error}"]
    reasons = []
    if head == "recommendation":
        for key, what in (("known_catalogue_share", "this run's catalogue"), ("known_recent_share",
                                                                             "the users' recent items")):
            if facts[key] < min_known_share:
                reasons.append(f"it knows {facts[key]:.0%} of {what} (champion_min_known_share "
                               f"{min_known_share:.0%})")
    elif facts["horizon_days"] is None:
        reasons.append("its LTV horizon is not recorded (a model from before ltvrec recorded it)")
    elif facts["horizon_days"] != horizon_days:
        reasons.append(f"it was trained for an LTV horizon of {facts['horizon_days']} days, this run's is "
                       f"{horizon_days}")
    return reasons


def compare(cfg, report, champions: dict[str, dict]) -> dict[str, list[Comparison]]:
    """The gate's paired comparisons: each head with its champion where that is fit; an unfit LTV champion's
    place is taken by the naive past spend (popularity's check needs no interval: it must simply be beaten)."""
    from models.compare import LTV_METRICS, compare_ltv, compare_ndcg

    settings = (cfg.gate_resamples, cfg.gate_confidence, cfg.seed)
    found: dict[str, list[Comparison]] = {h: [] for h in HEADS}
    rec, ltv = champions.get("recommendation"), champions.get("ltv")
    if rec and not rec["unfit"] and {"model", "champion"} <= set(report.ndcg_per_user):
        found["recommendation"].append(compare_ndcg(report.ndcg_per_user["model"], report.ndcg_per_user["champion"],
                                                    f"champion v{rec['version']}", *settings))
    if ltv and len(report.actual) and "ziln" in report.ltv_values:
        if not ltv["unfit"] and "champion" in report.ltv_values:
            for metric in LTV_METRICS:
                found["ltv"].append(compare_ltv(metric, report.actual, report.ltv_values["ziln"],
                                                report.ltv_values["champion"], f"champion v{ltv['version']}", *settings))
        elif ltv["unfit"]:
            found["ltv"].append(compare_ltv("gini", report.actual, report.ltv_values["ziln"],
                                            report.ltv_values["naive_past_spend"], "naive past spend", *settings))
    return found


def coupling(cfg, champions: dict[str, dict]) -> str | None:
    """Why the challenger's heads cannot be decided separately (models.checkpoint.combine_heads joins one model's
    recommender with another's LTV head), or None."""
    if cfg.ltv_user_dim:
        return "the challenger's LTV head reads the shared user vector (ltv_user_dim > 0)"
    for head, champion in champions.items():
        facts = champion["facts"]
        if not facts:
            return f"the {HEAD_NAMES[head]} champion v{champion['version']} could not be loaded"
        if facts["ltv_user_dim"]:
            return f"champion v{champion['version']}'s LTV head reads its user vector (ltv_user_dim > 0)"
        if facts["d_model"] != cfg.d_model:
            return f"champion v{champion['version']} is {facts['d_model']} wide, the challenger {cfg.d_model}"
    return None


def register(cfg, model_uri: str, metrics: dict, gate: dict, run_name: str, mlflow_run_id: str) -> dict:
    """Register the challenger, tag the version with the gate's decision, its reasons and comparisons, give it a
    one-line description, and move each head's alias to it where it passes. A rejected challenger stays
    registered for comparison in the MLflow UI; the champions keep their aliases and score this run."""
    import mlflow
    from mlflow import MlflowClient

    from ltvrec import tracking
    from models.compare import Comparison

    tracking.configure(cfg.experiment)
    champions = gate.get("champions", {})
    comparisons = {h: [Comparison.from_dict(c) for c in found] for h, found in gate.get("comparisons", {}).items()}
    decision = decide(metrics, champions, comparisons, tolerances(cfg), gate.get("coupled"))
    version = str(mlflow.register_model(model_uri, cfg.registered_model,
                                        tags={"airflow_run": run_name, "mlflow_run_id": mlflow_run_id}).version)
    before = {h: champions.get(h, {}).get("version") for h in HEADS}
    now = {h: version if decision.heads[h] else before[h] for h in HEADS}
    client = MlflowClient()
    for key, value in version_tags(decision, metrics, before, comparisons).items():
        client.set_model_version_tag(cfg.registered_model, version, key, value)
    client.update_model_version(cfg.registered_model, version, description=describe(cfg, metrics, decision, run_name))
    if decision.promote:  # both aliases, always: a registry from before @ltv_champion must keep its LTV head
        for head, alias in tracking.ALIASES.items():
            client.set_registered_model_alias(cfg.registered_model, alias, now[head])
    (log.info if decision.promote else log.warning)(
        "model gate: %s v%s %s (champions now: recommendations v%s, LTV v%s): %s", cfg.registered_model, version,
        decision.verdict, now["recommendation"], now["ltv"], "; ".join(decision.reasons))
    tracking.set_run_tags(cfg, mlflow_run_id, {"model_gate": decision.verdict,
                                               "model_gate_reasons": "; ".join(decision.reasons)[:5000]})
    return {"model_name": cfg.registered_model, "version": version, "decision": decision.verdict,
            "heads": {h: "promoted" if ok else "rejected" for h, ok in decision.heads.items()},
            "reasons": decision.reasons, "rubber_stamp": decision.rubber_stamp, "coupled": gate.get("coupled"),
            "comparisons": {h: [c.to_dict() for c in found] for h, found in comparisons.items()},
            "champion_before": before["recommendation"], "ltv_champion_before": before["ltv"],
            "champion": now["recommendation"], "ltv_champion": now["ltv"]}


GATE_METRICS = [("challenger_ndcg_10", "recommendation", "model", "ndcg_10"),
                ("popularity_ndcg_10", "recommendation", "popularity", "ndcg_10"),
                ("champion_ndcg_10", "recommendation", "champion", "ndcg_10"),
                ("challenger_gini", "ltv", "ziln", "gini"), ("champion_gini", "ltv", "champion", "gini")]


def version_tags(decision: Decision, metrics: dict, before: dict[str, str | None],
                 comparisons: dict[str, list[Comparison]]) -> dict[str, str]:
    """What the MLflow UI shows on the version: the verdict per head, the reasons, each comparison's gain and
    interval, and the headline metrics."""
    tags = {"promotion": decision.verdict, "promotion_reasons": "; ".join(decision.reasons)[:5000],
            "rubber_stamp": str(decision.rubber_stamp).lower(), "champion_before": before["recommendation"] or "none",
            "ltv_champion_before": before["ltv"] or "none"}
    tags |= {f"promotion_{h}": "promoted" if ok else "rejected" for h, ok in decision.heads.items()}
    for found in comparisons.values():
        for c in found:
            tags[f"gain_{c.metric}"] = f"{c.gain:+.4f} [{c.confidence:.0%} CI {c.low:+.4f}, {c.high:+.4f}] vs {c.reference}"
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
