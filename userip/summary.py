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
    if "bank" in outputs:
        lines.append(f"bank     {outputs['bank']}")
    report = Path(outputs.get("report", "")) / "metrics.json"
    if report.is_file():
        lines.append("")
        lines.append(f"{'model':<10}{'variant':<15}{'AUC':>17}{'Logloss':>17}{'UAUC':>8}{'R.I.AUC':>9}{'p':>7}")
        for r in metric_rows(json.loads(report.read_text())):
            lines.append(
                f"{r['model']:<10}{r['variant']:<15}{r['auc']:>9.4f}±{r['auc_std']:.4f}"
                f"{r['logloss']:>9.4f}±{r['logloss_std']:.4f}{r['uauc']:>8.4f}"
                f"{_num(r['ri_auc'], '{:+.2%}'):>9}{_num(r['p_value'], '{:.3f}'):>7}"
            )
        lines.append(f"report   {Path(outputs['report']) / 'report.md'}")
    return "\n".join(lines)


def metric_rows(metrics: dict) -> list[dict]:
    """One row per (model, variant) from a report's metrics.json, for tables and artifacts."""
    keys = ("auc", "auc_std", "logloss", "logloss_std", "uauc", "n_seeds", "p_value", "ri_auc")
    return [{"model": model, "variant": variant, **{k: summary.get(k) for k in keys}}
            for model, variants in sorted(metrics["models"].items())
            for variant, summary in sorted(variants.items())]


def _num(value: float | None, fmt: str) -> str:
    return "" if value is None else fmt.format(value)
