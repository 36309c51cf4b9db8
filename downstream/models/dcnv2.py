"""DCN-V2 (Wang et al. 2021): full-matrix cross layers x_{l+1} = x_0 * (W_l x_l + b_l) + x_l,
in parallel with an MLP."""

import torch
from torch import nn

from userip.downstream.layers import FeatureEmbedding, mlp
from userip.downstream.models import network


@network("dcnv2")
class DCNv2(nn.Module):
    def __init__(self, fmap, hp) -> None:
        super().__init__()
        self.embedding = FeatureEmbedding(fmap, hp.embedding_dim)
        width = fmap.n_fields * hp.embedding_dim
        self.cross = nn.ModuleList(nn.Linear(width, width) for _ in range(hp.cross_layers))
        self.deep = mlp(width, hp.mlp, hp.dropout, out_dim=None)
        self.head = nn.Linear(width + hp.mlp[-1], 1)

    def forward(self, x_cat, x_dense):
        x0 = self.embedding(x_cat, x_dense).flatten(1)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        return self.head(torch.cat([x, self.deep(x0)], dim=1)).squeeze(1)
