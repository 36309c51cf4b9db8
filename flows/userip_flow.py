"""The ``userip`` flow: prepare -> infer -> quantize -> export -> train -> evaluate -> report.

Each stage's output lives in ``<workdir>/<stage>/<content key>``; a stage whose key has
not changed is a Prefect cache hit, so changing a downstream setting re-runs only the
stages after it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from dataprep.readers import source_inputs
from profile_infer.model_loading import resolve_model_dir
from tasks.stages import infer_task, prepare_task, quantize_task
from userip.config import load_config
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
) -> dict[str, str]:
    """Run the chosen stages; returns each stage's output directory."""
    logger = get_run_logger()
    cfg = load_config(config, overrides)
    plan = select_stages(stages, from_stage)
    outputs: dict[str, str] = {}

    section = cfg.prepare.model_dump(mode="json")
    data = cfg.stage_dir("prepare") / stage_key("prepare", section, source_inputs(cfg.prepare), ["dataprep"])
    outputs["prepare"] = _run("prepare", plan, refresh, data, prepare_task, section=section)

    section = {**cfg.profile.model_dump(mode="json"),
               "_model": model_fingerprint(resolve_model_dir(cfg.profile.model))}
    profile = cfg.stage_dir("infer") / stage_key("infer", section, [data], ["profile_infer"])
    outputs["infer"] = _run("infer", plan, refresh, profile, infer_task,
                            section=cfg.profile.model_dump(mode="json"), data_dir=str(data))

    section = cfg.quantize.model_dump(mode="json")
    codes = cfg.stage_dir("quantize") / stage_key("quantize", section, [profile], ["quantize"])
    outputs["quantize"] = _run("quantize", plan, refresh, codes, quantize_task,
                               section=section, profile_dir=str(profile))
    logger.info("stage outputs: %s", outputs)
    return outputs


def _run(stage: str, plan: list[str], refresh: bool, out_dir: Path, task_fn, **params: Any) -> str:
    """Submit ``stage`` if planned (forcing a recompute when asked or its output is gone);
    otherwise require the output of an earlier run."""
    if stage not in plan:
        if not out_dir.exists():
            raise FileNotFoundError(f"stage {stage!r} was not run with these settings; expected {out_dir}")
        return str(out_dir)
    runner = task_fn.with_options(refresh_cache=refresh or not out_dir.exists())
    return runner(out_dir=str(out_dir), **params)
