"""Verifying a study's front: real checkpoints, AutoAttack, a real MLflow store (SQLite), and the study's own
``trials.parquet`` in the layout ``orchestrator/tune.py`` writes (the table is written here; no Ray study runs)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from arat_train.config import TrainConfig
from arat_train.train import train
from orchestrator.names import Status
from orchestrator.records import TrialRecord, trials_table, write_trials_table
from orchestrator.select import main as select_main
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
    for i, tid in ((1, "a"), (2, "b")):  # progress per model and per attack
        assert f"[{i}/2] trial {tid}: loading its last checkpoint" in out
        assert re.search(rf"\[{i}/2\] trial {tid}:   robust accuracy after APGD-CE: ", out), out
        assert re.search(rf"\[{i}/2\] trial {tid}: AutoAttack cheap \d\.\d{{4}} \(", out), out
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


# The verified front: p and q are the search front; q's model is the weak one, so verification pushes it off;
# r was dominated in the search but shares p's model, so it joins the verified front once verified.
FRONT_TRIALS = {"p": (0.90, 0.10, True, "strong"), "q": (0.70, 0.30, True, "weak"), "r": (0.60, 0.05, False, "strong")}


@pytest.fixture(scope="module")
def fronts(study: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Study ``runs/fronts`` of three finished trials with two different models, in its own SQLite store."""
    root, _ = study
    base = tmp_path_factory.mktemp("fronts")
    ckpts = {"strong": root / "runs" / "demo" / "train_runs" / "ckpt", "weak": base / "weak"}
    train(TrainConfig.from_dict({**TINY, "optim": {**TINY["optim"], "epochs": 1}, "seed": 1}),
          checkpoint_dir=ckpts["weak"])
    uri = f"sqlite:///{base / 'mlflow.db'}"
    tracker = StudyTracker(uri, "fronts", space_yaml="{}\n", params={}, sampler="tpe", seed=0, code_version="t")
    tracker.start()
    records = []
    for tid, (clean, robust, _, model) in FRONT_TRIALS.items():
        tracker.trial_started(tid, {"arat.gamma": 30.0})
        tracker.trial_completed(tid, {"clean_acc": clean, "robust_acc": robust, "epoch": 4}, None)
        records.append(TrialRecord(tid, Status.FINISHED, clean, robust, checkpoint_path=str(ckpts[model]),
                                   params={"arat.gamma": 30.0}))
    tracker.finish()
    write_trials_table(trials_table(records), str(base / "runs" / "fronts"))
    return base, uri


def _verified_tags(uri: str, study: str) -> dict[str, tuple[str, str]]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(study)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], "tags.run_kind = 'trial'")
    return {r.data.tags["trial_id"]: (r.data.tags.get("pareto_verified", ""), r.data.tags.get("pareto_verified_rank", ""))
            for r in runs}


def test_verified_front_tags_plots_and_select(fronts: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    base, uri = fronts
    study = str(base / "runs" / "fronts")
    common = ["--study", study, "--version", "cheap", "--n-examples", "64", "--threads", "1", "--tracking-uri", uri]
    assert select_main(["--experiment", "fronts", "--tracking-uri", uri, "--verified"]) == 2
    assert "has no verified figures yet" in capsys.readouterr().err

    assert main(common) == 0  # the search front: p and q
    out = capsys.readouterr().out
    table = pd.read_csv(Path(study) / RESULT_NAME).set_index("trial_id")
    assert table.loc["p", "aa_acc"] >= table.loc["q", "aa_acc"] and table.loc["p", "clean_acc"] > table.loc["q", "clean_acc"]
    assert "search front (validation, the study's objective): p, q" in out
    assert "verified front (test, AutoAttack cheap, over 2 verified trials): p" in out
    assert "left the front when verified: q" in out
    assert _verified_tags(uri, "fronts") == {"p": ("true", "0"), "q": ("false", "1"), "r": ("", "")}
    page = (Path(study) / "verified_front.html").read_text()
    assert (Path(study) / "verified_front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(re.findall(r'data-kind="search"', page)) == len(re.findall(r'data-kind="verified"', page)) == 2
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("fronts")
    assert exp is not None
    parent = client.search_runs([exp.experiment_id], "tags.run_kind = 'study'")[0].info.run_id
    assert {"pareto/verified_front.png", "pareto/verified_front.html"} <= {
        f.path for f in client.list_artifacts(parent, "pareto")}

    assert main([*common, "--trials", "r"]) == 0  # more trials verified: the tags follow, one row per trial
    out = capsys.readouterr().out
    assert "joined the front when verified: r" in out
    assert _verified_tags(uri, "fronts") == {"p": ("true", "0"), "q": ("false", "1"), "r": ("true", "0")}
    assert main(common) == 0  # verifying the front again replaces its rows
    capsys.readouterr()
    rows = pd.read_csv(Path(study) / RESULT_NAME)
    assert sorted(rows["trial_id"]) == ["p", "q", "r"]
    assert _verified_tags(uri, "fronts") == {"p": ("true", "0"), "q": ("false", "1"), "r": ("true", "0")}

    assert select_main(["--experiment", "fronts", "--tracking-uri", uri, "--verified", "--json"]) == 0
    choice = json.loads(capsys.readouterr().out)
    assert choice["trial_id"] == "p" and choice["verified"] is True  # p and r tie; the smaller id wins
    assert choice["clean_acc"] == pytest.approx(table.loc["p", "clean_acc"])
    assert choice["robust_acc"] == pytest.approx(table.loc["p", "aa_acc"])
    assert select_main(["--experiment", "fronts", "--tracking-uri", uri, "--json"]) == 0  # the search front
    assert json.loads(capsys.readouterr().out)["trial_id"] == "q"  # the most robust by search figures
