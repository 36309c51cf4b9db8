"""Amazon review dumps: the 2014, 2018 and 2023 releases (McAuley lab).

2014 and 2018 share the review format (``reviewerID``, ``asin``, ``overall``,
``unixReviewTime``) and most of the metadata one; 2014 metadata lines are Python dict
literals, 2018 ones JSON with string prices ("$12.99") and scraped HTML in text fields.
2023 keys reviews by ``user_id`` and ``parent_asin`` (the item), with millisecond times.
Items without metadata are kept: the pipeline gives them a null title.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from userip.config import PrepareConfig
from userip.dataprep.readers.base import CATEGORY_SEP, INTERACTION_SCHEMA, ITEM_SCHEMA, RawData, RejectLog
from userip.dataprep.readers.fields import (
    date_seconds,
    identifier,
    number,
    price,
    review_text,
    short_text,
    text_list,
    unix_seconds,
)
from userip.dataprep.readers.jsonl import (
    Column,
    RecordFormat,
    json_object,
    json_or_python_literal,
    read_records,
)

log = logging.getLogger(__name__)

_TEXT, _TEXTS = pl.String(), pl.List(pl.String)
_UNIX_TIME = unix_seconds("unixReviewTime")

REVIEWS_2014_2018 = RecordFormat(
    fields={"reviewerID": _TEXT, "asin": _TEXT, "overall": _TEXT, "unixReviewTime": _TEXT,
            "reviewTime": _TEXT, "reviewText": _TEXT},
    columns={
        "user_id": Column(identifier("reviewerID"), ("reviewerID",)),
        "item_id": Column(identifier("asin"), ("asin",)),
        "rating": Column(number("overall", 1, 5), ("overall",)),
        # reviewTime ("09 13, 2009") stands in when the epoch field is absent; it is parsed
        # only on those rows, which keeps the common case cheap.
        "ts": Column(pl.coalesce(_UNIX_TIME, date_seconds(
                         pl.when(_UNIX_TIME.is_null()).then(pl.col("reviewTime")), "%m %d, %Y")),
                     ("unixReviewTime", "reviewTime")),
        "review": Column(review_text("reviewText")),
    },
    schema=INTERACTION_SCHEMA,
)


def _meta_2014_2018(decode: Callable[[str], Any]) -> RecordFormat:
    """2014 calls the category lists ``categories`` (lists of paths), 2018 ``category``."""
    return RecordFormat(
        fields={"asin": _TEXT, "title": _TEXT, "brand": _TEXT, "price": _TEXT,
                "categories": _TEXTS, "category": _TEXTS, "description": _TEXTS},
        columns={
            "item_id": Column(identifier("asin"), ("asin",)),
            "title": Column(short_text("title")),
            "categories": Column(pl.coalesce(text_list(pl.col("categories"), CATEGORY_SEP),
                                             text_list(pl.col("category"), CATEGORY_SEP))),
            "brand": Column(short_text("brand")),
            "price": Column(price("price")),
            "description": Column(text_list(pl.col("description"), " ")),
        },
        schema=ITEM_SCHEMA,
        decode=decode,
    )


META_2014 = _meta_2014_2018(json_or_python_literal)
META_2018 = _meta_2014_2018(json_object)

REVIEWS_2023 = RecordFormat(
    fields={"user_id": _TEXT, "parent_asin": _TEXT, "rating": _TEXT, "timestamp": _TEXT,
            "text": _TEXT},
    columns={
        "user_id": Column(identifier("user_id"), ("user_id",)),
        "item_id": Column(identifier("parent_asin"), ("parent_asin",)),
        "rating": Column(number("rating", 1, 5), ("rating",)),
        "ts": Column(unix_seconds("timestamp", per_second=1000), ("timestamp",)),
        "review": Column(review_text("text")),
    },
    schema=INTERACTION_SCHEMA,
)

META_2023 = RecordFormat(
    fields={"parent_asin": _TEXT, "title": _TEXT, "main_category": _TEXT, "categories": _TEXTS,
            "store": _TEXT, "price": _TEXT, "description": _TEXTS},
    columns={
        "item_id": Column(identifier("parent_asin"), ("parent_asin",)),
        "title": Column(short_text("title")),
        # Many 2023 items have an empty category list; their main category stands in.
        "categories": Column(pl.coalesce(
            text_list(pl.col("categories"), CATEGORY_SEP),
            text_list(pl.concat_list(pl.col("main_category")), CATEGORY_SEP))),
        "brand": Column(short_text("store")),
        "price": Column(price("price")),  # a number, null, or the string "None"
        "description": Column(text_list(pl.col("description"), " ")),
    },
    schema=ITEM_SCHEMA,
)


def read_amazon2014(cfg: PrepareConfig, staging: Path, rejects: RejectLog) -> RawData:
    return _read(cfg, staging, rejects, REVIEWS_2014_2018, META_2014)


def read_amazon2018(cfg: PrepareConfig, staging: Path, rejects: RejectLog) -> RawData:
    return _read(cfg, staging, rejects, REVIEWS_2014_2018, META_2018)


def read_amazon2023(cfg: PrepareConfig, staging: Path, rejects: RejectLog) -> RawData:
    return _read(cfg, staging, rejects, REVIEWS_2023, META_2023)


def _read(cfg: PrepareConfig, staging: Path, rejects: RejectLog, reviews: RecordFormat,
          meta: RecordFormat) -> RawData:
    interactions = read_records(cfg.reviews, reviews, staging, rejects, role="reviews")
    if cfg.meta is None:
        log.warning("no --meta file: every item will have a null title")
        items = pl.LazyFrame(schema=ITEM_SCHEMA)
    else:
        items = read_records(cfg.meta, meta, staging, rejects, role="meta")
    # Amazon publishes nothing about reviewers beyond their id.
    return RawData(interactions, items, interactions.select("user_id").unique())
