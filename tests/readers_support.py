"""Helpers for the reader tests: write fixture files, run a reader, collect what it logged."""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from userip.config import PrepareConfig
from userip.dataprep.readers import get_reader
from userip.dataprep.readers.base import RejectLog


@dataclass
class ReadResult:
    interactions: pl.DataFrame
    items: pl.DataFrame
    users: pl.DataFrame
    rejects: list[dict[str, Any]]
    log: RejectLog


def write_lines(path: Path, lines: list[bytes | str | dict], *, gz: bool = False) -> Path:
    """One record per line: dicts as JSON, strings and bytes exactly as given."""
    blob = b"".join(
        (json.dumps(x) if isinstance(x, dict) else x).encode() + b"\n" if not isinstance(x, bytes)
        else x + b"\n"
        for x in lines
    )
    path.write_bytes(gzip.compress(blob) if gz else blob)
    return path


def read(tmp_path: Path, **cfg: Any) -> ReadResult:
    """Run the registered reader for ``cfg["source"]`` as ``userip prepare`` would."""
    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    sink = io.StringIO()
    log = RejectLog(sink)
    raw = get_reader(cfg["source"])(PrepareConfig(**cfg), staging, log)
    rejects = [json.loads(line) for line in sink.getvalue().splitlines()]
    return ReadResult(raw.interactions.collect(), raw.items.collect(), raw.users.collect(),
                      rejects, log)


def reasons(result: ReadResult, path: Path) -> dict[int, str]:
    """``line -> reason`` of the rejects logged for ``path``."""
    return {r["line"]: r["reason"] for r in result.rejects if r["file"] == str(path)}
