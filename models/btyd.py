"""Buy-Till-You-Die baseline for customer lifetime value: BG/NBD (repeat purchases, dropout) + Gamma-Gamma (spend).

Both models are fitted with PyMC-Marketing (`pymc_marketing.clv.BetaGeoModel`, `GammaGammaModel`) by maximum a
posteriori (`model.fit(method="map")`, i.e. `pymc.find_MAP` with L-BFGS-B), which takes seconds where NUTS takes
minutes. The input is one row per customer, summarised at a cut-off (see `jobs/features.py`, columns `btyd_*`):

  frequency       repeat purchase days = distinct purchase days - 1
  recency         days between the first and the last purchase day
  T               days between the first purchase day and the cut-off
  monetary_value  mean net spend per repeat purchase day (0 when frequency == 0)

and the output, per customer, the probability of still being active, the expected number of purchase days in
the next `horizon_days` days, and their expected value (expected purchases x Gamma-Gamma expected spend per
purchase day, the population mean spend for customers without a repeat purchase).

PyTensor runs these graphs in its pure-Python (NumPy) mode, with or without g++: `_configure_pytensor` chooses it
(set `PYTENSOR_FLAGS=cxx=g++` to compile to C instead). The graphs are small and their arrays have one row per
customer, so NumPy's whole-array calls cost what C does, while C pays a compile, or on a warm cache a scan of the
whole cache (`~/.pytensor`) in every new process: ltv_prior took 16.0 s in Python mode against 26.7 s in C on a
small synthetic run, and 33.6 s against 39.1 s on Online Retail II (6 cut-offs, up to 5,852 customers), with the
same prior on Online Retail (docs/benchmarks.md, "BTYD fit time").
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

REQUIRED = ("user_id", "frequency", "recency", "T", "monetary_value")
OUTPUT = ("user_id", "p_alive", "expected_purchases", "expected_value")
# Time is handed to BG/NBD in units of 7 days: PyMC-Marketing's default priors (alpha ~ Weibull(2, 10),
# r ~ Weibull(2, 1), a + b >= 1) are calibrated on weekly data (CDNOW); in days, alpha's prior would pull
# its MAP estimate far below the data's value. Predictions do not depend on the unit otherwise.
TIME_UNIT_DAYS = 7.0
MIN_GG_CUSTOMERS = 5  # fewer repeat customers than this: no Gamma-Gamma fit, see _spend_fallback


def _configure_pytensor() -> None:
    """Set PyTensor flags before its first import (flags the caller already set in PYTENSOR_FLAGS win)."""
    if "pytensor" in sys.modules:
        return
    flags = [f for f in os.environ.get("PYTENSOR_FLAGS", "").split(",") if f.strip()]
    given = {f.split("=", 1)[0].strip() for f in flags}
    extra = []
    if "cxx" not in given:
        # Pure-Python/NumPy mode (see the module's docstring). Without C, fused elementwise ops run as Python loops
        # over scalars: leaving fusion out keeps whole-array NumPy calls (about 3x faster a fit; docs/benchmarks.md).
        extra += ["cxx=", "optimizer_excluding=fusion"]
    if "blas__ldflags" not in given:
        extra.append("blas__ldflags=")  # skip BLAS probing (slow, warns); these models have no matrix products
    if not given & {"base_compiledir", "compiledir"}:
        home = Path.home()  # PyTensor's default: ~/.pytensor, shared by every run on this machine
        if not os.access(home if home.exists() else home.parent, os.W_OK):
            ltv_home = os.environ.get("LTVREC_HOME") or tempfile.gettempdir()
            extra.append(f"base_compiledir={Path(ltv_home).resolve() / '.pytensor'}")
    if extra:
        os.environ["PYTENSOR_FLAGS"] = ",".join(flags + extra)


@contextlib.contextmanager
def _quiet():
    """Keep PyMC/PyTensor/ArviZ chatter off stdout and out of the warnings stream; pipeline logs stay clean."""
    noisy = [logging.getLogger(n) for n in ("pymc", "pytensor", "pymc_marketing", "pymc_extras", "arviz")]
    levels = [lg.level for lg in noisy]
    try:
        for lg in noisy:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(noisy, levels):
            lg.setLevel(level)


def import_clv():
    """PyMC-Marketing's BG/NBD and Gamma-Gamma models, imported after the PyTensor flags ltvrec sets."""
    _configure_pytensor()
    with _quiet():
        from pymc_marketing.clv import BetaGeoModel, GammaGammaModel
    return BetaGeoModel, GammaGammaModel


def _validate(summary: pd.DataFrame, horizon_days: float) -> pd.DataFrame:
    if not isinstance(summary, pd.DataFrame):
        raise ValueError(f"summary must be a pandas DataFrame, got {type(summary).__name__}")
    missing = [c for c in REQUIRED if c not in summary.columns]
    if missing:
        raise ValueError(f"summary is missing column(s) {missing}; required: {list(REQUIRED)}")
    if summary.empty:
        raise ValueError("summary is empty: no customers to fit the BG/NBD and Gamma-Gamma models on")
    if summary["user_id"].isna().any() or summary["user_id"].duplicated().any():
        raise ValueError("summary.user_id must be unique and not null (one row per customer)")
    try:
        horizon = float(horizon_days)
    except (TypeError, ValueError):
        raise ValueError(f"horizon_days must be a number, got {horizon_days!r}") from None
    if not np.isfinite(horizon) or horizon < 0:
        raise ValueError(f"horizon_days must be finite and >= 0, got {horizon_days!r}")
    df = pd.DataFrame({"user_id": summary["user_id"].to_numpy()})
    for c in REQUIRED[1:]:
        try:
            df[c] = pd.to_numeric(summary[c]).astype("float64").to_numpy()
        except (TypeError, ValueError):
            raise ValueError(f"summary.{c} must be numeric") from None
    df["monetary_value"] = df["monetary_value"].fillna(0.0)
    for c in ("frequency", "recency", "T"):
        bad = ~np.isfinite(df[c]) | (df[c] < 0)
        if bad.any():
            raise ValueError(f"summary.{c} must be finite and >= 0 ({int(bad.sum())} bad row(s))")
    if not np.isfinite(df["monetary_value"]).all():
        raise ValueError("summary.monetary_value must be finite")
    x, t_x, T = df["frequency"], df["recency"], df["T"]
    checks = {  # the definitions, in calendar days of purchase: 0 <= frequency <= recency <= T
        "frequency must be a whole number of repeat purchase days": x != np.floor(x),
        "recency must exceed 0 with repeat purchase days, at least 1 day each (frequency <= recency)":
            (x > 0) & (t_x < x - 1e-9),
        "recency must be 0 without a repeat purchase (frequency == 0)": (x == 0) & (t_x > 0),
        "recency must be <= T": t_x > T + 1e-9,
    }
    for msg, bad in checks.items():
        if bad.any():
            first = df.loc[bad, "user_id"].iloc[0]
            raise ValueError(f"summary: {msg} ({int(bad.sum())} bad row(s), e.g. user_id {first!r})")
    df["T"] = np.maximum(T, 1e-3)  # T = 0 leaves the BG/NBD likelihood undefined
    return df


def _fit_bgnbd(BetaGeoModel, df: pd.DataFrame, horizon_days: float) -> tuple[np.ndarray, np.ndarray]:
    data = pd.DataFrame({
        "customer_id": np.arange(len(df)),
        "frequency": df["frequency"].to_numpy(),
        "recency": df["recency"].to_numpy() / TIME_UNIT_DAYS,
        "T": df["T"].to_numpy() / TIME_UNIT_DAYS,
    })
    model = BetaGeoModel(data=data)
    model.fit(method="map", progressbar=False)
    post = model.fit_result
    r, alpha, a, b = (float(post[k].mean()) for k in ("r", "alpha", "a", "b"))
    log.info("BG/NBD MAP on %d customers: r=%.4g alpha=%.4g days a=%.4g b=%.4g", len(df), r, alpha * TIME_UNIT_DAYS, a, b)
    if not all(np.isfinite([r, alpha, a, b])):  # not seen on valid summaries; never return NaN downstream
        log.warning("BG/NBD MAP did not converge; using the observed repeat-purchase rate and p_alive = 1")
        return np.ones(len(df)), df["frequency"].to_numpy() / df["T"].to_numpy() * horizon_days
    purchases = np.asarray(model.expected_purchases(future_t=horizon_days / TIME_UNIT_DAYS)).reshape(-1)
    p_alive = np.asarray(model.expected_probability_alive()).reshape(-1)
    p_alive = np.clip(np.nan_to_num(p_alive, nan=0.0), 0.0, 1.0)
    bad = ~np.isfinite(purchases) | (purchases < 0)
    if bad.any():  # 2F1 overflow for extreme histories: fall back to the alive customer's rate over the horizon
        log.warning("BG/NBD: %d non-finite expected purchase value(s); using p_alive * rate * horizon", bad.sum())
        rate = (r + data["frequency"].to_numpy()) / (alpha + data["T"].to_numpy())
        purchases = np.where(bad, p_alive * rate * horizon_days / TIME_UNIT_DAYS, purchases)
    return p_alive, np.maximum(purchases, 0.0)


def _spend_fallback(x: np.ndarray, z: np.ndarray, repeat: np.ndarray) -> np.ndarray:
    """No usable Gamma-Gamma fit: shrink each repeat customer's mean spend towards the population's typical
    spend (the median: a degenerate fit usually means a tail too heavy for the mean), with weight x / (x + 1)."""
    if not repeat.any():
        log.warning("Gamma-Gamma: no customer with a repeat purchase and positive spend; expected value is 0")
        return np.zeros_like(z)
    pop = float(np.median(z[repeat]))
    w = np.where(repeat, x / (x + 1.0), 0.0)
    return (1.0 - w) * pop + w * np.where(repeat, z, 0.0)


def _fit_gamma_gamma(GammaGammaModel, df: pd.DataFrame) -> np.ndarray:
    x = df["frequency"].to_numpy()
    z = df["monetary_value"].to_numpy()
    repeat = (x > 0) & (z > 0)
    if 0 < repeat.sum() < MIN_GG_CUSTOMERS:
        log.warning("Gamma-Gamma: only %d repeat customer(s) with positive spend; using shrunk sample means",
                    repeat.sum())
        return _spend_fallback(x, z, repeat)
    if not repeat.any():
        return _spend_fallback(x, z, repeat)
    scale = float(np.median(z[repeat]))  # the model is scale-equivariant (v scales, p and q do not): fit in O(1)
    data = pd.DataFrame({"customer_id": np.flatnonzero(repeat), "frequency": x[repeat], "monetary_value": z[repeat] / scale})
    model = GammaGammaModel(data=data)
    model.fit(method="map", progressbar=False)
    post = model.fit_result
    p, q, v = (float(post[k].mean()) for k in ("p", "q", "v"))
    log.info("Gamma-Gamma MAP on %d repeat customers: p=%.4g q=%.4g v=%.4g", len(data), p, q, v * scale)
    if not all(np.isfinite([p, q, v])) or p <= 0 or v <= 0 or q <= 1.0:
        log.warning("Gamma-Gamma MAP is degenerate (p=%.3g, q=%.3g, v=%.3g; the mean spend needs q > 1); "
                    "using shrunk sample means", p, q, v)
        return _spend_fallback(x, z, repeat)
    # Same formulas as GammaGammaModel.expected_customer_spend / expected_new_customer_spend, for all customers:
    # frequency 0 gives weight 0, i.e. the population mean spend p * v / (q - 1).
    spend = np.asarray(model.expected_customer_spend(data=pd.DataFrame({
        "customer_id": np.arange(len(df)), "frequency": np.where(repeat, x, 0.0),
        "monetary_value": np.where(repeat, z / scale, 0.0)}))).reshape(-1) * scale
    pop = float(np.asarray(model.expected_new_customer_spend()).mean()) * scale
    spend = np.where(np.isfinite(spend), spend, pop)
    return np.maximum(spend, 0.0)


def bgnbd_gamma_gamma(summary: pd.DataFrame, horizon_days: float) -> pd.DataFrame:
    """Fit BG/NBD on all customers and Gamma-Gamma on repeat customers (MAP); predict the next `horizon_days`.

    Returns one row per input customer, in input order: `user_id`, `p_alive`, `expected_purchases` (purchase days
    in the horizon), `expected_value` (expected_purchases x expected spend per purchase day); all finite, >= 0.
    Raises ValueError for an empty summary, a missing column or invalid values.
    """
    df = _validate(summary, horizon_days)
    BetaGeoModel, GammaGammaModel = import_clv()
    with _quiet():
        p_alive, purchases = _fit_bgnbd(BetaGeoModel, df, float(horizon_days))
        spend = _fit_gamma_gamma(GammaGammaModel, df)
    value = purchases * spend
    out = pd.DataFrame({"user_id": summary["user_id"].to_numpy(), "p_alive": p_alive,
                        "expected_purchases": purchases, "expected_value": value})
    for c in OUTPUT[1:]:
        out[c] = np.clip(np.nan_to_num(out[c].to_numpy(dtype="float64"), nan=0.0, posinf=0.0), 0.0, None)
    return out
