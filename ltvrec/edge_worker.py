"""`python -m ltvrec.edge_worker --queues Q ...`: Airflow's `airflow edge worker`, with the stages' libraries imported
once, before the worker forks a process per task.

An Edge worker forks every task from itself (Airflow's default, `execute_tasks_new_python_interpreter = False`), so
a library the worker already imported costs the task nothing: Great Expectations alone takes 5-12 s to import, and
every ltvrec task imports MLflow, most import torch, dbt or PyMC. This is Celery's `--preload` idea for the Edge worker.
None of these imports starts a thread, opens a connection or touches CUDA, so the forks are safe.

The price is the same as Celery's: a worker runs the code it imported at its start, so restart the workers
(`ltvrec stack down`, `ltvrec stack up`) after changing the stages. LTVREC_WORKER_PRELOAD=0 turns it off.
"""

from __future__ import annotations

import importlib
import os
import sys

PRELOAD = ("ltvrec.stages", "ltvrec.cleaning", "expectations.gate", "mlflow", "dbt.cli.main", "dbt.adapters.postgres",
           "dbt.adapters.duckdb", "cosmos.operators.local", "openlineage.common.provider.dbt.local", "torch",
           "models.report", "models.score", "pyspark.sql")
# A worker serving only queue gpu runs `train` (torchrun, a process of its own) and, when chosen, `score`
GPU_PRELOAD = ("ltvrec.stages", "mlflow", "torch", "models.score")


def preload(queues: set[str]) -> None:
    if queues == {"gpu"}:
        for module in GPU_PRELOAD:
            importlib.import_module(module)
        return
    for module in PRELOAD:
        importlib.import_module(module)
    from models.btyd import import_clv

    import_clv()  # PyMC-Marketing, imported after the PyTensor flags ltvrec sets


def main() -> None:
    args = sys.argv[1:]
    if os.environ.get("LTVREC_WORKER_PRELOAD", "1") != "0":
        queues = args[args.index("--queues") + 1] if "--queues" in args else "default"
        preload(set(queues.split(",")))
    from airflow.__main__ import main as airflow_main

    sys.argv = ["airflow", "edge", "worker", *args]
    airflow_main()


if __name__ == "__main__":
    main()
