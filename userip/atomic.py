"""Publish a directory all at once: readers see the old version or the new, never half."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staging_dir(dest: Path) -> Iterator[Path]:
    """A temp dir beside ``dest`` (same filesystem, so rename is atomic), removed on exit."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_dir(src: Path, dest: Path) -> None:
    """Move the finished ``src`` to ``dest``, replacing any previous ``dest``.

    A directory cannot be renamed over a non-empty one, so the old one is first renamed
    aside; between the two renames ``dest`` is briefly absent, never partial.
    """
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(dest, old)
    os.rename(src, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
