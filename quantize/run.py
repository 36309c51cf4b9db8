"""``quantize``: turn a published profile's θ into codes (or dense features) per method.

Each method writes ``<out>/<method>/codes.parquet`` (or ``dense.parquet`` for
``none``) and a ``meta.json`` naming the method, its kind and the codebook sizes. The
sweep writes ``<out>/sweep/<profile>_K<k>/``: every profile column there is FAISS
k-means on the final θ (the swept profile at size k, the others at their configured K);
it is not a re-run of UserIP training at another codebook size.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import polars as pl

from profile_infer.outputs import load_published
from quantize.evidence import agreement, code_evidence, user_facts
from quantize.methods import agglomerative_codes, kmeans_codes, pca_dense
from userip.atomic import publish_dir, staging_dir
from userip.config import QuantizeConfig
from userip.errors import InputError

log = logging.getLogger(__name__)


def _write(dir_: Path, frame: pl.DataFrame, meta: dict, dense: bool = False) -> None:
    dir_.mkdir(parents=True)
    frame.write_parquet(dir_ / ("dense.parquet" if dense else "codes.parquet"))
    (dir_ / "meta.json").write_text(json.dumps(meta, indent=1))


def _flat(theta, profiles: list[dict], m: int) -> np.ndarray:
    start = sum(p["n_tokens"] for p in profiles[:m])
    part = theta[:, start: start + profiles[m]["n_tokens"]]
    return part.reshape(len(theta), -1).float().numpy()


def _cluster_frame(method: str, user_ids, theta, profiles, sizes: list[int], seed: int,
                   max_users: int) -> pl.DataFrame:
    cols: dict = {"user_id": pl.Series(user_ids, dtype=pl.String)}
    for m, (p, k) in enumerate(zip(profiles, sizes)):
        flat = _flat(theta, profiles, m)
        if method == "kmeans":
            codes, dist, _ = kmeans_codes(flat, k, seed + m)
        else:
            codes, dist, _ = agglomerative_codes(flat, k, seed + m, max_users)
        cols[p["name"]] = pl.Series(codes, dtype=pl.Int32)
        cols[f"dist_{p['name']}"] = pl.Series(dist, dtype=pl.Float32)
    return pl.DataFrame(cols)


def check_userip_codes(codes: pl.DataFrame, profiles: list[dict], path: Path) -> None:
    for p in profiles:
        if p["name"] not in codes.columns:
            raise InputError("missing code column", path=str(path), field=p["name"])
        col = codes[p["name"]]
        if col.null_count() or col.min() < 0 or col.max() >= p["K"]:
            raise InputError(f"codes outside [0, {p['K']})", path=str(path), field=p["name"])


def _facts(profile_meta: dict) -> pl.DataFrame | None:
    """What the profile's data set shows of each user (train split), if it is still there."""
    data_dir = Path(profile_meta.get("data_dir", ""))
    if not (data_dir / "interactions.parquet").is_file():
        log.warning("%s: data set not found, code evidence skipped", data_dir)
        return None
    return user_facts(data_dir)


def quantize(cfg: QuantizeConfig, profile_dir: Path, out_dir: Path) -> Path:
    """Run every configured method (and the sweep) and publish ``out_dir`` atomically."""
    profile_dir, out_dir = Path(profile_dir), Path(out_dir)
    if not (profile_dir / "meta.json").is_file():
        raise InputError("not a published profile (run `userip infer`)",
                         path=str(profile_dir / "meta.json"))
    pub = load_published(profile_dir)
    profiles, theta, user_ids = pub["meta"]["profiles"], pub["theta"], pub["user_ids"]
    sizes = [p["K"] for p in profiles]
    named = {p["name"]: p for p in profiles}
    for name in cfg.sweep:
        if name not in named:
            raise InputError(f"sweep names unknown profile {name!r}", field="quantize.sweep")
    base_meta = {"profiles": [{"name": p["name"], "K": p["K"]} for p in profiles],
                 "source_profile": str(profile_dir), "n_users": len(user_ids)}
    names = [p["name"] for p in profiles]
    facts = _facts(pub["meta"])
    code_sets: dict[str, pl.DataFrame] = {}

    def evidence(frame: pl.DataFrame) -> dict:
        """NMI of the codes with like-rate and taste (train split) against a permutation null."""
        if facts is None:
            return {"note": "data dir of the profile not found: no code evidence"}
        return code_evidence(frame, names, facts, cfg.evidence_permutations, cfg.seed)

    with staging_dir(out_dir, stage="quantize") as tmp:
        for method in cfg.methods:
            log.info("quantize: %s", method)
            meta = {**base_meta, "method": method, "kind": "codes"}
            if method in ("userip", "kmeans", "agglomerative"):
                if method == "userip":
                    check_userip_codes(pub["codes"], profiles, profile_dir / "codes.parquet")
                    frame = pub["codes"]
                else:
                    frame = _cluster_frame(method, user_ids, theta, profiles, sizes, cfg.seed,
                                           cfg.agglomerative_max_users)
                code_sets[method] = frame
                meta["evidence"] = evidence(frame)
                if method != "userip" and "userip" in code_sets:
                    meta["ari_vs_userip"] = agreement(code_sets["userip"], frame, names)
                _write(tmp / method, frame, meta)
            else:
                cols: dict = {"user_id": pl.Series(user_ids, dtype=pl.String)}
                for m, p in enumerate(profiles):
                    dense = pca_dense(_flat(theta, profiles, m), cfg.none_dim, cfg.seed)
                    for j in range(dense.shape[1]):
                        cols[f"{p['name']}_{j}"] = pl.Series(dense[:, j], dtype=pl.Float32)
                meta = {**meta, "kind": "dense", "reduction": "PCA",
                        "dim": cfg.none_dim}
                _write(tmp / method, pl.DataFrame(cols), meta, dense=True)
        for name, ks in cfg.sweep.items():
            m = [p["name"] for p in profiles].index(name)
            for k in ks:
                run_sizes = list(sizes)
                run_sizes[m] = k
                frame = _cluster_frame("kmeans", user_ids, theta, profiles, run_sizes,
                                       cfg.seed, cfg.agglomerative_max_users)
                meta = {**base_meta, "method": "kmeans", "kind": "codes",
                        "profiles": [{"name": p["name"], "K": s}
                                     for p, s in zip(profiles, run_sizes)],
                        "sweep": {"profile": name, "K": k,
                                  "note": "FAISS k-means on the final θ, not UserIP retraining"}}
                _write(tmp / "sweep" / f"{name}_K{k}", frame, meta)
        publish_dir(tmp, out_dir, stage="quantize")
    return out_dir
