"""Fit one zoo model on one data set with or without profile codes; save, load, score.

The epoch (for LightGBM: the boosting round) is chosen by early stopping on validation
AUC only (``patience`` epochs without a better one, up to the ``epochs`` cap); the best
state is kept and saved. A saved model records the code source it was trained on (bank
version, manifest compat hash) and refuses to score against an incompatible one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from userip.dataprep.layout import INTERACTIONS
from userip.downstream.features import (
    CodeSource,
    DenseProfiles,
    Encoder,
    FeatureMap,
    Split,
    codes_record,
    load_interactions,
    load_users,
)
from userip.downstream.layout import PAPER, FitRecord
from userip.downstream.models import build
from userip.downstream.models.base import CTRModel, ScoreFn
from userip.errors import ConfigError, InputError
from userip.feature_bank import FeatureBank, IncompatibleBankError
from userip.fingerprint import hash_file
from userip.hyper import FitSettings


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
        raise InputError("the train split needs both labels", path=str(data_dir / INTERACTIONS))
    fmap = FeatureMap.build(train, users, codes, use_observed)
    encoder = fmap.encoder(users, codes)
    splits = {}
    for name in ("train", "valid", "test"):
        part = inter.filter(pl.col("split") == name)
        uid, iid = part["user_id"].to_numpy(), part["item_id"].to_numpy()
        x_cat, x_dense = encoder.encode(uid, iid)
        splits[name] = Split(uid, iid, x_cat, x_dense, part["label"].to_numpy().astype(np.float32))
    return Prepared(fmap, splits, codes_record(codes), hash_file(data_dir / INTERACTIONS),
                    None if held_out is None else users_fingerprint(held_out))


def fit(name: str, data: Prepared, out_dir: Path, *, seed: int, hp: FitSettings, variant: str,
        protocol: str = PAPER, threads: int = 1) -> FitRecord:
    """Train, keep the best-validation-AUC state, save into ``out_dir`` atomically.

    ``threads``: these models are tiny, so one thread per process is fastest; two
    threads on a shared 2-core box measured 16x slower per epoch (oversubscription)."""
    tr, va = data.splits["train"], data.splits["valid"]
    if len(va.y) == 0 or len(np.unique(va.y)) < 2:
        raise InputError("the valid split needs both labels to select epochs")
    start = time.perf_counter()
    try:
        model = build(name, data.fmap, hp.fit_settings(), seed)
    except KeyError:
        raise ConfigError(f"unknown model {name!r}") from None
    info = model.fit(tr, va, threads=threads)
    record = FitRecord(model=name, variant=variant, seed=seed, protocol=protocol,
                       hyper=hp.fit_settings(), fmap=data.fmap.to_json(), codes=data.codes,
                       data_fingerprint=data.data_fingerprint, held_out=data.held_out,
                       train_seconds=round(time.perf_counter() - start, 3), **info.model_dump())
    _save(model, record, Path(out_dir))
    return record


def _save(model: CTRModel, record: FitRecord, out_dir: Path) -> None:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        model.save(tmp)
        record.write(tmp)
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
        if not FitRecord.exists(model_dir):
            raise InputError(f"not a trained model dir (no {FitRecord.FILE})", path=str(model_dir))
        self.record = FitRecord.read(model_dir)
        self.fmap = FeatureMap.from_json(self.record.fmap)
        self.name = self.record.model
        self.model = build(self.name, self.fmap, self.record.hyper, self.record.seed)
        self.model.load(model_dir)
        # (users table, code source) -> their encoder and its scoring function
        self._bound: tuple[pl.DataFrame | None, CodeSource | None, Encoder, ScoreFn] | None = None

    def check_codes(self, codes: CodeSource | None) -> None:
        """Refuse a code source that is missing or means something else than at training."""
        want = self.record.codes
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
        encoder, scoring = self._binding(users, codes)
        return scoring(*encoder.positions(user_ids, item_ids))

    def encoder(self, users: pl.DataFrame | None, codes: CodeSource | None) -> Encoder:
        return self._binding(users, codes)[0]

    def bind(self, users: pl.DataFrame | None, codes: CodeSource | None) -> ScoreFn:
        """The scoring function over ``encoder(users, codes)`` positions (for DCN: its
        folded rows, ``downstream.models.torch_model.FoldedScore``)."""
        return self._binding(users, codes)[1]

    def _binding(self, users: pl.DataFrame | None, codes: CodeSource | None) -> tuple[Encoder, ScoreFn]:
        """The encoder for this users table and code source and the model's scoring
        function over it, checked and built on first use and kept while the same objects
        are passed: a server opens its bank once and then pays only the per-request id
        lookups, not a bank alignment per call."""
        if self._bound is None or self._bound[0] is not users or self._bound[1] is not codes:
            self.check_codes(codes)
            encoder = self.fmap.encoder(users, codes)
            self._bound = (users, codes, encoder, self.model.scorer(encoder))
        return self._bound[2], self._bound[3]

    def predict_encoded(self, x_cat: np.ndarray, x_dense: np.ndarray) -> np.ndarray:
        return self.model.predict(x_cat, x_dense)
