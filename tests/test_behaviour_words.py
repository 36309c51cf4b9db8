"""The review words in a behaviour phrase: the first ``n`` words, whitespace made one space.

The build reads only a review's first words (a regex up to the n-th word); the reference
here is the plain definition it replaced: normalise all whitespace, strip, split, take n.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from userip.dataprep.behaviour import behaviour_text

SPACES = [" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u2003", "\u3000", " \t "]
WORDS = ["a", "Great", "mug,", "ok!", "日本", "—", "x" * 30, "\"quoted\"", "é"]


def reference(review: pl.Expr, n: int) -> pl.Expr:
    return (review.str.replace_all(r"\s+", " ").str.strip_chars().str.split(" ")
            .list.head(n).list.join(" "))


def reviews() -> list[str | None]:
    rng = np.random.default_rng(0)
    made: list[str | None] = [None, "", " ", "\t\n", "one", " one ", "\u00a0lead and trail\u2003"]
    for _ in range(2000):
        parts = [str(rng.choice(SPACES)) if rng.random() < 0.3 else ""]
        for _ in range(int(rng.integers(0, 14))):
            parts += [str(rng.choice(WORDS)), str(rng.choice(SPACES))]
        made.append("".join(parts[:-1] if rng.random() < 0.5 else parts))
    return made


@pytest.mark.parametrize("n", [1, 3, 8])
def test_first_words_match_the_plain_definition(n: int) -> None:
    texts = reviews()
    inter = pl.DataFrame({
        "user_id": [f"u{i}" for i in range(len(texts))], "user_idx": range(len(texts)),
        "item_idx": [0] * len(texts), "ts": [0] * len(texts), "rating": [5.0] * len(texts),
        "split": ["train"] * len(texts), "review": texts,
    }, schema_overrides={"user_idx": pl.Int32, "item_idx": pl.Int32, "rating": pl.Float32})
    items = pl.DataFrame({"item_idx": [0], "title": ["Mug"], "categories": [None], "brand": [None]},
                         schema_overrides={"item_idx": pl.Int32, "categories": pl.String,
                                           "brand": pl.String})
    got = behaviour_text(inter, items, "train", label_threshold=4.0, feedback=False,
                         review_words=n)["text"]
    words = inter.select(reference(pl.col("review"), n).fill_null(""))["review"]
    want = pl.Series(["Mug" + (f' "{w}"' if w else "") for w in words])
    assert got.to_list() == want.to_list()
