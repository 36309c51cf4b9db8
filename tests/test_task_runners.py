"""The downstream task runner is picked by config; missing integrations are clear errors; the
Dask runner really runs the training on a local cluster."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from prefect.task_runners import ThreadPoolTaskRunner

from tests.prefect_stack import REPO, client_env
from userip.config import DownstreamConfig
from userip.downstream.layout import FitRecord, Job, RunLayout
from userip.downstream.suite import train_all
from userip.errors import ConfigError
from userip.flows.userip_flow import per_model_sections
from userip.quantize.standin import write_standin
from userip.tasks.runners import task_runner


def test_local_runner_trains_one_model_at_a_time() -> None:
    """Fits in threads of one process would share torch's RNG and lose per-seed results."""
    runner = task_runner("thread", 3)
    assert isinstance(runner, ThreadPoolTaskRunner) and runner._max_workers == 1


def test_dask_runner_gives_each_worker_process_one_thread() -> None:
    """Two fits in threads of one worker would share torch's RNG, as above."""
    kwargs = task_runner("dask", 3).cluster_kwargs
    assert (kwargs["n_workers"], kwargs["processes"], kwargs["threads_per_worker"]) == (3, True, 1)


def test_missing_integration_names_the_package() -> None:
    """prefect-ray is not in the lock (prefect-dask is, and is tested below)."""
    if importlib.util.find_spec("prefect_ray") is not None:
        pytest.skip("prefect_ray is installed here")
    with pytest.raises(ConfigError, match="pip install prefect-ray=="):
        task_runner("ray", 2)


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


# Runs in a fresh interpreter, so Prefect's ephemeral server and settings are its own.
_DASK_RUN = """
import sys
from userip.flows.userip_flow import train_models
from userip.tasks.runners import task_runner
section, data, codes, run = sys.argv[1:5]
train_models.with_options(task_runner=task_runner("dask", 2))(json.loads(section), data, codes, run)
""".replace("import sys", "import json, sys")


@pytest.mark.slow
def test_dask_runner_trains_on_a_local_cluster(prefect_api: str, ml100k_small_dir: Path,
                                               tmp_path: Path) -> None:
    """The downstream training through Prefect on a real dask.distributed LocalCluster (two
    worker processes): every fit lands where the suite puts it, equal to the same fits
    trained in this process."""
    users = pl.read_parquet(ml100k_small_dir / "users.parquet")["user_id"].to_list()
    codes = tmp_path / "q"
    write_standin(users, codes / "userip", method="userip")
    section = DownstreamConfig(models=("dcn", "lightgbm"), transfer_models=(), ablation_models=("dcn",),
                               seeds=(0,), epochs=2, batch_size=256, new_user_share=0.0,
                               task_runner="dask", workers=2)
    env = {**client_env(prefect_api, tmp_path / "prefect"),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    on_dask = tmp_path / "dask-run"
    proc = subprocess.run([sys.executable, "-c", _DASK_RUN, section.model_dump_json(), str(ml100k_small_dir),
                           str(codes), str(on_dask)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "distributed.deploy.local.LocalCluster" in log  # prefect-dask started the cluster
    assert log.count("Task run 'train' - Finished in state Completed()") == 2  # one per model
    local = train_all(section.model_copy(update={"task_runner": "thread"}), ml100k_small_dir,
                      tmp_path / "local", codes=codes)
    assert {r.model for r in local} == {"dcn", "lightgbm"}
    for rec in local:
        remote = FitRecord.read(RunLayout(on_dask).model_dir(Job(rec.variant, rec.model, rec.seed, rec.protocol)))
        assert (remote.val_auc, remote.best_epoch, remote.val_auc_history) == \
            (rec.val_auc, rec.best_epoch, rec.val_auc_history)
