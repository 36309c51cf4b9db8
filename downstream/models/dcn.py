"""DCN (Wang et al. 2017): explicit cross network beside a deep MLP.
Paper settings: 3 cross layers, embedding 8, MLP (16, 16), dropout 0.2."""

import torch
from torch import nn

from userip.downstream.layers import FeatureEmbedding, mlp
from userip.downstream.models import network
from userip.downstream.models.base import Foldable


class CrossNet(nn.Module):
    """x_{l+1} = x_0 * (x_l . w_l) + b_l + x_l; the layers' w and b stacked in one tensor each.

    With vector weights every layer's output is x_0 scaled per row plus a constant vector,
    x_l = a_l * x_0 + c_l (the observation behind xDeepFM's CIN), with
    a_{l+1} = a_l * (1 + x_0 . w_l) + c_l . w_l and c_{l+1} = c_l + b_l. Computing a and c
    needs only the row scalars x_0 . w_l, not L passes over (batch, width) tensors, so the
    cost of extra fields (profile codes) stays small at serving time."""

    def __init__(self, dim: int, layers: int) -> None:
        super().__init__()
        # each w_l as FuxiCTR's nn.Linear(dim, 1) under xavier_normal_: std sqrt(2 / (dim + 1))
        self.w = nn.Parameter(torch.randn(layers, dim) * (2.0 / (dim + 1)) ** 0.5)
        self.b = nn.Parameter(torch.zeros(layers, dim))

    def scale_shift(self, x0_dot_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a_L (batch,), c_L (width,)) from ``x0_dot_w`` = x_0 @ w.T (batch, layers)."""
        a = torch.ones_like(x0_dot_w[:, 0])
        c = torch.zeros_like(self.b[0])
        for layer, (w, b) in enumerate(zip(self.w, self.b)):
            a = a * (1 + x0_dot_w[:, layer]) + c @ w
            c = c + b
        return a, c


@network("dcn")
class DCN(nn.Module, Foldable):
    """Every first step on x_0 is linear: the cross dots x_0 . w_l, the head's cross half
    (see ``forward``) and the deep MLP's first layer. They are one product x_0 @ M, and
    since x_0 is a concatenation of field embeddings, M splits by field: ``fold`` turns the
    user-level fields (user id, attributes, profile codes) into one row per user and the
    item field into one row per item, so scoring costs two gathers however many
    user-level fields there are."""

    def __init__(self, fmap, hp, extra_fields: int = 0) -> None:
        """``extra_fields``: fields of width ``embedding_dim`` that a wrapping network appends
        to the embedded ones before ``from_fields`` (KAR's two text fields)."""
        super().__init__()
        self.embedding = FeatureEmbedding(fmap, hp.embedding_dim)
        self.width = (fmap.n_fields + extra_fields) * hp.embedding_dim
        self.cross = CrossNet(self.width, hp.cross_layers)
        self.deep = mlp(self.width, hp.mlp, hp.dropout, out_dim=None)
        self.head = nn.Linear(self.width + hp.mlp[-1], 1)

    def _first_layer(self) -> torch.Tensor:
        """M (width, layers + 1 + hidden): cross weights, the head's cross half, deep layer 1."""
        return torch.cat([self.cross.w, self.head.weight[:, :self.width], self.deep[0].weight]).T

    def forward(self, x_cat, x_dense):
        return self.from_fields(self.embedding(x_cat, x_dense))

    def from_fields(self, emb: torch.Tensor) -> torch.Tensor:
        """Logits from x_0 as field embeddings (B, fields, embedding_dim)."""
        return self.from_first_layer(emb.flatten(1) @ self._first_layer())

    def from_first_layer(self, z: torch.Tensor) -> torch.Tensor:
        """head([a * x_0 + c, deep(x_0)]) with the cross half folded
        into scalars, head_cross . (a * x_0 + c) = a * (x_0 . head_cross) + c . head_cross."""
        layers = len(self.cross.w)
        a, c = self.cross.scale_shift(z[:, :layers])
        deep = self.deep[1:](z[:, layers + 1:] + self.deep[0].bias)
        head_cross, head_deep = self.head.weight[0, :self.width], self.head.weight[0, self.width:]
        return a * z[:, layers] + deep @ head_deep + (c @ head_cross + self.head.bias[0])

    def fold(self, user_cat: torch.Tensor, user_dense: torch.Tensor, item_field: int,
             n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
        first = self._first_layer()
        m = first.view(-1, self.embedding.table.embedding_dim, first.shape[1])  # (fields, dim, out)
        emb = self.embedding(user_cat, user_dense)  # (users, fields, dim)
        user_fields = [f for f in range(m.shape[0]) if f != item_field]
        users = torch.einsum("ufd,fdo->uo", emb[:, user_fields], m[user_fields])
        items = self.embedding.table(torch.arange(n_items) + self.embedding.offsets[item_field])
        return users, items @ m[item_field]
