"""End to end against a real Prefect server: deploy prefect.yaml, run userip/full with a
process worker, prove that a downstream-only change reuses every upstream stage, then run
the nightly-refresh deployment on a dump with new users."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.prefect_stack import deployments
from userip.feature_bank import FeatureBank

pytestmark = pytest.mark.slow
UPSTREAM = ("prepare", "infer", "quantize", "export")


def _run(env: dict[str, str], name: str, parameters: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """Run a deployment to completion; return its final state and each task's state name."""
    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        run = run_deployment(name, parameters=parameters, timeout=1500)
        with get_client(sync_client=True) as client:
            tasks = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    return run.state.type.value, {t.name: t.state.name for t in tasks}


def _artifact_keys(env: dict[str, str]) -> set[str]:
    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        with get_client(sync_client=True) as client:
            arts = client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(like_="userip-")))
    return {a.key for a in arts}


def test_full_deployment_cached_rerun_and_nightly_refresh(prefect_api: str, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    base = {"config": "configs/tiny.yaml", "overrides": {"workdir": str(workdir)}}
    with deployments(prefect_api, tmp_path / "prefect") as env:
        state, tasks = _run(env, "userip/full", base)
        assert state == "COMPLETED", tasks
        assert all(tasks[s] == "Completed" for s in (*UPSTREAM, "evaluate", "report")), tasks
        (run_dir,) = (workdir / "downstream").iterdir()
        report = (run_dir / "report.md").read_text()
        assert "Table 2" in report and "| θ, feedback word |" in report
        assert (run_dir / "metrics.json").is_file()
        assert {"userip-metrics-tiny", "userip-report-tiny", "userip-bank-tiny"} <= _artifact_keys(env)
        first = FeatureBank.open(workdir / "bank")
        assert first.n_users == 24

        # only a downstream setting changes: upstream stages are cache hits
        changed = {**base, "overrides": {**base["overrides"], "downstream.epochs": 1}}
        state, tasks = _run(env, "userip/full", changed)
        assert state == "COMPLETED", tasks
        assert all(tasks[s] == "Cached" for s in UPSTREAM), tasks
        assert tasks["evaluate"] == "Completed" and tasks["report"] == "Completed", tasks
        assert len(list((workdir / "downstream").iterdir())) == 2
        assert FeatureBank.open(workdir / "bank").source == first.source  # no new version

        # nightly refresh on a dump with 4 more users: only they are inferred
        nightly = {**base, "overrides": {**base["overrides"], "prepare.max_users": 28}}
        state, tasks = _run(env, "userip/nightly-refresh", nightly)
        assert state == "COMPLETED", tasks
        assert tasks["refresh"] == "Completed" and tasks["export"] == "Completed", tasks
        fresh = FeatureBank.open(workdir / "bank")
        assert fresh.source != first.source and fresh.n_users == 28
        assert fresh.manifest.compat() == first.manifest.compat()  # same codebooks: CTR model still valid
        old_ids = pl.read_parquet(Path(first.source) / "codes.parquet")["user_id"].to_list()
        assert (fresh.lookup(old_ids) == first.lookup(old_ids)).all()
