"""The shared feature map: which fields a CTR model sees and how raw ids become indices.

Fields, in order: ``user``, ``item``, the observed user attributes (optional), then one
field per profile code (the with-codes switch). Every categorical field has one extra
index at the end of its vocabulary, the OOV index, used for any value unseen at training
time (a new user or item at scoring time, a user missing from the bank). Profile codes use
the bank's reserved unknown code K_m for the same purpose, so their vocabulary is K_m + 1.
Un-quantized profile vectors (quantize method ``none``) enter as dense features.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

from feature_bank import FeatureBank
from feature_bank.bank import read_meta, read_parquet
from userip.errors import InputError

SPLITS = ("train", "valid", "test")
# Observed attributes too fine-grained to help (one value per user) are left out.
_SKIP_ATTRS = {"user_id", "user_idx", "zip_code"}
_MAX_ATTR_VALUES = 1000
_NUMERIC_BINS = 5


def load_interactions(data_dir: Path) -> pl.DataFrame:
    """Interactions with checked labels (0/1 only) and splits."""
    path = Path(data_dir) / "interactions.parquet"
    df = read_parquet(path, ["user_id", "item_id", "label", "split"]).select(
        pl.col("user_id").cast(pl.String), pl.col("item_id").cast(pl.String),
        pl.col("label"), pl.col("split"))
    bad = df.with_row_index("row").filter(~pl.col("label").is_in([0, 1]) | pl.col("label").is_null())
    if bad.height:
        raise InputError(f"label must be 0 or 1, found {bad['label'][0]!r} "
                         f"({bad.height} bad rows)", path=str(path), line=int(bad["row"][0]), field="label")
    bad = df.with_row_index("row").filter(~pl.col("split").is_in(SPLITS) | pl.col("split").is_null())
    if bad.height:
        raise InputError(f"split must be one of {SPLITS}, found {bad['split'][0]!r}",
                         path=str(path), line=int(bad["row"][0]), field="split")
    return df.with_columns(pl.col("label").cast(pl.Int8))


def load_users(data_dir: Path) -> pl.DataFrame | None:
    path = Path(data_dir) / "users.parquet"
    return read_parquet(path, ["user_id"]).with_columns(pl.col("user_id").cast(pl.String)) \
        if path.is_file() else None


class DenseProfiles:
    """Un-quantized profile vectors (quantize method ``none``); unknown users get zeros."""

    def __init__(self, codes_dir: Path) -> None:
        codes_dir = Path(codes_dir)
        meta = read_meta(codes_dir)
        path = codes_dir / "dense.parquet"
        df = read_parquet(path, ["user_id"])
        self.columns = [c for c in df.columns if c != "user_id"]
        self.source = str(codes_dir)
        self._index = pd.Index(df["user_id"].cast(pl.String).to_numpy())
        self._x = np.vstack([df.select(self.columns).to_numpy().astype(np.float32),
                             np.zeros((1, len(self.columns)), np.float32)])
        with open(path, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        self.compat = {"dense_columns": self.columns, "dense_sha256": digest}
        self.method = str(meta["method"])

    def lookup(self, user_ids: np.ndarray) -> np.ndarray:
        rows = self._index.get_indexer(np.asarray(user_ids, dtype=object))
        rows[rows < 0] = len(self._x) - 1
        return self._x[rows]


CodeSource = FeatureBank | DenseProfiles


def open_codes(path: Path, *, bank: bool = False, version: str | None = None) -> CodeSource:
    """A bank dir (``bank=True``), a quantizer codes dir, or a quantizer dense dir."""
    if bank:
        return FeatureBank.open(path, version)
    return DenseProfiles(path) if read_meta(Path(path))["kind"] == "dense" else FeatureBank.from_codes_dir(path)


def codes_record(codes: CodeSource | None) -> dict[str, Any] | None:
    """What a trained model remembers about its code source, for the compatibility check."""
    if codes is None:
        return None
    if isinstance(codes, DenseProfiles):
        return {"kind": "dense", "method": codes.method, "source": codes.source, "compat": codes.compat}
    m = codes.manifest
    return {"kind": "codes", "method": m.method, "source": codes.source, "version": m.version,
            "compat": m.compat(), "compat_hash": m.compat_hash}


@dataclass
class FeatureMap:
    """Vocabularies of every field; index ``len(vocab)`` is OOV."""

    users: list[str]
    items: list[str]
    observed: dict[str, list[str]] = field(default_factory=dict)
    numeric_edges: dict[str, list[float]] = field(default_factory=dict)
    codes: list[tuple[str, int]] = field(default_factory=list)
    dense_dim: int = 0

    @property
    def fields(self) -> list[tuple[str, int]]:
        """(name, vocabulary size incl. the OOV / unknown index) per categorical field."""
        out = [("user", len(self.users) + 1), ("item", len(self.items) + 1)]
        out += [(a, len(v) + 1) for a, v in self.observed.items()]
        out += [(f"code_{n}", k + 1) for n, k in self.codes]
        return out

    @property
    def n_fields(self) -> int:
        """Fields after embedding: categorical ones plus one for the dense profile vector."""
        return len(self.fields) + (1 if self.dense_dim else 0)

    @classmethod
    def build(cls, train: pl.DataFrame, users: pl.DataFrame | None, codes: CodeSource | None,
              use_observed: bool) -> FeatureMap:
        observed: dict[str, list[str]] = {}
        edges: dict[str, list[float]] = {}
        if use_observed and users is not None:
            for col, dtype in users.schema.items():
                if col in _SKIP_ATTRS:
                    continue
                if dtype.is_numeric():
                    qs = np.quantile(users[col].drop_nulls().to_numpy(), np.linspace(0, 1, _NUMERIC_BINS + 1)[1:-1])
                    edges[col] = sorted(set(float(q) for q in qs))
                    observed[col] = [str(i) for i in range(len(edges[col]) + 1)]
                elif users[col].n_unique() <= min(_MAX_ATTR_VALUES, users.height // 2):
                    observed[col] = sorted(users[col].drop_nulls().cast(pl.String).unique().to_list())
        return cls(
            users=sorted(train["user_id"].unique().to_list()),
            items=sorted(train["item_id"].unique().to_list()),
            observed=observed, numeric_edges=edges,
            codes=list(zip(codes.manifest.names, codes.manifest.sizes)) if isinstance(codes, FeatureBank) else [],
            dense_dim=len(codes.columns) if isinstance(codes, DenseProfiles) else 0,
        )

    def encode(self, user_ids: np.ndarray, item_ids: np.ndarray, users: pl.DataFrame | None,
               codes: CodeSource | None) -> tuple[np.ndarray, np.ndarray]:
        """(x_cat int64 (n, F), x_dense float32 (n, D)); unseen values map to OOV."""
        cols = [_index(self.user_index, user_ids), _index(self.item_index, item_ids)]
        if self.observed:
            attrs = pl.DataFrame({"user_id": user_ids}).join(users, on="user_id", how="left",
                                                             maintain_order="left") if users is not None else None
            for col, vocab in self.observed.items():
                if attrs is None or col not in attrs.columns:
                    cols.append(np.full(len(user_ids), len(vocab), np.int64))
                elif col in self.numeric_edges:
                    vals = attrs[col].cast(pl.Float64).to_numpy()
                    idx = np.searchsorted(self.numeric_edges[col], vals, side="right").astype(np.int64)
                    idx[np.isnan(vals)] = len(vocab)
                    cols.append(idx)
                else:
                    cols.append(_index(pd.Index(vocab), attrs[col].cast(pl.String).to_numpy()))
        x_cat = np.column_stack(cols)
        if self.codes:
            if not isinstance(codes, FeatureBank):
                raise InputError("this model was trained with profile codes; give it a bank or codes dir")
            x_cat = np.hstack([x_cat, self._codes_for(codes, cols[0], user_ids)])
        x_dense = np.zeros((len(user_ids), 0), np.float32)
        if self.dense_dim:
            if not isinstance(codes, DenseProfiles):
                raise InputError("this model was trained with dense profiles; give it their dir")
            x_dense = codes.lookup(user_ids)
        return x_cat, x_dense

    def _codes_for(self, bank: FeatureBank, user_idx: np.ndarray, user_ids: np.ndarray) -> np.ndarray:
        """Bank codes of these users. The codes of every vocabulary user are looked up once
        per bank and then gathered by the user index already computed (no second string
        hash per request); only OOV users (not seen in training) go to the bank itself."""
        cached = self.__dict__.get("_code_table")
        if cached is None or cached[0] is not bank:
            table = np.vstack([bank.lookup(np.asarray(self.users, dtype=object)),
                               np.asarray(bank.manifest.sizes, dtype=np.int64)[None, :]])
            cached = self.__dict__["_code_table"] = (bank, table)
        out = cached[1][user_idx]
        oov = user_idx == len(self.users)
        if oov.any():
            out[oov] = bank.lookup(np.asarray(user_ids, dtype=object)[oov])
        return out

    @cached_property
    def user_index(self) -> pd.Index:
        return pd.Index(self.users)

    @cached_property
    def item_index(self) -> pd.Index:
        return pd.Index(self.items)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> FeatureMap:
        raw = dict(raw)
        raw["codes"] = [tuple(c) for c in raw["codes"]]
        return cls(**raw)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]


def _index(vocab: pd.Index, values: np.ndarray) -> np.ndarray:
    """Positions of ``values`` in ``vocab``; absent values get len(vocab) (OOV)."""
    idx = vocab.get_indexer(np.asarray(values, dtype=object))
    idx[idx < 0] = len(vocab)
    return idx.astype(np.int64)
