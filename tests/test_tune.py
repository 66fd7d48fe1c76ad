"""End-to-end studies on a real Ray cluster (``ray start --head`` on 127.0.0.1, token auth, 2 CPUs).

Kept few: one submitted smoke study checks completion, the Parquet table, a forced failure, what Optuna was told
and the all-reduced accuracy; one moasha study has its driver killed and is resumed (stopped trials: STOPPED,
PRUNED in Optuna, off the front); one run is refused for GPUs the cluster lacks.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from functools import partial
from pathlib import Path
from typing import Any

import mlflow.pytorch
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import PYTHON, RAY_BIN, REPO, RayCluster, run_tune
from conftest_mlflow import mlflow_server  # noqa: F401  (fixture)
from mlflow import MlflowClient

from arat_train.accuracy import accuracy_counts, eval_mode
from arat_train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from arat_train.config import TrainConfig
from arat_train.train import build, load_data
from orchestrator.export import scoped_tracking_uri
from orchestrator.pareto import pareto_mask

pytestmark = pytest.mark.ray

# Trials of 2 DDP workers of 0.5 CPU (the quick start's own trials have one worker): what the tests check of DDP.
DDP = ["scaling.num_workers=2", "scaling.cpus_per_worker=0.5"]
# The smoke shrink without --smoke-test's 2-epoch cap: 3 epochs, so a killed study has trials in mid-run.
SHRUNK = ["data.train_limit=512", "eval.max_examples=512", "arat.balance_samples=256"]


def _sets(pairs: list[str]) -> list[str]:
    return [arg for p in pairs for arg in ("--set", p)]


def _recomputed_clean_acc(checkpoint_dir: str, world_size: int) -> tuple[float, int]:
    """Clean accuracy (adv BN, eval mode) of a checkpoint on the whole validation split, in this process.

    Each shard is evaluated as its rank did (same shard, batch size and one thread): CPU kernels round
    differently with other batch shapes and thread counts, which flips near-tied predictions of a 2-epoch model.
    """
    ckpt = load_checkpoint(Path(checkpoint_dir) / CHECKPOINT_NAME)
    cfg = TrainConfig.from_dict(ckpt["config"])
    train_data, val_data = load_data(cfg, torch.device("cpu"))
    objective = build(cfg, train_data.num_classes, int(train_data.x.shape[1]), torch.device("cpu"))
    objective.model.load_state_dict(ckpt["model"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    clean = total = 0
    try:
        with eval_mode(objective.model):
            for rank in range(world_size):
                counts = accuracy_counts(partial(objective.model, bn="adv"), val_data, None,
                                         batch_size=cfg.eval.batch_size, rank=rank, world_size=world_size,
                                         max_examples=cfg.eval.max_examples)
                clean, total = clean + int(counts["clean"]), total + int(counts["total"])
    finally:
        torch.set_num_threads(threads)
    return clean / total, total


def _optuna_trials(study_dir: Path) -> dict[str, tuple[str, list[float] | None]]:
    """Tune trial id -> (Optuna state, values) from the searcher state Tune saved with the study."""
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch()
    searcher.restore_from_dir(str(study_dir))
    assert searcher._ot_study is not None
    frozen = {t.number: t for t in searcher._ot_study.trials}
    return {tid: (frozen[t.number].state.name, frozen[t.number].values) for tid, t in searcher._ot_trials.items()}


def _mlflow_runs(uri: str, study: str) -> tuple[Any, list[Any]]:
    """The study's parent run and its child runs, as the MLflow UI would list them."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(study)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("run_kind") == "study"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1  # nothing outside the study's tree
    return parents[0], children


def _check_mlflow(uri: str, study: str, frame: pd.DataFrame) -> None:
    """One parent, one child per trial, per-epoch metrics, FAILED with its reason, Pareto tags, a loadable model."""
    client = MlflowClient(uri)
    parent, children = _mlflow_runs(uri, study)
    by_trial = {r.data.tags["trial_id"]: r for r in children}
    assert set(by_trial) == set(frame["trial_id"])
    finished = frame[frame["status"] == "FINISHED"]
    for row in frame.itertuples():
        run = by_trial[row.trial_id]
        if row.status == "FAILED":
            assert run.info.status == "FAILED" and "ForcedTrialFailure" in run.data.tags["failure_reason"]
            continue
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "robust_acc")
        assert sorted(m.step for m in history) == [1, 2]  # per epoch, step = epoch
        assert run.data.metrics["clean_acc"] == row.clean_acc
    points = np.array([[by_trial[t].data.metrics["clean_acc"], by_trial[t].data.metrics["robust_acc"]]
                       for t in finished["trial_id"]])
    tagged = [by_trial[t].data.tags["pareto"] == "true" for t in finished["trial_id"]]
    assert tagged == pareto_mask(points).tolist() == finished["pareto"].tolist()
    names = {Path(f.path).name for f in client.list_artifacts(parent.info.run_id, "pareto")}
    assert {"front.csv", "trials.parquet", "front.png", "front.html", "hypervolume.png"} <= names
    front = [by_trial[t] for t, on in zip(finished["trial_id"], tagged, strict=True) if on]
    with scoped_tracking_uri(uri):
        model = mlflow.pytorch.load_model(front[0].data.tags["model_uri"])
    with torch.no_grad():
        assert model(torch.rand(4, 1, 16, 16)).shape == (4, 10)


def test_submitted_smoke_study(ray_cluster: RayCluster, tmp_path: Path, mlflow_server: str) -> None:  # noqa: F811
    """`ray job submit` of the smoke study: 3 trials of 2 DDP workers (0.5 CPU each), trial 1 forced to fail,
    tracked over HTTP by a real `mlflow server`."""
    storage = tmp_path / "runs"
    cmd = [RAY_BIN, "job", "submit", "--address", ray_cluster.dashboard_url, "--working-dir", ".", "--",
           "python", "orchestrator/tune.py", "--smoke-test", "--name", "smoke", "--storage-path", str(storage),
           "--tracking-uri", mlflow_server, "--set", "debug.fail_trials=[1]", *_sets(DDP)]
    proc = subprocess.run(cmd, env=ray_cluster.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert "Pareto front" in proc.stdout
    assert f"python -m orchestrator.verify --study {storage / 'smoke'} --tracking-uri {mlflow_server} " \
           "--version cheap" in proc.stdout  # the closing lines: the verification to run next
    for noise in ("Reporting training result", "Started training worker group", "Setting up process group",
                  "Logical resource usage", "TensorBoard"):
        assert noise not in proc.stdout, noise  # Ray Train's INFO lines stay in its log files; Tune's table is off
    # The live table: objectives and searched parameters per trial, the front marked, the workers' resources.
    assert "* = on the current front of finished trials" in proc.stdout
    assert re.search(r"trial\s+status\s+epoch\s+clean_acc\s+robust_acc\s+gamma\b", proc.stdout)
    assert re.search(r"\d trial\(s\) running, 2 worker\(s\) each: [\d.]+ of 2 CPUs", proc.stdout)

    study = storage / "smoke"
    frame = pd.read_parquet(study / "trials.parquet")
    trial_dirs = {p.name.split("_", 1)[1] for p in study.glob("t0*_*") if p.is_dir()}
    assert len(frame) == 3 and set(frame["trial_id"]) == trial_dirs
    for col in ("trial_id", "status", "error", "clean_acc", "robust_acc", "checkpoint_path", "pareto",
                "pareto_rank", "config/arat.gamma", "config/attack.eps", "config/optim.epochs", "epoch"):
        assert col in frame.columns, col

    failed = frame[frame["status"] == "FAILED"]
    finished = frame[frame["status"] == "FINISHED"]
    assert len(failed) == 1 and len(finished) == 2
    assert "ForcedTrialFailure" in failed["error"].iloc[0]
    assert not failed["pareto"].iloc[0] and failed["pareto_rank"].iloc[0] == -1
    assert finished["pareto"].any() and (finished["pareto_rank"] >= 0).all()
    assert finished[["clean_acc", "robust_acc"]].notna().all().all()
    assert (finished["epoch"] == 2).all()

    # Optuna was told the failure as a failure, and the finished trials' values as reported.
    told = _optuna_trials(study)
    assert told[failed["trial_id"].iloc[0]] == ("FAIL", None)
    for row in finished.itertuples():
        assert told[row.trial_id] == ("COMPLETE", [row.clean_acc, row.robust_acc])

    # Rank 0 reported the accuracy of all ranks' shards: recompute it from the final checkpoint in one process.
    for row in finished.itertuples():
        assert row.checkpoint_path.endswith("epoch_0002") and Path(row.checkpoint_path, CHECKPOINT_NAME).is_file()
        assert row.eval_examples == 200  # the all-reduced count of both ranks' shards: eval.max_examples
        clean, examples = _recomputed_clean_acc(row.checkpoint_path, world_size=2)
        assert examples == 200 and clean == row.clean_acc
    _check_mlflow(mlflow_server, "smoke", frame)


def _experiment_statuses(study_dir: Path) -> dict[str, str]:
    states = sorted(study_dir.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
    except (OSError, json.JSONDecodeError):  # being rewritten
        return {}
    out = {}
    for trial_json, _ in data["trial_data"]:
        trial = json.loads(trial_json) if isinstance(trial_json, str) else trial_json
        out[trial["trial_id"]] = trial["status"]
    return out


def _train_epochs(study_dir: Path) -> dict[str, int]:
    """Tune trial id -> the epoch of the latest checkpoint its Train run has committed (0 if none yet).

    Read from Ray Train's checkpoint-manager snapshot, which is what a restarted run resumes from: a checkpoint
    directory already copied to storage but not yet in the snapshot does not count.
    """
    out = {}
    for snapshot in (study_dir / "train_runs").glob("*_*/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result") or {}
        except (OSError, json.JSONDecodeError):  # being rewritten
            continue
        name = str(latest.get("checkpoint_dir_name") or "epoch_0")
        out[snapshot.parent.name.rsplit("_", 1)[1]] = int(name.split("_")[1])
    return out


def test_killed_moasha_study_resumes(ray_cluster: RayCluster, tmp_path: Path) -> None:
    """A moasha study (eta 2, rungs at epochs 1 and 2 of 3), one trial at a time: its driver is killed once one
    trial has ended and another is mid-run; --resume completes the study with the scheduler's rungs restored.
    Stopped trials are STOPPED in the table and MLflow, PRUNED in Optuna, and never on the front."""
    env = {**ray_cluster.env, "RAY_ADDRESS": ray_cluster.gcs_address}
    storage, epochs = tmp_path / "runs", 3
    args = ["--name", "killed", "--num-samples", "4", "--storage-path", str(storage),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
            *_sets([*SHRUNK, *DDP, f"optim.epochs={epochs}", "search.max_concurrent=1",
                    "search.scheduler={type: moasha, grace_period: 1, reduction_factor: 2}"])]
    study = storage / "killed"
    log = open(tmp_path / "first.log", "w")  # noqa: SIM115
    driver = subprocess.Popen([PYTHON, str(REPO / "orchestrator" / "tune.py"), *args], env=env, cwd=tmp_path,
                              stdout=log, stderr=subprocess.STDOUT)
    ended_before: set[str] = set()
    try:
        deadline = time.monotonic() + 480
        while time.monotonic() < deadline and driver.poll() is None:
            statuses, reached = _experiment_statuses(study), _train_epochs(study)
            ended_before = {t for t, s in statuses.items() if s == "TERMINATED"}
            midway = {t for t, e in reached.items() if 0 < e < epochs and statuses.get(t) == "RUNNING"}
            if ended_before and midway:
                break
            time.sleep(0.5)
        assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert ended_before and midway, "the study never had an ended and a mid-run trial at once"
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
    time.sleep(2)  # let the cluster notice the driver is gone and stop its trials

    proc = run_tune(["--resume", "--name", "killed", "--storage-path", str(storage),
                     "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"], env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-5000:]
    frame = pd.read_parquet(study / "trials.parquet").set_index("trial_id")
    assert len(frame) == 4 and frame["status"].isin(["FINISHED", "STOPPED"]).all(), frame[["status", "error"]]
    finished, stopped = frame[frame["status"] == "FINISHED"], frame[frame["status"] == "STOPPED"]
    assert len(stopped) >= 1 and len(finished) >= 1, frame[["status", "epoch"]]
    assert (finished["epoch"] == epochs).all() and stopped["epoch"].isin([1, 2]).all()
    assert not stopped["pareto"].any() and (stopped["pareto_rank"] == -1).all()
    assert "early stopping: " in proc.stdout and "trials stopped at a rung" in proc.stdout
    for trial_id in ended_before:  # kept: not trained again
        assert frame.loc[trial_id, "resumed_from_epoch"] == 0
    for trial_id in midway:  # continued from its last epoch, not from scratch
        assert frame.loc[trial_id, "resumed_from_epoch"] >= 1
    # Optuna: COMPLETE with the final values for full-budget trials, PRUNED for the stopped ones.
    told = _optuna_trials(study)
    for tid, row in frame.iterrows():
        expected = ("COMPLETE", [row.clean_acc, row.robust_acc]) if row.status == "FINISHED" else ("PRUNED", None)
        assert told[str(tid)] == expected, (tid, row.status)
    # The embedded SQLite store: the resumed study reused its parent run and each trial's run.
    _, children = _mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "killed")
    assert sorted(r.data.tags["trial_id"] for r in children) == sorted(frame.index)
    assert all(r.info.status == "FINISHED" for r in children)
    for run in children:
        row = frame.loc[run.data.tags["trial_id"]]
        assert run.data.tags["trial_status"] == row.status
        if row.status == "STOPPED":
            assert run.data.tags["pareto"] == "false" and run.data.tags["stopped_at_epoch"] == f"{row.epoch:g}"


def test_refuses_more_gpus_than_the_cluster_has(ray_cluster: RayCluster, tmp_path: Path) -> None:
    env = {**ray_cluster.env, "RAY_ADDRESS": ray_cluster.gcs_address}
    proc = run_tune(["--storage-path", str(tmp_path / "runs"), *_sets(
        [*DDP, "scaling.use_gpu=true", "scaling.gpus_per_worker=1", "device=auto"])], env=env, cwd=tmp_path, timeout=180)
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert "error: scaling.gpus_per_worker: a trial needs 2 GPUs" in proc.stdout
    assert "the Ray cluster has 0" in proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_placement_no_node_set_can_hold(ray_cluster: RayCluster, tmp_path: Path) -> None:
    """STRICT_SPREAD of 2 workers on a one-node cluster: enough CPUs in all, but its placement group would wait
    forever for a second node. Refused after joining, before any trial or file."""
    env = {**ray_cluster.env, "RAY_ADDRESS": ray_cluster.gcs_address}
    proc = run_tune(["--storage-path", str(tmp_path / "runs"), *_sets([*DDP, "scaling.placement_strategy=STRICT_SPREAD"])],
                    env=env, cwd=tmp_path, timeout=180)
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert ("error: scaling.placement_strategy: STRICT_SPREAD puts each of a trial's 2 workers on its own node, but "
            "only 1 node(s) can hold a worker") in proc.stdout
    assert list(tmp_path.iterdir()) == []
