"""A scheduled stack: `ltvrec stack up` with LTVREC_SCHEDULE=@daily and LTVREC_PARAMS (small synthetic data); the
scheduler's own run is for the date its data interval ends on, and `ltvrec backfill --on-stack` hands two dates to
Airflow's backfill, each run publishing its own partition from the events before its date."""

import json
import time
from datetime import datetime, timezone

import pytest

from ltvrec.on_stack import follow, run_folder, wait_for_dag
from test_stack import ltvrec, running_stack, serving_rows

pytestmark = [pytest.mark.slow, pytest.mark.integration]
PARAMS = {"synthetic_users": 200, "synthetic_items": 60, "holdout_days": 21, "horizon_days": 60, "epochs": 1,
          "top_n": 5, "nproc": 1, "item_text": False, "als_tuning": False}
BACKFILL = ["2026-06-29", "2026-06-30"]  # the synthetic history ends on 2026-06-30


@pytest.fixture(scope="module")
def stack():
    with running_stack("ltvrec-stack-schedule-", LTVREC_SCHEDULE="@daily", LTVREC_PARAMS=json.dumps(PARAMS)) as started:
        yield started


def test_the_scheduled_run_is_for_its_data_intervals_end(stack):
    st, _ = stack
    client = st.airflow()
    wait_for_dag(client)
    deadline, runs = time.time() + 300, []
    while not runs and time.time() < deadline:  # catchup is off: the latest midnight's run, once unpaused
        runs = client.get("/api/v2/dags/ltvrec_batch/dagRuns?run_type=scheduled")["dag_runs"]
        time.sleep(3)
    assert runs, "the scheduler created no run"
    run = runs[0]
    assert follow(client, run["dag_run_id"], console=_Quiet()) == "success"
    interval_end = datetime.fromisoformat(run["data_interval_end"].replace("Z", "+00:00")).astimezone(timezone.utc)
    summary = json.loads(run_folder(client, run["dag_run_id"]).summary_file.read_text())
    assert summary["run_date"] == interval_end.date().isoformat()
    assert summary["config"]["synthetic_users"] == 200  # LTVREC_PARAMS: the scheduled run's params
    assert serving_rows(st, summary["run_date"])["recommendations"][0] == 5 * 200


def test_a_backfill_on_the_stack_publishes_each_date_from_the_events_before_it(stack):
    st, env = stack
    done = ltvrec(env, "backfill", "--on-stack", "--from", BACKFILL[0], "--to", BACKFILL[-1], "--conf",
                  json.dumps(PARAMS), timeout=1500)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    client = st.airflow()
    runs = client.get("/api/v2/dags/ltvrec_batch/dagRuns?run_type=backfill&order_by=logical_date")["dag_runs"]
    assert [r["logical_date"][:10] for r in runs] == BACKFILL and all(r["state"] == "success" for r in runs)
    for run in runs:
        folder = run_folder(client, run["dag_run_id"])
        summary = json.loads(folder.summary_file.read_text())
        assert summary["run_date"] == run["logical_date"][:10] == folder.split()["end"][:10]
        assert serving_rows(st, summary["run_date"])["recommendations"][0] > 0


class _Quiet:
    def print(self, *args, **kwargs) -> None:
        pass
