"""StudyTracker against a real MLflow server (over HTTP) and the embedded SQLite store, read back with MlflowClient.

One hand-made study drives the tracker in two driver sessions (the second resumes the first) with real tiny
checkpoints, a failed trial, a trial pushed off the front, a front trial without a checkpoint and one whose
checkpoint is missing. The Ray adapter is exercised with stand-in trial objects.
"""

from __future__ import annotations

import math
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import mlflow.pytorch
import numpy as np
import pandas as pd
import pytest
import torch
from conftest_mlflow import mlflow_server  # noqa: F401  (fixture)
from mlflow import MlflowClient

from arat_train.checkpoint import CHECKPOINT_NAME
from arat_train.config import TrainConfig
from arat_train.train import train
from orchestrator.export import export_checkpoint, scoped_tracking_uri
from orchestrator.pareto import hypervolume_history, nondominated_ranks, pareto_mask
from orchestrator.report import REPORT_FILES
from orchestrator.tracking import StudyTracker, default_tracking_uri
from orchestrator.tune_callbacks import MLflowTuneCallback

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

SPACE_YAML = "arat.gamma: {loguniform: [1, 300]}\nattack.eps: {choice: [25, 51]}\n"
SPACE_PARAMS = {"space": {"arat.gamma": "loguniform(1, 300)", "attack.eps": "choice(25, 51)"}, "metric": "max"}
TINY = {
    "device": "cpu", "seed": 0,
    "data": {"dataset": "digits", "image_size": 8, "train_limit": 128},
    "model": {"name": "small_cnn", "width": 4},
    "attack": {"eps": 51, "steps": 1},
    "arat": {"balance_samples": 64},
    "optim": {"epochs": 1, "batch_size": 64, "lr": 0.05},
    "eval": {"attack": {"eps": 51, "steps": 1, "step_size": 51}, "max_examples": 64, "batch_size": 64},
    "perf": {"num_threads": 1},
}
# trial id -> (clean_acc, robust_acc) at the end; finish order a, b, c, d, e, f.
FINAL = {"a": (0.90, 0.10), "b": (0.80, 0.25), "c": (0.70, 0.20), "d": (0.60, 0.30), "e": (0.95, 0.05),
         "f": (0.92, 0.12)}
FRONT = {"b", "d", "e", "f"}  # f pushes a off the front; c is dominated by b
WITH_MODEL = {"a", "b", "d"}  # front trials when they finished that had a checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint directory: small_cnn trained one epoch on 128 digits (about 5 s)."""
    out = tmp_path_factory.mktemp("ckpt")
    train(TrainConfig.from_dict(TINY), checkpoint_dir=out)
    assert (out / CHECKPOINT_NAME).exists()
    return out


def _tracker(uri: str, study: str) -> StudyTracker:
    return StudyTracker(uri, study, space_yaml=SPACE_YAML, params=SPACE_PARAMS, sampler="tpe", seed=7,
                        code_version="test-sha", reference_point=(0.0, 0.0))


def _config(trial_id: str) -> dict[str, Any]:
    return {"arat.gamma": 10.0 + ord(trial_id[0]), "attack.eps": 51, "model.name": "small_cnn"}


def _epoch(clean: float, robust: float, epoch: int) -> dict[str, Any]:
    """A Tune-like result: metrics plus non-metric entries the tracker must skip."""
    return {"clean_acc": clean, "robust_acc": robust, "ce_adv": 2.0 / epoch, "inv_loss": 0.5 / epoch,
            "lr": 0.05, "epoch": epoch, "done": False, "hostname": "h", "config": {"x": 1}, "timestamp": 1}


def _run_trial(tracker: StudyTracker, tid: str, ckpt: Path | None, epochs: tuple[int, ...] = (1, 2),
               complete: bool = True) -> None:
    clean, robust = FINAL[tid]
    tracker.trial_started(tid, _config(tid))
    for e in epochs:
        tracker.trial_result(tid, _epoch(clean - 0.1 * (2 - e), robust - 0.05 * (2 - e), e), step=e)
    if complete:
        tracker.trial_completed(tid, _epoch(clean, robust, epochs[-1]), ckpt)


def _drive_study(uri: str, study: str, ckpt: Path, tmp: Path) -> dict[str, Any]:
    """Session 1 runs a, b, c, a failure and half of d, then the driver 'dies'; session 2 resumes."""
    first = _tracker(uri, study)
    first.start()
    _run_trial(first, "a", ckpt)
    _run_trial(first, "b", ckpt)
    _run_trial(first, "c", ckpt)  # dominated: no model even though a checkpoint is given
    first.trial_started("fail", _config("x"))
    first.trial_result("fail", _epoch(0.3, 0.0, 1), step=1)
    first.trial_failed("fail", "Traceback ...\nRuntimeError: CUDA out of memory (simulated)")
    _run_trial(first, "d", ckpt, epochs=(1,), complete=False)
    ids_first = {tid: first.run_id(tid) for tid in ("a", "b", "c", "fail", "d")}

    second = _tracker(uri, study)  # a resumed driver: same study name, fresh process state
    second.start()
    _run_trial(second, "d", ckpt, epochs=(2,))  # restarted from its epoch-1 checkpoint
    _run_trial(second, "e", tmp / "missing")  # on the front, checkpoint gone: tagged, study goes on
    _run_trial(second, "f", None)  # on the front, no checkpoint given
    second.finish()
    return {"first": first, "second": second, "ids_first": ids_first}


def _check_study(uri: str, study: str, ckpt: Path, result: dict[str, Any]) -> None:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(study)
    assert exp is not None
    first, second = result["first"], result["second"]
    # One parent, reused on resume.
    parents = client.search_runs([exp.experiment_id], "tags.run_kind = 'study'")
    assert [p.info.run_id for p in parents] == [first.parent_run_id] == [second.parent_run_id]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["study_name"] == study and parent.data.tags["sampler"] == "tpe"
    assert parent.data.tags["seed"] == "7" and parent.data.tags["code_version"] == "test-sha"
    assert parent.data.params["space.arat.gamma"] == "loguniform(1, 300)"
    assert parent.data.params["study.sampler"] == "tpe"
    assert Path(client.download_artifacts(parent.info.run_id, "search_space.yaml")).read_text() == SPACE_YAML

    # One child per trial under it, reused on resume.
    children = client.search_runs([exp.experiment_id], "tags.run_kind = 'trial'")
    by_trial = {r.data.tags["trial_id"]: r for r in children}
    assert len(children) == len(by_trial) == 7
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    assert {t: by_trial[t].info.run_id for t in result["ids_first"]} == result["ids_first"]
    assert by_trial["a"].data.params == {"arat.gamma": "107.0", "attack.eps": "51", "model.name": "small_cnn"}

    # Per-epoch metrics (step = epoch), across the resume for d; non-numeric entries skipped.
    for tid in ("a", "d"):
        history = client.get_metric_history(by_trial[tid].info.run_id, "ce_adv")
        assert sorted(m.step for m in history) == [1, 2]
    assert "hostname" not in by_trial["a"].data.metrics and "timestamp" not in by_trial["a"].data.metrics

    # Failure.
    failed = by_trial["fail"]
    assert failed.info.status == "FAILED"
    assert "CUDA out of memory" in failed.data.tags["failure_reason"]
    assert failed.data.tags["pareto"] == "false"

    # Pareto tags equal pareto_mask / nondominated_ranks over the logged final metrics.
    finished = sorted((r for r in children if r.info.status == "FINISHED"),
                      key=lambda r: int(r.data.tags["finish_order"]))
    assert [r.data.tags["trial_id"] for r in finished] == list("abcdef")
    points = np.array([[r.data.metrics["clean_acc"], r.data.metrics["robust_acc"]] for r in finished])
    np.testing.assert_allclose(points, [FINAL[t] for t in "abcdef"])
    mask, ranks = pareto_mask(points), nondominated_ranks(points)
    assert [r.data.tags["pareto"] == "true" for r in finished] == mask.tolist()
    assert [int(r.data.tags["pareto_rank"]) for r in finished] == ranks.tolist()
    assert {r.data.tags["trial_id"] for r in finished if r.data.tags["pareto"] == "true"} == FRONT
    ui_front = client.search_runs([exp.experiment_id], "tags.pareto = 'true'")
    assert {r.data.tags["trial_id"] for r in ui_front} == FRONT

    # Parent: hypervolume and front size over finished trials.
    hv = client.get_metric_history(parent.info.run_id, "hypervolume")
    assert [m.step for m in sorted(hv, key=lambda m: m.step)] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([m.value for m in sorted(hv, key=lambda m: m.step)],
                               hypervolume_history(points, (0.0, 0.0)))
    assert parent.data.metrics["pareto_size"] == len(FRONT)

    # Report artifacts.
    names = {Path(f.path).name for f in client.list_artifacts(parent.info.run_id, "pareto")}
    assert names == set(REPORT_FILES)
    front_csv = pd.read_csv(client.download_artifacts(parent.info.run_id, "pareto/front.csv"))
    assert set(front_csv["trial_id"].astype(str)) == FRONT
    table = pd.read_parquet(client.download_artifacts(parent.info.run_id, "pareto/trials.parquet"))
    assert len(table) == 7 and set(table.loc[table["pareto"], "trial_id"]) == FRONT
    page = Path(client.download_artifacts(parent.info.run_id, "pareto/front.html")).read_text()
    assert page.count("<circle ") == page.count("data-trial-id=") == 6

    _check_models(uri, client, exp.experiment_id, by_trial, ckpt)


def _check_models(uri: str, client: MlflowClient, experiment_id: str, by_trial: dict[str, Any], ckpt: Path) -> None:
    """Front trials with a checkpoint have a loadable model; the others say why not; none logged twice."""
    tagged = {t for t, r in by_trial.items() if "model_uri" in r.data.tags}
    assert tagged == WITH_MODEL
    assert "model_error" in by_trial["e"].data.tags and "model_error" not in by_trial["f"].data.tags
    logged = client.search_logged_models(experiment_ids=[experiment_id])
    assert len(logged) == len(WITH_MODEL)  # resume did not log a second copy; all in the study's experiment
    assert {m.source_run_id for m in logged} == {by_trial[t].info.run_id for t in WITH_MODEL}

    reference, _ = export_checkpoint(ckpt)
    x = torch.rand(3, 1, 8, 8)  # another batch size than the input example's
    model_uri = by_trial["b"].data.tags["model_uri"]
    assert model_uri.startswith("models:/m-")
    with scoped_tracking_uri(uri):
        loaded = mlflow.pytorch.load_model(model_uri)
    with torch.no_grad():
        out = loaded(x)
        assert out.shape == (3, 10)
        torch.testing.assert_close(out, reference(x))


def test_study_over_http(mlflow_server: str, tiny_checkpoint: Path, tmp_path: Path) -> None:  # noqa: F811
    result = _drive_study(mlflow_server, "http-study", tiny_checkpoint, tmp_path)
    parent = MlflowClient(mlflow_server).get_run(result["first"].parent_run_id)
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:/")  # uploads went through the server
    _check_study(mlflow_server, "http-study", tiny_checkpoint, result)


def test_study_on_embedded_sqlite(tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, elsewhere = tmp_path / "store", tmp_path / "cwd"
    store.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # as under `ray job`: the cwd is not where the store lives
    uri = default_tracking_uri(store)
    assert uri == f"sqlite:///{store.resolve()}/mlflow.db" and uri.startswith("sqlite:////")
    result = _drive_study(uri, "local study", tiny_checkpoint, tmp_path)
    _check_study(uri, "local study", tiny_checkpoint, result)
    assert (store / "mlruns" / "local_study").is_dir()
    assert list(elsewhere.iterdir()) == []


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One embedded store for the small tests below (creating an SQLite store takes seconds); studies differ."""
    return default_tracking_uri(tmp_path_factory.mktemp("shared_store"))


def _fake_trial(tid: str, tmp: Path, last_result: dict[str, Any] | None = None, error: str | None = None) -> Trial:
    """A stand-in with just the Trial attributes the adapter reads."""
    error_file = None
    if error is not None:
        error_file = tmp / f"error_{tid}.txt"
        error_file.write_text(error)
    fake = SimpleNamespace(trial_id=tid, config=_config(tid), last_result=last_result or {},
                           error_file=str(error_file) if error_file else None, get_error=lambda: None)
    return cast("Trial", fake)


def test_tune_callback_forwards_to_tracker(sqlite_uri: str, tiny_checkpoint: Path, tmp_path: Path) -> None:
    copy = tmp_path / "trial_ckpt"
    shutil.copytree(tiny_checkpoint, copy)
    callback = MLflowTuneCallback(_tracker(sqlite_uri, "adapter"))
    callback.setup(num_samples=2)
    results = [{**_epoch(0.5 + 0.1 * e, 0.1 * e, e), "checkpoint_path": copy.as_uri(), "training_iteration": e}
               for e in (1, 2)]
    good = _fake_trial("g1", tmp_path, last_result=results[-1])
    callback.on_trial_start(iteration=0, trials=[good], trial=good)
    for e, result in enumerate(results, start=1):
        callback.on_trial_result(iteration=e, trials=[good], trial=good, result=result)
    callback.on_trial_complete(iteration=3, trials=[good], trial=good)
    bad = _fake_trial("b1", tmp_path, error="Failure # 1\nValueError: diverged")
    callback.on_trial_result(iteration=4, trials=[bad], trial=bad, result=_epoch(0.1, 0.0, 1))  # no start seen
    callback.on_trial_error(iteration=5, trials=[bad], trial=bad)
    callback.on_experiment_end(trials=[good, bad])

    client = MlflowClient(sqlite_uri)
    exp = client.get_experiment_by_name("adapter")
    assert exp is not None
    runs = {r.data.tags.get("trial_id", "parent"): r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"parent", "g1", "b1"}
    assert runs["parent"].info.status == "FINISHED"
    assert runs["g1"].info.status == "FINISHED" and runs["g1"].data.tags["pareto"] == "true"
    assert runs["g1"].data.tags["model_uri"].startswith("models:/")
    assert sorted(m.step for m in client.get_metric_history(runs["g1"].info.run_id, "clean_acc")) == [1, 2]
    assert runs["b1"].info.status == "FAILED" and "diverged" in runs["b1"].data.tags["failure_reason"]
    assert runs["b1"].data.params["arat.gamma"] == str(10.0 + ord("b1"[0]))


def test_nan_objectives_orphans_and_pickling(sqlite_uri: str) -> None:
    tracker = _tracker(sqlite_uri, "nan")
    tracker.start()
    tracker.trial_started("n", {})
    tracker.trial_completed("n", {"clean_acc": math.nan, "robust_acc": 0.2, "epoch": 1}, None)
    tracker.trial_started("ok", {})
    tracker.trial_completed("ok", {"clean_acc": 0.5, "robust_acc": 0.2, "epoch": 1}, None)
    tracker.trial_started("orphan", {})  # its end never arrives
    tracker.trial_started("retry", {})
    tracker.trial_failed("retry", "OSError: node lost")
    tracker.trial_started("retry", {})  # restarted (Tuner.restore(restart_errored=True)): the same run goes on
    tracker.trial_completed("retry", {"clean_acc": 0.4, "robust_acc": 0.1, "epoch": 1}, None)
    tracker = pickle.loads(pickle.dumps(tracker))  # Tune pickles callbacks; the client is not carried
    tracker.finish()
    client = MlflowClient(sqlite_uri)
    runs = {t: client.get_run(tracker.run_id(t)) for t in ("n", "ok", "orphan", "retry")}
    assert (runs["n"].data.tags["pareto"], runs["n"].data.tags["pareto_rank"]) == ("false", "-1")
    assert (runs["ok"].data.tags["pareto"], runs["ok"].data.tags["pareto_rank"]) == ("true", "0")
    assert runs["orphan"].info.status == "KILLED" and runs["orphan"].data.tags["interrupted"] == "true"
    assert runs["orphan"].data.tags["pareto"] == "false" and "pareto_rank" not in runs["orphan"].data.tags
    assert runs["retry"].info.status == "FINISHED" and "failure_reason" not in runs["retry"].data.tags
    assert (runs["retry"].data.tags["pareto"], runs["retry"].data.tags["pareto_rank"]) == ("false", "1")


def test_methods_need_start(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="start"):
        _tracker(default_tracking_uri(tmp_path), "unstarted").trial_started("t", {})
    assert not (tmp_path / "mlflow.db").exists()


def test_masking_suspects_are_tagged(sqlite_uri: str) -> None:
    tracker = StudyTracker(sqlite_uri, "masking", space_yaml=SPACE_YAML, params=SPACE_PARAMS, sampler="tpe", seed=0,
                           code_version="test-sha", masking_threshold=0.1)
    tracker.start()
    for tid, gap in (("m", 0.3), ("n", 0.01), ("o", None)):
        tracker.trial_started(tid, {})
        final = {"clean_acc": 0.5 + 0.1 * len(tid), "robust_acc": 0.2, "epoch": 1}
        tracker.trial_completed(tid, final if gap is None else {**final, "masking_gap": gap}, None)
    tracker.finish()
    client = MlflowClient(sqlite_uri)
    tags = {t: client.get_run(tracker.run_id(t)).data.tags for t in ("m", "n", "o")}
    assert tags["m"]["gradient_masking_suspect"] == "true" and tags["n"]["gradient_masking_suspect"] == "false"
    assert "gradient_masking_suspect" not in tags["o"]  # no gap measured (a PGD objective): no verdict
    resumed = StudyTracker(sqlite_uri, "masking", space_yaml=SPACE_YAML, params=SPACE_PARAMS, sampler="tpe",
                           seed=0, code_version="test-sha", masking_threshold=0.1)
    resumed.start()
    assert resumed._records()[0].masking_gap == pytest.approx(0.3)  # read back on resume
