"""Kill the flow with SIGKILL during profile inference; the rerun reuses the finished
stages from Prefect's cache and resumes inference from its checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.prefect_stack import BIN, REPO, client_env

pytestmark = pytest.mark.slow


def _userip_run(workdir: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "userip"), "run", "--config", "configs/tiny.yaml",
         "--set", f"workdir={workdir}", "--set", "profile.checkpoint_every=1",
         "--stages", "prepare", "infer"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)


def test_sigkill_during_infer_then_resume(prefect_api: str, tmp_path: Path) -> None:
    workdir, env = tmp_path / "work", client_env(prefect_api, tmp_path / "prefect")
    first = _userip_run(workdir, env)
    deadline = time.monotonic() + 900
    while not list(workdir.glob("infer/*.ckpt/state.*.pt")):
        assert first.poll() is None, first.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert not [p for p in (workdir / "infer").iterdir() if not p.name.endswith(".ckpt")
                and not p.name.startswith(".")], "a killed run published a profile"

    second = _userip_run(workdir, env)
    out, _ = second.communicate(timeout=1500)
    assert second.returncode == 0, out
    assert "Finished in state Cached" in out  # prepare, from the first run
    assert "resumed from" in out
    profiles = [p for p in (workdir / "infer").iterdir() if (p / "codes.parquet").is_file()]
    assert len(profiles) == 1
    assert not list(workdir.glob("infer/*.ckpt"))  # removed once published
