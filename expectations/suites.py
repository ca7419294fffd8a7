"""Great Expectations suites as code, one per pipeline boundary.

Each suite is a function of the run's parameters returning (dataset name, expectations) pairs; the gate in
`expectations.gate` runs them and stops the DAG when any fails.
"""

from __future__ import annotations

import great_expectations.expectations as gxe

from ltvrec.config import EVENT_TYPES, LTV_MODELS, RAW_ONLY_EVENT_TYPES


def raw(params: dict) -> dict[str, list]:
    """Raw tables as dbt reads them: the contract's columns exist (and the row ids: ltvrec's load's source_file and
    source_row, unique, or a team table's load time), ids mostly present, known event types."""
    unique_rows = [gxe.ExpectColumnValuesToBeUnique(column="source_row")] if "source_row" in params["row_ids"] else []
    return {
        "raw_events": [
            *(gxe.ExpectColumnToExist(column=c) for c in
              ["user_id", "item_id", "event_type", "event_ts", "quantity", "unit_price", *params["row_ids"]]),
            gxe.ExpectTableRowCountToBeBetween(min_value=1),
            *unique_rows,
            gxe.ExpectColumnValuesToNotBeNull(column="item_id", mostly=0.95),
            gxe.ExpectColumnValuesToNotBeNull(column="event_ts", mostly=0.99),
            gxe.ExpectColumnValuesToBeInSet(column="event_type", value_set=[*EVENT_TYPES, *RAW_ONLY_EVENT_TYPES], mostly=0.99),
        ],
        "raw_items": [
            gxe.ExpectColumnToExist(column="item_id"),
            gxe.ExpectTableRowCountToBeBetween(min_value=1),
            gxe.ExpectColumnValuesToNotBeNull(column="item_id"),
        ],
        # one row (none before the first publish): raw events now / at the last published run
        "volume": [
            gxe.ExpectColumnValuesToBeBetween(column="ratio", min_value=1 / params["max_volume_ratio"],
                                              max_value=params["max_volume_ratio"]),
        ],
    }


def cleaned(params: dict) -> dict[str, list]:
    """dbt marts: keys unique, types valid, and dbt quarantined no more than the allowed share."""
    return {
        "fct_events": [
            gxe.ExpectTableRowCountToBeBetween(min_value=1),
            gxe.ExpectColumnValuesToBeUnique(column="event_id"),
            *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ["user_id", "item_id", "event_ts", "event_type"]),
            gxe.ExpectColumnValuesToBeInSet(column="event_type", value_set=list(EVENT_TYPES)),
            gxe.ExpectColumnValuesToBeBetween(column="quantity", min_value=0, strict_min=True),
            gxe.ExpectColumnValuesToBeBetween(column="unit_price", min_value=0),
        ],
        "dim_items": [
            gxe.ExpectColumnValuesToBeUnique(column="item_id"),
            gxe.ExpectColumnValuesToNotBeNull(column="item_id"),
            gxe.ExpectColumnValuesToBeBetween(column="price", min_value=0),
        ],
        "quarantine_share": [
            gxe.ExpectColumnValuesToBeBetween(column="share", min_value=0, max_value=params["max_quarantine_share"]),
        ],
    }


def features(params: dict) -> dict[str, list]:
    """Spark features: non-empty sequences, valid item indices, finite non-negative labels, and something to train on
    before the validation window."""
    return {
        "sequences": [
            gxe.ExpectTableRowCountToBeBetween(min_value=1),
            gxe.ExpectColumnValuesToBeUnique(column="user_id"),
            gxe.ExpectColumnValuesToBeBetween(column="n_events", min_value=1),
            gxe.ExpectColumnValuesToBeBetween(column="min_item", min_value=1),
            gxe.ExpectColumnValuesToBeBetween(column="max_item", max_value=params["n_items"]),
        ],
        "ltv_features": [
            gxe.ExpectColumnValuesToMatchRegex(
                column="cutoff", regex=r"^(?:ref_)?(?:train(?:_[0-9]+)?|backtest_[0-9]+|eval|score)$"),
            gxe.ExpectColumnValuesToBeBetween(column="label_value", min_value=0),
            gxe.ExpectColumnValuesToBeInSet(column="label_active", value_set=[0, 1]),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "cutoff"]),
        ],
        # one row: the protocol's training window (events before each user's validation window)
        "training_window": [
            gxe.ExpectColumnValuesToBeBetween(
                column="events_before_validation", min_value=1,
                notes="No event lies before the validation window, so there is nothing to train on: the history is "
                      "shorter than the validation and test windows (2 x holdout_days) or all events share one "
                      "timestamp. Give more history or a smaller holdout_days."),
        ],
        # one row: the history's length in days, and the customers at the LTV training cut-off D - 2H
        "ltv_window": [
            gxe.ExpectColumnValuesToBeBetween(
                column="history_days", min_value=2 * params["horizon_days"], strict_min=True,
                notes=f"The history is too short for horizon_days={params['horizon_days']}: LTV labels need customers "
                      "before the training cut-off D - 2H, so the events must span more than 2 x horizon_days days "
                      "(the history's length in days is listed below). Choose horizon_days under half of it."),
            # (data where nobody ever bought, such as ratings, has no LTV to learn: the trainer skips the LTV head)
            gxe.ExpectColumnValuesToBeBetween(
                column="customers_at_training_cutoff", min_value=1 if params["has_customers"] else 0,
                notes="No customer bought before the LTV training cut-off D - 2H, so no LTV label can be built. "
                      "Choose a smaller horizon_days."),
        ],
    }


def scores(params: dict) -> dict[str, list]:
    """Scores before publishing. Recommendations: for every user, exactly min(N, items left unseen) rows ranked
    1..N, no item the user has seen or the catalogue lacks, finite scores; empty only when no user has an item left
    to recommend (e.g. a one-item catalogue). LTV: one row per customer, 0 <= p_active <= 1, finite
    expected_value >= 0."""
    return {
        "recommendations": [
            gxe.ExpectTableRowCountToBeBetween(min_value=1 if params["users_with_unseen_items"] else 0),
            gxe.ExpectColumnValuesToBeBetween(column="rank", min_value=1, max_value=params["top_n"]),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "rank"]),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "item_id"]),
            gxe.ExpectColumnValuesToNotBeNull(column="item_id"),
            gxe.ExpectColumnValuesToBeInSet(column="seen_before", value_set=[False]),
            gxe.ExpectColumnValuesToBeInSet(column="in_catalogue", value_set=[True]),
            gxe.ExpectColumnValuesToBeInSet(column="score_is_finite", value_set=[True]),
        ],
        # one row per user with events: rows published vs rows expected
        "recommendations_per_user": [
            gxe.ExpectColumnPairValuesToBeEqual(column_A="rows", column_B="expected_rows"),
        ],
        "ltv_estimates": [
            gxe.ExpectColumnValuesToBeUnique(column="user_id"),
            gxe.ExpectColumnValuesToNotBeNull(column="p_active"),
            gxe.ExpectColumnValuesToNotBeNull(column="expected_value"),
            gxe.ExpectColumnValuesToBeBetween(column="p_active", min_value=0, max_value=1),
            gxe.ExpectColumnValuesToBeBetween(column="expected_value", min_value=0),
            gxe.ExpectColumnValuesToBeInSet(column="expected_value_is_finite", value_set=[True]),
            gxe.ExpectColumnValuesToBeInSet(column="ltv_model", value_set=[m for m in LTV_MODELS if m != "auto"]),
        ],
    }


SUITES = {"raw": raw, "cleaned": cleaned, "features": features, "scores": scores}
