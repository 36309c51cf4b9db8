"""Metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from userip.downstream.metrics import ctr_metrics, paired_p_value, ri_auc, ri_logloss, uauc


def test_uauc_hand_example() -> None:
    # user a: positives 0.9 and 0.4 against negative 0.5 -> 1 of 2 pairs won -> 0.5
    # user b: positive 0.7 above negative 0.2 -> 1.0
    # user c: only positives -> excluded;  user d: tied scores -> 0.5
    users = np.array(["a", "a", "a", "b", "b", "c", "c", "d", "d"])
    labels = np.array([1, 0, 1, 0, 1, 1, 1, 1, 0])
    scores = np.array([0.9, 0.5, 0.4, 0.2, 0.7, 0.1, 0.3, 0.3, 0.3])
    assert uauc(users, labels, scores) == pytest.approx((0.5 + 1.0 + 0.5) / 3)


def test_ctr_metrics_match_definitions() -> None:
    y = np.array([1, 0, 1, 0])
    p = np.array([0.8, 0.3, 0.4, 0.6])
    m = ctr_metrics(np.array(["u"] * 4), y, p)
    assert m["auc"] == pytest.approx(0.75)
    assert m["logloss"] == pytest.approx(-np.mean(np.log([0.8, 0.7, 0.4, 0.4])))
    assert m["uauc"] == pytest.approx(0.75)


def test_relative_improvements_paper_eqs_8_9() -> None:
    assert ri_auc(0.75, 0.70) == pytest.approx(0.25)          # (0.25 / 0.20) - 1
    assert ri_logloss(0.40, 0.50) == pytest.approx(0.25)      # (0.50 - 0.40) / 0.40
    assert ri_auc(0.70, 0.70) == 0.0 and ri_logloss(0.5, 0.5) == 0.0


def test_paired_p_value() -> None:
    with_codes, without = [0.71, 0.73, 0.72, 0.74], [0.70, 0.715, 0.71, 0.725]
    from scipy import stats
    assert paired_p_value(with_codes, without) == pytest.approx(stats.ttest_rel(with_codes, without).pvalue)
    assert paired_p_value([0.7], [0.6]) is None               # one pair: undefined
    assert paired_p_value([0.7, 0.8], [0.6, 0.7]) is None     # constant difference: undefined


def test_uauc_is_bit_identical_across_calls() -> None:
    """Per-user AUCs are averaged in a fixed order; a hash group-by's varying group order
    moved the mean in the last bit between calls on identical inputs."""
    rng = np.random.default_rng(0)
    users = rng.integers(0, 3000, 30_000).astype(str)
    labels, scores = rng.integers(0, 2, 30_000), rng.random(30_000)
    assert len({uauc(users, labels, scores) for _ in range(20)}) == 1
