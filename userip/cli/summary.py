"""The short text summary printed at the end of ``userip run``."""

from __future__ import annotations

from pathlib import Path

from userip.dataprep.layout import DataStats
from userip.downstream.layout import ReportMetrics, RunLayout
from userip.downstream.report import SUMMARY, summary_rows


def summary_table(outputs: dict[str, str]) -> str:
    """Key figures of each stage that ran, read from the files the stages published."""
    lines: list[str] = []
    if "prepare" in outputs:
        s = DataStats.read(Path(outputs["prepare"]))
        lines.append(f"data     {s.source}: {s.users} users, {s.items} items, "
                     f"{s.interactions} interactions, positive rate {s.positive_rate:.3f}")
    if "bank" in outputs:
        lines.append(f"bank     {outputs['bank']}")
    if "report" in outputs and ReportMetrics.exists(Path(outputs["report"])):
        lines += ["", *SUMMARY.render(summary_rows(ReportMetrics.read(Path(outputs["report"]))))]
        lines.append(f"report   {RunLayout(Path(outputs['report'])).report}")
    return "\n".join(lines)
