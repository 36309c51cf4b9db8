"""TALLRec's MovieLens-100K samples, built the way the authors built theirs.

Facts of their protocol (checked row for row against their published valid/test files):
users in order of first appearance in ``u.data``; each user's ratings sorted by timestamp,
equal timestamps kept in file order (a stable sort); every position after the first 10 is
a sample whose input lists the previous 10 titles, those rated > 3 as the preference and
the rest as the unpreference (each in time order), then the target title; label rating > 3.
The last 10,000 samples of that list are split 8:1:1 in list order. Titles are the raw
ML-100K ones, "Usual Suspects, The (1995)". The ratings come from the copy inside
``recbole`` (``ml-100k.inter`` keeps ``u.data``'s line order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from userip.dataprep.readers.movielens import package_dataset_dir
from userip.errors import InputError

INSTRUCTION = ("Given the user's preference and unpreference, identify whether the user will "
               "like the target movie by answering \"Yes.\" or \"No.\".")
# The Alpaca template TALLRec trains and scores with: HEAD + input + TAIL; the answer
# follows TAIL's last newline. HEAD is the same for every sample (a cacheable prefix).
HEAD = ("Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        f"### Instruction:\n{INSTRUCTION}\n\n### Input:\n")
TAIL = "\n\n### Response:\n"
HISTORY = 10
LIKE_ABOVE = 3.0
LAST = 10_000
SPLIT = (8, 1, 1)


@dataclass(frozen=True)
class Sample:
    user_id: str
    item_id: str
    input: str
    label: int

    @property
    def output(self) -> str:
        return "Yes." if self.label else "No."

    @property
    def prompt(self) -> str:
        return HEAD + self.input + TAIL


@dataclass(frozen=True)
class Splits:
    train: list[Sample]
    valid: list[Sample]
    test: list[Sample]


def _atomic(name: str) -> pl.DataFrame:
    path = package_dataset_dir("recbole", "ml-100k") / name
    if not path.is_file():
        raise InputError("file not found", path=str(path))
    frame = pl.read_csv(path, separator="\t", quote_char=None, infer_schema=False)
    return frame.rename({c: c.split(":")[0] for c in frame.columns})


def titles() -> dict[str, str]:
    """item_id -> "title (year)" as in ML-100K's u.item."""
    items = _atomic("ml-100k.item")
    out = {r["item_id"]: f"{r['movie_title']} ({r['release_year']})"
           for r in items.iter_rows(named=True)}
    out["267"] = "unknown"  # u.item's title; recbole's copy reads "unkonwn" / "unkonwn"
    return out


def _quoted(names: list[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


def sample_input(history: Sequence[tuple[str, bool]], target: str) -> str:
    """The input field from (title, liked) of the previous interactions, oldest first, and
    the target title."""
    liked = [t for t, like in history if like]
    disliked = [t for t, like in history if not like]
    return (f"User Preference: {_quoted(liked)}\nUser Unpreference: {_quoted(disliked)}\n"
            f"Whether the user will like the target movie \"{target}\"?")


def build_samples() -> list[Sample]:
    """Every TALLRec sample of ML-100K, in the authors' list order."""
    names = titles()
    ratings = (_atomic("ml-100k.inter")
               .with_row_index("line")
               .with_columns(pl.col("rating").cast(pl.Float64),
                             pl.col("timestamp").cast(pl.Float64).cast(pl.Int64))
               .with_columns(pl.col("line").min().over("user_id").alias("first"))
               .sort(["first", "timestamp", "line"]))
    samples = []
    for (user,), rows in ratings.group_by(["user_id"], maintain_order=True):
        seq = list(zip(rows["item_id"], rows["rating"]))
        for i in range(HISTORY, len(seq)):
            item, rating = seq[i]
            history = [(names[it], r > LIKE_ABOVE) for it, r in seq[i - HISTORY:i]]
            samples.append(Sample(user, item, sample_input(history, names[item]), int(rating > LIKE_ABOVE)))
    return samples


def split_samples(samples: list[Sample]) -> Splits:
    """The last 10,000 samples, 8:1:1 in list order."""
    tail = samples[-LAST:]
    a = len(tail) * SPLIT[0] // sum(SPLIT)
    b = a + len(tail) * SPLIT[1] // sum(SPLIT)
    return Splits(tail[:a], tail[a:b], tail[b:])
