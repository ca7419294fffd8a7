"""Run a Great Expectations suite over in-memory frames and fail loudly.

A gate validates each dataset with GX (file-backed context in the run folder, so the results also become
Data Docs HTML), writes a short text report, and raises `GateFailed` naming every failed expectation; the
Airflow task fails with it and nothing downstream runs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from expectations.suites import SUITES

log = logging.getLogger(__name__)


class GateFailed(RuntimeError):
    pass


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
