"""The short text summary printed at the end of ``userip run``."""

from __future__ import annotations

import json
from pathlib import Path


def summary_table(outputs: dict[str, str]) -> str:
    """Key figures of each stage that ran, read from the files the stages published."""
    lines: list[str] = []
    if "prepare" in outputs:
        s = json.loads((Path(outputs["prepare"]) / "stats.json").read_text())
        lines.append(
            f"data     {s['source']}: {s['users']} users, {s['items']} items, "
            f"{s['interactions']} interactions, positive rate {s['positive_rate']:.3f}"
        )
    report = Path(outputs.get("report", "")) / "metrics.json"
    if report.is_file():
        metrics = json.loads(report.read_text())
        lines.append(f"{'model':<12}{'variant':<16}{'AUC':>16}{'Logloss':>16}{'UAUC':>8}{'p':>8}")
        for row in metrics.get("rows", []):
            lines.append(
                f"{row['model']:<12}{row['variant']:<16}"
                f"{row['auc']:>9.4f}±{row['auc_std']:.4f}{row['logloss']:>9.4f}±{row['logloss_std']:.4f}"
                f"{row['uauc']:>8.4f}{_p(row.get('p_value')):>8}"
            )
    return "\n".join(lines)


def _p(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"
