"""AutoInt (Song et al. 2019): stacked multi-head self-attention over fields with residual
connections, flattened into a logistic head (plus an MLP, AutoInt+)."""

import torch
from torch import nn

from userip.downstream.layers import FeatureEmbedding, mlp
from userip.downstream.models import network

HEADS, LAYERS = 2, 2


@network("autoint")
class AutoInt(nn.Module):
    def __init__(self, fmap, hp) -> None:
        super().__init__()
        d = hp.embedding_dim
        self.embedding = FeatureEmbedding(fmap, d)
        self.attn = nn.ModuleList(nn.MultiheadAttention(d, HEADS, batch_first=True) for _ in range(LAYERS))
        self.head = nn.Linear(fmap.n_fields * d, 1)
        self.deep = mlp(fmap.n_fields * d, hp.mlp, hp.dropout)

    def forward(self, x_cat, x_dense):
        emb = self.embedding(x_cat, x_dense)
        x = emb
        for layer in self.attn:
            x = torch.relu(layer(x, x, x, need_weights=False)[0] + x)
        return (self.head(x.flatten(1)) + self.deep(emb.flatten(1))).squeeze(1)
