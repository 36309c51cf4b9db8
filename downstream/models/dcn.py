"""DCN (Wang et al. 2017): explicit cross network beside a deep MLP.
Paper settings: 3 cross layers, embedding 8, MLP (16, 16), dropout 0.2."""

import torch
from torch import nn

from downstream.layers import FeatureEmbedding, mlp
from downstream.models import register


class CrossNet(nn.Module):
    """x_{l+1} = x_0 * (x_l . w_l) + b_l + x_l; the layers' w and b stacked in one tensor each.

    With vector weights every layer's output is x_0 scaled per row plus a constant vector,
    x_l = a_l * x_0 + c_l (the observation behind xDeepFM's CIN), with
    a_{l+1} = a_l * (1 + x_0 . w_l) + c_l . w_l and c_{l+1} = c_l + b_l. Computing a and c
    needs only the row scalars x_0 . w_l, not L passes over (batch, width) tensors, so the
    cost of extra fields (profile codes) stays small at serving time."""

    def __init__(self, dim: int, layers: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(layers, dim) * 0.01)
        self.b = nn.Parameter(torch.zeros(layers, dim))

    def scale_shift(self, x0_dot_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a_L (batch,), c_L (width,)) from ``x0_dot_w`` = x_0 @ w.T (batch, layers)."""
        a = torch.ones_like(x0_dot_w[:, 0])
        c = torch.zeros_like(self.b[0])
        for layer, (w, b) in enumerate(zip(self.w, self.b)):
            a = a * (1 + x0_dot_w[:, layer]) + c @ w
            c = c + b
        return a, c


@register("dcn")
class DCN(nn.Module):
    def __init__(self, fmap, hp) -> None:
        super().__init__()
        self.embedding = FeatureEmbedding(fmap, hp.embedding_dim)
        self.width = fmap.n_fields * hp.embedding_dim
        self.cross = CrossNet(self.width, hp.cross_layers)
        self.deep = mlp(self.width, hp.mlp, hp.dropout, out_dim=None)
        self.head = nn.Linear(self.width + hp.mlp[-1], 1)

    def forward(self, x_cat, x_dense):
        """head([a * x_0 + c, deep(x_0)]) with the cross half folded into scalars:
        head_cross . (a * x_0 + c) = a * (x_0 . head_cross) + c . head_cross."""
        x0 = self.embedding(x_cat, x_dense).flatten(1)
        head_cross, head_deep = self.head.weight[0, :self.width], self.head.weight[0, self.width:]
        dots = x0 @ torch.cat([self.cross.w, head_cross[None, :]]).T  # (batch, layers + 1)
        a, c = self.cross.scale_shift(dots[:, :-1])
        return a * dots[:, -1] + self.deep(x0) @ head_deep + (c @ head_cross + self.head.bias[0])
