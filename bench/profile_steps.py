"""How the own- vs other-θ gap moves with the per-user steps, on a subset of users.

The real ``Trainer`` on a prepared data set: the shared start, then ``--epochs`` epochs of
per-user ℓ_llm steps (warm-up only: no codebooks, no surrogate), scoring after each epoch
listed in ``--report-at`` the validation LM loss and the gap (other users' θ: the config's
``evidence_draws`` seeded derangements) on the users' validation windows, over every
target token and on the feedback words alone. Prints one JSON line per report and a final
summary. The profile settings are the config's, with ``--set key=value`` overrides (YAML
values), e.g. the README's lr choice:
    python bench/profile_steps.py --config configs/demo.yaml --data runs/demo/prepare/<key> \\
        --users 150 --epochs 3 --set profile.shared_steps=30 --set profile.shared_lr=0.01 \\
        --set profile.lr=0.0005
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import polars as pl
import torch
import yaml

from userip.config import load_config
from userip.dataprep.layout import BEHAVIOUR
from userip.profile_infer.data import load_profile_data
from userip.profile_infer.evidence import feedback_words, lm_evidence
from userip.profile_infer.model_loading import load_frozen_lm
from userip.profile_infer.prompt import build_layout
from userip.profile_infer.train import Trainer


def subset_trainer(config: Path, data_dir: Path, users: int, sets: list[str]):
    """The real ``Trainer`` on the first ``users`` users (by user_idx) of a prepared data
    set, every one of them an evidence user; ``sets``: ``key=value`` config overrides
    (YAML values). Returns (overrides, profile config, frozen LM, data, trainer)."""
    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in sets)}
    cfg = load_config(config, overrides).profile
    lm = load_frozen_lm(cfg.model, "cpu")
    torch.set_grad_enabled(True)
    layout = build_layout(lm.tokenizer, cfg.profiles, cfg.task)
    ids = pl.read_parquet(data_dir / BEHAVIOUR).sort("user_idx")["user_id"].to_list()
    data = load_profile_data(data_dir, lm.tokenizer, cfg.max_target_tokens, set(ids[:users]),
                             None, cfg.seed, None)
    trainer = Trainer(cfg, lm.model, layout, data, lm.device, lm.tokenizer.pad_token_id,
                      "bench", Path("/nonexistent"))
    return overrides, cfg, lm, data, trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="a prepared data set folder")
    ap.add_argument("--users", type=int, default=150, help="the first N users by user_idx")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--report-at", type=int, nargs="*", help="epochs to score (default: the last)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    overrides, cfg, lm, data, trainer = subset_trainer(args.config, args.data, args.users, args.set)
    score = partial(trainer.score_targets, words=feedback_words(lm.tokenizer))
    t0 = time.perf_counter()
    if cfg.shared_steps:
        trainer.fit_shared_start()
    curve = [trainer.valid_loss()]
    report_at = set(args.report_at or [args.epochs])
    for epoch in range(args.epochs):
        trainer.progress.epoch = epoch  # each visit trains on the user's next window
        for batch in trainer.epoch_batches(epoch):
            trainer.train_step(batch, joint=False)
        curve.append(trainer.valid_loss())
        if epoch + 1 in report_at:  # no codebooks yet: the θ gap and the mean θ only
            ev = lm_evidence(score, trainer.full_theta(), data.evidence_rows,
                             data.evidence_targets, [], (), cfg.seed, cfg.evidence_draws)
            print(json.dumps({"epoch": epoch + 1, **ev}), flush=True)
    print(json.dumps({"users": len(data.user_ids), "overrides": overrides, "valid_curve": curve,
                      "seconds": round(time.perf_counter() - t0)}))


if __name__ == "__main__":
    main()
