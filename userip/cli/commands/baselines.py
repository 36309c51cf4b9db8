"""``userip baselines``: the LLM recommenders the papers compare with (TALLRec, CoLLM, KAR),
each on its own protocol (KAR: the project's split) and embedded data, and a table of our AUCs beside the published ones.

Outputs go to ``<workdir>/baselines`` (layout: ``userip.baselines.suite``); a method whose
settings have not changed since its last finished run is reused, not recomputed."""

from __future__ import annotations

import argparse
from pathlib import Path

from userip.config import load_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("baselines", help="run the LLM baselines' presets and tabulate them",
                       description=__doc__)
    p.add_argument("--config", type=Path, required=True,
                   help="YAML config: `workdir` and the `baselines` section (configs/baselines-cpu.yaml)")
    p.add_argument("--only", help="comma-separated methods (tallrec,collm,kar); default: all")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from userip.baselines.config import BaselinesRunConfig
    from userip.baselines.suite import RESULTS_STAGE, folders, parse_only, run_all

    cfg = load_config(args.config, model=BaselinesRunConfig)
    assert isinstance(cfg, BaselinesRunConfig)
    methods = parse_only(args.only)
    root = cfg.stage_dir("baselines")
    record = run_all(cfg.baselines, root, methods)
    results = folders(root)["results"][0]
    print((results / "results.md").read_text(), end="")
    print(f"wrote {results} ({RESULTS_STAGE}: results.json, results.md) for {', '.join(record['methods'])}")
    return 0
