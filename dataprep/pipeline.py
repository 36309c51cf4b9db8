"""``prepare``: any source -> the normalized Parquet data set of DESIGN.md, published atomically.

Steps: read (source reader, bad rows quarantined) -> reject-ratio gate -> drop duplicate
(user, item) keeping the latest -> iterative k-core -> contiguous indices -> label ->
split -> behaviour texts (train split only; valid split for validation) -> stats.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import polars as pl

from dataprep.behaviour import behaviour_text
from dataprep.filtering import drop_duplicates, k_core
from dataprep.readers import get_reader
from dataprep.readers.base import RawData, RejectLog
from dataprep.split import assign_split
from userip.atomic import publish_dir, staging_dir
from userip.config import PrepareConfig
from userip.errors import InputError

log = logging.getLogger(__name__)

OUTPUT_FILES = (
    "interactions.parquet", "items.parquet", "users.parquet", "behaviour.parquet",
    "behaviour_valid.parquet", "stats.json", "rejects.jsonl",
)


def prepare(cfg: PrepareConfig, out_dir: Path) -> dict[str, Any]:
    """Run data prep for ``cfg.source`` and publish the data set to ``out_dir``.

    Returns the stats written to ``stats.json``. Nothing is written to ``out_dir`` unless
    the whole run succeeds.
    """
    reader = get_reader(cfg.source)
    out_dir = Path(out_dir)
    with staging_dir(out_dir) as staging:
        result = staging / "out"
        result.mkdir()
        parts = staging / "parts"
        parts.mkdir()
        with open(result / "rejects.jsonl", "w", encoding="utf-8") as sink:
            rejects = RejectLog(sink)
            raw = reader(cfg, parts, rejects)
            _check_reject_ratio(rejects, cfg.max_reject_ratio)
            stats = _build(cfg, raw, rejects, result)
        publish_dir(result, out_dir)
    log.info("prepared %s: %s", cfg.source, {k: stats[k] for k in ("users", "items", "interactions")})
    return stats


def _check_reject_ratio(rejects: RejectLog, max_ratio: float) -> None:
    for path, counts in rejects.summary().items():
        lines, bad = counts["lines"], counts["rejected"]
        if bad and bad > max_ratio * max(lines, 1):
            line, reason = rejects.first_bad[path]
            raise InputError(
                f"{bad} of {lines} lines rejected, above --max-reject-ratio {max_ratio}; "
                f"first bad line {line}: {reason} (all in rejects.jsonl)",
                path=path,
            )


def _build(cfg: PrepareConfig, raw: RawData, rejects: RejectLog, out: Path) -> dict[str, Any]:
    rows = raw.interactions.with_row_index("_row")
    n_raw = raw.interactions.select(pl.len()).collect().item()
    # Filtering works on narrow rows; review text joins back by row number at the end.
    deduped = drop_duplicates(rows.select("_row", "user_id", "item_id", "rating", "ts"))
    # Integer codes make the k-core passes cheap; the strings come back through joins.
    keyed = deduped.with_columns(
        pl.col("user_id").cast(pl.Categorical).to_physical().alias("u"),
        pl.col("item_id").cast(pl.Categorical).to_physical().alias("i"),
    ).collect(engine="streaming")
    raw_counts = {
        "raw_interactions": n_raw,
        "duplicates_dropped": n_raw - keyed.height,
        "raw_users": keyed["u"].n_unique(),
        "raw_items": keyed["i"].n_unique(),
    }
    kept = k_core(keyed.select("u", "i"), cfg.min_core)
    inter = keyed.join(kept, on=["u", "i"], how="semi").drop("u", "i")
    if cfg.max_users is not None:
        first = inter["user_id"].unique().sort().head(cfg.max_users)
        inter = inter.filter(pl.col("user_id").is_in(first.implode()))
    if inter.height == 0:
        raise InputError(
            f"no interactions left after the {cfg.min_core}-core filter "
            f"({raw_counts['raw_interactions']} before); lower --min-core"
        )

    users_idx = _index(inter, "user_id", "user_idx")
    items_idx = _index(inter, "item_id", "item_idx")
    inter = (
        inter.join(users_idx, on="user_id").join(items_idx, on="item_id")
        .with_columns((pl.col("rating") >= cfg.label_threshold).cast(pl.Int8).alias("label"))
    )
    inter = assign_split(inter, cfg.split, cfg.split_ratios, cfg.seed)
    reviews = rows.select("_row", "review").join(
        inter.lazy().select("_row"), on="_row", how="semi").collect(engine="streaming")
    inter = inter.join(reviews, on="_row", how="left").select(
        "user_id", "item_id", "user_idx", "item_idx", "rating", "ts", "label", "split", "review"
    ).sort("user_idx", "ts", "item_idx")

    meta = raw.items.unique("item_id", keep="first").collect(engine="streaming")
    items = items_idx.join(meta, on="item_id", how="left").sort("item_idx")
    users = users_idx.join(
        raw.users.unique("user_id", keep="first").collect(engine="streaming"),
        on="user_id", how="left",
    ).sort("user_idx")
    train_text = behaviour_text(inter, items, "train", cfg.behaviour_max_chars)
    valid_text = behaviour_text(inter, items, "valid", cfg.behaviour_max_chars)

    for name, frame in (
        ("interactions", inter), ("items", items), ("users", users),
        ("behaviour", train_text), ("behaviour_valid", valid_text),
    ):
        frame.write_parquet(out / f"{name}.parquet", compression="zstd")

    stats = _stats(cfg, inter, items, train_text, raw_counts, rejects)
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def _index(frame: pl.DataFrame, key: str, name: str) -> pl.DataFrame:
    """Contiguous int32 index in sorted-id order, so it is the same for the same data."""
    ids = frame.select(pl.col(key).unique().sort())
    return ids.with_row_index(name).with_columns(pl.col(name).cast(pl.Int32)).select(key, name)


def _stats(cfg: PrepareConfig, inter: pl.DataFrame, items: pl.DataFrame,
           train_text: pl.DataFrame, raw_counts: dict[str, int],
           rejects: RejectLog) -> dict[str, Any]:
    """The paper's Table 1 figures plus what filtering and quarantine removed."""
    n_users, n_items, n = inter["user_idx"].n_unique(), inter["item_idx"].n_unique(), inter.height
    split_counts = dict(inter.group_by("split").len().iter_rows())
    summary = rejects.summary()
    return {
        "source": cfg.source,
        "interactions": n,
        "users": n_users,
        "items": n_items,
        "sparsity_pct": round(100.0 * (1.0 - n / (n_users * n_items)), 4),
        "positive_rate": round(float(inter["label"].mean()), 4),
        "split": {s: split_counts.get(s, 0) for s in ("train", "valid", "test")},
        **raw_counts,
        "min_core": cfg.min_core,
        "items_missing_meta": int(items["title"].is_null().sum()),
        "users_without_behaviour_text": n_users - train_text.height,
        "behaviour_text_mean_chars": round(float(train_text["text"].str.len_chars().mean() or 0), 1),
        "rejected_lines": sum(c["rejected"] for c in summary.values()),
        "files": summary,
    }
