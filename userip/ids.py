"""String ids -> positions in a fixed vocabulary: the hot step of scoring and bank lookups."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


class IdIndex:
    """Positions of ids in a vocabulary hashed once; ids not in it get ``len(self)``.

    Queries are wrapped in an object-dtype ``pd.Index`` before ``get_indexer``: given a raw
    object array, pandas 3 infers its ``str`` dtype and converts the whole query on every
    call, which measured ~3x slower for 10,000 ids (2.1 vs 0.7 ms on the 2-core box)."""

    def __init__(self, ids: Sequence[str] | np.ndarray) -> None:
        self._index = pd.Index(np.asarray(ids, dtype=object), dtype=object)
        if not self._index.is_unique:
            raise ValueError("an IdIndex needs unique ids")

    def __len__(self) -> int:
        return len(self._index)

    @property
    def ids(self) -> np.ndarray:
        """The vocabulary as an object array, in position order."""
        return self._index.to_numpy()

    def positions(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """int64 position of each id; ``len(self)`` for ids not in the vocabulary."""
        query = pd.Index(np.asarray(ids, dtype=object), dtype=object, copy=False)
        pos = self._index.get_indexer(query).astype(np.int64, copy=False)
        pos[pos < 0] = len(self._index)
        return pos
