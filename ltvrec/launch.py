"""Launchers for the tools that run in processes of their own: torchrun (training) and spark-submit (Spark jobs).

Their output goes to the stage's log file (and to stdout as well when LTVREC_STREAM_LOGS=1, which `ltvrec run
--verbose` sets); a failure raises with the last lines of that log.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ltvrec.config import PROJECT_ROOT, mlflow_tracking_uri

TAIL_LINES = 30


def tool(name: str) -> str:
    """A console script of the running interpreter's environment (torchrun, spark-submit, ...)."""
    return str(Path(sys.executable).parent / name)


def run_logged(cmd: list[str], log_file: Path, env: dict[str, str] | None = None) -> None:
    """Run `cmd` from the project root with its output appended to `log_file`; raise with the tail on failure."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    stream = os.environ.get("LTVREC_STREAM_LOGS") == "1"
    tail: list[str] = []
    with open(log_file, "a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, cwd=PROJECT_ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for line in proc.stdout:
            log.write(line)
            tail = (tail + [line.rstrip()])[-TAIL_LINES:]
            if stream:
                sys.stdout.write(line)
        code = proc.wait()
    if code != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} exited with {code}; the last lines of {log_file}:\n" + "\n".join(tail))


def processes_per_node(configured: int) -> int:
    """torchrun's processes on this worker: LTVREC_TORCHRUN_NPROC when the worker sets it, else one per GPU it finds
    (unless LTVREC_TRAIN_DEVICE=cpu), else the run's `nproc` (gloo processes on CPU)."""
    if os.environ.get("LTVREC_TORCHRUN_NPROC"):
        return int(os.environ["LTVREC_TORCHRUN_NPROC"])
    if os.environ.get("LTVREC_TRAIN_DEVICE", "auto") == "cpu":
        return configured
    import torch

    return torch.cuda.device_count() or configured


def torchrun(config_file: Path, nproc: int, log_file: Path, nnodes: int = 1, rdzv_endpoint: str | None = None,
             rdzv_id: str = "ltvrec") -> None:
    """Train with `nproc` processes on this machine (DDP: gloo on CPU, NCCL on GPUs). With `nnodes` > 1 this is one
    of the agents that meet at the c10d rendezvous `rdzv_endpoint` (hosted by the agent on that host) under
    `rdzv_id`; the agents agree on the ranks, rank 0 writes the checkpoints and logs."""
    if nnodes > 1:
        placement = [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}",
                     f"--rdzv-id={rdzv_id}"]
    else:
        placement = ["--standalone"]
    cmd = [tool("torchrun"), *placement, f"--nproc-per-node={nproc}", "-m", "models.train", "--config", str(config_file)]
    threads = max(1, (os.cpu_count() or 1) // nproc)
    run_logged(cmd, log_file, {"MLFLOW_TRACKING_URI": mlflow_tracking_uri(), "OMP_NUM_THREADS": str(threads)})


# The JIT's first tier only (C1). A Spark SQL job of a few minutes spends much of its JVMs' CPU compiling code that
# then runs briefly; C1 compiles fast. jobs/features.py, measured (docs/benchmarks.md, "Spark features: C1 JIT"):
# 67 -> 39 s on the stack's standalone cluster for a small synthetic run, 137 -> 123 s for Online Retail II (local[2]:
# 44 -> 36 s and 98 -> 91 s). ALS keeps the full JIT: its numeric loops on Online Retail II took 74 -> 102 s with C1.
C1_JIT = "-XX:TieredStopAtLevel=1"


def spark_submit(job: str, args: list[str], master: str, log_file: Path, java_options: str = "") -> None:
    """spark-submit a job of jobs/ to `master`, with Spark's own logging at WARN (jobs/log4j2.properties) and
    `java_options` for the driver's and the executors' JVMs."""
    jvm = f"-Dlog4j2.configurationFile={PROJECT_ROOT / 'jobs' / 'log4j2.properties'} {java_options}".strip()
    cmd = [tool("spark-submit"), "--master", master, "--driver-memory", "2g", "--driver-java-options", jvm,
           "--conf", f"spark.executor.extraJavaOptions={jvm}", "--conf", "spark.sql.shuffle.partitions=8",
           "--conf", "spark.ui.enabled=false", str(PROJECT_ROOT / "jobs" / job), *args]
    run_logged(cmd, log_file, {"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable})
