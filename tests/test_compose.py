"""docker-compose.yml describes the same topology as `ltvrec stack up`: the Spark image is the pyspark pin's version,
the executor is the stack's, and a worker serves each queue the DAG routes to."""

import re
from pathlib import Path

import yaml

from ltvrec.stack import EDGE_EXECUTOR, QUEUES

ROOT = Path(__file__).resolve().parents[1]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_the_spark_image_matches_the_pyspark_pin():
    pin = re.search(r"^pyspark==(\S+)$", (ROOT / "requirements" / "lock.txt").read_text(), re.M).group(1)
    services = compose()["services"]
    for name in ("spark-master", "spark-worker"):
        image = re.fullmatch(r"\$\{SPARK_IMAGE:-(.+)\}", services[name]["image"]).group(1)
        assert image == f"apache/spark:{pin}", (name, image, pin)


def test_the_compose_file_uses_the_stacks_executor_and_serves_every_queue():
    services = compose()["services"]
    airflow = {name: s for name, s in services.items() if name.startswith("airflow")}
    assert {s["environment"]["AIRFLOW__CORE__EXECUTOR"] for s in airflow.values()} == {EDGE_EXECUTOR}
    workers = [s for s in airflow.values() if "--queues" in s["command"]]
    assert all(s["command"][:3] == ["python", "-m", "ltvrec.edge_worker"] for s in workers)  # as the stack's
    served = {s["command"][s["command"].index("--queues") + 1] for s in workers}
    assert served == set(QUEUES)
    gpu = next(s for s in workers if "gpu" in s["command"])
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert "trainer" not in services  # the idle container no task reached is gone
    assert "--serve-artifacts" in services["mlflow"]["command"]
