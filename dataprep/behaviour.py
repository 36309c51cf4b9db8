"""Behaviour text per user: what the profile stage asks the LM to explain.

Each of a user's items becomes one phrase: its title (or, for an item without one, its
most specific category and its brand), the user's feedback on it (``liked`` when the
rating reaches the label threshold, else ``disliked``; no mark when the source has no
ratings) and, where the source has review text, the review's first words, as in the
paper's reference setting. Phrases are kept whole and in time order for the user's
*whole* history of the split; the profile stage packs them into token windows, never
cutting inside an item.
"""

from __future__ import annotations

import polars as pl

from userip.dataprep.readers.base import CATEGORY_SEP

SEPARATOR = "; "
LIKED, DISLIKED = "liked", "disliked"


def has_feedback(interactions: pl.DataFrame) -> bool:
    """Explicit feedback: the source rates items with more than one distinct value."""
    return interactions["rating"].drop_nulls().n_unique() > 1


def item_names(items: pl.DataFrame) -> pl.DataFrame:
    """(item_idx, name): the title, or "an item in <last category> by <brand>" without one."""
    title = pl.col("title").str.strip_chars()
    category = pl.col("categories").str.split(CATEGORY_SEP).list.last().str.strip_chars()
    brand = pl.col("brand").str.strip_chars()
    described = (
        pl.lit("an item")
        + pl.when(category.str.len_chars() > 0).then(pl.lit(" in ") + category).otherwise(pl.lit(""))
        + pl.when(brand.str.len_chars() > 0).then(pl.lit(" by ") + brand).otherwise(pl.lit(""))
    )
    name = pl.when(title.str.len_chars() > 0).then(title).otherwise(described)
    return items.select("item_idx", name.alias("name"))


def behaviour_text(interactions: pl.DataFrame, items: pl.DataFrame, split: str, *,
                   label_threshold: float, feedback: bool, review_words: int) -> pl.DataFrame:
    """One row per user with items in ``split``: ``items`` (phrases, oldest first) and
    ``text`` (the phrases joined by ``SEPARATOR``).

    Only rows of ``split`` are read, so a train text can never mention a valid/test item.
    """
    return named_behaviour_text(interactions, item_names(items), split,
                                label_threshold=label_threshold, feedback=feedback,
                                review_words=review_words)


def named_behaviour_text(interactions: pl.DataFrame, names: pl.DataFrame, split: str, *,
                         label_threshold: float, feedback: bool,
                         review_words: int) -> pl.DataFrame:
    """``behaviour_text`` with the items' names (``item_names``) worked out once, for a
    caller that makes the texts of many batches of users."""
    rows = (
        interactions.filter(pl.col("split") == split)
        .sort("user_idx", "ts", "item_idx")
        .join(names, on="item_idx", how="left", maintain_order="left")
    )
    phrase = pl.col("name").fill_null("an item")
    if feedback:
        mark = pl.when(pl.col("rating") >= label_threshold).then(pl.lit(LIKED)).otherwise(pl.lit(DISLIKED))
        phrase = phrase + pl.when(pl.col("rating").is_not_null()).then(pl.lit(": ") + mark).otherwise(pl.lit(""))
    if review_words > 0 and "review" in rows.columns:
        # The first words only are looked at: a review is read up to its n-th word, and
        # the whitespace between those words becomes one space.
        # They are a column of their own: an expression used twice would be worked out twice.
        first = rf"^\s*(\S+(?:\s+\S+){{0,{review_words - 1}}})"
        rows = rows.with_columns(pl.col("review").str.extract(first, 1)
                                 .str.replace_all(r"\s+", " ").fill_null("").alias("_words"))
        words = pl.col("_words")
        phrase = phrase + pl.when(words.str.len_chars() > 0).then(
            pl.lit(' "') + words + pl.lit('"')).otherwise(pl.lit(""))
    return (
        rows.select("user_id", "user_idx", phrase.alias("phrase"))
        .group_by("user_idx", maintain_order=True)
        .agg(pl.first("user_id"), pl.col("phrase").alias("items"))
        .select("user_id", pl.col("user_idx").cast(pl.Int32),
                pl.col("items").list.join(SEPARATOR).alias("text"), "items")
    )
