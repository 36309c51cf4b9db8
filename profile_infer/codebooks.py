"""Codebooks: nearest-code assignment, k-means initialisation, EMA updates, collapse guard.

Assignment is FAISS flat L2 (on GPU when FAISS has one). Codebooks are initialised by
k-means on θ and then follow θ by exponential-moving-average k-means updates (VQ-VAE's
EMA variant): each code moves towards the mean of the θ rows assigned to it in recent
batches, so a code always sits inside the cloud of its users, and a code that gets no
user keeps its place instead of drifting on stale optimizer momentum (plain Adam on the
codebook did drift, and collapsed every user onto one code at lr 0.03).

The guard remains for codes that are really dead (held by fewer than a share of the
users): it splits the code that serves the most users with seeded k-means on its users'
θ, so the crowd is shared out instead of one outlier getting a code of its own.
"""

from __future__ import annotations

import faiss
import numpy as np
import polars as pl
import torch

from userip.profile_infer import distributed as dd

SPLIT_ROWS = 65536  # users of the crowded code sampled for the split's k-means
CHUNK = 65536  # θ rows assigned at a time


def assign_codes(flat: np.ndarray, codebook: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """c = argmin_k ||θ − v_k||: codes (int32) and the Euclidean distance (float32)."""
    return _search(_code_index(codebook), flat)


def assign_chunked(theta: torch.Tensor, sl: slice, codebook: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``assign_codes`` for profile slice ``sl`` of every θ row, ``CHUNK`` rows at a time:
    no full per-profile copy of a huge table; one index serves every chunk."""
    index = _code_index(codebook)
    parts = [_search(index, theta[start: start + CHUNK, sl].reshape(-1, codebook.shape[1]).numpy())
             for start in range(0, len(theta), CHUNK)]
    return np.concatenate([c for c, _ in parts]), np.concatenate([d for _, d in parts])


def _code_index(codebook: np.ndarray):
    index: faiss.Index = faiss.IndexFlatL2(codebook.shape[1])
    if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(np.ascontiguousarray(codebook, dtype=np.float32))
    return index


def _search(index, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dist, idx = index.search(np.ascontiguousarray(flat, dtype=np.float32), 1)
    return idx[:, 0].astype(np.int32), np.sqrt(np.maximum(dist[:, 0], 0)).astype(np.float32)


def codes_frame(user_ids: list[str], theta: torch.Tensor, codebooks: list[torch.Tensor],
                names: list[str], slices) -> pl.DataFrame:
    """codes.parquet: user_id, one int32 code column per profile, ``dist_<name>``."""
    cols: dict[str, object] = {"user_id": pl.Series(user_ids, dtype=pl.String)}
    for name, cb, sl in zip(names, codebooks, slices):
        codes, dist = assign_chunked(theta, sl, cb.detach().float().cpu().numpy())
        cols[name] = pl.Series(codes, dtype=pl.Int32)
        cols[f"dist_{name}"] = pl.Series(dist, dtype=pl.Float32)
    return pl.DataFrame(cols)


def nearest_codes(flat_theta: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """c = argmin_k ||θ − v_k|| for a batch on the training device."""
    return torch.cdist(flat_theta.float(), codebook.float()).argmin(1)


def kmeans_codebook(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """FAISS k-means centroids (K, dim) of the rows of ``x``."""
    if len(x) < k:
        raise ValueError(f"codebook size {k} exceeds the {len(x)} users with a profile")
    km = faiss.Kmeans(x.shape[1], k, niter=25, seed=seed, verbose=False,
                      max_points_per_centroid=1 << 20)
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    assert km.centroids is not None  # set by train
    return km.centroids.copy()


class EMACodebook:
    """One profile's codebook ``vectors`` (K, dim), moved by EMA k-means updates.

    ``counts`` and ``sums`` are the decayed number and sum of θ rows assigned to each
    code; ``vectors = sums / counts``. Batch statistics are summed over ranks first, so
    every rank applies the same update.
    """

    def __init__(self, size: int, dim: int, decay: float, device: torch.device) -> None:
        self.decay = decay
        self.vectors = torch.zeros(size, dim, device=device)
        self.counts = torch.zeros(size, dtype=torch.float64, device=device)
        self.sums = torch.zeros(size, dim, dtype=torch.float64, device=device)

    def reset(self, vectors: torch.Tensor, counts: torch.Tensor) -> None:
        """Start the moving averages at ``vectors`` held by ``counts`` rows (batch scale)."""
        self.vectors.copy_(vectors)
        self.counts.copy_(counts)
        self.sums.copy_(vectors.double() * counts[:, None].double())

    @torch.no_grad()
    def update(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        k = len(self.vectors)
        n = torch.bincount(codes, minlength=k).double()
        s = torch.zeros_like(self.sums).index_add_(0, codes, flat.detach().double())
        n, s = dd.all_sum(n), dd.all_sum(s)
        self.counts.mul_(self.decay).add_(n, alpha=1 - self.decay)
        self.sums.mul_(self.decay).add_(s, alpha=1 - self.decay)
        held = self.counts > 1e-12  # a code with no recent user keeps its place
        self.vectors[held] = (self.sums[held] / self.counts[held, None]).float()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"vectors": self.vectors, "counts": self.counts, "sums": self.sums}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for key, value in self.state_dict().items():
            value.copy_(state[key])


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
