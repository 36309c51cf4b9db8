"""A real Prefect server, work pool and process worker on loopback, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"prefect server not healthy after {timeout}s:\n{log.read_text()[-3000:]}")


@contextmanager
def prefect_stack(home: Path, pool: str = "userip-local") -> Iterator[dict[str, str]]:
    """Start server (SQLite in ``home``), create the pool, deploy prefect.yaml, start a
    worker; yield the environment to talk to them; stop everything on exit."""
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "USERIP_ROOT": str(REPO),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    procs: list[subprocess.Popen] = []

    def start(args: list[str], log: Path) -> subprocess.Popen:
        p = subprocess.Popen([str(BIN / "prefect"), *args], env=env, cwd=REPO,
                             stdout=open(log, "w"), stderr=subprocess.STDOUT,
                             start_new_session=True)
        procs.append(p)
        return p

    try:
        server_log = home / "server.log"
        server = start(["server", "start", "--host", "127.0.0.1", "--port", str(port)], server_log)
        _wait_healthy(env["PREFECT_API_URL"], server, server_log)
        for args in (["work-pool", "create", pool, "--type", "process", "--overwrite"],
                     ["--no-prompt", "deploy", "--all"]):
            subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=REPO, check=True,
                           capture_output=True, timeout=180)
        start(["worker", "start", "--pool", pool], home / "worker.log")
        yield env
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(p.pid, signal.SIGKILL)
