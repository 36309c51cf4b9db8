"""Plan and run every (protocol, variant, model, seed) fit of a run, then score them on test.

Plan, paper protocol (every user in CTR training): ``without`` and the primary codes
variant get the configured models plus the transfer models (Tables 2, 3); every other
variant (k-means, agglomerative, dense, stat codes, size sweeps) gets the ablation models
(Table 4, Figs 6-7). The ablation models fit ``ablation_seeds`` on every variant but the
size sweeps, so each with/without comparison has enough seeds for its p-value.

New-users protocol (``new_user_share`` > 0): a seeded share of users is held out of CTR
training (``held_out.json``); the ablation models fit ``without`` and every variant but
the size sweeps and ``stat-half`` once more on the other users, and are scored on the
held-out users' test rows. Their codes still come from the code source: profile inference covers every user's
train history. A variant that has codes for none of the held-out users is skipped there
(logged, and named in the report).

A fit whose saved record matches the data, held-out users, code source and settings is
reused, so an interrupted run resumes.
"""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from userip.config import DownstreamConfig
from userip.dataprep.layout import INTERACTIONS
from userip.downstream.features import CodeSource, load_interactions, load_users, open_codes
from userip.downstream.layout import NEW_USERS, WITHOUT, FitRecord, HeldOut, Job, JobMetrics, RunLayout
from userip.downstream.metrics import activity_bucket, auc_by_activity, ctr_metrics
from userip.downstream.models import MODELS
from userip.downstream.stat_codes import HISTORIES, write_stat_codes
from userip.downstream.train import Prepared, Scorer, fit, prepare, users_fingerprint
from userip.errors import ConfigError, InputError
from userip.feature_bank import FeatureBank
from userip.feature_bank.bank import MANIFEST_FILE
from userip.quantize.layout import SWEEP, QuantizeMeta

log = logging.getLogger(__name__)
SWEEP_PREFIX = "sweep-"
STAT_PREFIX = "stat-"  # stat codes variants: stat-full, stat-half (downstream.stat_codes)
# The first-half stat codes are the warm users' leakage control; the new-users protocol
# trains on none of the held-out users' labels, so it has nothing to control for there.
STAT_HALF = f"{STAT_PREFIX}half"


def hold_out_users(data_dir: Path, share: float, seed: int) -> np.ndarray:
    """The new-users protocol's users: ``round(share * users)`` of all users with
    interactions, drawn with ``seed``, sorted. Refuses a draw whose test rows cannot be
    scored (no user, or one label only) or that leaves no user to train on."""
    path = Path(data_dir) / INTERACTIONS
    inter = load_interactions(Path(data_dir))
    users = np.sort(inter["user_id"].unique().to_numpy())
    n = int(round(share * len(users)))
    if n < 1:
        raise InputError(f"new_user_share={share} holds out 0 of {len(users)} users; raise it, "
                         "or set it to 0 to turn the new-users protocol off", path=str(path))
    if n >= len(users):
        raise InputError(f"new_user_share={share} holds out all {len(users)} users; "
                         "none would be left to train the CTR model on", path=str(path))
    chosen = np.sort(np.random.default_rng(seed).choice(users, n, replace=False))
    test = inter.filter((pl.col("split") == "test") & pl.col("user_id").is_in(chosen.tolist()))
    if test["label"].n_unique() < 2:
        raise InputError(f"the {n} held-out users (new_user_share={share}) have {test.height} test "
                         "rows without both labels, so their AUC is undefined; raise new_user_share",
                         path=str(path))
    return chosen


def coverage(source: CodeSource, users: np.ndarray) -> float:
    """Share of ``users`` the code source has codes (or a dense profile) for."""
    known = np.isin(users, source.user_ids.astype(str))
    return float(known.mean()) if len(users) else 0.0


def discover_codes(path: Path) -> dict[str, Path]:
    """A quantizer method dir (has meta.json) or a quantize dir of such dirs -> {variant: dir}."""
    path = Path(path)
    if QuantizeMeta.path(path).is_file():
        return {path.name: path}
    found = ({p.name: p for p in sorted(path.iterdir()) if QuantizeMeta.path(p).is_file()}
             if path.is_dir() else {})
    # the quantize stage's codebook-size sweep: <quantize>/sweep/<profile>_K<k>/
    found |= {f"{SWEEP_PREFIX}{m.parent.name}": m.parent
              for m in sorted(path.glob(f"{SWEEP}/*/{QuantizeMeta.FILE}"))}
    if not found:
        raise InputError("no quantizer output (meta.json) here or in its sub-dirs", path=str(path))
    reserved = sorted(v for v in found if v in (WITHOUT, NEW_USERS) or v.startswith(STAT_PREFIX))
    if reserved:
        raise ConfigError(f"{path}: a codes dir may not be named {reserved[0]!r} (reserved: "
                          f"{WITHOUT!r}, {NEW_USERS!r}, {STAT_PREFIX}*)")
    return found


def plan(section: DownstreamConfig, variants: list[str], new_user_variants: list[str] | None = None) -> list[Job]:
    """Every fit: the paper protocol's, then, when ``new_user_variants`` is given (codes
    variants covering some held-out user), the new-users protocol's."""
    unknown = sorted(set(section.models + section.transfer_models + section.ablation_models) - set(MODELS))
    if unknown:
        raise ConfigError(f"unknown models {unknown}; the zoo has {sorted(MODELS)}")
    full = list(dict.fromkeys(section.models + section.transfer_models))
    ablation = list(section.ablation_models)
    primary = section.primary_codes if section.primary_codes in variants else None
    many = list(dict.fromkeys(section.seeds + (section.ablation_seeds or section.seeds)))

    def seeds(model: str, variant: str) -> list[int]:
        return many if model in ablation and not variant.startswith(SWEEP_PREFIX) else list(section.seeds)

    jobs: list[Job] = []
    for variant in [WITHOUT, *variants]:
        if variant == WITHOUT:
            models = list(dict.fromkeys(full + ablation))
        else:
            models = full if variant == primary else ablation
        jobs += [Job(variant, m, s) for m in models for s in seeds(m, variant)]
    if new_user_variants is not None:
        jobs += [Job(v, m, s, NEW_USERS) for v in [WITHOUT, *new_user_variants] for m in ablation
                 for s in section.ablation_seeds or section.seeds]
    return jobs


@lru_cache(maxsize=4)
def _prepared(data_dir: str, source: str | None, is_bank: bool, use_observed: bool,
              held_out: tuple[str, ...] | None) -> Prepared:
    codes = open_codes(Path(source), bank=is_bank) if source else None
    return prepare(Path(data_dir), codes, use_observed, None if held_out is None else np.array(held_out))


def _fit_job(job: Job, data_dir: str, source: str | None, is_bank: bool, section: DownstreamConfig,
             run_dir: str, held_out: tuple[str, ...] | None) -> FitRecord:
    held = held_out if job.protocol == NEW_USERS else None
    data = _prepared(data_dir, source, is_bank, section.use_observed_features, held)
    out = RunLayout(Path(run_dir)).model_dir(job)
    if _reusable(out, data, section):
        return FitRecord.read(out)
    rec = fit(job.model, data, out, seed=job.seed, hp=section.fit_settings(), variant=job.variant,
              protocol=job.protocol, threads=section.threads)
    log.info("trained %s %s/%s seed %d: val AUC %.4f at epoch %d of %d (%.1fs)", job.protocol,
             job.variant, job.model, job.seed, rec.val_auc, rec.best_epoch, rec.epochs_run,
             rec.train_seconds)
    return rec


def _reusable(out: Path, data: Prepared, section: DownstreamConfig) -> bool:
    """A saved fit made from this data, held-out users, code source and fit settings; a
    record this version cannot read is retrained."""
    if not FitRecord.exists(out):
        return False
    try:
        rec = FitRecord.read(out)
    except InputError:
        return False
    return (rec.data_fingerprint, rec.held_out, rec.codes, rec.hyper) == \
        (data.data_fingerprint, data.held_out, data.codes, section.fit_settings())


def train_all(section: DownstreamConfig, data_dir: Path, run_dir: Path, *,
              codes: Path | None = None, bank: Path | None = None) -> list[FitRecord]:
    """Fit every planned job; returns their training records."""
    if codes is not None and bank is not None:
        raise ConfigError("give either codes or a bank, not both")
    layout = RunLayout(Path(run_dir))
    sources: dict[str, tuple[str | None, bool]] = {WITHOUT: (None, False)}
    if codes is not None:
        sources |= {v: (str(p), False) for v, p in discover_codes(codes).items()}
    if bank is not None:
        opened = FeatureBank.open(bank)  # fails early on a missing or corrupt bank
        sources[opened.manifest.method] = (str(bank), True)
    if section.stat_codes:
        for history in HISTORIES:
            out = write_stat_codes(Path(data_dir), layout.stat_codes_dir(history), history)
            sources[f"{STAT_PREFIX}{history}"] = (str(out), False)
    variants = [v for v in sources if v != WITHOUT]
    _warn_uncovered(Path(data_dir), sources)
    held, new_user_variants = None, None
    if section.new_user_share > 0:
        held, new_user_variants = _new_users(section, Path(data_dir), Path(run_dir), sources)
    jobs = plan(section, variants, new_user_variants)
    metas = {WITHOUT: {"method": WITHOUT, "kind": None, "profiles": []}, **variant_meta(codes, bank)}
    metas |= {v: _meta(Path(p)) for v, (p, _) in sources.items()
              if v.startswith(STAT_PREFIX) and p is not None}
    for variant, meta in metas.items():
        layout.write_variant_meta(variant, meta)
    args = [(j, str(data_dir), *sources[j.variant], section, str(run_dir), held) for j in jobs]
    if section.workers == 1:
        return [_fit_job(*a) for a in args]
    # spawn, not fork: a forked child inherits the parent's OpenMP/FAISS thread state and hangs
    with ProcessPoolExecutor(section.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_fit_job, *zip(*args)))


def _warn_uncovered(data_dir: Path, sources: dict[str, tuple[str | None, bool]]) -> None:
    """Say so when a codes variant has codes for few or none of the users it trains on:
    its "with codes" rows would then measure the unknown-user code, not the profiles."""
    users = load_interactions(data_dir)["user_id"].unique().to_numpy().astype(str)
    for variant, (path, is_bank) in sources.items():
        if path is None:
            continue
        share = coverage(open_codes(Path(path), bank=is_bank), users)
        if share < 0.5:
            log.warning("variant %s has codes for %.0f%% of the data set's users (%s): its "
                        "'with codes' results mostly use the unknown-user code",
                        variant, 100 * share, path)


def _new_users(section: DownstreamConfig, data_dir: Path, run_dir: Path,
               sources: dict[str, tuple[str | None, bool]]) -> tuple[tuple[str, ...], list[str]]:
    """Draw the held-out users, write ``held_out.json`` (users, each variant's coverage of
    them) and return them with the variants the new-users protocol fits."""
    held = hold_out_users(data_dir, section.new_user_share, section.new_user_seed)
    cover = {v: coverage(open_codes(Path(p), bank=is_bank), held) for v, (p, is_bank) in sources.items()
             if p is not None and not v.startswith(SWEEP_PREFIX) and v != STAT_HALF}
    skipped = sorted(v for v, c in cover.items() if c == 0)
    for v in skipped:
        log.warning("new-users protocol: %s has codes for none of the %d held-out users; skipped", v, len(held))
    where = RunLayout(run_dir).held_out_dir
    where.mkdir(parents=True, exist_ok=True)
    HeldOut(share=section.new_user_share, seed=section.new_user_seed, fingerprint=users_fingerprint(held),
            coverage=cover, skipped=skipped, users=held.tolist()).write(where)
    return tuple(held.tolist()), [v for v in cover if v not in skipped]


def source_of(record: FitRecord, bank: Path | None) -> tuple[str, bool, str | None] | None:
    """Where to find the code source to score a model with, as ``open_codes`` arguments
    (path, bank, version): ``bank`` (checked for compatibility) when given for a codes
    model, else the source recorded at training time."""
    info = record.codes
    if info is None:
        return None
    if bank is not None and info["kind"] == "codes":
        return str(bank), True, None
    src = Path(info["source"])
    if (src / MANIFEST_FILE).is_file():  # a published bank version dir
        return str(src.parent), True, src.name
    return str(src), False, None


def read_held_out(run_dir: Path) -> HeldOut | None:
    where = RunLayout(run_dir).held_out_dir
    return HeldOut.read(where) if HeldOut.exists(where) else None


def evaluate_all(run_dir: Path, data_dir: Path, *, bank: Path | None = None) -> list[JobMetrics]:
    """Score every trained model on the test split (a new-users model: on the held-out
    users' test rows); writes metrics.json beside each, with AUC by user activity."""
    inter = load_interactions(Path(data_dir))
    counts = inter.filter(pl.col("split") == "train").group_by("user_id").len()
    inter = inter.filter(pl.col("split") == "test")
    if inter.height == 0:
        raise InputError("no test rows", path=str(Path(data_dir) / INTERACTIONS))
    inter = inter.join(counts, on="user_id", how="left", maintain_order="left")
    users = load_users(Path(data_dir))
    uid, iid = inter["user_id"].to_numpy(), inter["item_id"].to_numpy()
    y = inter["label"].to_numpy().astype(np.int8)
    bucket = activity_bucket(inter["len"].fill_null(0).to_numpy())
    held = read_held_out(run_dir)
    new_rows = np.isin(uid, held.users) if held else np.zeros(len(uid), bool)
    out = []
    opened: dict[tuple[str, bool, str | None], CodeSource] = {}  # one bank/encoder per source
    layout = RunLayout(run_dir)
    for job, d in layout.trained():
        scorer = Scorer(d)
        rec = scorer.record
        rows: slice | np.ndarray = slice(None)
        if job.protocol == NEW_USERS:
            if held is None or rec.held_out != held.fingerprint:
                raise InputError(f"{HeldOut.path(layout.held_out_dir)} does not name the users this "
                                 "model was trained without; re-run `userip train`", path=str(d))
            rows = new_rows
        where = source_of(scorer.record, bank)
        if where is not None and where not in opened:
            path, is_bank, version = where
            opened[where] = open_codes(Path(path), bank=is_bank, version=version)
        probs = scorer.score(uid[rows], iid[rows], users, opened.get(where) if where else None)
        m = JobMetrics(model=job.model, variant=job.variant, seed=job.seed, protocol=job.protocol,
                       val_auc=rec.val_auc, best_epoch=rec.best_epoch, epochs_run=rec.epochs_run,
                       epoch_cap=rec.epoch_cap, train_seconds=rec.train_seconds,
                       **ctr_metrics(uid[rows], y[rows], probs),
                       by_activity=auc_by_activity(bucket[rows], uid[rows], y[rows], probs))
        m.write(d)
        out.append(m)
    return out


def _meta(codes_dir: Path) -> dict[str, Any]:
    return QuantizeMeta.read(codes_dir).model_dump(mode="json", exclude_none=True)


def variant_meta(codes: Path | None, bank: Path | None) -> dict[str, dict[str, Any]]:
    """meta.json of each codes variant (method, K, stand-in note) for the report."""
    metas = {v: _meta(p) for v, p in discover_codes(codes).items()} if codes else {}
    if bank is not None:
        m = FeatureBank.open(bank).manifest
        # the bank's codes were quantized into ``codes`` too: keep that meta's evidence
        metas[m.method] = {**metas.get(m.method, {}), "method": m.method, "kind": "codes",
                           "note": m.note, "profiles": [{"name": n, "K": k} for n, k in m.profiles]}
    return metas
