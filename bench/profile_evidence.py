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
from pathlib import Path

import numpy as np
import torch

from userip.config import load_config
from userip.dataprep.behaviour import DISLIKED, LIKED
from userip.profile_infer.data import load_profile_data
from userip.profile_infer.evidence import derangement, gap, lm_evidence
from userip.profile_infer.layout import Profile
from userip.profile_infer.model_loading import load_frozen_lm
from userip.profile_infer.prompt import build_layout, pad_targets, target_nll
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
        words = {lm.tokenizer(f" {w}", add_special_tokens=False).input_ids[0] for w in (LIKED, DISLIKED)}
        rows = torch.as_tensor(data.evidence_rows)
        own = pub.theta[rows]
        other = own[torch.as_tensor(derangement(len(rows), cfg.seed))]
        mean = pub.theta.mean(0, keepdim=True).expand_as(own).contiguous()
        scores = [feedback_nll(lm, layout, t, data.evidence_targets, words) for t in (own, other, mean)]
        has = np.isfinite(scores[0])  # same targets, so the same users in all three
        ev["feedback"] = {**gap(scores[0][has], scores[1][has]), "n_users": int(has.sum()),
                          "mean_theta": float(scores[2][has].mean()),
                          "note": "NLL of the feedback word's first token only"}
    print(json.dumps({"profile": str(args.profile), "seconds": round(time.perf_counter() - t0), **ev}))


@torch.no_grad()
def feedback_nll(lm, layout, theta: torch.Tensor, targets: list[list[int]], words: set[int],
                 batch: int = 64) -> np.ndarray:
    """Mean NLL per user of the target tokens in ``words`` (users without one dropped)."""
    out = []
    for i in range(0, len(targets), batch):
        ids, real = pad_targets(targets[i: i + batch], lm.tokenizer.pad_token_id)
        mark = real & torch.isin(ids, torch.tensor(sorted(words)))
        nll, n = target_nll(lm.model, layout, theta[i: i + batch], ids, mark)
        out.append((nll / n.clamp(min=1)).masked_fill(n == 0, float("nan")).numpy())
    return np.concatenate(out)


if __name__ == "__main__":
    main()
