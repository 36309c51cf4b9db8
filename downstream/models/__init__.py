"""The model zoo: a registry from name to model class, one module per model.

Torch models take ``(fmap: FeatureMap, hp: Hyper)`` and map ``(x_cat, x_dense)`` to
logits of shape (B,); LightGBM is the one non-torch model and has its own trainer.
"""

from __future__ import annotations

import importlib

from torch import nn

MODELS: dict[str, type] = {}
_MODULES = ("dcn", "dcnv2", "pnn", "onn", "deepfm", "autoint", "fibinet", "afn", "difm",
            "ffm", "afm", "lightgbm")


def register(name: str):
    def deco(cls: type) -> type:
        MODELS[name] = cls
        cls.model_name = name
        return cls
    return deco


def get_model(name: str) -> type:
    if name not in MODELS:
        raise KeyError(name)
    return MODELS[name]


def is_torch(name: str) -> bool:
    return issubclass(get_model(name), nn.Module)


for _m in _MODULES:
    importlib.import_module(f"downstream.models.{_m}")
