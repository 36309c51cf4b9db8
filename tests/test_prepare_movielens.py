"""End to end: MovieLens-100K and -1M prepared for real from the packaged files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from userip.config import PrepareConfig
from userip.dataprep.behaviour import SEPARATOR
from userip.dataprep.pipeline import prepare


def test_counts_and_table1_stats(ml100k_dir: Path) -> None:
    stats = json.loads((ml100k_dir / "stats.json").read_text())
    assert stats["raw_interactions"] == 100_000
    assert stats["raw_users"] == 943 and stats["users"] == 943
    inter = pl.read_parquet(ml100k_dir / "interactions.parquet")
    assert inter.height == stats["interactions"]
    assert inter.select(pl.struct("user_id", "item_id").n_unique()).item() == inter.height
    # every user and item survives the 5-core with at least 5 interactions
    assert inter.group_by("user_id").len()["len"].min() >= 5
    assert inter.group_by("item_id").len()["len"].min() >= 5
    assert stats["positive_rate"] == pytest.approx((inter["rating"] >= 4).mean(), abs=1e-4)
    assert inter["label"].to_list() == (inter["rating"] >= 4).cast(pl.Int8).to_list()
    assert sorted(inter["user_idx"].unique()) == list(range(943))
    assert stats["rejected_lines"] == 0


def test_split_ratios_are_8_1_1(ml100k_dir: Path) -> None:
    inter = pl.read_parquet(ml100k_dir / "interactions.parquet")
    shares = inter["split"].value_counts(normalize=True)
    share = dict(zip(shares["split"], shares["proportion"]))
    assert share["train"] == pytest.approx(0.8, abs=5e-3)
    assert share["valid"] == pytest.approx(0.1, abs=5e-3)
    assert share["test"] == pytest.approx(0.1, abs=5e-3)


def test_behaviour_text_uses_train_items_only(ml100k_dir: Path) -> None:
    inter = pl.read_parquet(ml100k_dir / "interactions.parquet")
    items = pl.read_parquet(ml100k_dir / "items.parquet")
    behaviour = pl.read_parquet(ml100k_dir / "behaviour.parquet")
    assert behaviour.height == 943
    names = items.select("item_id", pl.col("title").fill_null(  # ML-100K's "unknown" item
        pl.lit("an item in ") + pl.col("categories")))
    train = (inter.filter(pl.col("split") == "train").sort("user_idx", "ts", "item_idx")
             .join(names, on="item_id", maintain_order="left"))
    # every train item, in time order, marked with the label's feedback; nothing else
    expected = train.group_by("user_id", maintain_order=True).agg(
        (pl.col("title") + pl.when(pl.col("label") == 1).then(pl.lit(": liked"))
         .otherwise(pl.lit(": disliked"))).alias("want"))
    got = behaviour.join(expected, on="user_id")
    assert got.height == 943 and (got["items"] == got["want"]).all()
    assert (behaviour["text"] == behaviour["items"].list.join(SEPARATOR)).all()


def test_same_seed_same_output_other_seed_other_split(tmp_path: Path, ml100k_dir: Path) -> None:
    again = tmp_path / "again"
    prepare(PrepareConfig(source="movielens-100k"), again)
    for name in ("interactions", "behaviour", "users", "items"):
        assert pl.read_parquet(again / f"{name}.parquet").equals(
            pl.read_parquet(ml100k_dir / f"{name}.parquet")), name
    other = tmp_path / "other"
    prepare(PrepareConfig(source="movielens-100k", seed=7), other)
    a = pl.read_parquet(ml100k_dir / "interactions.parquet")["split"]
    b = pl.read_parquet(other / "interactions.parquet")["split"]
    assert (a != b).sum() > 1000


def test_temporal_split_puts_held_out_after_train(tmp_path: Path) -> None:
    prepare(PrepareConfig(source="movielens-100k", split="temporal"), tmp_path / "t")
    inter = pl.read_parquet(tmp_path / "t" / "interactions.parquet")
    last_train = inter.filter(pl.col("split") == "train")["ts"].max()
    assert inter.filter(pl.col("split") == "test")["ts"].min() >= last_train


@pytest.mark.slow
def test_movielens_1m_maps_codes_to_words(tmp_path: Path) -> None:
    stats = prepare(PrepareConfig(source="movielens-1m"), tmp_path / "m")
    assert stats["raw_interactions"] == 1_000_209 and stats["users"] == 6040
    users = pl.read_parquet(tmp_path / "m" / "users.parquet")
    assert set(users["age"].unique()) == {"under 18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"}
    assert "programmer" in set(users["occupation"]) and users["occupation"].null_count() == 0
    titles = pl.read_parquet(tmp_path / "m" / "items.parquet")["title"]
    assert "The Usual Suspects (1995)" in set(titles)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "userip.cli", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_writes_dataset_and_prints_stats(tmp_path: Path) -> None:
    res = _cli("prepare", "--source", "movielens-100k", "--max-users", "30", "--out", str(tmp_path / "d"))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout[: res.stdout.rindex("}") + 1])["users"] == 30
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == sorted(
        ["interactions.parquet", "items.parquet", "users.parquet", "behaviour.parquet",
         "behaviour_valid.parquet", "stats.json", "rejects.jsonl", ".userip-output"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    res = _cli("prepare", "--source", "nosuch", "--out", str(tmp_path / "x"))
    assert res.returncode != 0 and "invalid choice" in res.stderr and "Traceback" not in res.stderr
    res = _cli("prepare", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().count("\n") == 0 and "missing.yaml" in res.stderr
    res = _cli("prepare", "--source", "movielens-100k", "--min-core", "5000", "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and "min-core" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "x").exists()


def test_failed_run_keeps_previous_output(tmp_path: Path) -> None:
    out = tmp_path / "d"
    prepare(PrepareConfig(source="movielens-100k", max_users=20), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(Exception, match="min-core"):
        prepare(PrepareConfig(source="movielens-100k", min_core=5000), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_random_split_is_stable_when_users_are_added(tmp_path: Path) -> None:
    """A nightly dump with more users must not reshuffle the existing users' splits."""
    prepare(PrepareConfig(source="movielens-100k", max_users=30), tmp_path / "a")
    prepare(PrepareConfig(source="movielens-100k", max_users=60), tmp_path / "b")
    cols = ["user_id", "item_id", "split"]
    a = pl.read_parquet(tmp_path / "a" / "interactions.parquet").select(cols)
    b = pl.read_parquet(tmp_path / "b" / "interactions.parquet").select(cols)
    assert a.join(b, on=["user_id", "item_id"], suffix="_b").filter(
        pl.col("split") != pl.col("split_b")).height == 0
    ta = pl.read_parquet(tmp_path / "a" / "behaviour.parquet").drop("user_idx")
    tb = pl.read_parquet(tmp_path / "b" / "behaviour.parquet").drop("user_idx")
    assert ta.join(tb, on="user_id").filter(pl.col("text") != pl.col("text_right")).height == 0
