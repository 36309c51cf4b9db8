"""What a profile run learns and where it is: θ and its optimizer, codebooks, surrogate.

``TrainState.state_dict`` / ``load_state_dict`` serve both the resume checkpoint (with
optimizer moments and progress) and the best-epoch snapshot (what gets published). Only
tensors and plain containers go in, so checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from userip.profile_infer.codebooks import EMACodebook
from userip.profile_infer.surrogate import SurrogateDCN
from userip.profile_infer.theta import RowAdamW


@dataclass
class Progress:
    """Where training is; saved in every checkpoint."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    codebooks_ready: bool = False
    best_valid: float = float("inf")
    best_epoch: int = -1  # joint epoch saved in the best snapshot; -1 = none yet
    bad_epochs: int = 0
    reseeded: dict[str, int] = field(default_factory=dict)  # dead codes re-seeded, per profile
    surrogate_warmup: dict[str, float] = field(default_factory=dict)  # BCE before/after, constant
    done: bool = False
    sums: dict[str, float] = field(default_factory=dict)
    # LM input positions run by this process: "train" with a backward pass, "eval" without
    lm_tokens: dict[str, int] = field(default_factory=lambda: {"train": 0, "eval": 0})
    curves: list[dict] = field(default_factory=list)


@dataclass
class TrainState:
    theta: torch.Tensor              # (owned rows, T, d) on the host
    opt_theta: RowAdamW
    codebooks: list[EMACodebook]
    surrogate: SurrogateDCN
    opt_surrogate: torch.optim.Optimizer
    progress: Progress = field(default_factory=Progress)

    def state_dict(self, optimizers: bool = True) -> dict:
        """θ, codebooks and surrogate; with ``optimizers`` also moments, progress and RNG."""
        state = {"theta": self.theta,
                 "codebooks": [cb.state_dict() for cb in self.codebooks],
                 "surrogate": self.surrogate.state_dict(),
                 "epoch": self.progress.epoch}
        if optimizers:
            state |= {"opt_theta": self.opt_theta.state_dict(),
                      "opt_surrogate": self.opt_surrogate.state_dict(),
                      "progress": asdict(self.progress),
                      "torch_rng": torch.get_rng_state()}
        return state

    def load_state_dict(self, state: dict) -> None:
        self.theta.copy_(state["theta"])
        for cb, saved in zip(self.codebooks, state["codebooks"]):
            cb.load_state_dict(saved)
        self.surrogate.load_state_dict(state["surrogate"])
        if "opt_theta" in state:
            self.opt_theta.load_state_dict(state["opt_theta"])
            self.opt_surrogate.load_state_dict(state["opt_surrogate"])
            self.progress = Progress(**state["progress"])
            torch.set_rng_state(state["torch_rng"])
