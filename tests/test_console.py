"""What `ltvrec run` shows, read from a run folder: stage lines, progress bars, the failure report."""

import io
import json
import time

from rich.console import Console

from ltvrec import console
from ltvrec.rundir import RunDir


def text_of(renderable) -> str:
    out = Console(file=io.StringIO(), width=200, color_system=None)
    out.print(renderable)
    return out.file.getvalue()


def test_a_finished_stage_shows_its_seconds_and_counts(tmp_path):
    run = RunDir(tmp_path)
    run.mark_done("ingest", {"seconds": 6.0, "rows": {"raw_events": 22345, "raw_items": 300}})
    line = text_of(console.stage_line(run, "ingest", run.stage("ingest")))
    assert "✓ ingest" in line and "6.0s" in line and "raw_events 22,345" in line and "raw_items 300" in line


def test_the_als_baseline_shows_what_its_tuning_chose(tmp_path):
    run = RunDir(tmp_path)
    tuning = {"chosen": {"alpha": 1.0, "reg": 0.01, "rank": 64}, "valid_ndcg_10": 0.069271, "trials": 9}
    run.mark_done("als_baseline", {"seconds": 700.0, "rows": {"als_interactions": 411064}, "tuning": tuning})
    line = text_of(console.stage_line(run, "als_baseline", run.stage("als_baseline")))
    assert "tuned: alpha 1, reg 0.01, rank 64 (validation NDCG@10 0.0693, 9 trials)" in line


def test_notes_are_shown_under_their_stage(tmp_path):
    run = RunDir(tmp_path)
    run.mark_done("score", {"seconds": 1.0, "rows": {"recommendations": 0}, "notes": ["only LTV estimates are published"]})
    assert "! only LTV estimates are published" in text_of(console.stage_line(run, "score", run.stage("score")))


def test_training_shows_a_progress_bar_with_throughput(tmp_path):
    run = RunDir(tmp_path)
    run.mark_running("train")
    run.train.mkdir()
    run.progress_file("train").write_text(json.dumps({"phase": "train", "epoch": 3, "epochs": 30, "batch": 5,
                                                      "batches": 10, "sequences_per_s": 812.4}))
    line = text_of(console.stage_line(run, "train", run.stage("train")))
    assert "epoch 3/30" in line and "[##########..........]" in line and "812 seq/s" in line


def test_a_failure_shows_the_error_and_the_last_lines_of_the_stage_log(tmp_path):
    run = RunDir(tmp_path)
    run.mark_done("ingest", {"seconds": 1.0})
    run.mark_failed("gate_raw", RuntimeError("gate 'raw' failed; report: gates/raw/raw_report.txt"))
    run.logs.mkdir()
    run.log_file("gate_raw").write_text("\n".join(f"line {i}" for i in range(40)))
    out = Console(file=io.StringIO(), width=200, color_system=None)
    console.print_failure(out, run, tmp_path / "airflow.log")
    shown = out.file.getvalue()
    assert "stage gate_raw failed" in shown and "raw_report.txt" in shown
    assert "line 39" in shown and "line 27" not in shown  # the last lines only


def test_the_newest_run_folder_since_the_start_is_followed(tmp_path, monkeypatch):
    monkeypatch.setenv("LTVREC_HOME", str(tmp_path))
    started = time.time()
    assert console.find_run(started) is None
    for name in ("old", "new"):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "config.json").write_text("{}")
        time.sleep(0.05)
    assert console.find_run(started).name == "new"


def test_a_failed_dbt_model_task_fails_the_dbt_build_stage_naming_its_task(tmp_path, monkeypatch):
    from ltvrec import stages

    monkeypatch.setenv("LTVREC_HOME", str(tmp_path))
    run = RunDir.for_run_id("manual__2026-01-01")
    run.path.mkdir(parents=True)
    run.mark_started("dbt_build")
    started = run.stage("dbt_build")["started"]
    run.mark_started("dbt_build")  # a later model's task keeps the stage's start
    assert run.stage("dbt_build") == {"state": "running", "started": started}
    stages.record_failure(run.name, "dbt_build.fct_events_model_build", RuntimeError("not_null_fct_events_user_id"))
    name, rec = run.failure()
    assert name == "dbt_build" and rec["error"] == "fct_events_model_build: not_null_fct_events_user_id"


def test_the_champions_realised_figures_are_shown_once_measured():
    from ltvrec.console import realised_lines

    assert realised_lines({}) == []
    lines = realised_lines({
        "recommendation": {"version": "3", "run_date": "2026-06-24", "users_active": 41, "window_complete": False,
                           "hit_rate_at_n": 0.125, "ndcg_at_n": 0.0625, "revenue_at_n": 1234.5},
        "ltv": {"version": "2", "run_date": "2026-03-26", "ltv_customers": 90, "ltv_normalized_gini": 0.8,
                "ltv_decile_mape": None, "ltv_spend_ratio": 0.95}})
    assert "champion v3 for 2026-06-24 (41 active users, window not over yet): HR@N=0.1250  NDCG@N=0.0625" in lines[0]
    assert "revenue@N=1,234.50" in lines[0]
    assert "LTV champion v2 for 2026-03-26 (90 customers): normalized Gini=0.800  decile MAPE=nan" in lines[1]
