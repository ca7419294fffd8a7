"""One event vocabulary: `ltvrec.config.EVENT_TYPES` (clean types; code = position + 1, 0 = padding) and
`RAW_ONLY_EVENT_TYPES` (accepted raw, always quarantined). Every consumer receives them from there; none spells
the list out again."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from ltvrec import warehouse
from ltvrec.cleaning import dbt_vars, run_dbt
from ltvrec.config import EVENT_TYPES, PROJECT_ROOT, RAW_ONLY_EVENT_TYPES

# --------------------------------------------------------------------------------------------------
# dbt gets the vocabulary as vars


def compile_dbt(tmp: Path, project_vars: dict, *select: str):
    wh = warehouse.connect(f"duckdb:///{tmp / 'unused.duckdb'}")
    return run_dbt(wh, ["compile", "--select", *select], project_vars, tmp / "target", tmp / "logs")


def quoted(sql: str) -> list[str]:
    return re.findall(r"'([^']*)'", sql)


def test_dbt_checks_events_against_the_config_vocabulary(tmp_path):
    result = compile_dbt(tmp_path, dbt_vars("2024-01-10"), "int_events_checked", "fct_events,test_name:accepted_values")
    assert result.success, result.exception
    compiled = {r.node.name: r.node.compiled_code for r in result.result}
    (test_name,) = [name for name in compiled if name.startswith("accepted_values_fct_events_event_type")]
    accepted = re.search(r"not in \((.*?)\)", compiled[test_name], re.S).group(1)
    assert quoted(accepted) == list(EVENT_TYPES)
    known = re.search(r"event_type not in \((.*?)\)", compiled["int_events_checked"], re.S).group(1)
    assert quoted(known) == list(EVENT_TYPES + RAW_ONLY_EVENT_TYPES)


def test_dbt_without_the_vocabulary_is_a_compile_error(tmp_path):
    """No default in dbt_project.yml: the Python tuple stays the only definition."""
    without = {key: value for key, value in dbt_vars("2024-01-10").items() if key != "event_types"}
    result = compile_dbt(tmp_path, without, "int_events_checked")
    assert not result.success
    assert "var 'event_types' is required" in str(result.exception)


# --------------------------------------------------------------------------------------------------
# Nobody spells the list out again

NAMES = "|".join(map(re.escape, EVENT_TYPES + RAW_ONLY_EVENT_TYPES))
NAME = rf"""["'`]?\b(?:{NAMES})\b["'`]?"""
# Three or more event types in a row, separated by commas (a dict's `: code` allowed): a copy of the vocabulary.
# Two in a row are a rule about those types (`in ('purchase', 'return')`), prose ("view -> cart") is no list.
SPELLED_LIST = re.compile(rf"{NAME}(?:\s*(?::\s*\d+\s*)?,\s*{NAME}){{2,}}")
SCANNED = (".py", ".sql", ".yml", ".yaml")
SKIPPED_FOLDERS = {"tests", "__pycache__", "target", "logs"}  # and hidden ones (.venv, .git, .ltvrec)
DEFINITION = PROJECT_ROOT / "ltvrec" / "config.py"


def spelled_lists(text: str) -> list[str]:
    return [re.sub(r"\s+", " ", m.group(0)) for m in SPELLED_LIST.finditer(text)]


@pytest.mark.parametrize("text, found", [
    ('EVENT_TYPES = ("view", "cart", "purchase", "rating", "return")', True),
    ("values: [view, cart, purchase, rating, return]", True),
    ("event_type not in ('view', 'cart',\n    'purchase')", True),
    ('CODE = {"view": 1, "cart": 2, "purchase": 3}', True),
    ("e.g. view -> cart -> purchase becomes one purchase token", False),
    ("when event_type in ('purchase', 'return') then amount", False),
    ("views lead to carts and purchases", False),
])
def test_the_guard_tells_a_list_from_prose(text, found):
    assert bool(spelled_lists(text)) is found


def test_no_file_spells_out_the_event_types():
    offenders = []
    for root, folders, files in os.walk(PROJECT_ROOT):
        folders[:] = [f for f in folders if not f.startswith(".") and f not in SKIPPED_FOLDERS]
        for name in files:
            path = Path(root) / name
            if name.endswith(SCANNED) and path != DEFINITION:
                offenders += [f"{path.relative_to(PROJECT_ROOT)}: {found}"
                              for found in spelled_lists(path.read_text(errors="replace"))]
    assert not offenders, "the event types are spelled out again (import ltvrec.config.EVENT_TYPES / pass them on):\n" \
        + "\n".join(offenders)


# --------------------------------------------------------------------------------------------------
# GX, Spark and the model get it from the same place


def value_sets(suite: dict, dataset: str) -> list[list[str]]:
    return [list(e.value_set) for e in suite[dataset] if getattr(e, "column", None) == "event_type"
            and hasattr(e, "value_set")]


def test_the_gx_suites_accept_the_config_vocabulary():
    from expectations import suites

    assert value_sets(suites.raw({"max_volume_ratio": 10.0, "row_ids": ["source_row"]}), "raw_events") == [list(EVENT_TYPES + RAW_ONLY_EVENT_TYPES)]
    assert value_sets(suites.cleaned({"max_quarantine_share": 0.5}), "fct_events") == [list(EVENT_TYPES)]


@pytest.mark.slow
def test_spark_codes_types_in_config_order_and_the_model_reads_them(tmp_path, spark_features):
    """The stage passes EVENT_TYPES to the Spark job (--event-types); the job codes each type by its position + 1
    and writes the list into split.json; the model's FeatureSet takes its return code from there."""
    import pandas as pd
    import pyarrow.parquet as pq

    from models.data import FeatureSet

    events = [("u", f"i{k}", name, f"2024-01-{k + 1:02d} 10:00", 1.0 if name == "purchase" else 0.0)
              for k, name in enumerate(EVENT_TYPES)]
    items = pd.DataFrame({"item_id": [f"i{k}" for k in range(len(EVENT_TYPES))], "title": "t", "category": "c",
                          "price": 1.0, "in_stock": True})
    out = spark_features(tmp_path, events, items)
    fs = FeatureSet.load(out)
    assert list(fs.event_types) == list(EVENT_TYPES)
    sequence = pq.read_table(out / "sequences").to_pylist()[0]
    assert sequence["types"] == [EVENT_TYPES.index(name) + 1 for name in EVENT_TYPES]
    assert fs.return_code == EVENT_TYPES.index("return") + 1
