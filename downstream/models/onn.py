"""ONN / NFFM (Yang et al. 2020): operation-aware (field-aware) embeddings; each pair of
fields interacts through the copies they keep for each other, then an MLP."""

import torch
from torch import nn

from userip.downstream.layers import FeatureEmbedding, field_aware_pairs, mlp
from userip.downstream.models import network


@network("onn")
class ONN(nn.Module):
    def __init__(self, fmap, hp) -> None:
        super().__init__()
        self.f = fmap.n_fields
        self.embedding = FeatureEmbedding(fmap, self.f * hp.embedding_dim)
        n_pairs = self.f * (self.f - 1) // 2
        self.deep = mlp((self.f + n_pairs) * hp.embedding_dim, hp.mlp, hp.dropout)

    def forward(self, x_cat, x_dense):
        emb = self.embedding(x_cat, x_dense)
        own = emb.view(emb.shape[0], self.f, self.f, -1).diagonal(dim1=1, dim2=2)  # (B, d, F)
        pairs = field_aware_pairs(emb, self.f)
        return self.deep(torch.cat([own.flatten(1), pairs.flatten(1)], dim=1)).squeeze(1)
