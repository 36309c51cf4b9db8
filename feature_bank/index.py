"""The bank's user index: string ids hashed once to 64-bit integers, sorted, searched.

A lookup hashes its query ids (numpy over the Arrow string buffers, no Python loop),
finds each hash in the sorted hashes (a directory of buckets, then a few vectorised
binary-search steps) and then compares the stored string id of every candidate row with
the query: a hash only proposes a row, the exact id decides. So equal hashes (two ids
that collide) are answered right, and an index that does not match the ids (stale,
tampered) can only make users unknown, never give one user another's codes.

On disk a published version holds the index as ``user_index.npy``: a (2, n) uint64 array,
row 0 the sorted hashes, row 1 the ``codes.parquet`` row of each; it is opened with
``np.load(mmap_mode="r")``, so only the pages a lookup touches are read.

The hash (``HASH_NAME``) is a word-at-a-time mix of the UTF-8 bytes: per 8-byte
little-endian word ``h = fmix64(h ^ word)``, starting from ``fmix64(seed ^ length * φ)``
(fmix64 is MurmurHash3's finaliser). Its ``seed`` is drawn at random per bank version
and kept in the manifest, so ids cannot be chosen ahead of time to collide.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

HASH_NAME = "fmix64-words-v1"
INDEX_FILE = "user_index.npy"
_CHUNK = 1 << 18  # ids hashed per step: bounds the temporary arrays (about 20 MB)
_ALL = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
_PHI = np.uint64(0x9E37_79B9_7F4A_7C15)
_C1 = np.uint64(0xFF51_AFD7_ED55_8CCD)
_C2 = np.uint64(0xC4CE_B9FE_1A85_EC53)


class IndexFileError(ValueError):
    """An index file that does not hold a valid index for its bank version."""


def new_seed() -> int:
    return secrets.randbits(64)


def _fmix(x: np.ndarray) -> np.ndarray:
    x ^= x >> np.uint64(33)
    x *= _C1
    x ^= x >> np.uint64(33)
    x *= _C2
    x ^= x >> np.uint64(33)
    return x


def _hash_chunk(ids: pa.LargeStringArray, seed: np.uint64) -> np.ndarray:
    offsets = np.frombuffer(ids.buffers()[1], np.int64, len(ids) + 1, 8 * ids.offset)
    lo, hi = int(offsets[0]), int(offsets[-1])
    data = np.zeros(hi - lo + 8, np.uint8)  # 8 zero bytes: every word read stays inside
    if hi > lo:
        data[:hi - lo] = np.frombuffer(ids.buffers()[2], np.uint8, hi - lo, lo)
    # the little-endian 8-byte word starting at every byte
    words = np.ndarray((hi - lo + 1,), "<u8", data, strides=(1,))
    start, length = offsets[:-1] - lo, np.diff(offsets)
    h = _fmix(length.astype(np.uint64) * _PHI ^ seed)
    live, k = np.flatnonzero(length), 0
    while live.size:
        left = length[live] - 8 * k
        w = words[start[live] + 8 * k]
        w &= _ALL >> (8 * (8 - np.minimum(left, 8))).astype(np.uint64)  # this id's bytes only
        h[live] = _fmix(h[live] ^ w)
        live, k = live[left > 8], k + 1
    return h


def hash_ids(ids: pa.Array | pl.Series, seed: int) -> np.ndarray:
    """uint64 hash of every id, ``_CHUNK`` at a time (a polars Series is converted to
    Arrow one chunk at a time). A null gets some hash; it matches no id all the same."""
    out = np.empty(len(ids), np.uint64)
    for s in range(0, len(ids), _CHUNK):
        part = ids.slice(s, _CHUNK)
        part = part.to_arrow() if isinstance(part, pl.Series) else part
        out[s:s + _CHUNK] = _hash_chunk(part.cast(pa.large_string()), np.uint64(seed))
    return out


def as_id_array(user_ids: Sequence[str] | np.ndarray) -> pa.LargeStringArray:
    """Query ids as Arrow strings; ``None``, NaN and anything not a string become null
    (they match no user)."""
    try:
        return pa.array(user_ids, pa.large_string(), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([u if isinstance(u, str) else None for u in user_ids], pa.large_string())


class UserIndex:
    """Row of each id in ``ids`` (a String Series of unique, non-null ids).

    Besides the sorted hashes it keeps a directory over their top bits (where each
    bucket of hashes starts; one to four hashes a bucket on average), so finding a hash
    is one directory read and a binary search of a few steps inside its bucket, whatever
    the number of users."""

    def __init__(self, ids: pl.Series, hashes: np.ndarray, rows: np.ndarray, seed: int) -> None:
        self._ids, self._seed = ids, seed
        self._hashes, self._rows = hashes, rows
        n = len(ids)
        self._shift = np.uint64(64 - max(n.bit_length() - 2, 1))
        self._dir = _directory(self._hashes, self._shift)
        self._steps = int(np.diff(self._dir).max()).bit_length()
        self._run = longest_run(self._hashes)

    @classmethod
    def build(cls, ids: pl.Series, seed: int) -> UserIndex:
        return cls(ids, *sorted_hashes(ids, seed), seed)

    @classmethod
    def load(cls, path: Path, ids: pl.Series, seed: int) -> UserIndex:
        """The index at ``path`` (memory-mapped), checked to be one for ``len(ids)`` rows:
        shape, dtype, sorted hashes, rows in range. Raises ``IndexFileError``."""
        try:
            table = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise
        except (ValueError, OSError) as exc:
            raise IndexFileError(f"not a valid .npy file ({exc})") from exc
        n = len(ids)
        if table.dtype != np.uint64 or table.shape != (2, n):
            raise IndexFileError(f"holds {table.dtype} {table.shape}, not uint64 (2, {n})")
        if n and (int(table[1].max()) >= n or bool((table[0][1:] < table[0][:-1]).any())):
            raise IndexFileError("hashes are not sorted or rows are out of range")
        return cls(ids, table[0], table[1], seed)

    def positions(self, user_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """int64 row of each id in ``ids``; ``len(ids)`` for ids it does not hold."""
        query = as_id_array(user_ids)
        h = hash_ids(query, self._seed)
        asked = pl.Series(query, dtype=pl.String)
        bucket = (h >> self._shift).astype(np.intp)
        lo, hi = self._dir[bucket], self._dir[bucket + 1]
        n = len(self._ids)
        for _ in range(self._steps):  # lower bound of h inside its bucket [lo, hi)
            mid = (lo + hi) >> 1
            less = self._hashes[np.minimum(mid, n - 1)] < h
            lo, hi = np.where((lo < hi) & less, mid + 1, lo), np.where(less, hi, mid)
        out = np.full(len(query), n, np.int64)
        for k in range(self._run):  # almost always one pass: no two ids share a hash
            # the candidate row; past the end the last one (the id check then decides)
            rows = self._rows[np.minimum(lo + k, n - 1)].astype(np.int64)
            same = (self._ids.gather(rows) == asked).fill_null(False).to_numpy()
            out = np.where(same, rows, out)
        return out


def _directory(sorted_hashes: np.ndarray, shift: np.uint64) -> np.ndarray:
    """int64 (2**(64 - shift) + 1,): where each bucket of the top bits starts."""
    counts = np.zeros((1 << (64 - int(shift))) + 1, np.int64)
    for s in range(0, len(sorted_hashes), _CHUNK):
        top = (sorted_hashes[s:s + _CHUNK] >> shift).astype(np.intp)  # sorted: one range
        counts[top[0] + 1:top[-1] + 2] += np.bincount(top - top[0])
    return np.cumsum(counts)


def longest_run(sorted_hashes: np.ndarray) -> int:
    """Length of the longest run of equal values: how many candidates a lookup may try."""
    tied = np.flatnonzero(sorted_hashes[1:] == sorted_hashes[:-1])  # i: hash i+1 equals hash i
    if not tied.size:
        return 1
    breaks = np.flatnonzero(np.diff(tied) != 1)  # where one run of ties ends
    return 1 + int(np.diff(np.r_[-1, breaks, tied.size - 1]).max())


def sorted_hashes(ids: pa.Array | pl.Series, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The hashes of ``ids``, sorted, and the row of each (both uint64)."""
    h = hash_ids(ids, seed)
    rows = np.argsort(h)
    h.sort()  # in place: no third array of n hashes
    return h, rows.view(np.uint64)


def write_index(path: Path, hashes: np.ndarray, rows: np.ndarray) -> None:
    """``path`` as the .npy of the (2, n) uint64 array [hashes, rows], written from the two
    arrays as they are (no stacked copy of both in memory)."""
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "<u8", "fortran_order": False, "shape": (2, len(hashes))})
        hashes.astype("<u8", copy=False).tofile(fh)
        rows.astype("<u8", copy=False).tofile(fh)
