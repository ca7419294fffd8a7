"""Run a Great Expectations suite over in-memory frames and fail loudly.

A gate validates each dataset with GX (file-backed context in the run folder, so the results also become
Data Docs HTML), writes a short text report, and raises `GateFailed` naming every failed expectation; the
Airflow task fails with it and nothing downstream runs.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pandas as pd

from expectations.suites import SUITES

log = logging.getLogger(__name__)


class GateFailed(RuntimeError):
    pass


def run_gate(name: str, frames: dict[str, pd.DataFrame], params: dict, out_dir: Path) -> dict:
    """Validate `frames` with suite `name`; returns a summary, raises GateFailed on any failure."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    context = _quiet_context(out_dir)
    source = context.data_sources.add_or_update_pandas(f"{name}_frames")
    summary: dict = {"gate": name, "success": True, "datasets": {}}
    failures: list[str] = []
    for dataset, expectations in SUITES[name](params).items():
        result = _validate(context, source, f"{name}.{dataset}", dataset, list(expectations), frames[dataset])
        failures += [f"{dataset}: {_describe(r)}" for vr in result.run_results.values() for r in vr.results
                     if not r.success]
        summary["datasets"][dataset] = {"rows": int(len(frames[dataset])), "success": bool(result.success)}
    docs = out_dir / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    summary.update(success=not failures, failures=failures, data_docs=str(docs))
    report = out_dir / f"{name}_report.txt"
    report.write_text(f"gate {name}: {'PASSED' if not failures else 'FAILED'}\n"
                      + "".join(f"  - {f}\n" for f in failures) + f"data docs: {docs}\n")
    log.info("gate %s: %s (data docs: %s)", name, "passed" if not failures else "FAILED", docs)
    if failures:
        raise GateFailed(f"gate {name!r} failed ({len(failures)} expectation(s)); report: {report}; data docs: {docs}\n"
                         + "\n".join(failures))
    return summary


def _quiet_context(out_dir: Path):
    """A file-backed GX context in the gate's folder (its Data Docs), without progress bars (its INFO chatter is
    quieted in expectations/__init__.py)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # pandas frames have no config variables to substitute: GX warns about its missing provider all the same
    warnings.filterwarnings("ignore", message="config variables .* need substitution")
    context = gx.get_context(mode="file", project_root_dir=str(out_dir))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _validate(context, source, name: str, dataset: str, expectations: list, frame: pd.DataFrame):
    import great_expectations as gx

    batch = source.add_dataframe_asset(dataset).add_batch_definition_whole_dataframe(f"{dataset}_all")
    suite = context.suites.add_or_update(gx.ExpectationSuite(name=name, expectations=expectations))
    validation = context.validation_definitions.add_or_update(gx.ValidationDefinition(name=name, data=batch, suite=suite))
    checkpoint = context.checkpoints.add_or_update(gx.Checkpoint(
        name=name, validation_definitions=[validation], actions=[gx.checkpoint.UpdateDataDocsAction(name="docs")]))
    return checkpoint.run(batch_parameters={"dataframe": frame})


def _describe(result) -> str:
    """A failed expectation: its notes (a sentence for people, where the suite has one), type, arguments, what it saw."""
    cfg = result.expectation_config
    detail = {k: v for k, v in (result.result or {}).items()
              if k in ("observed_value", "unexpected_count", "partial_unexpected_list")}
    notes = f"{cfg.notes} " if cfg.notes else ""
    return f"{notes}{cfg.type} {json.dumps(cfg.kwargs, default=str)} -> {json.dumps(detail, default=str)}"
