"""What each gate validates: the frames its suite (expectations/suites.py) reads, built from the warehouse or the
run's files. Each function returns (frames by dataset name, the suite's params)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ltvrec.cleaning import deferred_count
from ltvrec.warehouse import qualified

VOLUME_COLUMNS = ["raw_events", "previous_raw_events", "previous_run", "ratio"]


def raw(wh, tables: dict, previous: dict | None, max_volume_ratio: float) -> tuple[dict[str, pd.DataFrame], dict]:
    """The raw events and items as dbt will read them (`tables`: ltvrec.cleaning.raw_vars, ltvrec's load or the
    team's tables), and the volume row: this run's raw events against `previous`, the last published run's
    ops.published_runs row (none before the first publish)."""
    schema = tables["raw_schema"]
    events = wh.query(f"select * from {qualified(schema, tables['events_table'])}").to_pandas()
    volume = [] if previous is None else [
        {"raw_events": len(events), "previous_raw_events": previous["raw_events"], "previous_run": previous["run_id"],
         "ratio": len(events) / max(previous["raw_events"], 1)}]
    frames = {"raw_events": events,
              "raw_items": wh.query(f"select * from {qualified(schema, tables['items_table'])}").to_pandas(),
              "volume": pd.DataFrame(volume, columns=VOLUME_COLUMNS)}
    # ltvrec's load numbers its rows; a team's table has its load time instead
    row_ids = ["source_file", "source_row"] if "source_row" in events.columns else [tables["loaded_at_field"]]
    return frames, {"max_volume_ratio": max_volume_ratio, "row_ids": row_ids}


def cleaned(wh, max_quarantine_share: float) -> tuple[dict[str, pd.DataFrame], dict]:
    """The dbt marts, and the share of this run's raw events (those not deferred to a later run) dbt quarantined."""
    n_raw = wh.query("select count(*) as n from staging.stg_events").to_pylist()[0]["n"] - deferred_count(wh)
    n_bad = wh.query("select count(*) as n from marts.events_quarantine").to_pylist()[0]["n"]
    frames = {"fct_events": wh.query("select * from marts.fct_events").to_pandas(),
              "dim_items": wh.query("select * from marts.dim_items").to_pandas(),
              "quarantine_share": pd.DataFrame({"share": [n_bad / max(n_raw, 1)]})}
    return frames, {"max_quarantine_share": max_quarantine_share}


def features(features_dir: Path, eval_protocol: str) -> tuple[dict[str, pd.DataFrame], dict]:
    """Sequences (with their smallest and largest item index), LTV features, the training window of the
    evaluation protocol (how many events lie before each user's validation window), and the LTV horizon's window
    (the history's length in days, and the customers at the LTV training cut-off D - 2H)."""
    from models.data import FeatureSet, Protocol, epoch

    fs = FeatureSet.load(Path(features_dir))
    seq = pd.DataFrame({"user_id": fs.users, "n_events": [len(items) for items in fs.items],
                        "min_item": [items.min() for items in fs.items], "max_item": [items.max() for items in fs.items]})
    window = pd.DataFrame({"events_before_validation": [int(Protocol.build(fs, eval_protocol).train_end.sum())]})
    first_event = min((int(ts[0]) for ts in fs.ts if len(ts)), default=epoch(fs.split["end"]))
    ltv_window = pd.DataFrame({"history_days": [round((epoch(fs.split["end"]) - first_event) / 86400, 1)],
                               "customers_at_training_cutoff": [int((fs.ltv["cutoff"] == "train").sum())]})
    frames = {"sequences": seq, "ltv_features": fs.ltv, "training_window": window, "ltv_window": ltv_window}
    # no LTV row at any cut-off: nobody ever bought (ratings-only data such as MovieLens), the LTV head is skipped
    return frames, {"n_items": fs.n_items - 1, "horizon_days": int(fs.split["horizon_days"]),
                    "has_customers": bool(len(fs.ltv))}


def scores(recs: pd.DataFrame, ltv: pd.DataFrame, seen: pd.DataFrame, catalogue: pd.Series,
           users: pd.Series, top_n: int) -> tuple[dict[str, pd.DataFrame], dict]:
    """The scores suite's frames and params. `seen`: (user_id, item_id) pairs the users already had; `catalogue`:
    this run's recommendable item ids; `users`: every user with events (each must get min(top_n, unseen items) rows)."""
    recs = recs.merge(seen.drop_duplicates().assign(seen_before=True), on=["user_id", "item_id"], how="left")
    recs["seen_before"] = recs["seen_before"].fillna(False).astype(bool)
    recs["in_catalogue"] = recs["item_id"].isin(set(catalogue))
    recs["score_is_finite"] = np.isfinite(recs["score"].to_numpy(dtype=float))
    known = seen[seen["item_id"].isin(set(catalogue))].drop_duplicates()
    unseen = len(set(catalogue)) - known.groupby("user_id").size().reindex(users, fill_value=0).to_numpy()
    per_user = pd.DataFrame({"user_id": users.to_numpy(),
                             "rows": recs.groupby("user_id").size().reindex(users, fill_value=0).to_numpy(),
                             "expected_rows": np.clip(np.minimum(top_n, unseen), 0, None)})
    ltv = ltv.assign(expected_value_is_finite=np.isfinite(ltv["expected_value"].to_numpy(dtype=float)))
    frames = {"recommendations": recs, "recommendations_per_user": per_user, "ltv_estimates": ltv}
    return frames, {"top_n": top_n, "users_with_unseen_items": int((per_user["expected_rows"] > 0).sum())}


def scores_files(recommendations: Path, ltv_estimates: Path, features_dir: Path, top_n: int):
    """`scores` on the score stage's Parquet files and the features they were computed from."""
    from models.data import in_stock

    features_dir = Path(features_dir)
    seq = pq.ParquetDataset(features_dir / "sequences").read(columns=["user_id", "items"]).to_pandas()
    items = pq.ParquetDataset(features_dir / "items").read().to_pandas()
    seen = seq.explode("items").merge(items, left_on="items", right_on="item_idx")[["user_id", "item_id"]]
    return scores(pq.read_table(recommendations).to_pandas(), pq.read_table(ltv_estimates).to_pandas(), seen,
                  items.loc[in_stock(items), "item_id"], seq["user_id"], top_n)
