"""Own- vs other-θ evidence of a published profile on every validation user (or a subset).

The profile stage measures it on ``evidence_max_users`` users to fit its time budget; this
re-scores a finished profile on as many as you like. Prints JSON (the ``evidence`` format of
meta.json plus the seconds it took).
With ``--feedback`` it also scores the feedback words alone (the first token of " liked" /
" disliked" in the valid texts): where the whole-text gap is lost in the noise of titles,
this shows whether θ carries the user's likes, and whether the LM has learned the format
at all (a feedback NLL far above ln 2 means it has not).
Usage: python bench/profile_evidence.py --config configs/demo.yaml --profile runs/demo/infer/<key>
       [--users N] [--feedback]
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import torch

from userip.config import load_config
from userip.dataprep.behaviour import DISLIKED, LIKED
from userip.profile_infer.data import load_profile_data
from userip.profile_infer.evidence import lm_evidence
from userip.profile_infer.layout import Profile
from userip.profile_infer.model_loading import load_frozen_lm
from userip.profile_infer.prompt import build_layout
from userip.profile_infer.train import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--profile", type=Path, required=True)
    ap.add_argument("--users", type=int, default=None, help="seeded subset (default: all)")
    ap.add_argument("--feedback", action="store_true", help="also the feedback-word gap")
    args = ap.parse_args()
    cfg = load_config(args.config).profile
    pub = Profile.read(args.profile)
    lm = load_frozen_lm(cfg.model, "cpu")
    layout = build_layout(lm.tokenizer, cfg.profiles, cfg.task)
    data = load_profile_data(Path(pub.meta.data_dir), lm.tokenizer, cfg.max_target_tokens,
                             valid_max_users=cfg.valid_max_users, seed=cfg.seed,
                             evidence_max_users=args.users)
    if data.user_ids != pub.user_ids:
        raise SystemExit(f"{args.profile}: its users differ from its data set's")
    trainer = Trainer(cfg, lm.model, layout, data, lm.device, lm.tokenizer.pad_token_id,
                      "bench", Path("/nonexistent"))
    t0 = time.perf_counter()
    ev = lm_evidence(trainer.per_user_nll, pub.theta, data.evidence_rows,
                     data.evidence_targets, pub.codebooks, layout.profile_slices, cfg.seed)
    if args.feedback:
        words = torch.tensor(sorted({lm.tokenizer(f" {w}", add_special_tokens=False).input_ids[0]
                                     for w in (LIKED, DISLIKED)}))
        has = [i for i, t in enumerate(data.evidence_targets) if torch.isin(torch.tensor(t), words).any()]
        ev["feedback"] = lm_evidence(partial(trainer.per_user_nll, only=words), pub.theta,
                                     data.evidence_rows[has], [data.evidence_targets[i] for i in has],
                                     [], (), cfg.seed)
        ev["feedback"]["note"] = "NLL of the feedback word's first token only; users with one"
    print(json.dumps({"profile": str(args.profile), "seconds": round(time.perf_counter() - t0), **ev}))


if __name__ == "__main__":
    main()
