"""MLflow writes of a study, off the Tune loop: records queued by the callbacks and written in order by one thread.

The Tune callbacks put *records* (a trial started, reported an epoch, finished or failed; the study ended) into a
:class:`WriteQueue` and return at once; a background thread applies them, in order, to the study's
:class:`~orchestrator.tracking.StudyTracker`. Nothing the MLflow store does can hold the study up:

* When the store cannot be reached, the thread says so once (a warning naming the store and why), keeps the
  records and tries again every few seconds; when the store answers again it says so once and writes what waited.
  HTTP calls time out after :data:`HTTP_TIMEOUT_S` and are retried :data:`HTTP_RETRIES` times by MLflow (its
  defaults are 120 s and 7 retries over about four minutes), so an outage is noticed within seconds.
* After any failed write the thread re-reads the study's runs from MLflow (``StudyTracker.start`` is
  get-or-create), so a run created just before an outage is not created twice.
* A record the store refuses while it is reachable is tried :data:`ATTEMPTS` times, then kept aside.
* :meth:`WriteQueue.close`, at the end of the study, waits while the writes make progress (up to
  :data:`MAX_DRAIN_S`), but at most ``ARAT_MLFLOW_WAIT_S`` seconds (default 60) for an unreachable store. What is
  still unwritten is saved to ``<study>/mlflow_pending.jsonl`` (a line of the tracker's settings, then one JSON
  record per line, in order) and a warning says what was not logged and the command that logs it later,
  ``python -m orchestrator.replay --study <study>``. A resumed study writes a pending file's records first.

Nothing here imports Ray or torch.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from contextlib import ExitStack
from typing import Any

from .names import PENDING_RECORDS
from .storage import absolute, delete, exists, local_dir, read_text, write_text
from .tracking import StudyTracker, store_problem

log = logging.getLogger(__name__)

HTTP_TIMEOUT_S = 20  # per request (connect, or a pause in the reply); a large artifact upload keeps flowing
HTTP_RETRIES = 2
RETRY_MIN_S, RETRY_MAX_S = 2.0, 15.0  # pause between tries while the store is unreachable
ATTEMPTS = 3  # tries of a record the store refuses while it is reachable
MAX_DRAIN_S = 30 * 60.0  # the most close() waits for a reachable store to take what is queued (models included)
WAIT_ENV = "ARAT_MLFLOW_WAIT_S"  # how long close() waits for an unreachable store; default 60 s
_PENDING_DONE = "pending_written"  # internal record: the pending file's records are all written

KINDS = ("trial_started", "trial_result", "trial_completed", "trial_stopped", "trial_failed", "study_ended")


def quick_http_failures() -> None:
    """Short MLflow HTTP timeouts and few retries for this process (unless set already), and no urllib3 warning per
    retry: the queue does its own waiting and says once, clearly, that the store is away."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(HTTP_TIMEOUT_S))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(HTTP_RETRIES))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


def pending_path(study_dir: str) -> str:
    return f"{study_dir.rstrip('/')}/{PENDING_RECORDS}"


def replay_command(study_dir: str) -> str:
    return f"python -m orchestrator.replay --study {study_dir}"


def apply(tracker: StudyTracker, record: Mapping[str, Any]) -> None:
    """Write one record through ``tracker`` (started)."""
    kind, trial_id = record["kind"], record.get("trial_id", "")
    if kind == "trial_started":
        tracker.trial_started(trial_id, record["config"])
    elif kind == "trial_result":
        tracker.trial_result(trial_id, record["metrics"], int(record["step"]), record.get("time_ms"))
    elif kind == "trial_completed":
        _completed(tracker, trial_id, record["final"], str(record.get("checkpoint_path") or ""))
    elif kind == "trial_stopped":
        tracker.trial_stopped(trial_id, record["final"])
    elif kind == "trial_failed":
        tracker.trial_failed(trial_id, record["error"])
    elif kind == "study_ended":
        tracker.finish(record["status"], bool(record.get("interrupted", False)))
    else:
        raise ValueError(f"unknown MLflow record kind {kind!r}")


def _completed(tracker: StudyTracker, trial_id: str, final: Mapping[str, Any], uri: str) -> None:
    """A finished trial; its checkpoint (a storage path or URI) is fetched only when it is on the front."""
    with ExitStack() as stack:
        local = None
        if uri and tracker.needs_checkpoint(final):
            try:
                local = stack.enter_context(local_dir(uri))
            except Exception as exc:  # unreachable storage costs the model, not the study's record
                log.warning("trial %s: checkpoint %s unavailable (%s); no model logged", trial_id, uri, exc)
        tracker.trial_completed(trial_id, final, local)


def describe(records: Iterable[Mapping[str, Any]]) -> str:
    """``12 records (2 trial starts, 8 epoch results, ...; trials a, b)``."""
    records = list(records)
    counts = Counter(r["kind"] for r in records)
    words = {"trial_started": "trial start", "trial_result": "epoch result", "trial_completed": "trial end",
             "trial_stopped": "trial stopped early", "trial_failed": "trial failure", "study_ended": "study end"}
    parts = [f"{n} {words.get(k, k)}{'s' if n != 1 else ''}" for k, n in counts.items()]
    trials = sorted({str(r["trial_id"]) for r in records if r.get("trial_id")})
    shown = ", ".join(trials[:10]) + (", ..." if len(trials) > 10 else "")
    return f"{len(records)} record(s) ({', '.join(parts)}{'; trials ' + shown if trials else ''})"


def _json_value(value: Any) -> Any:
    """numpy scalars and other odd values in a record, as JSON can hold them."""
    item = getattr(value, "item", None)
    return item() if callable(item) else str(value)


def save_pending(path: str, tracker: StudyTracker, records: Iterable[Mapping[str, Any]]) -> None:
    """Write ``records`` with the tracker's settings to ``path`` (a local path or URI), replacing what was there."""
    lines = [json.dumps({"settings": tracker.settings()})]
    lines += [json.dumps(dict(r), default=_json_value) for r in records]
    write_text(absolute(path), "\n".join(lines) + "\n")


def load_pending(path: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(tracker settings, records) of a pending file; ValueError when it is not one."""
    lines = [ln for ln in read_text(absolute(path)).splitlines() if ln.strip()]
    try:
        head = json.loads(lines[0]) if lines else None
        records = [json.loads(ln) for ln in lines[1:]]
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not a file of MLflow records: line {err.lineno}: {err.msg}") from None
    if not isinstance(head, dict) or not isinstance(head.get("settings"), dict):
        raise ValueError(f"{path} does not start with the study's tracker settings")
    bad = [r for r in records if not isinstance(r, dict) or r.get("kind") not in KINDS]
    if bad:
        raise ValueError(f"{path} holds a line that is not an MLflow record: {str(bad[0])[:80]}")
    return head["settings"], records


class WriteQueue:
    """Write a study's MLflow records in order from a background thread; :meth:`put` never blocks.

    ``pending`` is where :meth:`close` saves unwritten records (None: they are only reported); if a pending file
    is there when the queue starts, its records are written first and the file is removed once they are.
    """

    def __init__(self, tracker: StudyTracker, pending: str | None = None) -> None:
        self.tracker = tracker
        self.pending = pending
        self.written = 0
        self._records: deque[dict[str, Any]] = deque()
        self._refused: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._closing = False
        self._abandoned = False
        self._away_since: float | None = None
        self._thread: threading.Thread | None = None

    # --- the driver's side ---------------------------------------------------------------------------------

    def start(self) -> WriteQueue:
        quick_http_failures()
        self._take_pending()
        self._thread = threading.Thread(target=self._run, name="mlflow-writer", daemon=True)
        self._thread.start()
        return self

    def put(self, kind: str, **fields: Any) -> None:
        """Queue one record (see :func:`apply` for the kinds and their fields)."""
        if kind not in KINDS:
            raise ValueError(f"unknown MLflow record kind {kind!r}")
        with self._cond:
            self._records.append({"kind": kind, **fields})
            self._cond.notify_all()

    @property
    def away(self) -> bool:
        """Whether the store is unreachable now (as far as the writer knows)."""
        return self._away_since is not None

    def queued(self) -> int:
        with self._cond:
            return sum(1 for r in self._records if r["kind"] != _PENDING_DONE)

    def close(self, wait_away_s: float | None = None, wait_max_s: float = MAX_DRAIN_S) -> list[dict[str, Any]]:
        """Wait for the queue to empty (see the module docstring for how long); save and return what is left."""
        if wait_away_s is None:
            wait_away_s = float(os.environ.get(WAIT_ENV, "60"))
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        begin = time.monotonic()
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(0.2)
                now, away = time.monotonic(), self._away_since
                if away is not None and now > max(begin, away) + wait_away_s:
                    break
                if now > begin + wait_max_s:
                    log.warning("MLflow at %s: still writing after %.0f s; giving up", self.tracker.tracking_uri,
                                wait_max_s)
                    break
        finally:
            with self._cond:
                self._abandoned = True
                left = self._refused + [r for r in self._records if r["kind"] != _PENDING_DONE]
                self._cond.notify_all()
            if left:
                self._report_left(left)
        return left

    def _report_left(self, left: list[dict[str, Any]]) -> None:
        uri = self.tracker.tracking_uri
        why = f"unreachable for the last {time.monotonic() - self._away_since:.0f} s" if self._away_since else \
            "refused them"
        if self.pending is None:
            log.warning("MLflow at %s %s: %s not logged", uri, why, describe(left))
            return
        try:
            save_pending(self.pending, self.tracker, left)
        except Exception as exc:
            log.error("MLflow at %s %s: %s not logged, and not saved to %s either (%s)", uri, why, describe(left),
                      self.pending, exc)
            return
        study_dir = self.pending.rpartition("/")[0]
        log.warning("MLflow at %s %s: %s not logged; saved to %s. Log them once it is reachable: %s", uri, why,
                    describe(left), self.pending, replay_command(study_dir))

    # --- the writer thread ---------------------------------------------------------------------------------

    def _take_pending(self) -> None:
        """Queue a pending file's records (a resumed study, or the replay command) ahead of everything else."""
        if self.pending is None or not exists(absolute(self.pending)):
            return
        try:
            _, records = load_pending(self.pending)
        except (OSError, ValueError) as exc:
            log.warning("MLflow records in %s left alone: %s", self.pending, exc)
            return
        log.info("writing %s that an earlier session could not", describe(records))
        with self._cond:
            self._records.extend(records)
            self._records.append({"kind": _PENDING_DONE})

    def _next(self) -> dict[str, Any] | None:
        with self._cond:
            while not self._records and not self._closing and not self._abandoned:
                self._cond.wait()
            if self._abandoned or not self._records:
                return None
            return self._records[0]

    def _done(self, record: dict[str, Any], refused: bool = False) -> None:
        with self._cond:
            if self._abandoned:
                return
            self._records.popleft()
            if refused:
                self._refused.append(record)
            elif record["kind"] != _PENDING_DONE:
                self.written += 1
            self._cond.notify_all()

    def _pause(self, seconds: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._abandoned, timeout=seconds)

    def _run(self) -> None:
        started, failures, delay = False, 0, RETRY_MIN_S
        while (record := self._next()) is not None:
            try:
                if not started:
                    self.tracker.start()
                    started = True
                if record["kind"] == _PENDING_DONE:
                    delete(absolute(str(self.pending)))
                else:
                    apply(self.tracker, record)
            except Exception as exc:
                started = False  # re-read the study's runs before the next try
                problem = store_problem(self.tracker.tracking_uri)
                if problem:
                    self._went_away(problem)
                    self._pause(delay)
                    delay = min(2 * delay, RETRY_MAX_S)
                    continue
                failures += 1
                if failures < ATTEMPTS:
                    self._pause(1.0)
                    continue
                log.warning("MLflow at %s refused a record %d times (%s of trial %s: %s); it is kept for %s",
                            self.tracker.tracking_uri, ATTEMPTS, record["kind"], record.get("trial_id", "-"),
                            _one_line(exc), "orchestrator.replay" if self.pending else "the end of the study")
                self._done(record, refused=True)
                failures = 0
                continue
            self._done(record)
            failures, delay = 0, RETRY_MIN_S
            if self._away_since is not None:
                log.warning("MLflow at %s is back after %.0f s; writing the %d record(s) that waited",
                            self.tracker.tracking_uri, time.monotonic() - self._away_since, self.queued() + 1)
                self._away_since = None

    def _went_away(self, problem: str) -> None:
        if self._away_since is None:
            self._away_since = time.monotonic()
            log.warning("MLflow is unreachable: %s. The study goes on; its MLflow records wait in a queue "
                        "(%d now) and are written when the store is back", problem, self.queued())


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:300]
