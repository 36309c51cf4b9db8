"""The nightly refresh re-infers only users whose train history changed."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from userip.config import PrepareConfig
from userip.dataprep.changes import changed_users
from userip.dataprep.pipeline import prepare


def test_only_new_or_changed_users(tmp_path: Path) -> None:
    prepare(PrepareConfig(source="movielens-100k", max_users=20), tmp_path / "old")
    prepare(PrepareConfig(source="movielens-100k", max_users=25), tmp_path / "new")
    old_users = set(pl.read_parquet(tmp_path / "old" / "users.parquet")["user_id"])
    new_users = set(pl.read_parquet(tmp_path / "new" / "users.parquet")["user_id"])
    assert changed_users(tmp_path / "old", tmp_path / "new") == sorted(new_users - old_users)
    assert changed_users(tmp_path / "new", tmp_path / "new") == []

    # a user whose history changed is picked up
    behaviour = pl.read_parquet(tmp_path / "new" / "behaviour.parquet")
    victim = behaviour["user_id"][0]
    behaviour.with_columns(
        pl.when(pl.col("user_id") == victim).then(pl.col("text") + "; Heat (1995)")
        .otherwise(pl.col("text")).alias("text")
    ).write_parquet(tmp_path / "new" / "behaviour.parquet")
    assert victim in changed_users(tmp_path / "old", tmp_path / "new")
