"""Publish codes as an immutable bank version and look users up in it.

Publishing writes into a staging folder beside the versions (``userip.atomic``), and
under the bank's lock (``.bank.lock``) renames it to ``version=<UTC timestamp>``, moves
the ``LATEST`` pointer with ``os.replace`` if the version is the newest, and applies
retention: a reader following ``LATEST`` never sees a half-written version, two
publishers never touch each other's staging folders, and a publisher killed mid-write
leaves only a ``.tmp-*`` folder that readers ignore and a later publish removes once it
can prove its writer dead. Opening a version checks it against its manifest (sha256 of
``codes.parquet`` and of the user index, row count) and checks every id and code, with
column-wide operations only (no Python loop over users).

A version holds ``codes.parquet`` (``user_id`` + one int32 column per profile, sorted by
``user_id``: the export an online store reads) and ``user_index.npy``
(``feature_bank.index``: the ids' 64-bit hashes, sorted, with the row of each), written
in the same staging folder and named in the manifest's ``index`` entry (hash function,
seed, sha256). Opening memory-maps the index (the mapping keeps the file readable after
retention deletes the version); a lookup hashes its query ids and confirms every
candidate row against the exact string id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from userip.atomic import (
    MARKER,
    check_output_dir,
    file_lock,
    publish_dir,
    stage_of,
    staging_dir,
    write_text_atomic,
)
from userip.errors import ConfigError, InputError, UseripError
from userip.feature_bank.index import (
    HASH_NAME,
    INDEX_FILE,
    IndexFileError,
    UserIndex,
    new_seed,
    sorted_hashes,
    write_index,
)
from userip.fingerprint import sha256_file
from userip.profile_infer.layout import CODEBOOKS
from userip.quantize.layout import QuantizeMeta

LATEST = "LATEST"
CODES_FILE = "codes.parquet"
MANIFEST_FILE = "manifest.json"
# Unknown users get code K_m for profile m (documented contract, see package docstring).
UNKNOWN_IS_K = True
_PREFIX = "version="
_VERSION_NAME = re.compile(r"version=[0-9A-Za-z.:_-]+")
_VERSION_STAGE = "bank-version"
_BANK_LOCK = ".bank.lock"
_RETIRED = ".retired.json"


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
    codes_sha256: str | None = None
    # the user index file: {"hash": HASH_NAME, "seed": int, "sha256": str}; None in
    # versions published before it existed (opening those builds the index in memory)
    index: dict[str, Any] | None = None
    note: str | None = None
    # the profile folder the codes were quantized from: the nightly refresh re-infers on it
    source_profile: str | None = None
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
        if "source_profile" not in raw:  # versions published before it was a field
            raw["extra"] = dict(raw.get("extra", {}))
            raw["source_profile"] = raw["extra"].pop("source_profile", None)
        return cls(**raw)


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


def read_codes(codes_dir: Path) -> tuple[QuantizeMeta, pl.DataFrame]:
    """Validated codes of one quantizer output dir, sorted by user id: at least one user,
    ids non-null string scalars and unique, codes integers in [0, K) (K is the reserved
    unknown code)."""
    codes_dir = Path(codes_dir)
    meta = QuantizeMeta.read(codes_dir)
    if meta.kind != "codes":
        raise InputError(f"kind is {meta.kind!r}, a bank holds discrete codes only",
                         path=str(QuantizeMeta.path(codes_dir)), field="kind")
    path = meta.data_file(codes_dir)
    df = read_parquet(path, ["user_id", *meta.names])
    return meta, check_codes(df, meta.sizes, path)


def check_codes(df: pl.DataFrame, profiles: Sequence[tuple[str, int]], path: Path, *,
                published: bool = False) -> pl.DataFrame:
    """``df`` as (user_id String, one Int32 column per profile), sorted by user_id, if it
    is a valid bank; else InputError naming the file, row and column. ``published``: df is
    a bank version's file, which publish wrote sorted; it is checked to be sorted instead
    of sorted here. Ids are unique when each is greater than the one before it."""
    names = [n for n, _ in profiles]
    reserved = [n for n in names if n == "user_id" or n.startswith("dist_")] + \
        [n for n in set(names) if names.count(n) > 1]
    if reserved:
        raise InputError(f"profile name {reserved[0]!r} is reserved or repeated", path=str(path))
    if df.height == 0:
        raise InputError("no users: a bank needs at least one", path=str(path))
    if df.schema["user_id"] not in (pl.String, pl.Categorical) and not df.schema["user_id"].is_integer():
        raise InputError(f"user_id has type {df.schema['user_id']}, not text or integer",
                         path=str(path), field="user_id")
    for n in names:
        if not df.schema[n].is_integer():
            raise InputError(f"codes have type {df.schema[n]}, not integer", path=str(path), field=n)
    df = df.select(pl.col("user_id").cast(pl.String), *names)
    if df["user_id"].null_count():
        raise InputError("user_id is null", path=str(path), line=int(df["user_id"].is_null().arg_max() or 0),
                         field="user_id")
    for name, k in profiles:
        col = df[name]
        if col.null_count() or ((col < 0) | (col >= k)).any():
            bad = df.with_row_index("row").filter(
                pl.col(name).is_null() | (pl.col(name) < 0) | (pl.col(name) >= k))
            raise InputError(f"code {bad[name][0]} outside [0, {k})", path=str(path),
                             line=int(bad["row"][0]), field=name)
    if not published:  # one thread: about a quarter less peak memory than a parallel sort
        df = df.sort("user_id", multithreaded=False)
    ids = df["user_id"]
    not_after = ids.slice(1) <= ids.slice(0, ids.len() - 1)
    if not_after.any():
        row = int(not_after.arg_max() or 0)
        if ids[row] == ids[row + 1]:
            raise InputError(f"user_id {ids[row]!r} occurs more than once", path=str(path),
                             field="user_id")
        raise InputError("user ids are not in the sorted order publish wrote them in",
                         path=str(path), line=row + 1, field="user_id")
    return df.with_columns(pl.col(n).cast(pl.Int32) for n in names)


def build_manifest(codes_dir: Path, meta: QuantizeMeta, n_rows: int, *,
                   codebook: Path | None = None, lm_id: str | None = None,
                   data_fingerprint: str | None = None) -> Manifest:
    """Manifest of a codes dir. The codebook hash is the sha256 of the codebook file
    (``codebook``, else ``<codes_dir>/codebooks.safetensors``); without one it falls back
    to the sha256 of ``meta.json``, which only pins the profile names and sizes."""
    codes_dir = Path(codes_dir)
    codebook = Path(codebook) if codebook else codes_dir / CODEBOOKS
    if codebook.is_file():
        cb_hash, cb_source = sha256_file(codebook), str(codebook)
    else:
        cb_hash = sha256_file(QuantizeMeta.path(codes_dir))
        cb_source = f"{QuantizeMeta.FILE} (no codebook file)"
    return Manifest(
        profiles=tuple(meta.sizes),
        codebook_hash=cb_hash, codebook_source=cb_source,
        lm_id=lm_id or meta.model, data_fingerprint=data_fingerprint,
        n_rows=n_rows, created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        method=meta.method, note=meta.note, source_profile=meta.source_profile,
        extra=meta.model_dump(mode="json", exclude_none=True,
                              exclude={"profiles", "method", "kind", "note", "model", "source_profile"}),
    )


def _timestamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def _versions(bank_dir: Path) -> list[str]:
    return sorted(p.name for p in bank_dir.glob(f"{_PREFIX}*") if p.is_dir())


def _latest_name(bank_dir: Path) -> str | None:
    """The version LATEST names, checked to be a plain ``version=`` name (never a path)."""
    try:
        name = (bank_dir / LATEST).read_text().strip()
    except FileNotFoundError:
        return None
    if not _VERSION_NAME.fullmatch(name):
        raise BankError(f"{bank_dir / LATEST}: names {name!r}, not a version inside the bank")
    return name


def _claim_bank(bank_dir: Path) -> None:
    """Refuse a ``bank_dir`` that is neither absent, empty, nor a bank; mark it a bank."""
    legacy = stage_of(bank_dir) is None and (bank_dir / LATEST).is_file()  # before markers
    if not legacy:
        check_output_dir(bank_dir, "bank")
    bank_dir.mkdir(parents=True, exist_ok=True)
    if stage_of(bank_dir) is None:
        write_text_atomic(bank_dir / MARKER, json.dumps({"stage": "bank"}) + "\n")


def publish(codes_dir: Path, bank_dir: Path, keep: int = 5, *, codebook: Path | None = None,
            lm_id: str | None = None, data_fingerprint: str | None = None,
            grace_seconds: float = 60.0) -> Path:
    """Publish ``codes_dir`` as a new bank version; keep the newest ``keep`` versions.

    The version is named when the publish starts. The rename into place, the ``LATEST``
    move and retention run under the bank's lock; ``LATEST`` moves only when the new
    version is the newest, so a slow publisher that started first never hides a newer
    one. Retention never deletes the version ``LATEST`` names, nor, for
    ``grace_seconds`` after it was replaced, the one it named before (a reader may have
    just read the old pointer)."""
    if keep < 1:
        raise ConfigError(f"keep must be >= 1, got {keep}")
    bank_dir = Path(bank_dir).absolute()
    meta, df = read_codes(codes_dir)
    manifest = build_manifest(codes_dir, meta, df.height, codebook=codebook, lm_id=lm_id,
                              data_fingerprint=data_fingerprint)
    _claim_bank(bank_dir)
    version = _timestamp()
    with staging_dir(bank_dir / f"{_PREFIX}{version}", stage=_VERSION_STAGE) as tmp:
        df.write_parquet(tmp / CODES_FILE, compression="zstd")
        ids = df["user_id"]
        del df  # the codes are written: only the ids are needed for the index
        seed = new_seed()
        write_index(tmp / INDEX_FILE, *sorted_hashes(ids, seed))
        index = {"hash": HASH_NAME, "seed": seed, "sha256": sha256_file(tmp / INDEX_FILE)}
        digest = sha256_file(tmp / CODES_FILE)
        with file_lock(bank_dir / _BANK_LOCK):
            while (bank_dir / f"{_PREFIX}{version}").exists():  # same microsecond: next one
                version = _timestamp()
            manifest = dataclasses.replace(manifest, version=version, codes_sha256=digest,
                                           index=index)
            (tmp / MANIFEST_FILE).write_text(json.dumps(manifest.to_json(), indent=2))
            final = bank_dir / f"{_PREFIX}{version}"
            publish_dir(tmp, final, stage=_VERSION_STAGE)
            previous = _latest_name(bank_dir)
            if previous is None or final.name >= max(_versions(bank_dir)):
                write_text_atomic(bank_dir / LATEST, final.name + "\n")
                if previous is not None and previous != final.name:
                    write_text_atomic(bank_dir / _RETIRED, json.dumps(
                        {"version": previous, "at": time.time()}) + "\n")
            _retain(bank_dir, keep, grace_seconds)
    return final


def _retain(bank_dir: Path, keep: int, grace_seconds: float) -> None:
    """Delete versions beyond the newest ``keep``, sparing LATEST's and, within the grace
    period, the one LATEST named before. Runs under the bank lock."""
    spare = {_latest_name(bank_dir)}
    try:
        retired = json.loads((bank_dir / _RETIRED).read_text())
        if time.time() - float(retired["at"]) < grace_seconds:
            spare.add(str(retired["version"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no record (or an unreadable one): nothing is in its grace period
    for old in _versions(bank_dir)[:-keep]:
        if old not in spare:
            shutil.rmtree(bank_dir / old, ignore_errors=True)


def _resolve_version(bank_dir: Path, version: str | None) -> Path:
    if not bank_dir.is_dir():
        raise BankError(f"bank directory not found: {bank_dir}")
    if version is None:
        name = _latest_name(bank_dir)
        if name is None:
            raise BankError(f"{bank_dir}: no {LATEST} pointer; nothing has been published")
    else:
        name = version if version.startswith(_PREFIX) else f"{_PREFIX}{version}"
        if not _VERSION_NAME.fullmatch(name):
            raise BankError(f"{bank_dir}: {version!r} is not a version name")
    path = bank_dir / name
    if not path.is_dir():
        have = ", ".join(v.removeprefix(_PREFIX) for v in _versions(bank_dir)) or "none"
        raise BankError(f"{bank_dir}: version {name.removeprefix(_PREFIX)!r} does not exist "
                        f"(available: {have})")
    return path


class FeatureBank:
    """Codes of one bank version with its user index, for vectorised lookups."""

    def __init__(self, manifest: Manifest, frame: pl.DataFrame, source: str,
                 index: tuple[Path, int] | None = None) -> None:
        """``frame``: checked codes (``check_codes``); ``index``: its user index file
        (sha256 already checked against the manifest) and hash seed, else one is built."""
        self.manifest = manifest
        self.source = source
        self._ids = frame["user_id"]
        if index is None:
            self._users = UserIndex.build(self._ids, new_seed())
        else:
            try:
                self._users = UserIndex.load(index[0], self._ids, index[1])
            except IndexFileError as exc:
                raise BankError(f"{index[0]}: {exc}") from exc
        # last row holds the unknown code K_m for every profile
        sizes = np.asarray(manifest.sizes, dtype=np.int64)
        self._codes = np.empty((frame.height + 1, len(sizes)), np.min_scalar_type(sizes.max()))
        for j, name in enumerate(manifest.names):  # a column at a time: no int32 copy of all
            self._codes[:-1, j] = frame[name].to_numpy()
        self._codes[-1] = sizes

    @classmethod
    def open(cls, bank_dir: str | Path, version: str | None = None) -> FeatureBank:
        """Open ``version`` (a name under the bank, with or without ``version=``), else
        LATEST, after checking it against its manifest: row count, sha256 of the codes
        file and of the user index, non-null unique ids, codes in [0, K). A LATEST
        version deleted between reading the pointer and reading its files is retried on
        the new pointer."""
        bank_dir = Path(bank_dir)
        for attempt in range(5):
            path = _resolve_version(bank_dir, version)
            try:
                return cls._open_version(path)
            except FileNotFoundError as exc:
                # retention deletes a version only after LATEST has moved off it: one
                # LATEST no longer names is being deleted (its folder may still be there,
                # part emptied), not incomplete
                retired = version is None and _latest_name(bank_dir) != path.name
                if not retired and path.is_dir():
                    raise BankError(f"{path}: incomplete version ({exc})") from exc
                if not retired or attempt == 4:
                    raise BankError(f"{path}: deleted while opening it") from exc
        raise AssertionError("unreachable")

    @classmethod
    def _open_version(cls, path: Path) -> FeatureBank:
        try:
            manifest = Manifest.from_json(json.loads((path / MANIFEST_FILE).read_text()))
        except FileNotFoundError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BankError(f"{path / MANIFEST_FILE}: unreadable manifest ({exc})") from exc
        codes = path / CODES_FILE
        if not codes.is_file():
            raise FileNotFoundError(f"{codes}: missing")
        try:
            df = read_parquet(codes, ["user_id", *manifest.names])
        except InputError:
            if not codes.exists():  # deleted by retention while being read: retry on LATEST
                raise FileNotFoundError(f"{codes}: deleted while reading") from None
            raise
        if df.height != manifest.n_rows:
            raise BankError(f"{path}: manifest says {manifest.n_rows} rows, codes.parquet has {df.height}")
        if manifest.codes_sha256 is None:
            raise BankError(f"{path / MANIFEST_FILE}: no codes_sha256 (published by an older "
                            "userip); re-publish it with `userip export`")
        if sha256_file(codes) != manifest.codes_sha256:
            raise BankError(f"{codes}: sha256 differs from its manifest; the file was replaced")
        index = None if manifest.index is None else _index_of(path, manifest.index)
        df = check_codes(df, manifest.profiles, codes, published=True)
        return cls(manifest, df, str(path), index)

    @classmethod
    def from_codes_dir(cls, codes_dir: str | Path, *, codebook: Path | None = None) -> FeatureBank:
        """An unpublished bank straight from a quantizer output dir (training, tests)."""
        meta, df = read_codes(Path(codes_dir))
        manifest = build_manifest(Path(codes_dir), meta, df.height, codebook=codebook)
        return cls(manifest, df, str(codes_dir))

    @property
    def n_users(self) -> int:
        return len(self._ids)

    @property
    def user_ids(self) -> np.ndarray:
        """Every user the bank holds codes for (object array, sorted; built on each call)."""
        return self._ids.to_numpy().astype(object, copy=False)

    def lookup(self, user_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Codes (n, M) as int64; users not in the bank get code K_m in column m."""
        return self._codes[self._users.positions(user_ids)].astype(np.int64)

    def check_compatible(self, expected: dict[str, Any], what: str = "model") -> None:
        """Raise if this bank's profiles, sizes or codebook differ from ``expected``
        (a ``Manifest.compat()`` dict recorded at training time)."""
        have = self.manifest.compat()
        diffs = [f"{k}: {what} has {expected.get(k)!r}, bank has {have[k]!r}"
                 for k in have if have[k] != expected.get(k)]
        if diffs:
            raise IncompatibleBankError(f"bank {self.source} is incompatible with the {what}: "
                                        + "; ".join(diffs))


def _index_of(path: Path, entry: Any) -> tuple[Path, int]:
    """The user index file of the version at ``path`` and its hash seed, checked against
    the manifest's ``index`` entry (hash function, seed, sha256)."""
    index_file = path / INDEX_FILE
    if not isinstance(entry, dict) or entry.get("hash") != HASH_NAME \
            or not isinstance(entry.get("seed"), int) or not 0 <= entry["seed"] < 2**64:
        raise BankError(f"{path / MANIFEST_FILE}: index entry {entry!r} is not a {HASH_NAME!r} "
                        "index; re-publish it with `userip export`")
    if not index_file.is_file():
        raise FileNotFoundError(f"{index_file}: missing")
    if sha256_file(index_file) != entry.get("sha256"):
        raise BankError(f"{index_file}: sha256 differs from its manifest; the file was replaced")
    return index_file, entry["seed"]


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
