"""`ltvrec` command line: run the Airflow DAG in-process, generate data, query the warehouse, open the UIs.

`ltvrec run`'s options are generated from the run config's knobs (ltvrec/config.py), one per knob.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer

from ltvrec.config import (AIRFLOW_SETTINGS, PROJECT_ROOT, PY_TYPES, RunConfig, connection_uri, default_text,
                           default_warehouse_url, kind_of, knobs, ltvrec_home, mlflow_tracking_uri, params_markdown,
                           redact_url)
from ltvrec.launch import tool

app = typer.Typer(help="ltvrec: raw events -> top-N recommendations and customer LTV in a warehouse.", no_args_is_help=True)
PATH_KNOBS = ("path", "items_path")  # resolved to absolute paths: Airflow runs from another directory


def airflow_env() -> dict[str, str]:
    """Environment for an embedded Airflow (SQLite metadata under the state directory)."""
    home = ltvrec_home()
    airflow_home = home / "airflow"
    airflow_home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("AIRFLOW_HOME", str(airflow_home))
    env.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{airflow_home / 'airflow.db'}")
    env.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(PROJECT_ROOT / "dags"))
    env.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    env.setdefault("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "False")
    for key, value in AIRFLOW_SETTINGS.items():
        env.setdefault(key, value)
    env.setdefault("LTVREC_TASK_RETRIES", "0")  # fail fast locally; production keeps the DAG's default of 2
    env["LTVREC_HOME"] = str(home)
    env.setdefault("MLFLOW_TRACKING_URI", mlflow_tracking_uri())
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _airflow(args: list[str], env: dict[str, str], **kwargs) -> int:
    return subprocess.call([tool("airflow"), *args], env=env, **kwargs)


def _ensure_airflow_db(env: dict[str, str]) -> None:
    marker = Path(env["AIRFLOW_HOME"]) / ".migrated"
    if not marker.exists():
        with open(Path(env["AIRFLOW_HOME"]) / "db-migrate.log", "w") as out:
            if _airflow(["db", "migrate"], env, stdout=out, stderr=subprocess.STDOUT) != 0:
                fail(f"`airflow db migrate` failed; see {out.name}", 1)
        marker.touch()


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def execute(params: dict, verbose: bool, on_stack: bool = False, backfill: tuple[str, str] | None = None) -> None:
    """Check the params and the input, then run the DAG in-process and follow it (ltvrec/console.py), or trigger it
    on the running stack and follow it there (ltvrec/on_stack.py; `backfill`: Airflow's backfill of these dates)."""
    from ltvrec import cleaning, console, sources, stages

    try:
        cfg = RunConfig.from_dict(params)
        # before Airflow's start-up, not after it; on the stack its warehouse and registry are the DAG's first
        # task's to check
        if on_stack:
            sources.check_input(cfg.source, cfg.path, cfg.items_path)
        else:
            stages.check_run(cfg)
    except ValueError as exc:  # InputError is a ValueError: one plain message naming file, row or column
        fail(str(exc))
    cleaning.build_manifest()  # the DAG's dbt tasks are rendered from it (a no-op while it is current)
    if on_stack:
        from ltvrec import on_stack as stack_run

        try:
            code = stack_run.backfill(params, *backfill) if backfill else stack_run.execute(params)
        except (RuntimeError, OSError) as exc:
            fail(str(exc), 1)
        raise typer.Exit(code)
    env = airflow_env()
    if verbose:
        env["LTVREC_STREAM_LOGS"] = "1"
    _ensure_airflow_db(env)
    raise typer.Exit(console.run_dag(params, env, verbose))


def run(**options) -> None:
    """Run the ltvrec_batch DAG in-process (`airflow dags test`) on a data source, or on the stack (`--on-stack`)."""
    verbose, on_stack = options.pop("verbose"), options.pop("on_stack")
    execute(run_params(options), verbose, on_stack)


def run_params(options: dict) -> dict:
    """The params of the knob options given (paths made absolute) and of --conf."""
    conf = options.pop("conf")
    params = {k: v for k, v in options.items() if v is not None}
    for key in PATH_KNOBS:
        if key in params:
            params[key] = str(Path(params[key]).resolve())
    try:
        params |= json.loads(conf) if conf else {}
    except json.JSONDecodeError as exc:
        fail(f"--conf is not valid JSON ({exc})")
    return params


def backfill(**options) -> None:
    """One run of ltvrec_batch per date from --from to --to, oldest first: each sees only the events before its date
    and publishes its date's partition (a date run again is replaced). In-process, one `airflow dags test` after
    another, stopping at the first failure; or on the stack with Airflow's own backfill (`--on-stack`: the dates are
    the DAG's schedule's, LTVREC_SCHEDULE)."""
    first, last, every = options.pop("from_date"), options.pop("to_date"), options.pop("every")
    verbose, on_stack = options.pop("verbose"), options.pop("on_stack")
    params = run_params(options)
    if params.get("run_date") or params.get("as_of"):
        fail("a backfill sets each run's run_date: leave run_date and as_of out")
    try:
        dates = run_dates(first, last, every)
    except ValueError as exc:
        fail(str(exc))
    if on_stack:
        if every is not None:
            fail("--every is for in-process backfills: on the stack the DAG's schedule (LTVREC_SCHEDULE) sets the "
                 "dates")
        execute(params, verbose, on_stack=True, backfill=(dates[0], dates[-1]))
    for i, run_date in enumerate(dates):
        typer.echo(f"backfill {i + 1}/{len(dates)}: run_date {run_date}")
        try:
            execute(params | {"run_date": run_date}, verbose)
        except typer.Exit as done:
            if done.exit_code != 0:
                fail(f"the run for {run_date} failed; done: {', '.join(dates[:i]) or 'none'}; not run: "
                     f"{', '.join(dates[i + 1:]) or 'none'}", done.exit_code)
    typer.echo(f"backfilled {len(dates)} date(s): {', '.join(dates)}")


def run_dates(first: str, last: str, every: str | None) -> list[str]:
    """The run dates from `first` to `last` (inclusive when the step lands on it), `every` ('7d') days apart."""
    from datetime import date, timedelta

    try:
        start, end = date.fromisoformat(first), date.fromisoformat(last)
    except ValueError as exc:
        raise ValueError(f"--from and --to must be dates YYYY-MM-DD ({exc})") from None
    match = re.fullmatch(r"([1-9][0-9]*)d", every or "1d")
    if not match:
        raise ValueError(f"--every must be a number of days such as 1d or 7d, got {every!r}")
    if end < start:
        raise ValueError(f"--to {last} is before --from {first}")
    step = int(match.group(1))
    return [(start + timedelta(days=d)).isoformat() for d in range(0, (end - start).days + 1, step)]


def _knob_option(f: dataclasses.Field) -> inspect.Parameter:
    """A typer option for one knob; None (not given) leaves the knob to its default."""
    kind, _ = kind_of(f)
    flag = f"--{f.name.replace('_', '-')}"
    decls = [f"{flag}/--no-{flag[2:]}"] if kind == "bool" else [flag]
    meta = f.metadata
    choices = f"[{'|'.join(meta['choices'])}]" if meta["choices"] else None
    option = typer.Option(None, *decls, help=f"{meta['help']} (default: {default_text(f)})",
                          rich_help_panel=meta["group"], metavar=choices, show_default=False)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=Optional[PY_TYPES[kind]])


def _option(name: str, annotation, option) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=option)


RUN_OPTIONS = [_knob_option(f) for f in knobs()] + [
    _option("conf", Optional[str], typer.Option(None, help="more params as JSON, e.g. '{\"holdout_days\": 7}'")),
    _option("verbose", bool, typer.Option(False, "--verbose", "-v", help="stream every log (Airflow, dbt, Spark, "
                                                                        "torchrun) to the terminal")),
    _option("on_stack", bool, typer.Option(False, "--on-stack", help="trigger the DAG on the running stack (`ltvrec "
                                                                     "stack up`) through Airflow's REST API and follow "
                                                                     "it, instead of running it in-process")),
]
run.__signature__ = inspect.Signature(RUN_OPTIONS)
app.command()(run)
backfill.__signature__ = inspect.Signature([
    _option("from_date", str, typer.Option(..., "--from", help="first run date, YYYY-MM-DD")),
    _option("to_date", str, typer.Option(..., "--to", help="last run date, YYYY-MM-DD (a run on it if the step lands "
                                                           "there)")),
    _option("every", Optional[str], typer.Option(None, help="days between run dates, e.g. 1d (default) or 7d")),
] + RUN_OPTIONS)
app.command()(backfill)


@app.command()
def demo(users: int = typer.Option(2000, help="synthetic users"),
         verbose: bool = typer.Option(False, "--verbose", "-v", help="stream every log to the terminal")) -> None:
    """The whole DAG on the project's synthetic data, on the embedded defaults."""
    execute({"source": "synthetic", "synthetic_users": users}, verbose)


@app.command("dbt-manifest")
def dbt_manifest() -> None:
    """`dbt parse` the project into the manifest the DAG renders its dbt tasks from (when a project file is newer)."""
    from ltvrec import cleaning

    typer.echo(cleaning.build_manifest())


@app.command()
def params() -> None:
    """Print the params table (Markdown), as the README shows it."""
    typer.echo(params_markdown())


@app.command()
def sql(query: str = typer.Argument(..., help="SQL to run on the warehouse"),
        warehouse_url: Optional[str] = typer.Option(None, help="default: $LTVREC_WAREHOUSE_URL or DuckDB in LTVREC_HOME")) -> None:
    """Run one SQL query on the warehouse and print the result."""
    from ltvrec import warehouse

    table = warehouse.connect(warehouse_url or default_warehouse_url()).query(query)
    typer.echo(table.to_pandas().to_string(index=False, max_rows=200))


@app.command("grant-reader")
def grant_reader(
    warehouse_url: Optional[str] = typer.Option(None, help="postgresql://... (default: $LTVREC_WAREHOUSE_URL)"),
    conn_id: Optional[str] = typer.Option(None, help="or an Airflow connection holding the warehouse URI"),
    role: str = typer.Option("ltvrec_reader", help="role name"),
) -> None:
    """Create (or update) the read-only PostgreSQL role: SELECT on schema `serving` only, now and on tables created
    later. Its password is read from $LTVREC_READER_PASSWORD, never from the command line."""
    from ltvrec import warehouse

    password = os.environ.get("LTVREC_READER_PASSWORD")
    if not password:
        fail("set LTVREC_READER_PASSWORD to the reader role's password")
    wh = warehouse.connect(connection_uri(conn_id) if conn_id else warehouse_url or default_warehouse_url())
    if wh.kind != "postgres":
        fail(f"reader roles are for PostgreSQL; {redact_url(wh.url)} is {wh.kind}")
    wh.create_reader_role(password, role)
    typer.echo(f"role {role}: login, SELECT on schema serving (current and future tables), nothing else")


@app.command()
def generate(out: Path = typer.Option(..., help="output folder"), users: int = 2000, items: int = 300,
             days: int = 365, seed: int = 42, regime: str = typer.Option("steady", help="steady, ageing, growing or "
                                                                            "seasonal (ltvrec/synthetic.py)")) -> None:
    """Write synthetic events.parquet and items.parquet (the `events` source contract)."""
    from ltvrec import synthetic

    ev, it = synthetic.write(out, n_users=users, n_items=items, days=days, seed=seed, regime=regime)
    typer.echo(f"wrote {ev} and {it}")


@app.command()
def ui(which: str = typer.Argument(..., help="mlflow or airflow"), port: Optional[int] = None) -> None:
    """Start the MLflow UI or Airflow (standalone: api-server, scheduler, dag-processor) on localhost."""
    env = airflow_env()
    if which == "mlflow":
        cmd = [tool("mlflow"), "ui", "--backend-store-uri", mlflow_tracking_uri(),
               "--host", "127.0.0.1", "--port", str(port or 5000)]
        raise typer.Exit(subprocess.call(cmd, env=env))
    if which == "airflow":
        _ensure_airflow_db(env)
        env["AIRFLOW__API__PORT"] = str(port or 8080)
        env.setdefault("AIRFLOW__API__HOST", "127.0.0.1")
        typer.echo(f"Airflow on http://127.0.0.1:{port or 8080} (login printed below; password in "
                   f"{env['AIRFLOW_HOME']}/simple_auth_manager_passwords.json.generated)")
        raise typer.Exit(_airflow(["standalone"], env))
    fail("choose mlflow or airflow")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def airflow(ctx: typer.Context) -> None:
    """Any `airflow` command with ltvrec's embedded environment, e.g. `ltvrec airflow dags list`."""
    raise typer.Exit(_airflow(list(ctx.args), airflow_env()))


@app.command("train-node")
def train_node(run_dir: Path = typer.Option(..., help="the run folder, on a volume shared with node 0"),
               wait_s: float = typer.Option(600, help="how long to wait for node 0 to write train/config.json")) -> None:
    """Join a multi-node training (run params nnodes > 1, rdzv_endpoint) as one more torchrun agent, on a GPU host."""
    import time

    from ltvrec import launch
    from ltvrec.rundir import RunDir

    run = RunDir(run_dir.resolve())
    cfg = run.config()
    if cfg.nnodes < 2:
        fail(f"run {run.name} trains on one node (nnodes {cfg.nnodes}): nothing to join")
    config_file, deadline = run.train / "config.json", time.time() + wait_s
    while not config_file.exists():
        if time.time() > deadline:
            fail(f"{config_file} did not appear within {wait_s:.0f}s: is the run's train task running?", 1)
        time.sleep(2)
    try:
        launch.torchrun(config_file, launch.processes_per_node(cfg.nproc),
                        run.log_file(f"train-node-{os.uname().nodename}"), cfg.nnodes, cfg.rdzv_endpoint, run.name)
    except RuntimeError as exc:
        fail(str(exc), 1)


stack_app = typer.Typer(help="The production topology as local processes (docs/production.md).", no_args_is_help=True)
app.add_typer(stack_app, name="stack")


@stack_app.command("up")
def stack_up() -> None:
    """Start PostgreSQL, the MLflow server, a Spark cluster and Airflow with a worker per queue; wait until healthy."""
    from ltvrec.stack import Stack

    try:
        Stack().up(typer.echo)
    except RuntimeError as exc:
        fail(str(exc), 1)


@stack_app.command("status")
def stack_status() -> None:
    """Each service's pid, health, URL and log."""
    from ltvrec.stack import Stack

    rows = Stack().status()
    if not rows:
        fail(f"no stack in {Stack().root}: start one with `ltvrec stack up`", 1)
    for row in rows:
        state = "healthy" if row["healthy"] else "running, not healthy" if row["running"] else "stopped"
        typer.echo(f"  {row['service']:<24} {state:<22} pid {row['pid'] or '-':<8} {row['url']}\n"
                   f"  {'':<24} log {row['log']}")
    if not all(row["healthy"] for row in rows):
        raise typer.Exit(1)


@stack_app.command("down")
def stack_down() -> None:
    """Stop exactly the processes `up` started; the data stays for the next `up`."""
    from ltvrec.stack import Stack

    Stack().down(typer.echo)


if __name__ == "__main__":
    app()
