"""``userip export``: publish quantized codes as a new feature-bank version."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from userip.config import Config, load_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="publish codes as a versioned feature bank",
                       description=__doc__)
    p.add_argument("--config", type=Path, help="YAML config; its `bank` section sets defaults")
    p.add_argument("--codes", type=Path, required=True,
                   help="quantizer output dir holding codes.parquet + meta.json")
    p.add_argument("--bank", type=Path,
                   help="bank dir (default: the config's bank, where `userip run` publishes)")
    p.add_argument("--codebook", type=Path,
                   help="codebooks.safetensors whose sha256 pins code meanings "
                        "(default: <codes>/codebooks.safetensors if present)")
    p.add_argument("--lm-id", help="id of the LM the profiles came from")
    p.add_argument("--data", type=Path, help="data dir; its interactions.parquet is fingerprinted")
    p.add_argument("--keep", type=int, help="versions to keep (default: bank.keep_versions)")
    p.add_argument("--lm-dim", type=int, default=576,
                   help="LM hidden size for the memory comparison (576 SmolLM2, 4096 Llama-3-8B)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from userip.feature_bank import memory_report, publish
    from userip.fingerprint import hash_paths

    cfg = load_config(args.config) if args.config else Config()
    from userip.dataprep.layout import INTERACTIONS

    fingerprint = hash_paths([args.data / INTERACTIONS]) if args.data else None
    path = publish(args.codes, args.bank or cfg.bank_dir(), args.keep or cfg.bank.keep_versions,
                   codebook=args.codebook, lm_id=args.lm_id, data_fingerprint=fingerprint,
                   grace_seconds=cfg.bank.grace_seconds)
    print(json.dumps(memory_report(path.parent, path.name, lm_dim=args.lm_dim), indent=2))
    print(f"published {path}")
    return 0
