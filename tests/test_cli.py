"""`ltvrec run` refuses what it can check before Airflow starts: one plain message, no traceback, exit code 2."""

import pytest
from typer.testing import CliRunner

from ltvrec import cli


@pytest.fixture
def no_airflow(monkeypatch):
    monkeypatch.setattr(cli, "airflow_env", lambda: pytest.fail("Airflow must not start for a bad input"))


def refused(*args: str) -> str:
    result = CliRunner().invoke(cli.app, ["run", *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.output.startswith("error: ")
    return result.output


def test_a_missing_path(no_airflow, tmp_path):
    assert f"{tmp_path / 'nope.csv'}: not found" in refused("--source", "events", "--path", str(tmp_path / "nope.csv"))


def test_an_empty_folder(no_airflow, tmp_path):
    assert "folder has no events file" in refused("--source", "events", "--path", str(tmp_path))


def test_a_semicolon_separated_file(no_airflow, tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("user_id;item_id;event_type;event_ts;quantity;unit_price\nu1;i1;view;2024-01-01;1;0\n")
    message = refused("--source", "events", "--path", str(path))
    assert "missing required column(s)" in message and "separated by something else than commas" in message


def test_a_spreadsheet(no_airflow, tmp_path):
    path = tmp_path / "events.xlsx"
    path.write_bytes(b"PK\x03\x04 not really a workbook")
    assert "unsupported file type '.xlsx'" in refused("--source", "events", "--path", str(path))


def test_a_source_without_a_path(no_airflow):
    assert "needs a path" in refused("--source", "online_retail")


def test_train_node_refuses_a_one_node_run_and_waits_only_so_long(tmp_path):
    from ltvrec.config import RunConfig
    from ltvrec.rundir import RunDir

    one = RunDir(tmp_path / "one")
    one.save_config(RunConfig())
    result = CliRunner().invoke(cli.app, ["train-node", "--run-dir", str(one.path)])
    assert result.exit_code == 2 and "trains on one node (nnodes 1)" in result.output
    two = RunDir(tmp_path / "two")
    two.save_config(RunConfig(nnodes=2, rdzv_endpoint="127.0.0.1:29400"))
    result = CliRunner().invoke(cli.app, ["train-node", "--run-dir", str(two.path), "--wait-s", "0"])
    assert result.exit_code == 1 and "train/config.json did not appear within 0s" in result.output


def test_on_stack_without_a_stack_says_how_to_start_one(tmp_path, monkeypatch):
    monkeypatch.setenv("LTVREC_HOME", str(tmp_path))
    result = CliRunner().invoke(cli.app, ["run", "--on-stack", "--synthetic-users", "50"])
    assert result.exit_code == 1 and "ltvrec stack up" in result.output and "Traceback" not in result.output
