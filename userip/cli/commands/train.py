"""``userip train``: fit the configured CTR models with and without profile codes.

Layout of the run dir: see the ``downstream`` package docstring."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from userip.config import Config, DownstreamConfig, load_config, validated


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train downstream CTR models with/without codes", description=__doc__)
    add_common(p)
    p.add_argument("--codes", type=Path, help="a quantizer output dir, or a quantize dir of them")
    p.add_argument("--models", nargs="+", help="override downstream.models")
    p.add_argument("--seeds", nargs="+", type=int, help="override downstream.seeds")
    p.add_argument("--workers", type=int, help="override downstream.workers")
    p.set_defaults(run=run)


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML config; its `downstream` section is used")
    p.add_argument("--data", type=Path, required=True, help="prepared data dir")
    p.add_argument("--bank", type=Path, help="feature bank dir (LATEST version)")
    p.add_argument("--out", "--run", dest="run_dir", type=Path, required=True, help="run dir")


def section_from(args: argparse.Namespace) -> DownstreamConfig:
    cfg = load_config(args.config) if args.config else Config()
    overrides = {k: getattr(args, k) for k in ("models", "seeds", "workers") if getattr(args, k, None)}
    return validated(DownstreamConfig, {**cfg.downstream.model_dump(), **overrides},
                     f"{args.config} with flags" if args.config else "flags")


def run(args: argparse.Namespace) -> int:
    from userip.downstream.suite import train_all

    records = train_all(section_from(args), args.data, args.run_dir, codes=args.codes, bank=args.bank)
    for r in records:
        print(json.dumps({k: getattr(r, k) for k in ("variant", "model", "seed", "best_epoch", "val_auc",
                                                      "train_seconds")}))
    print(f"trained {len(records)} models under {args.run_dir / 'downstream'}")
    return 0
