"""MLflow set-up shared by the stages and the trainer."""

from __future__ import annotations

from ltvrec.config import mlflow_artifact_root, mlflow_tracking_uri


def configure(experiment: str) -> str:
    """Point MLflow at the configured store; return the experiment id (created with a local artifact root)."""
    import mlflow

    mlflow.set_tracking_uri(mlflow_tracking_uri())
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
    else:
        location = mlflow_artifact_root() if mlflow_tracking_uri().startswith("sqlite:") else None
        experiment_id = mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id
