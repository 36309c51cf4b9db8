"""The new-users protocol, AUC by activity, early stopping and the stat codes, on tiny real
data (the first 40 MovieLens-100K users prepared by the real ``prepare``).

Profile codes are stand-ins (``quantize.standin``): these tests check the protocol's
plumbing and contracts, not that codes help.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pydantic
import pytest

from userip.config import DownstreamConfig
from userip.downstream.features import open_codes
from userip.downstream.layout import NEW_USERS, FitRecord, Job, JobMetrics, ReportMetrics, RunLayout
from userip.downstream.metrics import activity_bucket
from userip.downstream.report import write_report
from userip.downstream.stat_codes import LIKE_RATE_BINS, stat_codes, write_stat_codes
from userip.downstream.suite import evaluate_all, hold_out_users, plan, read_held_out, train_all
from userip.downstream.train import Scorer, fit, prepare
from userip.errors import InputError
from userip.feature_bank import FeatureBank
from userip.hyper import FitSettings
from userip.quantize.layout import QuantizeMeta
from userip.quantize.standin import write_standin

SECTION = DownstreamConfig(models=("dcn",), transfer_models=(), ablation_models=("dcn",), seeds=(0,),
                           ablation_seeds=(0, 1), epochs=2, patience=1, batch_size=256,
                           new_user_share=0.25, stat_codes=True)


def _inter(data_dir: Path) -> pl.DataFrame:
    return pl.read_parquet(data_dir / "interactions.parquet")


@pytest.fixture(scope="module")
def quantize_dir(ml100k_small_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    users = pl.read_parquet(ml100k_small_dir / "users.parquet")["user_id"].to_list()
    q = tmp_path_factory.mktemp("q")
    write_standin(users, q / "userip", method="userip")
    write_standin(users, q / "sweep" / "hobby_K8", method="kmeans", profiles=(("hobby", 8), ("background", 3)),
                  seed=4, sweep={"profile": "hobby", "K": 8})
    return q


@pytest.fixture(scope="module")
def run(ml100k_small_dir: Path, quantize_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One trained, evaluated and reported run with both protocols and the stat codes."""
    run = tmp_path_factory.mktemp("run")
    train_all(SECTION, ml100k_small_dir, run, codes=quantize_dir)
    evaluate_all(run, ml100k_small_dir)
    write_report(run, ml100k_small_dir, SECTION)
    return run


def test_held_out_users_are_absent_from_ctr_training(ml100k_small_dir: Path) -> None:
    held = hold_out_users(ml100k_small_dir, 0.25, seed=0)
    inter = _inter(ml100k_small_dir)
    assert len(held) == round(0.25 * inter["user_id"].n_unique()) == 10
    np.testing.assert_array_equal(held, hold_out_users(ml100k_small_dir, 0.25, seed=0))  # seeded
    assert set(held) != set(hold_out_users(ml100k_small_dir, 0.25, seed=1))
    data = prepare(ml100k_small_dir, None, use_observed=False, held_out=held)
    for split in ("train", "valid"):
        assert not set(data.splits[split].user_ids) & set(held)
        kept = inter.filter((pl.col("split") == split) & ~pl.col("user_id").is_in(held.tolist()))
        assert len(data.splits[split].y) == kept.height  # only their rows went
    assert not set(data.fmap.users) & set(held)
    test = data.splits["test"]
    mine = np.isin(test.user_ids, held)
    assert mine.sum() == inter.filter((pl.col("split") == "test") & pl.col("user_id").is_in(held.tolist())).height
    assert np.all(test.x_cat[mine, 0] == len(data.fmap.users))      # the OOV user index
    assert np.all(test.x_cat[~mine, 0] < len(data.fmap.users))


def test_new_users_runs_train_without_them_and_score_only_them(run: Path, ml100k_small_dir: Path) -> None:
    held = read_held_out(run)
    assert held.share == 0.25 and len(held.users) == 10
    assert held.coverage == {"userip": 1.0, "stat-full": 1.0}  # no sweep, no leakage control
    inter = _inter(ml100k_small_dir)
    n_test = inter.filter((pl.col("split") == "test") & pl.col("user_id").is_in(held.users)).height
    layout = RunLayout(run)
    new_fits = [(job, d) for job, d in layout.trained() if job.protocol == NEW_USERS]
    assert {(job.variant, job.seed) for job, _ in new_fits} == {
        (v, s) for v in ("without", "userip", "stat-full") for s in (0, 1)}
    for _, d in new_fits:
        rec = FitRecord.read(d)
        assert rec.protocol == NEW_USERS and not set(rec.fmap["users"]) & set(held.users)
        assert JobMetrics.read(d).n == n_test
    paper_dir = layout.model_dir(Job("without", "dcn", 0))
    paper = JobMetrics.read(paper_dir)
    assert paper.protocol == "paper" and paper.n == inter.filter(pl.col("split") == "test").height
    assert set(FitRecord.read(paper_dir).fmap["users"]) >= set(held.users)


def test_plan_gives_ablation_seeds_to_comparisons_not_sweeps() -> None:
    jobs = plan(SECTION, ["userip", "sweep-hobby_K8", "stat-full"], ["userip", "stat-full"])
    seeds: dict[tuple[str, str], list[int]] = {}
    for j in jobs:
        seeds.setdefault((j.protocol, j.variant), []).append(j.seed)
    assert seeds == {("paper", "without"): [0, 1], ("paper", "userip"): [0, 1], ("paper", "stat-full"): [0, 1],
                     ("paper", "sweep-hobby_K8"): [0],
                     (NEW_USERS, "without"): [0, 1], (NEW_USERS, "userip"): [0, 1], (NEW_USERS, "stat-full"): [0, 1]}
    assert Job("userip", "dcn", 0) in jobs and all(j.model == "dcn" for j in jobs)


def test_activity_buckets_in_metrics(run: Path, ml100k_small_dir: Path) -> None:
    inter = _inter(ml100k_small_dir)
    train_counts = Counter(inter.filter(pl.col("split") == "train")["user_id"].to_list())
    test = inter.filter(pl.col("split") == "test")
    expected = Counter("<=10" if train_counts[u] <= 10 else "11-50" if train_counts[u] <= 50 else ">50"
                       for u in test["user_id"].to_list())
    m = JobMetrics.read(RunLayout(run).model_dir(Job("without", "dcn", 0)))
    assert {b: v.rows for b, v in m.by_activity.items()} == {b: expected[b] for b in ("<=10", "11-50", ">50")}
    assert sum(v.rows for v in m.by_activity.values()) == m.n


def test_activity_bucket_edges() -> None:
    got = activity_bucket(np.array([0, 1, 10, 11, 50, 51, 900]))
    assert got.tolist() == ["<=10", "<=10", "<=10", "11-50", "11-50", ">50", ">50"]


def test_early_stopping_reads_validation_only(ml100k_small_dir: Path, tmp_path: Path) -> None:
    """Flipping every test label changes nothing about training: the stopping epoch, the
    validation history and the kept state come from the valid split alone."""
    data = prepare(ml100k_small_dir, None, use_observed=False)
    te = data.splits["test"]
    flipped = dataclasses.replace(data, splits={**data.splits, "test": dataclasses.replace(te, y=1 - te.y)})
    kw = dict(seed=2, hp=FitSettings(epochs=30, batch_size=256, lr=1e-2, patience=2), variant="without")
    a, b = fit("dcn", data, tmp_path / "a", **kw), fit("dcn", flipped, tmp_path / "b", **kw)
    assert (a.best_epoch, a.val_auc_history) == (b.best_epoch, b.val_auc_history)
    np.testing.assert_array_equal(Scorer(tmp_path / "a").predict_encoded(te.x_cat, te.x_dense),
                                  Scorer(tmp_path / "b").predict_encoded(te.x_cat, te.x_dense))
    hist = a.val_auc_history
    assert a.best_epoch == int(np.argmax(hist)) + 1
    # stopped `patience` epochs after the best one, or at the cap
    assert len(hist) == min(30, a.best_epoch + 2) and len(hist) < 30


def test_report_sections(run: Path) -> None:
    report = RunLayout(run).report.read_text()
    for heading in ("## New users: held out of CTR training", "## AUC by user activity",
                    "### Paper protocol (all users)", "### New users (held out of CTR training)",
                    "## Target leakage", "## Epoch selection", "## Table 4"):
        assert heading in report
    metrics = ReportMetrics.read(run)
    new = metrics.new_users
    assert new.n_users == 10 and set(new.models["dcn"]) == {"without", "userip", "stat-full"}
    assert new.models["dcn"]["userip"].n_seeds == 2
    assert metrics.leakage["dcn"].auc_full > 0.0 and metrics.leakage["dcn"].n_seeds == 2
    assert metrics.epochs["paper"]["dcn"].cap == 2
    assert "users" not in json.loads(ReportMetrics.path(run).read_text())["new_users"]  # ids stay in held_out.json


def test_stat_codes_match_their_definition(ml100k_small_dir: Path, tmp_path: Path) -> None:
    inter = _inter(ml100k_small_dir).with_row_index("row").filter(pl.col("split") == "train")
    items = pl.read_parquet(ml100k_small_dir / "items.parquet")
    cats = dict(zip(items["item_id"].to_list(), items["categories"].to_list()))
    for history in ("full", "half"):
        codes, meta = stat_codes(ml100k_small_dir, history)
        rates, tops = {}, {}
        for (u,), rows in inter.sort(["ts", "row"]).group_by("user_id", maintain_order=True):
            rows = rows.head(math.ceil(rows.height / 2)) if history == "half" else rows
            rates[u] = rows["label"].mean()
            counts = Counter(c for i in rows["item_id"].to_list() for c in (cats[i] or "").split(" | ") if c)
            tops[u] = min(counts, key=lambda c: (-counts[c], c))
        edges = np.quantile(list(rates.values()), [0.25, 0.5, 0.75])
        vocab = sorted(set(tops.values()))
        assert meta.sizes == [("like_rate", LIKE_RATE_BINS), ("taste", len(vocab))]
        for u, like, taste in codes.iter_rows():
            assert like == int(np.searchsorted(edges, rates[u], side="right"))
            assert vocab[taste] == tops[u]
        assert codes.height == len(rates)
    out = write_stat_codes(ml100k_small_dir, tmp_path / "s", "half")
    bank = FeatureBank.from_codes_dir(out)
    assert bank.manifest.names == ["like_rate", "taste"] and bank.n_users == codes.height
    # every model's train task writes them: codes of the same data files are kept, not rewritten
    stamp = QuantizeMeta.path(out).stat().st_mtime_ns
    assert write_stat_codes(ml100k_small_dir, out, "half") == out
    assert QuantizeMeta.path(out).stat().st_mtime_ns == stamp
    write_stat_codes(ml100k_small_dir, out, "full")  # another history: rebuilt
    assert QuantizeMeta.read(out).history == "full"


def test_share_zero_turns_the_protocol_off(ml100k_small_dir: Path, quantize_dir: Path, tmp_path: Path) -> None:
    section = SECTION.model_copy(update={"new_user_share": 0.0, "stat_codes": False, "ablation_seeds": ()})
    train_all(section, ml100k_small_dir, tmp_path / "run", codes=quantize_dir / "userip")
    assert read_held_out(tmp_path / "run") is None
    assert not any(job.protocol == NEW_USERS for job, _ in RunLayout(tmp_path / "run").trained())


def test_bad_shares_and_uncovered_variants(ml100k_small_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(pydantic.ValidationError, match=r"new_user_share must be in \[0, 1\), got 1.0"):
        DownstreamConfig(new_user_share=1.0)
    with pytest.raises(InputError, match="new_user_share=0.01 holds out 0 of 40 users"):
        hold_out_users(ml100k_small_dir, 0.01, seed=0)
    # a code source without any held-out user: documented fallback, skipped and named
    held = hold_out_users(ml100k_small_dir, 0.25, seed=0)
    users = pl.read_parquet(ml100k_small_dir / "users.parquet")["user_id"].to_list()
    q = tmp_path / "q"
    write_standin([u for u in users if u not in set(held)], q / "kmeans", method="kmeans")
    shutil.copytree(write_standin(users, tmp_path / "u", method="userip"), q / "userip")
    section = SECTION.model_copy(update={"stat_codes": False, "ablation_seeds": ()})
    run = tmp_path / "run"
    train_all(section, ml100k_small_dir, run, codes=q)
    info = read_held_out(run)
    assert info.coverage == {"kmeans": 0.0, "userip": 1.0} and info.skipped == ["kmeans"]
    assert {job.variant for job, _ in RunLayout(run).trained() if job.protocol == NEW_USERS} == {"without", "userip"}
    evaluate_all(run, ml100k_small_dir)
    write_report(run, ml100k_small_dir, section)
    assert "Skipped (codes for none of the held-out users): kmeans." in RunLayout(run).report.read_text()
    assert (open_codes(q / "kmeans").lookup(held) == [4, 3]).all()  # the unknown code K_m for each
