"""Duplicate removal and the iterative k-core filter, on integer id codes.

Both take dense non-negative codes (``0..n-1`` per id kind, below ``2**32``) and return
row positions, so they run as a few numpy sorts and counts: no string is hashed, and no
review text moves until the rows to keep are known.
"""

from __future__ import annotations

import numpy as np


def latest_per_pair(user: np.ndarray, item: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Positions (ascending) of the latest interaction per (user, item); ties between
    equal times go to the last row read."""
    if len(user) == 0:
        return np.zeros(0, np.int64)
    # Stable sorts: by time, then by pair, leaves each pair's rows in (time, row) order.
    by_time = np.argsort(ts, kind="stable")
    pair = (user.astype(np.uint64) << np.uint64(32)) | item.astype(np.uint64)
    order = by_time[np.argsort(pair[by_time], kind="stable")]
    grouped = pair[order]
    last = np.append(grouped[1:] != grouped[:-1], True)
    return np.sort(order[last])


def k_core(user: np.ndarray, item: np.ndarray, k: int) -> np.ndarray:
    """Positions (ascending) of the rows left once users and items with fewer than ``k``
    interactions have been dropped repeatedly until none remain."""
    rows = np.arange(len(user))
    while True:
        kept = (np.bincount(user)[user] >= k) & (np.bincount(item)[item] >= k)
        if kept.all():
            return rows
        rows, user, item = rows[kept], user[kept], item[kept]
