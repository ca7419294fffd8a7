"""Run a Great Expectations suite over in-memory frames and fail loudly.

A gate validates each dataset with GX (file-backed context in the run folder, so the results also become
Data Docs HTML), writes a short text report, and raises `GateFailed` naming every failed expectation; the
Airflow task fails with it and nothing downstream runs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from expectations.suites import SUITES

log = logging.getLogger(__name__)


class GateFailed(RuntimeError):
    pass


def scores_frames(recs: pd.DataFrame, ltv: pd.DataFrame, seen: pd.DataFrame, catalogue: pd.Series,
                  users: pd.Series, top_n: int) -> tuple[dict[str, pd.DataFrame], dict]:
    """The scores suite's frames and params. `seen`: (user_id, item_id) pairs the users already had; `catalogue`:
    this run's item ids; `users`: every user with events (each must get min(top_n, unseen items) rows)."""
    recs = recs.merge(seen.drop_duplicates().assign(seen_before=True), on=["user_id", "item_id"], how="left")
    recs["seen_before"] = recs["seen_before"].fillna(False).astype(bool)
    recs["in_catalogue"] = recs["item_id"].isin(set(catalogue))
    recs["score_is_finite"] = np.isfinite(recs["score"].to_numpy(dtype=float))
    known = seen[seen["item_id"].isin(set(catalogue))].drop_duplicates()
    unseen = len(set(catalogue)) - known.groupby("user_id").size().reindex(users, fill_value=0).to_numpy()
    per_user = pd.DataFrame({"user_id": users.to_numpy(),
                             "rows": recs.groupby("user_id").size().reindex(users, fill_value=0).to_numpy(),
                             "expected_rows": np.clip(np.minimum(top_n, unseen), 0, None)})
    ltv = ltv.assign(expected_value_is_finite=np.isfinite(ltv["expected_value"].to_numpy(dtype=float)))
    frames = {"recommendations": recs, "recommendations_per_user": per_user, "ltv_estimates": ltv}
    return frames, {"top_n": top_n, "users_with_unseen_items": int((per_user["expected_rows"] > 0).sum())}


def run_gate(name: str, frames: dict[str, pd.DataFrame], params: dict, out_dir: Path) -> dict:
    """Validate `frames` with suite `name`; returns a summary, raises GateFailed on any failure."""
    import great_expectations as gx

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", project_root_dir=str(out_dir))
    source = context.data_sources.add_or_update_pandas(f"{name}_frames")
    summary: dict = {"gate": name, "success": True, "datasets": {}}
    failures: list[str] = []
    for dataset, expectations in SUITES[name](params).items():
        frame = frames[dataset]
        asset = source.add_dataframe_asset(dataset)
        batch = asset.add_batch_definition_whole_dataframe(f"{dataset}_all")
        suite = context.suites.add_or_update(gx.ExpectationSuite(name=f"{name}.{dataset}", expectations=list(expectations)))
        validation = context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=f"{name}.{dataset}", data=batch, suite=suite)
        )
        checkpoint = context.checkpoints.add_or_update(
            gx.Checkpoint(name=f"{name}.{dataset}", validation_definitions=[validation],
                          actions=[gx.checkpoint.UpdateDataDocsAction(name="docs")])
        )
        result = checkpoint.run(batch_parameters={"dataframe": frame})
        for vr in result.run_results.values():
            for r in vr.results:
                if not r.success:
                    cfg = r.expectation_config
                    detail = {k: v for k, v in (r.result or {}).items() if k in ("observed_value", "unexpected_count", "partial_unexpected_list")}
                    failures.append(f"{dataset}: {cfg.type} {json.dumps(cfg.kwargs, default=str)} -> {json.dumps(detail, default=str)}")
        summary["datasets"][dataset] = {"rows": int(len(frame)), "success": bool(result.success)}
    docs = out_dir / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    summary.update(success=not failures, failures=failures, data_docs=str(docs))
    report = out_dir / f"{name}_report.txt"
    report.write_text(
        f"gate {name}: {'PASSED' if not failures else 'FAILED'}\n" + "".join(f"  - {f}\n" for f in failures)
        + f"data docs: {docs}\n"
    )
    log.info("gate %s: %s (data docs: %s)", name, "passed" if not failures else "FAILED", docs)
    if failures:
        raise GateFailed(f"gate {name!r} failed ({len(failures)} expectation(s)); report: {report}; data docs: {docs}\n"
                         + "\n".join(failures))
    return summary
