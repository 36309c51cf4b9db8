"""Behaviour text per user: what the profile stage asks the LM to explain."""

from __future__ import annotations

import polars as pl

SEPARATOR = "; "


def behaviour_text(
    interactions: pl.DataFrame, items: pl.DataFrame, split: str, max_chars: int
) -> pl.DataFrame:
    """Titles of a user's ``split`` items, oldest first, keeping the most recent ones that
    fit in ``max_chars``. Items without a title (meta missing) are left out.

    Only rows of ``split`` are read, so a train text can never mention a valid/test item.
    """
    titled = (
        interactions.filter(pl.col("split") == split)
        .select("user_id", "user_idx", "item_id", "ts")
        .join(items.select("item_id", "title"), on="item_id", how="left")
        .filter(pl.col("title").is_not_null() & (pl.col("title").str.len_chars() > 0))
    )
    budget = (
        pl.col("title").str.len_chars() + len(SEPARATOR)
    ).cum_sum().over("user_id", order_by=[pl.col("ts"), pl.col("item_id")], descending=True)
    return (
        titled.filter(budget <= max_chars + len(SEPARATOR))
        .sort("user_idx", "ts", "item_id")
        .group_by("user_id", "user_idx", maintain_order=True)
        .agg(pl.col("title").str.join(SEPARATOR).alias("text"))
        .with_columns(pl.col("user_idx").cast(pl.Int32))
    )
