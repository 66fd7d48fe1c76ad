"""Shared fixtures: the repository paths, a token-auth environment for Ray subprocesses, and a real one-node Ray
cluster on 127.0.0.1 started with ``ray start --head --block`` in its own temp dir and ports.

The cluster is stopped by terminating the ``ray start --block`` process the fixture started (never ``ray stop``,
which would end every Ray process on the machine, other people's included).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.tune import LOCAL_RAY_ENV

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
RAY_BIN = str(Path(sys.executable).parent / "ray")
# Ray's workers take ports 10002-19999 by default; pinned ports stay below the Linux ephemeral range too.
_PORT_RANGE = (20000, 32000)


# The modules with a test that starts a Ray runtime (marked ``ray``). Under pytest-xdist (``-n``, see pyproject.toml)
# they are one unit of work that one worker runs first, one test at a time: two Ray runtimes on one machine at once
# confuse Ray Train's placement-group cleaners, and each would take the cores the other's trials were given. Every
# other module is a unit of its own (its module fixtures set up once), run by the other workers meanwhile.
RAY_MODULES = frozenset({"test_capacity.py", "test_faults.py", "test_moasha_tune.py", "test_multinode.py",
                         "test_tune.py"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Check that every ``ray`` test is in :data:`RAY_MODULES`, and put those modules' tests first."""
    stray = sorted({item.path.name for item in items if item.get_closest_marker("ray")} - RAY_MODULES)
    if stray:
        raise pytest.UsageError(f"tests marked ray outside conftest.RAY_MODULES: {', '.join(stray)}; add them there")
    items.sort(key=lambda item: item.path.name not in RAY_MODULES)  # stable: the order within each part stays


@pytest.fixture(autouse=True)
def _one_thread_beside_ray(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Under pytest-xdist a test outside :data:`RAY_MODULES` runs with one torch thread (and its subprocesses with
    ``OMP_NUM_THREADS=1``): beside the Ray tests' processes on two cores, a second thread spins waiting for a core
    (one test took 5.7 times as long with two)."""
    if "PYTEST_XDIST_WORKER" not in os.environ or request.path.name in RAY_MODULES:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(before)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadscope`` with :data:`RAY_MODULES` as one scope, ``ray``, and every other module a scope."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class RayApart(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "ray" if Path(path).name in RAY_MODULES else path

    return RayApart(config, log)


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports in ``_PORT_RANGE`` that are free on 127.0.0.1 right now."""
    ports: list[int] = []
    rng = secrets.SystemRandom()
    while len(ports) < n:
        port = rng.randrange(*_PORT_RANGE)
        if port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    return ports


@pytest.fixture(scope="session")
def auth_env() -> dict[str, str]:
    """Environment for Ray subprocesses: token auth on, with a token of this test session.

    Ray 2.60 reads the token from ``RAY_AUTH_TOKEN``, else the file named by ``RAY_AUTH_TOKEN_PATH``, else
    ``~/.ray/auth_token`` (it is not kept in ``--temp-dir``); the environment variable keeps the shared home
    directory untouched. ``RAY_AUTH_MODE=token`` makes clients (``ray job submit``) send it.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
    })
    return env


@dataclass(frozen=True)
class RayCluster:
    gcs_address: str  # host:port, for RAY_ADDRESS
    dashboard_url: str  # for `ray job submit --address`
    temp_dir: Path
    env: dict[str, str]  # the client environment (token auth)


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError as err:
            if getattr(err, "code", None) in (401, 403):  # up, and asking for the token
                return
        time.sleep(1)
    raise TimeoutError(f"{url} did not come up in {timeout} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate the ``ray start --block`` process we started: it takes its node's processes down with it.

    Only if it does not exit in a minute is its own process group (a session of its own) killed.
    """
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


# Set on every node a test starts: a short drain on shutdown, and what tune.py sets for a local Ray (a Train
# controller polling its workers every 0.2 s, not 2 s, without Prometheus metrics, no preemption watcher, no idle
# worker processes started for tasks), so trials start and end sooner.
NODE_ENV = {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "2", **LOCAL_RAY_ENV}


def start_head(env: dict[str, str], num_cpus: int = 2) -> tuple[subprocess.Popen[bytes], RayCluster]:
    """Start ``ray start --head --block`` on 127.0.0.1 with its own temp dir and pinned ports."""
    # A short temp dir: Ray's unix socket paths must stay under 108 characters.
    temp_dir = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    gcs, dash, client, agent, agent_grpc, metrics, rt_agent, nm, om = free_ports(9)
    cmd = [RAY_BIN, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
           f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={rt_agent}",
           f"--node-manager-port={nm}", f"--object-manager-port={om}", f"--num-cpus={num_cpus}",
           "--num-gpus=0", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    log = open(temp_dir / "ray_start.log", "wb")  # noqa: SIM115 - closed with the cluster
    # SIGTERM drains the node for up to 30 s (for Serve); a test cluster has nothing to drain.
    node_env = {**env, **NODE_ENV}
    proc = subprocess.Popen(cmd, env=node_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    cluster = RayCluster(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}", temp_dir, env)
    try:
        _wait_http(f"{cluster.dashboard_url}/api/version", proc, timeout=120)
    except Exception:
        _stop(proc)
        log.close()
        raise RuntimeError((temp_dir / "ray_start.log").read_text()[-3000:]) from None
    return proc, cluster


@pytest.fixture(scope="module")
def ray_cluster(auth_env: dict[str, str]) -> Iterator[RayCluster]:
    """A one-node Ray cluster (2 CPUs, token auth) that only this test module uses; stopped afterwards."""
    proc, cluster = start_head(auth_env)
    try:
        yield cluster
    finally:
        _stop(proc)
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)


def state_api(cluster: RayCluster, kind: str) -> list[dict[str, Any]]:
    """Ray's State API list ``kind`` (``nodes``, ``actors``, ``placement_groups``), as ``ray list <kind>`` shows it."""
    req = urllib.request.Request(f"{cluster.dashboard_url}/api/v0/{kind}?limit=1000",
                                 headers={"Authorization": f"Bearer {cluster.env['RAY_AUTH_TOKEN']}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return list(json.loads(resp.read())["data"]["result"]["result"])


def held_by_earlier_drivers(cluster: RayCluster) -> str:
    """The cluster's live placement groups and actors, in one line each ('' when none): what a driver that ended
    has left holding resources."""
    groups = [f"{g.get('placement_group_id', '?')[:8]} {g.get('state')} {g.get('bundles')}"
              for g in state_api(cluster, "placement_groups") if g.get("state") != "REMOVED"]
    actors = [f"{a.get('class_name')} {a.get('state')}" for a in state_api(cluster, "actors")
              if a.get("state") not in ("DEAD",)]
    return "\n".join(([f"placement groups: {'; '.join(groups)}"] if groups else []) +
                     ([f"actors: {'; '.join(actors)}"] if actors else []))


def wait_until_released(cluster: RayCluster, timeout: float = 120) -> None:
    """Wait until no placement group of an earlier driver holds the cluster's resources (Ray Train's detached
    PlacementGroupCleaner removes a dead controller's group within seconds); fail naming what is still held."""
    deadline = time.monotonic() + timeout
    while True:
        groups = [g for g in state_api(cluster, "placement_groups") if g.get("state") != "REMOVED"]
        if not groups:
            return
        assert time.monotonic() < deadline, f"still held after {timeout} s:\n{held_by_earlier_drivers(cluster)}"
        time.sleep(1)


def run_tune(args: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python orchestrator/tune.py ARGS`` as a subprocess; stdout and stderr together in ``.stdout``."""
    return subprocess.run([PYTHON, str(REPO / "orchestrator" / "tune.py"), *args], env=env, cwd=cwd,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module: small models gain little from two, and two stall when the cores are shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
