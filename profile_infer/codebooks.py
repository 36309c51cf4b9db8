"""Codebooks: k-means initialisation and the collapse guard that keeps every code in use.

A code that no θ is nearest to gets no gradient from ℓ_vec, so it never comes back on its
own; at a high learning rate the codebook can drift away from θ until every user sits on
one code per profile (MovieLens-100K, lr 0.03: 940 of 943 users). Moving a dead code onto
one outlier user (k-means' usual empty-cluster fix) revives it for that user only. The
guard here splits the code that serves the most users instead: seeded k-means on its
users' θ places it and the dead codes inside the crowd, so the crowd is shared out.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch

from profile_infer.outputs import assign_chunked

SPLIT_ROWS = 65536  # users of the crowded code sampled for the split's k-means


def kmeans_codebook(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """FAISS k-means centroids (K, dim) of the rows of ``x``."""
    if len(x) < k:
        raise ValueError(f"codebook size {k} exceeds the {len(x)} users with a profile")
    km = faiss.Kmeans(x.shape[1], k, niter=25, seed=seed, verbose=False,
                      max_points_per_centroid=1 << 20)
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return km.centroids.copy()


def dead_threshold(n_users: int, min_share: float) -> int:
    """Users a code needs to count as alive: at least one, and ``min_share`` of all."""
    return max(1, int(np.ceil(min_share * n_users)))


def reseed_dead_codes(theta: torch.Tensor, sl: slice, codebook: np.ndarray,
                      min_share: float = 0.0, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """Return (new codebook, re-seeded code ids, once per round) for one profile.

    Each round, dead codes (fewer users than ``dead_threshold``) and the code with the
    most users are replaced by seeded k-means centroids of that code's users (a sample of
    at most ``SPLIT_ROWS``); the crowded code keeps the centroid nearest its old place.
    Rounds repeat (at most K) while a code is still dead.
    """
    book = codebook.astype(np.float32, copy=True)
    k = len(book)
    need = dead_threshold(len(theta), min_share)
    reseeded: list[int] = []
    for round_ in range(k):
        codes, _ = assign_chunked(theta, sl, book)
        counts = np.bincount(codes, minlength=k)
        dead = np.flatnonzero(counts < need)
        crowded = int(np.argmax(counts))
        members = np.flatnonzero(codes == crowded)
        parts = min(len(dead) + 1, len(members))
        if not len(dead) or parts < 2:
            break
        if len(members) > SPLIT_ROWS:
            rng = np.random.default_rng(seed + round_)
            members = np.sort(rng.choice(members, SPLIT_ROWS, replace=False))
        x = theta[torch.from_numpy(members), sl].reshape(len(members), -1).numpy()
        cents = kmeans_codebook(x, parts, seed + round_)
        keep = int(np.argmin(((cents - book[crowded]) ** 2).sum(1)))
        book[crowded] = cents[keep]
        fresh = dead[: parts - 1]
        book[fresh] = np.delete(cents, keep, axis=0)
        reseeded.extend(fresh.tolist())
    return book, reseeded
