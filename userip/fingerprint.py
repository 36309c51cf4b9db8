"""Content fingerprints: what a stage's cache key and output location are made of.

A stage's key hashes its config section, the content of its input files and the source
of the code that computes it, never in-memory objects; equal keys mean equal outputs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import userip

_CHUNK = 1 << 20


def hash_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "blake2b").hexdigest()[:32]


def sha256_file(path: Path) -> str:
    """The full SHA-256 of a file: the hash stored in bank manifests and model records."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def hash_json(value: object, digest_size: int = 16) -> str:
    """Hash of a JSON-able value (keys sorted): config sections, parameters, id lists."""
    blob = json.dumps(value, sort_keys=True, default=str).encode()
    return hashlib.blake2b(blob, digest_size=digest_size).hexdigest()


def hash_paths(paths: Iterable[Path | str | None]) -> str:
    """Hash of the contents of files and of every file under directories, by relative name."""
    digest = hashlib.blake2b(digest_size=16)
    for root in paths:
        if root is None:
            digest.update(b"<none>")
            continue
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"input not found: {root}")
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files:
            if f.name.startswith(".") or "__pycache__" in f.parts:
                continue
            name = str(f.relative_to(root)) if root.is_dir() else f.name
            digest.update(f"{name}\0{hash_file(f)}\0".encode())
    return digest.hexdigest()


@cache
def code_version(*packages: str) -> str:
    """Hash of the Python sources of ``packages`` (``userip.<name>`` packages, by name)
    + our version."""
    srcs = []
    for pkg in packages:
        spec = importlib.util.find_spec(f"userip.{pkg}")
        for folder in (spec.submodule_search_locations or []) if spec else []:
            srcs += sorted(Path(folder).rglob("*.py"))
    return hashlib.blake2b(
        (userip.__version__ + hash_paths(srcs)).encode(), digest_size=8
    ).hexdigest()


def stage_key(stage: str, section: dict | str, inputs: Iterable[Path | str | None],
              packages: Iterable[str]) -> str:
    """The cache key of one stage run; also names its output directory
    (``<workdir>/<stage>/<key>``)."""
    return hash_json({"stage": stage, "section": section, "inputs": hash_paths(inputs),
                      "code": code_version(*packages)}, digest_size=8)


def model_fingerprint(model_dir: Path) -> str:
    """Cheap identity of a local HF model folder: its config and tokenizer files' content
    plus each weight file's name and size (hashing 16 GB of Llama weights every run is not
    worth it; weights are not edited in place)."""
    model_dir = Path(model_dir)
    digest = hashlib.blake2b(digest_size=16)
    for f in sorted(p for p in model_dir.iterdir() if p.is_file()):
        if f.suffix in {".json", ".txt", ".model"}:
            digest.update(f"{f.name}\0{hash_file(f)}\0".encode())
        else:
            digest.update(f"{f.name}\0{f.stat().st_size}\0".encode())
    return digest.hexdigest()
