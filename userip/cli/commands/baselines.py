"""``userip baselines``: the LLM recommenders the papers compare with (TALLRec, CoLLM, KAR):
TALLRec and CoLLM on their own protocols and embedded data, and with ``--data`` every method
(KAR only there) on the project's own prepared split and its new-users protocol beside DCN
(``--run``); tables of our AUCs beside the published ones.

Outputs go to ``<workdir>/baselines`` (layout: ``userip.baselines.suite``); a method whose
settings have not changed since its last finished run is reused, not recomputed, and every
finished method is in the tables, asked for or not."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from userip.cli.commands.run import parse_overrides
from userip.config import load_config
from userip.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("baselines", help="run the LLM baselines' presets and tabulate them",
                       description=__doc__)
    p.add_argument("--config", type=Path, required=True,
                   help="YAML config: `workdir` and the `baselines` section (configs/baselines-cpu.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set baselines.tallrec.shots=16 (YAML value)")
    p.add_argument("--only", help="comma-separated methods (tallrec,collm,kar; kar needs --data); "
                                   "default: all that the protocols given can run")
    p.add_argument("--protocols", help="own (each method's authors'), ours (--data's split), or both (default); "
                                        "finished runs of the other are still tabulated")
    p.add_argument("--data", type=Path,
                   help="a prepared data dir (`userip prepare`'s output): also run every method on it")
    p.add_argument("--run", type=Path, dest="run_dir",
                   help="with --data: a finished `userip run` downstream folder (its report's metrics.json "
                        "gives the DCN rows, its held_out.json the new users)")
    p.add_argument("--serving", type=Path, help="with --data: the JSON `bench/serve.py --baselines` printed")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from userip.baselines.config import BaselinesConfig
    from userip.baselines.suite import RESULTS_STAGE, folders, our_split, parse_only, parse_protocols, run_all

    cfg = load_config(args.config, parse_overrides(args.set))
    protocols = parse_protocols(args.protocols)
    if (args.run_dir or args.serving) and not args.data:
        raise ConfigError("--run and --serving go with --data (the prepared split they describe)")
    methods = parse_only(args.only, on_ours=bool(args.data) and "ours" in protocols)
    ours = (our_split(args.data, args.run_dir, cfg.downstream.new_user_share, cfg.downstream.new_user_seed)
            if args.data else None)
    serving = json.loads(args.serving.read_text()) if args.serving else None
    root = cfg.stage_dir("baselines")
    record = run_all(cfg.baselines or BaselinesConfig(), root, methods, ours, serving=serving, protocols=protocols)
    results = folders(root)["results"][0]
    print((results / "results.md").read_text(), end="")
    done = [*record["methods"], *(f"{m} (our split)" for m in (record["same_data"] or {}).get("methods", {}))]
    print(f"wrote {results} ({RESULTS_STAGE}: results.json, results.md) for {', '.join(done) or 'none'}")
    return 0
