"""One reader per source format; ``READERS[source](cfg, staging, rejects) -> RawData``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dataprep.readers import amazon, movielens, yelp
from dataprep.readers.base import RawData, RejectLog
from userip.config import PrepareConfig

Reader = Callable[[PrepareConfig, Path, RejectLog], RawData]

READERS: dict[str, Reader] = {
    "amazon2014": amazon.read_amazon2014,
    "amazon2018": amazon.read_amazon2018,
    "amazon2023": amazon.read_amazon2023,
    "yelp": yelp.read_yelp,
    "movielens-100k": movielens.read_movielens_100k,
    "movielens-1m": movielens.read_movielens_1m,
}
