"""Codebook collapse guard: re-seed codes that (almost) no user is assigned to.

A code that no θ is nearest to gets no gradient from ℓ_vec, so it never comes back on
its own; at a high learning rate every user can end on one code per profile. The fix is
the one k-means uses for empty clusters (e.g. scikit-learn's relocation of empty
clusters): move each dead centroid onto the θ that its current centroid serves worst,
i.e. the user farthest from the centroid it is assigned to. That user then sits at
distance 0 from the new code and the largest quantization errors shrink. No randomness:
ties are broken by row order, so the guard is deterministic.
"""

from __future__ import annotations

import numpy as np
import torch

from profile_infer.outputs import assign_codes

CHUNK = 65536  # θ rows assigned at a time: no full per-profile copy of a huge table


def assign_chunked(theta: torch.Tensor, sl: slice, codebook: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Nearest code and its distance for profile slice ``sl`` of every θ row."""
    codes, dists = [], []
    for start in range(0, len(theta), CHUNK):
        part = theta[start: start + CHUNK, sl].reshape(-1, codebook.shape[1]).numpy()
        c, d = assign_codes(part, codebook)
        codes.append(c)
        dists.append(d)
    return np.concatenate(codes), np.concatenate(dists)


def dead_threshold(n_users: int, min_share: float) -> int:
    """Users a code needs to count as alive: at least one, and ``min_share`` of all."""
    return max(1, int(np.ceil(min_share * n_users)))


def reseed_dead_codes(theta: torch.Tensor, sl: slice, codebook: np.ndarray,
                      min_share: float = 0.0) -> tuple[np.ndarray, list[int]]:
    """Return (new codebook, re-seeded code ids, once per round) for one profile.

    Dead codes (fewer users than ``dead_threshold``) are re-seeded, in code order, onto
    the users farthest from their assigned centroid, skipping a user whose move would
    leave its own code with no user. Rounds repeat (at most K) while a re-seed leaves
    another code dead, so after the guard every code has a user whenever θ has at
    least K distinct rows.
    """
    book = codebook.astype(np.float32, copy=True)
    k = len(book)
    need = dead_threshold(len(theta), min_share)
    reseeded: list[int] = []
    for _ in range(k):
        codes, dist = assign_chunked(theta, sl, book)
        counts = np.bincount(codes, minlength=k)
        dead = np.flatnonzero(counts < need)
        if not len(dead):
            break
        order = np.argsort(-dist, kind="stable")  # worst-served users first
        taken = 0
        for row in order:
            if taken == len(dead):
                break
            own = codes[row]
            if counts[own] <= 1 or own in dead:
                continue  # moving it would empty its code, or its code is being re-seeded
            book[dead[taken]] = theta[row, sl].reshape(-1).numpy()
            counts[own] -= 1
            taken += 1
        if not taken:
            break
        reseeded.extend(dead[:taken].tolist())
    return book, reseeded
