"""Quantizers over inferred θ: the UserIP codes and the paper's ablations (Table 4)."""

from __future__ import annotations

from typing import Any

__all__ = ["quantize"]


def __getattr__(name: str) -> Any:
    """``quantize.quantize`` without importing FAISS for readers of ``quantize.layout``."""
    if name == "quantize":
        from userip.quantize.run import quantize

        return quantize
    raise AttributeError(f"module 'quantize' has no attribute {name!r}")
