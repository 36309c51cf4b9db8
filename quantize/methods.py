"""Ablation quantizers over one profile's θ (paper Table 4): k-means, agglomerative, none."""

from __future__ import annotations

import numpy as np
from sklearn.cluster import AgglomerativeClustering
from sklearn.decomposition import PCA

from userip.profile_infer.codebooks import assign_codes, kmeans_codebook


def kmeans_codes(flat: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FAISS k-means centroids, then nearest-centroid codes and distances."""
    cents = kmeans_codebook(flat, k, seed)
    codes, dist = assign_codes(flat, cents)
    return codes, dist, cents


def agglomerative_codes(flat: np.ndarray, k: int, seed: int,
                        max_users: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ward clustering (on a seeded sample when large), cluster means as centroids, FAISS
    nearest-centroid assignment for every user."""
    if len(flat) < k:
        raise ValueError(f"codebook size {k} exceeds the {len(flat)} users")
    fit = flat
    if len(flat) > max_users:
        fit = flat[np.random.default_rng(seed).choice(len(flat), max_users, replace=False)]
    labels = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(fit)
    cents = np.stack([fit[labels == c].mean(0) for c in range(k)]).astype(np.float32)
    codes, dist = assign_codes(flat, cents)
    return codes, dist, cents


def pca_dense(flat: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """θ itself, reduced to ``dim`` dense floats (at most users-1 / θ width)."""
    dim = min(dim, flat.shape[1], max(len(flat) - 1, 1))
    return PCA(n_components=dim, random_state=seed).fit_transform(flat).astype(np.float32)
