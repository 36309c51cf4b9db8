"""One Prefect task per pipeline stage.

Every task takes JSON-able parameters (a config section as a dict, input and output
paths) and returns its output directory. The flow names that directory after the stage's
content key (``userip.fingerprint.stage_key``), so the cache key is simply the output
path: equal inputs, settings and code give the same key and a cache hit. The folder
decides: a task whose ``done`` file exists returns at once (unless ``refresh``), so a
wiped Prefect cache never recomputes a finished stage.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import task
from prefect.context import TaskRunContext
from prefect.serializers import JSONSerializer
from prefect.settings import get_current_settings

from userip.downstream.layout import RunLayout
from userip.fingerprint import hash_json


def _content_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """The task's name and parameters; ``out_dir`` among them already names the content
    (``done`` and ``refresh`` say whether to compute it, not what it is). Prefect stores
    the cache record under this key as a file name, hence the hash; a record there that
    userip did not write is moved aside first."""
    content = {k: v for k, v in parameters.items() if k not in ("done", "refresh")}
    key = hash_json({"task": context.task.name, **content,
                     "out_dir": str(Path(parameters["out_dir"]).resolve())})
    refuse_foreign_record(key)
    return key


def artifact_slug(name: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return "".join(c if c.isalnum() else "-" for c in name.lower())


# Every stage returns a path: plain JSON, with no hook that could import or call anything.
RESULT_SERIALIZER = JSONSerializer(object_encoder=None, object_decoder=None)
_EXPECTED = RESULT_SERIALIZER.model_dump(mode="json")
log = logging.getLogger(__name__)


def is_our_record(content: bytes) -> bool:
    """True for a cache record written with ``RESULT_SERIALIZER`` whose result is a JSON
    string. Prefect deserializes a record with the serializer the record itself names,
    so a planted record naming ``pickle`` (or a JSON ``object_decoder``) would run code
    on the next cache hit, whatever the task's own serializer."""
    try:
        record = json.loads(content)
        return (record["metadata"]["serializer"] == _EXPECTED
                and isinstance(json.loads(record["result"]), str))
    except (ValueError, KeyError, TypeError):
        return False


def refuse_foreign_record(key: str) -> None:
    """Move a cache record at ``key`` that ``is_our_record`` rejects aside (to
    ``<key>.refused``) before Prefect reads it: the task then re-runs and rewrites it."""
    path = Path(get_current_settings().results.local_storage_path).expanduser() / key
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        return
    if not is_our_record(content):
        log.warning("%s: not a userip cache record (JSON path); moved aside, recomputing", path)
        os.replace(path, path.with_name(path.name + ".refused"))


def stage_task(name: str, **options: Any) -> Callable[[Callable[..., object]], Any]:
    """Decorator: a cached, persisted Prefect task for one stage, its result a JSON path.
    The task gains two parameters: ``done``, the file whose existence marks the stage
    finished (the body is then skipped), and ``refresh``, to compute it anyway."""

    def decorate(body: Callable[..., object]) -> Any:
        def run(*, out_dir: str, done: str, refresh: bool = False, **params: Any) -> str:
            if refresh or not Path(done).exists():
                body(out_dir=out_dir, **params)
            return out_dir

        signature = inspect.signature(body)
        extra = [inspect.Parameter("done", inspect.Parameter.KEYWORD_ONLY, annotation=str),
                 inspect.Parameter("refresh", inspect.Parameter.KEYWORD_ONLY, default=False,
                                   annotation=bool)]
        run.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
                        for p in signature.parameters.values()] + extra, return_annotation=str)
        run.__name__, run.__qualname__, run.__doc__ = body.__name__, body.__qualname__, body.__doc__
        run.__module__ = body.__module__
        # task_run_name: runs are named by stage alone (Prefect would add a random suffix)
        stage = task(name=name, cache_key_fn=_content_key, persist_result=True,
                    result_serializer=RESULT_SERIALIZER, task_run_name=name, **options)(run)
        return stage

    return decorate


def run_stage(stage_fn: Any, *, out_dir: str, done: str, refresh: bool = False, **params: Any) -> str:
    """Call a ``stage_task`` from the flow: Prefect's cache record is bypassed when the
    stage's done file is missing (a deleted or unfinished folder) or on ``refresh``."""
    fresh = refresh or not Path(done).exists()
    return stage_fn.with_options(refresh_cache=fresh)(out_dir=out_dir, done=done, refresh=refresh,
                                                      **params)


@stage_task("prepare", retries=1)
def prepare_task(section: dict[str, Any], out_dir: str) -> None:
    from userip.config import PrepareConfig
    from userip.dataprep.pipeline import prepare

    prepare(PrepareConfig.model_validate(section), Path(out_dir))


@stage_task("infer")
def infer_task(section: dict[str, Any], data_dir: str, out_dir: str,
               users_file: str | None = None) -> None:
    """Profile inference; resumes from ``<out_dir>.ckpt`` when an earlier run was killed."""
    from userip.config import ProfileConfig, check_codebooks_fit
    from userip.dataprep.layout import DataStats, data_users
    from userip.profile_infer import infer

    cfg = ProfileConfig.model_validate(section)
    check_codebooks_fit(cfg, data_users(Path(data_dir)), str(DataStats.path(Path(data_dir))))
    infer(cfg, Path(data_dir), Path(out_dir),
          users_file=Path(users_file) if users_file else None)


@stage_task("refresh")
def refresh_task(section: dict[str, Any], base_profile: str, data_dir: str, out_dir: str) -> None:
    """Nightly: re-infer changed users on the frozen base profile; publishes nothing when
    no history changed."""
    from userip.config import ProfileConfig
    from userip.profile_infer.refresh import refresh_profiles

    refresh_profiles(ProfileConfig.model_validate(section), Path(base_profile), Path(data_dir),
                     Path(out_dir))


@stage_task("quantize")
def quantize_task(section: dict[str, Any], profile_dir: str, out_dir: str) -> None:
    from userip.config import QuantizeConfig
    from userip.quantize import quantize

    quantize(QuantizeConfig.model_validate(section), Path(profile_dir), Path(out_dir))


@stage_task("export")
def export_task(codes_dir: str, codebook: str, lm_id: str, data_dir: str, bank_dir: str,
                keep: int, out_dir: str, grace_seconds: float, run_name: str) -> None:
    """Publish a new bank version; ``out_dir/version.txt`` records which one, so a rerun
    publishes nothing new while that version exists."""
    from prefect.artifacts import create_link_artifact

    from userip.atomic import publish_dir, staging_dir
    from userip.dataprep.layout import INTERACTIONS
    from userip.feature_bank import publish
    from userip.fingerprint import hash_paths

    version = publish(Path(codes_dir), Path(bank_dir), keep, codebook=Path(codebook),
                      lm_id=lm_id, data_fingerprint=hash_paths([Path(data_dir) / INTERACTIONS]),
                      grace_seconds=grace_seconds)
    with staging_dir(Path(out_dir), stage="export") as tmp:
        (tmp / VERSION_RECORD).write_text(f"{version}\n")
        publish_dir(tmp, Path(out_dir), stage="export")
    create_link_artifact(key=f"userip-bank-{artifact_slug(run_name)}", link=version.resolve().as_uri(),
                         link_text=version.name,
                         description=f"Feature bank version published by this run ({run_name})")


VERSION_RECORD = "version.txt"


def recorded_version(out_dir: Path) -> Path | None:
    """The bank version an export folder records (retention may have removed it since)."""
    try:
        return Path((Path(out_dir) / VERSION_RECORD).read_text().strip())
    except FileNotFoundError:
        return None


@stage_task("train")
def train_task(model: str, section: dict[str, Any], data_dir: str, codes_dir: str,
               out_dir: str) -> None:
    """Fit one model (every planned variant and seed); the flow maps this over models."""
    from userip.config import DownstreamConfig
    from userip.downstream.suite import train_all

    train_all(DownstreamConfig.model_validate(section), Path(data_dir), Path(out_dir),
              codes=Path(codes_dir))
    RunLayout(Path(out_dir)).trained_marker(model).write_text("done\n")


@stage_task("evaluate")
def evaluate_task(data_dir: str, out_dir: str) -> None:
    from userip.downstream.suite import evaluate_all

    evaluate_all(Path(out_dir), Path(data_dir))
    RunLayout(Path(out_dir)).evaluated.write_text("done\n")




@stage_task("report")
def report_task(section: dict[str, Any], run_name: str, data_dir: str, out_dir: str) -> None:
    """Write report.md, metrics.json and plots; publish them as Prefect artifacts under keys
    that stay the same from run to run, so the UI shows their history."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from userip.config import DownstreamConfig
    from userip.downstream.report import metric_rows, write_report

    metrics = write_report(Path(out_dir), Path(data_dir), DownstreamConfig.model_validate(section))
    name = artifact_slug(run_name)
    create_table_artifact(key=f"userip-metrics-{name}", table=metric_rows(metrics),
                          description=f"Test metrics, mean over seeds ({out_dir})")
    report = RunLayout(Path(out_dir)).report.read_text()
    create_markdown_artifact(key=f"userip-report-{name}", markdown=report,
                             description=f"Downstream report; plots beside {out_dir}/report.md")


@stage_task("baselines")
def baselines_task(section: dict[str, Any], data_dir: str, run_dir: str, new_user_share: float,
                   new_user_seed: int, root: str, run_name: str, out_dir: str) -> None:
    """The LLM baselines after the downstream stages (``userip.baselines.suite``): each method
    on its own protocol and on this run's split beside its DCN. Method outputs live in
    ``root`` (shared with ``userip baselines``: a finished method is read back), the tables
    in ``out_dir``, also published as a markdown artifact under a stable key."""
    from prefect.artifacts import create_markdown_artifact

    from userip.baselines.config import BaselinesConfig
    from userip.baselines.suite import our_split, run_all

    ours = our_split(Path(data_dir), Path(run_dir), new_user_share, new_user_seed)
    run_all(BaselinesConfig.model_validate(section), Path(root), ours=ours, results_dir=Path(out_dir))
    create_markdown_artifact(key=f"userip-baselines-{artifact_slug(run_name)}",
                             markdown=(Path(out_dir) / "results.md").read_text(),
                             description=f"LLM baselines beside DCN ({out_dir})")

