"""Faults during a real study on a real local Ray cluster (``ray start --head``, 2 CPUs, token auth): the driver
is stopped by SIGINT and by SIGTERM while trials run (with a second Ray cluster on the machine, as on a laptop that
runs another project's Ray: Ray Train's own placement-group cleaners cannot tell the clusters apart, so the study
must give back what its stopped trials held), and its MLflow server goes away mid-study, comes back, and goes away
for good.

Kept to two small studies of the digits quick start (256 training images, 128 evaluation images). Below them, a
trial's Ray Train controller in its Tune trial's actor, run as a script: what a stopped run and a killed trial give
back; and the trainable on the fallback, Train's own controller actor.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pandas as pd
import pytest
from conftest import (
    PYTHON,
    REPO,
    RayCluster,
    _stop,
    held_by_earlier_drivers,
    start_head,
    state_api,
    wait_until_released,
)
from conftest_mlflow import MlflowServer
from mlflow import MlflowClient

from orchestrator.pareto import pareto_mask

pytestmark = pytest.mark.ray

# The objective's attack is PGD here: what these studies test is the driver, not the attack (test_objective.py).
SHRINK = ["data.train_limit=256", "eval.max_examples=128", "arat.balance_samples=128", "eval.final_attack=pgd"]
STARTED = " started: "  # the study's console line when a trial starts (orchestrator.console)


def _sets(pairs: list[str]) -> list[str]:
    return [arg for p in pairs for arg in ("--set", p)]


def _start(cmd: list[str], env: dict[str, str], cwd: Path, log: IO[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, text=True)


_CLUSTER: list[RayCluster] = []  # the module's cluster, for the messages of a driver that ran out of time


def _stuck(driver: subprocess.Popen[str], log: Path) -> str:
    """What a driver that ran out of time was doing: its threads' stacks (SIGUSR1, see tune.py), its log, and what
    the cluster's placement groups and actors were."""
    if driver.poll() is None:
        os.kill(driver.pid, signal.SIGUSR1)
        time.sleep(3)
    try:
        held = held_by_earlier_drivers(_CLUSTER[0]) if _CLUSTER else ""
    except OSError as err:
        held = f"(the State API did not answer: {err})"
    return f"timed out; the cluster holds:\n{held}\nthe driver's log ends:\n{log.read_text()[-6000:]}"


@pytest.fixture(autouse=True)
def _known_cluster(ray_cluster: RayCluster) -> None:
    _CLUSTER[:] = [ray_cluster]


def _wait(condition: Callable[[], bool], timeout: float, driver: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert driver.poll() is None, f"the driver ended early:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, _stuck(driver, log)
        time.sleep(0.5)


def _finish(driver: subprocess.Popen[str], timeout: float, log: Path) -> int:
    try:
        return driver.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(_stuck(driver, log)) from None
    finally:
        if driver.poll() is None:
            driver.kill()


def _committed_epochs(study: Path) -> list[int]:
    """The epoch of each trial's latest checkpoint that Ray Train has committed."""
    import json

    out = []
    for snapshot in (study / "train_runs").glob("*/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result") or {}
        except (OSError, ValueError):  # being rewritten
            continue
        out.append(int(str(latest.get("checkpoint_dir_name") or "epoch_0").split("_")[1]))
    return out


def _runs(uri: str, study: str) -> tuple[list, dict]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(study)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("run_kind") == "study"]
    trials = {r.data.tags["trial_id"]: r for r in runs if r.data.tags.get("run_kind") == "trial"}
    assert len(parents) + len(trials) == len(runs)
    return parents, trials


def _repo_stores() -> tuple[int | None, list[str] | None]:
    """What a study run from the repository would write there: mlflow.db's modification time, runs/' entries."""
    db, runs = REPO / "mlflow.db", REPO / "runs"
    return (db.stat().st_mtime_ns if db.exists() else None,
            sorted(p.name for p in runs.iterdir()) if runs.is_dir() else None)


def _resume_command(output: str) -> list[str]:
    lines = [ln for ln in output.splitlines() if ln.startswith("resume it: ")]
    assert len(lines) == 1, output[-3000:]
    return shlex.split(lines[0].removeprefix("resume it: "))


@pytest.fixture
def another_ray(auth_env: dict[str, str]) -> Iterator[RayCluster]:
    """A second Ray cluster on this machine, for the length of one test."""
    proc, cluster = start_head(auth_env, num_cpus=1)
    try:
        yield cluster
    finally:
        _stop(proc)
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)


RELEASED_IN_S = 20  # a stopped driver gives its trials' placement groups back before it exits


def test_a_stopped_study_says_so_everywhere_and_resumes(ray_cluster: RayCluster, another_ray: RayCluster,
                                                        tmp_path: Path) -> None:
    """SIGINT with both trials mid-run, then SIGTERM to the printed resume command as its trials start; the same
    command then completes the study. After each stop nothing of the study holds the cluster's resources."""
    env = {**ray_cluster.env, "RAY_ADDRESS": ray_cluster.gcs_address}
    storage, uri = tmp_path / "runs", f"sqlite:///{tmp_path / 'mlflow.db'}"
    study, table = storage / "stop", storage / "stop" / "trials.parquet"
    first = tmp_path / "first.log"
    with open(first, "w") as log:
        driver = _start([PYTHON, str(REPO / "orchestrator" / "tune.py"), "--name", "stop", "--num-samples", "2",
                         "--storage-path", str(storage), "--tracking-uri", uri,
                         *_sets([*SHRINK, "optim.epochs=4"])], env, tmp_path, log)
        _wait(lambda: sum(e >= 1 for e in _committed_epochs(study)) == 2, 420, driver, first)
        os.kill(driver.pid, signal.SIGINT)
        assert _finish(driver, 180, first) == 130, first.read_text()[-4000:]
    output = first.read_text()
    frame = pd.read_parquet(table)
    assert len(frame) == 2 and (frame["status"] == "INTERRUPTED").all(), frame[["trial_id", "status"]]
    assert not frame["pareto"].any() and (frame["pareto_rank"] == -1).all()  # never on the front
    assert "Trials (2 interrupted)" in output and output.count(" INTERRUPTED ") >= 2
    assert "study stop interrupted by SIGINT: 2 trial(s) INTERRUPTED" in output
    command = _resume_command(output)
    assert command == ["python", "orchestrator/tune.py", "--resume", "--name", "stop", "--storage-path",
                       str(storage), "--tracking-uri", uri]
    parents, trials = _runs(uri, "stop")
    assert set(trials) == set(frame["trial_id"])
    for run in [*parents, *trials.values()]:
        assert run.info.status == "KILLED" and run.data.tags["interrupted"] == "true"
    assert all(run.data.tags["trial_status"] == "INTERRUPTED" for run in trials.values())

    # The printed command, run from the repository, stopped by SIGTERM. The repository may hold a quick start's
    # mlflow.db and runs/ (the README runs it there first): the resumed study must leave them as they are.
    before = _repo_stores()
    wait_until_released(ray_cluster, RELEASED_IN_S)  # the stopped driver gave its trials' workers back
    second = tmp_path / "second.log"
    with open(second, "w") as log:
        driver = _start([PYTHON, *command[1:]], env, REPO, log)
        _wait(lambda: second.read_text().count(STARTED) == 2, 300, driver, second)
        os.kill(driver.pid, signal.SIGTERM)
        assert _finish(driver, 180, second) == 130, second.read_text()[-4000:]
    output = second.read_text()
    assert "study stop interrupted by SIGTERM" in output and _resume_command(output) == command
    frame = pd.read_parquet(table)
    assert set(frame["status"]) <= {"INTERRUPTED", "FINISHED"} and (frame["status"] == "INTERRUPTED").any()
    _, trials = _runs(uri, "stop")
    for row in frame.itertuples():
        want = "KILLED" if row.status == "INTERRUPTED" else "FINISHED"
        assert trials[row.trial_id].info.status == want
        assert trials[row.trial_id].data.tags["trial_status"] == row.status

    # And once more: the study completes where it stopped, with its stored tracking URI.
    wait_until_released(ray_cluster, RELEASED_IN_S)
    third = tmp_path / "third.log"
    with open(third, "w") as log:
        rc = _finish(_start([PYTHON, *command[1:]], env, REPO, log), 600, third)
    output = third.read_text()
    assert rc == 0, output[-4000:]
    assert f"python -m orchestrator.verify --study {study} --tracking-uri {uri}" in output
    frame = pd.read_parquet(table)
    assert (frame["status"] == "FINISHED").all() and (frame["epoch"] == 4).all()
    assert (frame["resumed_from_epoch"] >= 1).all()  # continued from the checkpoints, not from scratch
    parents, trials = _runs(uri, "stop")
    assert len(parents) == 1 and set(trials) == set(frame["trial_id"])  # no second parent or trial run
    for run in [*parents, *trials.values()]:
        assert run.info.status == "FINISHED" and "interrupted" not in run.data.tags
    assert _repo_stores() == before  # the stored tracking URI and storage were used, not the working directory's
    assert len(json.loads((study / "drivers.json").read_text())) == 3  # each driver's job, for a later resume
    wait_until_released(ray_cluster, RELEASED_IN_S)


_HOLDER = """
import ray, sys
from ray.util.placement_group import placement_group
ray.init(address=sys.argv[1], log_to_driver=False)
group = placement_group([{"CPU": 0.25}])
ray.get(group.ready())
print(ray.get_runtime_context().get_job_id(), group.id.hex(), flush=True)
sys.stdin.read()  # holds its group until the test closes stdin or kills it
"""

_RECLAIM = """
import json, logging, ray, sys
from orchestrator import reclaim
logging.basicConfig(level=logging.WARNING)
ray.init(address=sys.argv[1], log_to_driver=False)
if sys.argv[2] == "jobs":
    print(json.dumps({"released": reclaim.release(json.loads(sys.argv[3]), "the test's holders")}))
elif sys.argv[2] == "ended":
    print(json.dumps({"ended": sorted(reclaim.ended_jobs(json.loads(sys.argv[3])))}))
else:
    print(json.dumps({"released": reclaim.release_earlier_drivers(sys.argv[3]), "job": reclaim.current_job()}))
"""


def test_only_the_studys_own_placement_groups_are_given_back(ray_cluster: RayCluster, tmp_path: Path) -> None:
    """release() removes the live groups of the jobs it is given and no other; a resume releases nothing of an
    earlier driver that still runs."""
    env = {**ray_cluster.env, "PYTHONPATH": str(REPO)}
    holders = [subprocess.Popen([PYTHON, "-c", _HOLDER, ray_cluster.gcs_address], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        (job_a, group_a), (job_b, group_b) = [tuple(h.stdout.readline().split()) for h in holders]  # type: ignore[union-attr]

        def state(group: str) -> str:
            return next(g["state"] for g in state_api(ray_cluster, "placement_groups")
                        if g["placement_group_id"] == group)

        def reclaim(*args: str) -> dict:
            proc = subprocess.run([PYTHON, "-c", _RECLAIM, ray_cluster.gcs_address, *args], env=env,
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, proc.stderr[-3000:]
            return dict(json.loads(proc.stdout.strip().splitlines()[-1]), log=proc.stderr)

        out = reclaim("jobs", json.dumps([job_a]))
        assert out["released"] == 1 and "released 1 placement group(s) (0.25 CPU) that the test's holders" in out["log"]
        assert state(group_a) == "REMOVED" and state(group_b) == "CREATED"  # b's job was not named

        study = tmp_path / "study"
        study.mkdir()
        (study / "drivers.json").write_text(json.dumps([job_b]))
        out = reclaim("resume", str(study))
        assert out["released"] == 0 and state(group_b) == "CREATED"  # its driver still runs: its group is in use
        assert json.loads((study / "drivers.json").read_text()) == [job_b, out["job"]]

        holders[0].kill()  # a's driver ends: a resume would now release what its job still held
        holders[0].wait(timeout=30)
        deadline = time.monotonic() + 60
        while (ended := reclaim("ended", json.dumps([job_a, job_b]))["ended"]) != [job_a]:
            assert time.monotonic() < deadline, ended
            time.sleep(1)
    finally:
        for h in holders:
            h.kill()
            h.wait(timeout=30)


# Six: the writer notices the restarted server some seconds after it is back, and trials of the shrunk study take
# about 10 s each; with four, all of them had started by the second stop.
TRIALS = 6


def test_a_study_outlives_its_mlflow_server(ray_cluster: RayCluster, tmp_path: Path) -> None:
    """Two outages in one study of six trials, one at a time. The server is stopped while the first trial runs
    and started again (same port and store) once the second has started: the queued records are written while
    the study goes on. Then it is stopped for good: the next trials are still scheduled, the study finishes and
    says what was not logged; the replay command then logs it to the restarted server."""
    wait_until_released(ray_cluster)
    (tmp_path / "server").mkdir()
    server = MlflowServer(tmp_path / "server")
    server.start()
    env = {**ray_cluster.env, "RAY_ADDRESS": ray_cluster.gcs_address, "ARAT_MLFLOW_WAIT_S": "5"}
    storage = tmp_path / "runs"
    study = storage / "outage"
    path = tmp_path / "study.log"

    def tracked(status: str | None = None) -> list[str]:
        """trial ids of the study's trial runs in MLflow (with that run status)."""
        client = MlflowClient(server.uri)
        exp = client.get_experiment_by_name("outage")
        runs = client.search_runs([exp.experiment_id], "tags.run_kind = 'trial'") if exp else []
        return [r.data.tags["trial_id"] for r in runs if status in (None, r.info.status)]

    try:
        with open(path, "w") as log:
            driver = _start([PYTHON, str(REPO / "orchestrator" / "tune.py"), "--name", "outage", "--num-samples", str(TRIALS),
                             "--storage-path", str(storage), "--tracking-uri", server.uri,
                             *_sets([*SHRINK, "optim.epochs=2", "search.max_concurrent=1"])], env, tmp_path, log)
            _wait(lambda: path.read_text().count(STARTED) == 1 and bool(tracked()), 300, driver, path)
            server.stop()  # the first outage: the first trial's epochs and end wait in the queue
            _wait(lambda: path.read_text().count(STARTED) == 2, 300, driver, path)
            server.start()
            # Written while the study runs: the first trial's run is finished in MLflow before the study ends.
            _wait(lambda: len(tracked("FINISHED")) == 1 and "is back after" in path.read_text(), 120, driver, path)
            server.stop()  # the second outage, for good
            stopped_at, at_stop = time.monotonic(), path.read_text()
            drained_with, seen_at_stop = at_stop.count(STARTED), len(at_stop)
            rc = _finish(driver, 420, path)
        down_for = time.monotonic() - stopped_at
        output = path.read_text()
        assert rc == 0, output[-4000:]
        # Tune went on without the server: the trials not yet started at the second stop started, and it ended.
        assert drained_with < TRIALS, "every trial had started before the second stop: nothing left to test"
        assert output.count(STARTED) == TRIALS and output[seen_at_stop:].count(STARTED) == TRIALS - drained_with
        assert down_for < 300
        frame = pd.read_parquet(study / "trials.parquet")
        assert len(frame) == TRIALS and (frame["status"] == "FINISHED").all()
        # Said once per outage, clearly; none of urllib3's retry warnings.
        assert output.count("MLflow is unreachable") == 2 and output.count("is back after") == 1
        assert "Retrying (Retry(" not in output
        assert f"not logged; saved to {study}/mlflow_pending.jsonl" in output
        replay = f"python -m orchestrator.replay --study {study}"
        assert replay in output

        server.start()
        proc = subprocess.run([PYTHON, *shlex.split(replay)[1:]], env={**os.environ, "PYTHONPATH": str(REPO)},
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert not (study / "mlflow_pending.jsonl").exists()
        parents, trials = _runs(server.uri, "outage")
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert set(trials) == set(frame["trial_id"])  # no run twice, none lost, across both outages
        client = MlflowClient(server.uri)
        for row in frame.itertuples():
            run = trials[row.trial_id]
            assert run.info.status == "FINISHED" and run.data.metrics["clean_acc"] == row.clean_acc
            assert sorted({m.step for m in client.get_metric_history(run.info.run_id, "robust_acc")}) == [1, 2]
        tagged = [trials[t].data.tags["pareto"] == "true" for t in frame["trial_id"]]
        assert tagged == pareto_mask(frame[["clean_acc", "robust_acc"]].to_numpy()).tolist()
    finally:
        server.stop()


_IN_ACTOR = """
import json, os, sys, time
import ray, ray.train
from ray.train.v2.api.callback import UserCallback
from orchestrator.ray_internals import lean_torch_trainer, started_local_ray

ray.init(address=sys.argv[1], log_to_driver=False)
COORDINATOR = {"name": "AutoscalingCoordinator", "namespace": "AutoscalingCoordinator"}  # Train's, detached


def coordinator():
    try:
        return ray.get_actor(**COORDINATOR)
    except ValueError:
        return None


def loop(config):
    ray.train.report({"worker_pid": os.getpid()})
    open(os.path.join(config["storage"], config["name"] + ".running"), "w").close()
    time.sleep(config["sleep"])
    return "returned"


class Seen(UserCallback):  # runs where the controller runs
    def __init__(self, stop):
        self.stop, self.pids = stop, []

    def after_report(self, run_context, metrics, checkpoint):
        self.pids.append([os.getpid(), metrics[0]["worker_pid"]])
        if self.stop:
            sys.exit(0)  # what Tune's report does in a trial that Tune is stopping


@ray.remote(num_cpus=0)
class Trial:  # a Tune trial's actor, as far as the controller can tell
    def fit(self, storage, name, sleep, stop, autoscaler=False):
        seen = Seen(stop)
        trainer = lean_torch_trainer(autoscaler=autoscaler)(
            loop, train_loop_config={"sleep": sleep, "storage": storage, "name": name},
            scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
            run_config=ray.train.RunConfig(name=name, storage_path=storage, callbacks=[seen]))
        started = time.monotonic()
        try:
            value = trainer.fit().return_value
        except SystemExit:
            value = "stopped"
        return {"value": value, "pid": os.getpid(), "seen": seen.pids, "s": time.monotonic() - started}


def live_groups():
    return sum(g["state"] != "REMOVED" for g in ray.util.placement_group_table().values())


if coordinator() is not None:  # an earlier study on this cluster started it
    ray.kill(coordinator(), no_restart=True)
    while coordinator() is not None:
        time.sleep(0.2)
print(json.dumps({"job": ray.get_runtime_context().get_job_id(), "started_local_ray": started_local_ray()}), flush=True)
trial = Trial.remote()
done = ray.get(trial.fit.remote(sys.argv[2], "done", 0, False))
print(json.dumps(dict(done, coordinator=coordinator() is not None)), flush=True)
stopped = ray.get(trial.fit.remote(sys.argv[2], "stopped", 300, True, True))
print(json.dumps(dict(stopped, groups=live_groups(), coordinator=coordinator() is not None)), flush=True)
trial.fit.remote(sys.argv[2], "killed", 300, False)
deadline = time.monotonic() + 120
while not os.path.exists(os.path.join(sys.argv[2], "killed.running")):  # its workers run: their group registered
    assert time.monotonic() < deadline, "the third run never started"
    time.sleep(0.2)
assert live_groups() == 1
ray.kill(trial)  # a Tune trial that is not reused is stopped this way, its run with it
killed = time.monotonic()
while live_groups():
    assert time.monotonic() < deadline, "the killed trial's placement group was never removed"
    time.sleep(0.2)
print(json.dumps({"removed_after_s": time.monotonic() - killed}), flush=True)
"""


def test_a_trials_train_controller_runs_in_its_actor_and_gives_everything_back(ray_cluster: RayCluster,
                                                                               tmp_path: Path) -> None:
    """``lean_torch_trainer`` in an actor: the run's controller is that process, a run stopped at a report (as Tune
    stops a trial) takes its workers and placement group down at once, a killed actor's group is removed by the
    one placement-group cleaner that watched all of that actor's runs, and no controller actor is ever started;
    without an autoscaler, no AutoscalingCoordinator either."""
    env = {**ray_cluster.env, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([PYTHON, "-c", _IN_ACTOR, ray_cluster.gcs_address, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    job, done, stopped, killed = (json.loads(line) for line in proc.stdout.strip().splitlines()[-4:])

    assert job["started_local_ray"] is False  # it joined this cluster
    # Train's AutoscalingCoordinator (killed first if an earlier study started it): a run told there is no
    # autoscaler does not start it; one that may have one (a joined cluster) does, as Train does.
    assert done["coordinator"] is False and stopped["coordinator"] is True
    assert done["value"] == "returned"  # Result.return_value, as from Train's own controller
    [[controller_pid, worker_pid]] = done["seen"]
    assert controller_pid == done["pid"] != worker_pid  # the callbacks ran in the trial's process
    assert stopped["value"] == "stopped" and stopped["pid"] == done["pid"]
    assert stopped["s"] < 60 and stopped["groups"] == 0  # not the worker's 300 s: aborted, its group removed
    assert killed["removed_after_s"] < 30

    def actors() -> list[dict]:
        return [a for a in state_api(ray_cluster, "actors") if a.get("job_id") == job["job"]]

    classes = sorted(a["class_name"] for a in actors())
    assert classes.count("RayTrainWorker") == 3 and "TrainController" not in classes, classes
    assert classes.count("PlacementGroupCleaner") == 1, classes  # one for the actor's three runs
    deadline = time.monotonic() + 60
    while any(a["state"] != "DEAD" for a in actors() if a["class_name"] == "PlacementGroupCleaner"):
        assert time.monotonic() < deadline, "the cleaner outlived the actor it watched"
        time.sleep(1)


_FALLBACK = """
import json, sys
import ray
from ray import tune
from orchestrator.space import load_spec
from orchestrator.trainable import StudyContext

ray.init(address=sys.argv[1], log_to_driver=False)
shrink = ["optim.epochs=1", "data.train_limit=128", "eval.max_examples=64", "arat.balance_samples=64",
          "eval.final_attack=pgd"]
spec = load_spec(sys.argv[3], shrink, num_samples=1)
study = StudyContext(name="fallback", train=spec.train, storage_path=sys.argv[2], num_workers=1, use_gpu=False,
                     resources_per_worker={"CPU": 1.0}, train_max_failures=0)


def trial(config, study):
    import ray.train.torch  # Ray Train as loaded; then its controller class is hidden from the lean trainer
    from orchestrator import ray_internals, trainable
    sys.modules["ray.train.v2._internal.execution.controller"] = None  # as if Ray had moved it
    ray_internals.lean_torch_trainer.cache_clear()
    assert ray_internals.lean_torch_trainer().controller_in_process is False
    trainable.run_trial(config, study)


tuner = tune.Tuner(tune.with_resources(tune.with_parameters(trial, study=study), {"CPU": 0, "memory": 1}),
                   run_config=tune.RunConfig(name="fallback", storage_path=sys.argv[2], verbose=0))
result = tuner.fit()[0]
print(json.dumps({"job": ray.get_runtime_context().get_job_id(), "error": str(result.error or ""),
                  **{k: result.metrics.get(k) for k in ("epoch", "clean_acc", "robust_acc", "checkpoint_path")}}))
"""


def test_without_the_in_process_controller_a_trial_reports_through_trains_own(ray_cluster: RayCluster,
                                                                               tmp_path: Path) -> None:
    """The fallback for a Ray that moved Train's controller class: the real trainable then runs Train's controller
    actor, and rank 0's reports reach Tune through Tune's queue actor, checkpoint path included."""
    env = {**ray_cluster.env, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([PYTHON, "-c", _FALLBACK, ray_cluster.gcs_address, str(tmp_path),
                           str(REPO / "search_spaces" / "quickstart.yaml")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["error"] == "", out["error"][-3000:]
    assert out["epoch"] == 1 and 0 <= out["robust_acc"] <= out["clean_acc"] <= 1
    assert (Path(out["checkpoint_path"]) / "checkpoint.pt").is_file()
    classes = [a["class_name"] for a in state_api(ray_cluster, "actors") if a.get("job_id") == out["job"]]
    assert classes.count("TrainController") == 1 and "_QueueActor" in classes, sorted(classes)
