"""The LTV backtest: rolling origins before the training cut-off decide what is tuned, never the evaluation window.

The features job (jobs/features.py) adds backtest origins `backtest_k` at D - (2 + k)H where history allows.
Each origin is fitted on its customers (features at the origin, labels in the H days after it) and checked at the
next later cut-off (`backtest_{k-1}`, the last at `train` = D - 2H), whose labels end by D - H: the same gap of H
as between the training cut-off and the evaluation cut-off. Every LTV family is fitted and checked the same way:

- `ziln`: a head of the network's LTV head's shape (models/sasrec.py) on the same features and prior, read at each
  correction weight w of WEIGHTS (`ziln_w0.5`, ...);
- `gbdt`: LightGBM with a Tweedie objective on the same features (the baseline practitioners use);
- `bgnbd_gamma_gamma`, `seasonal_bgnbd_prior` (models/ltv_prior.py) and `naive_past_spend`, which need no fit.

What the backtest decides for the run:
- `level` of each family: actual / predicted total at the checks (geometric mean over the origins, clipped to
  LEVEL_CLIP): how far a model fitted on one window lands H days later. With ltv_calibration=level the published
  ZILN estimates are multiplied by it (one or two origins did not predict the next window's level,
  docs/benchmarks.md).
- `ltv_total_from`: where the published ZILN estimates take their total from (`choose_total`; the head ranks,
  `at_total` rescales): the head's own (`model`); the seasonal prior's total over the same customers (`prior`); or
  BG/NBD + Gamma-Gamma's total times its ratio of actual to predicted spend in the latest label window before the
  cut-off (`recent`, `recent_total`; the seasonal prior corrects the same level from a year back). With
  ltv_calibration=auto (the default), the one of `prior` and `recent` whose total was nearer the actual total at
  the backtest's checks (the prior judged only where it is of the published kind, seasonal where the run's is).
  The head's own total is not a candidate: it is learned from one label window and moves with the training
  (docs/benchmarks.md); ltv_calibration=none publishes it. Without a check (a short history), `recent`.
- `ltv_correction_weight`: the w with the best Gini over the origins. On Online Retail II the decile MAPE at the
  backtest's check favoured the opposite w from the evaluation window's (the season changes between them), while
  the Gini ordered the w alike (docs/benchmarks.md).
- `best_family`: the family with the highest Gini at the checks.
- `ltv_model`: the family whose estimates are published (`choose_model`): ZILN, unless another family ranked
  customers better (Gini) with no worse decile MAPE at the checks, so the published estimate is never one the
  backtest found dominated by a baseline the run computes anyway.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import torch

from models.data import FeatureScaler, ltv_head_features
from models.ltv_prior import floored
from models.metrics import ltv_metrics
from models.sasrec import ltv_head, shrink_to_prior, ziln_expected_value, ziln_loss, ziln_sigma

log = logging.getLogger(__name__)

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
FALLBACK_WEIGHT = 0.5  # when no backtest origin fits in the history (see docs/model.md)
LEVEL_CLIP = (0.25, 4.0)
TOTAL_SOURCES = ("model", "prior", "recent")
MIN_CUSTOMERS = 10  # a cut-off with fewer customers (or no spend) fits and checks nothing


def origin_pairs(cutoffs: dict[str, str]) -> list[tuple[str, str]]:
    """(origin, check) names: backtest_k -> backtest_{k-1}, backtest_1 -> train; latest first."""
    ks = sorted(int(name.removeprefix("backtest_")) for name in cutoffs if name.startswith("backtest_"))
    pairs = []
    for k in ks:
        check = "train" if k == 1 else f"backtest_{k - 1}"
        if check in cutoffs:
            pairs.append((f"backtest_{k}", check))
    return pairs


def fit_ziln(train: pd.DataFrame, features: list[str], use_prior: bool, sigma_max: float, width: int, seed: int,
             weights: tuple[float, ...] = WEIGHTS, epochs: int = 15, batch_size: int = 128):
    """Train a standalone ZILN head; returns predict(frame) -> {w: expected value} (w = 1 only without a prior)."""
    torch.manual_seed(seed)
    scaler = FeatureScaler.fit(train, features)
    head = ltv_head(len(features), width)  # the network's, without the user vector
    optimizer = torch.optim.AdamW(head.parameters(), 2e-3, weight_decay=0.01)
    x = torch.as_tensor(scaler.transform(train))
    offset = _log_prior(train, use_prior)
    y = torch.as_tensor(train["label_value"].to_numpy(np.float32))

    def params(out, log_prior):
        return out[:, 0], out[:, 1] + log_prior, ziln_sigma(out[:, 2], sigma_max)

    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), batch_size):
            rows = order[i : i + batch_size]
            loss = ziln_loss(*params(head(x[rows]), offset[rows]), y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    @torch.no_grad()
    def predict(frame: pd.DataFrame) -> dict[float, np.ndarray]:
        out = head(torch.as_tensor(scaler.transform(frame)))
        _, ev = ziln_expected_value(*params(out, _log_prior(frame, use_prior)))
        if not use_prior:
            return {1.0: ev.double().numpy()}
        prior = torch.as_tensor(frame["ltv_prior"].to_numpy(np.float64))
        return {w: shrink_to_prior(ev.double(), prior, w).numpy() for w in weights}

    return predict


def _log_prior(frame: pd.DataFrame, use_prior: bool) -> torch.Tensor:
    if not use_prior:
        return torch.zeros(len(frame))
    return torch.log(torch.as_tensor(frame["ltv_prior"].to_numpy(np.float32)))


def fit_gbdt(train: pd.DataFrame, features: list[str], seed: int):
    """LightGBM regressor with a Tweedie objective (zero-inflated, heavy-tailed spend); returns predict(frame)."""
    import lightgbm

    model = lightgbm.LGBMRegressor(objective="tweedie", tweedie_variance_power=1.5, n_estimators=300,
                                   learning_rate=0.03, num_leaves=15, min_child_samples=20, subsample=0.8,
                                   subsample_freq=1, colsample_bytree=0.8, random_state=seed, n_jobs=2, verbose=-1,
                                   deterministic=True, force_row_wise=True)  # the same fit, evaluated and published
    model.fit(train[features].fillna(0.0).to_numpy(dtype=float), train["label_value"].to_numpy(dtype=float))
    return lambda frame: model.predict(frame[features].fillna(0.0).to_numpy(dtype=float))


BASELINE_COLUMNS = {"naive_past_spend": "spend_past_h", "bgnbd_gamma_gamma": "btyd_expected_value",
                    "seasonal_bgnbd_prior": "ltv_prior"}  # the families read from a feature column, no fit


def fit_family(family: str, train: pd.DataFrame, use_prior: bool, seed: int = 0):
    """predict(frame) -> expected values of a family other than ZILN; `gbdt` is fitted on `train`."""
    if family == "gbdt":
        return fit_gbdt(train, ltv_head_features(use_prior), seed)
    column = BASELINE_COLUMNS[family]
    return lambda frame: np.maximum(frame[column].to_numpy(dtype=float), 0.0)


def family_predictions(origin: pd.DataFrame, check: pd.DataFrame, use_prior: bool, sigma_max: float, width: int,
                       seed: int, weights: tuple[float, ...] = WEIGHTS) -> dict[str, np.ndarray]:
    """Every family's expected values for the `check` customers, fitted on the `origin` customers."""
    ziln = fit_ziln(origin, ltv_head_features(use_prior), use_prior, sigma_max, width, seed, weights)(check)
    out = {f"ziln_w{w:g}": ev for w, ev in ziln.items()}
    baselines = ["gbdt", "naive_past_spend"] + (["bgnbd_gamma_gamma", "seasonal_bgnbd_prior"] if use_prior else [])
    return out | {family: fit_family(family, origin, use_prior, seed)(check) for family in baselines}


def published_estimates(fs, family: str, use_prior: bool, level: float = 1.0, cutoff: str = "score") -> pd.Series:
    """A family's expected values at a cut-off by user_id (models.data.FeatureSet `fs`), fitted where the network's
    LTV head is (the training cut-offs, with the evaluation's seed: the published boosted trees are those the
    evaluate stage measured), times `level`."""
    train = fs.ltv_train_frame()
    if family == "gbdt" and not fittable(train):
        raise ValueError(f"ltv_model gbdt: the training cut-offs have {len(train)} customers and no spend to fit on")
    frame = fs.ltv_frame(cutoff)
    return pd.Series(fit_family(family, train, use_prior)(frame) * level, index=frame["user_id"].to_numpy())


def run_backtest(ltv: pd.DataFrame, cutoffs: dict[str, str], use_prior: bool, sigma_max: float, width: int,
                 seed: int, weights: tuple[float, ...] = WEIGHTS, seasons: dict[str, float | None] | None = None
                 ) -> dict:
    """The backtest's figures per origin and family, and what it decides (see the module's docstring). `ltv`:
    models.data.load_ltv's rows; `seasons`: the ltv_prior stage's seasonal factors (None: a backtest origin whose
    prior is not seasonal, models/ltv_prior.py)."""
    frames = {name: frame.sort_values("user_id", ignore_index=True) for name, frame in ltv.groupby("cutoff")}
    pairs = [(o, c, frames[o], frames[c]) for o, c in origin_pairs(cutoffs) if _usable(frames.get(o), use_prior)
             and _usable(frames.get(c), use_prior)]
    in_window = not pairs
    if in_window:
        pairs = in_window_pairs(frames.get("train"), use_prior)
    if not pairs:
        return {"origins": [], "decided": False,
                "reason": "no backtest origin (less than 3H and 30 days of history before the run date, or "
                          "ltv_backtest_origins=0) and too few training customers to split"}
    checks, predicted, actual = [], {}, {}
    for origin, check, *pair in pairs:
        if use_prior and seasons and (seasons.get(origin) is None) != (seasons.get(check) is None):
            pair = [plain_prior(frame) for frame in pair]  # one definition of the prior at both ends
        values = family_predictions(*pair, use_prior, sigma_max, width, seed, weights)
        actual[check] = pair[1]["label_value"].to_numpy(dtype=float)
        predicted[check] = values
        like = in_window or _prior_as_published(seasons, origin, check)
        checks.append({"origin": origin, "check": check, "origin_date": cutoffs[origin.split(":")[0]],
                       "check_date": cutoffs[check.split(":")[0]], "customers": len(actual[check]),
                       "prior_as_published": like,
                       "metrics": {name: ltv_figures(actual[check], ev) for name, ev in values.items()}})
    families = list(predicted[pairs[0][1]])
    levels = {f: _level([c["metrics"][f] for c in checks]) for f in families}
    calibrated = {f: float(np.mean([_calibrated_mape(actual[c], predicted[c][f], levels[f]) for c in predicted]))
                  for f in families}
    gini = {f: float(np.mean([c["metrics"][f]["gini"] for c in checks])) for f in families}
    mape = {f: float(np.mean([c["metrics"][f]["decile_mape"] for c in checks])) for f in families}
    # judged where the check's prior is the kind the run publishes with (seasonal or not); elsewhere where none is
    like = [c for c in checks if c["prior_as_published"]] or checks
    total_error = {f: float(np.mean([_log_error(c["metrics"][f]) for c in like])) for f in families}
    weight = choose_weight(gini) if use_prior else 1.0
    ziln = f"ziln_w{weight:g}"
    best = max((f for f in families if f == ziln or not f.startswith("ziln_")), key=lambda f: gini[f])
    record = {"origins": checks, "decided": True, "in_window": in_window, "levels": levels,
              "calibrated_decile_mape": calibrated,
              "gini": gini, "decile_mape": mape, "total_error": total_error,
              "total_error_checks": [c["check"] for c in like], "ltv_correction_weight": weight, "ziln": ziln,
              "best_family": best}
    # one window's halves say nothing about how the level moves between windows
    record["total_sources"] = {} if in_window else total_sources(frames, cutoffs, list(predicted),
                                                                 (seasons or {}) if use_prior else None)
    for source, found in record["total_sources"].items():  # the chosen head at each source's total
        record[f"{source}_total_decile_mape"] = float(np.mean([ltv_metrics(actual[c], at_total(
            predicted[c][ziln], found["totals"][c]))["decile_mape"] for c in found["totals"]]))
    return record


def in_window_pairs(train: pd.DataFrame | None, use_prior: bool) -> list[tuple[str, str, pd.DataFrame, pd.DataFrame]]:
    """Without a backtest origin (a short history), the training cut-off's customers in two halves (by a hash of
    user_id), each fitted on one and checked on the other: `train:1` -> `train:2` and back. Their labels end by
    D - H, like the origins'; they tell how families and weights rank customers, not how the level drifts."""
    if not _usable(train, use_prior):
        return []
    half = (pd.util.hash_pandas_object(train["user_id"], index=False).to_numpy() % 2).astype(bool)
    one, two = train[~half].reset_index(drop=True), train[half].reset_index(drop=True)
    if not (_usable(one, use_prior) and _usable(two, use_prior)):
        return []
    return [("train:1", "train:2", one, two), ("train:2", "train:1", two, one)]


def total_sources(frames: dict[str, pd.DataFrame], cutoffs: dict[str, str], checks: list[str],
                  seasons: dict[str, float | None] | None) -> dict[str, dict]:
    """The `prior` and `recent` totals at each check where they apply, and their mean |log(total / actual)| there
    (`error`). The prior applies where it is of the kind the run publishes with (seasonal where the evaluation
    cut-off's is; without `seasons`, no prior at all); `recent` where a label window ends by the check."""
    horizon = (datetime.fromisoformat(cutoffs["eval"]) - datetime.fromisoformat(cutoffs["train"])).days
    found = {}
    for source in ("prior", "recent"):
        if source == "prior" and seasons is None:
            continue
        applies = [c for c in checks
                   if source == "recent" or (seasons.get(c) is None) == (seasons.get("eval") is None)]
        totals = {c: published_total(frames, cutoffs, horizon, c, source) for c in applies}
        totals = {c: total for c, total in totals.items() if total}
        if totals:  # every check has spend (_usable)
            ratios = {c: total / float(frames[c]["label_value"].sum()) for c, total in totals.items()}
            found[source] = {"totals": totals, "ratios": ratios,
                             "error": float(np.mean([abs(math.log(r)) for r in ratios.values()]))}
    return found


def _prior_as_published(seasons: dict[str, float | None] | None, origin: str, check: str) -> bool:
    """Whether a pair's prior is of the kind the run's cut-offs have: seasonal at both ends where the run's prior
    is seasonal (an origin with no year-back reference makes its pair plain BG/NBD + GG, `plain_prior`)."""
    return not seasons or (seasons.get(origin) is not None and seasons.get(check) is not None)


def at_total(expected: np.ndarray, total: float | None) -> np.ndarray:
    """`expected` rescaled to add up to `total` over these customers: the head ranks, the total source sets the
    level (None, or nothing to rescale: as it is)."""
    own = float(np.sum(expected))
    return expected * (total / own) if total is not None and own > 0 else expected


def published_total(frames: dict[str, pd.DataFrame], cutoffs: dict[str, str], horizon_days: int, cutoff: str,
                    source: str) -> float | None:
    """The total the published ZILN estimates take at a cut-off (`frames`: models.data.load_ltv's rows by cut-off)
    from `source` (TOTAL_SOURCES): the seasonal prior's over its customers, `recent_total`, or None (`model`: the
    head's own, or a source with nothing to go on)."""
    if source == "prior":
        frame = frames[cutoff]
        return float(frame["ltv_prior"].sum()) if "ltv_prior" in frame and frame["ltv_prior"].notna().all() else None
    if source == "recent":
        return recent_total(frames, cutoffs, horizon_days, cutoff)
    return None


def recent_total(frames: dict[str, pd.DataFrame], cutoffs: dict[str, str], horizon_days: int, cutoff: str
                 ) -> float | None:
    """BG/NBD + Gamma-Gamma's total over the cut-off's customers times actual / BG/NBD + GG's total in the latest
    label window that ends by the cut-off (the year-back references ref_* aside): the seasonal prior's correction
    of BTYD's level (models/ltv_prior.py), taken from the last window instead of a year back. None without one."""
    at = datetime.fromisoformat(cutoffs[cutoff])
    windows = {datetime.fromisoformat(iso): name for name, iso in cutoffs.items()
               if not name.startswith("ref_") and name in frames
               and datetime.fromisoformat(iso) + timedelta(days=horizon_days) <= at}
    if not windows or "btyd_expected_value" not in frames[cutoff]:
        return None
    latest = frames[windows[max(windows)]]
    actual, predicted = float(latest["label_value"].sum()), float(latest["btyd_expected_value"].sum())
    return float(frames[cutoff]["btyd_expected_value"].sum()) * actual / predicted if actual > 0 < predicted else None


def _log_error(metrics: dict[str, float]) -> float:
    """|log(predicted / actual total)| at one check (inf when either is 0)."""
    if metrics["total_predicted"] <= 0 or metrics["total_actual"] <= 0:
        return math.inf
    return abs(math.log(metrics["total_predicted"] / metrics["total_actual"]))


def choose_total(record: dict, calibration: str, use_prior: bool) -> tuple[str, str]:
    """(where the published ZILN estimates take their total from, one of TOTAL_SOURCES; why)."""
    if calibration in ("none", "level"):
        return "model", f"total: the head's own (ltv_calibration={calibration})"
    if calibration == "prior_total":
        if not use_prior:
            return "model", "total: the head's own (ltv_calibration=prior_total, but no seasonal prior to take it from)"
        return "prior", "total: the seasonal prior's (ltv_calibration=prior_total)"
    if calibration == "recent_total":
        return "recent", "total: BG/NBD + GG's at the latest window's level (ltv_calibration=recent_total)"
    sources = record.get("total_sources") or {}
    if not sources:  # a short history: no year back either, so the latest window is the best guess of the level
        return "recent", ("total: BG/NBD + GG's at the latest label window's level (no backtest check to judge the "
                          "sources at; the head's own where no window ends by the cut-off)")
    source = min(sources, key=lambda name: sources[name]["error"])
    off = "; ".join(f"the {name} total was off by {math.expm1(found['error']):.1%} at {', '.join(found['totals'])}"
                    for name, found in sources.items())
    return source, f"total: the {source} one ({off})"


def choose_model(record: dict, total_from: str = "model") -> tuple[str, str]:
    """(the family to publish, why): among the families that beat the chosen ZILN on Gini at the backtest's checks
    without a worse decile MAPE there, the one with the best Gini; else ZILN (`ziln`). ZILN's decile MAPE is that of
    its estimates as published: at the total of `total_from` (the record's `<source>_total_decile_mape`)."""
    gini, mape, ziln = record["gini"], record["decile_mape"], record["ziln"]
    ziln_mape = record.get(f"{total_from}_total_decile_mape", mape[ziln])
    better = [f for f in gini if not f.startswith("ziln_") and gini[f] > gini[ziln] and mape[f] <= ziln_mape]
    if not better:
        return "ziln", (f"ZILN published: no family beat its Gini ({gini[ziln]:.4f}) without a worse decile MAPE "
                        f"({ziln_mape:.3f}) in the backtest")
    chosen = max(better, key=lambda f: gini[f])
    return chosen, (f"{chosen} published instead of ZILN: in the backtest it ranked customers better (Gini "
                    f"{gini[chosen]:.4f} vs {gini[ziln]:.4f}) with no worse decile MAPE ({mape[chosen]:.3f} vs "
                    f"{ziln_mape:.3f})")


def decide(ltv: pd.DataFrame, cutoffs: dict[str, str], use_prior: bool, sigma_max: float, width: int, seed: int,
           weight: float | None = None, calibration: str = "auto", seasons: dict[str, float | None] | None = None,
           model: str = "auto") -> dict:
    """The backtest's record with `decisions` for the trainer (ltv_correction_weight, ltv_level), the family to
    publish (`ltv_model`, and `ltv_model_level`: its level when calibrating, else 1), where ZILN's total comes from
    (`ltv_total_from`) and `reasons`. `weight`: an explicit correction weight (the backtest then only measures it);
    `calibration`: ltv_calibration (level: apply the level; auto / prior_total: see `choose_total`); `model`: a family
    to publish whatever the backtest finds, or auto (`choose_model`)."""
    record = run_backtest(ltv, cutoffs, use_prior, sigma_max, width, seed, WEIGHTS if weight is None else (weight,),
                          seasons)
    total_from, why_total = choose_total(record, calibration, use_prior)
    if not record["decided"]:
        chosen, published = FALLBACK_WEIGHT if weight is None else weight, "ziln" if model == "auto" else model
        record |= {"decisions": {"ltv_correction_weight": chosen, "ltv_level": 1.0}, "ltv_model": published,
                   "ltv_model_level": 1.0, "ltv_total_from": total_from,
                   "reasons": [f"{record['reason']}: correction weight {chosen:g}, no level calibration, "
                               f"{published} published", why_total]}
        return record
    calibrate = calibration == "level"
    ziln, level = record["ziln"], record["levels"][record["ziln"]]
    w = record["ltv_correction_weight"]
    over = ("the training cut-off's customers, half against half (no backtest origin)" if record["in_window"]
            else f"{len(record['origins'])} origin(s)")
    reasons = [f"correction weight {w:g} ({'set by the run' if weight is not None else 'chosen'}: Gini "
               f"{record['gini'][ziln]:.4f} over {over})",
               f"level {level:.3f}: a ZILN head fitted "
               + ("on the other half of the customers" if record["in_window"] else "H days earlier")
               + f" predicted {1 / level:.3f} x the actual total"
               + ("" if calibrate else f" (not applied: ltv_calibration={calibration})")]
    published, why = (choose_model(record, total_from) if model == "auto"
                      else (model, f"{model} published: set by the run"))
    if published not in ("ziln", *record["gini"]):
        raise ValueError(f"ltv_model {published!r}: the backtest has no such family here ({', '.join(record['gini'])})")
    published_level = record["levels"][published] if calibrate and published != "ziln" else 1.0  # ZILN's: ltv_level
    record |= {"decisions": {"ltv_correction_weight": w, "ltv_level": level if calibrate else 1.0},
               "ltv_model": published, "ltv_model_level": published_level, "ltv_total_from": total_from,
               "reasons": reasons + [why] + ([why_total] if published == "ziln" else [])}
    return record


def plain_prior(frame: pd.DataFrame) -> pd.DataFrame:
    """The cut-off's customers with the prior without its seasonal factor: plain BG/NBD + Gamma-Gamma, floored."""
    return frame.assign(ltv_prior=floored(frame["btyd_expected_value"].to_numpy(dtype=float)))


def fittable(frame: pd.DataFrame | None) -> bool:
    return frame is not None and len(frame) >= MIN_CUSTOMERS and frame["label_value"].sum() > 0


def _usable(frame: pd.DataFrame | None, use_prior: bool) -> bool:
    if not fittable(frame):
        return False
    return not use_prior or ("ltv_prior" in frame and bool(frame["ltv_prior"].notna().all()))


def ltv_figures(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    m = ltv_metrics(actual, predicted)
    m["total_ratio"] = m["total_predicted"] / m["total_actual"] if m["total_actual"] > 0 else float("nan")
    return m


def _level(metrics: list[dict[str, float]]) -> float:
    """Geometric mean of actual / predicted total over the checks, clipped to LEVEL_CLIP."""
    ratios = [m["total_actual"] / m["total_predicted"] for m in metrics if m["total_predicted"] > 0]
    if not ratios:
        return 1.0
    return float(np.clip(math.exp(np.mean(np.log(ratios))), *LEVEL_CLIP))


def _calibrated_mape(actual: np.ndarray, predicted: np.ndarray, level: float) -> float:
    return ltv_metrics(actual, predicted * level)["decile_mape"]


def choose_weight(gini: dict[str, float]) -> float:
    """The correction weight w with the best Gini over the origins (on a tie, the smaller w)."""
    ziln = {float(f.removeprefix("ziln_w")): f for f in gini if f.startswith("ziln_w")}
    return max(ziln, key=lambda w: (gini[ziln[w]], -w))
