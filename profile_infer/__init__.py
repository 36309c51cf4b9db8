"""Profile inference: per-user soft prompts on a frozen causal LM (paper sections 2.3-2.5)."""

from profile_infer.api import infer

__all__ = ["infer"]
