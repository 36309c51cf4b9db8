"""Quantization terms (Eqs. 4-5) and the surrogate DCN that supplies ℓ_rec (Eq. 6).

Codebooks hold one (K_m, n_m·d) matrix per profile and follow θ by EMA updates
(``codebooks``), which stand in for Eq. 4's codebook term; what reaches θ of ℓ_vec is
the β commitment term. The surrogate sees the *chosen code vector* of each profile
through a straight-through estimator, so ℓ_rec moves θ. It has no per-user id: a user
embedding of its own absorbs the user signal that ℓ_rec exists to push into θ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def commitment(flat_theta: torch.Tensor, codebook: torch.Tensor, codes: torch.Tensor
               ) -> torch.Tensor:
    """Per user ``||θ − sg[v_c]||²`` -> (B,): Eq. 4's commitment term, pulling θ to its code."""
    return (flat_theta - codebook[codes].detach()).pow(2).sum(1)


def straight_through(flat_theta: torch.Tensor, codebook: torch.Tensor,
                     codes: torch.Tensor) -> torch.Tensor:
    """Forward value v_c, gradient passed to θ: θ + sg(v_c − θ)."""
    return flat_theta + (codebook[codes] - flat_theta).detach()


class SurrogateDCN(nn.Module):
    """A small DCN (3 cross layers, embedding 8, MLP 16-16) over item and profile codes."""

    def __init__(self, n_items: int, profile_dims: list[int], emb: int = 8,
                 cross_layers: int = 3, mlp: tuple[int, ...] = (16, 16)) -> None:
        super().__init__()
        self.item = nn.Embedding(max(n_items, 1), emb)
        self.profile = nn.ModuleList(nn.Linear(d, emb) for d in profile_dims)
        width = (1 + len(profile_dims)) * emb
        self.cross_w = nn.Parameter(torch.randn(cross_layers, width) * width ** -0.5)
        self.cross_b = nn.Parameter(torch.zeros(cross_layers, width))
        layers: list[nn.Module] = []
        last = width
        for h in mlp:
            layers += [nn.Linear(last, h), nn.ReLU()]
            last = h
        self.mlp = nn.Sequential(*layers)
        self.head = nn.Linear(width + last, 1)

    def forward(self, items: torch.Tensor, profiles: list[torch.Tensor]) -> torch.Tensor:
        fields = [self.item(items)] + [proj(p) for proj, p in zip(self.profile, profiles)]
        x0 = torch.cat(fields, dim=1)
        x = x0
        for w, b in zip(self.cross_w, self.cross_b):
            x = x0 * (x @ w)[:, None] + b + x
        return self.head(torch.cat([x, self.mlp(x0)], dim=1)).squeeze(1)


def rec_loss_sum(model: SurrogateDCN, items: torch.Tensor, labels: torch.Tensor,
                 profiles: list[torch.Tensor]) -> torch.Tensor:
    """Summed BCE over the batch's train interactions (divide by the global count)."""
    logits = model(items, profiles)
    return F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="sum")
