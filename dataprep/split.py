"""Train / valid / test assignment: seeded random (the paper's 8:1:1) or temporal."""

from __future__ import annotations

import polars as pl

_BUCKETS = 1_000_000


def assign_split(
    interactions: pl.DataFrame, how: str, ratios: tuple[float, float, float], seed: int
) -> pl.DataFrame:
    """Add a ``split`` column, leaving the row order as it is.

    ``random`` draws each interaction's split from a seeded hash of (user, item): the same
    interaction lands in the same split whatever else the dump holds, so a nightly dump
    with new reviews leaves old users' train histories unchanged; proportions match
    ``ratios`` up to sampling noise. ``temporal`` cuts at global time quantiles (exact
    proportions), so every valid/test interaction happens after every train one.
    """
    if how == "random":
        position = (
            pl.struct("user_id", "item_id").hash(seed=seed) % _BUCKETS
        ).cast(pl.Float64) / _BUCKETS
        positioned = interactions.with_columns(position.alias("_pos"))
        train_cut, valid_cut = ratios[0], ratios[0] + ratios[1]
    elif how == "temporal":
        n = interactions.height
        # Each row's rank in (ts, user, item) order; the rows themselves stay where they are.
        rank = pl.arg_sort_by("ts", "user_id", "item_id").arg_sort()
        positioned = interactions.with_columns((rank / n).alias("_pos"))
        train_cut, valid_cut = round(n * ratios[0]) / n, round(n * (ratios[0] + ratios[1])) / n
    else:
        raise ValueError(f"unknown split {how!r}")
    split = (
        pl.when(pl.col("_pos") < train_cut).then(pl.lit("train"))
        .when(pl.col("_pos") < valid_cut).then(pl.lit("valid"))
        .otherwise(pl.lit("test"))
    )
    return positioned.with_columns(split.alias("split")).drop("_pos")
