"""A study on a real 2-node Ray cluster on this machine: DDP across nodes, and a node lost mid-study.

The cluster lives for the module: a head (``ray start --head --block``, 2 CPUs) and a second node
(``ray start --address=<head> --num-cpus=1 --block``, its own ``--temp-dir`` and pinned ports), stopped by
terminating those processes; the node-loss test, last, stops the second node. A trial is 2 DDP workers of
0.5 CPU placed with ``SPREAD``: one per node while both are up, both on the head once the second node is gone.
Every rank reports its Ray node id; a trial's result carries ``node_ids``, the distinct ids of its ranks. Studies
are submitted with ``ray job submit`` (their driver runs on the head) and store everything under a local directory
that both nodes share, as one machine allows.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import NODE_ENV, RAY_BIN, REPO, RayCluster, _stop, free_ports, run_tune, start_head
from study_checks import mlflow_runs, optuna_trials

from orchestrator.space import SpecError, load_spec

EPOCHS = 8  # the node-loss study: its second trial has most of its epochs to go (seconds each on a fast machine)
# when its first is committed, so the node is lost mid-trial however fast the trials run
# Smaller than --smoke-test: epochs of a few seconds, so the time goes to what is tested (placement, restarts).
# The objective's attack is PGD: these studies test placement and restarts, not the attack (test_objective.py).
TINY = ["data.train_limit=256", "eval.max_examples=128", "arat.balance_samples=128", "eval.final_attack=pgd"]


def test_placement_strategy_is_validated() -> None:
    preset = REPO / "search_spaces" / "quickstart.yaml"
    assert load_spec(preset).scaling.placement_strategy == "PACK"
    assert load_spec(preset, ["scaling.placement_strategy=SPREAD"]).scaling.placement_strategy == "SPREAD"
    with pytest.raises(SpecError, match=r"scaling\.placement_strategy: must be one of PACK, SPREAD"):
        load_spec(preset, ["scaling.placement_strategy=DIAGONAL"])


# ------------------------------------------------------------------------------------------- the cluster


@dataclass(frozen=True)
class Node:
    proc: subprocess.Popen[bytes]
    node_id: str
    temp_dir: Path


def _nodes(cluster: RayCluster) -> list[dict[str, Any]]:
    """The cluster's nodes from Ray's State API, as ``ray list nodes`` shows them (node_id, state, is_head_node).

    The State API asks the GCS; the dashboard's own ``/nodes`` view can show a lost node ALIVE for a while.
    """
    req = urllib.request.Request(f"{cluster.dashboard_url}/api/v0/nodes?limit=100",
                                 headers={"Authorization": f"Bearer {cluster.env['RAY_AUTH_TOKEN']}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return list(json.loads(resp.read())["data"]["result"]["result"])


def _wait_for_node(cluster: RayCluster, proc: subprocess.Popen[bytes], timeout: float = 120) -> str:
    """The id of the cluster's one non-head node, once it is alive."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}")
        alive = [n["node_id"] for n in _nodes(cluster) if n["state"] == "ALIVE" and not n["is_head_node"]]
        if alive:
            return str(alive[0])
        time.sleep(1)
    raise TimeoutError(f"the second node did not join in {timeout} s")


def start_worker_node(cluster: RayCluster, num_cpus: int = 1) -> Node:
    """``ray start --address=<head> --block`` on this machine: its own temp dir, every port pinned (none in the
    worker range 10002-19999), the head's token in its environment."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rw", dir="/tmp"))  # short: unix socket paths stay < 108 chars
    nm, om, metrics, agent, agent_grpc, rt_agent = free_ports(6)
    cmd = [RAY_BIN, "start", "--block", f"--address={cluster.gcs_address}", "--node-ip-address=127.0.0.1",
           f"--node-manager-port={nm}", f"--object-manager-port={om}", f"--metrics-export-port={metrics}",
           f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--runtime-env-agent-port={rt_agent}", f"--num-cpus={num_cpus}", "--num-gpus=0",
           f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    # SIGTERM drains the node for up to 2 s: Ray Train sees the drain as a preemption of the ranks there.
    with open(temp_dir / "ray_start.log", "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, env={**cluster.env, **NODE_ENV},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return Node(proc, _wait_for_node(cluster, proc), temp_dir)
    except Exception as err:
        _stop(proc)
        tail = (temp_dir / "ray_start.log").read_text()[-3000:]
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise RuntimeError(f"{err}\n{tail}") from None


@dataclass(frozen=True)
class TwoNodes:
    cluster: RayCluster  # the head's addresses and the client environment
    head_id: str
    second: Node


@pytest.fixture(scope="module")
def two_nodes(auth_env: dict[str, str]) -> Iterator[TwoNodes]:
    """A head (2 CPUs: room for a whole trial once the second node is gone) and a second node (1 CPU), for this
    module only. The node-loss test stops the second node, so it runs last."""
    head, cluster = start_head(auth_env, num_cpus=2)
    second: Node | None = None
    try:
        second = start_worker_node(cluster)
        head_id = next(str(n["node_id"]) for n in _nodes(cluster) if n["is_head_node"])
        yield TwoNodes(cluster, head_id, second)
    finally:
        if second is not None:
            _stop(second.proc)
            shutil.rmtree(second.temp_dir, ignore_errors=True)
        _stop(head)
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)


def _submit(cluster: RayCluster, name: str, storage: Path, args: list[str]) -> list[str]:
    """``ray job submit`` of a study whose trials spread their workers (token auth: the cluster's environment)."""
    return [RAY_BIN, "job", "submit", "--address", cluster.dashboard_url, "--working-dir", ".", "--",
            "python", "orchestrator/tune.py", "--name", name, "--storage-path", str(storage),
            "--tracking-uri", f"sqlite:///{storage.parent / 'mlflow.db'}",
            "--set", "scaling.placement_strategy=SPREAD", "--set", "scaling.num_workers=2",
            "--set", "scaling.cpus_per_worker=0.5", *args]


def _sets(pairs: list[str]) -> list[str]:
    return [arg for p in pairs for arg in ("--set", p)]


# --------------------------------------------------------------------------------------------- the tests


@pytest.mark.ray
def test_ddp_spans_two_nodes_and_stopped_trials_free_their_workers(two_nodes: TwoNodes, tmp_path: Path) -> None:
    """A submitted moasha study of SPREAD trials (2 DDP workers of 1 CPU: one rank on each node), eta 2 with rungs
    at epochs 1 and 2 of 3. The cluster (2 + 1 CPUs) holds one trial at a time, and the second node one worker: a
    trial stopped at a rung stops training (no epoch after the one in flight is written), and the next trial can
    only get its rank on the second node once the stopped one's worker there is gone."""
    cluster, storage = two_nodes.cluster, tmp_path / "runs"
    assert two_nodes.second.proc.poll() is None, "the second node is gone (the node-loss test runs last)"
    # Rung decisions that cannot go either way: the only searched key is the learning rate, the first trial runs the
    # preset's 0.05 and the seeded sampler's next three draw 0.003, 0.0085 and 0.0042 (log-uniform). On digits a
    # lr below 0.01 trails 0.05 on both objectives at epoch 1 by 0.15 or more (clean 0.35 / PGD 0.29 against at most
    # 0.18 / 0.13 at eval eps 2/255), so the third trial, dominated at rung 1 with one place to keep, stops there.
    space = [f"space.{key}=null" for key in load_spec(REPO / "search_spaces" / "quickstart.yaml").space] + [
        "space.optim.lr={low: 0.0001, high: 0.05, log: true}"]
    args = ["--num-samples", "4", *_sets(["data.train_limit=512", "eval.max_examples=512", "arat.balance_samples=256",
                                           "optim.epochs=3", "scaling.cpus_per_worker=1", "eval.attack.eps=2",
                                           "eval.attack.step_size=0.5", "eval.final_attack=pgd", *space,
                                           "search.scheduler={type: moasha, grace_period: 1, reduction_factor: 2}"])]
    proc = subprocess.run(_submit(cluster, "spread", storage, args), env=cluster.env, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-5000:]

    frame = pd.read_parquet(storage / "spread" / "trials.parquet")
    assert len(frame) == 4 and frame["status"].isin(["FINISHED", "STOPPED"]).all(), frame[["status", "error"]]
    both = {two_nodes.head_id, two_nodes.second.node_id}
    val_size = load_spec(REPO / "search_spaces" / "quickstart.yaml").train_config({}).data.val_size
    for trial in frame.itertuples():
        assert set(trial.node_ids.split(",")) == both, trial.trial_id  # every trial, also after a stop
        assert trial.eval_examples == min(512, val_size)  # both ranks' shards, all-reduced
    stopped, finished = frame[frame["status"] == "STOPPED"], frame[frame["status"] == "FINISHED"]
    assert len(stopped) >= 1 and stopped["epoch"].isin([1, 2]).all() and (finished["epoch"] == 3).all()
    runs = storage / "spread" / "train_runs"
    for trial in stopped.itertuples():  # its workers stopped after the rung: at most the epoch in flight when the
        # stop reached them was written (a report does not wait for Tune's decision), never one after it
        written = sorted(int(p.name.split("_")[1]) for p in (runs / f"spread_{trial.trial_id}").glob("epoch_*"))
        assert written and trial.epoch <= written[-1] <= trial.epoch + 1, (trial.trial_id, written)
    # Only full-budget trials make the front; Optuna holds COMPLETE with the final values for those and PRUNED for
    # the stopped ones (never COMPLETE with a rung's figures); MLflow says STOPPED and where.
    assert not stopped["pareto"].any() and (stopped["pareto_rank"] == -1).all() and finished["pareto"].any()
    assert "early stopping: " in proc.stdout and "trials stopped at a rung" in proc.stdout
    told, by_id = optuna_trials(storage / "spread"), frame.set_index("trial_id")
    for tid, row in by_id.iterrows():
        expected = ("COMPLETE", [row.clean_acc, row.robust_acc]) if row.status == "FINISHED" else ("PRUNED", None)
        assert told[str(tid)] == expected, (tid, row.status)
    _, children = mlflow_runs(f"sqlite:///{storage.parent / 'mlflow.db'}", "spread")
    assert sorted(r.data.tags["trial_id"] for r in children) == sorted(frame["trial_id"])
    for run in children:
        row = by_id.loc[run.data.tags["trial_id"]]
        assert run.info.status == "FINISHED" and run.data.tags["trial_status"] == row.status
        if row.status == "STOPPED":
            assert run.data.tags["pareto"] == "false" and run.data.tags["stopped_at_epoch"] == f"{row.epoch:g}"


@pytest.mark.ray
def test_strict_spread_wider_than_the_cluster_is_refused(two_nodes: TwoNodes, tmp_path: Path) -> None:
    """3 workers of 0.5 CPU: the 3 CPUs would hold them, but STRICT_SPREAD wants 3 nodes and there are 2."""
    assert two_nodes.second.proc.poll() is None, "the second node is gone (the node-loss test runs last)"
    cluster = two_nodes.cluster
    proc = run_tune(["--storage-path", str(tmp_path / "runs"), *_sets(
        ["scaling.placement_strategy=STRICT_SPREAD", "scaling.num_workers=3"])],
        env={**cluster.env, "RAY_ADDRESS": cluster.gcs_address}, cwd=tmp_path, timeout=180)
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert "STRICT_SPREAD puts each of a trial's 3 workers on its own node, but only 2 node(s)" in proc.stdout
    assert list(tmp_path.iterdir()) == []


def _results(trial_dir: Path) -> list[dict[str, Any]]:
    """The results a trial has reported so far (Tune's ``result.json``, one JSON object a line)."""
    path = trial_dir / "result.json"
    out = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            break
    return out


def _progress(study: Path) -> dict[str, list[dict[str, Any]]]:
    """Trial id -> its reported results, for every trial directory of ``study`` (``t<index>_<trial id>``)."""
    return {d.name.split("_", 1)[1]: _results(d) for d in sorted(study.glob("t0*_*")) if d.is_dir()}


def _committed_epoch(study: Path, trial_id: str) -> int:
    """The epoch of the latest checkpoint the trial's Train run has committed (what a restart resumes from)."""
    for snapshot in (study / "train_runs").glob(f"*_{trial_id}/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result") or {}
        except (OSError, json.JSONDecodeError):  # being rewritten
            return 0
        return int(str(latest.get("checkpoint_dir_name") or "epoch_0").split("_")[1])
    return 0


def _wait_for_finished_and_running(study: Path, job: subprocess.Popen[str],
                                   timeout: float = 480) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Poll a study of one trial at a time until a trial has finished and the next has committed its first epoch
    or two (of :data:`EPOCHS`); return the finished trials (id -> final result) and the running trial's id.

    The running trial is judged by its Train run's checkpoint snapshot, written as each epoch is committed; Tune's
    ``result.json`` of it may lag behind by a report.
    """
    finished: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and job.poll() is None:
        progress = _progress(study)
        finished = {t: r[-1] for t, r in progress.items() if r and r[-1]["epoch"] == EPOCHS}
        running = [t for t in progress if t not in finished and 1 <= _committed_epoch(study, t) <= 2]
        if finished and running:
            return finished, running[0]
        time.sleep(0.5)
    return finished, None


@pytest.mark.ray
def test_node_lost_mid_study(two_nodes: TwoNodes, tmp_path: Path) -> None:
    """Stop the second node while a trial runs on both; the trial is retried from its checkpoint on the head, the
    study completes and the trial finished before is kept as it was."""
    cluster, storage = two_nodes.cluster, tmp_path / "runs"
    study = storage / "lost"
    args = ["--num-samples", "2", *_sets([*TINY, f"optim.epochs={EPOCHS}", "search.max_concurrent=1"])]
    with open(tmp_path / "job.log", "w") as log:
        job = subprocess.Popen(_submit(cluster, "lost", storage, args), env=cluster.env, cwd=REPO, text=True,
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        finished, running = _wait_for_finished_and_running(study, job)
        assert job.poll() is None, (tmp_path / "job.log").read_text()[-5000:]
        assert finished and running, "the study never had a finished trial and a running one with an epoch done"
        _stop(two_nodes.second.proc)
        job.wait(timeout=480)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait(timeout=30)
    assert job.returncode == 0, (tmp_path / "job.log").read_text()[-5000:]
    assert {n["node_id"]: n["state"] for n in _nodes(cluster)}[two_nodes.second.node_id] == "DEAD"

    frame = pd.read_parquet(study / "trials.parquet").set_index("trial_id")
    assert len(frame) == 2 and (frame["status"] == "FINISHED").all(), frame[["status", "error"]]
    assert (frame["epoch"] == EPOCHS).all()
    # The finished trial is kept, not trained again: the same final result, from both nodes.
    for trial_id, before in finished.items():
        row = frame.loc[trial_id]
        assert row["resumed_from_epoch"] == 0 and row["checkpoint_path"] == before["checkpoint_path"]
        assert (row["clean_acc"], row["robust_acc"]) == (before["clean_acc"], before["robust_acc"])
        assert set(row["node_ids"].split(",")) == {two_nodes.head_id, two_nodes.second.node_id}
    # The running trial had one rank on each node; it went on from a committed epoch with both ranks on the head.
    first_report = _progress(study)[running][0]
    assert set(first_report["node_ids"].split(",")) == {two_nodes.head_id, two_nodes.second.node_id}
    assert frame.loc[running, "node_ids"] == two_nodes.head_id
    assert frame.loc[running, "resumed_from_epoch"] >= 1
