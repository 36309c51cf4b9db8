"""Time one profile-inference training step (Eq. 7, joint phase) on a frozen LM.

Prints JSON: users/s, target tokens/s, peak RSS, and CUDA peak memory on a GPU.
Usage: python bench/profile_step.py --data DIR [--model smollm2-135m] [--batch 16]
       [--target-tokens 48] [--steps 3] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch

from userip.config import ProfileConfig
from userip.profile_infer.data import load_profile_data
from userip.profile_infer.model_loading import load_frozen_lm
from userip.profile_infer.prompt import build_layout
from userip.profile_infer.train import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--target-tokens", type=int, default=48)
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    cfg = ProfileConfig(model=args.model, batch_size=args.batch,
                        max_target_tokens=args.target_tokens, device=args.device)
    lm = load_frozen_lm(cfg.model, cfg.device)
    layout = build_layout(lm.tokenizer, cfg.profiles, cfg.task)
    data = load_profile_data(args.data, lm.tokenizer, cfg.max_target_tokens)
    trainer = Trainer(cfg, lm.model, layout, data, lm.device, lm.tokenizer.pad_token_id,
                      "bench", Path("/nonexistent"))
    trainer.init_codebooks()
    batches = trainer.epoch_batches(0)
    trainer.train_step(batches[0], joint=True)  # warm-up (allocator, kernels)
    if lm.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    users = tokens = 0
    t0 = time.perf_counter()
    for b in batches[1: 1 + args.steps]:
        trainer.train_step(b, joint=True)
        users += len(b)
        tokens += sum(len(data.window(r, 0)) for r in b.tolist())
    if lm.device.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    out = {
        "model": cfg.model, "device": str(lm.device), "dtype": str(lm.dtype),
        "torch_threads": torch.get_num_threads(), "batch": args.batch,
        "prefix_tokens": layout.prefix_len, "max_target_tokens": args.target_tokens,
        "steps": args.steps, "seconds_per_step": round(secs / args.steps, 3),
        "users_per_s": round(users / secs, 2), "target_tokens_per_s": round(tokens / secs, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "machine": platform.machine(),
    }
    if lm.device.type == "cuda":
        out["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
