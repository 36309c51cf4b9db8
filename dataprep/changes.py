"""Which users need new profiles after a fresh dump: the nightly refresh's input."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from userip.dataprep.layout import BEHAVIOUR


def changed_users(old_data: Path, new_data: Path) -> list[str]:
    """Users of ``new_data`` whose behaviour text (train history) is new or differs from
    ``old_data``, sorted by id. Users whose history is unchanged keep their profile."""
    old = pl.read_parquet(Path(old_data) / BEHAVIOUR, columns=["user_id", "text"])
    new = pl.read_parquet(Path(new_data) / BEHAVIOUR, columns=["user_id", "text"])
    changed = new.join(old, on="user_id", how="left", suffix="_old").filter(
        pl.col("text_old").is_null() | (pl.col("text") != pl.col("text_old"))
    )
    return sorted(changed["user_id"].to_list())
