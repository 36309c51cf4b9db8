"""Duplicate removal and the iterative k-core filter."""

from __future__ import annotations

import polars as pl


def drop_duplicates(interactions: pl.LazyFrame) -> pl.LazyFrame:
    """Keep only the latest interaction per (user, item); ties go to the last row read.

    Expects a ``_row`` column (read order). Pass only the narrow key columns: sorting
    gigabytes of review text along with them is most of the cost otherwise.
    """
    return interactions.sort("ts", "_row").unique(["user_id", "item_id"], keep="last")


def k_core(pairs: pl.DataFrame, k: int) -> pl.DataFrame:
    """Repeatedly drop users and items with fewer than ``k`` interactions until none remain.

    ``pairs`` holds integer ``u`` and ``i`` columns only, so each pass is cheap even for
    tens of millions of rows.
    """
    while True:
        kept = pairs.filter(
            (pl.len().over("u") >= k) & (pl.len().over("i") >= k)
        )
        if kept.height == pairs.height:
            return kept
        pairs = kept
