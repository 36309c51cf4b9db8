"""LightGBM (Ke et al. 2017): gradient-boosted trees with every id, attribute and
profile code as a categorical feature; rounds are early-stopped on validation AUC."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np

from downstream.models import register

MAX_ROUNDS, PATIENCE = 400, 20


@register("lightgbm")
class LightGBM:
    def __init__(self, fmap, hp) -> None:
        self.n_cat = len(fmap.fields)
        self.booster: lgb.Booster | None = None

    def _dataset(self, x_cat, x_dense, y=None, reference=None):
        x = np.hstack([x_cat.astype(np.float64), x_dense.astype(np.float64)])
        return lgb.Dataset(x, label=y, categorical_feature=list(range(self.n_cat)),
                           reference=reference, free_raw_data=False)

    def fit(self, train, valid, *, seed: int, threads: int) -> dict:
        params = {"objective": "binary", "metric": "auc", "learning_rate": 0.05,
                  "num_leaves": 31, "min_data_in_leaf": 20, "cat_smooth": 10,
                  "seed": seed, "num_threads": threads, "verbose": -1,
                  # without these LightGBM picks row- or column-wise histograms by timing
                  # both at start-up, and the two sum in different orders
                  "deterministic": True, "force_col_wise": True}
        dtrain = self._dataset(*train)
        dvalid = self._dataset(*valid, reference=dtrain)
        self.booster = lgb.train(params, dtrain, MAX_ROUNDS, valid_sets=[dvalid],
                                 callbacks=[lgb.early_stopping(PATIENCE, verbose=False)])
        return {"best_epoch": int(self.booster.best_iteration),
                "val_auc": float(self.booster.best_score["valid_0"]["auc"]),
                "epochs_run": int(self.booster.current_iteration()), "epoch_cap": MAX_ROUNDS}

    def predict(self, x_cat, x_dense) -> np.ndarray:
        x = np.hstack([x_cat.astype(np.float64), x_dense.astype(np.float64)])
        return self.booster.predict(x, num_iteration=self.booster.best_iteration)

    def save(self, out_dir: Path) -> None:
        self.booster.save_model(str(Path(out_dir) / "model.txt"), num_iteration=self.booster.best_iteration)

    def load(self, model_dir: Path) -> None:
        self.booster = lgb.Booster(model_file=str(Path(model_dir) / "model.txt"))
