"""What `ltvrec run` shows while the DAG runs: one line per stage (state, seconds, key counts), a progress bar while
training and scoring, then the results; on a failure, the failing stage's error and the last lines of its log.

Airflow's own output goes to the run folder (logs/airflow.log) like every stage's log; `--verbose` streams it all.
The view reads only the run folder (ltvrec/rundir.py): the stages' records and the trainer's and scorer's progress.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from ltvrec.config import DAG_ID, default_warehouse_url, ltvrec_home, mlflow_tracking_uri, redact_url
from ltvrec.launch import tool
from ltvrec.rundir import STAGES, RunDir

ICONS = {"running": ("…", "yellow"), "done": ("✓", "green"), "failed": ("✗", "red")}
LOG_TAIL = 12


def run_dag(params: dict, env: dict[str, str], verbose: bool) -> int:
    """`airflow dags test` with `params`, followed to the end; returns the exit code for the CLI."""
    out, err = Console(highlight=False), Console(stderr=True, highlight=False)
    started = time.time()
    airflow_log = ltvrec_home() / "logs" / f"airflow-{datetime.now():%Y%m%dT%H%M%S}.log"
    airflow_log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [tool("airflow"), "dags", "test", DAG_ID, "--conf", json.dumps(params)]
    with open(airflow_log, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE if verbose else log, stderr=subprocess.STDOUT,
                                text=True)
        tee = threading.Thread(target=_tee, args=(proc.stdout, log)) if verbose else None
        if tee:
            tee.start()
        run = StageView(out, live=out.is_terminal and not verbose).follow(proc, started)
        if tee:
            tee.join()  # Airflow's last lines are written before the log is closed
    if run is not None:
        airflow_log = airflow_log.replace(run.log_file("airflow"))
    if proc.returncode == 0 and run is not None and run.summary_file.exists():
        print_results(out, run, time.time() - started)
        return 0
    print_failure(err, run, airflow_log)
    return 1


def _tee(stream, log) -> None:
    for line in stream:
        log.write(line)
        sys.stdout.write(line)


def find_run(started: float) -> RunDir | None:
    """The run folder this command's DAG run created (the newest one since `started`)."""
    found = [p.parent for p in (ltvrec_home() / "runs").glob("*/config.json") if p.stat().st_mtime >= started - 1]
    return RunDir(max(found, key=lambda p: p.stat().st_mtime)) if found else None


class StageView:
    """The stage lines, drawn live on a terminal, or printed once each when a stage ends (logs, CI)."""

    def __init__(self, console: Console, live: bool):
        self.console, self.live, self.printed = console, live, set()

    def follow(self, proc: subprocess.Popen, started: float) -> RunDir | None:
        run = None
        with Live(console=self.console, refresh_per_second=4, transient=False) if self.live else nullcontext() as live:
            while True:
                finished = proc.poll() is not None
                run = run or find_run(started)
                if run is not None:
                    self.show(run, live)
                if finished:
                    return run
                time.sleep(0.5)

    def show(self, run: RunDir, live) -> None:
        if self.live:
            live.update(Group(*(stage_line(run, name, rec) for name, rec in stages_so_far(run))))
            return
        for name, rec in stages_so_far(run):
            if rec.get("state") in ("done", "failed") and name not in self.printed:
                self.printed.add(name)
                self.console.print(stage_line(run, name, rec), soft_wrap=True)


def stages_so_far(run: RunDir) -> list[tuple[str, dict]]:
    return [(name, rec) for name in STAGES if (rec := run.stage(name))]


def stage_line(run: RunDir, name: str, rec: dict) -> Text:
    icon, style = ICONS.get(rec.get("state"), ("?", "white"))
    seconds = rec.get("seconds") if rec.get("state") != "running" else time.time() - rec.get("started", time.time())
    line = Text.assemble((f"  {icon} ", style), f"{name:<14}", (f"{seconds or 0:>7.1f}s  ", "dim"))
    if rec.get("state") == "running":
        line.append(progress_text(run, name), "cyan")
    elif rec.get("state") == "done":
        line.append(headline(name, rec))
    for note in rec.get("notes", []):
        line.append(f"\n      ! {note}", "yellow")
    return line


def progress_text(run: RunDir, name: str) -> str:
    """A bar for the trainer's epochs or the scorer's users, from their progress files."""
    progress = run.progress(name) if name in ("train", "score") else {}
    if not progress:
        return ""
    if name == "train":
        done, total = progress.get("batch", 0), max(progress.get("batches", 1), 1)
        planned = progress.get("epochs") or "?"  # not planned before the first epoch ends
        label = f"{progress.get('phase', 'train')} epoch {progress.get('epoch')}/{planned}"
        rate = f"{progress.get('sequences_per_s', 0):,.0f} seq/s"
    else:
        done, total = progress.get("done", 0), max(progress.get("total", 1), 1)
        label, rate = "users", f"{progress.get('per_s', 0):,.0f} users/s"
    filled = int(20 * min(done / total, 1.0))
    return f"{label} [{'#' * filled}{'.' * (20 - filled)}] {done:,}/{total:,}  {rate}"


def headline(name: str, rec: dict) -> str:
    """The key counts of a finished stage."""
    if rec.get("skipped"):
        return f"skipped: {rec['skipped']}"
    if "gate" in rec:
        return "passed"
    if name == "train" and rec.get("mode") == "continue":
        epochs, since = rec.get("epochs_run"), rec.get("decision", {}).get("checks", {})
        return (f"continued v{since.get('champion_version')} on the events since "
                f"{since.get('champion_trained_until')}: {epochs} epoch{'s' * (epochs != 1)}, {rec.get('device')} "
                f"x{rec.get('world_size')}")
    if name == "train":
        epochs = rec.get("epochs_run")
        return (f"{epochs} epoch{'s' * (epochs != 1)} (best {rec.get('best_epoch')}), best validation NDCG@10 "
                f"{rec.get('best_val_ndcg_10', 0):.4f}, {rec.get('device')} x{rec.get('world_size')}")
    if name == "register":
        return f"v{rec.get('version')} {rec.get('decision')}, {champions_text(rec)}"
    if name == "ltv_backtest" and not rec.get("origins"):
        return f"no origin: correction weight {rec.get('decisions', {}).get('ltv_correction_weight', 0):g}"
    if name == "ltv_backtest":
        decided, found = rec.get("decisions", {}), rec.get("levels", {}).get(rec.get("ziln"), 1.0)
        applied = "applied" if decided.get("ltv_level", 1.0) != 1.0 else "not applied"
        published = rec.get("ltv_model", "ziln")
        if published == "ziln" and rec.get("ltv_total_from", "model") != "model":
            published += f" at the {rec['ltv_total_from']} total"
        checked = ("the training customers half against half" if rec.get("in_window")
                   else f"{len(rec.get('origins', []))} origin(s)")
        return (f"{checked}: correction weight "
                f"{decided.get('ltv_correction_weight', 0):g}, level {found:.3f} ({applied}), best "
                f"{rec.get('best_family')}, publishes {published}")
    if name == "als_baseline" and isinstance(rec.get("tuning"), dict):
        tuning = rec["tuning"]
        chosen = ", ".join(f"{key} {value:g}" for key, value in tuning["chosen"].items())
        return f"tuned: {chosen} (validation NDCG@10 {tuning['valid_ndcg_10']:.4f}, {tuning['trials']} trials)"
    if name == "evaluate":
        model = rec.get("metrics", {}).get("recommendation", {}).get("model", {})
        return f"NDCG@10 {model['ndcg_10']:.4f}" if "ndcg_10" in model else ""
    rows = rec.get("rows") or {}
    return "  ".join(f"{key} {value:,}" for key, value in rows.items() if isinstance(value, int))


def champions_text(registry: dict) -> str:
    rec, ltv = registry.get("champion"), registry.get("ltv_champion", registry.get("champion"))
    return f"@champion v{rec}" if rec == ltv else f"@champion v{rec} (recommendations), @ltv_champion v{ltv} (LTV)"


def print_results(console: Console, run: RunDir, seconds: float) -> None:
    s = json.loads(run.summary_file.read_text())
    registry = s["registry"]
    decision = registry.get("decision", "promoted")
    if decision == "promoted":
        verdict = f"v{registry.get('version')} promoted to @champion"
    elif decision == "kept":
        verdict = f"no challenger (training=none); scored with {champions_text(registry)}"
    elif decision == "rejected":
        verdict = f"v{registry.get('version')} REJECTED by the model gate; scored with {champions_text(registry)}"
    else:
        verdict = f"v{registry.get('version')} {decision}; scored with {champions_text(registry)}"
    conn_id = s["config"].get("warehouse_conn_id")
    url = (f"Airflow connection {conn_id}" if conn_id
           else redact_url(s["config"].get("warehouse_url") or default_warehouse_url()))
    lines = [f"\nltvrec run {s['run_id']} finished in {seconds:.0f}s (run date {s['run_date']})",
             f"  run folder: {run.path} (summary.json, logs/)", f"  warehouse:  {url}",
             f"  published:  {s['rows'].get('publish', {})}", f"  model:      {registry.get('model_name')} {verdict}",
             *(f"              - {reason}" for reason in registry.get("reasons", []))]
    for name, m in s["metrics"].get("recommendation", {}).items():
        if not name.startswith("_"):
            lines.append(f"  {name:<22} HR@10={m.get('hr_10', 0):.4f}  NDCG@10={m.get('ndcg_10', 0):.4f}")
    published = s.get("ltv_backtest", {}).get("ltv_model", "ziln")
    for name, m in s["metrics"].get("ltv", {}).items():
        total = m.get("total_predicted", 0) / m["total_actual"] if m.get("total_actual") else float("nan")
        label = f"{name} (published)" if name == published else name
        lines.append(f"  LTV {label:<20} normalized Gini={m.get('gini', 0):.3f}  Spearman={m.get('spearman', 0):.3f}  "
                     f"decile MAPE={m.get('decile_mape') or float('nan'):.3f}  predicted/actual total={total:.2f}")
    lines += [f"  LTV backtest: {reason}" for reason in s.get("ltv_backtest", {}).get("reasons", [])]
    lines += realised_lines(s.get("realised", {}))
    tracking_uri = mlflow_tracking_uri()
    ui = "its UI" if tracking_uri.startswith("http") else "make mlflow-ui, then http://127.0.0.1:5000"
    lines += [f"  MLflow:     {tracking_uri}  ({ui})", "",
              "Query the results with any SQL client of the warehouse, or `.venv/bin/ltvrec sql \"...\"`:",
              "  " + example_query(s["run_date"])]
    console.print("\n".join(lines), soft_wrap=True)


def realised_lines(realised: dict) -> list[str]:
    """The champion's latest realised figures (serving.model_performance), beside the offline ones above."""
    lines = []
    if rec := realised.get("recommendation"):
        partial = "" if rec["window_complete"] else ", window not over yet"
        lines.append(f"  realised   champion v{rec['version']} for {rec['run_date']} ({rec['users_active']} active "
                     f"users{partial}): HR@N={rec['hit_rate_at_n']:.4f}  NDCG@N={rec['ndcg_at_n']:.4f}  "
                     f"revenue@N={rec['revenue_at_n']:,.2f}")
    if ltv := realised.get("ltv"):
        lines.append(f"  realised   LTV champion v{ltv['version']} for {ltv['run_date']} ({ltv['ltv_customers']} "
                     f"customers): normalized Gini={number(ltv['ltv_normalized_gini']):.3f}  "
                     f"decile MAPE={number(ltv['ltv_decile_mape']):.3f}  "
                     f"predicted/actual total={number(ltv['ltv_spend_ratio']):.2f}")
    return lines


def number(value: float | None) -> float:
    return float("nan") if value is None else value


def example_query(run_date: str) -> str:
    return ("select r.user_id, r.rank, r.item_id, r.score, l.expected_value "
            "from serving.recommendations r left join serving.ltv_estimates l using (run_date, user_id) "
            f"where r.run_date = date '{run_date}' order by l.expected_value desc nulls last, r.user_id, r.rank limit 20;")


def print_failure(console: Console, run: RunDir | None, airflow_log: Path) -> None:
    """The failing stage's error and the last lines of its log; Airflow's log when no stage got that far."""
    failed = run.failure() if run is not None else None
    if failed is None:
        console.print(f"\nltvrec: the DAG run failed before any stage recorded why; the last lines of {airflow_log}:",
                      soft_wrap=True, markup=False)
        console.print("\n".join(tail(airflow_log)), soft_wrap=True, markup=False)
        return
    name, rec = failed
    error = str(rec.get("error"))
    console.print(f"\nltvrec: stage {name} failed ({run.path}):\n{error}", soft_wrap=True, markup=False)
    lines = [line for line in tail(run.log_file(name)) if not line.endswith(error.splitlines()[0])]
    if lines:  # what the stage logged before the error
        console.print(f"\nthe last lines of {run.log_file(name)}:\n" + "\n".join(lines), soft_wrap=True, markup=False)
    console.print(f"\nAirflow's log: {airflow_log}", soft_wrap=True, markup=False)


def tail(path: Path, n: int = LOG_TAIL) -> list[str]:
    try:
        return ["    " + line for line in path.read_text(errors="replace").splitlines()[-n:]]
    except OSError:
        return []
