"""AFN (Cheng et al. 2020): a logarithmic transformation layer learns arbitrary-order
cross features as exp(sum_i w_ji log|e_i|), followed by an MLP."""

import torch
from torch import nn

from userip.downstream.layers import FeatureEmbedding, mlp
from userip.downstream.models import network

LOG_NEURONS = 16


@network("afn")
class AFN(nn.Module):
    def __init__(self, fmap, hp) -> None:
        super().__init__()
        d = hp.embedding_dim
        self.embedding = FeatureEmbedding(fmap, d)
        self.log_neurons = nn.Linear(fmap.n_fields, LOG_NEURONS)
        self.norm = nn.BatchNorm1d(LOG_NEURONS * d)
        self.deep = mlp(LOG_NEURONS * d, hp.mlp, hp.dropout)

    def forward(self, x_cat, x_dense):
        emb = self.embedding(x_cat, x_dense).abs().clamp_min(1e-7).log()  # (B, F, d)
        cross = torch.exp(self.log_neurons(emb.transpose(1, 2)))          # (B, d, L)
        return self.deep(self.norm(cross.flatten(1))).squeeze(1)
