"""DeepFM (Guo et al. 2017): linear + FM second-order term + MLP over shared embeddings."""

from torch import nn

from userip.downstream.layers import FeatureEmbedding, Linear, fm_interaction, mlp
from userip.downstream.models import network


@network("deepfm")
class DeepFM(nn.Module):
    def __init__(self, fmap, hp) -> None:
        super().__init__()
        self.embedding = FeatureEmbedding(fmap, hp.embedding_dim)
        self.linear = Linear(fmap)
        self.deep = mlp(fmap.n_fields * hp.embedding_dim, hp.mlp, hp.dropout)

    def forward(self, x_cat, x_dense):
        emb = self.embedding(x_cat, x_dense)
        return self.linear(x_cat, x_dense) + fm_interaction(emb) + self.deep(emb.flatten(1)).squeeze(1)
