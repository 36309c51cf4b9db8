"""Fit one zoo model on one data set with or without profile codes; save, load, score.

The epoch (for LightGBM: the boosting round) is chosen by early stopping on validation
AUC only (``patience`` epochs without a better one, up to the ``epochs`` cap); the best
state is kept and saved. A saved model records the code source it was trained on (bank
version, manifest compat hash) and refuses to score against an incompatible one.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from sklearn.metrics import roc_auc_score

from downstream.features import (
    ITEM_FIELD,
    CodeSource,
    DenseProfiles,
    Encoder,
    FeatureMap,
    codes_record,
    load_interactions,
    load_users,
)
from downstream.layers import Hyper, init_weights
from downstream.models import get_model, is_torch
from feature_bank import FeatureBank, IncompatibleBankError
from userip.errors import ConfigError, InputError
from userip.fingerprint import hash_file

MODEL_JSON = "model.json"
# Rows per forward pass when predicting. A pass has a fixed cost of ~0.3 ms in small ops:
# 10,000 rows in one pass measured 1.0 ms for DCN vs 1.3 ms in two (8192 + 1808). The
# memory-hungriest zoo models (ONN, FiBiNet) grow ~3.4 KB a row with 7 fields, ~55 MB a pass.
_EVAL_BATCH = 16384


@dataclass
class Split:
    user_ids: np.ndarray
    x_cat: np.ndarray
    x_dense: np.ndarray
    y: np.ndarray


@dataclass
class Prepared:
    """A data set encoded once for every model and seed trained on it."""

    fmap: FeatureMap
    splits: dict[str, Split]
    codes: dict[str, Any] | None
    data_fingerprint: str
    held_out: str | None = None  # users_fingerprint of the users left out of training


def users_fingerprint(user_ids: np.ndarray) -> str:
    """A short hash of a set of user ids (order-free)."""
    return hashlib.sha256("\n".join(sorted(map(str, user_ids))).encode()).hexdigest()[:16]


def prepare(data_dir: Path, codes: CodeSource | None, use_observed: bool,
            held_out: np.ndarray | None = None) -> Prepared:
    """Encode every split. ``held_out`` users (the new-users protocol) lose their train and
    valid rows, so the feature map has no user index for them (they score as OOV) and
    epochs are chosen on the other users' validation rows; their test rows stay."""
    data_dir = Path(data_dir)
    inter = load_interactions(data_dir)
    if held_out is not None:
        inter = inter.filter(~(pl.col("user_id").is_in([str(u) for u in held_out])
                               & pl.col("split").is_in(["train", "valid"])))
    users = load_users(data_dir)
    train = inter.filter(pl.col("split") == "train")
    if train.height == 0 or train["label"].n_unique() < 2:
        raise InputError("the train split needs both labels", path=str(data_dir / "interactions.parquet"))
    fmap = FeatureMap.build(train, users, codes, use_observed)
    encoder = fmap.encoder(users, codes)
    splits = {}
    for name in ("train", "valid", "test"):
        part = inter.filter(pl.col("split") == name)
        uid = part["user_id"].to_numpy()
        x_cat, x_dense = encoder.encode(uid, part["item_id"].to_numpy())
        splits[name] = Split(uid, x_cat, x_dense, part["label"].to_numpy().astype(np.float32))
    return Prepared(fmap, splits, codes_record(codes), hash_file(data_dir / "interactions.parquet"),
                    None if held_out is None else users_fingerprint(held_out))


def fit(name: str, data: Prepared, out_dir: Path, *, seed: int, hp: Hyper, epochs: int,
        batch_size: int, lr: float, patience: int, variant: str, threads: int = 1,
        extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train, keep the best-validation-AUC state, save into ``out_dir`` atomically.

    ``threads``: these models are tiny, so one thread per process is fastest; two
    threads on a shared 2-core box measured 16x slower per epoch (oversubscription)."""
    torch.set_num_threads(threads)
    try:
        cls = get_model(name)
    except KeyError:
        raise ConfigError(f"unknown model {name!r}") from None
    tr, va = data.splits["train"], data.splits["valid"]
    if len(va.y) == 0 or len(np.unique(va.y)) < 2:
        raise InputError("the valid split needs both labels to select epochs")
    start = time.perf_counter()
    torch.manual_seed(seed)  # before the model: its initial weights come from the global RNG
    model = cls(data.fmap, hp)
    if is_torch(name):
        init_weights(model)
        info = _fit_torch(model, tr, va, seed=seed, epochs=epochs, batch_size=batch_size, lr=lr,
                          patience=patience)
    else:
        info = model.fit((tr.x_cat, tr.x_dense, tr.y), (va.x_cat, va.x_dense, va.y), seed=seed,
                         threads=threads)
    record = {"model": name, "variant": variant, "seed": seed, "hyper": asdict(hp),
              "epochs": epochs, "batch_size": batch_size, "lr": lr, "patience": patience,
              "fmap": data.fmap.to_json(), "codes": data.codes,
              "data_fingerprint": data.data_fingerprint, "held_out": data.held_out,
              "train_seconds": round(time.perf_counter() - start, 3), **info, **(extra or {})}
    _save(model, record, Path(out_dir))
    return record


def _fit_torch(model: torch.nn.Module, tr: Split, va: Split, *, seed: int, epochs: int,
               batch_size: int, lr: float, patience: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    x_cat, x_dense, y = torch.from_numpy(tr.x_cat), torch.from_numpy(tr.x_dense), torch.from_numpy(tr.y)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    best_auc, best_epoch, best_state, history = -1.0, 0, None, []
    for epoch in range(1, epochs + 1):
        model.train()
        for idx in torch.randperm(len(y), generator=gen).split(batch_size):
            opt.zero_grad()
            loss_fn(model(x_cat[idx], x_dense[idx]), y[idx]).backward()
            opt.step()
        auc = float(roc_auc_score(va.y, predict_torch(model, va.x_cat, va.x_dense)))
        history.append(round(auc, 6))
        if auc > best_auc:
            best_auc, best_epoch, best_state = auc, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= patience:
            break
    model.load_state_dict(best_state)
    return {"best_epoch": best_epoch, "val_auc": best_auc, "val_auc_history": history,
            "epochs_run": len(history), "epoch_cap": epochs}


@torch.inference_mode()
def predict_torch(model: torch.nn.Module, x_cat: np.ndarray, x_dense: np.ndarray) -> np.ndarray:
    model.eval()
    xc, xd = torch.from_numpy(x_cat), torch.from_numpy(x_dense)
    out = [torch.sigmoid(model(xc[i:i + _EVAL_BATCH], xd[i:i + _EVAL_BATCH]))
           for i in range(0, len(xc), _EVAL_BATCH)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def _save(model: Any, record: dict[str, Any], out_dir: Path) -> None:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        if isinstance(model, torch.nn.Module):
            torch.save(model.state_dict(), tmp / "model.pt")
        else:
            model.save(tmp)
        (tmp / MODEL_JSON).write_text(json.dumps(record, indent=2, default=str))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class Scorer:
    """A loaded model with its feature map; scores (user, item) pairs."""

    def __init__(self, model_dir: Path) -> None:
        model_dir = Path(model_dir)
        path = model_dir / MODEL_JSON
        if not path.is_file():
            raise InputError("not a trained model dir (no model.json)", path=str(model_dir))
        self.record = json.loads(path.read_text())
        self.fmap = FeatureMap.from_json(self.record["fmap"])
        self.name = self.record["model"]
        self.model = get_model(self.name)(self.fmap, Hyper(**{k: tuple(v) if isinstance(v, list) else v
                                                             for k, v in self.record["hyper"].items()}))
        if isinstance(self.model, torch.nn.Module):
            self.model.load_state_dict(torch.load(model_dir / "model.pt", weights_only=True))
            self.model.eval()
        else:
            self.model.load(model_dir)
        # (users table, code source) -> their encoder and, for DCN, its folded rows
        self._bound: tuple[pl.DataFrame | None, CodeSource | None, Encoder,
                           tuple[torch.Tensor, torch.Tensor] | None] | None = None

    def check_codes(self, codes: CodeSource | None) -> None:
        """Refuse a code source that is missing or means something else than at training."""
        want = self.record["codes"]
        if want is None:
            return
        if codes is None:
            raise ConfigError(f"model {self.name} was trained with {want['kind']} profiles from "
                              f"{want['source']}; give a bank or codes dir to score it")
        if want["kind"] == "codes":
            if not isinstance(codes, FeatureBank):
                raise IncompatibleBankError("model was trained with discrete codes, got dense profiles")
            codes.check_compatible(want["compat"])
        elif not isinstance(codes, DenseProfiles) or codes.compat != want["compat"]:
            raise IncompatibleBankError(f"dense profiles differ from those model {self.name} was trained on")

    def score(self, user_ids: np.ndarray, item_ids: np.ndarray, users: pl.DataFrame | None,
              codes: CodeSource | None) -> np.ndarray:
        """Click probabilities; unseen users/items use the OOV index, users missing from
        the bank the unknown code."""
        encoder = self.encoder(users, codes)
        folded = self._bound[3]
        if folded is not None:  # see DCN.fold: two gathers instead of the embedding
            rows, items = (torch.from_numpy(p) for p in encoder.positions(user_ids, item_ids))
            user_part, item_part = folded
            with torch.inference_mode():
                return torch.sigmoid(self.model.from_first_layer(user_part[rows] + item_part[items])).numpy()
        return self.predict_encoded(*encoder.encode(user_ids, item_ids))

    def encoder(self, users: pl.DataFrame | None, codes: CodeSource | None) -> Encoder:
        """The encoder for this users table and code source, checked and built on first
        use and kept while the same objects are passed: a server opens its bank once and
        then pays only the per-request id lookups, not a bank alignment per call. A model
        with ``fold`` (DCN) also gets its per-user and per-item first-layer rows then."""
        if self._bound is None or self._bound[0] is not users or self._bound[1] is not codes:
            self.check_codes(codes)
            encoder, folded = self.fmap.encoder(users, codes), None
            if hasattr(self.model, "fold"):
                with torch.inference_mode():
                    folded = self.model.fold(*(torch.from_numpy(a) for a in encoder.user_rows()),
                                             ITEM_FIELD, len(self.fmap.items) + 1)
            self._bound = (users, codes, encoder, folded)
        return self._bound[2]

    def predict_encoded(self, x_cat: np.ndarray, x_dense: np.ndarray) -> np.ndarray:
        if isinstance(self.model, torch.nn.Module):
            return predict_torch(self.model, x_cat, x_dense)
        return self.model.predict(x_cat, x_dense)
