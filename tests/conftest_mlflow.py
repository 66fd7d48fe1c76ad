"""A real ``mlflow server`` for tests: ``from conftest_mlflow import mlflow_server`` in a test module.

The server runs on 127.0.0.1 at a free port with a temporary SQLite store and a proxied artifact root
(``--artifacts-destination``, so clients upload over HTTP through ``mlflow-artifacts:/``). The fixture starts it
as a subprocess in its own process group, waits for ``/health`` and terminates that group at the end of the
session. Starting takes about 10 s on 2 CPU cores (mostly the new store's schema migrations).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

START_TIMEOUT_S = 180.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _mlflow_executable() -> str:
    beside = Path(sys.executable).with_name("mlflow")
    found = str(beside) if beside.exists() else shutil.which("mlflow")
    if found is None:
        pytest.skip("the mlflow command line is not installed")
    return found


def _wait_healthy(uri: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server not healthy after {START_TIMEOUT_S:.0f} s:\n{log_path.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's own process group (only what this fixture started), then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class MlflowServer:
    """An ``mlflow server`` on 127.0.0.1 that can be stopped and started again on the same port and store, as a
    tracking server that goes away and comes back."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> str:
        """Start it (its SQLite store and artifacts under ``root`` are kept across restarts); wait for health."""
        self.starts += 1
        log_path = self.root / f"server{self.starts}.log"
        cmd = [_mlflow_executable(), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1", "--port",
               str(self.port), "--workers", "1"]
        # MLflow 3.17's server also starts a job runner and seven huey consumers by default (GenAI jobs); a
        # tracking test needs none of them, and without them the server starts in seconds instead of a minute.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(log_path, "wb") as log_file:
            self.proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, cwd=self.root, env=env,
                                         start_new_session=True)
        try:
            _wait_healthy(self.uri, self.proc, log_path)
        except Exception:
            self.stop()
            raise
        return self.uri

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Yield the URI (``http://127.0.0.1:<port>``) of a fresh MLflow tracking server."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    try:
        yield server.start()
    finally:
        server.stop()
