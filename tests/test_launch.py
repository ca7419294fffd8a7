"""The process plumbing of training and the stack: torchrun's process count per worker, the stack's settings, and
stopping exactly the processes the stack started."""

import subprocess
import sys
import time

import psutil

from ltvrec.launch import processes_per_node
from ltvrec.stack import Stack, process_alive, process_start, stop_group


def test_a_workers_own_process_count_wins(monkeypatch):
    monkeypatch.setenv("LTVREC_TORCHRUN_NPROC", "3")
    assert processes_per_node(2) == 3


def test_without_gpus_the_runs_nproc_is_used(monkeypatch):
    monkeypatch.delenv("LTVREC_TORCHRUN_NPROC", raising=False)
    monkeypatch.setenv("LTVREC_TRAIN_DEVICE", "cpu")  # a CPU worker ignores GPUs it might see
    assert processes_per_node(2) == 2


def test_settings_are_chosen_once_and_kept(tmp_path):
    first = Stack(tmp_path).settings()
    assert Stack(tmp_path).settings() == first
    assert len(set(first["ports"].values())) == len(first["ports"])
    assert (tmp_path / "stack" / "settings.json").stat().st_mode & 0o077 == 0  # secrets: owner only
    env = Stack(tmp_path).service_env()
    assert env["LTVREC_SPARK_MASTER"].startswith("spark://127.0.0.1:")
    assert env["MLFLOW_TRACKING_URI"].startswith("http://127.0.0.1:")
    assert env["LTVREC_WAREHOUSE_URL"].endswith("/ltvrec")


def test_down_stops_the_started_group_and_nothing_else():
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"],
                              start_new_session=True)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(1.5)
        record = {"pid": parent.pid, "started": process_start(parent.pid)}
        child = psutil.Process(parent.pid).children()[0]
        stop_group(record, grace_s=10)
        parent.wait(10)
        assert not process_alive(record) and not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
        assert bystander.poll() is None  # not started by the stack: untouched
    finally:
        bystander.kill()


def test_a_reused_pid_is_not_the_recorded_process():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        record = {"pid": proc.pid, "started": process_start(proc.pid)}
        assert process_alive(record)
        assert not process_alive(record | {"started": record["started"] - 100})
    finally:
        proc.kill()
