"""The downstream task runner is picked by config; missing integrations are clear errors."""

from __future__ import annotations

import importlib.util

import pytest
from prefect.task_runners import ThreadPoolTaskRunner

from flows.userip_flow import per_model_sections
from tasks.runners import task_runner
from userip.config import DownstreamConfig
from userip.errors import ConfigError


def test_local_runner_trains_one_model_at_a_time() -> None:
    """Fits in threads of one process would share torch's RNG and lose per-seed results."""
    runner = task_runner("thread", 3)
    assert isinstance(runner, ThreadPoolTaskRunner) and runner._max_workers == 1


@pytest.mark.parametrize("kind,package", [("dask", "prefect_dask"), ("ray", "prefect_ray")])
def test_missing_integration_names_the_package(kind: str, package: str) -> None:
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here")
    with pytest.raises(ConfigError, match=f"pip install prefect-{kind}=="):
        task_runner(kind, 2)


def test_per_model_sections_keep_each_models_roles() -> None:
    section = DownstreamConfig(models=("dcn", "pnn"), transfer_models=("pnn", "onn"),
                               ablation_models=("dcn",), workers=2)
    parts = per_model_sections(section)
    assert list(parts) == ["dcn", "pnn", "onn"]
    assert parts["dcn"]["models"] == ["dcn"] and parts["dcn"]["ablation_models"] == ["dcn"]
    assert parts["onn"]["models"] == [] and parts["onn"]["transfer_models"] == ["onn"]
    assert all(p["workers"] == 2 for p in parts.values())  # local: processes per model
    on_dask = per_model_sections(section.model_copy(update={"task_runner": "dask"}))
    assert all(p["workers"] == 1 for p in on_dask.values())
