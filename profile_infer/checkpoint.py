"""Checkpoints of a profile run: atomic writes, fingerprinted, loaded without pickle.

Files live in ``<out>.ckpt/`` as ``<kind>.rank<r>of<w>.pt``: ``state`` (everything a
resume needs) and ``best`` (what the best joint epoch would publish). They are read with
``torch.load(weights_only=True)``: tensors and plain containers only, so a file planted
in the checkpoint folder cannot run code. A file written for other settings or data (its
fingerprint differs) is ignored with a warning.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, ckpt_dir: Path, fingerprint: str, rank: int = 0, world: int = 1) -> None:
        self.dir, self.fingerprint = Path(ckpt_dir), fingerprint
        self.rank, self.world = rank, world

    def path(self, kind: str) -> Path:
        return self.dir / f"{kind}.rank{self.rank}of{self.world}.pt"

    def save(self, kind: str, state: dict) -> None:
        """Write to a temp file and rename: a kill never leaves a torn file behind."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(kind)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"fingerprint": self.fingerprint, **state}, tmp)
        os.replace(tmp, path)

    def load(self, kind: str, mmap: bool = False) -> dict | None:
        """The saved state, or None when there is none for these settings and data."""
        path = self.path(kind)
        if not path.is_file():
            return None
        try:
            state = torch.load(path, weights_only=True, mmap=mmap)
        except Exception as exc:  # noqa: BLE001 - torn, foreign or hostile files alike
            log.warning("%s is not a checkpoint this version can read (%s); ignored",
                        path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return None
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            log.warning("%s belongs to other settings or data; ignored", path)
            return None
        return state
