"""Publish a profile directory: θ, codebooks, codes, curves, explanation, meta.

Everything is written into a temp dir beside the destination and renamed into place,
so a reader never sees a half-written profile.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from safetensors.torch import save_file

from userip.atomic import publish_dir, staging_dir
from userip.config import ProfileConfig
from userip.profile_infer.describe import TYPICAL_ITEM_MIN_USER_SHARE, describe_codes
from userip.profile_infer.layout import (
    CODEBOOKS,
    CODES,
    CURVE_FIELDS,
    CURVES,
    EXPLANATION,
    STAGE,
    SURROGATE,
    SURROGATE_ITEMS,
    THETA,
    ProfileMeta,
)


def nearest_tokens(vectors: torch.Tensor, embeddings: torch.Tensor, tokenizer,
                   top: int = 5) -> list[list[list[dict[str, Any]]]]:
    """For each (n_tokens, d) vector group: the vocabulary tokens nearest by cosine.

    Both sides are centred on the mean embedding first: θ starts at that mean, and raw
    cosine then ranks the same few "hub" tokens first for every vector.
    """
    emb = embeddings.detach().float().cpu()
    centre = emb.mean(0)
    emb = torch.nn.functional.normalize(emb - centre, dim=1)
    out = []
    for group in vectors:
        per_slot = []
        for v in group:
            sims = emb @ torch.nn.functional.normalize(v.float() - centre, dim=0)
            best = sims.topk(top)
            per_slot.append([{"token": tokenizer.decode([int(i)]), "cosine": round(float(s), 4)}
                             for s, i in zip(best.values, best.indices)])
        out.append(per_slot)
    return out


def explanation(cfg: ProfileConfig, codebooks, theta, user_ids, codes: pl.DataFrame,
                embeddings, tokenizer, dim: int, data_dir: Path) -> dict:
    """Per code: the paper's nearest words (Table 7) and a description from the data.

    Nearest tokens are the paper's method but read as noise after short training runs;
    the description (``describe``) says who holds the code and what they interact with.
    """
    result: dict = {
        "method": {
            "nearest_tokens": "the paper's method (Table 7): vocabulary tokens nearest to the "
                              "centroid by cosine to the LM input embeddings, centred on their "
                              "mean; noisy unless θ is well trained",
            "description": "from the train split: users holding the code; item categories and "
                           "items over-represented among their train interactions (lift = "
                           "share in the code / share over all profiled users, count >= "
                           f"{cfg.explain_min_support}; typical items also seen by >= "
                           f"{TYPICAL_ITEM_MIN_USER_SHARE:.0%} of the code's users); "
                           "users.parquet attributes: lifts of categorical values, medians "
                           "of numeric ones"},
        "profiles": {},
        "users": []}
    described = describe_codes(codes, [p.name for p in cfg.profiles], data_dir,
                               cfg.explain_min_support)
    for spec, cb in zip(cfg.profiles, codebooks):
        groups = cb.detach().float().cpu().reshape(spec.codebook_size, spec.n_tokens, dim)
        near = nearest_tokens(groups, embeddings, tokenizer)
        desc = described[spec.name]
        result["profiles"][spec.name] = [
            {"code": k, "users": desc[k]["users"] if k in desc else 0,
             "summary": desc[k]["summary"] if k in desc else "no user holds this code",
             "nearest_tokens": near[k],
             "description": {f: v for f, v in desc[k].items() if f != "summary"}
             if k in desc else None}
            for k in range(spec.codebook_size)]
    rng = np.random.default_rng(cfg.seed)
    picks = rng.choice(len(user_ids), size=min(cfg.explain_users, len(user_ids)), replace=False)
    for r in sorted(picks.tolist()):
        entry = {"user_id": user_ids[r], "profiles": {}}
        start = 0
        for spec in cfg.profiles:
            slot = theta[r, start: start + spec.n_tokens]
            start += spec.n_tokens
            entry["profiles"][spec.name] = {
                "code": int(codes[spec.name][r]),
                "nearest_tokens": nearest_tokens(slot[None], embeddings, tokenizer)[0]}
        result["users"].append(entry)
    return result


def publish(out_dir: Path, *, theta: torch.Tensor, user_ids: list[str], codebooks,
            surrogate_state: dict, item_ids: list[str], codes: pl.DataFrame, curves: list[dict],
            explain: dict, meta: ProfileMeta) -> Path:
    """Write all outputs to a temp dir beside ``out_dir`` and rename it into place."""
    out_dir = Path(out_dir)
    with staging_dir(out_dir, STAGE) as tmp:
        profiles = [p.model_dump() for p in meta.profiles]
        save_file({"theta": theta.contiguous()}, tmp / THETA,
                  metadata={"user_ids": json.dumps(user_ids), "profiles": json.dumps(profiles)})
        save_file({f"codebook.{p['name']}": cb.detach().float().cpu().contiguous()
                   for p, cb in zip(profiles, codebooks)}, tmp / CODEBOOKS,
                  metadata={"profiles": json.dumps(profiles)})
        save_file({k: v.detach().cpu().contiguous() for k, v in surrogate_state.items()},
                  tmp / SURROGATE)
        pl.DataFrame({"item_id": item_ids}, schema={"item_id": pl.String}).write_parquet(
            tmp / SURROGATE_ITEMS)  # row r = the surrogate's item embedding row r
        codes.write_parquet(tmp / CODES)
        with open(tmp / CURVES, "w", newline="") as fh:
            fields = list(CURVE_FIELDS)
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows({k: ("" if isinstance(v, float) and v != v else v)
                              for k, v in row.items()} for row in curves)  # NaN -> empty
        (tmp / EXPLANATION).write_text(json.dumps(explain, indent=1, ensure_ascii=False))
        meta.write(tmp)
        publish_dir(tmp, out_dir, STAGE)
    return out_dir
