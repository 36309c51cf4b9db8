"""The downstream CTR hyper-parameters, declared once for the config and the zoo (ground floor:
the config schema embeds them, `downstream` builds models from them).

Three parts, told apart by what they change:

* ``Hyper``: what a zoo model is built from (its architecture); every model reads it.
* ``FitSettings``: ``Hyper`` plus everything else one fit learns from (epochs, early
  stopping, batches, learning rate, the observed-attribute switch). A fit's record keeps
  it, and ``FitSettings.key`` is the cache key of a fit.
* ``RunSettings``: how the fits run (threads, processes, task runner); they never change
  what a fit learns, so no key holds them.

``userip.config.DownstreamConfig`` inherits ``FitSettings`` and ``RunSettings`` (a config
file keeps its flat ``downstream:`` keys) and adds which fits run.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from userip.fingerprint import hash_json


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Hyper(_Part):
    """Paper DCN settings by default: embedding 8, MLP (16, 16), dropout 0.2, 3 cross layers."""

    embedding_dim: int = Field(8, ge=1)
    mlp: tuple[int, ...] = (16, 16)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    cross_layers: int = Field(3, ge=1)


class FitSettings(Hyper):
    epochs: int = Field(50, ge=1, description="cap; the epoch is picked by early stopping on validation AUC")
    patience: int = Field(3, ge=1, description="stop after this many epochs without a better validation AUC")
    batch_size: int = Field(1024, ge=1)
    lr: float = 1e-3
    use_observed_features: bool = False

    def fit_settings(self) -> FitSettings:
        """Only the fields of ``FitSettings`` (from a subclass such as the config section)."""
        return FitSettings.model_validate(self.model_dump(include=set(FitSettings.model_fields)))

    def key(self) -> str:
        """Short hash of the fields of ``FitSettings``, equal for a subclass with the same values."""
        return hash_json(self.fit_settings().model_dump(mode="json"), digest_size=8)


class RunSettings(_Part):
    threads: int = Field(1, ge=1, description="torch/LightGBM threads per training process")
    workers: int = Field(1, ge=1, description="training processes run side by side")
    task_runner: Literal["thread", "dask", "ray"] = "thread"
