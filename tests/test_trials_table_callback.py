"""The study's trials table as Tune's callbacks write it: rewritten atomically as each trial ends, and a trial whose
end Tune never reported (the study was stopped) is INTERRUPTED, never a finished trial with NaN objectives.

Stand-in trials carry the attributes the callback reads; Ray's runtime does not start.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import pandas as pd

from orchestrator.records import read_trials_table
from orchestrator.tune_callbacks import TrialsTableCallback, status_at_end

if TYPE_CHECKING:
    from ray.tune.experiment import Trial


def _trial(tid: str, status: str, last: dict[str, Any] | None = None) -> Trial:
    return cast("Trial", SimpleNamespace(trial_id=tid, status=status, last_result=last or {}, config={"arat.gamma": 1.0},
                                         error_file=None, get_error=lambda: "RuntimeError: boom"))


def _result(clean: float, robust: float, done: bool) -> dict[str, Any]:
    return {"clean_acc": clean, "robust_acc": robust, "epoch": 2, "done": done, "checkpoint_path": "/ckpt"}


def test_the_table_is_rewritten_atomically_as_each_trial_ends(tmp_path: Path) -> None:
    callback = TrialsTableCallback(str(tmp_path))
    table = tmp_path / "trials.parquet"
    trials = [_trial(f"t{i}", "RUNNING", _result(0.5, 0.1, False)) for i in range(40)]
    reads, errors, stop = [0], [], threading.Event()

    def read_while_written() -> None:
        while not stop.is_set():
            if table.exists():
                try:
                    read_trials_table(str(tmp_path))  # what the driver's report and verify read
                    reads[0] += 1
                except Exception as exc:  # a half-written table
                    errors.append(exc)

    reader = threading.Thread(target=read_while_written)
    reader.start()
    try:
        for i, trial in enumerate(trials):
            trial.last_result = _result(0.5 + i / 100, 0.3 - i / 200, True)
            callback.on_trial_complete(iteration=i, trials=trials, trial=trial)
            trial.status = "TERMINATED"
            frame = pd.read_parquet(table)  # already there when the hook returns
            assert (frame["status"] == "FINISHED").sum() == i + 1
    finally:
        stop.set()
        reader.join()
    assert not errors and reads[0] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trials.parquet"]  # no temporary file left


def test_a_stopped_study_labels_its_unfinished_trials_interrupted(tmp_path: Path) -> None:
    callback = TrialsTableCallback(str(tmp_path))
    done = _trial("done", "RUNNING", _result(0.9, 0.1, True))
    trials = [done,
              _trial("running", "TERMINATED", _result(0.7, 0.2, False)),  # Tune's stop on SIGINT: TERMINATED
              _trial("waiting", "PENDING"),
              _trial("earlier_ok", "TERMINATED", _result(0.6, 0.3, True)),  # finished in an earlier session
              _trial("earlier_err", "ERROR", _result(0.1, 0.0, False))]
    callback.on_trial_complete(iteration=1, trials=trials, trial=done)
    done.status = "TERMINATED"
    callback.on_experiment_end(trials=trials)
    frame = pd.read_parquet(tmp_path / "trials.parquet").set_index("trial_id")
    assert frame["status"].to_dict() == {"done": "FINISHED", "running": "INTERRUPTED", "waiting": "INTERRUPTED",
                                         "earlier_ok": "FINISHED", "earlier_err": "FAILED"}
    assert frame.loc["running", "clean_acc"] == 0.7  # its last reported figures are kept, but off the front
    assert set(frame.index[frame["pareto"]]) == {"done", "earlier_ok"}
    assert (frame.loc[["running", "waiting", "earlier_err"], "pareto_rank"] == -1).all()
    assert status_at_end(trials[1], {}) == "INTERRUPTED"


def test_ends_seen_before_a_killed_driver_survive_its_resume(tmp_path: Path) -> None:
    """Tune saves callbacks' get_state with the experiment: a trial that finished, or that the scheduler stopped at
    a rung, in a session whose driver was then killed keeps its status in the resumed session's table, although
    its restored last result carries no ``done``."""
    first = TrialsTableCallback(str(tmp_path))
    finished, stopped = _trial("finished", "RUNNING"), _trial("stopped", "RUNNING")
    for t in (finished, stopped):
        t.config = {"arat.gamma": 1.0, "optim.epochs": 3}
    finished.last_result, stopped.last_result = {**_result(0.9, 0.1, True), "epoch": 3}, _result(0.5, 0.05, True)
    first.on_trial_complete(iteration=1, trials=[finished, stopped], trial=finished)
    first.on_trial_complete(iteration=2, trials=[finished, stopped], trial=stopped)
    resumed = TrialsTableCallback(str(tmp_path))
    resumed.set_state(first.get_state())
    for t in (finished, stopped):  # restored from the experiment state: TERMINATED, no done flag
        t.status, t.last_result = "TERMINATED", {k: v for k, v in t.last_result.items() if k != "done"}
    resumed.on_experiment_end(trials=[finished, stopped])
    frame = read_trials_table(str(tmp_path)).set_index("trial_id")
    assert frame["status"].to_dict() == {"finished": "FINISHED", "stopped": "STOPPED"}
    # Without the saved state, a full-budget TERMINATED trial is still FINISHED; the stopped one cannot be told
    # from one that a stop signal ended, so it is INTERRUPTED.
    assert status_at_end(finished, {}) == "FINISHED" and status_at_end(stopped, {}) == "INTERRUPTED"


def test_a_study_stopped_at_once_relabels_its_unfinished_rows(tmp_path: Path) -> None:
    """A second signal ends the study before its callbacks run: tune.py relabels the table as they left it."""
    from orchestrator.names import Status
    from orchestrator.records import TrialRecord, mark_interrupted, trials_table, write_trials_table

    study = str(tmp_path / "study")
    assert mark_interrupted(study) == 0  # no table yet: nothing written
    assert not (tmp_path / "study").exists()
    records = [TrialRecord("a", Status.FINISHED, 0.9, 0.4), TrialRecord("b", Status.RUNNING, 0.5, 0.6),
               TrialRecord("c", Status.PENDING), TrialRecord("d", Status.FAILED, error="boom")]
    write_trials_table(trials_table(records), study)
    assert mark_interrupted(study) == 2
    frame = read_trials_table(study).set_index("trial_id")
    assert frame["status"].to_dict() == {"a": "FINISHED", "b": "INTERRUPTED", "c": "INTERRUPTED", "d": "FAILED"}
    assert frame.loc["a", "pareto"] and not frame.loc["b", "pareto"]  # b never was on the front, nor is it now
    assert mark_interrupted(study) == 0
