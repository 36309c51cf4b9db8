"""What every baseline run shares: seeded subsamples, batching, and its output folder.

A run publishes one folder the project's way (``userip.atomic``): it works in a staging
folder beside ``out_dir`` and swaps it in only when everything is written, so a killed run
leaves the earlier output (or nothing), never half of one. ``metrics.json`` in that folder
holds the run's config and result; a later run with the same config finds it with
``finished`` and returns it without computing again (that is how runs resume). ``Once`` is
one such run: ``run`` computes or reads back, ``finished`` only reads back.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np

from userip.atomic import publish_dir, stage_of, staging_dir
from userip.errors import ConfigError

METRICS = "metrics.json"
T = TypeVar("T")


class Dataclass(Protocol):
    """What ``dataclasses.asdict`` takes: an instance of a dataclass (structurally)."""

    __dataclass_fields__: ClassVar[dict[str, Any]]


R = TypeVar("R", bound=Dataclass)


def draw(items: Sequence[T], n: int | None, rng: np.random.Generator, what: str) -> list[T]:
    """``n`` items drawn without replacement, kept in list order (all when ``n`` is None)."""
    if n is None:
        return list(items)
    if n > len(items):
        raise ConfigError(f"{what} asks for {n} samples; the protocol has {len(items)}")
    return [items[i] for i in np.sort(rng.choice(len(items), size=n, replace=False))]


def batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def finished(out_dir: Path, stage: str, config: dict[str, Any]) -> dict[str, Any] | None:
    """The result in ``out_dir``'s metrics.json when ``out_dir`` is a published output of
    ``stage`` run with ``config``; None when the run has to be computed."""
    if stage_of(out_dir) != stage:
        return None
    try:
        meta = json.loads((Path(out_dir) / METRICS).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("config") != config:
        return None
    result = meta.get("result")
    return result if isinstance(result, dict) else None


@contextmanager
def publishing(out_dir: Path, stage: str) -> Iterator[Path]:
    """A staging folder for ``stage``'s output, published as ``out_dir`` when the block ends
    without an error (refused up front when ``out_dir`` is someone else's folder)."""
    with staging_dir(out_dir, stage) as tmp:
        yield tmp
        publish_dir(tmp, out_dir, stage)


@dataclass(frozen=True)
class Once(Generic[R]):
    """A run published once as ``out_dir``: ``compute(folder)`` (a dataclass result; it
    writes its files into ``folder``) with metrics.json beside them, keyed by ``config``."""

    out_dir: Path
    stage: str
    config: dict[str, Any]
    result_type: type[R]
    compute: Callable[[Path], R]

    def finished(self) -> R | None:
        """The result of an earlier finished run of this config, or None."""
        done = finished(self.out_dir, self.stage, self.config)
        return None if done is None else self.result_type(**done)

    def run(self) -> R:
        """The finished result when there is one; otherwise compute and publish it."""
        done = self.finished()
        if done is not None:
            return done
        with publishing(self.out_dir, self.stage) as tmp:
            result = self.compute(tmp)
            (tmp / METRICS).write_text(json.dumps(
                {"config": self.config, "result": asdict(result)}, indent=2))
        return result
