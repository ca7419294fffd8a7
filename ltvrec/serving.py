"""The serving tables' contract, and the scores files that fill them.

`SERVING_SCHEMAS` is the one definition of the serving tables' columns: the warehouse creates its tables from it
(ltvrec/warehouse.py) and the score stage writes its files with it. The scorer (models/score.py) gives user_id,
rank, item_id, score and user_id, p_active, expected_value; `ScoresWriter` adds what says which run and which model
produced each row.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ltvrec.rundir import SERVING_TABLES, write_json

SERVING_SCHEMAS = {
    "recommendations": pa.schema([
        ("run_date", pa.date32()), ("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()),
        ("score", pa.float64()), ("model_name", pa.string()), ("model_version", pa.string()),
        ("mlflow_run_id", pa.string()), ("generated_at", pa.timestamp("us"))]),
    "ltv_estimates": pa.schema([
        ("run_date", pa.date32()), ("user_id", pa.string()), ("horizon_days", pa.int32()),
        ("p_active", pa.float64()), ("expected_value", pa.float64()), ("model_version", pa.string()),
        ("mlflow_run_id", pa.string()), ("generated_at", pa.timestamp("us")), ("ltv_model", pa.string())]),
}
# what a serving table made by an older ltvrec lacks, with the value its existing rows get (ltvrec/warehouse.py)
ADDED_COLUMNS = {("ltv_estimates", "ltv_model"): "ziln"}
BATCH_ROWS = 100_000
# serving.model_performance's figures of each head (dbt_project/models/serving/model_performance.sql)
REALISED = {"recommendation": ("hit_rate_at_n", "ndcg_at_n", "revenue_at_n", "users_active", "window_complete"),
            "ltv": ("ltv_normalized_gini", "ltv_spend_ratio", "ltv_decile_mape", "ltv_customers")}


def run_metadata(run_date: str, model_name: str, versions: dict[str, str], mlflow_run_id: str,
                 horizon_days: int, ltv_model: str = "ziln") -> dict[str, dict[str, pa.Scalar]]:
    """By table, the columns that are the same on every row of a run's scores. `versions`: the model version
    behind each head ({"recommendation": ..., "ltv": ...}: the model gate decides them separately);
    `horizon_days`: the horizon the LTV head was trained for; `ltv_model`: the family of the expected values (the
    LTV backtest's choice, models/ltv_backtest.py)."""
    generated_at = datetime.now(timezone.utc).replace(tzinfo=None)
    common = {"run_date": pa.scalar(pd.Timestamp(run_date).date(), pa.date32()),
              "generated_at": pa.scalar(generated_at, pa.timestamp("us")), "model_name": pa.scalar(model_name),
              "mlflow_run_id": pa.scalar(mlflow_run_id), "horizon_days": pa.scalar(horizon_days, pa.int32())}
    return {"recommendations": common | {"model_version": pa.scalar(str(versions["recommendation"]))},
            "ltv_estimates": common | {"model_version": pa.scalar(str(versions["ltv"])),
                                       "ltv_model": pa.scalar(ltv_model)}}


def with_metadata(table: str, batch: pa.RecordBatch, meta: dict[str, dict[str, pa.Scalar]]) -> pa.RecordBatch:
    schema = SERVING_SCHEMAS[table]
    columns = [batch.column(f.name).cast(f.type) if f.name in batch.schema.names
               else pa.repeat(meta[table][f.name], batch.num_rows) for f in schema]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


class ScoresWriter:
    """Streams scorer batches into scores/<table>.parquet with the run's metadata; counts rows and users, and keeps
    `progress_file` (users scored of all) up to date for the CLI. `expected_values`: by user_id, the published
    family's estimates where it is not the network's ZILN head (they replace the scorer's expected_value; p_active
    stays the head's)."""

    def __init__(self, out_dir: Path, meta: dict[str, dict[str, pa.Scalar]], progress_file: Path | None = None,
                 expected_values: pd.Series | None = None):
        self.out_dir, self.meta, self.progress_file = Path(out_dir), meta, progress_file
        self.expected_values = expected_values
        self.rows = {table: 0 for table in SERVING_TABLES}
        self.users = 0

    def __enter__(self) -> "ScoresWriter":
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.writers = {t: pq.ParquetWriter(self.out_dir / f"{t}.parquet", SERVING_SCHEMAS[t]) for t in SERVING_TABLES}
        return self

    def __exit__(self, *exc) -> None:
        for writer in self.writers.values():
            writer.close()

    def write(self, table: str, batch: pa.RecordBatch) -> None:
        if table == "ltv_estimates" and self.expected_values is not None:
            batch = self._replace_expected_values(batch)
        self.writers[table].write_batch(with_metadata(table, batch, self.meta))
        self.rows[table] += batch.num_rows

    def write_local(self, features_dir: Path, checkpoint: Path, cfg) -> None:
        """Score on this machine (models/score.py: chunks of users, CPU threads or a GPU)."""
        from models.checkpoint import LoadedModel
        from models.data import FeatureSet
        from models.score import stream_scores

        fs = FeatureSet.load(features_dir)
        started = time.time()
        for recs, ltv in stream_scores(fs, LoadedModel.from_file(checkpoint), cfg.top_n, cfg.rank_by,
                                       cfg.score_chunk_users, max_per_category=cfg.max_per_category):
            self.write("recommendations", recs)
            self.write("ltv_estimates", ltv)
            self.users += len(set(recs.column("user_id").to_pylist()))  # a user's rows are in one batch
            self._progress(self.users, len(fs.users), started)

    def write_spark_output(self, spark_out: Path) -> None:
        """The Parquet folders jobs/score.py wrote, with the run's metadata added."""
        import pyarrow.dataset as pads

        users: set[str] = set()
        for table in SERVING_TABLES:
            for batch in pads.dataset(spark_out / table, format="parquet").to_batches(batch_size=BATCH_ROWS):
                self.write(table, batch)
                if table == "recommendations":
                    users.update(batch.column("user_id").to_pylist())
        self.users = len(users)

    def _replace_expected_values(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        users = batch.column("user_id").to_pandas()
        values = self.expected_values.reindex(users)
        if values.isna().any():
            missing = users[values.isna().to_numpy()].iloc[0]
            raise ValueError(f"the published LTV family ({self.meta['ltv_estimates']['ltv_model']}) has no estimate "
                             f"for customer {missing!r}, whom the scorer scored")
        column = batch.schema.get_field_index("expected_value")
        return batch.set_column(column, "expected_value", pa.array(values.to_numpy(dtype=float), pa.float64()))

    def _progress(self, done: int, total: int, started: float) -> None:
        if self.progress_file is not None:
            seconds = max(time.time() - started, 1e-9)
            write_json(self.progress_file, {"phase": "score", "done": done, "total": total, "per_s": done / seconds})


def spark_score_args(cfg, features_dir: Path, checkpoint: Path, out: Path) -> list[str]:
    """jobs/score.py's arguments for this run."""
    args = ["--features", str(features_dir), "--checkpoint", str(checkpoint), "--out", str(out),
            "--top-n", str(cfg.top_n), "--rank-by", cfg.rank_by, "--users-per-batch", "2048"]
    return args + (["--max-per-category", str(cfg.max_per_category)] if cfg.max_per_category else [])


def read_scores(scores_dir: Path) -> dict[str, pa.RecordBatchReader]:
    """The scores files as Arrow streams, for the warehouse's bulk load."""
    files = {t: pq.ParquetFile(Path(scores_dir) / f"{t}.parquet") for t in SERVING_TABLES}
    return {t: pa.RecordBatchReader.from_batches(f.schema_arrow, f.iter_batches(BATCH_ROWS)) for t, f in files.items()}


def realised_performance(wh, model_name: str, versions: dict[str, str]) -> dict[str, dict]:
    """{head: its version's latest realised figures in serving.model_performance, with the run date they are of};
    a head whose version has none yet is left out."""
    if not wh.table_exists("serving", "model_performance"):
        return {}
    found = {}
    for head, version in versions.items():
        measured = "users_active > 0" if head == "recommendation" else "ltv_customers > 0"
        sql = (f"select * from serving.model_performance where model_name = ? and model_version = ? and {measured} "
               "order by run_date desc limit 1").replace("?", wh.placeholder)
        rows = wh.query(sql, (model_name, version)).to_pylist()
        if rows:
            found[head] = {"version": version, "run_date": str(rows[0]["run_date"]),
                           **{key: rows[0][key] for key in REALISED[head]}}
    return found


def realised_ndcg_history(wh, model_name: str, version: str) -> list[float]:
    """A version's realised NDCG@N (serving.model_performance) on each run date whose outcome window is over, oldest
    first."""
    if not wh.table_exists("serving", "model_performance"):
        return []
    sql = ("select ndcg_at_n from serving.model_performance where model_name = ? and model_version = ? "
           "and window_complete and users_active > 0 order by run_date").replace("?", wh.placeholder)
    return [row["ndcg_at_n"] for row in wh.query(sql, (model_name, version)).to_pylist()]
