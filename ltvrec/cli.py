"""`ltvrec` command line: run the Airflow DAG in-process, generate data, open the UIs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from ltvrec.config import (DAG_ID, PROJECT_ROOT, SOURCES, RunConfig, connection_uri, default_warehouse_url, ltvrec_home,
                           mlflow_tracking_uri, redact_url)

app = typer.Typer(help="ltvrec: raw events -> top-N recommendations and customer LTV in a warehouse.", no_args_is_help=True)


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
    env.setdefault("LTVREC_TASK_RETRIES", "0")  # fail fast locally; production keeps the DAG's default of 2
    env["LTVREC_HOME"] = str(home)
    env.setdefault("MLFLOW_TRACKING_URI", mlflow_tracking_uri())
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _airflow(args: list[str], env: dict[str, str]) -> int:
    return subprocess.call([str(Path(sys.executable).parent / "airflow"), *args], env=env)


def _ensure_airflow_db(env: dict[str, str]) -> None:
    marker = Path(env["AIRFLOW_HOME"]) / ".migrated"
    if not marker.exists():
        if _airflow(["db", "migrate"], env) != 0:
            raise typer.Exit(1)
        marker.touch()


@app.command()
def run(
    source: str = typer.Option("synthetic", help=f"one of: {', '.join(SOURCES)}"),
    path: Optional[str] = typer.Option(None, help="input file or folder (events / online_retail / movielens)"),
    items_path: Optional[str] = typer.Option(None, help="item catalogue for --source events"),
    as_of: Optional[str] = typer.Option(None, help="YYYY-MM-DD; default: day of the last event"),
    top_n: int = typer.Option(10, help="recommendations per user"),
    horizon_days: int = typer.Option(90, help="LTV horizon H in days"),
    eval_protocol: Optional[str] = typer.Option(None, help="temporal (global time cut-off) or leave_one_out; "
                                                "default: leave_one_out for movielens, else temporal"),
    epochs: Optional[int] = typer.Option(None, help="maximum training epochs (early stopping decides)"),
    nproc: Optional[int] = typer.Option(None, help="torchrun processes"),
    warm_start: bool = typer.Option(False, help="fine-tune the current @champion on the new data"),
    rank_by: Optional[str] = typer.Option(None, help="relevance (default) or expected_value: P(item) x catalogue price"),
    synthetic_users: Optional[int] = typer.Option(None, help="users for --source synthetic"),
    warehouse_url: Optional[str] = typer.Option(None, help="duckdb:///file or postgresql://...; default DuckDB in LTVREC_HOME"),
    conf: Optional[str] = typer.Option(None, help="extra DAG params as JSON, e.g. '{\"holdout_days\": 7}'"),
) -> None:
    """Run the ltvrec_batch DAG in-process (`airflow dags test`) on a data source."""
    params = {"source": source, "path": str(Path(path).resolve()) if path else None,
              "items_path": str(Path(items_path).resolve()) if items_path else None, "as_of": as_of,
              "top_n": top_n, "horizon_days": horizon_days, "eval_protocol": eval_protocol, "epochs": epochs, "nproc": nproc,
              "warm_start": warm_start or None, "rank_by": rank_by,
              "synthetic_users": synthetic_users, "warehouse_url": warehouse_url}
    params = {k: v for k, v in params.items() if v is not None} | (json.loads(conf) if conf else {})
    try:
        RunConfig.from_dict(params)  # reject bad params before starting Airflow
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    env = airflow_env()
    _ensure_airflow_db(env)
    started = time.time()
    code = _airflow(["dags", "test", DAG_ID, "--conf", json.dumps(params)], env)
    summaries = [p for p in (ltvrec_home() / "runs").glob("*/summary.json") if p.stat().st_mtime >= started]
    if code != 0 or not summaries:
        failures = [p for p in (ltvrec_home() / "runs").glob("*/failed.json") if p.stat().st_mtime >= started]
        for f in failures:
            failed = json.loads(f.read_text())
            typer.echo(f"\nltvrec: stage {failed['stage']} failed ({f.parent}):\n{failed['error']}", err=True)
        typer.echo(f"\nltvrec: the DAG run failed (task logs above; run folders in {ltvrec_home() / 'runs'})", err=True)
        raise typer.Exit(1)
    _print_results(max(summaries, key=lambda p: p.stat().st_mtime), time.time() - started)


def _print_results(summary_path: Path, seconds: float) -> None:
    s = json.loads(summary_path.read_text())
    rec = s["metrics"].get("recommendation", {})
    ltv = s["metrics"].get("ltv", {})
    conn_id = s["config"].get("warehouse_conn_id")
    url = f"Airflow connection {conn_id}" if conn_id else redact_url(s["config"].get("warehouse_url") or default_warehouse_url())
    registry = s["registry"]
    gate = registry.get("decision", "promoted")
    champion = (f"v{registry.get('version')} promoted to @champion" if gate == "promoted"
                else f"v{registry.get('version')} REJECTED by the model gate; scored with @champion v{registry.get('champion')}")
    lines = [
        "", f"ltvrec run {s['run_id']} finished in {seconds:.0f}s (run date {s['run_date']})",
        f"  summary:      {summary_path}",
        f"  warehouse:    {url}",
        f"  rows:         {s['rows'].get('publish', {})}",
        f"  model:        {registry.get('model_name')} {champion}",
        *(f"                - {reason}" for reason in registry.get("reasons", [])),
    ]
    for name, m in rec.items():
        if not name.startswith("_"):
            lines.append(f"  {name:<12}  HR@10={m.get('hr_10', 0):.4f}  NDCG@10={m.get('ndcg_10', 0):.4f}")
    for name, m in ltv.items():
        lines.append(f"  LTV {name:<18} normalized Gini={m.get('gini', 0):.3f}  Spearman={m.get('spearman', 0):.3f}")
    lines += [
        f"  MLflow:       {mlflow_tracking_uri()}  (make mlflow-ui, then http://127.0.0.1:5000)",
        "", "Query the results with any SQL client of the warehouse, or `.venv/bin/ltvrec sql \"...\"`:",
        "  " + example_query(s["run_date"]),
    ]
    typer.echo("\n".join(lines))


def example_query(run_date: str) -> str:
    return ("select r.user_id, r.rank, r.item_id, r.score, l.expected_value "
            "from serving.recommendations r left join serving.ltv_estimates l using (run_date, user_id) "
            f"where r.run_date = date '{run_date}' order by l.expected_value desc nulls last, r.user_id, r.rank limit 20;")


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
        typer.echo("error: set LTVREC_READER_PASSWORD to the reader role's password", err=True)
        raise typer.Exit(2)
    wh = warehouse.connect(connection_uri(conn_id) if conn_id else warehouse_url or default_warehouse_url())
    if wh.kind != "postgres":
        typer.echo(f"error: reader roles are for PostgreSQL; {redact_url(wh.url)} is {wh.kind}", err=True)
        raise typer.Exit(2)
    wh.create_reader_role(password, role)
    typer.echo(f"role {role}: login, SELECT on schema serving (current and future tables), nothing else")


@app.command()
def demo(users: int = typer.Option(2000, help="synthetic users")) -> None:
    """The whole DAG on the project's synthetic data, on the embedded defaults."""
    run(source="synthetic", path=None, items_path=None, as_of=None, top_n=10, horizon_days=90,
        eval_protocol="temporal", epochs=None, warm_start=False, rank_by=None,
        nproc=None, synthetic_users=users, warehouse_url=None, conf=None)


@app.command()
def generate(out: Path = typer.Option(..., help="output folder"), users: int = 2000, items: int = 300,
             days: int = 365, seed: int = 42) -> None:
    """Write synthetic events.parquet and items.parquet (the `events` source contract)."""
    from ltvrec import synthetic

    ev, it = synthetic.write(out, n_users=users, n_items=items, days=days, seed=seed)
    typer.echo(f"wrote {ev} and {it}")


@app.command()
def ui(which: str = typer.Argument(..., help="mlflow or airflow"), port: Optional[int] = None) -> None:
    """Start the MLflow UI or Airflow (standalone: api-server, scheduler, dag-processor) on localhost."""
    env = airflow_env()
    if which == "mlflow":
        cmd = [str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", mlflow_tracking_uri(),
               "--host", "127.0.0.1", "--port", str(port or 5000)]
        raise typer.Exit(subprocess.call(cmd, env=env))
    if which == "airflow":
        _ensure_airflow_db(env)
        env["AIRFLOW__API__PORT"] = str(port or 8080)
        env.setdefault("AIRFLOW__API__HOST", "127.0.0.1")
        typer.echo(f"Airflow on http://127.0.0.1:{port or 8080} (login printed below; password in "
                   f"{env['AIRFLOW_HOME']}/simple_auth_manager_passwords.json.generated)")
        raise typer.Exit(_airflow(["standalone"], env))
    typer.echo("choose mlflow or airflow", err=True)
    raise typer.Exit(2)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def airflow(ctx: typer.Context) -> None:
    """Any `airflow` command with ltvrec's embedded environment, e.g. `ltvrec airflow dags list`."""
    raise typer.Exit(_airflow(list(ctx.args), airflow_env()))


if __name__ == "__main__":
    app()
