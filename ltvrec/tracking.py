"""MLflow for the pipeline: the experiment, one MLflow run per DAG run (named `<source>-<run date>`), and the
registry's `@champion`. The trainer logs its own curves and model into the same run (models/train.py)."""

from __future__ import annotations

import logging
from pathlib import Path

from ltvrec.config import RunConfig, mlflow_artifact_root, mlflow_tracking_uri, redact_url

log = logging.getLogger("ltvrec")
# MLflow 3's UI opens an experiment in its GenAI view unless it is marked as (classic) model development
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def configure(experiment: str) -> str:
    """Point MLflow at the configured store; return the experiment id (created where missing)."""
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(mlflow_tracking_uri())
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
        for key, value in EXPERIMENT_TAGS.items():
            if found.tags.get(key) != value:
                mlflow.MlflowClient().set_experiment_tag(experiment_id, key, value)
    else:
        location = mlflow_artifact_root() if mlflow_tracking_uri().startswith("sqlite:") else None
        experiment_id = mlflow.create_experiment(experiment, artifact_location=location, tags=EXPERIMENT_TAGS)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def run_name(source: str, run_date: str | None) -> str:
    return f"{source}-{run_date}" if run_date else source


def start_run(cfg: RunConfig, run, airflow_run_id: str, dag_id: str) -> None:
    """The DAG run's MLflow run, with the resolved config as params; its id is kept in the run folder."""
    import mlflow

    experiment_id = configure(cfg.experiment)
    tags = {"airflow_run_id": airflow_run_id, "airflow_dag_id": dag_id, "source": cfg.source}
    with mlflow.start_run(run_name=run_name(cfg.source, cfg.run_date or cfg.as_of), tags=tags) as started:
        logged = cfg.to_dict() | {"warehouse_url": redact_url(cfg.warehouse_url)}
        mlflow.log_params({f"cfg_{k}": v for k, v in logged.items()})
    run.save_mlflow_run(started.info.run_id, experiment_id)


def name_run(cfg: RunConfig, run_id: str, run_date: str) -> None:
    """Name the run after its source and run date, once the features job has settled the date."""
    from mlflow import MlflowClient

    configure(cfg.experiment)
    MlflowClient().update_run(run_id, name=run_name(cfg.source, run_date))


def log_evaluation(cfg: RunConfig, run_id: str, metrics: dict[str, float], folder: Path) -> None:
    import math

    import mlflow

    configure(cfg.experiment)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({k: v for k, v in metrics.items() if v is not None and math.isfinite(v)})
        mlflow.log_artifacts(str(folder), artifact_path=folder.name)


def log_metrics_tags(cfg: RunConfig, run_id: str, metrics: dict[str, float], tags: dict[str, str]) -> None:
    """Metrics and tags on the run (both may be logged again by a retried task)."""
    import math

    import mlflow

    configure(cfg.experiment)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)})
        mlflow.set_tags(tags)


def log_artifact(cfg: RunConfig, run_id: str, path: Path) -> None:
    import mlflow

    configure(cfg.experiment)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_artifact(str(path))


def set_run_tags(cfg: RunConfig, run_id: str, tags: dict[str, str]) -> None:
    from mlflow import MlflowClient

    configure(cfg.experiment)
    for key, value in tags.items():
        MlflowClient().set_tag(run_id, key, value)


# the registry alias of each head's champion: the model gate decides the heads separately (ltvrec/promotion.py)
ALIASES = {"recommendation": "champion", "ltv": "ltv_champion"}


def champion_versions(cfg: RunConfig) -> dict[str, str]:
    """{head: version} of the registered model's champions; {} before the first promotion. A registry from before
    per-head decisions has no @ltv_champion: its @champion then serves both heads."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    configure(cfg.experiment)
    found = {}
    for head, alias in ALIASES.items():
        try:
            found[head] = str(MlflowClient().get_model_version_by_alias(cfg.registered_model, alias).version)
        except MlflowException:
            pass
    if "recommendation" in found and "ltv" not in found:
        found["ltv"] = found["recommendation"]
    return found


def champion_version(cfg: RunConfig) -> str | None:
    """The version that holds `@champion` (the recommender's), or None before the first promotion."""
    return champion_versions(cfg).get("recommendation")


def model_checkpoint(cfg: RunConfig, version: str) -> Path:
    """The local checkpoint file of one version of the registered model."""
    from models.checkpoint import registry_checkpoint

    return registry_checkpoint(f"models:/{cfg.registered_model}/{version}")


