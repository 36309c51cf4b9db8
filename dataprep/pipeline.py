"""``prepare``: any source -> the normalized Parquet data set of DESIGN.md, published atomically.

Steps: read (source reader, bad rows quarantined) -> reject-ratio gate -> drop duplicate
(user, item) keeping the latest -> iterative k-core -> contiguous indices -> label ->
split -> behaviour texts (train split only; valid split for validation) -> stats.
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from userip.atomic import keep_beside, publish_dir, staging_dir
from userip.config import PrepareConfig
from userip.dataprep.behaviour import has_feedback, item_names, named_behaviour_text
from userip.dataprep.filtering import k_core, latest_per_pair
from userip.dataprep.layout import BEHAVIOUR, BEHAVIOUR_VALID, INTERACTIONS, ITEMS, REJECTS, USERS, DataStats
from userip.dataprep.readers import get_reader
from userip.dataprep.readers.base import RawData, RejectLog
from userip.dataprep.split import assign_split
from userip.errors import InputError

log = logging.getLogger(__name__)

# A batch of published rows holds about this many bytes of review text plus ``ROW_BYTES``
# a row (ids, numbers, its behaviour phrase), in whole users (a long history can make one
# longer): one batch's texts are what the build holds at a time. A data set of one batch
# (the MovieLens sets; Amazon dumps up to ~250k reviews) is written as it always was.
BATCH_BYTES = 128 << 20
ROW_BYTES = 96
_ZSTD_LEVEL = 1
_LZ4 = pa.ipc.IpcWriteOptions(compression="lz4")
_ARROW = pl.CompatLevel.newest()  # string views, handed to pyarrow without a copy


def prepare(cfg: PrepareConfig, out_dir: Path) -> dict[str, Any]:
    """Run data prep for ``cfg.source`` and publish the data set to ``out_dir``.

    Returns the stats written to ``stats.json``. Nothing is written to ``out_dir`` unless
    the whole run succeeds.
    """
    reader = get_reader(cfg.source)
    out_dir = Path(out_dir)
    with staging_dir(out_dir, stage="prepare") as staging:
        result = staging / "out"
        result.mkdir()
        parts = staging / "parts"
        parts.mkdir()
        with open(result / REJECTS, "w", encoding="utf-8") as sink:
            rejects = RejectLog(sink)
            raw = reader(cfg, parts, rejects)
            sink.flush()
            _check_reject_ratio(rejects, cfg.max_reject_ratio, result / REJECTS, out_dir)
            stats = _build(cfg, raw, rejects, result, parts)
        publish_dir(result, out_dir, stage="prepare")
    log.info("prepared %s: %s", cfg.source, {k: stats[k] for k in ("users", "items", "interactions")})
    return stats


def _check_reject_ratio(rejects: RejectLog, max_ratio: float, log_file: Path,
                        out_dir: Path) -> None:
    """Refuse a run with too many bad lines; the reject log is then kept beside ``out_dir``."""
    for path, counts in rejects.summary().items():
        lines, bad = counts["lines"], counts["rejected"]
        if bad and bad > max_ratio * max(lines, 1):
            line, reason = rejects.first_bad[path]
            kept = keep_beside(log_file, out_dir, REJECTS)
            raise InputError(
                f"{bad} of {lines} lines rejected, above --max-reject-ratio {max_ratio}; "
                f"first bad line {line}: {reason} (all in {kept})",
                path=path,
            )


def _build(cfg: PrepareConfig, raw: RawData, rejects: RejectLog, out: Path,
           parts: Path) -> dict[str, Any]:
    """Filter, index, split and write the data set; ``parts`` (the reader's files behind
    ``raw``) is deleted once read.

    Numbers are held in memory, texts a batch at a time: for every raw row the codes of its
    ids, its time, rating and review length (``_Keys``, 24 bytes a row), then for the kept
    rows only. The published rows are cut into batches of whole users (``BATCH_BYTES``),
    one pass over the reader's rows puts each batch's review texts in a file of its own
    (``_spool``), then each batch is assembled, its behaviour texts made, and written.
    """
    keys = _read_keys(raw.interactions)
    unique_rows = latest_per_pair(keys.user, keys.item, keys.ts)
    raw_counts = {
        "raw_interactions": len(keys.user),
        "duplicates_dropped": len(keys.user) - len(unique_rows),
        "raw_users": int(np.count_nonzero(np.bincount(keys.user))),
        "raw_items": int(np.count_nonzero(np.bincount(keys.item))),
    }
    rows = unique_rows[k_core(keys.user[unique_rows], keys.item[unique_rows], cfg.min_core)]
    del unique_rows
    users_idx, user_idx = _index(keys.user[rows], keys.users, "user_id", "user_idx")
    if cfg.max_users is not None:
        users_idx = users_idx.head(cfg.max_users)
        first = user_idx < cfg.max_users
        rows, user_idx = rows[first], user_idx[first]
    if len(rows) == 0:
        raise InputError(
            f"no interactions left after the {cfg.min_core}-core filter "
            f"({raw_counts['raw_interactions']} before); lower --min-core"
        )
    items_idx, item_idx = _index(keys.item[rows], keys.items, "item_id", "item_idx")
    # From here on only the kept rows' numbers are needed: the raw rows' arrays go.
    ts, rating, review_bytes = keys.ts[rows], keys.rating.gather(rows), keys.review_bytes[rows]
    del keys
    # The published order: by user, then time, then item (polars: 2x faster than lexsort).
    by = pl.DataFrame({"user_idx": user_idx, "ts": ts, "item_idx": item_idx})
    order = by.select(pl.arg_sort_by("user_idx", "ts", "item_idx")).to_series().to_numpy()
    del by
    rows, user_idx, item_idx = rows[order], user_idx[order], item_idx[order]
    numbers = pl.DataFrame({"rating": rating.gather(order), "ts": ts[order]})
    bounds = _batch_bounds(user_idx, review_bytes[order].astype(np.int64) + ROW_BYTES)
    del ts, rating, review_bytes, order

    users = users_idx
    if raw.users.collect_schema().names() != ["user_id"]:  # the source has user attributes
        users = users_idx.join(
            raw.users.unique("user_id", keep="first").collect(engine="streaming"),
            on="user_id", how="left",
        ).sort("user_idx")
    spool = parts.with_name("spool")
    reviews = _spool(raw.interactions, rows, bounds, spool)
    del rows
    names, missing_meta = _write_items(items_idx, raw.items, out / ITEMS)
    with ThreadPoolExecutor(1) as pool, ThreadPoolExecutor(1) as writes:
        # Everything raw is read: deleting the parts (kernel time) runs beside the batches.
        removed = pool.submit(shutil.rmtree, parts)
        if cfg.split == "temporal":  # ranks over all rows; the indices sort as the ids do
            whole_split = assign_split(
                pl.DataFrame({"user_id": user_idx, "item_id": item_idx, "ts": numbers["ts"]}),
                cfg.split, cfg.split_ratios, cfg.seed)["split"].cast(_SPLITS)
        feedback = has_feedback(numbers)
        text_args = dict(label_threshold=cfg.label_threshold, feedback=feedback,
                         review_words=cfg.behaviour_review_words)
        writers = {name: _BatchWriter(out / name, len(reviews), writes)
                   for name in (INTERACTIONS, BEHAVIOUR, BEHAVIOUR_VALID)}
        totals = _Totals()
        for texts, start, end in zip(reviews, bounds[:-1], bounds[1:]):
            inter = pl.DataFrame({
                "user_id": users_idx["user_id"].gather(user_idx[start:end]),
                "item_id": items_idx["item_id"].gather(item_idx[start:end]),
                "user_idx": user_idx[start:end],
                "item_idx": item_idx[start:end],
                "rating": numbers["rating"].slice(start, end - start),
                "ts": numbers["ts"].slice(start, end - start),
            }).with_columns((pl.col("rating") >= cfg.label_threshold).cast(pl.Int8).alias("label"))
            if cfg.split == "temporal":
                inter = inter.with_columns(whole_split.slice(start, end - start).cast(pl.String))
            else:
                inter = assign_split(inter, cfg.split, cfg.split_ratios, cfg.seed)
            inter = inter.with_columns(_batch_reviews(texts))
            train_text = named_behaviour_text(inter, names, "train", **text_args)
            valid_text = named_behaviour_text(inter, names, "valid", **text_args)
            totals.add(inter, train_text)
            for name, frame in ((INTERACTIONS, inter), (BEHAVIOUR, train_text),
                                (BEHAVIOUR_VALID, valid_text)):
                writers[name].add(frame)
            del inter, train_text, valid_text
        _write(users, out / USERS)
        for writer in writers.values():
            writer.close()
        removed.result()
    shutil.rmtree(spool)

    stats = _stats(cfg, totals, users_idx.height, items_idx.height, missing_meta, raw_counts,
                   rejects, feedback)
    DataStats.model_validate(stats).write(out)
    return stats


@dataclass
class _Keys:
    """What filtering and ordering need of every raw row, in row order: the codes of its
    user and item ids, its time, rating and review length in bytes (which sizes the
    batches). The codes are dense, in categories private to this run; ``users`` and
    ``items`` are empty Series of those categorical types, which keep each code's id
    (polars frees categories no Series uses)."""

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    rating: pl.Series
    review_bytes: np.ndarray
    users: pl.Series
    items: pl.Series


def _read_keys(frame: pl.LazyFrame) -> _Keys:
    """``_Keys`` of ``frame``, read a batch at a time into arrays sized once: a query
    collected whole keeps every part it read mapped, and the review column it measures
    would count in this process's memory; a concatenation would hold everything twice.
    The ids become codes as they are read, so no id string is held per row."""
    n = frame.select(pl.len()).collect().item()
    users, items = (pl.Series(dtype=pl.Categorical(pl.Categories.random())) for _ in range(2))
    user, item = np.empty(n, np.uint32), np.empty(n, np.uint32)
    ts, review_bytes = np.empty(n, np.int64), np.empty(n, np.uint32)
    ratings = [pl.Series("rating", [], pl.Float32)]
    start = 0
    for batch in frame.select(
        pl.col("user_id").cast(users.dtype).to_physical(),
        pl.col("item_id").cast(items.dtype).to_physical(),
        "rating", "ts", pl.col("review").str.len_bytes().fill_null(0).alias("review_bytes"),
    ).collect_batches():
        end = start + batch.height
        for array, column in ((user, "user_id"), (item, "item_id"), (ts, "ts"),
                              (review_bytes, "review_bytes")):
            array[start:end] = batch[column].to_numpy()
        ratings.append(batch["rating"])
        start = end
    return _Keys(user, item, ts, pl.concat(ratings), review_bytes, users, items)


_SPLITS = pl.Enum(["train", "valid", "test"])


def _write_items(items_idx: pl.DataFrame, meta: pl.LazyFrame, path: Path) -> tuple[pl.DataFrame, int]:
    """Write ``items.parquet``: each item of ``items_idx`` with its first line of ``meta``
    (nulls without one), in index order, a slice at a time. Returns the items' names
    (``item_names``) and how many have no title. Only the kept items' lines are held, once,
    and only here: the batches need the names, not the descriptions."""
    lines = meta.filter(pl.col("item_id").is_in(items_idx["item_id"].implode())).collect(engine="streaming")
    first = lines.select("item_id").with_row_index("_line").unique("item_id", keep="first")
    line = items_idx.join(first, on="item_id", how="left", maintain_order="left")["_line"]
    lines = lines.drop("item_id")
    # A quarter of a batch of lines a slice: a slice is held about three times over (the
    # gathered rows, their Arrow copy, the Parquet writer's pages) beside the lines.
    per_slice = max(1, BATCH_BYTES // 4 * max(lines.height, 1) // max(int(lines.estimated_size()), 1))
    names, missing = [], 0
    with ThreadPoolExecutor(1) as writes:
        writer = _BatchWriter(path, -(-items_idx.height // per_slice), writes)
        for start in range(0, items_idx.height, per_slice):
            batch = pl.concat([items_idx.slice(start, per_slice),
                               lines.gather(line.slice(start, per_slice))], how="horizontal")
            names.append(item_names(batch))
            missing += batch["title"].null_count()
            writer.add(batch)
        writer.close()
    return pl.concat(names), missing


def _batch_bounds(user_idx: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Where the batches of the published rows start, then the end: about ``BATCH_BYTES``
    of ``weights`` each, cut only where a user's rows begin (``user_idx`` is sorted)."""
    user_starts = np.flatnonzero(np.r_[True, user_idx[1:] != user_idx[:-1]])
    before = (np.cumsum(weights) - weights)[user_starts]  # the weight of the rows before
    at = np.searchsorted(before, np.arange(0, int(weights.sum()), BATCH_BYTES))
    return np.append(np.unique(user_starts[at[at < len(user_starts)]]), len(user_idx))


def _spool(frame: pl.LazyFrame, rows: np.ndarray, bounds: np.ndarray,
           folder: Path) -> list[Path]:
    """Put the review text of each published row (``rows``: its row number in ``frame``,
    in published order), with its published position, in the file of its batch; one pass
    over ``frame`` in row order, a chunk at a time. Returns the batches' files."""
    folder.mkdir()
    position: np.ndarray = np.full(int(rows.max()) + 1, -1, np.int32 if len(rows) < 2**31 else np.int64)
    position[rows] = np.arange(len(rows))
    paths = [folder / f"reviews-{batch:06d}.arrow" for batch in range(len(bounds) - 1)]
    writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}
    offset = 0
    try:
        for chunk in frame.select("review").collect_batches():
            at = position[offset:offset + chunk.height]
            offset += chunk.height
            kept = np.flatnonzero(at >= 0)
            if not len(kept):
                continue
            batch = np.searchsorted(bounds, at[kept], side="right") - 1
            grouped = np.argsort(batch, kind="stable")
            kept, batch = kept[grouped], batch[grouped]
            texts = pl.DataFrame({"pos": at[kept], "review": chunk["review"].gather(kept)})
            texts = texts.to_arrow()  # compact: views would carry the whole chunk's text
            cuts = np.flatnonzero(np.diff(batch)) + 1
            for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(batch)]):
                b = int(batch[lo])
                if b not in writers:
                    writers[b] = pa.ipc.new_file(paths[b], texts.schema, options=_LZ4)
                writers[b].write_table(texts.slice(lo, hi - lo))
    finally:
        for writer in writers.values():
            writer.close()
    return paths


def _batch_reviews(path: Path) -> pl.Series:
    """The review texts of one batch, in published order, from their file (which holds
    each of the batch's positions once)."""
    texts = pl.read_ipc(path)
    path.unlink()
    return texts.sort("pos")["review"]


class _BatchWriter:
    """One Parquet file written a batch at a time on ``pool`` (one thread, so in order,
    beside the next batch's assembly). A data set of one batch is written by polars as it
    always was; several go through pyarrow's Parquet writer, a row group or more a batch."""

    def __init__(self, path: Path, batches: int, pool: ThreadPoolExecutor) -> None:
        self.path, self.batches, self.pool = path, batches, pool
        self.writer: pq.ParquetWriter | None = None
        self.pending: list[Future[None]] = []

    def add(self, frame: pl.DataFrame) -> None:
        while self.pending:  # at most one batch waits for the disk: memory stays bounded
            self.pending.pop(0).result()
        if self.batches == 1:
            self.pending.append(self.pool.submit(_write, frame.rechunk(), self.path))
            return
        table = frame.to_arrow(compat_level=_ARROW)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema, compression="zstd",
                                           compression_level=_ZSTD_LEVEL)
        self.pending.append(self.pool.submit(self.writer.write_table, table))

    def close(self) -> None:
        while self.pending:
            self.pending.pop(0).result()
        if self.writer is not None:
            self.writer.close()


@dataclass
class _Totals:
    """What ``stats.json`` needs of the batches, summed over them."""

    rows: int = 0
    positives: int = 0
    split: Counter[str] = field(default_factory=Counter)
    users_with_text: int = 0
    text_chars: int = 0
    text_items: int = 0

    def add(self, inter: pl.DataFrame, train_text: pl.DataFrame) -> None:
        self.rows += inter.height
        self.positives += int(inter["label"].sum())
        self.split.update(dict(inter.group_by("split").len().iter_rows()))
        self.users_with_text += train_text.height
        self.text_chars += int(train_text["text"].str.len_chars().sum())
        self.text_items += int(train_text["items"].list.len().sum())


def _write(frame: pl.DataFrame, path: Path) -> None:
    """zstd level 1: 19% less CPU than the default level 3 for the 2M-review benchmark's
    interactions file (2.9 vs 3.6 s, on the critical path), for a 3.5% larger file."""
    frame.write_parquet(path, compression="zstd", compression_level=_ZSTD_LEVEL)


def _index(codes: np.ndarray, ids: pl.Series, key: str,
           name: str) -> tuple[pl.DataFrame, np.ndarray]:
    """Contiguous int32 index over the ids of ``codes`` (codes of ``ids``' categories), in
    sorted-id order so it is the same for the same data: the ``(key, name)`` table and the
    index of each of ``codes``."""
    present = np.flatnonzero(np.bincount(codes))
    assert isinstance(ids.dtype, pl.Categorical)
    table = pl.DataFrame({key: ids.dtype.categories.to_series().gather(present), "_code": present})
    table = table.sort(key).with_row_index(name)
    lookup = np.empty(len(present) and int(present[-1]) + 1, np.int32)
    lookup[table["_code"].to_numpy()] = table[name].to_numpy()
    return table.select(key, pl.col(name).cast(pl.Int32)), lookup[codes]


def _stats(cfg: PrepareConfig, totals: _Totals, n_users: int, n_items: int, missing_meta: int,
           raw_counts: dict[str, int], rejects: RejectLog, feedback: bool) -> dict[str, Any]:
    """The paper's Table 1 figures plus what filtering and quarantine removed."""
    n, texts = totals.rows, totals.users_with_text
    summary = rejects.summary()
    return {
        "source": cfg.source,
        "interactions": n,
        "users": n_users,
        "items": n_items,
        "sparsity_pct": round(100.0 * (1.0 - n / (n_users * n_items)), 4),
        "positive_rate": round(totals.positives / n, 4),
        "split": {s: totals.split.get(s, 0) for s in ("train", "valid", "test")},
        **raw_counts,
        "min_core": cfg.min_core,
        "items_missing_meta": missing_meta,
        "users_without_behaviour_text": n_users - texts,
        "behaviour_text_mean_chars": round(totals.text_chars / texts if texts else 0.0, 1),
        "behaviour_items_mean": round(totals.text_items / texts if texts else 0.0, 1),
        "behaviour_feedback": (f"each item marked liked (rating >= {cfg.label_threshold:g}) or disliked"
                               if feedback else "none: the source has no ratings (implicit feedback)"),
        "behaviour_review_words": cfg.behaviour_review_words,
        "rejected_lines": sum(c["rejected"] for c in summary.values()),
        "files": summary,
    }
