"""Hostile and absurd input to every command line: refused at once, in one line, with exit status 2, and nothing
started or written. No Ray starts here: each case is refused before it would.

The study driver is run as a subprocess in an empty working directory (its default storage and MLflow paths are
there), as a user would run it; the other commands run in-process or as ``python -m``.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import PYTHON, REPO, run_tune

from arat_train.config import TrainConfig
from orchestrator.names import Status
from orchestrator.records import TrialRecord, trials_table, write_trials_table
from orchestrator.space import SpecError, load_spec

QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"
FAST_S = 30.0  # a refusal costs the interpreter's start and imports, never the input's size


# Files that are no checkpoint, one of each kind torch.load fails on differently (checked in the tests below). Random
# bytes alone made the tests depend on chance: most fail torch's weights-only check, some a dozen other ways.
DAMAGED = {
    "random.pt": bytes(random.Random(0).getrandbits(8) for _ in range(4096)),  # "Weights only load failed"
    "empty.pt": b"",  # EOFError, without a message
    "stack.pt": b"\x80\x02.",  # a pickle that stops on an empty stack: IndexError "pop from empty list"
    "memo.pt": b"h\xb1M\xdb",  # KeyError 177
    "text.pt": b"c\x93\xd8\xe6\n",  # UnicodeDecodeError
    "zip.pt": b"PK\x03\x04garbage",  # a broken zip archive: RuntimeError
}


def _billion_laughs(levels: int = 9) -> str:
    """A preset whose description is a nine-level alias chain: 9**9 strings once expanded."""
    lines = ["name: quickstart", 'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    lines.append(f"description: *a{levels - 1}")
    return "\n".join(lines) + "\n"


def _hostile(kind: str, where: Path) -> Path:
    path = where / f"{kind}.yaml"
    if kind == "laughs":
        path.write_text(_billion_laughs())
    elif kind == "oversized":  # 50 MB: a valid start, then padding
        path.write_text("name: quickstart\ndescription: ")
        os.truncate(path, 50 * 1024 * 1024)
    elif kind == "binary":
        path.write_bytes(os.urandom(4096))
    elif kind == "latin1":
        path.write_bytes("name: quickstart\ndescription: caf\xe9\n".encode("latin-1"))
    elif kind == "fifo":  # opening it for reading would wait for a writer forever
        os.mkfifo(path)
    return path


def _one_error_line(out: str) -> str:
    assert "Traceback" not in out, out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out
    return lines[0]


HOSTILE = [("laughs", "YAML aliases (*name) are not allowed"), ("oversized", "52,428,800 bytes"),
           ("binary", "is not text"), ("latin1", "is not UTF-8 text"), ("fifo", "is not a regular file")]


@pytest.mark.parametrize(("kind", "message"), HOSTILE, ids=[k for k, _ in HOSTILE])
def test_hostile_preset_files_are_refused_at_once(kind: str, message: str, tmp_path: Path,
                                                  auth_env: dict[str, str]) -> None:
    inputs, cwd = tmp_path / "in", tmp_path / "cwd"
    inputs.mkdir()
    cwd.mkdir()
    preset = _hostile(kind, inputs)
    start = time.monotonic()
    proc = run_tune(["--config", str(preset)], env=auth_env, cwd=cwd, timeout=120)
    assert time.monotonic() - start < FAST_S
    assert proc.returncode == 2, proc.stdout
    line = _one_error_line(proc.stdout)
    assert line.startswith(f"error: --config: {preset}") and message in line, line
    assert list(cwd.iterdir()) == [], "nothing may be written (storage, mlflow.db, Ray)"


SET_VALUES = [("description=[&a [1, 2], *a]", "description: YAML aliases (*name) are not allowed"),
              ("description=" + "[" * 40 + "]" * 40, "description: nested more than 32 levels deep"),
              ("optim.epochs=" + "9" * 20_000, "optim.epochs: the value is 20,000 bytes or more")]


@pytest.mark.parametrize(("override", "message"), SET_VALUES, ids=["alias", "deep", "long"])
def test_hostile_set_values_are_refused(override: str, message: str, tmp_path: Path,
                                        auth_env: dict[str, str]) -> None:
    proc = run_tune(["--set", override], env=auth_env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout
    assert message in _one_error_line(proc.stdout)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["laughs", "binary"])
def test_a_tampered_stored_study_is_refused_on_resume(kind: str, tmp_path: Path, auth_env: dict[str, str]) -> None:
    study = tmp_path / "runs" / "quickstart-1"
    study.mkdir(parents=True)
    _hostile(kind, study).rename(study / "study.yaml")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    proc = run_tune(["--resume", "--name", "quickstart-1", "--storage-path", str(tmp_path / "runs")],
                    env=auth_env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout
    assert _one_error_line(proc.stdout).startswith(f"error: --resume: {study / 'study.yaml'}")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


ABSURD = [  # what the probe started a study with
    ("train.data.val_size=100000", "train.data.val_size: digits has 1797 images, 360 of them held out for test "
                                   "(data.test_size); val_size must be in [1, 1436], got 100000"),
    ("optim.epochs=1000000000", "train.optim.epochs: must be in [1, 10,000], got 1000000000"),
    ("search.num_samples=1000000000", "search.num_samples: must be in [1, 10,000], got 1,000,000,000"),
]


@pytest.mark.parametrize(("override", "message"), ABSURD, ids=[a[0].split("=")[0] for a in ABSURD])
def test_absurd_values_never_start_a_study(override: str, message: str, tmp_path: Path,
                                           auth_env: dict[str, str]) -> None:
    proc = run_tune(["--set", override], env=auth_env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout
    assert _one_error_line(proc.stdout) == f"error: {message}"
    assert list(tmp_path.iterdir()) == [], "no study directory, no mlflow.db, no Ray"


BOUNDS = [  # (override, field, the range the message states)
    ("data.dataset=cifar10", "data.val_size=50000", "train.data.val_size", "must be < 50,000"),
    ("data.test_size=5000", None, "train.data.test_size", "[1, 1,795]"),
    ("eval.final_examples=2000000", None, "train.eval.final_examples", "[0, 1,000,000]"),
    ("attack.steps=5000", None, "train.attack.steps", "[1, 1,000]"),
    ("attack.restarts=101", None, "train.attack.restarts", "[1, 100]"),
    ("attack.eps=300", None, "train.attack.eps", "[0, 255]"),
    ("optim.batch_size=100000", None, "train.optim.batch_size", "[1, 16,384]"),
    ("eval.batch_size=100000", None, "train.eval.batch_size", "[1, 16,384]"),
    ("eval.max_examples=2000000", None, "train.eval.max_examples", "[0, 1,000,000]"),
    ("arat.balance_samples=2000000", None, "train.arat.balance_samples", "[1, 1,000,000]"),
    ("data.train_limit=2000000", None, "train.data.train_limit", "[0, 1,000,000]"),
    ("seed=4294967296", None, "train.seed", "[0, 4,294,967,295]"),
    ("arat.gamma=.inf", None, "train.arat.gamma", "expected a finite number"),
    ("search.max_concurrent=2000", None, "search.max_concurrent", "[0, 1,024]"),
    ("search.seed=-1", None, "search.seed", "[0, 4,294,967,295]"),
    ("failure.max_failures=1000", None, "failure.max_failures", "[0, 100], or -1 for unlimited"),
    ("failure.train_max_failures=-2", None, "failure.train_max_failures", "[0, 100], or -1 for unlimited"),
    ("scaling.num_workers=5000", None, "scaling.num_workers", "[1, 1,024]"),
    ("scaling.cpus_per_worker=5000", None, "scaling.cpus_per_worker", "[0, 1,024] (0 excluded)"),
    ("space.arat.gamma={choices: [" + ", ".join(str(i) for i in range(1, 200)) + "]}", None,
     "space.arat.gamma.choices", "at most 100 choices"),
    ("space.attack.steps.high=2000", None, "space.attack.steps", "[1, 1,000]"),
]


@pytest.mark.parametrize(("first", "second", "field", "allowed"), BOUNDS, ids=[b[2] for b in BOUNDS])
def test_counts_have_documented_bounds(first: str, second: str | None, field: str, allowed: str) -> None:
    overrides = [first] if second is None else [first, second]
    with pytest.raises(SpecError) as info:
        load_spec(QUICKSTART, overrides)
    assert info.value.field == field and allowed in str(info.value), str(info.value)


def test_the_training_cli_refuses_hostile_configs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from arat_train.__main__ import main

    proc = subprocess.run([PYTHON, "-m", "arat_train", "--config", str(_hostile("laughs", tmp_path))], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "YAML aliases (*name) are not allowed" in _one_error_line(proc.stderr)
    for kind, message in HOSTILE[1:]:
        assert main(["--config", str(_hostile(kind, tmp_path))]) == 2
        assert message in _one_error_line(capsys.readouterr().err), kind
    assert main(["--set", "optim.epochs=1000000000"]) == 2
    assert "optim.epochs: must be in [1, 10,000]" in _one_error_line(capsys.readouterr().err)


def test_the_training_cli_refuses_a_resume_file_that_is_no_checkpoint_of_the_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from arat_train.__main__ import main

    foreign = tmp_path / "foreign.pt"
    torch.save({"config": TrainConfig().to_dict(), "model": {"x": torch.zeros(1)}}, foreign)
    for name, data in DAMAGED.items():
        (tmp_path / name).write_bytes(data)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    cases = {tmp_path / "missing.pt": "checkpoint not found",
             **{tmp_path / name: "not a file torch.load accepts with weights_only=True (corrupt" for name in DAMAGED},
             tmp_path / "list.pt": "is not a checkpoint of arat_train.train",
             foreign: "does not fit this run (another network, predictor or optimiser?)"}
    for path, message in cases.items():
        assert main(["--set", "optim.epochs=1", "--resume", str(path), "--checkpoint-dir", str(tmp_path / "out")]) == 2
        assert message in _one_error_line(capsys.readouterr().err), path.name
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


def test_replay_refuses_a_damaged_pending_file_or_an_absent_store(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.names import PENDING_RECORDS
    from orchestrator.replay import main

    def replay(study: Path) -> subprocess.CompletedProcess[str]:
        rc = main(["--study", str(study), "--wait", "1"])
        out = capsys.readouterr()
        return subprocess.CompletedProcess([], rc, out.out, out.err)

    missing_store = f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}"
    settings = json.dumps({"settings": {"tracking_uri": missing_store, "study_name": "s", "space_yaml": "",
                                        "params": {}, "sampler": "tpe", "seed": 0, "code_version": "x"}})
    cases = {"garbled": ("{not json\n", "is not a file of MLflow records: line 1"),
             "headless": ('{"kind": "study_ended", "status": "FINISHED"}\n', "does not start with the study's "
                                                                           "tracker settings"),
             "foreign": (settings + '\n{"kind": "rm -rf"}\n', "holds a line that is not an MLflow record"),
             "binary": (None, "error: --study: "),
             "no_store": (settings + '\n{"kind": "study_ended", "status": "FINISHED"}\n', "nowhere")}
    for name, (text, message) in cases.items():
        study = tmp_path / name
        study.mkdir()
        if text is None:
            (study / PENDING_RECORDS).write_bytes(os.urandom(2048))
        else:
            (study / PENDING_RECORDS).write_text(text)
        proc = replay(study)
        assert proc.returncode == 2, (name, proc.stdout, proc.stderr)
        assert message in _one_error_line(proc.stderr), name
        assert (study / PENDING_RECORDS).exists()  # the records stay for a later try
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "mlflow.db").exists()  # no store was created


def test_evaluate_refuses_damaged_checkpoints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from arat_train.evaluate import main

    config = TrainConfig().to_dict()
    cases = {
        **{name: (lambda p, data=data: p.write_bytes(data), "not a file torch.load accepts with weights_only=True")
           for name, data in DAMAGED.items()},
        "weights.pt": (lambda p: torch.save({"config": config, "model": {"x": torch.zeros(1)}}, p),
                       "its weights do not fit the network of its own config"),
        "config.pt": (lambda p: torch.save({"config": {**config, "optim": {"epochs": 10**9}}, "model": {}}, p),
                      "holds a config this version refuses: optim.epochs: must be in [1, 10,000]"),
        # Trained before digits had a test split (no data.test_size): its training set held today's test images.
        "old_digits.pt": (lambda p: torch.save({"config": {**config, "data": {
            k: v for k, v in config["data"].items() if k != "test_size"}}, "model": {}}, p),
            "was trained before digits held out its test split"),
    }
    for name, (make, message) in cases.items():
        make(tmp_path / name)
        assert main(["--checkpoint", str(tmp_path / name), "--attack", "pgd", "--split", "test"]) == 2
        assert message in _one_error_line(capsys.readouterr().err), name


def _table(study: Path, checkpoint: str) -> None:
    records = [TrialRecord("a", Status.FINISHED, 0.9, 0.2, {"arat.gamma": 30.0}, checkpoint),
               TrialRecord("b", Status.FAILED, error="RuntimeError: boom")]
    write_trials_table(trials_table(records), str(study))


def _verify(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "orchestrator.verify", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_verify_refuses_bad_tables_and_missing_stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.verify import main

    study = tmp_path / "runs" / "demo"
    study.mkdir(parents=True)
    # A table without the columns verify reads.
    pd.DataFrame({"trial_id": ["a"], "status": ["FINISHED"]}).to_parquet(study / "trials.parquet")
    proc = _verify("--study", str(study), cwd=tmp_path)
    assert proc.returncode == 2
    assert "lacks the column(s) clean_acc, robust_acc, checkpoint_path, pareto" in _one_error_line(proc.stderr)
    # Not a Parquet file at all.
    (study / "trials.parquet").write_bytes(os.urandom(2048))
    assert main(["--study", str(study)]) == 2
    assert "no trials table at" in _one_error_line(capsys.readouterr().err)
    # A good table, but the MLflow store the figures should go to is not there: refused before any evaluation
    # (the checkpoint does not exist either, which an evaluation would have reported in its row instead).
    _table(study, str(tmp_path / "no_checkpoint"))
    monkeypatch.chdir(tmp_path)
    for uri, message in ((f"sqlite:///{tmp_path / 'absent.db'}", "no MLflow store at"),
                         ("http://127.0.0.1:9", "does not answer"), (None, f"no MLflow store at {tmp_path}")):
        assert main(["--study", str(study), *(["--tracking-uri", uri] if uri else [])]) == 2, uri
        assert message in _one_error_line(capsys.readouterr().err), uri
        assert not (study / "verified.csv").exists() and not (tmp_path / "absent.db").exists()


def test_select_refuses_a_store_it_cannot_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.select import main

    damaged = tmp_path / "mlflow.db"
    damaged.write_bytes(os.urandom(4096))
    assert main(["--experiment", "x", "--tracking-uri", f"sqlite:///{damaged}"]) == 2
    assert "is not an SQLite database" in _one_error_line(capsys.readouterr().err)
    start = time.monotonic()
    assert main(["--experiment", "x", "--tracking-uri", "http://127.0.0.1:9"]) == 2
    assert "does not answer" in _one_error_line(capsys.readouterr().err)
    assert time.monotonic() - start < 15  # not MLflow's minutes of HTTP retries
