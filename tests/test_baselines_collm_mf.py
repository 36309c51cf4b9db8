"""CoLLM's MF on the real ML-1M temporal split: chosen on validation, saved vectors score test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import torch
from sklearn.metrics import roc_auc_score

from userip.baselines.collm_data import build_split
from userip.baselines.collm_mf import load_vectors, run, warm_rows
from userip.baselines.config import MfConfig


def test_mf_grid_is_chosen_on_valid_and_its_saved_vectors_score_test(tmp_path: Path):
    cfg = MfConfig(dims=(16,), lrs=(1e-2, 1e-4), weight_decays=(1e-7,), epochs=4, patience=2)
    result = run(cfg, tmp_path)
    assert len(result.grid) == 2
    assert result.valid_auc == max(g["valid_auc"] for g in result.grid)
    assert result.lr == 1e-2  # 4 epochs at 1e-4 barely move the random start
    assert result.valid_auc > 0.57, result.grid  # MF learns the split's collaborative signal
    assert result.test["n"] == 7331 == result.test_warm["n"] + result.test_cold["n"]
    assert result.test_warm["auc"] > result.test_cold["auc"]

    vec = load_vectors(tmp_path)
    assert vec.user.shape == (len(vec.user_index) + 1, 16)
    assert torch.equal(vec.user[0], torch.zeros(16)) and torch.equal(vec.item[0], torch.zeros(16))
    test = build_split().filter(pl.col("split") == "test")
    u, i = vec.rows(test["user_id"].to_list(), test["title"].to_list())
    scores = torch.sigmoid((u * i).sum(-1)).numpy()
    assert np.isclose(roc_auc_score(test["label"].to_numpy(), scores), result.test["auc"])
    unknown = np.array([x not in vec.user_index for x in test["user_id"]]) | np.array(
        [x not in vec.item_index for x in test["title"]])
    assert unknown.any() and np.all(scores[unknown] == 0.5)
    warm = warm_rows(build_split().filter(pl.col("split") == "train"), test, cfg.warm_min_count)
    assert warm.sum() == result.test_warm["n"]
    meta = json.loads((tmp_path / "metrics.json").read_text())
    assert meta["config"]["lrs"] == [1e-2, 1e-4]
