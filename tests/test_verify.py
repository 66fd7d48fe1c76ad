"""Verifying a study's front: real checkpoints, AutoAttack, a real MLflow store (SQLite), and the study's own
``trials.parquet`` in the layout ``orchestrator/tune.py`` writes (the table is written here; no Ray study runs)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from arat_train.config import TrainConfig
from arat_train.train import train
from orchestrator.tracking import StudyTracker
from orchestrator.verify import RESULT_NAME, main

TINY = {
    "data": {"dataset": "digits", "image_size": 8},
    "model": {"name": "small_cnn", "width": 8},
    "attack": {"eps": 51, "steps": 2},
    "optim": {"epochs": 4, "batch_size": 64, "lr": 0.1},
    "eval": {"attack": {"eps": 51, "steps": 5, "step_size": 12.75}, "max_examples": 64},
    "perf": {"num_threads": 1},
}
# trial -> (status, clean, robust, pareto); "gone" is on the front but its checkpoint was deleted.
TRIALS = {"a": ("FINISHED", 0.90, 0.10, True), "b": ("FINISHED", 0.70, 0.30, True),
          "c": ("FINISHED", 0.60, 0.05, False), "x": ("FAILED", math.nan, math.nan, False)}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A study directory ``runs/demo`` with a trials table, checkpoints, and the study's MLflow runs."""
    root = tmp_path_factory.mktemp("verify")
    ckpt = root / "runs" / "demo" / "train_runs" / "ckpt"
    train(TrainConfig.from_dict(TINY), checkpoint_dir=ckpt)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracker = StudyTracker(uri, "demo", space_yaml="{}\n", params={}, sampler="tpe", seed=0, code_version="t")
    tracker.start()
    rows = []
    for tid, (status, clean, robust, pareto) in TRIALS.items():
        tracker.trial_started(tid, {"arat.gamma": 30.0})
        if status == "FINISHED":
            tracker.trial_completed(tid, {"clean_acc": clean, "robust_acc": robust, "epoch": 4}, None)
        else:
            tracker.trial_failed(tid, "RuntimeError: simulated")
        rows.append({"trial_id": tid, "status": status, "error": "", "clean_acc": clean, "robust_acc": robust,
                     "checkpoint_path": str(ckpt) if status == "FINISHED" else None, "pareto": pareto,
                     "pareto_rank": 0 if pareto else -1})
    tracker.finish()
    pd.DataFrame(rows).to_parquet(root / "runs" / "demo" / "trials.parquet")
    return root, uri


def _runs(uri: str) -> dict[str, dict[str, float]]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("demo")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], "tags.run_kind = 'trial'")
    return {r.data.tags["trial_id"]: dict(r.data.metrics) for r in runs}


def test_front_is_verified_with_autoattack_and_logged(study: tuple[Path, str],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    root, uri = study
    code = main(["--study", str(root / "runs" / "demo"), "--version", "cheap", "--n-examples", "64",
                 "--threads", "1", "--tracking-uri", uri])
    out = capsys.readouterr().out
    assert code == 0, out
    table = pd.read_csv(root / "runs" / "demo" / RESULT_NAME).set_index("trial_id")
    assert sorted(table.index) == ["a", "b"]  # the front only
    for tid, row in table.iterrows():
        assert row["n_examples"] == 64 and not isinstance(row["error"], str), tid
        assert 0.5 < row["clean_acc"] <= 1.0  # a trained model: far above chance on digits
        assert row["aa_acc"] <= row["pgd_acc"] <= row["clean_acc"]  # AutoAttack is the stronger attack
        assert row["search_clean_acc"] == TRIALS[str(tid)][1]
    runs = _runs(uri)
    for tid in ("a", "b"):
        assert runs[tid]["test_aa_acc"] == pytest.approx(table.loc[tid, "aa_acc"])
        assert runs[tid]["test_robust_acc"] == pytest.approx(table.loc[tid, "pgd_acc"])
        assert runs[tid]["test_clean_acc"] == pytest.approx(table.loc[tid, "clean_acc"])
    assert "test_aa_acc" not in runs["c"] and "test_aa_acc" not in runs["x"]
    assert "logged to 2 MLflow run(s)" in out


def test_a_missing_checkpoint_is_reported_and_the_rest_verified(study: tuple[Path, str], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    root, uri = study
    copy = tmp_path / "demo"
    copy.mkdir()
    frame = pd.read_parquet(root / "runs" / "demo" / "trials.parquet")
    frame.loc[frame["trial_id"] == "a", "checkpoint_path"] = str(tmp_path / "deleted")
    frame.to_parquet(copy / "trials.parquet")
    code = main(["--study", str(copy), "--trials", "a,c", "--version", "cheap", "--n-examples", "32",
                 "--threads", "1", "--tracking-uri", uri])
    out = capsys.readouterr().out
    assert code == 1, out
    table = pd.read_csv(copy / RESULT_NAME).set_index("trial_id")
    assert isinstance(table.loc["a", "error"], str) and math.isnan(table.loc["a", "aa_acc"])
    assert table.loc["c", "n_examples"] == 32 and table.loc["c", "aa_acc"] <= table.loc["c", "clean_acc"]


@pytest.mark.parametrize("args,message", [
    (["--study", "{root}/runs/nope"], "--study: no trials table at"),
    (["--study", "{root}/runs/demo", "--trials", "a,zz"], "--trials: no trial zz in this study; it has a, b, c, x"),
    (["--study", "{root}/runs/demo", "--trials", "x"], "--trials: x did not finish"),
])
def test_bad_input_is_refused_before_any_evaluation(study: tuple[Path, str], args: list[str], message: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    root, uri = study
    before = sorted(p.name for p in (root / "runs" / "demo").iterdir())
    code = main([a.format(root=root) for a in args] + ["--tracking-uri", uri])
    assert code == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in (root / "runs" / "demo").iterdir()) == before  # nothing written
