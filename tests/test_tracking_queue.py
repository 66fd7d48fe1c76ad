"""The study's MLflow write queue against a real ``mlflow server`` process that is stopped and started again.

Records put while the server is away cost the caller nothing; the queue says once that the server is unreachable
and once that it is back, writes what waited in order, and at the end saves what never got through, which a later
session (a resumed study) writes first. No Ray runs here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest_mlflow import MlflowServer
from mlflow import MlflowClient

from orchestrator.names import PENDING_RECORDS
from orchestrator.tracking import StudyTracker
from orchestrator.tracking_queue import WriteQueue, load_pending, pending_path

# A failed trial's error as Ray writes it: a long traceback whose last line is the reason.
REASON = "ray.exceptions.RayTaskError(TrialFailed): TrialFailed: ForcedTrialFailure: debug.fail_trials: trial " \
         "forced to fail after epoch 1"
TRACEBACK = "Failure # 1 (occurred at 2026-01-01_00-00-00)\nTraceback (most recent call last):\n" + \
    "".join(f'  File "/ray/python/ray/tune/execution/frame_{i}.py", line {i}, in step\n    result = call()\n'
            for i in range(40)) + REASON + "\n"


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _tracker(uri: str) -> StudyTracker:
    return StudyTracker(uri, "outage", space_yaml="arat.gamma: {low: 1, high: 300}\n", params={"search.seed": 0},
                        sampler="tpe", seed=0, code_version="test")


def _epoch(e: int) -> dict[str, float]:
    return {"clean_acc": 0.5 + 0.1 * e, "robust_acc": 0.05 * e, "loss": 1.0 / e, "epoch": float(e)}


def test_the_queue_rides_out_outages_and_keeps_what_never_got_through(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    assert len(TRACEBACK) > 3000
    caplog.set_level(logging.INFO, logger="orchestrator.tracking_queue")
    server = MlflowServer(tmp_path / "server")
    (tmp_path / "server").mkdir()
    study = tmp_path / "runs" / "outage"
    server.start()
    queue = WriteQueue(_tracker(server.uri), pending_path(str(study))).start()
    try:
        queue.put("trial_started", trial_id="a", config={"arat.gamma": 30.0})
        queue.put("trial_result", trial_id="a", metrics=_epoch(1), step=1)
        _wait(lambda: queue.written == 2, 60, "the first records")

        server.stop()  # first outage: the server comes back
        start = time.monotonic()
        for e in (2, 3, 4):
            queue.put("trial_result", trial_id="a", metrics=_epoch(e), step=e)
        queue.put("trial_completed", trial_id="a", final=_epoch(4), checkpoint_path="")
        queue.put("trial_started", trial_id="b", config={"arat.gamma": 3.0})
        queue.put("trial_failed", trial_id="b", error=TRACEBACK)
        assert time.monotonic() - start < 0.5  # putting a record never waits for the store
        _wait(lambda: queue.away, 60, "the queue to notice the outage")
        server.start()
        _wait(lambda: not queue.away and queue.queued() == 0, 120, "the queue to drain after the restart")

        server.stop()  # second outage: it outlasts the study
        queue.put("trial_started", trial_id="c", config={"arat.gamma": 100.0})
        queue.put("trial_result", trial_id="c", metrics=_epoch(1), step=1)
        queue.put("trial_completed", trial_id="c", final=_epoch(1), checkpoint_path="")
        queue.put("study_ended", status="FINISHED", interrupted=False)
        start = time.monotonic()
        left = queue.close(wait_away_s=3)
        assert time.monotonic() - start < 60
    finally:
        server.stop()
    assert [r["kind"] for r in left] == ["trial_started", "trial_result", "trial_completed", "study_ended"]
    settings, saved = load_pending(str(study / PENDING_RECORDS))
    assert saved == left and settings["tracking_uri"] == server.uri and settings["study_name"] == "outage"

    said = [r.getMessage() for r in caplog.records if r.name == "orchestrator.tracking_queue"]
    assert sum("MLflow is unreachable" in m for m in said) == 2, said  # once per outage
    assert sum("is back after" in m for m in said) == 1, said
    assert said[-1].endswith(f"4 record(s) (1 trial start, 1 epoch result, 1 trial end, 1 study end; trials c) "
                             f"not logged; saved to {study / PENDING_RECORDS}. Log them once it is reachable: "
                             f"python -m orchestrator.replay --study {study}"), said[-1]

    # A resumed study (or the replay command) writes the saved records first, then removes the file; then read
    # back what the server kept across its three lives.
    server.start()
    try:
        resumed = WriteQueue(_tracker(server.uri), pending_path(str(study))).start()
        assert resumed.close(wait_away_s=10) == []
        assert not (study / PENDING_RECORDS).exists()
        client = MlflowClient(server.uri)
        exp = client.get_experiment_by_name("outage")
        assert exp is not None
        runs = client.search_runs([exp.experiment_id])
        parents = [r for r in runs if r.data.tags.get("run_kind") == "study"]
        by_trial = {r.data.tags["trial_id"]: r for r in runs if r.data.tags.get("run_kind") == "trial"}
        assert len(parents) == 1 and len(runs) == 4 and set(by_trial) == {"a", "b", "c"}  # nothing twice
        assert parents[0].info.status == "FINISHED" and "interrupted" not in parents[0].data.tags
        history = client.get_metric_history(by_trial["a"].info.run_id, "clean_acc")
        assert sorted({m.step for m in history}) == [1, 2, 3, 4]  # nothing lost, in step order
        assert by_trial["a"].info.status == by_trial["c"].info.status == "FINISHED"
        failed = by_trial["b"]
        assert failed.info.status == "FAILED" and failed.data.tags["failure_reason"] == REASON
        artifact = client.download_artifacts(failed.info.run_id, "failure/error.txt", str(tmp_path))
        assert Path(artifact).read_text() == TRACEBACK
        assert {t: r.data.tags["pareto"] for t, r in by_trial.items()} == {"a": "true", "b": "false", "c": "false"}
    finally:
        server.stop()
