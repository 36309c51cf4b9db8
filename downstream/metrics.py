"""Test metrics: AUC, Logloss, UAUC, AUC by user activity, and the paper's relative
improvements (Eqs. 8, 9)."""

from __future__ import annotations

from typing import cast

import numpy as np
import polars as pl
from scipy import stats
from sklearn.metrics import log_loss, roc_auc_score


def uauc(user_ids: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Per-user AUC averaged (unweighted) over users that have both labels.

    Per-user AUC from average ranks (ties count half):
    (sum of positive ranks - P(P+1)/2) / (P * N)."""
    df = pl.DataFrame({"u": user_ids, "y": labels.astype(np.int8), "s": scores.astype(np.float64)})
    per_user = (
        df.with_columns(pl.col("s").rank("average").over("u").alias("r"))
        .group_by("u", maintain_order=True)  # a fixed order, so the mean sums alike every call
        .agg(pos=pl.col("y").sum().cast(pl.Float64), n=pl.len().cast(pl.Float64),
             rank_pos=(pl.col("r") * pl.col("y")).sum())
        .filter((pl.col("pos") > 0) & (pl.col("pos") < pl.col("n")))
        .with_columns(auc=(pl.col("rank_pos") - pl.col("pos") * (pl.col("pos") + 1) / 2)
                      / (pl.col("pos") * (pl.col("n") - pl.col("pos"))))
    )
    # polars types a Series' mean as any scalar; a non-empty Float64 column's is a float
    return float(cast(float, per_user["auc"].mean())) if per_user.height else float("nan")


def ctr_metrics(user_ids: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    scores = np.clip(scores.astype(np.float64), 1e-7, 1 - 1e-7)
    return {"auc": float(roc_auc_score(labels, scores)),
            "logloss": float(log_loss(labels, scores, labels=[0, 1])),
            "uauc": uauc(user_ids, labels, scores),
            "n": int(len(labels))}


def ri_auc(model_auc: float, baseline_auc: float) -> float:
    """Paper Eq. 8: (AUC(model) - 0.5) / (AUC(baseline) - 0.5) - 1."""
    return (model_auc - 0.5) / (baseline_auc - 0.5) - 1.0


def ri_logloss(model_logloss: float, baseline_logloss: float) -> float:
    """Paper Eq. 9: (Logloss(baseline) - Logloss(model)) / Logloss(model)."""
    return (baseline_logloss - model_logloss) / model_logloss


def paired_p_value(with_codes: list[float], without: list[float]) -> float | None:
    """Two-sided paired t-test (scipy.stats.ttest_rel) over seeds; None below 2 pairs
    or when every difference is identical (the statistic is undefined)."""
    a, b = np.asarray(with_codes, float), np.asarray(without, float)
    if len(a) < 2 or len(a) != len(b) or np.allclose(a - b, (a - b)[0]):
        return None
    return float(stats.ttest_rel(a, b).pvalue)


# Activity buckets by a user's train-split interactions: <= 10, 11-50, > 50.
ACTIVITY_EDGES = (10, 50)
ACTIVITY_BUCKETS = ("<=10", "11-50", ">50")


def activity_bucket(train_counts: np.ndarray) -> np.ndarray:
    """The bucket name of each count (a user with no train row is in the first bucket)."""
    return np.asarray(ACTIVITY_BUCKETS)[np.searchsorted(ACTIVITY_EDGES, train_counts, side="left")]


def auc_by_activity(buckets: np.ndarray, user_ids: np.ndarray, labels: np.ndarray,
                    scores: np.ndarray) -> dict[str, dict[str, float | int | None]]:
    """{bucket: {auc, rows, users}}; AUC is None where the bucket's rows lack a label."""
    out: dict[str, dict[str, float | int | None]] = {}
    for name in ACTIVITY_BUCKETS:
        m = buckets == name
        y = labels[m]
        out[name] = {"auc": float(roc_auc_score(y, scores[m])) if len(np.unique(y)) == 2 else None,
                     "rows": int(m.sum()), "users": int(len(np.unique(user_ids[m])))}
    return out
