"""End to end against a real Prefect server: deploy prefect.yaml, run userip/full with a
process worker, then prove that a downstream-only change reuses every upstream stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.prefect_stack import prefect_stack

pytestmark = pytest.mark.slow


def _run(env: dict[str, str], parameters: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """Run userip/full to completion; return its final state and each task's state name."""
    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        run = run_deployment("userip/full", parameters=parameters, timeout=1500)
        with get_client(sync_client=True) as client:
            tasks = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    return run.state.type.value, {t.name: t.state.name for t in tasks}


def test_full_deployment_then_cached_rerun(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    base = {"config": "configs/tiny.yaml", "overrides": {"workdir": str(workdir)}}
    with prefect_stack(tmp_path / "prefect") as env:
        state, tasks = _run(env, base)
        assert state == "COMPLETED", tasks
        assert tasks["prepare"] == "Completed"
        data_dirs = list((workdir / "prepare").iterdir())
        assert len(data_dirs) == 1 and (data_dirs[0] / "interactions.parquet").is_file()

        changed = {**base, "overrides": {**base["overrides"], "downstream.epochs": 1}}
        state, tasks = _run(env, changed)
        assert state == "COMPLETED", tasks
        assert tasks["prepare"] == "Cached"
