"""Label-derived user codes: the cheap baseline a profile has to beat, and the target-leakage check.

Two codes per user from the train split only: ``like_rate``, the user's share of positive
labels bucketed at the users' quartiles, and ``taste``, the category the user's train items
carry most often (ties: the first in name order). They are written in the quantizer's
format (``codes.parquet`` + ``meta.json``, method ``stat``), so they run through the same
feature map, bank lookup and report as every other codes variant.

``history="full"`` uses every train interaction; ``history="half"`` only the first half by
time (``ceil(n / 2)`` rows) of each user's train history. Both codes are built from train
labels the CTR model then trains on; the full-history code shares all of them, the
first-half code half. If full-history codes score better on warm users' test rows than
first-half codes, part of that gain may be the CTR model reading back its own training
labels rather than information about the user.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from userip.dataprep.layout import INTERACTIONS, ITEMS
from userip.dataprep.readers.base import CATEGORY_SEP
from userip.downstream.features import load_interactions
from userip.errors import InputError
from userip.feature_bank.bank import read_parquet
from userip.fingerprint import hash_paths
from userip.quantize.layout import CODES, ProfileSize, QuantizeMeta

History = Literal["full", "half"]
HISTORIES: tuple[History, ...] = ("full", "half")
LIKE_RATE_BINS = 4
NO_CATEGORY = "(none)"  # users none of whose train items has a category


def stat_codes(data_dir: Path, history: History) -> tuple[pl.DataFrame, QuantizeMeta]:
    """(codes frame ``user_id, like_rate, taste``, its meta) for every user with train rows."""
    data_dir = Path(data_dir)
    inter = load_interactions(data_dir)
    ts = read_parquet(data_dir / INTERACTIONS, ["ts"])["ts"]
    train = (inter.with_columns(ts=ts).with_row_index("row").filter(pl.col("split") == "train")
             .sort(["user_id", "ts", "row"]))
    if train.height == 0:
        raise InputError("no train rows to build stat codes from", path=str(data_dir / INTERACTIONS))
    if history == "half":
        rank = pl.int_range(pl.len()).over("user_id")
        train = train.filter(rank < (pl.len().over("user_id") + 1) // 2)
    items = read_parquet(data_dir / ITEMS, ["item_id", "categories"]).select(
        pl.col("item_id").cast(pl.String), pl.col("categories").cast(pl.String))
    cats = (train.join(items, on="item_id", how="left")
            .with_columns(pl.col("categories").fill_null("").str.split(CATEGORY_SEP))
            .explode("categories").filter(pl.col("categories").str.len_chars() > 0))
    top = (cats.group_by("user_id", "categories").len()
           .sort(["user_id", "len", "categories"], descending=[False, True, False])
           .group_by("user_id", maintain_order=True).first().select("user_id", taste=pl.col("categories")))
    users = (train.group_by("user_id").agg(rate=pl.col("label").cast(pl.Float64).mean())
             .join(top, on="user_id", how="left").with_columns(pl.col("taste").fill_null(NO_CATEGORY))
             .sort("user_id"))
    rate = users["rate"].to_numpy()
    edges = np.quantile(rate, np.linspace(0, 1, LIKE_RATE_BINS + 1)[1:-1])
    vocab = sorted(users["taste"].unique().to_list())
    codes = users.select(
        "user_id",
        like_rate=pl.Series(np.searchsorted(edges, rate, side="right"), dtype=pl.Int32),
        taste=pl.col("taste").replace_strict(vocab, list(range(len(vocab))), return_dtype=pl.Int32))
    meta = QuantizeMeta(
        method="stat", kind="codes", history=history,
        note=f"label-derived baseline: like-rate quartile + top category of each user's "
             f"{'full' if history == 'full' else 'first-half (by time)'} train history",
        profiles=[ProfileSize(name="like_rate", K=LIKE_RATE_BINS), ProfileSize(name="taste", K=len(vocab))],
        taste_values=vocab, like_rate_edges=[float(e) for e in edges])
    return codes, meta


def write_stat_codes(data_dir: Path, out_dir: Path, history: History) -> Path:
    """Write ``codes.parquet`` + ``meta.json`` into ``out_dir`` atomically; returns it.

    Codes already there for the same data files are kept as they are: every model's train
    task of a run calls this, side by side on Dask or Ray, and a model trained on them
    records their meta.json's hash."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    fingerprint = hash_paths([data_dir / INTERACTIONS, data_dir / ITEMS])
    if _current(out_dir, fingerprint, history):
        return out_dir
    codes, meta = stat_codes(data_dir, history)
    meta = meta.model_copy(update={"data_fingerprint": fingerprint})
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    codes.write_parquet(meta.data_file(tmp))
    meta.write(tmp)
    if out_dir.exists():  # built from other data files
        shutil.rmtree(out_dir)
    try:
        os.rename(tmp, out_dir)
    except OSError:  # another process published them first
        shutil.rmtree(tmp)
        if not _current(out_dir, fingerprint, history):
            raise
    return out_dir


def _current(out_dir: Path, fingerprint: str, history: History) -> bool:
    if not ((out_dir / CODES).is_file() and QuantizeMeta.path(out_dir).is_file()):
        return False
    meta = QuantizeMeta.read(out_dir)
    return (meta.data_fingerprint, meta.history) == (fingerprint, history)
