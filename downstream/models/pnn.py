"""PNN, inner-product variant (Qu et al. 2016): pairwise inner products of field embeddings
next to the embeddings themselves, fed to an MLP."""

import torch
from torch import nn

from userip.downstream.layers import FeatureEmbedding, mlp, pair_index
from userip.downstream.models import network


@network("pnn")
class PNN(nn.Module):
    def __init__(self, fmap, hp) -> None:
        super().__init__()
        self.embedding = FeatureEmbedding(fmap, hp.embedding_dim)
        f = fmap.n_fields
        self.rows, self.cols = pair_index(f)
        self.deep = mlp(f * hp.embedding_dim + len(self.rows), hp.mlp, hp.dropout)

    def forward(self, x_cat, x_dense):
        emb = self.embedding(x_cat, x_dense)
        inner = (emb[:, self.rows] * emb[:, self.cols]).sum(-1)
        return self.deep(torch.cat([emb.flatten(1), inner], dim=1)).squeeze(1)
