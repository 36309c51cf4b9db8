"""``userip run``: the whole ``userip`` Prefect flow, locally.

Without ``PREFECT_API_URL`` Prefect starts a temporary local server for the run; with it,
the run is recorded on that server like any deployment run.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import yaml

from userip.config import load_config
from userip.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the pipeline flow (all or some stages)",
                       description=__doc__)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--stages", nargs="+", help="only these stages (earlier outputs must exist)")
    p.add_argument("--from-stage", help="this stage and every one after it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set profile.max_epochs=1 (YAML value)")
    p.add_argument("--refresh", action="store_true", help="recompute even on cache hits")
    p.set_defaults(run=run)


def parse_overrides(pairs: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: invalid YAML value {value!r} ({exc.__class__.__name__})") from None
    return out


def run(args: argparse.Namespace) -> int:
    # The temporary server migrates a fresh database first; on a busy 2-core box that can
    # take longer than Prefect's default 20 s.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # offline hosts
    # Settings first: a bad one is one line now, not after a server start (30-60 s), and
    # before the flow's imports (Prefect, torch: seconds).
    overrides = parse_overrides(args.set)
    cfg = load_config(args.config, overrides)
    from userip.flows.plan import select
    from userip.flows.userip_flow import stage_table, userip

    select(stage_table(cfg), args.stages, args.from_stage)
    from userip.cli.summary import summary_table

    start = time.monotonic()
    outputs = userip(
        config=str(args.config), stages=args.stages, from_stage=args.from_stage,
        overrides=overrides, refresh=args.refresh,
    )
    print()
    print(summary_table(outputs))
    print(f"\nfinished in {time.monotonic() - start:.0f} s; outputs:")
    print(json.dumps(outputs, indent=2))
    return 0
