"""Do the codes say something about the user? Tests against what the train split shows.

For each profile's codes: the normalized mutual information (sklearn) with the user's
like-rate (train labels, cut into quartile bins) and with their taste (the category with
the highest lift among their train interactions), against a permutation null (the same
codes, the attribute shuffled over users): its 99th percentile and the permutation
p-value. And the adjusted Rand index between two code sets (UserIP against k-means on
the same θ). Train split only: no valid/test label enters a code's evidence.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from userip.dataprep.layout import INTERACTIONS, ITEMS
from userip.dataprep.readers.base import CATEGORY_SEP

LIKE_RATE_BINS = 4
TASTE_MIN_COUNT = 3  # a category counts for a user's taste from this many interactions


def user_facts(data_dir: Path) -> pl.DataFrame:
    """Per user with train interactions: ``like_rate``, ``like_bin`` (quartile) and ``taste``."""
    data_dir = Path(data_dir)
    train = (pl.read_parquet(data_dir / INTERACTIONS,
                             columns=["user_id", "item_id", "label", "split"])
             .filter(pl.col("split") == "train"))
    rate = train.group_by("user_id").agg(pl.col("label").cast(pl.Float64).mean().alias("like_rate"))
    edges = np.quantile(rate["like_rate"].to_numpy(), np.linspace(0, 1, LIKE_RATE_BINS + 1)[1:-1])
    rate = rate.with_columns(
        pl.Series("like_bin", np.searchsorted(edges, rate["like_rate"].to_numpy(), side="right")))
    items = pl.read_parquet(data_dir / ITEMS, columns=["item_id", "categories"])
    cats = (train.join(items, on="item_id", how="left")
            .with_columns(pl.col("categories").str.split(CATEGORY_SEP).alias("category"))
            .explode("category").drop_nulls("category")
            .with_columns(pl.col("category").str.strip_chars())
            .filter(pl.col("category") != ""))
    if cats.height == 0:
        return rate.with_columns(pl.lit(None, dtype=pl.String).alias("taste"))
    share = cats.group_by("category").len().with_columns(
        (pl.col("len") / pl.col("len").sum()).alias("global_share")).drop("len")
    per_user = (cats.group_by("user_id", "category").len()
                .with_columns((pl.col("len") / pl.col("len").sum().over("user_id")).alias("share"))
                .join(share, on="category")
                .with_columns((pl.col("share") / pl.col("global_share")).alias("lift"))
                .filter(pl.col("len") >= TASTE_MIN_COUNT)
                .sort("user_id", "lift", "category", descending=[False, True, False])
                .group_by("user_id", maintain_order=True).agg(pl.first("category").alias("taste")))
    return rate.join(per_user, on="user_id", how="left")


def nmi_test(codes: np.ndarray, attribute: np.ndarray, permutations: int, seed: int) -> dict:
    """NMI of codes with an attribute, its permutation null's 99th percentile and p-value."""
    observed = normalized_mutual_info_score(attribute, codes)
    rng = np.random.default_rng(seed)
    null = np.array([normalized_mutual_info_score(rng.permutation(attribute), codes)
                     for _ in range(permutations)])
    return {"nmi": float(observed), "null_p99": float(np.quantile(null, 0.99)),
            "p_value": float((1 + (null >= observed).sum()) / (1 + permutations)),
            "users": int(len(codes))}


def code_evidence(codes: pl.DataFrame, profiles: list[str], facts: pl.DataFrame,
                  permutations: int, seed: int) -> dict:
    """{profile: {"like_rate": nmi_test, "taste": nmi_test}} over users with the fact."""
    joined = codes.join(facts, on="user_id", how="inner")
    out: dict = {}
    for m, name in enumerate(profiles):
        out[name] = {}
        for fact, column in (("like_rate", "like_bin"), ("taste", "taste")):
            part = joined.drop_nulls(column)
            if part.height < 2:
                continue
            out[name][fact] = nmi_test(part[name].to_numpy(), part[column].to_numpy(),
                                       permutations, seed + m)
    return out


def agreement(a: pl.DataFrame, b: pl.DataFrame, profiles: list[str]) -> dict[str, float]:
    """Adjusted Rand index per profile between two code sets of the same users."""
    joined = a.select("user_id", *profiles).join(b.select("user_id", *profiles), on="user_id",
                                                 suffix="_b")
    return {p: float(adjusted_rand_score(joined[p].to_numpy(), joined[f"{p}_b"].to_numpy()))
            for p in profiles}
