"""DIFM (Lu et al. 2020): input-aware factors. A vector-wise (self-attention) and a
bit-wise (MLP) view of the input produce per-field weights that rescale both the FM
embeddings and the first-order weights of this very input."""

from torch import nn

from userip.downstream.layers import FeatureEmbedding, fm_interaction, mlp
from userip.downstream.models import network

HEADS = 2


@network("difm")
class DIFM(nn.Module):
    def __init__(self, fmap, hp) -> None:
        super().__init__()
        f, d = fmap.n_fields, hp.embedding_dim
        self.embedding = FeatureEmbedding(fmap, d)
        self.first_order = FeatureEmbedding(fmap, 1)
        self.attn = nn.MultiheadAttention(d, HEADS, batch_first=True)
        self.vector_wise = nn.Linear(f * d, f, bias=False)
        self.bit_wise = mlp(f * d, hp.mlp, hp.dropout, out_dim=f)

    def forward(self, x_cat, x_dense):
        emb = self.embedding(x_cat, x_dense)
        attended = self.attn(emb, emb, emb, need_weights=False)[0] + emb
        weights = self.vector_wise(attended.flatten(1)) + self.bit_wise(emb.flatten(1))  # (B, F)
        linear = (self.first_order(x_cat, x_dense).squeeze(-1) * weights).sum(1)
        return linear + fm_interaction(emb * weights.unsqueeze(-1))
