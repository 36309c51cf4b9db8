"""A data-driven, human-readable description of every profile code.

The paper explains a centroid by its nearest vocabulary tokens (Table 7); after a short
training run those are noise. This describes a code by the people behind it instead,
from the prepared data set's train split only (what θ was trained on): how many users
hold it, which item categories and items are over-represented among their train
interactions, and how their observable attributes (users.parquet) differ from all users.

Over-representation is lift: share of the code's rows with a value / share of all
profiled users' rows with it. Only values seen at least ``min_support`` times in the
code are reported, so a lift never rests on one or two interactions.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import polars as pl

from userip.dataprep.layout import INTERACTIONS, ITEMS, USERS
from userip.dataprep.readers.base import CATEGORY_SEP

TOP = 5
# Typical items must also be in the history of this share of the code's users: ranking by lift
# alone lists items that a handful of users saw, which says little about the code.
TYPICAL_ITEM_MIN_USER_SHARE = 0.1
MAX_ATTRIBUTE_VALUES = 30  # string attributes with more distinct values (zip codes) are skipped
ID_COLUMNS = ("user_id", "user_idx")


def lift_table(hits: pl.DataFrame, value: str, base: pl.DataFrame, min_support: int,
               top: int | None = TOP) -> pl.DataFrame:
    """Over-represented values per code.

    ``hits`` has one row per (code, value) occurrence; ``base`` gives per code the
    denominator ``n`` (its interactions or users). Returns code, value, count, share,
    share_all, lift for values with count >= ``min_support`` and lift > 1, the ``top``
    highest lifts per code (all of them for ``top=None``).
    """
    total = base["n"].sum()
    overall = hits.group_by(value).agg(pl.len().alias("n_all"))
    table = (hits.group_by("code", value).agg(pl.len().alias("count"))
             .join(base, on="code").join(overall, on=value)
             .with_columns(share=pl.col("count") / pl.col("n"),
                           share_all=pl.col("n_all") / total)
             .with_columns(lift=pl.col("share") / pl.col("share_all"))
             .filter((pl.col("count") >= min_support) & (pl.col("lift") > 1.0))
             .sort(["code", "lift", "count", value], descending=[False, True, True, False])
             .select("code", value, "count", "share", "share_all", "lift"))
    return table if top is None else table.group_by("code", maintain_order=True).head(top)


def _by_code(table: pl.DataFrame, value: str, rename: str) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for row in table.to_dicts():  # at most TOP rows per code
        out.setdefault(row["code"], []).append(
            {rename: row[value], "count": row["count"], "share": round(row["share"], 4),
             "share_all": round(row["share_all"], 4), "lift": round(row["lift"], 3)})
    return out


def describe_profile(codes: pl.DataFrame, train: pl.DataFrame, items: pl.DataFrame | None,
                     user_table: pl.DataFrame | None, min_support: int) -> dict[int, dict]:
    """Description per code of one profile.

    ``codes``: user_id, code; ``train``: user_id, item_id of the train split; ``items``
    (item_id, optional title and categories) and ``user_table`` (users.parquet) may be
    missing, as they are for some sources.
    """
    users = codes.group_by("code").agg(pl.len().alias("n"))
    n_users = users["n"].sum()
    inter = train.join(codes, on="user_id").select("code", "item_id")
    per_code = inter.group_by("code").agg(pl.len().alias("n"))
    categories: dict[int, list[dict]] = {}
    titles = inter.select("item_id").unique().with_columns(title=pl.col("item_id"))
    if items is not None and "categories" in items.columns:
        tags = (inter.join(items.select("item_id", "categories"), on="item_id")
                .with_columns(pl.col("categories").str.split(CATEGORY_SEP))
                .explode("categories").drop_nulls("categories")
                .filter(pl.col("categories").str.strip_chars() != ""))
        categories = _by_code(lift_table(tags, "categories", per_code, min_support),
                              "categories", "category")
    if items is not None and "title" in items.columns:
        titles = (titles.drop("title").join(items.select("item_id", "title"), on="item_id",
                                            how="left")
                  .with_columns(pl.coalesce("title", "item_id").alias("title")))
    need = users.select("code", (pl.col("n") * TYPICAL_ITEM_MIN_USER_SHARE).ceil().alias("need"))
    typical = (lift_table(inter, "item_id", per_code, min_support, top=None)
               .join(need, on="code").filter(pl.col("count") >= pl.col("need"))
               .group_by("code", maintain_order=True).head(TOP)
               .join(titles, on="item_id", how="left", maintain_order="left"))
    typical_by_code: dict[int, list[dict]] = {}
    for row in typical.to_dicts():  # at most TOP rows per code
        typical_by_code.setdefault(row["code"], []).append(
            {"item_id": row["item_id"], "title": row["title"], "count": row["count"],
             "lift": round(row["lift"], 3)})
    attributes = _attributes(codes, users, user_table, min_support)
    n_inter = dict(zip(per_code["code"].to_list(), per_code["n"].to_list()))
    out = {}
    for code, n in zip(users["code"].to_list(), users["n"].to_list()):  # one row per code
        entry = {"users": n, "share_of_users": round(n / n_users, 4),
                 "train_interactions": n_inter.get(code, 0),
                 "over_represented_categories": categories.get(code, []),
                 "typical_items": typical_by_code.get(code, []),
                 "user_attributes": {name: per.get(code, []) for name, per in attributes.items()}}
        entry["summary"] = summary(entry)
        out[code] = entry
    return out


def _attributes(codes: pl.DataFrame, users: pl.DataFrame, table: pl.DataFrame | None,
                min_support: int) -> dict[str, Mapping[int, list[dict] | dict]]:
    """Per attribute and code: lifts of categorical values, or the median of a numeric one."""
    if table is None:
        return {}
    joined = codes.join(table, on="user_id")
    out: dict[str, Mapping[int, list[dict] | dict]] = {}
    for name, dtype in table.schema.items():
        if name in ID_COLUMNS:
            continue
        if dtype.is_numeric():
            med = joined.group_by("code").agg(pl.col(name).median().alias("median"))
            overall = joined[name].median()
            out[name] = {c: {"median": m, "median_all": overall}
                         for c, m in zip(med["code"].to_list(), med["median"].to_list())}
        elif dtype == pl.String and joined[name].n_unique() <= MAX_ATTRIBUTE_VALUES:
            hits = joined.select("code", name).drop_nulls(name)
            out[name] = _by_code(lift_table(hits, name, users, min_support), name, "value")
    return out


def summary(entry: dict) -> str:
    """One readable line, e.g. '120 users (12.7%); more often: Film-Noir x2.1 (34); …'."""
    parts = [f"{entry['users']} users ({100 * entry['share_of_users']:.1f}%)"]
    cats = entry["over_represented_categories"][:3]
    if cats:
        parts.append("more often: " + ", ".join(
            f"{c['category']} x{c['lift']:.2f} ({c['count']})" for c in cats))
    titles = entry["typical_items"][:3]
    if titles:
        parts.append("typical: " + "; ".join(t["title"] for t in titles))
    attrs = []
    for name, val in entry["user_attributes"].items():
        if isinstance(val, dict) and val.get("median") is not None:
            attrs.append(f"{name} median {val['median']:g} (all {val['median_all']:g})")
        elif isinstance(val, list) and val:
            attrs.append(f"{name} {val[0]['value']} x{val[0]['lift']:.2f} ({val[0]['count']})")
    if attrs:
        parts.append("users: " + ", ".join(attrs))
    return "; ".join(parts)


def describe_codes(codes: pl.DataFrame, profile_names: list[str], data_dir: Path,
                   min_support: int) -> dict[str, dict[int, dict]]:
    """Descriptions for every profile (a column of ``codes``) and code, from ``data_dir``."""
    data_dir = Path(data_dir)
    train = (pl.read_parquet(data_dir / INTERACTIONS,
                             columns=["user_id", "item_id", "split"])
             .filter(pl.col("split") == "train").drop("split"))
    items, user_table = (pl.read_parquet(p) if p.is_file() else None
                         for p in (data_dir / ITEMS, data_dir / USERS))
    return {name: describe_profile(codes.select("user_id", pl.col(name).alias("code")), train,
                                   items, user_table, min_support)
            for name in profile_names}
