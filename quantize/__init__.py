"""Quantizers over inferred θ: the UserIP codes and the paper's ablations (Table 4)."""

from quantize.run import quantize

__all__ = ["quantize"]
