"""End-to-end studies on a real Ray cluster (``ray start --head`` on 127.0.0.1, token auth, 2 CPUs).

Kept few: one submitted smoke study checks completion, the Parquet table, a forced failure, what Optuna was told
and the all-reduced accuracy; runs are refused for GPUs or a placement the cluster lacks. A moasha study's stopped
trials (STOPPED, PRUNED in Optuna, off the front) are checked on the 2-node cluster (test_multinode.py), the
resume of a killed moasha study in test_moasha_tune.py.
"""

from __future__ import annotations

import re
import subprocess
from functools import partial
from pathlib import Path

import mlflow.pytorch
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import RAY_BIN, REPO, RayCluster, run_tune, state_api
from conftest_mlflow import mlflow_server  # noqa: F401  (fixture)
from mlflow import MlflowClient
from study_checks import mlflow_runs, optuna_trials

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


def _check_mlflow(uri: str, study: str, frame: pd.DataFrame) -> None:
    """One parent, one child per trial, per-epoch metrics, FAILED with its reason, Pareto tags, a loadable model."""
    client = MlflowClient(uri)
    parent, children = mlflow_runs(uri, study)
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

    # Each trial was a Ray Train run (2 workers each) whose controller ran in the trial's own actor: no controller
    # actor, one placement-group cleaner per trial actor rather than per run, and no DatasetManager (no Ray Data).
    classes = [a.get("class_name") for a in state_api(ray_cluster, "actors")]
    assert classes.count("RayTrainWorker") >= 6, sorted(classes)
    assert "TrainController" not in classes and "DatasetManager" not in classes, sorted(classes)
    assert 1 <= classes.count("PlacementGroupCleaner") <= classes.count("ImplicitFunc"), sorted(classes)

    study = storage / "smoke"
    frame = pd.read_parquet(study / "trials.parquet")
    trial_dirs = [p for p in study.glob("t0*_*") if p.is_dir()]
    assert len(frame) == 3 and set(frame["trial_id"]) == {p.name.split("_", 1)[1] for p in trial_dirs}
    # Tune's CSV and JSON logs in each trial's directory, and not its TensorBoard one (MLflow is the record).
    for trial_dir in trial_dirs:
        assert (trial_dir / "result.json").is_file() and (trial_dir / "progress.csv").is_file()
        assert not list(trial_dir.glob("events.out.tfevents*")), sorted(trial_dir.iterdir())
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
    told = optuna_trials(study)
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
