"""orchestrator.select on hand-made runs in an embedded SQLite store: the right trial, and clear refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from mlflow import MlflowClient

from orchestrator.select import FrontTrial, choose, main
from orchestrator.tracking import default_tracking_uri

# trial id -> (clean_acc, robust_acc, on the front, model_uri)
RUNS = {
    "t1": (0.95, 0.05, True, "models:/m-1"),
    "t2": (0.90, 0.15, True, "models:/m-2"),
    "t3": (0.80, 0.25, True, ""),  # on the front, but no model was logged
    "t4": (0.60, 0.30, True, "models:/m-4"),
    "t5": (0.85, 0.10, False, "models:/m-5"),  # dominated by t2: never chosen
    "t6": (0.99, 0.99, False, ""),  # a failed run tagged pareto=true by mistake: its status excludes it
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An SQLite store holding experiment ``sel`` with a parent and the runs above, plus an empty ``empty``."""
    uri = default_tracking_uri(tmp_path_factory.mktemp("select_store"))
    client = MlflowClient(uri)
    exp = client.create_experiment("sel")
    client.create_experiment("empty")
    parent = client.create_run(exp, tags={"run_kind": "study", "study_name": "sel"}).info.run_id
    for tid, (clean, robust, front, model_uri) in RUNS.items():
        tags = {"run_kind": "trial", "trial_id": tid, "mlflow.parentRunId": parent,
                "pareto": "true" if front or tid == "t6" else "false"}
        if model_uri:
            tags["model_uri"] = model_uri
        run = client.create_run(exp, tags=tags).info.run_id
        client.log_metric(run, "clean_acc", clean, step=1)
        client.log_metric(run, "robust_acc", robust, step=1)
        client.log_param(run, "arat.gamma", str(10 * int(tid[1])))
        client.set_terminated(run, "FAILED" if tid == "t6" else "FINISHED")
    return uri


def _trial(tid: str, clean: float, robust: float) -> FrontTrial:
    return FrontTrial(tid, f"run-{tid}", clean, robust)


def _pick(front: list[FrontTrial], **constraint: float) -> str | None:
    choice = choose(front, **constraint)
    return None if choice is None else choice.trial_id


def test_choose_rules() -> None:
    front = [_trial("a", 0.95, 0.05), _trial("b", 0.9, 0.15), _trial("c", 0.8, 0.25), _trial("d", 0.6, 0.3),
             _trial("nan", math.nan, 0.9)]
    assert _pick(front) == "d"
    assert _pick(front, min_clean=0.85) == "b"
    assert _pick(front, min_clean=0.8) == "c"  # >= is inclusive
    assert _pick(front, min_robust=0.1) == "b"
    assert _pick(front, min_robust=0.3) == "d"
    assert choose(front, min_clean=0.96) is None
    assert choose(front, min_robust=0.31) is None
    assert choose([]) is None
    tie = [_trial("z", 0.8, 0.2), _trial("y", 0.8, 0.2)]  # duplicates: the smaller id, deterministically
    assert _pick(tie) == "y"
    with pytest.raises(ValueError, match="at most one"):
        choose(front, min_clean=0.5, min_robust=0.1)


@pytest.mark.parametrize(("flags", "expected"), [
    ([], "t4"),
    (["--min-clean", "0.85"], "t2"),
    (["--min-clean", "0.9"], "t2"),
    (["--min-robust", "0.2"], "t3"),
    (["--min-robust", "0.01"], "t1"),
])
def test_cli_picks_the_right_trial(store: str, flags: list[str], expected: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--experiment", "sel", "--tracking-uri", store, "--json", *flags]) == 0
    out = json.loads(capsys.readouterr().out)
    clean, robust, _, model_uri = RUNS[expected]
    assert (out["trial_id"], out["clean_acc"], out["robust_acc"]) == (expected, clean, robust)
    assert out["model_uri"] == model_uri and out["params"] == {"arat.gamma": str(10 * int(expected[1]))}


def test_cli_text_output(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--experiment", "sel", "--tracking-uri", store, "--min-clean", "0.85"]) == 0
    out = capsys.readouterr().out
    assert "trial_id:    t2" in out and "robust_acc:  0.1500" in out and "model_uri:   models:/m-2" in out
    assert "4 front trials" in out and "mlflow.pytorch.load_model('models:/m-2')" in out
    assert main(["--experiment", "sel", "--tracking-uri", store, "--min-robust", "0.2"]) == 0
    assert "model_uri:   (none logged)" in capsys.readouterr().out


def test_cli_none_qualifies(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--experiment", "sel", "--tracking-uri", store, "--min-clean", "0.97"]) == 1
    err = capsys.readouterr().err
    assert "no front trial of study 'sel' meets clean_acc >= 0.97" in err
    assert "clean_acc 0.6000-0.9500" in err
    assert main(["--experiment", "sel", "--tracking-uri", store, "--min-robust", "0.5"]) == 1
    assert "robust_acc >= 0.5" in capsys.readouterr().err


def test_cli_missing_things(store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--experiment", "nope", "--tracking-uri", store]) == 2
    assert "no MLflow experiment named 'nope'" in capsys.readouterr().err
    assert main(["--experiment", "empty", "--tracking-uri", store]) == 2
    assert "no finished trial on its Pareto front" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # the default store is ./mlflow.db, absent here: refused, not created
    assert main(["--experiment", "sel"]) == 2
    assert "no MLflow store at" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()
    with pytest.raises(SystemExit):
        main(["--experiment", "sel", "--min-clean", "0.5", "--min-robust", "0.1"])
