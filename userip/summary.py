"""The short text summary printed at the end of ``userip run``."""

from __future__ import annotations

import json
from pathlib import Path

from downstream.layout import ReportMetrics, RunLayout
from downstream.report import SUMMARY, summary_rows

_ARTIFACT_KEYS = {"auc", "auc_std", "logloss", "logloss_std", "uauc", "n_seeds", "p_value", "ri_auc"}


def summary_table(outputs: dict[str, str]) -> str:
    """Key figures of each stage that ran, read from the files the stages published."""
    lines: list[str] = []
    if "prepare" in outputs:
        s = json.loads((Path(outputs["prepare"]) / "stats.json").read_text())
        lines.append(
            f"data     {s['source']}: {s['users']} users, {s['items']} items, "
            f"{s['interactions']} interactions, positive rate {s['positive_rate']:.3f}"
        )
    if "bank" in outputs:
        lines.append(f"bank     {outputs['bank']}")
    if "report" in outputs and ReportMetrics.exists(Path(outputs["report"])):
        lines += ["", *SUMMARY.render(summary_rows(ReportMetrics.read(Path(outputs["report"]))))]
        lines.append(f"report   {RunLayout(Path(outputs['report'])).report}")
    return "\n".join(lines)


def metric_rows(report: ReportMetrics) -> list[dict]:
    """One row per (model, variant) of the paper protocol, for the Prefect table artifact."""
    return [{"model": m, "variant": v, **s.model_dump(include=_ARTIFACT_KEYS)} for m, v, s in summary_rows(report)]
