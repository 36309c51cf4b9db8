"""The torch adapter: any zoo network behind ``CTRModel``.

Training: Adam on BCE-with-logits, shuffled batches from a generator seeded per fit, one
validation AUC per epoch; stops after ``patience`` epochs without a better one (up to the
``epochs`` cap) and keeps the best state. Every network gets FuxiCTR's initialisation
(``downstream.layers.init_weights``) after it is built under ``torch.manual_seed(seed)``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from userip.downstream.features import ITEM_FIELD, Encoder, FeatureMap, Split
from userip.downstream.layers import init_weights
from userip.downstream.layout import FitInfo, RunLayout
from userip.downstream.models.base import CTRModel, Foldable, ScoreFn
from userip.hyper import FitSettings

# Rows per forward pass when predicting. A pass has a fixed cost of ~0.3 ms in small ops:
# 10,000 rows in one pass measured 1.0 ms for DCN vs 1.3 ms in two (8192 + 1808). The
# memory-hungriest zoo models (ONN, FiBiNet) grow ~3.4 KB a row with 7 fields, ~55 MB a pass.
_EVAL_BATCH = 16384


class TorchModel(CTRModel):
    def __init__(self, network: Callable[[FeatureMap, FitSettings], nn.Module], fmap: FeatureMap,
                 hp: FitSettings, seed: int) -> None:
        torch.manual_seed(seed)  # before the network: its initial weights come from the global RNG
        self.net = network(fmap, hp)
        init_weights(self.net)
        self.hp, self.seed, self.fmap = hp, seed, fmap

    def fit(self, train: Split, valid: Split, *, threads: int) -> FitInfo:
        torch.set_num_threads(threads)
        hp, net = self.hp, self.net
        gen = torch.Generator().manual_seed(self.seed)
        x_cat, x_dense, y = (torch.from_numpy(a) for a in (train.x_cat, train.x_dense, train.y))
        opt = torch.optim.Adam(net.parameters(), lr=hp.lr)
        loss_fn = nn.BCEWithLogitsLoss()
        best_auc, best_epoch, best_state, history = -1.0, 0, None, []
        for epoch in range(1, hp.epochs + 1):
            net.train()
            for idx in torch.randperm(len(y), generator=gen).split(hp.batch_size):
                opt.zero_grad()
                loss_fn(net(x_cat[idx], x_dense[idx]), y[idx]).backward()
                opt.step()
            auc = float(roc_auc_score(valid.y, self.predict(valid.x_cat, valid.x_dense)))
            history.append(round(auc, 6))
            if auc > best_auc:
                best_auc, best_epoch, best_state = auc, epoch, copy.deepcopy(net.state_dict())
            elif epoch - best_epoch >= hp.patience:
                break
        assert best_state is not None  # epochs >= 1 and the first AUC beats -1
        net.load_state_dict(best_state)
        return FitInfo(best_epoch=best_epoch, val_auc=best_auc, val_auc_history=history,
                       epochs_run=len(history), epoch_cap=hp.epochs)

    @torch.inference_mode()
    def predict(self, x_cat: np.ndarray, x_dense: np.ndarray) -> np.ndarray:
        self.net.eval()
        xc, xd = torch.from_numpy(x_cat), torch.from_numpy(x_dense)
        out = [torch.sigmoid(self.net(xc[i:i + _EVAL_BATCH], xd[i:i + _EVAL_BATCH]))
               for i in range(0, len(xc), _EVAL_BATCH)]
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)

    def save(self, out_dir: Path) -> None:
        torch.save(self.net.state_dict(), Path(out_dir) / RunLayout.TORCH_STATE)

    def load(self, model_dir: Path) -> None:
        self.net.load_state_dict(torch.load(Path(model_dir) / RunLayout.TORCH_STATE, weights_only=True))
        self.net.eval()

    def scorer(self, encoder: Encoder) -> ScoreFn:
        if isinstance(self.net, Foldable):
            self.net.eval()
            return FoldedScore(self.net, encoder, len(self.fmap.items) + 1)
        return super().scorer(encoder)


class FoldedScore:
    """Scores with a ``Foldable`` network's per-user and per-item first-layer rows,
    computed once for one encoder's user table: two gathers per request."""

    def __init__(self, net: Foldable, encoder: Encoder, n_items: int) -> None:
        self.net = net
        with torch.inference_mode():
            self.users, self.items = net.fold(*(torch.from_numpy(a) for a in encoder.user_rows()),
                                              ITEM_FIELD, n_items)

    def __call__(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            z = self.users[torch.from_numpy(rows)] + self.items[torch.from_numpy(items)]
            return torch.sigmoid(self.net.from_first_layer(z)).numpy()
