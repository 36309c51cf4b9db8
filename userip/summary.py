"""The short text summary printed at the end of ``userip run``."""

from __future__ import annotations

import json
from pathlib import Path

from downstream.layout import ReportMetrics, RunLayout, VariantSummary
from downstream.table import Column, Table

_ROWS = tuple[str, str, VariantSummary]  # model, variant, its paper-protocol summary
METRICS = Table[_ROWS]((
    Column("model", lambda r: r[0]),
    Column("variant", lambda r: r[1]),
    Column("AUC", lambda r: f"{r[2].auc:.4f} ± {r[2].auc_std:.4f}"),
    Column("Logloss", lambda r: f"{r[2].logloss:.4f} ± {r[2].logloss_std:.4f}"),
    Column("UAUC", lambda r: f"{r[2].uauc:.4f}"),
    Column("R.I. AUC", lambda r: "—" if r[2].ri_auc is None else f"{r[2].ri_auc:+.2%}"),
    Column("p", lambda r: "—" if r[2].p_value is None else f"{r[2].p_value:.3f}"),
))
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
        lines += ["", *METRICS.render(_rows(ReportMetrics.read(Path(outputs["report"]))))]
        lines.append(f"report   {RunLayout(Path(outputs['report'])).report}")
    return "\n".join(lines)


def metric_rows(report: ReportMetrics) -> list[dict]:
    """One row per (model, variant) of the paper protocol, for the Prefect table artifact."""
    return [{"model": m, "variant": v, **s.model_dump(include=_ARTIFACT_KEYS)} for m, v, s in _rows(report)]


def _rows(report: ReportMetrics) -> list[_ROWS]:
    return [(m, v, s) for m, variants in sorted(report.models.items()) for v, s in sorted(variants.items())]
