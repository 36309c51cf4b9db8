"""``quantize``: turn a published profile's θ into codes (or dense features) per method.

Each method writes ``<out>/<method>/codes.parquet`` (or ``dense.parquet`` for
``none``) and a ``meta.json`` naming the method, its kind and the codebook sizes. The
sweep writes ``<out>/sweep/<profile>_K<k>/``: every profile column there is FAISS
k-means on the final θ (the swept profile at size k, the others at their configured K);
it is not a re-run of UserIP training at another codebook size.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from userip.atomic import publish_dir, staging_dir
from userip.config import QuantizeConfig
from userip.dataprep.layout import INTERACTIONS
from userip.errors import InputError
from userip.profile_infer.layout import CODES as PROFILE_CODES
from userip.profile_infer.layout import Profile, ProfileEntry, ProfileMeta
from userip.quantize.evidence import agreement, code_evidence, user_facts
from userip.quantize.layout import STAGE, SWEEP, ProfileSize, QuantizeMeta, SweepPoint
from userip.quantize.methods import agglomerative_codes, kmeans_codes, pca_dense

log = logging.getLogger(__name__)


def _write(dir_: Path, frame: pl.DataFrame, meta: QuantizeMeta) -> None:
    dir_.mkdir(parents=True)
    frame.write_parquet(meta.data_file(dir_))
    meta.write(dir_)


def _flat(theta, profiles: list[ProfileEntry], m: int) -> np.ndarray:
    start = sum(p.n_tokens for p in profiles[:m])
    part = theta[:, start: start + profiles[m].n_tokens]
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
        cols[p.name] = pl.Series(codes, dtype=pl.Int32)
        cols[f"dist_{p.name}"] = pl.Series(dist, dtype=pl.Float32)
    return pl.DataFrame(cols)


def check_userip_codes(codes: pl.DataFrame, profiles: list[ProfileEntry], path: Path) -> None:
    for p in profiles:
        if p.name not in codes.columns:
            raise InputError("missing code column", path=str(path), field=p.name)
        col = codes[p.name]
        if col.null_count() or ((col < 0) | (col >= p.K)).any():
            raise InputError(f"codes outside [0, {p.K})", path=str(path), field=p.name)


def _facts(profile_meta: ProfileMeta) -> pl.DataFrame | None:
    """What the profile's data set shows of each user (train split), if it is still there."""
    data_dir = Path(profile_meta.data_dir)
    if not (data_dir / INTERACTIONS).is_file():
        log.warning("%s: data set not found, code evidence skipped", data_dir)
        return None
    return user_facts(data_dir)


def quantize(cfg: QuantizeConfig, profile_dir: Path, out_dir: Path) -> Path:
    """Run every configured method (and the sweep) and publish ``out_dir`` atomically."""
    profile_dir, out_dir = Path(profile_dir), Path(out_dir)
    if not ProfileMeta.path(profile_dir).is_file():
        raise InputError("not a published profile (run `userip infer`)",
                         path=str(ProfileMeta.path(profile_dir)))
    pub = Profile.read(profile_dir)
    profiles, theta, user_ids = pub.meta.profiles, pub.theta, pub.user_ids
    sizes = [p.K for p in profiles]
    names = pub.meta.names
    for name in cfg.sweep:
        if name not in names:
            raise InputError(f"sweep names unknown profile {name!r}", field="quantize.sweep")

    def meta(method: str, kind: Literal["codes", "dense"] = "codes", ks: list[int] = sizes,
             **extra: Any) -> QuantizeMeta:
        return QuantizeMeta(profiles=[ProfileSize(name=n, K=k) for n, k in zip(names, ks)],
                            source_profile=str(profile_dir), n_users=len(user_ids),
                            method=method, kind=kind, **extra)

    facts = _facts(pub.meta)
    code_sets: dict[str, pl.DataFrame] = {}

    def evidence(frame: pl.DataFrame) -> dict:
        """NMI of the codes with like-rate and taste (train split) against a permutation null."""
        if facts is None:
            return {"note": "data dir of the profile not found: no code evidence"}
        return code_evidence(frame, names, facts, cfg.evidence_permutations, cfg.seed)

    with staging_dir(out_dir, stage=STAGE) as tmp:
        for method in cfg.methods:
            log.info("quantize: %s", method)
            if method in ("userip", "kmeans", "agglomerative"):
                if method == "userip":
                    check_userip_codes(pub.codes, profiles, profile_dir / PROFILE_CODES)
                    frame = pub.codes
                else:
                    frame = _cluster_frame(method, user_ids, theta, profiles, sizes, cfg.seed,
                                           cfg.agglomerative_max_users)
                code_sets[method] = frame
                ari = (agreement(code_sets["userip"], frame, names)
                       if method != "userip" and "userip" in code_sets else None)
                _write(tmp / method, frame, meta(method, evidence=evidence(frame), ari_vs_userip=ari))
            else:
                cols: dict = {"user_id": pl.Series(user_ids, dtype=pl.String)}
                for m, p in enumerate(profiles):
                    dense = pca_dense(_flat(theta, profiles, m), cfg.none_dim, cfg.seed)
                    for j in range(dense.shape[1]):
                        cols[f"{p.name}_{j}"] = pl.Series(dense[:, j], dtype=pl.Float32)
                _write(tmp / method, pl.DataFrame(cols),
                       meta(method, "dense", reduction="PCA", dim=cfg.none_dim))
        for name, ks in cfg.sweep.items():
            m = names.index(name)
            for k in ks:
                run_sizes = list(sizes)
                run_sizes[m] = k
                frame = _cluster_frame("kmeans", user_ids, theta, profiles, run_sizes,
                                       cfg.seed, cfg.agglomerative_max_users)
                point = SweepPoint(profile=name, K=k,
                                   note="FAISS k-means on the final θ, not UserIP retraining")
                _write(tmp / SWEEP / f"{name}_K{k}", frame, meta("kmeans", ks=run_sizes, sweep=point))
        publish_dir(tmp, out_dir, stage=STAGE)
    return out_dir
