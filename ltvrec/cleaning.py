"""Cleaning: the dbt project (dbt_project/) run in process on a warehouse's raw tables.

The DAG's dbt_build stage and the tests call `dbt_build`; `dbt_vars` is what the project needs from ltvrec,
among it the event vocabulary (ltvrec.config is its only definition: the project declares no default).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from ltvrec.config import EVENT_TYPES, PROJECT_ROOT, RAW_ONLY_EVENT_TYPES

DBT_PROJECT = PROJECT_ROOT / "dbt_project"


def dbt_vars(as_of: str) -> dict:
    """The project's vars: the run date (YYYY-MM-DD) and the event vocabulary."""
    return {"as_of": as_of, "event_types": list(EVENT_TYPES), "raw_only_event_types": list(RAW_ONLY_EVENT_TYPES)}


def dbt_build(wh, as_of: str, target_path: Path, log_path: Path) -> dict:
    """`dbt build` (models, data tests, unit tests) on `wh` (a ltvrec.warehouse.Warehouse); raises naming the failed
    nodes. Returns the row counts and the quarantine counts per reason, of events and of catalogue rows."""
    result = run_dbt(wh, ["build"], dbt_vars(as_of), target_path, log_path)
    if not result.success:
        failed = [f"{r.node.resource_type} {r.node.name}: {r.status} ({r.message})"
                  for r in (result.result or []) if str(r.status) in ("error", "fail")]
        raise RuntimeError(f"dbt build failed on {wh.kind}: " + "; ".join(failed or [str(result.exception)])
                           + f". Full log: {Path(log_path) / 'dbt.log'}")
    events, items = reject_counts(wh, "events_quarantine"), reject_counts(wh, "items_quarantine")
    n_clean = wh.query("select count(*) as n from marts.fct_events").to_pylist()[0]["n"]
    return {"rows": {"fct_events": int(n_clean), "quarantined": sum(events.values()),
                     "items_quarantined": sum(items.values())},
            "quarantine": events, "quarantine_items": items}


def run_dbt(wh, args: list[str], dbt_vars: dict, target_path: Path, log_path: Path):
    """Any dbt command on the project, in process, against `wh`; quiet on stdout (the full log is
    log_path/dbt.log). Returns dbt's dbtRunnerResult."""
    from dbt.cli.main import dbtRunner

    target, env = wh.dbt_target()
    with _environ(env):
        return dbtRunner().invoke([*args, "--quiet", "--project-dir", str(DBT_PROJECT),
                                   "--profiles-dir", str(DBT_PROJECT), "--target", target,
                                   "--vars", json.dumps(dbt_vars), "--target-path", str(target_path),
                                   "--log-path", str(log_path)])


def reject_counts(wh, quarantine: str) -> dict[str, int]:
    """{reject_reason: rows} of a quarantine mart (events_quarantine or items_quarantine)."""
    rows = wh.query(f"select reject_reason, count(*) as n from marts.{quarantine} group by reject_reason "
                    "order by reject_reason").to_pylist()
    return {r["reject_reason"]: int(r["n"]) for r in rows}


@contextlib.contextmanager
def _environ(env: dict[str, str]):
    """os.environ with `env` set (dbt's profile reads the connection from it), restored afterwards."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
