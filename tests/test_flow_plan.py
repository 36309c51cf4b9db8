"""The flow's stage table and the loop that runs it, for every plan ``userip run`` accepts.

The rows are the real ``FULL`` table (keys, reads, done files, shared folders); only what
each row runs is a fast stand-in that writes the stage's done file, so every one of the
127 plans runs in a few seconds without Prefect."""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from pathlib import Path

import pytest

from userip.config import Config, load_config
from userip.downstream.layout import RunLayout
from userip.errors import ConfigError
from userip.flows.plan import StageNotRun, needed, run_plan, select, stage_names
from userip.flows.userip_flow import FULL, per_model_sections
from userip.tasks.stages import VERSION_RECORD

NAMES = stage_names(FULL)
PLANS = [list(p) for n in range(1, len(NAMES) + 1) for p in itertools.combinations(NAMES, n)]


class Recorder:
    """Stand-in runs: count every call and every computation (a call whose done file was
    missing, or refresh), and write the done file a real stage would."""

    def __init__(self, root: Path) -> None:
        self.root, self.calls, self.computed = root, Counter(), Counter()

    def table(self):
        return tuple(dataclasses.replace(s, run=self._stand_in(s.name)) for s in FULL)

    def _stand_in(self, name: str):
        def run(*, out_dir: str, done: str, refresh: bool, **params) -> str:
            self.calls[name] += 1
            if refresh or not Path(done).exists():
                self.computed[name] += 1
                _write(name, Path(out_dir), self.root / f"bank/version={self.computed[name]}", params)
            return out_dir
        return run


def _write(name: str, out: Path, version: Path, params: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if name == "quantize":
        (out / "userip").mkdir(exist_ok=True)
    elif name == "export":
        version.mkdir(parents=True)
        (out / VERSION_RECORD).write_text(f"{version}\n")
    elif name == "train":
        cfg = Config(downstream=params["section"]).downstream
        for model in per_model_sections(cfg):
            RunLayout(out).trained_marker(model).write_text("done\n")
    elif name == "evaluate":
        RunLayout(out).evaluated.write_text("done\n")
    elif name == "report":
        RunLayout(out).report.write_text("# report\n")
    (out / "payload").write_text(name)  # content, so later keys hash something


@pytest.fixture()
def cfg(tmp_path: Path) -> Config:
    return load_config("configs/tiny.yaml", {"workdir": str(tmp_path / "work")})


def test_select_names_plans_in_table_order() -> None:
    assert select(FULL) == list(NAMES)
    assert select(FULL, ["report", "prepare"]) == ["prepare", "report"]
    for i, name in enumerate(NAMES):
        assert select(FULL, from_stage=name) == list(NAMES[i:])
    with pytest.raises(ConfigError, match="unknown stage 'bogus'"):
        select(FULL, ["bogus"])
    with pytest.raises(ConfigError, match="either"):
        select(FULL, ["train"], "train")


def test_every_plan_after_a_full_run_calls_the_planned_stages_and_computes_nothing(
        cfg: Config, tmp_path: Path) -> None:
    rec = Recorder(tmp_path)
    table = rec.table()
    full = run_plan(cfg, table, NAMES, log=lambda _: None)
    assert rec.computed == Counter({n: 1 for n in NAMES})
    for plan in PLANS:
        rec.calls.clear()
        outputs = run_plan(cfg, table, plan, log=lambda _: None)
        assert rec.calls == Counter(plan), plan
        assert set(outputs) == {s.name for s in needed(table, plan)}, plan
        assert outputs == {k: full[k] for k in outputs}, plan  # same folders, same versions
    assert rec.computed == Counter({n: 1 for n in NAMES})


@pytest.mark.parametrize("plan", PLANS, ids="-".join)
def test_a_plan_on_a_fresh_workdir_runs_or_names_the_stage_it_misses(plan: list[str],
                                                                    tmp_path: Path) -> None:
    cfg = load_config("configs/tiny.yaml", {"workdir": str(tmp_path / "work")})
    rec = Recorder(tmp_path)
    table = rec.table()
    missing = [s.name for s in needed(table, plan) if s.name not in plan]
    if missing:
        with pytest.raises(StageNotRun, match=f"stage {missing[0]!r} has not run"):
            run_plan(cfg, table, plan, log=lambda _: None)
    else:
        outputs = run_plan(cfg, table, plan, log=lambda _: None)
        assert list(outputs) == plan and rec.computed == Counter(plan)


def test_stages_up_to_train_stop_after_train(cfg: Config, tmp_path: Path) -> None:
    """``--stages prepare infer quantize export train`` used to train, then fail for want
    of evaluate.done."""
    rec = Recorder(tmp_path)
    outputs = run_plan(cfg, rec.table(), NAMES[:5], log=lambda _: None)
    assert list(outputs) == list(NAMES[:5]) and "evaluate" not in rec.calls


def test_run_settings_keep_the_folders_and_learned_settings_move_only_later_stages(
        tmp_path: Path) -> None:
    rec = Recorder(tmp_path)
    work = {"workdir": str(tmp_path / "work")}
    base = run_plan(load_config("configs/tiny.yaml", work), rec.table(), NAMES, log=lambda _: None)
    run_only = {**work, "profile.checkpoint_every": 7, "downstream.threads": 2,
                "downstream.workers": 2, "bank.keep_versions": 3}
    assert run_plan(load_config("configs/tiny.yaml", run_only), rec.table(), NAMES,
                    log=lambda _: None) == base
    changed = run_plan(load_config("configs/tiny.yaml", {**work, "downstream.epochs": 1}),
                       rec.table(), NAMES, log=lambda _: None)
    assert [k for k in NAMES if changed[k] != base[k]] == ["train", "evaluate", "report"]


def test_an_export_whose_version_retention_removed_publishes_again(cfg: Config,
                                                                   tmp_path: Path) -> None:
    rec = Recorder(tmp_path)
    first = run_plan(cfg, rec.table(), NAMES[:4], log=lambda _: None)
    Path(first["export"]).rmdir()
    again = run_plan(cfg, rec.table(), NAMES[:4], log=lambda _: None)
    assert rec.computed["export"] == 2 and again["export"] != first["export"]
    assert Path(again["export"]).is_dir()


def test_refresh_recomputes_the_planned_stages_only(cfg: Config, tmp_path: Path) -> None:
    rec = Recorder(tmp_path)
    run_plan(cfg, rec.table(), NAMES, log=lambda _: None)
    run_plan(cfg, rec.table(), ["quantize"], refresh=True, log=lambda _: None)
    assert rec.computed == Counter({**{n: 1 for n in NAMES}, "quantize": 2})


def test_single_stage_commands_write_where_userip_run_does(tmp_path: Path) -> None:
    """``userip prepare --config`` and ``userip export --config`` used to write to
    ``<workdir>/data`` and ``bank.path`` (relative to the shell, not the work dir)."""
    from userip.cli import main as cli_main
    from userip.feature_bank import FeatureBank
    from userip.flows.plan import resolve
    from userip.flows.userip_flow import PREPARE
    from userip.quantize.standin import write_standin

    config = tmp_path / "c.yaml"
    config.write_text(f"workdir: {tmp_path / 'work'}\nprepare:\n  max_users: 12\n")
    assert cli_main(["prepare", "--config", str(config)]) == 0
    expected = resolve(load_config(config), PREPARE, {})
    assert (expected / "stats.json").is_file()
    codes = write_standin([f"u{i}" for i in range(5)], tmp_path / "codes")
    assert cli_main(["export", "--config", str(config), "--codes", str(codes)]) == 0
    assert FeatureBank.open(load_config(config).bank_dir()).n_users == 5
