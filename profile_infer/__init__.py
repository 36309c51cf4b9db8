"""Profile inference: per-user soft prompts on a frozen causal LM (paper sections 2.3-2.5)."""

from __future__ import annotations

from typing import Any

__all__ = ["infer"]


def __getattr__(name: str) -> Any:
    """``profile_infer.infer`` without importing torch for readers of ``profile_infer.layout``."""
    if name == "infer":
        from userip.profile_infer.api import infer

        return infer
    raise AttributeError(f"module 'profile_infer' has no attribute {name!r}")
