"""The LTV prior: BG/NBD + Gamma-Gamma per cut-off, scaled by a seasonal factor; the ZILN head corrects it.

For every LTV cut-off c of the features (train*, eval, score), BG/NBD + Gamma-Gamma (models/btyd.py) is fitted on
the customers' purchase summaries before c. BTYD models are stationary: they carry no notion of season, and on
seasonal data (Online Retail II: the evaluation window is the Q4 peak, the training window the summer) their
level is off by the season. The seasonal factor of c measures that, a year earlier: at the reference cut-off
r = c - 365 days (`ref_<c>`, see jobs/features.py), BG/NBD + Gamma-Gamma is fitted the same way and

    season(c) = actual spend in [r, r + H) / predicted spend for [r, r + H)    (clipped to [1/4, 4])

Everything it uses lies before c. The factor is all or nothing for a run: when one of the run's cut-offs has no
reference (less than a year and H days of history), every factor is 1, so that the head never learns a level
with one definition and applies it with another. Then

    ltv_prior = max(BTYD expected value * season(c), PRIOR_FLOOR_SHARE * median of that at c)

and the ZILN head's lognormal mu is log(ltv_prior) + the network's correction (models/sasrec.py).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

PRIOR_COLUMNS = ["btyd_expected_value", "btyd_expected_purchases", "btyd_p_alive", "ltv_prior"]
SEASON_CLIP = (0.25, 4.0)
PRIOR_FLOOR_SHARE = 0.01  # a customer's prior is at least 1% of the cut-off's median prior (log(0) is no prior)


def btyd_predictions(frame: pd.DataFrame, horizon_days: float) -> pd.DataFrame:
    """BG/NBD + Gamma-Gamma (PyMC-Marketing, MAP) fitted on the customers of one cut-off (`btyd_*` summary columns
    of jobs/features.py): user_id, p_alive, expected_purchases, expected_value, aligned with `frame`."""
    from models.btyd import bgnbd_gamma_gamma

    summary = frame[["user_id", "btyd_frequency", "btyd_recency", "btyd_T", "btyd_monetary_value"]].rename(
        columns=lambda c: c.removeprefix("btyd_"))
    summary["monetary_value"] = summary["monetary_value"].clip(lower=0.0)  # net of returns it can dip below 0
    predicted = bgnbd_gamma_gamma(summary, horizon_days).set_index("user_id").reindex(frame["user_id"]).fillna(0.0)
    return predicted.reset_index()


def seasonal_factors(ltv: pd.DataFrame, btyd: dict[str, pd.DataFrame], cutoffs: list[str]
                     ) -> dict[str, float | None]:
    """season(c) for each of `cutoffs`: actual / BTYD-predicted spend at its reference cut-off, or 1 for all.
    Whether there are factors is decided on the run's own cut-offs; a backtest origin with no reference while the
    others have one gets None: its prior is plain BTYD, and the backtest compares it only with plain BTYD."""
    missing = [c for c in cutoffs if f"ref_{c}" not in btyd and not c.startswith("backtest_")]
    if missing:
        log.info("LTV prior: no seasonal factor (no cut-off a year before %s with enough history); factors are 1",
                 ", ".join(missing))
        return {c: 1.0 for c in cutoffs}
    factors = {}
    for c in cutoffs:
        ref = f"ref_{c}"
        if ref not in btyd:
            log.info("LTV prior: backtest origin %s has no cut-off a year before it with enough history: its prior "
                     "is not seasonal", c)
            factors[c] = None
            continue
        actual = float(ltv.loc[ltv["cutoff"] == ref, "label_value"].sum())
        predicted = float(btyd[ref]["expected_value"].sum())
        factor = actual / predicted if predicted > 0 else 1.0
        factors[c] = float(np.clip(factor, *SEASON_CLIP))
        log.info("LTV prior: season(%s) = %.3f (a year before: actual %.0f vs BG/NBD+GG %.0f)",
                 c, factors[c], actual, predicted)
    return factors


def floored(prior: np.ndarray) -> np.ndarray:
    """Every value at least PRIOR_FLOOR_SHARE of the median positive one (log(0) is no prior)."""
    positive = prior[prior > 0]
    return np.maximum(prior, PRIOR_FLOOR_SHARE * (float(np.median(positive)) if len(positive) else 1.0))


def fit_prior(ltv: pd.DataFrame, horizon_days: float) -> tuple[pd.DataFrame, dict[str, float | None]]:
    """(one row per customer and cut-off: user_id, cutoff, PRIOR_COLUMNS; the seasonal factor of each cut-off)."""
    btyd = {}
    for name, frame in ltv.groupby("cutoff", sort=True):
        btyd[name] = btyd_predictions(frame.reset_index(drop=True), horizon_days)
    cutoffs = [c for c in btyd if not c.startswith("ref_")]
    factors = seasonal_factors(ltv, btyd, cutoffs)
    rows = []
    for c in cutoffs:
        pred = btyd[c]
        prior = floored(pred["expected_value"].to_numpy(dtype=float) * (factors[c] or 1.0))
        rows.append(pd.DataFrame({
            "user_id": pred["user_id"].to_numpy(), "cutoff": c,
            "btyd_expected_value": pred["expected_value"].to_numpy(dtype=float),
            "btyd_expected_purchases": pred["expected_purchases"].to_numpy(dtype=float),
            "btyd_p_alive": pred["p_alive"].to_numpy(dtype=float),
            "ltv_prior": prior}))
    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["user_id", "cutoff", *PRIOR_COLUMNS])
    return out, factors


def write_prior(features_dir, horizon_days: float) -> dict:
    """Fit the prior on the Spark LTV features and write it beside them (features/ltv_prior, read by
    models.data.load_ltv); returns the stage's record (seasonal factors, rows)."""
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    from models.data import PRIOR_FILE

    ltv = pq.ParquetDataset(Path(features_dir) / "ltv_features").read().to_pandas()
    if ltv.empty:  # e.g. ratings only: no customers, no LTV head to correct
        return {"customers": 0}
    prior, factors = fit_prior(ltv, horizon_days)
    out = Path(features_dir) / PRIOR_FILE
    out.mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pandas(prior, preserve_index=False), out / "part-0.parquet")
    return {"seasonal_factors": factors, "rows": {"ltv_prior": len(prior)}}
