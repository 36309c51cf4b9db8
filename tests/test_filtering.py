"""Dedupe and k-core on integer codes: the rules the pipeline relies on."""

from __future__ import annotations

import numpy as np

from userip.dataprep.filtering import k_core, latest_per_pair


def test_latest_per_pair_keeps_the_latest_and_the_last_read_on_ties() -> None:
    user = np.array([0, 0, 1, 0, 1, 0, 2], np.uint32)
    item = np.array([5, 5, 5, 6, 5, 5, 5], np.uint32)
    ts = np.array([30, 10, 7, 1, 7, 30, 4], np.int64)
    # (0, 5): rows 0 and 5 tie at ts 30, the later row wins; (1, 5): rows 2 and 4 tie.
    assert latest_per_pair(user, item, ts).tolist() == [3, 4, 5, 6]


def test_latest_per_pair_without_repeats_keeps_every_row() -> None:
    user, item = np.arange(4, dtype=np.uint32), np.zeros(4, np.uint32)
    assert latest_per_pair(user, item, np.zeros(4, np.int64)).tolist() == [0, 1, 2, 3]
    empty = np.zeros(0, np.uint32)
    assert latest_per_pair(empty, empty, np.zeros(0, np.int64)).tolist() == []


def test_k_core_drops_until_stable() -> None:
    # Users 0 and 1 rate items 0 and 1 (a 2-core); user 2's only item 2 has one rating,
    # and dropping it leaves user 2 with item 0 alone, so user 2 goes too.
    user = np.array([0, 0, 1, 1, 2, 2], np.uint32)
    item = np.array([0, 1, 0, 1, 2, 0], np.uint32)
    assert k_core(user, item, 2).tolist() == [0, 1, 2, 3]
    assert k_core(user, item, 3).tolist() == []
