import pytest

from ltvrec import warehouse
from ltvrec.config import RunConfig, redact_url


def test_defaults_are_valid():
    cfg = RunConfig()
    assert cfg.source == "synthetic" and cfg.top_n == 10 and cfg.horizon_days == 90


def test_unknown_keys_are_rejected():
    with pytest.raises(ValueError, match="unknown config keys: bogus"):
        RunConfig.from_dict({"bogus": 1})


@pytest.mark.parametrize(
    "values, message",
    [
        ({"top_n": "ten"}, "top_n"),
        ({"top_n": 0}, "top_n"),
        ({"source": "csv"}, "source"),
        ({"source": "events"}, "needs a path"),
        ({"as_of": "22/11/2026"}, "as_of"),
        ({"run_date": "2026-02-30"}, "run_date"),
        ({"run_date": "2026-06-08", "as_of": "2026-06-08"}, "give one of them"),
        ({"top_n": True}, "top_n"),
    ],
)
def test_bad_values_name_the_key(values, message):
    with pytest.raises(ValueError, match=message):
        RunConfig.from_dict(values)


def test_round_trip(tmp_path):
    cfg = RunConfig.from_dict({"source": "events", "path": "/x.parquet", "top_n": 5, "lr": 1})
    cfg.save(tmp_path / "config.json")
    assert RunConfig.load(tmp_path / "config.json") == cfg


def test_defaults_depend_on_the_source_and_explicit_values_win():
    ml = RunConfig.from_dict({"source": "movielens", "path": "/ml-1m"})
    assert (ml.eval_protocol, ml.max_seq_len, ml.max_train_minutes, ml.patience) == ("leave_one_out", 200, 60.0, 10)
    retail = RunConfig.from_dict({"source": "online_retail", "path": "/or.parquet"})
    assert (retail.eval_protocol, retail.max_seq_len, retail.max_train_minutes, retail.patience) == ("temporal", 50, 10.0, 4)
    mine = RunConfig.from_dict({"source": "movielens", "path": "/ml-1m", "eval_protocol": "temporal", "max_seq_len": 64})
    assert (mine.eval_protocol, mine.max_seq_len) == ("temporal", 64)


def test_resolved_defaults_survive_a_round_trip(tmp_path):
    RunConfig.from_dict({"source": "movielens", "path": "/ml-1m"}).save(tmp_path / "config.json")
    assert RunConfig.load(tmp_path / "config.json").max_seq_len == 200


def test_demo_passes_a_valid_config_to_run(monkeypatch):
    """`ltvrec demo` calls `run` with every option spelled out: a new option must not reach it as typer's default."""
    from ltvrec import cli

    class Reached(Exception):
        pass

    def stop(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(cli, "airflow_env", stop)  # the first thing `run` does after validating the config
    with pytest.raises(Reached):
        cli.demo(users=10)


def test_the_warehouse_can_come_from_an_airflow_connection(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_LTVREC_WAREHOUSE", "postgresql://ltv:pa%40ss@db.example:5433/analytics")
    cfg = RunConfig(warehouse_url="duckdb:///ignored.duckdb", warehouse_conn_id="ltvrec_warehouse")
    wh = warehouse.connect(cfg.resolved_warehouse_url)
    assert wh.kind == "postgres"
    env = wh.dbt_target()[1]
    assert (env["LTVREC_PG_HOST"], env["LTVREC_PG_PORT"], env["LTVREC_PG_USER"], env["LTVREC_PG_PASSWORD"],
            env["LTVREC_PG_DBNAME"]) == ("db.example", "5433", "ltv", "pa@ss", "analytics")
    assert "pa%40ss" not in redact_url(cfg.resolved_warehouse_url) and "***" in redact_url(cfg.resolved_warehouse_url)


def test_the_readme_params_table_is_the_generated_one():
    from ltvrec.config import PROJECT_ROOT, params_markdown

    readme = (PROJECT_ROOT / "README.md").read_text()
    start, end = readme.index("<!-- params:start"), readme.index("<!-- params:end -->")
    table = readme[readme.index("\n", start) + 1:end].strip()
    assert table == params_markdown(), "README params table is stale: paste the output of `ltvrec params`"


def test_every_knob_is_a_cli_option_and_a_dag_param():
    import typer.main

    from ltvrec import cli
    from ltvrec.config import dag_params, knobs

    command = typer.main.get_command(cli.app).commands["run"]
    options = {opt for p in command.params for opt in p.opts}
    names = [f.name for f in knobs()]
    assert {f"--{n.replace('_', '-')}" for n in names} <= options
    assert set(dag_params()) == set(names)


def test_the_cli_passes_only_what_was_given(monkeypatch):
    from typer.testing import CliRunner

    from ltvrec import cli

    seen = {}
    monkeypatch.setattr(cli, "execute", lambda params, verbose, on_stack: seen.update(params=params, verbose=verbose,
                                                                                      on_stack=on_stack))
    result = CliRunner().invoke(cli.app, ["run", "--top-n", "5", "--no-item-text", "--conf", '{"holdout_days": 7}'])
    assert result.exit_code == 0, result.output
    assert seen == {"params": {"top_n": 5, "item_text": False, "holdout_days": 7}, "verbose": False, "on_stack": False}
    CliRunner().invoke(cli.app, ["run", "--on-stack", "--nnodes", "2", "--rdzv-endpoint", "gpu-0:29400"])
    assert seen["on_stack"] and seen["params"] == {"nnodes": 2, "rdzv_endpoint": "gpu-0:29400"}


def test_a_run_for_a_date_sees_the_days_before_it_and_survives_a_round_trip(tmp_path):
    cfg = RunConfig.from_dict({"run_date": "2026-03-01"})
    assert cfg.as_of == "2026-02-28"  # the last day whose events it sees
    cfg.save(tmp_path / "config.json")
    assert RunConfig.load(tmp_path / "config.json") == cfg


def test_a_backfill_runs_each_date_in_turn_and_stops_at_the_first_failure(monkeypatch):
    import typer
    from typer.testing import CliRunner

    from ltvrec import cli

    seen = []

    def execute(params, verbose, on_stack=False, backfill=None):
        seen.append(params["run_date"])
        raise typer.Exit(1 if params["run_date"] == "2026-06-15" else 0)

    monkeypatch.setattr(cli, "execute", execute)
    args = ["backfill", "--from", "2026-06-01", "--to", "2026-06-20", "--every", "7d", "--top-n", "5"]
    result = CliRunner().invoke(cli.app, args)
    assert seen == ["2026-06-01", "2026-06-08", "2026-06-15"] and result.exit_code == 1
    assert "done: 2026-06-01, 2026-06-08; not run: none" in result.output
    for bad, message in ((["--every", "1w"], "--every"), (["--to", "2026-05-01"], "before --from"),
                         (["--run-date", "2026-06-02"], "leave run_date and as_of out")):
        result = CliRunner().invoke(cli.app, ["backfill", "--from", "2026-06-01", "--to", "2026-06-03", *bad])
        assert result.exit_code == 2 and message in result.output, result.output


def test_more_than_one_node_needs_a_rendezvous():
    from ltvrec.config import RunConfig

    with pytest.raises(ValueError, match="nnodes 2 needs rdzv_endpoint"):
        RunConfig.from_dict({"nnodes": 2})


def test_bad_params_are_one_plain_message_before_airflow(monkeypatch):
    from typer.testing import CliRunner

    from ltvrec import cli

    monkeypatch.setattr(cli, "airflow_env", lambda: pytest.fail("Airflow must not start"))
    result = CliRunner().invoke(cli.app, ["run", "--top-n", "0"])
    assert result.exit_code == 2 and "config key 'top_n' must be >= 1" in result.output
    assert "Traceback" not in result.output
