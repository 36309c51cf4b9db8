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
    Works on the contiguous indices (item order = item id order), which join and sort
    far cheaper than the id strings.
    """
    titled = (
        interactions.filter(pl.col("split") == split)
        .select("user_id", "user_idx", "item_idx", "ts")
        .sort("user_idx", "ts", "item_idx")
        .join(items.select("item_idx", "title"), on="item_idx", how="left",
              maintain_order="left")
        .filter(pl.col("title").is_not_null() & (pl.col("title").str.len_chars() > 0))
    )
    # Characters from each title up to the user's latest one (rows are in time order).
    budget = (pl.col("title").str.len_chars() + len(SEPARATOR)).cum_sum(reverse=True)
    return (
        titled.filter(budget.over("user_idx") <= max_chars + len(SEPARATOR))
        .group_by("user_idx", maintain_order=True)
        .agg(pl.first("user_id"), pl.col("title").str.join(SEPARATOR).alias("text"))
        .select("user_id", pl.col("user_idx").cast(pl.Int32), "text")
    )
