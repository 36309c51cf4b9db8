"""``userip quantize``: codes from θ by UserIP, k-means, agglomerative, or none (dense)."""

from __future__ import annotations

import argparse
from pathlib import Path

from userip.config import load_config


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("quantize", help="quantize inferred profiles (ablations)",
                              description=__doc__)
    p.add_argument("--config", required=True, type=Path, help="YAML config (quantize section)")
    p.add_argument("--profile", required=True, type=Path, help="dir published by `userip infer`")
    p.add_argument("--out", required=True, type=Path, help="dir to publish, one subdir per method")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from userip.quantize import quantize

    print(quantize(load_config(args.config).quantize, args.profile, args.out))
    return 0
