"""The prepared data set: its files and ``stats.json``. Later stages import these names."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel

from userip.sidecar import Sidecar

INTERACTIONS = "interactions.parquet"
"""user_id, item_id, user_idx, item_idx, rating, ts, label, split, review"""
ITEMS = "items.parquet"
USERS = "users.parquet"
BEHAVIOUR = "behaviour.parquet"
"""train-split behaviour text per user: user_id, user_idx, items, text"""
BEHAVIOUR_VALID = "behaviour_valid.parquet"
REJECTS = "rejects.jsonl"
FILES = (INTERACTIONS, ITEMS, USERS, BEHAVIOUR, BEHAVIOUR_VALID, "stats.json", REJECTS)
"""Everything a data set folder holds."""


class SplitCounts(BaseModel):
    train: int
    valid: int
    test: int


class FileCounts(BaseModel):
    lines: int
    rejected: int


class DataStats(Sidecar):
    """``stats.json``: what the data set holds and what preparing it dropped."""

    FILE: ClassVar[str] = "stats.json"

    source: str
    interactions: int
    users: int
    items: int
    sparsity_pct: float
    positive_rate: float
    split: SplitCounts
    raw_interactions: int
    duplicates_dropped: int
    raw_users: int
    raw_items: int
    min_core: int
    items_missing_meta: int
    users_without_behaviour_text: int
    behaviour_text_mean_chars: float
    behaviour_items_mean: float
    behaviour_feedback: str
    behaviour_review_words: int
    rejected_lines: int
    files: dict[str, FileCounts]


def data_users(data_dir: Path) -> int | None:
    """The number of users of a prepared data set; None when it has no ``stats.json`` (the
    profile stage then names the files it misses)."""
    if not DataStats.path(data_dir).is_file():
        return None
    return DataStats.read(data_dir).users
