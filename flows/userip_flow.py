"""The ``userip`` flow: prepare -> infer -> quantize -> export -> train -> evaluate -> report.

Each stage's output lives in ``<workdir>/<stage>/<content key>``; a stage whose key has
not changed is a Prefect cache hit, so changing a downstream setting re-runs only the
stages after it. ``mode="refresh"`` is the nightly job: prepare the new dumps, re-infer
only users whose train history changed (LM and codebooks frozen), publish a bank version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact

from dataprep.readers import source_inputs
from profile_infer.model_loading import resolve_model_dir
from tasks.runners import task_runner
from tasks.stages import (EVALUATED, REPORT, artifact_slug, evaluate_task, export_task,
                          infer_task, prepare_task, quantize_task, refresh_task, report_task,
                          train_marker, train_task)
from userip.config import Config, DownstreamConfig, load_config
from userip.fingerprint import model_fingerprint, stage_key

STAGES = ("prepare", "infer", "quantize", "export", "train", "evaluate", "report")


def select_stages(stages: list[str] | None, from_stage: str | None) -> list[str]:
    if stages and from_stage:
        raise ValueError("give either stages or from_stage, not both")
    if from_stage:
        if from_stage not in STAGES:
            raise ValueError(f"unknown stage {from_stage!r}; stages are {STAGES}")
        return list(STAGES[STAGES.index(from_stage):])
    chosen = list(stages or STAGES)
    unknown = set(chosen) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; stages are {STAGES}")
    return [s for s in STAGES if s in chosen]


@flow(name="userip", log_prints=True)
def userip(
    config: str = "configs/demo.yaml",
    stages: list[str] | None = None,
    from_stage: str | None = None,
    overrides: dict[str, Any] | None = None,
    refresh: bool = False,
    mode: Literal["full", "refresh"] = "full",
) -> dict[str, str]:
    """Run the chosen stages; returns each stage's output directory."""
    cfg = load_config(config, overrides)
    if mode == "refresh":
        return _nightly_refresh(cfg, refresh)
    plan = select_stages(stages, from_stage)
    outputs: dict[str, str] = {}

    data = _stage_path(cfg, "prepare", cfg.prepare.model_dump(mode="json"),
                       source_inputs(cfg.prepare), ["dataprep"])
    outputs["prepare"] = _run("prepare", plan, refresh, data, prepare_task,
                              section=cfg.prepare.model_dump(mode="json"))
    if _last(plan, "prepare"):
        return outputs

    profile = _stage_path(cfg, "infer", _profile_key_section(cfg), [data], ["profile_infer"])
    outputs["infer"] = _run("infer", plan, refresh, profile, infer_task,
                            section=cfg.profile.model_dump(mode="json"), data_dir=str(data))
    if _last(plan, "infer"):
        return outputs

    codes = _stage_path(cfg, "quantize", cfg.quantize.model_dump(mode="json"), [profile], ["quantize"])
    outputs["quantize"] = _run("quantize", plan, refresh, codes, quantize_task,
                               section=cfg.quantize.model_dump(mode="json"), profile_dir=str(profile))
    if _last(plan, "quantize"):
        return outputs

    outputs["export"] = _export(cfg, plan, refresh, codes / "userip", profile, data)
    if _last(plan, "export"):
        return outputs

    # how many processes or which runner trains the models does not change what they learn
    learning = cfg.downstream.model_dump(mode="json", exclude={"workers", "threads", "task_runner"})
    run_dir = _stage_path(cfg, "downstream", learning, [data, codes], ["downstream"])
    if "train" in plan:
        runner = task_runner(cfg.downstream.task_runner, cfg.downstream.workers)
        # Locally, models go one after another, each fitting its (variant, seed) jobs on
        # `workers` processes: torch seeds its RNG per process, and two fits sharing one
        # process in threads would draw from one generator and lose per-seed determinism.
        train_models.with_options(task_runner=runner)(cfg.downstream.model_dump(mode="json"),
                                                       str(data), str(codes), str(run_dir), refresh)
    outputs["train"] = _require("train", run_dir, _trained(cfg.downstream, run_dir))
    outputs["evaluate"] = _run("evaluate", plan, refresh, run_dir, evaluate_task,
                               done=run_dir / EVALUATED, data_dir=str(data))
    if _last(plan, "evaluate"):
        return outputs
    outputs["report"] = _run("report", plan, refresh, run_dir, report_task, done=run_dir / REPORT,
                             section=cfg.downstream.model_dump(mode="json"), run_name=cfg.name,
                             data_dir=str(data))
    get_run_logger().info("stage outputs: %s", outputs)
    return outputs


@flow(name="userip-train")
def train_models(section: dict[str, Any], data_dir: str, codes_dir: str, run_dir: str,
                 refresh: bool = False) -> list[str]:
    """One train task per model, on the task runner the config picks (local, Dask, Ray)."""
    futures = [
        train_task.with_options(
            refresh_cache=refresh or not train_marker(Path(run_dir), model).exists()
        ).submit(model=model, section=s, data_dir=data_dir, codes_dir=codes_dir, out_dir=run_dir)
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


def _trained(section: DownstreamConfig, run_dir: Path) -> Path:
    """The marker of the first model whose training has not finished, or ``run_dir``
    when all have."""
    missing = [train_marker(run_dir, m) for m in per_model_sections(section)
               if not train_marker(run_dir, m).exists()]
    return missing[0] if missing else run_dir


def _last(plan: list[str], stage: str) -> bool:
    """True when no planned stage comes after ``stage``."""
    return STAGES.index(plan[-1]) <= STAGES.index(stage)


def _nightly_refresh(cfg: Config, refresh: bool) -> dict[str, str]:
    """prepare -> re-infer changed users on the bank's current profile -> quantize -> export."""
    from feature_bank import FeatureBank

    logger = get_run_logger()
    plan = ["prepare", "infer", "quantize", "export"]
    data = _stage_path(cfg, "prepare", cfg.prepare.model_dump(mode="json"),
                       source_inputs(cfg.prepare), ["dataprep"])
    outputs = {"prepare": _run("prepare", plan, refresh, data, prepare_task,
                               section=cfg.prepare.model_dump(mode="json"))}
    current = FeatureBank.open(cfg.bank_dir())
    base = Path(current.manifest.extra["source_profile"])
    profile = _stage_path(cfg, "refresh", _profile_key_section(cfg), [data, base], ["profile_infer"])
    refreshed = _run("infer", plan, refresh, profile, refresh_task,
                     section=cfg.profile.model_dump(mode="json"), base_profile=str(base),
                     data_dir=str(data))
    if not Path(refreshed).exists():
        logger.info("no user's history changed; the bank stays at %s", current.source)
        return {**outputs, "export": current.source}
    outputs["infer"] = refreshed
    section = cfg.quantize.model_copy(update={"methods": ("userip",), "sweep": {}}).model_dump(mode="json")
    codes = _stage_path(cfg, "quantize", section, [profile], ["quantize"])
    outputs["quantize"] = _run("quantize", plan, refresh, codes, quantize_task,
                               section=section, profile_dir=str(profile))
    outputs["export"] = _export(cfg, plan, refresh, codes / "userip", profile, data)
    return outputs


def _export(cfg: Config, plan: list[str], refresh: bool, codes: Path, profile: Path,
            data: Path) -> str:
    marker = _stage_path(cfg, "export", {**cfg.bank.model_dump(mode="json"),
                                         "bank": str(cfg.bank_dir())}, [codes], ["feature_bank"])
    published = marker / "version.txt"
    stale = published.is_file() and not Path(published.read_text().strip()).exists()
    version = _run("export", plan, refresh or stale, marker, export_task,
                   codes_dir=str(codes), codebook=str(profile / "codebooks.safetensors"),
                   lm_id=cfg.profile.model, data_dir=str(data), bank_dir=str(cfg.bank_dir()),
                   keep=cfg.bank.keep_versions, grace_seconds=cfg.bank.grace_seconds)
    if "export" in plan:
        create_link_artifact(key=f"userip-bank-{artifact_slug(cfg.name)}", link=Path(version).resolve().as_uri(),
                             link_text=Path(version).name,
                             description=f"Feature bank version published by this run ({cfg.name})")
    return version


def _profile_key_section(cfg: Config) -> dict[str, Any]:
    """The profile section plus the model's identity: a new model means new profiles."""
    return {**cfg.profile.model_dump(mode="json"),
            "_model": model_fingerprint(resolve_model_dir(cfg.profile.model))}


def _stage_path(cfg: Config, stage: str, section: dict[str, Any], inputs: list,
                packages: list[str]) -> Path:
    return cfg.stage_dir(stage) / stage_key(stage, section, inputs, packages)


def _run(stage: str, plan: list[str], refresh: bool, out_dir: Path, task_fn,
         done: Path | None = None, **params: Any) -> str:
    """Run ``stage``'s task if planned (forcing a recompute when asked or when its ``done``
    file, by default ``out_dir`` itself, is missing); otherwise require an earlier run's
    output."""
    done = out_dir if done is None else done
    if stage not in plan:
        return _require(stage, out_dir, done)
    runner = task_fn.with_options(refresh_cache=refresh or not done.exists())
    return runner(out_dir=str(out_dir), **params)


def _require(stage: str, out_dir: Path, done: Path) -> str:
    """``out_dir`` of a stage that is not run here (not planned, or run in a subflow);
    its ``done`` file must exist."""
    if not done.exists():
        raise FileNotFoundError(f"stage {stage!r} has not run with these settings; expected {done}")
    return str(out_dir)
