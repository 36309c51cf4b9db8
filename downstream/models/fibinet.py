"""FiBiNET (Huang et al. 2019): squeeze-excitation re-weights fields; bilinear
interactions of both the original and the re-weighted embeddings feed an MLP."""

import torch
from torch import nn

from userip.downstream.layers import FeatureEmbedding, Linear, mlp, pair_index
from userip.downstream.models import network

REDUCTION = 3


@network("fibinet")
class FiBiNet(nn.Module):
    def __init__(self, fmap, hp) -> None:
        super().__init__()
        f, d = fmap.n_fields, hp.embedding_dim
        self.embedding = FeatureEmbedding(fmap, d)
        self.linear = Linear(fmap)
        squeeze = max(1, f // REDUCTION)
        self.senet = nn.Sequential(nn.Linear(f, squeeze), nn.ReLU(), nn.Linear(squeeze, f), nn.Sigmoid())
        self.bilinear = nn.Linear(d, d, bias=False)  # "field-all": one W shared by all pairs
        self.rows, self.cols = pair_index(f)
        self.deep = mlp(2 * len(self.rows) * d, hp.mlp, hp.dropout)

    def _pairs(self, emb):
        return (self.bilinear(emb[:, self.rows]) * emb[:, self.cols]).flatten(1)

    def forward(self, x_cat, x_dense):
        emb = self.embedding(x_cat, x_dense)
        weighted = emb * self.senet(emb.mean(-1)).unsqueeze(-1)
        z = torch.cat([self._pairs(emb), self._pairs(weighted)], dim=1)
        return self.linear(x_cat, x_dense) + self.deep(z).squeeze(1)
