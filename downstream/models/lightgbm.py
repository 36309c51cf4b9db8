"""LightGBM (Ke et al. 2017): gradient-boosted trees with every id, attribute and
profile code as a categorical feature; rounds are early-stopped on validation AUC.
Saved in LightGBM's own text format (nothing is unpickled on load)."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import lightgbm as lgb
import numpy as np

from userip.downstream.features import FeatureMap, Split
from userip.downstream.layout import FitInfo, RunLayout
from userip.downstream.models import model
from userip.downstream.models.base import CTRModel
from userip.hyper import FitSettings

MAX_ROUNDS, PATIENCE = 400, 20


@model("lightgbm")
class LightGBM(CTRModel):
    def __init__(self, fmap: FeatureMap, hp: FitSettings, seed: int) -> None:
        self.n_cat = len(fmap.fields)
        self.seed = seed
        self.booster: lgb.Booster | None = None

    def _dataset(self, split: Split, reference: lgb.Dataset | None = None) -> lgb.Dataset:
        return lgb.Dataset(_features(split.x_cat, split.x_dense), label=split.y,
                           categorical_feature=list(range(self.n_cat)), reference=reference,
                           free_raw_data=False)

    def fit(self, train: Split, valid: Split, *, threads: int) -> FitInfo:
        params = {"objective": "binary", "metric": "auc", "learning_rate": 0.05,
                  "num_leaves": 31, "min_data_in_leaf": 20, "cat_smooth": 10,
                  "seed": self.seed, "num_threads": threads, "verbose": -1,
                  # without these LightGBM picks row- or column-wise histograms by timing
                  # both at start-up, and the two sum in different orders
                  "deterministic": True, "force_col_wise": True}
        dtrain = self._dataset(train)
        dvalid = self._dataset(valid, reference=dtrain)
        self.booster = lgb.train(params, dtrain, MAX_ROUNDS, valid_sets=[dvalid],
                                 callbacks=[lgb.early_stopping(PATIENCE, verbose=False)])
        return FitInfo(best_epoch=int(self.booster.best_iteration),
                       val_auc=float(self.booster.best_score["valid_0"]["auc"]),
                       epochs_run=int(self.booster.current_iteration()), epoch_cap=MAX_ROUNDS)

    def _fitted(self) -> lgb.Booster:
        assert self.booster is not None, "fit or load the model first"
        return self.booster

    def predict(self, x_cat: np.ndarray, x_dense: np.ndarray) -> np.ndarray:
        booster = self._fitted()
        # a dense matrix without pred_contrib: LightGBM returns an ndarray
        return cast(np.ndarray, booster.predict(_features(x_cat, x_dense),
                                                num_iteration=booster.best_iteration))

    def save(self, out_dir: Path) -> None:
        booster = self._fitted()
        booster.save_model(str(Path(out_dir) / RunLayout.LIGHTGBM_MODEL),
                           num_iteration=booster.best_iteration)

    def load(self, model_dir: Path) -> None:
        self.booster = lgb.Booster(model_file=str(Path(model_dir) / RunLayout.LIGHTGBM_MODEL))


def _features(x_cat: np.ndarray, x_dense: np.ndarray) -> np.ndarray:
    return np.hstack([x_cat.astype(np.float64), x_dense.astype(np.float64)])
