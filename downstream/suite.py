"""Plan and run every (variant, model, seed) fit of a run, then score them on test.

Plan: ``without`` and the primary codes variant get the configured models plus the
transfer models (Tables 2, 3); every other variant (k-means, agglomerative, dense, size
sweeps) gets the ablation models (Table 4, Figs 6-7). A fit whose saved record matches
the data, code source and settings is reused, so an interrupted run resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from downstream.features import CodeSource, load_users, open_codes
from downstream.layers import Hyper
from downstream.metrics import ctr_metrics
from downstream.models import MODELS
from downstream.train import MODEL_JSON, Prepared, Scorer, fit, prepare
from feature_bank import FeatureBank
from feature_bank.bank import MANIFEST_FILE, read_meta
from userip.config import DownstreamConfig
from userip.errors import ConfigError, InputError

log = logging.getLogger(__name__)
WITHOUT = "without"
VARIANT_JSON = "variant.json"  # the variant's quantizer meta (method, K, note)


@dataclass(frozen=True)
class Job:
    variant: str
    model: str
    seed: int


def model_dir(run_dir: Path, job: Job) -> Path:
    return Path(run_dir) / "downstream" / job.variant / job.model / f"seed={job.seed}"


def discover_codes(path: Path) -> dict[str, Path]:
    """A quantizer method dir (has meta.json) or a quantize dir of such dirs -> {variant: dir}."""
    path = Path(path)
    if (path / "meta.json").is_file():
        return {path.name: path}
    found = {p.name: p for p in sorted(path.iterdir()) if (p / "meta.json").is_file()} if path.is_dir() else {}
    # the quantize stage's codebook-size sweep: <quantize>/sweep/<profile>_K<k>/
    found |= {f"sweep-{m.parent.name}": m.parent for m in sorted(path.glob("sweep/*/meta.json"))}
    if not found:
        raise InputError("no quantizer output (meta.json) here or in its sub-dirs", path=str(path))
    if WITHOUT in found:
        raise ConfigError(f"{path}: a codes dir may not be named {WITHOUT!r} (reserved for the baseline)")
    return found


def plan(section: DownstreamConfig, variants: list[str]) -> list[Job]:
    unknown = sorted(set(section.models + section.transfer_models + section.ablation_models) - set(MODELS))
    if unknown:
        raise ConfigError(f"unknown models {unknown}; the zoo has {sorted(MODELS)}")
    full = list(dict.fromkeys(section.models + section.transfer_models))
    ablation = list(section.ablation_models)
    primary = section.primary_codes if section.primary_codes in variants else None
    jobs: list[Job] = []
    for variant in [WITHOUT, *variants]:
        if variant == WITHOUT:
            models = list(dict.fromkeys(full + ablation))
        else:
            models = full if variant == primary else ablation
        jobs += [Job(variant, m, s) for m in models for s in section.seeds]
    return jobs


# Fields that change what a single fit learns; the others only choose which fits run or how.
_FIT_FIELDS = ("epochs", "patience", "batch_size", "lr", "embedding_dim", "mlp", "dropout",
               "cross_layers", "use_observed_features")


def fit_fingerprint(section: DownstreamConfig) -> str:
    blob = json.dumps(section.model_dump(mode="json", include=set(_FIT_FIELDS)), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _settings(section: DownstreamConfig) -> dict[str, Any]:
    return dict(hp=Hyper(section.embedding_dim, tuple(section.mlp), section.dropout, section.cross_layers),
                epochs=section.epochs, batch_size=section.batch_size, lr=section.lr,
                patience=section.patience, threads=section.threads)


@lru_cache(maxsize=4)
def _prepared(data_dir: str, source: str | None, is_bank: bool, use_observed: bool) -> Prepared:
    codes = open_codes(Path(source), bank=is_bank) if source else None
    return prepare(Path(data_dir), codes, use_observed)


def _fit_job(job: Job, data_dir: str, source: str | None, is_bank: bool, section: DownstreamConfig,
             run_dir: str) -> dict[str, Any]:
    data = _prepared(data_dir, source, is_bank, section.use_observed_features)
    out = model_dir(Path(run_dir), job)
    old = out / MODEL_JSON
    if old.is_file():
        rec = json.loads(old.read_text())
        if (rec.get("data_fingerprint"), rec.get("codes"), rec.get("settings")) == \
                (data.data_fingerprint, data.codes, fit_fingerprint(section)):
            return rec
    rec = fit(job.model, data, out, seed=job.seed, variant=job.variant, **_settings(section),
              extra={"settings": fit_fingerprint(section)})
    log.info("trained %s/%s seed %d: val AUC %.4f at epoch %d (%.1fs)", job.variant, job.model,
             job.seed, rec["val_auc"], rec["best_epoch"], rec["train_seconds"])
    return rec


def train_all(section: DownstreamConfig, data_dir: Path, run_dir: Path, *,
              codes: Path | None = None, bank: Path | None = None) -> list[dict[str, Any]]:
    """Fit every planned job; returns their training records."""
    if codes is not None and bank is not None:
        raise ConfigError("give either codes or a bank, not both")
    sources: dict[str, tuple[str | None, bool]] = {WITHOUT: (None, False)}
    if codes is not None:
        sources |= {v: (str(p), False) for v, p in discover_codes(codes).items()}
    if bank is not None:
        opened = FeatureBank.open(bank)  # fails early on a missing or corrupt bank
        sources[opened.manifest.method] = (str(bank), True)
    jobs = plan(section, [v for v in sources if v != WITHOUT])
    for variant, meta in {WITHOUT: {"method": WITHOUT, "kind": None, "profiles": []},
                          **variant_meta(codes, bank)}.items():
        vdir = Path(run_dir) / "downstream" / variant
        vdir.mkdir(parents=True, exist_ok=True)
        (vdir / VARIANT_JSON).write_text(json.dumps(meta, indent=2))
    args = [(j, str(data_dir), *sources[j.variant], section, str(run_dir)) for j in jobs]
    if section.workers == 1:
        return [_fit_job(*a) for a in args]
    # spawn, not fork: a forked child inherits the parent's OpenMP/FAISS thread state and hangs
    with ProcessPoolExecutor(section.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_fit_job, *zip(*args)))


def trained_dirs(run_dir: Path) -> list[Path]:
    dirs = sorted(p.parent for p in (Path(run_dir) / "downstream").glob(f"*/*/seed=*/{MODEL_JSON}"))
    if not dirs:
        raise InputError("no trained models under this run dir", path=str(Path(run_dir) / "downstream"))
    return dirs


def source_of(record: dict[str, Any], bank: Path | None) -> tuple[str, bool, str | None] | None:
    """Where to find the code source to score a model with, as ``open_codes`` arguments
    (path, bank, version): ``bank`` (checked for compatibility) when given for a codes
    model, else the source recorded at training time."""
    info = record.get("codes")
    if info is None:
        return None
    if bank is not None and info["kind"] == "codes":
        return str(bank), True, None
    src = Path(info["source"])
    if (src / MANIFEST_FILE).is_file():  # a published bank version dir
        return str(src.parent), True, src.name
    return str(src), False, None


def evaluate_all(run_dir: Path, data_dir: Path, *, bank: Path | None = None) -> list[dict[str, Any]]:
    """Score every trained model on the test split; writes metrics.json beside each."""
    from downstream.features import load_interactions

    inter = load_interactions(Path(data_dir)).filter(pl.col("split") == "test")
    if inter.height == 0:
        raise InputError("no test rows", path=str(Path(data_dir) / "interactions.parquet"))
    users = load_users(Path(data_dir))
    uid, iid = inter["user_id"].to_numpy(), inter["item_id"].to_numpy()
    y = inter["label"].to_numpy().astype(np.int8)
    out = []
    opened: dict[tuple[str, bool, str | None], CodeSource] = {}  # one bank/encoder per source
    for d in trained_dirs(run_dir):
        scorer = Scorer(d)
        where = source_of(scorer.record, bank)
        if where is not None and where not in opened:
            path, is_bank, version = where
            opened[where] = open_codes(Path(path), bank=is_bank, version=version)
        probs = scorer.score(uid, iid, users, opened.get(where) if where else None)
        m = {"model": scorer.name, "variant": scorer.record["variant"], "seed": scorer.record["seed"],
             "val_auc": scorer.record["val_auc"], "best_epoch": scorer.record["best_epoch"],
             "train_seconds": scorer.record["train_seconds"], **ctr_metrics(uid, y, probs)}
        (d / "metrics.json").write_text(json.dumps(m, indent=2))
        out.append(m)
    return out


def variant_meta(codes: Path | None, bank: Path | None) -> dict[str, dict[str, Any]]:
    """meta.json of each codes variant (method, K, stand-in note) for the report."""
    metas = {v: read_meta(p) for v, p in discover_codes(codes).items()} if codes else {}
    if bank is not None:
        m = FeatureBank.open(bank).manifest
        metas[m.method] = {"method": m.method, "kind": "codes", "note": m.note,
                           "profiles": [{"name": n, "K": k} for n, k in m.profiles]}
    return metas
