"""``userip prepare``: raw dumps -> normalized Parquet data set."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, get_args

from userip.config import Config, PrepareConfig, Source, load_config, validated

# CLI flag -> PrepareConfig field; a flag given on the command line beats the config file.
_FLAGS = ("source", "reviews", "meta", "users", "business", "min_core", "label_threshold",
          "split", "seed", "max_reject_ratio", "max_users")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="normalize a review dump into the Parquet data set",
                       description=__doc__)
    p.add_argument("--config", type=Path, help="YAML config; its `prepare` section sets defaults")
    p.add_argument("--source", choices=get_args(Source))
    p.add_argument("--reviews", type=Path, help="reviews file (Amazon, Yelp), plain or .gz")
    p.add_argument("--meta", type=Path, help="item metadata file (Amazon)")
    p.add_argument("--users", type=Path, help="user file (Yelp)")
    p.add_argument("--business", type=Path, help="business file (Yelp)")
    p.add_argument("--out", type=Path,
                   help="output dir (default: the folder `userip run` uses for these settings, "
                        "<workdir>/prepare/<key>)")
    p.add_argument("--min-core", type=int)
    p.add_argument("--label-threshold", type=float)
    p.add_argument("--split", choices=("random", "temporal"))
    p.add_argument("--seed", type=int)
    p.add_argument("--max-reject-ratio", type=float)
    p.add_argument("--max-users", type=int)
    p.set_defaults(run=run)


def resolve(args: argparse.Namespace) -> tuple[PrepareConfig, Path]:
    """Config file (if any) overlaid with the flags given; returns the section and out dir."""
    cfg = load_config(args.config) if args.config else Config()
    overrides: dict[str, Any] = {f: getattr(args, f) for f in _FLAGS if getattr(args, f) is not None}
    section = validated(PrepareConfig, {**cfg.prepare.model_dump(), **overrides},
                        f"{args.config} with flags" if args.config else "flags")
    if args.out:
        return section, args.out
    from userip.flows.plan import resolve
    from userip.flows.userip_flow import PREPARE

    return section, resolve(cfg.model_copy(update={"prepare": section}), PREPARE, {})


def run(args: argparse.Namespace) -> int:
    from userip.dataprep.pipeline import prepare

    section, out = resolve(args)
    stats = prepare(section, out)
    shown = {k: v for k, v in stats.items() if k != "files"}
    print(json.dumps(shown, indent=2))
    print(f"wrote {out}")
    return 0
