"""Own- vs other-θ evidence of a published profile on every validation user (or a subset).

The profile stage measures it on ``evidence_max_users`` users to fit its time budget; this
re-scores a finished profile on as many as you like. Prints JSON (the ``evidence`` format of
meta.json plus the seconds it took).
Its ``feedback`` part scores the feedback words alone, as the stage does: where the
whole-text gap is lost in the noise of titles, it shows whether θ carries the user's likes,
and whether the LM has learned the format at all (a feedback NLL far above ln 2 means not).
Usage: python bench/profile_evidence.py --config configs/demo.yaml --profile runs/demo/infer/<key>
       [--users N] [--draws K]
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

from userip.config import load_config
from userip.profile_infer.data import load_profile_data
from userip.profile_infer.evidence import feedback_words, lm_evidence
from userip.profile_infer.layout import Profile
from userip.profile_infer.model_loading import load_frozen_lm
from userip.profile_infer.prompt import build_layout
from userip.profile_infer.train import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--profile", type=Path, required=True)
    ap.add_argument("--users", type=int, default=None, help="seeded subset (default: all)")
    ap.add_argument("--draws", type=int, default=None,
                    help="other-user draws averaged per user (default: the config's evidence_draws)")
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
    score = partial(trainer.score_targets, words=feedback_words(lm.tokenizer))
    ev = lm_evidence(score, pub.theta, data.evidence_rows, data.evidence_targets,
                     pub.codebooks, layout.profile_slices, cfg.seed, args.draws or cfg.evidence_draws)
    print(json.dumps({"profile": str(args.profile), "seconds": round(time.perf_counter() - t0), **ev}))


if __name__ == "__main__":
    main()
