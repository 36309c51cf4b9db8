"""The model zoo: a registry from name to model builder, one module per model.

Every entry builds an untrained ``CTRModel`` (``downstream.models.base``) from
``(fmap, hp, seed)``. Torch networks (``@network``) map ``(x_cat, x_dense)`` to logits of
shape (B,) over the shared layers of ``downstream.layers`` and run behind the torch
adapter; a model of another library (LightGBM) implements ``CTRModel`` itself (``@model``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import partial

from torch import nn

from userip.downstream.features import FeatureMap
from userip.downstream.models.base import CTRModel
from userip.downstream.models.torch_model import TorchModel
from userip.hyper import FitSettings

Builder = Callable[[FeatureMap, FitSettings, int], CTRModel]
MODELS: dict[str, Builder] = {}
NETWORKS: dict[str, type[nn.Module]] = {}
_MODULES = ("dcn", "dcnv2", "pnn", "onn", "deepfm", "autoint", "fibinet", "afn", "difm",
            "ffm", "afm", "lightgbm")


def network(name: str):
    """Register a torch network class under ``name``, built behind ``TorchModel``."""
    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        NETWORKS[name] = cls
        MODELS[name] = partial(TorchModel, cls)
        return cls
    return deco


def model(name: str):
    """Register a ``CTRModel`` class taking ``(fmap, hp, seed)`` under ``name``."""
    def deco(cls: type[CTRModel]) -> type[CTRModel]:
        MODELS[name] = cls
        return cls
    return deco


def build(name: str, fmap: FeatureMap, hp: FitSettings, seed: int) -> CTRModel:
    """An untrained ``name`` model; KeyError for a name the zoo lacks."""
    return MODELS[name](fmap, hp, seed)


for _m in _MODULES:
    importlib.import_module(f"{__name__}.{_m}")
