"""FFM (Juan et al. 2016): every feature keeps one latent vector per other field;
pair (i, j) interacts through <v_{i,f_j}, v_{j,f_i}>, plus a linear term."""

from torch import nn

from userip.downstream.layers import FeatureEmbedding, Linear, field_aware_pairs
from userip.downstream.models import network


@network("ffm")
class FFM(nn.Module):
    def __init__(self, fmap, hp) -> None:
        super().__init__()
        self.f = fmap.n_fields
        self.embedding = FeatureEmbedding(fmap, self.f * hp.embedding_dim)
        self.linear = Linear(fmap)

    def forward(self, x_cat, x_dense):
        pairs = field_aware_pairs(self.embedding(x_cat, x_dense), self.f)
        return self.linear(x_cat, x_dense) + pairs.sum(dim=(1, 2))
