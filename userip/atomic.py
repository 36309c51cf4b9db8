"""The one way a stage publishes a folder: staged beside it, swapped in under a lock.

Rules every stage follows through these helpers:

- A stage writes only into a folder that is absent, empty, or an earlier output of the
  same stage: one that holds the ``.userip-output`` marker naming that stage, which
  ``publish_dir`` writes. Anything else (a file, the user's own folder, the folder of
  the input dumps, the working directory) is refused before any work starts, and again
  at publish time.
- Work happens in a staging folder ``.tmp-<name>.<random>`` beside the destination (same
  file system, so the final rename is atomic). Its writer holds an exclusive ``flock`` on
  ``.alive`` inside it for as long as it lives, so a later stage can prove a leftover
  staging folder dead (the lock is free: the kernel drops it when the process dies) and
  remove it; a live one, or one it cannot prove dead, is left alone.
- The swap runs under an exclusive ``flock`` on the parent folder itself (no lock file
  is left in the user's folder): concurrent publishers into one folder take turns, and readers see the old output or the new one
  (briefly neither while an old one is renamed aside), never a mix.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from userip.errors import UseripError

MARKER = ".userip-output"
STAGING_PREFIX = ".tmp-"
_PREP_PREFIX = ".prep-"  # a staging folder being set up, before its lock is held
_PREP_GRACE_S = 600.0  # a ``.prep-`` folder older than this was left by a killed writer
_ALIVE = ".alive"
_OLD_PREFIX = ".old-"
# The stage of callers that do not name theirs (the profile stages publish this way).
UNNAMED_STAGE = "output"


class OutputDirError(UseripError):
    """An output folder that a stage may not write into."""


def stage_of(path: Path) -> str | None:
    """The stage named by ``path``'s marker, or None when it has no readable marker."""
    try:
        return str(json.loads((Path(path) / MARKER).read_text())["stage"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_output_dir(dest: Path, stage: str) -> Path:
    """``dest`` as an absolute path, if ``stage`` may publish there; else OutputDirError."""
    dest = Path(dest).absolute()
    real, cwd = dest.resolve(), Path.cwd().resolve()
    if real == cwd or real in cwd.parents:
        raise OutputDirError(f"{dest}: output folder is the working directory or holds it; "
                             "choose a new folder")
    if not dest.exists() and not dest.is_symlink():
        return dest
    if dest.is_symlink() or not dest.is_dir():
        raise OutputDirError(f"{dest}: exists and is not a folder; refusing to replace it")
    owner = stage_of(dest)
    if owner == stage:
        return dest
    if owner is not None:
        raise OutputDirError(f"{dest}: holds the output of stage {owner!r}, not {stage!r}; "
                             "refusing to replace it")
    if any(dest.iterdir()):
        raise OutputDirError(f"{dest}: folder is not empty and not an earlier {stage!r} output; "
                             "refusing to replace it (choose an empty or new folder)")
    return dest


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` for the block: a folder, or a file (created
    if needed). Two holders conflict even within one process."""
    path = Path(path)
    fd = os.open(path, os.O_RDONLY) if path.is_dir() else os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def remove_dead_staging(parent: Path) -> list[Path]:
    """Remove staging folders in ``parent`` whose writer is provably gone; returns them."""
    removed = []
    for tmp in [*Path(parent).glob(f"{_PREP_PREFIX}*"), *Path(parent).glob(f"{STAGING_PREFIX}*")]:
        if _dead(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def _dead(tmp: Path) -> bool:
    """A ``.tmp-`` folder is dead when its lock is free: its writer locked ``.alive``
    before giving it that name. A ``.prep-`` folder (a writer killed while setting up)
    may still be in its first microseconds, so it counts as dead only once it is old."""
    preparing = tmp.name.startswith(_PREP_PREFIX)
    try:
        fd = os.open(tmp / _ALIVE, os.O_RDONLY)
    except OSError:
        return preparing and _older_than(tmp, _PREP_GRACE_S)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # locked: its writer is alive
    else:
        return not preparing or _older_than(tmp, _PREP_GRACE_S)
    finally:
        os.close(fd)


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except OSError:
        return False


@contextmanager
def staging_dir(dest: Path, stage: str = UNNAMED_STAGE) -> Iterator[Path]:
    """A staging folder beside ``dest``, removed on exit; refuses a ``dest`` that
    ``stage`` may not replace before any work starts, and clears dead staging folders.

    The folder is set up as ``.prep-*`` (created, ``.alive`` locked) and only then renamed
    to ``.tmp-*``, so every ``.tmp-*`` folder has a lock that tells whether its writer lives.
    """
    dest = Path(dest).absolute()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(dest.parent):  # not mid-swap of another publisher
        check_output_dir(dest, stage)
    remove_dead_staging(dest.parent)
    prep = Path(tempfile.mkdtemp(prefix=f"{_PREP_PREFIX}{dest.name}.", dir=dest.parent))
    fd = os.open(prep / _ALIVE, os.O_RDWR | os.O_CREAT, 0o644)
    tmp = prep
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        tmp = prep.with_name(STAGING_PREFIX + prep.name[len(_PREP_PREFIX):])
        os.rename(prep, tmp)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        os.close(fd)


def publish_dir(src: Path, dest: Path, stage: str = UNNAMED_STAGE) -> None:
    """Mark the finished ``src`` as ``stage``'s output and move it to ``dest``, replacing
    an earlier output of the same stage (and nothing else)."""
    src = Path(src)
    dest = Path(dest).absolute()
    (src / _ALIVE).unlink(missing_ok=True)
    (src / MARKER).write_text(json.dumps({"stage": stage}) + "\n")
    with file_lock(dest.parent):
        check_output_dir(dest, stage)
        for left in dest.parent.glob(f"{_OLD_PREFIX}{dest.name}.*"):  # the lock holder's only
            shutil.rmtree(left, ignore_errors=True)
        old = None
        try:
            os.rename(src, dest)  # dest absent or an empty folder
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            old = dest.with_name(f"{_OLD_PREFIX}{dest.name}.{uuid.uuid4().hex}")
            os.rename(dest, old)
            os.rename(src, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace the file ``path`` with ``text`` in one step (a reader sees old or new)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(text)
    os.replace(tmp, path)


def keep_beside(src: Path, dest: Path, suffix: str) -> Path:
    """Move the file ``src`` out of a staging folder to ``<dest>.<suffix>`` (or, when that
    name is taken, ``<dest>.<n>.<suffix>``: an existing file is never replaced)."""
    dest = Path(dest).absolute()
    dest.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1000):
        target = dest.with_name(f"{dest.name}.{suffix}" if n == 0 else f"{dest.name}.{n}.{suffix}")
        try:
            os.link(src, target)  # fails if target exists: no check-then-write race
        except FileExistsError:
            continue
        os.unlink(src)
        return target
    raise OutputDirError(f"{dest}: 1000 earlier .{suffix} files beside it; remove some")
