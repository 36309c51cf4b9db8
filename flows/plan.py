"""The pipeline as a table of stages, and the one loop that runs a plan of them.

A stage is a row: what computes it, how its content key is made (config part, the
outputs of the stages it reads, its code), its parameters and the file that marks it
done. The loop runs the planned stages of a table in order; an unplanned stage that a
planned one reads must already be done with the same settings. The output folder
(``<workdir>/<folder>/<key>``) is the one record of what is done: a stage whose ``done``
file exists is not computed again, whatever the orchestrator's cache holds.

No Prefect here: ``flows.userip_flow`` declares the tables with Prefect tasks as the
``run`` of each row, and the tests run the loop with plain functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from userip.config import Config
from userip.errors import ConfigError, UseripError
from userip.fingerprint import stage_key

Dirs = dict[str, Path]
"""Output folder of each stage resolved so far, by stage name."""


class StageNotRun(UseripError):
    """A stage the plan needs has no finished output for these settings."""


def _own_folder(cfg: Config, out: Path) -> Path:
    return out


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[..., object]
    """Computes the stage, called as ``run(out_dir=, done=, refresh=, **params)``."""
    section: Callable[[Config], Any] = lambda cfg: None
    """The config part that changes this stage's output (its run settings left out)."""
    reads: tuple[str, ...] = ()
    """Earlier stages whose outputs this one needs."""
    inputs: Callable[[Config, Dirs], Sequence[Path | str | None]] | None = None
    """Files or folders whose content is in the key; default: the folders of ``reads``."""
    code: tuple[str, ...] = ()
    """Packages whose source is in the key."""
    params: Callable[[Config, Dirs], dict[str, Any]] = lambda cfg, dirs: {}
    folder: str | None = None
    """``<workdir>/<folder>/<key>``; default: the stage's name."""
    shares: str | None = None
    """Write into this earlier stage's folder (same key) instead of one's own."""
    done: Callable[[Config, Path], Path] = _own_folder
    """The file or folder whose existence marks the stage finished."""
    output: Callable[[Path], str] = str
    """What the flow reports for the stage, from its folder."""
    if_absent: Callable[[Config, dict[str, str]], dict[str, str]] | None = None
    """A stage that may legitimately produce nothing (the nightly refresh with no changed
    user): when its folder is absent after the run, the plan ends with these outputs."""

    def key_paths(self, cfg: Config, dirs: Dirs) -> Sequence[Path | str | None]:
        if self.inputs is not None:
            return self.inputs(cfg, dirs)
        return [dirs[name] for name in self.reads]


def stage_names(table: Sequence[Stage]) -> tuple[str, ...]:
    return tuple(s.name for s in table)


def select(table: Sequence[Stage], stages: Iterable[str] | None = None,
           from_stage: str | None = None) -> list[str]:
    """The planned stages, in table order: ``stages`` (default all) or ``from_stage`` on."""
    names = stage_names(table)
    if stages and from_stage:
        raise ConfigError("give either --stages or --from-stage, not both")
    if from_stage:
        if from_stage not in names:
            raise ConfigError(f"unknown stage {from_stage!r}; stages are {', '.join(names)}")
        return list(names[names.index(from_stage):])
    chosen = list(stages or names)
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        raise ConfigError(f"unknown stage {unknown[0]!r}; stages are {', '.join(names)}")
    return [n for n in names if n in chosen]


def needed(table: Sequence[Stage], plan: Sequence[str]) -> list[Stage]:
    """The planned stages and every earlier one they read, directly or not, in order."""
    by_name = {s.name: s for s in table}
    wanted: set[str] = set()
    todo = list(plan)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            stage = by_name[name]
            todo.extend([*stage.reads, *([stage.shares] if stage.shares else [])])
    return [s for s in table if s.name in wanted]


def resolve(cfg: Config, stage: Stage, dirs: Dirs) -> Path:
    """The stage's output folder under these settings and inputs."""
    if stage.shares:
        return dirs[stage.shares]
    folder = stage.folder or stage.name
    key = stage_key(folder, stage.section(cfg), stage.key_paths(cfg, dirs), stage.code)
    return cfg.stage_dir(folder) / key


def run_plan(cfg: Config, table: Sequence[Stage], plan: Sequence[str],
             refresh: bool = False, log: Callable[[str], None] = print) -> dict[str, str]:
    """Run ``plan`` (stage names of ``table``); returns each needed stage's output."""
    dirs: Dirs = {}
    outputs: dict[str, str] = {}
    for stage in needed(table, plan):
        out = resolve(cfg, stage, dirs)
        dirs[stage.name] = out
        done = stage.done(cfg, out)
        if stage.name in plan:
            if done.exists() and not refresh:
                log(f"stage {stage.name}: done with these settings at {out}")
            stage.run(out_dir=str(out), done=str(done), refresh=refresh, **stage.params(cfg, dirs))
            if stage.if_absent is not None and not out.exists():
                return stage.if_absent(cfg, outputs)
        if not stage.done(cfg, out).exists():
            raise StageNotRun(f"stage {stage.name!r} has not run with these settings "
                              f"(expected {done}); run it first or add it to --stages")
        outputs[stage.name] = stage.output(out)
    return outputs
