"""``userip infer``: soft-prompt latent profiles on a frozen LM -> θ, codebooks, codes.

With ``profile.nproc`` > 1 the command re-launches itself under ``torchrun`` (one
process per user shard); running it under ``torchrun`` yourself works the same way.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from userip.atomic import check_output_dir
from userip.config import check_codebooks_fit, load_config


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
    cfg = load_config(args.config).profile
    # before any epoch: the data must hold enough users, --out must be ours to replace
    from userip.dataprep.layout import DataStats, data_users

    check_codebooks_fit(cfg, data_users(args.data), str(DataStats.path(args.data)))
    from userip.profile_infer.layout import STAGE

    check_output_dir(args.out, STAGE)
    if cfg.nproc > 1 and "WORLD_SIZE" not in os.environ:
        argv = ["--config", str(args.config), "--data", str(args.data), "--out", str(args.out)]
        if args.users:
            argv += ["--users", str(args.users)]
        if args.checkpoints:
            argv += ["--checkpoints", str(args.checkpoints)]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={cfg.nproc}", "-m", "userip.cli", "infer", *argv]
        return subprocess.run(cmd, check=False).returncode
    from userip.profile_infer import infer

    out = infer(cfg, args.data, args.out, users_file=args.users, ckpt_dir=args.checkpoints)
    if int(os.environ.get("RANK", "0")) == 0:
        print(out)
    return 0
