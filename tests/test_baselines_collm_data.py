"""CoLLM's ML-1M temporal split against the authors' files (joined on (timestamp, title))."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from userip.baselines.collm_data import build_split

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden" / "collm-ml1m"
PARTS = {"train": 33_891, "valid": 10_401, "test": 7_331}


@pytest.fixture(scope="module")
def ours() -> pl.DataFrame:
    return build_split()


@pytest.fixture(scope="module")
def golden() -> pl.DataFrame:
    if not GOLDEN.is_dir():
        pytest.skip(f"golden folder {GOLDEN} absent (it lives in the shared folder beside the repo)")
    return pl.concat([pl.read_parquet(GOLDEN / f"{p}_ood2.parquet")
                      .select("uid", "label", "timestamp", "title", "his_title", "not_cold")
                      .with_columns(pl.lit(p).alias("split")) for p in PARTS])


def test_row_counts_are_the_papers(ours: pl.DataFrame):
    assert dict(ours.group_by("split").len().iter_rows()) == PARTS
    assert set(ours["label"].unique()) == {0, 1}


def test_rows_labels_and_cold_flags_match_the_golden_files(ours: pl.DataFrame, golden: pl.DataFrame):
    joined = golden.join(ours, on=["timestamp", "title"], how="inner", suffix="_ours")
    assert joined.height == golden.height == ours.height  # one-to-one on (timestamp, title)
    assert (joined["split"] == joined["split_ours"]).all()
    assert (joined["label"] == joined["label_ours"]).all()
    assert (joined["not_cold"] == joined["not_cold_ours"]).all()
    # their user ids are a re-indexing of ML-1M's: one to one
    pairs = joined.select("uid", "user_id").unique()
    assert pairs.height == pairs["uid"].n_unique() == pairs["user_id"].n_unique()


def test_histories_match_up_to_same_second_order(ours: pl.DataFrame, golden: pl.DataFrame):
    """The authors' history holds the same titles; only same-second ratings may sit in another
    order (they sorted unstably), so compare the titles rated strictly earlier, as sets."""
    # positives of the same user in the same second as each row
    same = (ours.filter(pl.col("label") == 1).group_by("user_id", "timestamp")
            .agg(pl.col("title").alias("tie")))
    mine = ours.join(same, on=["user_id", "timestamp"], how="left")
    joined = golden.join(mine, on=["timestamp", "title"], suffix="_ours")
    for theirs, we, tie in zip(joined["his_title"].to_list(), joined["his_title_ours"].to_list(),
                               joined["tie"].to_list()):
        theirs = [t for t in theirs if t]  # their lists start with an empty padding title
        tie = set(tie or [])
        assert set(theirs) <= set(we) | tie
        assert sorted(t for t in theirs if t not in tie) == sorted(t for t in we if t not in tie)
