"""`ltvrec run --on-stack`: trigger `ltvrec_batch` through Airflow's REST API with the same params as the in-process
run, follow it to the end (one line per task: state, seconds, the worker and queue that ran it), then print the
same summary `ltvrec run` prints."""

from __future__ import annotations

import os
import time
from pathlib import Path

from rich.console import Console

from ltvrec.config import DAG_ID
from ltvrec.rundir import RunDir
from ltvrec.stack import AirflowClient, Stack

TERMINAL = {"success", "failed", "upstream_failed", "skipped", "removed"}
ICONS = {"success": ("✓", "green"), "failed": ("✗", "red"), "upstream_failed": ("-", "red"), "skipped": ("-", "dim")}
DAG_TIMEOUT_S = 120  # the dag-processor parses the DAG file this soon after `stack up`


def wait_for_dag(client: AirflowClient, timeout_s: float = DAG_TIMEOUT_S) -> None:
    """Until the dag-processor has parsed `ltvrec_batch`; unpause it (a paused DAG queues runs, never starts them)."""
    deadline = time.time() + timeout_s
    while True:
        try:
            dag = client.get(f"/api/v2/dags/{DAG_ID}")
            break
        except OSError:
            if time.time() > deadline:
                raise RuntimeError(f"{DAG_ID} is not in Airflow after {timeout_s:.0f}s; see the dag-processor's log")
            time.sleep(2)
    if dag.get("is_paused"):
        client.patch(f"/api/v2/dags/{DAG_ID}", {"is_paused": False})


def trigger(client: AirflowClient, params: dict) -> str:
    wait_for_dag(client)
    run = client.post(f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": params})
    return run["dag_run_id"]


def task_instances(client: AirflowClient, run_id: str) -> list[dict]:
    return client.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]


def follow(client: AirflowClient, run_id: str, console: Console, poll_s: float = 2, patience_s: float = 300) -> str:
    """Print each task as it ends; return the DAG run's final state. The API server may be slow to answer while the
    machine is busy: only `patience_s` without an answer gives up."""
    printed: set[str] = set()
    answered, polls, state = time.time(), 0, None
    while True:
        try:
            instances = task_instances(client, run_id)
            polls += 1
            # the run's own state only when its tasks have ended (or now and then): each request costs the API
            # server CPU the tasks of a small machine would use
            if polls % 10 == 0 or all(ti["state"] in TERMINAL for ti in instances):
                state = client.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
            answered = time.time()
        except OSError as exc:  # timeouts, refused connections, 5xx: the server is busy or restarting
            if getattr(exc, "status", 500) < 500:
                raise
            if time.time() - answered > patience_s:
                raise RuntimeError(f"Airflow's API server did not answer for {patience_s:.0f}s: {exc}") from None
            time.sleep(poll_s)
            continue
        for ti in sorted(instances, key=lambda t: t.get("start_date") or "~"):
            if ti["state"] in TERMINAL and ti["task_id"] not in printed:
                printed.add(ti["task_id"])
                console.print(task_line(ti), soft_wrap=True)
        if state in ("success", "failed"):
            return state
        time.sleep(poll_s)


def task_line(ti: dict) -> str:
    icon, style = ICONS.get(ti["state"], ("?", "white"))
    where = f"{ti.get('hostname') or '-'} (queue {ti.get('queue')})" if ti.get("hostname") else ""
    return f"  [{style}]{icon}[/] {ti['task_id']:<40}[dim]{ti.get('duration') or 0:>7.1f}s[/]  {ti['state']:<10} {where}"


def run_folder(client: AirflowClient, run_id: str) -> RunDir | None:
    """The run folder the `prepare` task made (its XCom), when this machine can read it (the local stack, or a
    shared volume)."""
    try:
        entry = client.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/prepare/xcomEntries/return_value")
    except OSError:
        return None
    path = Path(str(entry.get("value", "")).strip('"'))
    return RunDir(path) if (path / "config.json").exists() else None


def running_stack() -> Stack:
    """The stack `ltvrec stack up` started, its services' URLs in this process's environment."""
    stack = Stack()
    if not stack.settings_file.exists():
        raise RuntimeError(f"no stack in {stack.root}: start one with `ltvrec stack up`")
    os.environ.update({k: v for k, v in stack.service_env().items() if k in ("LTVREC_WAREHOUSE_URL", "MLFLOW_TRACKING_URI")})
    return stack


def execute(params: dict) -> int:
    """Trigger, follow, summarise; the exit code for the CLI."""
    stack = running_stack()
    out = Console(highlight=False)
    client, started = stack.airflow(), time.time()
    run_id = trigger(client, params)
    out.print(f"triggered {DAG_ID} run {run_id} on {stack.airflow_url}", soft_wrap=True, markup=False)
    return conclude(stack, client, run_id, follow(client, run_id, out), started)


def backfill(params: dict, first: str, last: str) -> int:
    """Airflow's own backfill of the scheduled dates from `first` to `last` (completed ones again: a date's partition
    is replaced), each run with `params`; follow the runs one by one, oldest first, and summarise each."""
    stack = running_stack()
    out = Console(highlight=False)
    client = stack.airflow()
    wait_for_dag(client)
    if not client.get(f"/api/v2/dags/{DAG_ID}").get("timetable_periodic"):
        raise RuntimeError(f"{DAG_ID} has no schedule on the stack, and Airflow backfills scheduled dates only: start "
                           "the stack with LTVREC_SCHEDULE set (e.g. @daily)")
    window = {"from_date": f"{first}T00:00:00Z", "to_date": f"{last}T00:00:00Z"}
    created = client.post("/api/v2/backfills", {"dag_id": DAG_ID, **window, "dag_run_conf": params,
                                                "reprocess_behavior": "completed", "max_active_runs": 1})
    out.print(f"Airflow backfill {created['id']} of {DAG_ID}, {first} to {last}, on {stack.airflow_url}", markup=False)
    followed, codes = set(), []
    while True:
        runs = client.get(f"/api/v2/dags/{DAG_ID}/dagRuns?run_type=backfill&logical_date_gte={window['from_date']}"
                          f"&logical_date_lte={window['to_date']}&order_by=logical_date&limit=100")["dag_runs"]
        waiting = [r for r in runs if r["dag_run_id"] not in followed]
        if not waiting and client.get(f"/api/v2/backfills/{created['id']}").get("completed_at"):
            break
        for dag_run in waiting[:1]:
            followed.add(dag_run["dag_run_id"])
            out.print(f"run {dag_run['dag_run_id']} (logical date {dag_run['logical_date']})", markup=False)
            started = time.time()
            codes.append(conclude(stack, client, dag_run["dag_run_id"],
                                  follow(client, dag_run["dag_run_id"], out), started))
        time.sleep(0 if waiting else 2)
    return max(codes, default=1)


def conclude(stack: Stack, client: AirflowClient, run_id: str, state: str, started: float) -> int:
    """Print the ended run's summary (or its failure); the exit code for the CLI."""
    from ltvrec import console as view

    out, err = Console(highlight=False), Console(stderr=True, highlight=False)
    run = run_folder(client, run_id)
    logs = stack.root / "airflow" / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}"
    if state == "success" and run is not None and run.summary_file.exists():
        view.print_results(out, run, time.time() - started)
        return 0
    if state == "success":
        out.print(f"{DAG_ID} run {run_id} succeeded; its run folder is on the workers", markup=False)
        return 0
    view.print_failure(err, run, logs)
    return 1
