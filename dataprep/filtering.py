"""Duplicate removal and the iterative k-core filter, on integer id codes.

Both take dense non-negative codes (``0..n-1`` per id kind, below ``2**32``) and return
row positions, so they run as integer hashing, sorting and counting: no string is hashed,
and no review text moves until the rows to keep are known.
"""

from __future__ import annotations

import numpy as np
import polars as pl


def latest_per_pair(user: np.ndarray, item: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Positions (ascending) of the latest interaction per (user, item); ties between
    equal times go to the last row read."""
    pair = (user.astype(np.uint64) << np.uint64(32)) | item.astype(np.uint64)
    # Repeated pairs are rare: a sorted copy shows which pairs repeat (8 bytes a row; a hash
    # table over every pair would take ten times that), and only their rows get sorted.
    ordered = pl.Series(pair).sort().to_numpy()
    repeats = ordered[1:][ordered[1:] == ordered[:-1]]
    del ordered
    repeated = np.flatnonzero(pl.Series(pair).is_in(pl.Series(repeats).unique().implode()).to_numpy())
    keep = np.ones(len(pair), bool)
    if len(repeated):
        keep[repeated] = False
        # lexsort is stable: a pair's rows come out in (time, row) order, the latest last.
        order = np.lexsort((ts[repeated], pair[repeated]))
        grouped = pair[repeated][order]
        last = np.append(grouped[1:] != grouped[:-1], True)
        keep[repeated[order[last]]] = True
    return np.flatnonzero(keep)


def k_core(user: np.ndarray, item: np.ndarray, k: int) -> np.ndarray:
    """Positions (ascending) of the rows left once users and items with fewer than ``k``
    interactions have been dropped repeatedly until none remain."""
    rows = np.arange(len(user), dtype=np.int32 if len(user) < 2**31 else np.int64)
    while True:  # counted per id, looked up per row: one byte a row, not eight
        kept = (np.bincount(user) >= k)[user] & (np.bincount(item) >= k)[item]
        if kept.all():
            return rows
        rows, user, item = rows[kept], user[kept], item[kept]
