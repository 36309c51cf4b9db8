"""``userip infer``: soft-prompt latent profiles on a frozen LM -> θ, codebooks, codes."""

from __future__ import annotations

import argparse
from pathlib import Path

from userip.config import load_config


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("infer", help="infer latent user profiles (UserIP-Tuning)",
                              description=__doc__)
    p.add_argument("--config", required=True, type=Path, help="YAML config (profile section)")
    p.add_argument("--data", required=True, type=Path, help="data dir from `userip prepare`")
    p.add_argument("--out", required=True, type=Path, help="profile dir to publish")
    p.add_argument("--users", type=Path, default=None,
                   help="incremental mode: file of user ids to refresh (one per line, or "
                        "Parquet with user_id); LM, codebooks and surrogate stay frozen")
    p.add_argument("--checkpoints", type=Path, default=None,
                   help="checkpoint dir (default: <out>.ckpt); a rerun resumes from it")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from profile_infer import infer

    cfg = load_config(args.config).profile
    out = infer(cfg, args.data, args.out, users_file=args.users, ckpt_dir=args.checkpoints)
    print(out)
    return 0
