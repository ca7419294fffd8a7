"""The benchmarks' time-to-quality curve, read back from a real MLflow run."""

import sys
from pathlib import Path

from mlflow import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from online_retail import validation_curve  # noqa: E402


def test_the_validation_curve_sums_epoch_seconds_up_to_each_epoch(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")  # no global tracking URI for other tests
    run_id = client.create_run(client.create_experiment("curve")).info.run_id
    for epoch, (seconds, ndcg) in enumerate([(30.0, 0.05), (28.5, 0.08), (31.0, 0.07)], 1):
        client.log_metric(run_id, "epoch_seconds", seconds, step=epoch)
        client.log_metric(run_id, "val_ndcg_10", ndcg, step=epoch)
    histories = [client.get_metric_history(run_id, key) for key in ("epoch_seconds", "val_ndcg_10")]
    assert validation_curve(*histories) == [{"epoch": 1, "train_seconds": 30.0, "val_ndcg_10": 0.05},
                                            {"epoch": 2, "train_seconds": 58.5, "val_ndcg_10": 0.08},
                                            {"epoch": 3, "train_seconds": 89.5, "val_ndcg_10": 0.07}]


def test_the_curve_adds_the_validations_seconds_where_they_were_logged(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run_id = client.create_run(client.create_experiment("curve")).info.run_id
    for epoch, (seconds, ndcg, validating) in enumerate([(30.0, 0.05, 5.0), (28.5, 0.08, 6.5)], 1):
        client.log_metric(run_id, "epoch_seconds", seconds, step=epoch)
        client.log_metric(run_id, "val_ndcg_10", ndcg, step=epoch)
        client.log_metric(run_id, "val_seconds", validating, step=epoch)
    histories = [client.get_metric_history(run_id, key) for key in ("epoch_seconds", "val_ndcg_10", "val_seconds")]
    assert [point["seconds_with_validation"] for point in validation_curve(*histories)] == [35.0, 70.0]
