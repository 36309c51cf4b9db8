"""``userip report``: report.md, metrics.json and plots for a trained and evaluated run."""

from __future__ import annotations

import argparse
from pathlib import Path

from userip.config import Config, load_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="tables, plots and profile probe of a run", description=__doc__)
    p.add_argument("--config", type=Path, help="YAML config; its `downstream` section names the tables' models")
    p.add_argument("--run", dest="run_dir", type=Path, required=True, help="run dir of train/evaluate")
    p.add_argument("--data", type=Path, required=True, help="prepared data dir (users.parquet for the probe)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from userip.downstream.layout import ReportMetrics, RunLayout
    from userip.downstream.report import write_report

    cfg = load_config(args.config) if args.config else Config()
    write_report(args.run_dir, args.data, cfg.downstream)
    print(f"wrote {RunLayout(args.run_dir).report} and {ReportMetrics.path(args.run_dir)}")
    return 0
