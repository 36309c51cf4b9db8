"""``userip evaluate``: score every trained model of a run on the test split.

With ``--bank``, models trained on codes are scored against that bank (LATEST version)
after the compatibility check; otherwise against the codes they were trained on."""

from __future__ import annotations

import argparse
import json

from userip.cli.commands.train import add_common


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="test metrics of every trained model in a run", description=__doc__)
    add_common(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from userip.downstream.suite import evaluate_all

    for m in evaluate_all(args.run_dir, args.data, bank=args.bank):
        print(json.dumps({k: getattr(m, k) for k in ("variant", "model", "seed", "auc", "logloss", "uauc")}))
    return 0
