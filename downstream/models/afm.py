"""AFM (Xiao et al. 2017): attention-weighted sum of pairwise element-wise products,
projected to a score, plus a linear term."""

import torch
from torch import nn

from userip.downstream.layers import FeatureEmbedding, Linear, pair_index
from userip.downstream.models import network

ATTENTION_DIM = 8


@network("afm")
class AFM(nn.Module):
    def __init__(self, fmap, hp) -> None:
        super().__init__()
        d = hp.embedding_dim
        self.embedding = FeatureEmbedding(fmap, d)
        self.linear = Linear(fmap)
        self.rows, self.cols = pair_index(fmap.n_fields)
        self.attention = nn.Sequential(nn.Linear(d, ATTENTION_DIM), nn.ReLU(),
                                       nn.Linear(ATTENTION_DIM, 1, bias=False))
        self.dropout = nn.Dropout(hp.dropout)
        self.project = nn.Linear(d, 1, bias=False)

    def forward(self, x_cat, x_dense):
        emb = self.embedding(x_cat, x_dense)
        pairs = emb[:, self.rows] * emb[:, self.cols]             # (B, P, d)
        weights = torch.softmax(self.attention(pairs), dim=1)     # (B, P, 1)
        pooled = self.dropout((weights * pairs).sum(1))
        return self.linear(x_cat, x_dense) + self.project(pooled).squeeze(1)
