"""What every source reader returns, and the log of rows it had to reject.

Readers turn a source's raw files into three lazy frames with normalized columns; the
source-independent processing (dedupe, k-core, labels, split, behaviour text) lives in
``dataprep.pipeline``. Readers never raise on a bad row: they record it here and go on.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import polars as pl

INTERACTION_SCHEMA = {
    "user_id": pl.String,
    "item_id": pl.String,
    "rating": pl.Float32,
    "ts": pl.Int64,  # UTC seconds
    "review": pl.String,  # nullable
}
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
CATEGORY_SEP = " | "  # joins an item's categories in items.parquet
ITEM_SCHEMA = {
    "item_id": pl.String,
    "title": pl.String,
    "categories": pl.String,  # "a | b | c", nullable
    "brand": pl.String,
    "price": pl.Float64,
    "description": pl.String,
}


@dataclass
class RejectLog:
    """Counts lines read and rejected per input file; bad rows go to ``rejects.jsonl``."""

    sink: IO[str]
    seen: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    first_bad: dict[str, tuple[int, str]] = field(default_factory=dict)

    def read(self, path: Path | str, n: int = 1) -> None:
        """Count ``n`` lines (good or bad) read from ``path``."""
        self.seen[str(path)] += n

    def reject(self, path: Path | str, line: int, reason: str, raw: str | None = None) -> None:
        """Log one bad line. Object addresses in ``reason`` (``ast`` errors name nodes as
        ``<ast.Name object at 0x7f..>``) are dropped: the same dump gives the same log, so
        re-preparing it keeps every downstream cache key."""
        key = str(path)
        reason = _ADDRESS.sub("", reason)
        self.rejected[key] += 1
        self.first_bad.setdefault(key, (line, reason))
        record = {"file": key, "line": line, "reason": reason}
        if raw is not None:
            record["raw"] = raw[:2000]
        self.sink.write(json.dumps(record, ensure_ascii=False) + "\n")

    def summary(self) -> dict[str, dict[str, int]]:
        return {
            f: {"lines": self.seen[f], "rejected": self.rejected[f]}
            for f in sorted(set(self.seen) | set(self.rejected))
        }


@dataclass
class RawData:
    """A source's rows before filtering. Columns follow the schemas above; ``users`` has
    ``user_id`` plus whatever observable attributes the source offers."""

    interactions: pl.LazyFrame
    items: pl.LazyFrame
    users: pl.LazyFrame
