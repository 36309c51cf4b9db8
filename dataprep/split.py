"""Train / valid / test assignment: seeded random (the paper's 8:1:1) or temporal."""

from __future__ import annotations

import polars as pl


def assign_split(
    interactions: pl.DataFrame, how: str, ratios: tuple[float, float, float], seed: int
) -> pl.DataFrame:
    """Add a ``split`` column with exact global proportions.

    ``random`` shuffles rows with ``seed`` (input is first sorted by user and item, so the
    result does not depend on read order); ``temporal`` cuts at global time quantiles, so
    every valid/test interaction happens after every train one.
    """
    if how == "random":
        order = interactions.sort("user_id", "item_id").with_columns(
            pl.int_range(pl.len()).shuffle(seed=seed).alias("_rank")
        )
    elif how == "temporal":
        order = interactions.sort("ts", "user_id", "item_id").with_columns(
            pl.int_range(pl.len()).alias("_rank")
        )
    else:
        raise ValueError(f"unknown split {how!r}")
    n = interactions.height
    n_train = round(n * ratios[0])
    n_valid = round(n * ratios[1])
    split = (
        pl.when(pl.col("_rank") < n_train).then(pl.lit("train"))
        .when(pl.col("_rank") < n_train + n_valid).then(pl.lit("valid"))
        .otherwise(pl.lit("test"))
    )
    return order.with_columns(split.alias("split")).drop("_rank")
