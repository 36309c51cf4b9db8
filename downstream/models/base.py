"""The interface every zoo model offers the trainer and the scorer, and DCN's fold.

``CTRModel``: ``fit`` on encoded train/valid splits (early-stopped on validation AUC),
``predict`` click probabilities, ``save`` into a model dir and ``load`` from one. A model
is built untrained from ``(fmap, hp, seed)``; loading fills a built model's state. Saved
state is never unpickled: torch weights are read with ``weights_only=True``, LightGBM's in
its text format.

``Foldable``: a network whose first step on x_0 (the concatenated field embeddings) is
linear, so its user-level fields fold into one row per user for a fixed user table; the
scorer then pays two gathers per request (``CTRModel.scorer``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from userip.downstream.features import Encoder, Split
from userip.downstream.layout import FitInfo

# Scores request positions of a bound encoder: (user rows, item indices) -> probabilities.
ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


class CTRModel(ABC):
    @abstractmethod
    def fit(self, train: Split, valid: Split, *, threads: int) -> FitInfo:
        """Train; keep the state of the epoch with the best validation AUC."""

    @abstractmethod
    def predict(self, x_cat: np.ndarray, x_dense: np.ndarray) -> np.ndarray:
        """Click probabilities of encoded rows, shape (n,)."""

    @abstractmethod
    def save(self, out_dir: Path) -> None:
        """Write the trained state into ``out_dir`` (an existing dir)."""

    @abstractmethod
    def load(self, model_dir: Path) -> None:
        """Replace this model's state by the one ``save`` wrote into ``model_dir``."""

    def scorer(self, encoder: Encoder) -> ScoreFn:
        """The scoring function for requests encoded by ``encoder``; a model with a faster
        path for a fixed user table returns that instead."""
        return lambda rows, items: self.predict(*encoder.take(rows, items))


class Foldable(ABC):
    """DCN's fold: first-layer rows per user and per item, then the rest of the network."""

    @abstractmethod
    def fold(self, user_cat: torch.Tensor, user_dense: torch.Tensor, item_field: int,
             n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-user rows, per-item rows) of x_0 @ M; ``user_cat`` holds every field per
        user (its ``item_field`` column is ignored), the items are ``0..n_items - 1``."""

    @abstractmethod
    def from_first_layer(self, z: torch.Tensor) -> torch.Tensor:
        """Logits from z = x_0 @ M (a user row plus an item row)."""
