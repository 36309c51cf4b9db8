"""The shared feature map: which fields a CTR model sees and how raw ids become indices.

Fields, in order: ``user``, ``item``, the observed user attributes (optional), then one
field per profile code (the with-codes switch). Every categorical field has one extra
index at the end of its vocabulary, the OOV index, used for any value unseen at training
time (a new user or item at scoring time, a user missing from the bank). Profile codes use
the bank's reserved unknown code K_m for the same purpose, so their vocabulary is K_m + 1.
Un-quantized profile vectors (quantize method ``none``) enter as dense features.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
import polars as pl

from userip.dataprep.layout import INTERACTIONS, USERS
from userip.errors import InputError
from userip.feature_bank import FeatureBank
from userip.feature_bank.bank import read_parquet
from userip.fingerprint import sha256_file
from userip.ids import IdIndex
from userip.quantize.layout import QuantizeMeta

SPLITS = ("train", "valid", "test")
ITEM_FIELD = 1  # the item is the second field; every other field is per user
# Observed attributes too fine-grained to help (one value per user) are left out.
_SKIP_ATTRS = {"user_id", "user_idx", "zip_code"}
_MAX_ATTR_VALUES = 1000
_NUMERIC_BINS = 5


def load_interactions(data_dir: Path) -> pl.DataFrame:
    """Interactions with checked labels (0/1 only) and splits."""
    path = Path(data_dir) / INTERACTIONS
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
    path = Path(data_dir) / USERS
    return read_parquet(path, ["user_id"]).with_columns(pl.col("user_id").cast(pl.String)) \
        if path.is_file() else None


class DenseProfiles:
    """Un-quantized profile vectors (quantize method ``none``); unknown users get zeros."""

    def __init__(self, codes_dir: Path) -> None:
        codes_dir = Path(codes_dir)
        meta = QuantizeMeta.read(codes_dir)
        path = meta.data_file(codes_dir)
        df = read_parquet(path, ["user_id"])
        self.columns = [c for c in df.columns if c != "user_id"]
        self.source = str(codes_dir)
        self._users = IdIndex(df["user_id"].cast(pl.String).to_numpy())
        self._x = np.vstack([df.select(self.columns).to_numpy().astype(np.float32),
                             np.zeros((1, len(self.columns)), np.float32)])
        self.compat = {"dense_columns": self.columns, "dense_sha256": sha256_file(path)}
        self.method = meta.method

    @property
    def user_ids(self) -> np.ndarray:
        return self._users.ids

    def lookup(self, user_ids: np.ndarray) -> np.ndarray:
        return self._x[self._users.positions(user_ids)]


CodeSource: TypeAlias = FeatureBank | DenseProfiles


def open_codes(path: Path, *, bank: bool = False, version: str | None = None) -> CodeSource:
    """A bank dir (``bank=True``), a quantizer codes dir, or a quantizer dense dir."""
    if bank:
        return FeatureBank.open(path, version)
    return DenseProfiles(path) if QuantizeMeta.read(Path(path)).kind == "dense" else FeatureBank.from_codes_dir(path)


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
class Split:
    """One split encoded for a feature map: ids, features and labels per row."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    x_cat: np.ndarray
    x_dense: np.ndarray
    y: np.ndarray


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

    def encoder(self, users: pl.DataFrame | None, codes: CodeSource | None) -> Encoder:
        """This map bound to a users table (for observed attributes) and a code source."""
        return Encoder(self, users, codes)

    def observed_columns(self, user_ids: np.ndarray, users: pl.DataFrame | None) -> list[np.ndarray]:
        """One index column per observed attribute; users or values not seen map to OOV."""
        if not self.observed:
            return []
        attrs = None
        if users is not None:
            attrs = pl.DataFrame({"user_id": pl.Series(user_ids, dtype=pl.String)}).join(
                users.unique("user_id", keep="first"), on="user_id", how="left", maintain_order="left")
        cols = []
        for col, vocab in self.observed.items():
            if attrs is None or col not in attrs.columns:
                cols.append(np.full(len(user_ids), len(vocab), np.int64))
            elif col in self.numeric_edges:
                vals = attrs[col].cast(pl.Float64).to_numpy()
                idx = np.searchsorted(self.numeric_edges[col], vals, side="right").astype(np.int64)
                idx[np.isnan(vals)] = len(vocab)
                cols.append(idx)
            else:
                cols.append(IdIndex(vocab).positions(attrs[col].cast(pl.String).to_numpy()))
        return cols

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> FeatureMap:
        raw = dict(raw)
        raw["codes"] = [tuple(c) for c in raw["codes"]]
        return cls(**raw)


class Encoder:
    """A feature map bound to one users table and one code source, ready to encode requests.

    Every per-user feature (the model's user index, observed attributes, profile codes,
    dense profile) is computed once here as a row of a table over one user index: the
    model's user vocabulary first, then users only the code source or users table knows,
    then a last row for unknown users. Encoding a request is then one id lookup for its
    users, one for its items and a row gather; the bank lookup and the model's user
    feature share the same position instead of hashing every user id twice."""

    def __init__(self, fmap: FeatureMap, users: pl.DataFrame | None, codes: CodeSource | None) -> None:
        if fmap.codes and not isinstance(codes, FeatureBank):
            raise InputError("this model was trained with profile codes; give it a bank or codes dir")
        if fmap.dense_dim and not isinstance(codes, DenseProfiles):
            raise InputError("this model was trained with dense profiles; give it their dir")
        vocab = IdIndex(fmap.users)
        known = [codes.user_ids] if codes is not None and (fmap.codes or fmap.dense_dim) else []
        if fmap.observed and users is not None:
            known.append(users["user_id"].to_numpy())
        extra = pd.unique(np.concatenate(known)) if known else np.zeros(0, object)
        ids = np.concatenate([vocab.ids, extra[vocab.positions(extra) == len(vocab)]])
        self._users = IdIndex(ids)
        n = len(ids)
        user_col = np.minimum(np.arange(n + 1, dtype=np.int64), len(vocab))  # past the vocabulary: OOV
        item_col = np.zeros(n + 1, np.int64)  # filled per request (ITEM_FIELD)
        attrs = [np.append(c, len(v)) for c, (_, v) in
                 zip(fmap.observed_columns(ids, users), fmap.observed.items())]
        table = np.column_stack([user_col, item_col, *attrs])
        if fmap.codes:  # unknown users: the bank's reserved code K_m
            assert isinstance(codes, FeatureBank)  # checked above
            unknown = np.asarray(codes.manifest.sizes, np.int64)[None, :]
            table = np.hstack([table, np.vstack([codes.lookup(ids), unknown])])
        self._table = table
        self._dense = np.zeros((n + 1, fmap.dense_dim), np.float32)  # unknown users: zeros
        if fmap.dense_dim:
            assert isinstance(codes, DenseProfiles)  # checked above
            self._dense[:n] = codes.lookup(ids)
        self._items = IdIndex(fmap.items)

    def encode(self, user_ids: np.ndarray, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(x_cat int64 (n, F), x_dense float32 (n, D)); unseen values map to OOV."""
        return self.take(*self.positions(user_ids, item_ids))

    def take(self, rows: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(x_cat, x_dense) of request positions (``positions``)."""
        x_cat = self._table[rows]
        x_cat[:, ITEM_FIELD] = items
        return x_cat, self._dense[rows]

    def positions(self, user_ids: np.ndarray, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row of ``user_rows`` per request, item index incl. OOV per request)."""
        if len(user_ids) != len(item_ids):
            raise InputError(f"{len(user_ids)} user ids but {len(item_ids)} item ids")
        return self._users.positions(user_ids), self._items.positions(item_ids)

    def user_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Every user-level feature per row (x_cat with a placeholder item column, x_dense);
        the last row is the unknown user."""
        return self._table, self._dense
