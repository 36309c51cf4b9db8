"""Publish codes as an immutable bank version and look users up in it.

Publishing writes into a hidden temp dir beside the versions, renames it to
``version=<UTC timestamp>`` (atomic on one file system) and only then moves the
``LATEST`` pointer with ``os.replace``: a reader following ``LATEST`` never sees a
half-written version, and a publisher killed mid-write leaves only a ``.tmp-*`` dir that
readers ignore and the next publish removes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import polars as pl

from userip.errors import ConfigError, InputError, UseripError
from userip.fingerprint import sha256_file
from userip.ids import IdIndex

LATEST = "LATEST"
CODES_FILE = "codes.parquet"
MANIFEST_FILE = "manifest.json"
# Unknown users get code K_m for profile m (documented contract, see package docstring).
UNKNOWN_IS_K = True
_PREFIX = "version="
_TMP_PREFIX = ".tmp-"


class BankError(UseripError):
    """A bank that is missing, incomplete or does not match its manifest."""


class IncompatibleBankError(BankError):
    """A model trained on one bank scored against a bank whose codes mean something else."""


@dataclass(frozen=True)
class Manifest:
    """What a bank version holds; ``compat_hash`` covers only what changes code meanings."""

    profiles: tuple[tuple[str, int], ...]
    codebook_hash: str
    codebook_source: str
    lm_id: str | None
    data_fingerprint: str | None
    n_rows: int
    created_at: str
    method: str
    version: str = "unpublished"
    note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.profiles]

    @property
    def sizes(self) -> list[int]:
        return [k for _, k in self.profiles]

    def compat(self) -> dict[str, Any]:
        return {"profiles": [[n, k] for n, k in self.profiles], "codebook_hash": self.codebook_hash}

    @property
    def compat_hash(self) -> str:
        blob = json.dumps(self.compat(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["profiles"] = [{"name": n, "K": k} for n, k in self.profiles]
        out["compat_hash"] = self.compat_hash
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Manifest:
        raw = dict(raw)
        raw.pop("compat_hash", None)
        raw["profiles"] = tuple((p["name"], int(p["K"])) for p in raw["profiles"])
        return cls(**raw)


def read_meta(codes_dir: Path) -> dict[str, Any]:
    """The quantizer's ``meta.json``: method, kind and the profiles with their K."""
    path = Path(codes_dir) / "meta.json"
    if not path.is_file():
        raise InputError("quantizer meta.json not found", path=str(path))
    try:
        meta = json.loads(path.read_text())
        for p in meta["profiles"]:
            if not isinstance(p["name"], str) or int(p["K"]) < 1:
                raise ValueError(f"bad profile entry {p!r}")
        meta["method"], meta["kind"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"not a valid quantizer meta.json: {exc}", path=str(path)) from exc
    return meta


def read_parquet(path: Path, columns: Iterable[str] | None = None) -> pl.DataFrame:
    """Read a Parquet file, turning a missing or corrupt file into an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path=str(path))
    try:
        df = pl.read_parquet(path)
    except Exception as exc:  # polars raises several types for truncated/garbage files
        raise InputError(f"cannot read Parquet ({type(exc).__name__}: {exc})", path=str(path)) from exc
    missing = [c for c in (columns or ()) if c not in df.columns]
    if missing:
        raise InputError(f"missing columns {missing}; has {df.columns}", path=str(path))
    return df


def read_codes(codes_dir: Path) -> tuple[dict[str, Any], pl.DataFrame]:
    """Validated codes of one quantizer output dir: ids unique, codes in [0, K)."""
    codes_dir = Path(codes_dir)
    meta = read_meta(codes_dir)
    if meta["kind"] != "codes":
        raise InputError(f"kind is {meta['kind']!r}, a bank holds discrete codes only",
                         path=str(codes_dir / "meta.json"), field="kind")
    names = [p["name"] for p in meta["profiles"]]
    path = codes_dir / CODES_FILE
    df = read_parquet(path, ["user_id", *names]).select(
        pl.col("user_id").cast(pl.String), *[pl.col(n).cast(pl.Int32) for n in names])
    if df["user_id"].is_duplicated().any():
        dup = df.filter(pl.col("user_id").is_duplicated())["user_id"][0]
        raise InputError(f"user_id {dup!r} occurs more than once", path=str(path), field="user_id")
    for p in meta["profiles"]:
        bad = df.with_row_index("row").filter(
            pl.col(p["name"]).is_null() | (pl.col(p["name"]) < 0) | (pl.col(p["name"]) >= int(p["K"])))
        if bad.height:
            raise InputError(f"code {bad[p['name']][0]} outside [0, {p['K']})", path=str(path),
                             line=int(bad["row"][0]), field=p["name"])
    return meta, df


def build_manifest(codes_dir: Path, meta: dict[str, Any], n_rows: int, *,
                   codebook: Path | None = None, lm_id: str | None = None,
                   data_fingerprint: str | None = None) -> Manifest:
    """Manifest of a codes dir. The codebook hash is the sha256 of the codebook file
    (``codebook``, else ``<codes_dir>/codebooks.safetensors``); without one it falls back
    to the sha256 of ``meta.json``, which only pins the profile names and sizes."""
    codes_dir = Path(codes_dir)
    codebook = Path(codebook) if codebook else codes_dir / "codebooks.safetensors"
    if codebook.is_file():
        cb_hash, cb_source = sha256_file(codebook), str(codebook)
    else:
        cb_hash, cb_source = sha256_file(codes_dir / "meta.json"), "meta.json (no codebook file)"
    return Manifest(
        profiles=tuple((p["name"], int(p["K"])) for p in meta["profiles"]),
        codebook_hash=cb_hash, codebook_source=cb_source,
        lm_id=lm_id or meta.get("model"), data_fingerprint=data_fingerprint,
        n_rows=n_rows, created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        method=str(meta["method"]), note=meta.get("note"),
        extra={k: v for k, v in meta.items() if k not in {"profiles", "method", "kind", "note", "model"}},
    )


def _timestamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def _versions(bank_dir: Path) -> list[str]:
    return sorted(p.name for p in bank_dir.glob(f"{_PREFIX}*") if p.is_dir())


def publish(codes_dir: Path, bank_dir: Path, keep: int = 5, *, codebook: Path | None = None,
            lm_id: str | None = None, data_fingerprint: str | None = None) -> Path:
    """Publish ``codes_dir`` as a new bank version; keep the newest ``keep`` versions."""
    if keep < 1:
        raise ConfigError(f"keep must be >= 1, got {keep}")
    meta, df = read_codes(codes_dir)
    manifest = build_manifest(codes_dir, meta, df.height, codebook=codebook, lm_id=lm_id,
                              data_fingerprint=data_fingerprint)
    bank_dir = Path(bank_dir)
    bank_dir.mkdir(parents=True, exist_ok=True)
    for stale in bank_dir.glob(f"{_TMP_PREFIX}*"):  # left by a killed publisher
        shutil.rmtree(stale, ignore_errors=True)
    tmp = bank_dir / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        df.sort("user_id").write_parquet(tmp / CODES_FILE, compression="zstd")
        version = _timestamp()
        while (bank_dir / f"{_PREFIX}{version}").exists():  # same microsecond: take the next one
            time.sleep(1e-6)
            version = _timestamp()
        manifest = dataclasses.replace(manifest, version=version)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest.to_json(), indent=2))
        final = bank_dir / f"{_PREFIX}{version}"
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pointer = bank_dir / f"{LATEST}.{uuid.uuid4().hex}"
    pointer.write_text(final.name + "\n")
    os.replace(pointer, bank_dir / LATEST)
    for old in _versions(bank_dir)[:-keep]:
        shutil.rmtree(bank_dir / old, ignore_errors=True)
    return final


def _resolve_version(bank_dir: Path, version: str | None) -> Path:
    if not bank_dir.is_dir():
        raise BankError(f"bank directory not found: {bank_dir}")
    if version is None:
        pointer = bank_dir / LATEST
        if not pointer.is_file():
            raise BankError(f"{bank_dir}: no {LATEST} pointer; nothing has been published")
        name = pointer.read_text().strip()
    else:
        name = version if version.startswith(_PREFIX) else f"{_PREFIX}{version}"
    path = bank_dir / name
    if not path.is_dir():
        have = ", ".join(v.removeprefix(_PREFIX) for v in _versions(bank_dir)) or "none"
        raise BankError(f"{bank_dir}: version {name.removeprefix(_PREFIX)!r} does not exist "
                        f"(available: {have})")
    return path


class FeatureBank:
    """Codes of one bank version, indexed once for vectorised lookups."""

    def __init__(self, manifest: Manifest, user_ids: np.ndarray, codes: np.ndarray,
                 source: str) -> None:
        self.manifest = manifest
        self.source = source
        self._users = IdIndex(user_ids)
        # last row holds the unknown code K_m for every profile
        self._codes = np.vstack([codes.astype(np.int64),
                                 np.asarray(manifest.sizes, dtype=np.int64)[None, :]])

    @classmethod
    def open(cls, bank_dir: str | Path, version: str | None = None) -> FeatureBank:
        """Open ``version`` (a name under the bank, with or without ``version=``), else LATEST."""
        path = _resolve_version(Path(bank_dir), version)
        try:
            manifest = Manifest.from_json(json.loads((path / MANIFEST_FILE).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BankError(f"{path / MANIFEST_FILE}: unreadable manifest ({exc})") from exc
        df = read_parquet(path / CODES_FILE, ["user_id", *manifest.names])
        if df.height != manifest.n_rows:
            raise BankError(f"{path}: manifest says {manifest.n_rows} rows, codes.parquet has {df.height}")
        return cls(manifest, df["user_id"].cast(pl.String).to_numpy(),
                   df.select(manifest.names).to_numpy(), str(path))

    @classmethod
    def from_codes_dir(cls, codes_dir: str | Path, *, codebook: Path | None = None) -> FeatureBank:
        """An unpublished bank straight from a quantizer output dir (training, tests)."""
        meta, df = read_codes(Path(codes_dir))
        manifest = build_manifest(Path(codes_dir), meta, df.height, codebook=codebook)
        return cls(manifest, df["user_id"].to_numpy(), df.select(manifest.names).to_numpy(),
                   str(codes_dir))

    @property
    def n_users(self) -> int:
        return len(self._users)

    @property
    def user_ids(self) -> np.ndarray:
        """Every user the bank holds codes for (object array)."""
        return self._users.ids

    def lookup(self, user_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Codes (n, M) as int64; users not in the bank get code K_m in column m."""
        return self._codes[self._users.positions(user_ids)]

    def check_compatible(self, expected: dict[str, Any], what: str = "model") -> None:
        """Raise if this bank's profiles, sizes or codebook differ from ``expected``
        (a ``Manifest.compat()`` dict recorded at training time)."""
        have = self.manifest.compat()
        diffs = [f"{k}: {what} has {expected.get(k)!r}, bank has {have[k]!r}"
                 for k in have if have[k] != expected.get(k)]
        if diffs:
            raise IncompatibleBankError(f"bank {self.source} is incompatible with the {what}: "
                                        + "; ".join(diffs))


def memory_report(bank_dir: str | Path, version: str | None = None, *, lm_dim: int = 576,
                  tokens_per_profile: int = 1) -> dict[str, float]:
    """Bytes per user of the bank (on disk, and as int32 in memory) against storing θ in
    fp32 (M x tokens x d x 4 bytes; d = 576 for SmolLM2-135M, 4096 for Llama-3-8B)."""
    path = _resolve_version(Path(bank_dir), version)
    bank = FeatureBank.open(bank_dir, version)
    m = len(bank.manifest.profiles)
    n = max(bank.manifest.n_rows, 1)
    return {
        "users": bank.manifest.n_rows,
        "profiles": m,
        "bank_parquet_bytes_per_user": (path / CODES_FILE).stat().st_size / n,
        "bank_int32_bytes_per_user": 4.0 * m,
        "theta_fp32_bytes_per_user": 4.0 * m * tokens_per_profile * lm_dim,
        "lm_dim": lm_dim,
    }
