"""The Yelp Open Dataset: review.json, business.json (the items) and user.json.

Businesses become items (title = name, categories from the comma-separated string,
description = "city, state"); user.json gives a few numeric user attributes. Dates are
naive "YYYY-MM-DD HH:MM:SS" strings, read as UTC.
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from userip.config import PrepareConfig
from userip.dataprep.readers.base import CATEGORY_SEP, INTERACTION_SCHEMA, ITEM_SCHEMA, RawData, RejectLog
from userip.dataprep.readers.fields import (
    date_seconds,
    identifier,
    number,
    review_text,
    short_text,
    split_list,
    text_list,
)
from userip.dataprep.readers.jsonl import Column, RecordFormat, read_records

log = logging.getLogger(__name__)

_TEXT = pl.String()
_DATE_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d")

USER_SCHEMA = {
    "user_id": pl.String,
    "review_count": pl.Int32,
    "fans": pl.Int32,
    "average_stars": pl.Float32,
    "yelping_since_year": pl.Int32,
}

REVIEWS = RecordFormat(
    fields={"user_id": _TEXT, "business_id": _TEXT, "stars": _TEXT, "date": _TEXT,
            "text": _TEXT},
    columns={
        "user_id": Column(identifier("user_id"), ("user_id",)),
        "item_id": Column(identifier("business_id"), ("business_id",)),
        "rating": Column(number("stars", 1, 5), ("stars",)),
        "ts": Column(date_seconds(pl.col("date"), *_DATE_FORMATS), ("date",)),
        "review": Column(review_text("text")),
    },
    schema=INTERACTION_SCHEMA,
)

BUSINESS = RecordFormat(
    fields={"business_id": _TEXT, "name": _TEXT, "categories": _TEXT, "city": _TEXT,
            "state": _TEXT},
    columns={
        "item_id": Column(identifier("business_id"), ("business_id",)),
        "title": Column(short_text("name")),
        "categories": Column(text_list(split_list("categories", ","), CATEGORY_SEP)),
        "brand": Column(pl.lit(None, pl.String)),
        "price": Column(pl.lit(None, pl.Float64)),
        "description": Column(text_list(pl.concat_list(short_text("city"), short_text("state")),
                                        ", ")),
    },
    schema=ITEM_SCHEMA,
)

USERS = RecordFormat(
    fields={"user_id": _TEXT, "review_count": _TEXT, "fans": _TEXT, "average_stars": _TEXT,
            "yelping_since": _TEXT},
    columns={
        "user_id": Column(identifier("user_id"), ("user_id",)),
        "review_count": Column(number("review_count", lo=0).cast(pl.Int32, strict=False)),
        "fans": Column(number("fans", lo=0).cast(pl.Int32, strict=False)),
        "average_stars": Column(number("average_stars", 0, 5)),
        "yelping_since_year": Column(
            pl.from_epoch(date_seconds(pl.col("yelping_since"), *_DATE_FORMATS)).dt.year()),
    },
    schema=USER_SCHEMA,
)


def read_yelp(cfg: PrepareConfig, staging: Path, rejects: RejectLog) -> RawData:
    interactions = read_records(cfg.reviews, REVIEWS, staging, rejects, role="reviews")
    if cfg.business is None:
        log.warning("no --business file: every item will have a null title")
        items = pl.LazyFrame(schema=ITEM_SCHEMA)
    else:
        items = read_records(cfg.business, BUSINESS, staging, rejects, role="business")
    if cfg.users is None:
        users = interactions.select("user_id").unique()
    else:
        users = read_records(cfg.users, USERS, staging, rejects, role="users")
    return RawData(interactions, items, users)
