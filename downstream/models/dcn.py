"""DCN (Wang et al. 2017): explicit cross network beside a deep MLP.
Paper settings: 3 cross layers, embedding 8, MLP (16, 16), dropout 0.2."""

import torch
from torch import nn

from downstream.layers import FeatureEmbedding, mlp
from downstream.models import register


class CrossNet(nn.Module):
    """x_{l+1} = x_0 * (x_l . w_l) + b_l + x_l; the layers' w and b stacked in one tensor each."""

    def __init__(self, dim: int, layers: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(layers, dim) * 0.01)
        self.b = nn.Parameter(torch.zeros(layers, dim))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for w, b in zip(self.w, self.b):
            x = torch.addcmul(b + x, x0, (x @ w).unsqueeze(1))
        return x


@register("dcn")
class DCN(nn.Module):
    def __init__(self, fmap, hp) -> None:
        super().__init__()
        self.embedding = FeatureEmbedding(fmap, hp.embedding_dim)
        width = fmap.n_fields * hp.embedding_dim
        self.cross = CrossNet(width, hp.cross_layers)
        self.deep = mlp(width, hp.mlp, hp.dropout, out_dim=None)
        self.head = nn.Linear(width + hp.mlp[-1], 1)

    def forward(self, x_cat, x_dense):
        x0 = self.embedding(x_cat, x_dense).flatten(1)
        return self.head(torch.cat([self.cross(x0), self.deep(x0)], dim=1)).squeeze(1)
