"""Cleaning: the dbt project (dbt_project/) run on a warehouse's raw tables.

In the DAG every model (with its tests) is an Airflow task of its own: astronomer-cosmos renders the project from
the manifest `build_manifest` writes (nothing parses dbt when Airflow parses the DAG), and `for_this_run` points each
task at the run's warehouse and vars. Tests and benchmarks clean in one call with `dbt_build`. `dbt_vars` is what
the project needs from ltvrec, among it the event vocabulary (ltvrec.config is its only definition: the project
declares no default).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from ltvrec.config import EVENT_TYPES, PROJECT_ROOT, RAW_ONLY_EVENT_TYPES, RunConfig

DBT_PROJECT = PROJECT_ROOT / "dbt_project"
MANIFEST = DBT_PROJECT / "target" / "manifest.json"
PROFILES = DBT_PROJECT / "profiles.yml"


def dbt_vars(as_of: str, defer_from: str = "", outcome_days: int = RunConfig.outcome_days,
             raw: dict | None = None) -> dict:
    """The project's vars: the date events after which are in the future (YYYY-MM-DD), the date from which events
    belong to later runs (YYYY-MM-DD, or empty: none do), the outcome window of published recommendations, the event
    vocabulary and where the raw tables are (`raw_vars`; default: ltvrec's load)."""
    return {"as_of": as_of, "defer_from": defer_from, "outcome_days": outcome_days, "event_types": list(EVENT_TYPES),
            "raw_only_event_types": list(RAW_ONLY_EVENT_TYPES), **(raw or raw_vars(RunConfig()))}


def raw_vars(cfg: RunConfig) -> dict:
    """Where dbt reads a run's raw events and items: the team's tables (warehouse source) or ltvrec's load
    (raw.events and raw.items, written by the ingest stage); and the events' load-time column and freshness limit."""
    warehouse = cfg.source == "warehouse"
    return {"raw_schema": cfg.raw_schema if warehouse else "raw",
            "events_table": cfg.events_table if warehouse else "events",
            "items_table": cfg.items_table if warehouse else "items",
            "loaded_at_field": cfg.loaded_at_field, "freshness_hours": cfg.freshness_hours}


def run_vars(cfg) -> dict:
    """The vars of a run. A run for a run_date defers the events at or after it (a later run's, in a backfill of
    history or a scheduled run that starts after its interval's end) and judges the future by today's date (UTC); a
    run with an as_of judges it by that day; else by today, not by the latest event."""
    today = datetime.now(timezone.utc).date().isoformat()
    if cfg.run_date:
        return dbt_vars(today, cfg.run_date, cfg.outcome_days, raw_vars(cfg))
    return dbt_vars(cfg.as_of or today, outcome_days=cfg.outcome_days, raw=raw_vars(cfg))


def dbt_build(wh, dbt_vars: dict, target_path: Path, log_path: Path) -> dict:
    """`dbt build` (models, data tests, unit tests) on `wh` (a ltvrec.warehouse.Warehouse) with `dbt_vars` in one
    call; raises naming the failed nodes. Returns `cleaning_record(wh)`."""
    wh.create_serving()  # the outcome models read what earlier runs published
    result = run_dbt(wh, ["build"], dbt_vars, target_path, log_path)
    if not result.success:
        failed = [f"{r.node.resource_type} {r.node.name}: {r.status} ({r.message})"
                  for r in (result.result or []) if str(r.status) in ("error", "fail")]
        raise RuntimeError(f"dbt build failed on {wh.kind}: " + "; ".join(failed or [str(result.exception)])
                           + f". Full log: {Path(log_path) / 'dbt.log'}")
    return cleaning_record(wh)


class StaleSource(RuntimeError):
    """The warehouse source's events table was last loaded longer ago than its freshness limit."""


def check_freshness(wh, dbt_vars: dict, target_path: Path, log_path: Path) -> dict:
    """`dbt source freshness` of the raw events table (the warehouse source's: its loaded_at_field against the
    freshness_hours var). Returns the newest load time, the check's time and the age in hours; raises StaleSource
    past the limit, RuntimeError when dbt cannot tell."""
    result = run_dbt(wh, ["source", "freshness", "--select", "source:raw.events"], dbt_vars, target_path, log_path)
    checked = [r for r in getattr(result.result, "results", None) or [] if getattr(r, "max_loaded_at", None)]
    table = f"{dbt_vars['raw_schema']}.{dbt_vars['events_table']}"
    if not checked:
        raise RuntimeError(f"{table}: dbt source freshness found no load time in column "
                           f"{dbt_vars['loaded_at_field']!r} ({result.exception or 'is the table empty?'}); full "
                           f"log: {Path(log_path) / 'dbt.log'}")
    found = checked[0]
    record = {"table": table, "max_loaded_at": found.max_loaded_at.isoformat(timespec="seconds"),
              "checked_at": found.snapshotted_at.isoformat(timespec="seconds"),
              "age_hours": round(found.age / 3600, 2), "limit_hours": dbt_vars["freshness_hours"]}
    if str(found.status) != "pass":
        raise StaleSource(f"{table} is stale: its newest row was loaded at {record['max_loaded_at']}, "
                          f"{record['age_hours']} h before this check, over freshness_hours "
                          f"{record['limit_hours']} (column {dbt_vars['loaded_at_field']!r}); nothing was read or "
                          "published. Load the table, or raise freshness_hours for this run")
    return record


def cleaning_record(wh) -> dict:
    """What dbt left in `wh`'s marts: the row counts and the quarantine counts per reason, of events and of
    catalogue rows."""
    events, items = reject_counts(wh, "events_quarantine"), reject_counts(wh, "items_quarantine")
    n_clean = wh.query("select count(*) as n from marts.fct_events").to_pylist()[0]["n"]
    return {"rows": {"fct_events": int(n_clean), "quarantined": sum(events.values()),
                     "items_quarantined": sum(items.values()), "deferred": deferred_count(wh)},
            "quarantine": events, "quarantine_items": items}


def deferred_count(wh) -> int:
    """Raw events dbt left to later runs (at or after the run's run_date, var defer_from)."""
    return int(wh.query("select count(*) as n from intermediate.int_events_checked where is_deferred")
               .to_pylist()[0]["n"])


def run_dbt(wh, args: list[str], dbt_vars: dict, target_path: Path, log_path: Path):
    """Any dbt command on the project, in process, against `wh`; quiet on stdout (the full log is
    log_path/dbt.log). Returns dbt's dbtRunnerResult."""
    target, env = wh.dbt_target()
    return _invoke(args, target, env, dbt_vars, target_path, log_path)


def _invoke(args: list[str], target: str, env: dict[str, str], dbt_vars: dict, target_path: Path, log_path: Path):
    from dbt.cli.main import dbtRunner

    with _environ(env):
        return dbtRunner().invoke([*args, "--quiet", "--project-dir", str(DBT_PROJECT),
                                   "--profiles-dir", str(DBT_PROJECT), "--target", target,
                                   "--vars", json.dumps(dbt_vars), "--target-path", str(target_path),
                                   "--log-path", str(log_path)])


def build_manifest() -> Path:
    """`dbt parse` the project into MANIFEST, which the DAG renders its dbt tasks from (make, `ltvrec stack up` and
    `ltvrec run` call this when a file of the project is newer than the manifest). Parsing connects to nothing."""
    if manifest_is_current():
        return MANIFEST
    result = _invoke(["parse"], "duckdb", {"LTVREC_DUCKDB_PATH": str(MANIFEST.parent / "parse.duckdb")},
                     dbt_vars(""), MANIFEST.parent, MANIFEST.parent)
    if not result.success:
        raise RuntimeError(f"dbt parse of {DBT_PROJECT} failed: {result.exception}; see {MANIFEST.parent / 'dbt.log'}")
    return MANIFEST


def model_schemas() -> list[str]:
    """The schemas the project's models build into, from the manifest."""
    nodes = json.loads(build_manifest().read_text())["nodes"].values()
    return sorted({n["schema"] for n in nodes if n["resource_type"] == "model"})


def manifest_is_current() -> bool:
    if not MANIFEST.exists():
        return False
    built = MANIFEST.stat().st_mtime
    sources = [p for folder in ("models", "macros", "tests") for p in (DBT_PROJECT / folder).rglob("*") if p.is_file()]
    return all(p.stat().st_mtime < built for p in [*sources, DBT_PROJECT / "dbt_project.yml", PROFILES])


def for_this_run(context, operator) -> None:
    """cosmos interceptor, run by every dbt task before it builds its dbt command: the run's warehouse (as the
    profile's target and the environment it reads), the run's vars, and dbt's log in the run folder."""
    from ltvrec import warehouse
    from ltvrec.rundir import RunDir

    run = RunDir(Path(context["ti"].xcom_pull(task_ids="prepare")))
    cfg = run.config()
    target, env = warehouse.connect(cfg.resolved_warehouse_url).dbt_target()
    operator.vars = run_vars(cfg)
    operator.env = {**(operator.env or {}), **env, "DBT_LOG_PATH": str(run.dbt / "logs")}
    operator.profile_config = dataclasses.replace(operator.profile_config, target_name=target)
    run.mark_started("dbt_build")


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
