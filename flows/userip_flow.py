"""The ``userip`` flow: prepare -> infer -> quantize -> export -> train -> evaluate -> report
[-> baselines, when the config has a ``baselines:`` section].

The flow body is the table of stages below, run by ``flows.plan.run_plan``. Each stage's
output lives in ``<workdir>/<folder>/<content key>``; a stage whose key has not changed
is done and is not recomputed, so changing a downstream setting re-runs only the stages
after it. ``mode="refresh"`` is the nightly job (``NIGHTLY``): prepare the new dumps,
re-infer only users whose train history changed (LM and codebooks frozen), publish a
bank version.
"""

from __future__ import annotations

from functools import cache, partial
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger

from userip.config import Config, DownstreamConfig, load_config
from userip.dataprep.readers import source_inputs
from userip.downstream.layout import RunLayout
from userip.feature_bank import FeatureBank
from userip.fingerprint import model_fingerprint
from userip.flows.plan import Dirs, Stage, StageNotRun, run_plan, select
from userip.profile_infer.layout import CODEBOOKS
from userip.profile_infer.model_loading import resolve_model_dir
from userip.tasks.runners import task_runner
from userip.tasks.stages import (
    VERSION_RECORD,
    baselines_task,
    evaluate_task,
    export_task,
    infer_task,
    prepare_task,
    quantize_task,
    recorded_version,
    refresh_task,
    report_task,
    run_stage,
    train_task,
)


def _profile_section(cfg: Config) -> dict[str, Any]:
    """The profile's learned part plus the model's identity: a new model means new profiles."""
    return {**cfg.profile.learned(), "_model": model_fingerprint(resolve_model_dir(cfg.profile.model))}


def _export_section(cfg: Config) -> dict[str, Any]:
    return {**cfg.bank.learned(), "bank": str(cfg.bank_dir())}


def _export_params(cfg: Config, dirs: Dirs) -> dict[str, Any]:
    return {"codes_dir": str(dirs["quantize"] / "userip"),
            "codebook": str(dirs["infer"] / CODEBOOKS),
            "lm_id": cfg.profile.model, "data_dir": str(dirs["prepare"]),
            "bank_dir": str(cfg.bank_dir()), "keep": cfg.bank.keep_versions,
            "grace_seconds": cfg.bank.grace_seconds, "run_name": cfg.name}


def _export_done(cfg: Config, out: Path) -> Path:
    """The version a finished export published: once retention removes it, the export is
    not done any more and publishes again."""
    return recorded_version(out) or out / VERSION_RECORD


def _export_output(out: Path) -> str:
    return str(recorded_version(out))


def _trained(cfg: Config, run_dir: Path) -> Path:
    """The marker of the first model whose training has not finished; ``run_dir`` once all have."""
    layout = RunLayout(run_dir)
    missing = [layout.trained_marker(m) for m in per_model_sections(cfg.downstream)
               if not layout.trained_marker(m).exists()]
    return missing[0] if missing else run_dir


def _train(section: dict[str, Any], data_dir: str, codes_dir: str, out_dir: str, done: str,
           refresh: bool = False) -> list[str]:
    """Locally, models go one after another, each fitting its (variant, seed) jobs on
    ``workers`` processes: torch seeds its RNG per process, and two fits sharing one
    process in threads would draw from one generator and lose per-seed determinism."""
    runner = task_runner(section["task_runner"], section["workers"])
    return train_models.with_options(task_runner=runner)(section, data_dir, codes_dir, out_dir, refresh)


@flow(name="userip-train")
def train_models(section: dict[str, Any], data_dir: str, codes_dir: str, out_dir: str,
                 refresh: bool = False) -> list[str]:
    """One train task per model, on the task runner the config picks (local, Dask, Ray)."""
    layout = RunLayout(Path(out_dir))
    futures = [
        train_task.with_options(refresh_cache=refresh or not layout.trained_marker(model).exists())
        .submit(model=model, section=s, data_dir=data_dir, codes_dir=codes_dir, out_dir=out_dir,
                done=str(layout.trained_marker(model)), refresh=refresh)
        for model, s in per_model_sections(DownstreamConfig.model_validate(section)).items()
    ]
    return [f.result() for f in futures]


def per_model_sections(section: DownstreamConfig) -> dict[str, dict[str, Any]]:
    """Split a downstream section into one section per model, keeping each model's roles
    (main table, transfer table, ablation table). On Dask or Ray the cluster runs models
    side by side, so each model then fits its jobs in one process."""
    workers = section.workers if section.task_runner == "thread" else 1
    out = {}
    for model in dict.fromkeys(section.models + section.transfer_models + section.ablation_models):
        only = {field: tuple(m for m in getattr(section, field) if m == model)
                for field in ("models", "transfer_models", "ablation_models")}
        out[model] = section.model_copy(update={**only, "workers": workers}).model_dump(mode="json")
    return out


def _on(stage_fn: Any) -> Any:
    """A row's run: the stage task, its Prefect cache bypassed when the folder is not done."""
    return partial(run_stage, stage_fn)


PREPARE = Stage("prepare", _on(prepare_task), section=lambda cfg: cfg.prepare.learned(),
                inputs=lambda cfg, dirs: source_inputs(cfg.prepare), code=("dataprep",),
                params=lambda cfg, dirs: {"section": cfg.prepare.model_dump(mode="json")})
EXPORT = Stage("export", _on(export_task), section=_export_section, reads=("prepare", "infer", "quantize"),
               inputs=lambda cfg, dirs: [dirs["quantize"] / "userip"], code=("feature_bank",),
               params=_export_params, done=_export_done, output=_export_output)

FULL: tuple[Stage, ...] = (
    PREPARE,
    Stage("infer", _on(infer_task), section=_profile_section, reads=("prepare",), code=("profile_infer",),
          params=lambda cfg, dirs: {"section": cfg.profile.model_dump(mode="json"),
                                    "data_dir": str(dirs["prepare"])}),
    Stage("quantize", _on(quantize_task), section=lambda cfg: cfg.quantize.learned(), reads=("infer",),
          code=("quantize",),
          params=lambda cfg, dirs: {"section": cfg.quantize.model_dump(mode="json"),
                                    "profile_dir": str(dirs["infer"])}),
    EXPORT,
    Stage("train", _train, folder="downstream",
          section=lambda cfg: cfg.downstream.learned(), reads=("prepare", "quantize"),
          code=("downstream",), done=_trained,
          params=lambda cfg, dirs: {"section": cfg.downstream.model_dump(mode="json"),
                                    "data_dir": str(dirs["prepare"]),
                                    "codes_dir": str(dirs["quantize"])}),
    Stage("evaluate", _on(evaluate_task), shares="train", reads=("prepare",),
          done=lambda cfg, out: RunLayout(out).evaluated,
          params=lambda cfg, dirs: {"data_dir": str(dirs["prepare"])}),
    Stage("report", _on(report_task), shares="train", reads=("prepare", "evaluate"),
          done=lambda cfg, out: RunLayout(out).report,
          params=lambda cfg, dirs: {"section": cfg.downstream.model_dump(mode="json"),
                                    "run_name": cfg.name, "data_dir": str(dirs["prepare"])}),
)


def _baselines_params(cfg: Config, dirs: Dirs) -> dict[str, Any]:
    assert cfg.baselines is not None  # the row is planned only with a baselines: section
    return {"section": cfg.baselines.model_dump(mode="json"), "data_dir": str(dirs["prepare"]),
            "run_dir": str(dirs["report"]), "new_user_share": cfg.downstream.new_user_share,
            "new_user_seed": cfg.downstream.new_user_seed, "root": str(cfg.stage_dir("baselines")),
            "run_name": cfg.name}


# Optional (``stage_table``): only a config with a ``baselines:`` section plans it.
BASELINES = Stage("baselines", _on(baselines_task), folder="baselines/flow",
                  section=lambda cfg: cfg.baselines.learned() if cfg.baselines else None,
                  reads=("prepare", "report"), code=("baselines",),
                  done=lambda cfg, out: out / "results.json", params=_baselines_params)


@cache
def _bank_profile(bank_dir: Path) -> Path:
    """The profile the bank's current version was quantized from."""
    source = FeatureBank.open(bank_dir).manifest.source_profile
    if source is None:
        raise StageNotRun(f"{bank_dir}: its current version names no source profile (published "
                          "from a codes folder, not by `userip run`); the nightly refresh needs one")
    return Path(source)


def _no_change(cfg: Config, outputs: dict[str, str]) -> dict[str, str]:
    current = FeatureBank.open(cfg.bank_dir()).source
    get_run_logger().info("no user's history changed; the bank stays at %s", current)
    return {**outputs, "export": current}


def _userip_only(cfg: Config) -> Any:
    return cfg.quantize.model_copy(update={"methods": ("userip",), "sweep": {}})


NIGHTLY: tuple[Stage, ...] = (
    PREPARE,
    Stage("infer", _on(refresh_task), folder="refresh", section=_profile_section, reads=("prepare",),
          inputs=lambda cfg, dirs: [dirs["prepare"], _bank_profile(cfg.bank_dir())],
          code=("profile_infer",), if_absent=_no_change,
          params=lambda cfg, dirs: {"section": cfg.profile.model_dump(mode="json"),
                                    "base_profile": str(_bank_profile(cfg.bank_dir())),
                                    "data_dir": str(dirs["prepare"])}),
    Stage("quantize", _on(quantize_task), section=lambda cfg: _userip_only(cfg).learned(),
          reads=("infer",), code=("quantize",),
          params=lambda cfg, dirs: {"section": _userip_only(cfg).model_dump(mode="json"),
                                    "profile_dir": str(dirs["infer"])}),
    EXPORT,
)


def stage_table(cfg: Config, mode: Literal["full", "refresh"] = "full") -> tuple[Stage, ...]:
    """The stages a run of ``mode`` plans from: the nightly ones, or the full pipeline with
    the LLM baselines after it when the config has a ``baselines:`` section."""
    if mode == "refresh":
        return NIGHTLY
    return (*FULL, BASELINES) if cfg.baselines is not None else FULL


@flow(name="userip", log_prints=True)
def userip(
    config: str = "configs/demo.yaml",
    stages: list[str] | None = None,
    from_stage: str | None = None,
    overrides: dict[str, Any] | None = None,
    refresh: bool = False,
    mode: Literal["full", "refresh"] = "full",
) -> dict[str, str]:
    """Run the chosen stages; returns each stage's output (a folder; the bank version for export)."""
    cfg = load_config(config, overrides)
    table = stage_table(cfg, mode)
    _bank_profile.cache_clear()
    outputs = run_plan(cfg, table, select(table, stages, from_stage), refresh,
                       log=get_run_logger().info)
    get_run_logger().info("stage outputs: %s", outputs)
    return outputs
