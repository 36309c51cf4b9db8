"""A real Prefect server on loopback, and a work pool with a process worker on it, for the
end-to-end tests. One server serves the whole test session (``prefect_server`` in
conftest); each test keeps its own ``PREFECT_HOME`` (result store, local cache records)."""

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


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
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


def client_env(server_url: str, home: Path) -> dict[str, str]:
    """The environment of a client process talking to ``server_url`` with its own home."""
    home.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": server_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONUNBUFFERED": "1",
            "USERIP_ROOT": str(REPO), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(p.pid, signal.SIGKILL)


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "prefect"), *args], env=env, cwd=REPO,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


@contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """Start a server (SQLite in ``home``) on a free loopback port; yield its API URL."""
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**client_env(url, home),
           "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
           "PREFECT_SERVER_UI_ENABLED": "false"}
    log = home / "server.log"
    server = _start(["server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log)
    try:
        _wait_healthy(url, server, log)
        yield url
    finally:
        _stop([server])


@contextmanager
def deployments(server_url: str, home: Path, pool: str = "userip-local") -> Iterator[dict[str, str]]:
    """Create ``pool``, deploy prefect.yaml onto it, start a process worker; yield the
    environment to talk to them; stop the worker on exit."""
    env = client_env(server_url, home)
    for args in (["work-pool", "create", pool, "--type", "process", "--overwrite"],
                 ["--no-prompt", "deploy", "--all"]):
        subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=REPO, check=True,
                       capture_output=True, timeout=180)
    # poll every second, not every 10: the test waits on each of its runs being picked up
    worker = _start(["worker", "start", "--pool", pool],
                    {**env, "PREFECT_WORKER_QUERY_SECONDS": "1"}, home / "worker.log")
    try:
        yield env
    finally:
        _stop([worker])
