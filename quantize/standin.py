"""Stand-in quantizer outputs: FAISS k-means on RANDOM vectors, in the quantizer's format.

These codes carry no information about users: the serving bench and the tests use them
to exercise the bank, the downstream zoo and the report without a profile run, and as
the no-information baseline. Every meta.json written here says so in its ``note``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np
import polars as pl

from userip.quantize.layout import ProfileSize, QuantizeMeta

NOTE = "STAND-IN: FAISS k-means on random vectors (no user information)"


def write_standin(user_ids: Sequence[str], out_dir: Path, *, method: str = "kmeans",
                  profiles: Sequence[tuple[str, int]] = (("hobby", 4), ("background", 3)),
                  dim: int = 16, seed: int = 0, sweep: dict | None = None) -> Path:
    """Write ``codes.parquet`` (or ``dense.parquet`` for method ``none``) + ``meta.json``;
    ``sweep`` ({"profile", "K"}) marks a codebook-size sweep point, as the quantizer does."""
    rng = np.random.default_rng(seed)
    n = len(user_ids)
    cols: dict[str, object] = {"user_id": list(user_ids)}
    for name, k in profiles:
        x = rng.standard_normal((n, dim)).astype(np.float32)
        if method == "none":
            for j in range(dim):
                cols[f"{name}_{j}"] = x[:, j]
            continue
        km = faiss.Kmeans(dim, k, niter=10, seed=seed, verbose=False)
        km.train(x)
        dist, idx = km.index.search(x, 1)
        cols[name] = idx[:, 0].astype(np.int32)
        cols[f"dist_{name}"] = dist[:, 0].astype(np.float32)
    kind = "dense" if method == "none" else "codes"
    meta = QuantizeMeta(method=method, kind=kind, note=NOTE, sweep=sweep,
                        profiles=[ProfileSize(name=nm, K=k) for nm, k in profiles])
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    pl.DataFrame(cols).write_parquet(meta.data_file(tmp))
    meta.write(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.rename(tmp, out_dir)
    return out_dir
