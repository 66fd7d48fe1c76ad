"""MOASHA and BudgetOptunaSearch in real Ray Tune studies on a local Ray (2 CPUs), with scripted learning curves.

One study runs in this process; one runs in a subprocess whose driver is killed mid-study and then restored with
``Tuner.restore``. The curves, the trainable and the expected stops are in ``tests/moasha_study.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PYTHON, REPO
from moasha_study import CURVES, MAX_T, STOPPED, build_tuner
from ray.tune.callback import CallbackList
from ray.tune.search.optuna import OptunaSearch

from orchestrator.moasha import MOASHA, MOASHAStateCallback

pytestmark = pytest.mark.ray

STUDY_SCRIPT = REPO / "tests" / "moasha_study.py"


def _ray_env(temp: str) -> dict[str, str]:
    """A private local Ray: no RAY_ADDRESS to join another cluster, HOME (where a new local Ray writes its auth
    token) and temp dir of its own; workers import the repo and the test helpers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({"HOME": temp, "RAY_TMPDIR": temp, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
                # CheckpointConfig(num_to_keep=1) snapshots the experiment after every epoch, on purpose here
                "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"})
    return env


@pytest.fixture
def local_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import ray

    temp = tempfile.mkdtemp(prefix="rm", dir="/tmp")  # short: Ray's unix socket paths must stay < 108 bytes
    for key in [k for k in os.environ if k.startswith("RAY_")]:
        monkeypatch.delenv(key)
    for key, value in _ray_env(temp).items():
        monkeypatch.setenv(key, value)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def _told(searcher: OptunaSearch) -> dict[str, tuple[str, list[float] | None, dict[str, Any]]]:
    """Tune trial id -> (Optuna state, values, user attributes)."""
    assert searcher._ot_study is not None
    frozen = {t.number: t for t in searcher._ot_study.trials}
    return {tid: (frozen[t.number].state.name, frozen[t.number].values, frozen[t.number].user_attrs)
            for tid, t in searcher._ot_trials.items()}


def _check_optuna(told: dict[str, tuple[str, list[float] | None, dict[str, Any]]], ids: dict[str, str]) -> None:
    for curve, tid in ids.items():
        state, values, attrs = told[tid]
        if curve in STOPPED:
            assert (state, values) == ("PRUNED", None), curve
            assert attrs["stopped_at_epoch"] == STOPPED[curve], curve
        else:
            assert (state, values) == ("COMPLETE", list(CURVES[curve][-1])), curve


def test_moasha_study_stops_at_rungs_and_tells_optuna(local_ray: None, tmp_path: Path) -> None:
    tuner, scheduler, searcher = build_tuner(str(tmp_path / "runs"), "study", str(tmp_path / "events"), pause=0.0)
    grid = tuner.fit()
    assert not grid.errors
    frame = grid.get_dataframe().set_index("config/curve")  # each trial's last result
    ids = frame["trial_id"].to_dict()
    assert frame["epoch"].to_dict() == {c: STOPPED.get(c, MAX_T) for c in CURVES}

    # Stopped where expected; t3 dominated every trial before it at both rungs and ran to the end.
    assert scheduler.stopped_trials == {ids[c]: float(e) for c, e in STOPPED.items()}
    assert ids["t3"] not in scheduler.stopped_trials and ids["t5"] not in scheduler.stopped_trials
    stats = scheduler.stats()
    assert stats.stopped == 3 and stats.epochs_saved == (4 - 1) + (4 - 2) + (4 - 1)
    assert [(r.level, r.recorded, r.stopped) for r in stats.rungs] == [(1, 7, 2), (2, 5, 1)]
    assert scheduler.recorded(1) == {ids[c]: CURVES[c][0] for c in CURVES}
    assert scheduler.recorded(2) == {ids[c]: CURVES[c][1] for c in CURVES if STOPPED.get(c, MAX_T) >= 2}

    # Each trial ran exactly the epochs it reported.
    ran: dict[str, list[int]] = {}
    for line in (tmp_path / "events").read_text().splitlines():
        _, curve, _, epoch = line.split()
        ran.setdefault(curve, []).append(int(epoch))
    assert ran == {c: list(range(1, STOPPED.get(c, MAX_T) + 1)) for c in CURVES}

    # Optuna: PRUNED for the stopped trials, COMPLETE with the last epoch's values for the others, both in the live
    # searcher and in the state Tune saved with the study.
    _check_optuna(_told(searcher), ids)
    saved = OptunaSearch()
    saved.restore_from_dir(str(tmp_path / "runs" / "study"))
    _check_optuna(_told(saved), ids)


# ---------------------------------------------------------------- a killed study, restored


def _saved_snapshot(study: Path) -> tuple[dict[str, str], dict[str, Any]] | None:
    """(trial id -> status, MOASHA state) from the newest experiment checkpoint in storage, or None if none is
    complete yet (files being copied)."""
    states = sorted(study.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    if not states:
        return None
    scheduler = MOASHA(max_t=MAX_T, reduction_factor=2)
    try:
        data = json.loads(states[-1].read_text())
        CallbackList([MOASHAStateCallback(scheduler)]).restore_from_dir(str(study))
    except (OSError, ValueError, EOFError, RuntimeError, pickle.UnpicklingError):
        return None
    statuses = {}
    for trial_json, _ in data["trial_data"]:
        trial = json.loads(trial_json) if isinstance(trial_json, str) else trial_json
        statuses[trial["trial_id"]] = trial["status"]
    return statuses, scheduler.get_state()


def _events(path: Path) -> list[tuple[str, str, str, int]]:
    return [(run, curve, tid, int(epoch)) for run, curve, tid, epoch in
            (line.split() for line in path.read_text().splitlines())]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the driver and its local Ray (its own session: the Ray processes it started share its group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def test_killed_moasha_study_resumes_with_its_rungs_and_stops(tmp_path: Path) -> None:
    temp = tempfile.mkdtemp(prefix="rk", dir="/tmp")
    storage, events, study = tmp_path / "runs", tmp_path / "events", tmp_path / "runs" / "killed"
    env = {**_ray_env(temp), "MOASHA_PAUSE": "0.3"}
    log = open(tmp_path / "first.log", "wb")  # noqa: SIM115 - closed below
    driver = subprocess.Popen([PYTHON, str(STUDY_SCRIPT), str(storage), "killed", str(events)],
                              env={**env, "RUN_TAG": "first", "MOASHA_PROBE": str(tmp_path / "first")},
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, ready = time.monotonic() + 240, False
        while time.monotonic() < deadline and driver.poll() is None and not ready:
            time.sleep(0.2)
            snapshot = _saved_snapshot(study)
            if snapshot is not None:
                statuses, state = snapshot
                finished = {t for t, s in statuses.items() if s == "TERMINATED"} - set(state["stopped"])
                ready = bool(state["stopped"]) and bool(finished) and "RUNNING" in statuses.values()
        assert ready and driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        _kill_group(driver)
        log.close()
    snapshot = _saved_snapshot(study)  # what Tuner.restore starts from
    assert snapshot is not None
    statuses, saved_state = snapshot
    terminated = {t for t, s in statuses.items() if s == "TERMINATED"}

    try:
        proc = subprocess.run([PYTHON, str(STUDY_SCRIPT), str(storage), "killed", str(events), "--resume"],
                              env={**env, "RUN_TAG": "second", "MOASHA_PROBE": str(tmp_path / "second")},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
                              start_new_session=True)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-5000:]

    # Tune restored the scheduler's rungs and stopped trials exactly as saved with the experiment.
    restored = json.loads((tmp_path / "second.restored.json").read_text())
    assert restored == saved_state
    ids = {curve: tid for _, curve, tid, _ in _events(events)}
    assert len(ids) == len(CURVES)
    final = json.loads((tmp_path / "second.final.json").read_text())
    assert final["stopped"] == {ids[c]: float(e) for c, e in STOPPED.items()}
    for (level, before), (_, after) in zip(saved_state["rungs"], final["rungs"], strict=True):
        assert before.items() <= after.items(), level
    assert final["rungs"][0][1] == {ids[c]: list(CURVES[c][0]) for c in CURVES}

    # Trials that had ended before the kill (finished or stopped) were kept, not run again.
    second = {tid for run, _, tid, _ in _events(events) if run == "second"}
    assert terminated and not terminated & second
    assert set(saved_state["stopped"]) <= terminated | second

    # Optuna, from the searcher state saved with the finished study.
    searcher = OptunaSearch()
    searcher.restore_from_dir(str(study))
    _check_optuna(_told(searcher), ids)
