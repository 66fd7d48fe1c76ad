"""Ray Tune callbacks of a study, run in the Tune driver: the trials table, MLflow tracking and stop signals.

* :class:`TrialsTableCallback` rewrites ``<study>/trials.parquet`` (atomically) whenever a trial ends and when
  the study ends, from :func:`record_from_trial`: the same :class:`~orchestrator.records.TrialRecord` the
  MLflow report and ``verify`` read.
* :class:`MLflowTuneCallback` queues trial events for the Ray-free :class:`~orchestrator.tracking.StudyTracker`
  (the driver is the one MLflow writer) through :class:`~orchestrator.tracking_queue.WriteQueue`, whose thread
  writes them, so MLflow never holds up the Tune loop.
* :class:`StopSignalCallback` lets :mod:`orchestrator.interrupt` see the SIGINT that stops Tune.

When the study ends, a trial whose end Tune never reported (the study was stopped while it ran or waited) is
``INTERRUPTED`` in every record (:func:`status_at_end`): Tune's stop on SIGINT marks such trials TERMINATED in
memory, the word it also uses for finished ones.
"""

from __future__ import annotations

import logging
import numbers
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from . import interrupt
from .names import FROM_TUNE, OBJECTIVES, Status
from .records import TrialRecord, one_line_reason, trials_table, write_trials_table
from .tracking import StudyTracker, numeric_metrics
from .tracking_queue import WriteQueue, pending_path

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

log = logging.getLogger(__name__)

_NOT_METRICS = frozenset({"config"})  # a result's other entries are kept as they are


def error_text(trial: Trial) -> str:
    """The trial's error as Tune recorded it (its error file), or a short note when there is none."""
    try:
        if trial.error_file and Path(trial.error_file).exists():
            return Path(trial.error_file).read_text(errors="replace")
        return str(trial.get_error() or f"trial {trial.trial_id} errored (no error file)")
    except OSError as exc:
        return f"trial {trial.trial_id} errored (error file unreadable: {exc})"


def status_at_end(trial: Trial, ended: Mapping[str, Status]) -> Status:
    """A trial's status once the study's loop is over: as its end was reported (``ended``, from
    ``on_trial_complete`` / ``on_trial_error``, or a completed result of an earlier session), else INTERRUPTED.

    A trial completes with a last result that has ``done`` set (``TuneController._process_trial_result``); a
    trial Tune stopped because the study was stopped is TERMINATED without it.
    """
    if trial.trial_id in ended:
        return ended[trial.trial_id]
    status = FROM_TUNE.get(str(getattr(trial, "status", "")))
    if status is Status.FAILED:
        return Status.FAILED
    if status is Status.FINISHED and ((trial.last_result or {}).get("done") or _reached_budget(trial)):
        return Status.FINISHED
    return Status.INTERRUPTED


def _reached_budget(trial: Trial) -> bool:
    """Whether a trial's last result is from its last epoch (it trained its whole budget)."""
    epoch, budget = (trial.last_result or {}).get("epoch"), (trial.config or {}).get("optim.epochs")
    return isinstance(epoch, int | float) and isinstance(budget, int | float) and epoch >= budget


def stopped_early(trial: Trial) -> bool:
    """Whether a trial's last result is from before its budget (``epoch < optim.epochs``): the scheduler stopped
    it. The same rule tells Optuna PRUNED (:class:`orchestrator.searcher.BudgetOptunaSearch`)."""
    epoch, budget = (trial.last_result or {}).get("epoch"), (trial.config or {}).get("optim.epochs")
    return isinstance(epoch, int | float) and isinstance(budget, int | float) and epoch < budget


def trial_status(trial: Trial, status: Status | None = None) -> Status:
    """A trial's status in the study's words: ``status`` when given, else Tune's translated; a trial that ended
    normally before its budget is ``STOPPED``, not ``FINISHED``."""
    status = status or FROM_TUNE.get(str(trial.status), Status.PENDING)
    return Status.STOPPED if status == Status.FINISHED and stopped_early(trial) else status


def record_from_trial(trial: Trial, status: Status | None = None) -> TrialRecord:
    """The record of a Ray Tune trial: its status (:func:`trial_status`), last result, config and error."""
    last = dict(trial.last_result or {})
    status = trial_status(trial, status)
    return TrialRecord(
        trial_id=str(trial.trial_id), status=status,
        clean_acc=last.get(OBJECTIVES[0], float("nan")), robust_acc=last.get(OBJECTIVES[1], float("nan")),
        params=dict(trial.config or {}), checkpoint_path=str(last.get("checkpoint_path") or ""),
        error=one_line_reason(error_text(trial)) if status == Status.FAILED else "",
        masking_gap=last.get("masking_gap", float("nan")),
        metrics={k: v for k, v in last.items() if k not in _NOT_METRICS and k not in OBJECTIVES},
    )


class TrialsTableCallback(Callback):
    """Keep ``<study_dir>/trials.parquet`` current: rewritten when a trial ends and when the study ends."""

    def __init__(self, study_dir: str, masking_threshold: float | None = None) -> None:
        self.study_dir = study_dir
        self.masking_threshold = masking_threshold
        self.ended: dict[str, Status] = {}  # trials whose end this session saw

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"ended": {}, **state})

    def get_state(self) -> dict[str, Any]:
        """Saved by Tune with every experiment checkpoint: the ends already seen survive a killed driver."""
        return {"ended": {k: str(v) for k, v in self.ended.items()}}

    def set_state(self, state: dict[str, Any]) -> None:
        self.ended = {k: Status(v) for k, v in (state.get("ended") or {}).items()}

    def write(self, trials: Sequence[Trial], ended: Mapping[str, Status] | None = None) -> str:
        """Write the table of ``trials``; ``ended`` gives the status of trials whose end Tune is recording."""
        ended = ended or {}
        frame = trials_table([record_from_trial(t, ended.get(t.trial_id)) for t in trials], self.masking_threshold)
        return write_trials_table(frame, self.study_dir)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        """A trial ended normally (Tune marks it TERMINATED just after this hook)."""
        self.ended[trial.trial_id] = Status.FINISHED
        self.write(trials, self.ended)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.ended[trial.trial_id] = Status.FAILED
        self.write(trials, self.ended)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self.write(trials, {t.trial_id: status_at_end(t, self.ended) for t in trials})


class StopSignalCallback(Callback):
    """Let :mod:`orchestrator.interrupt` wrap the SIGINT handler Tune installs before it sets up callbacks."""

    def setup(self, stop: Any = None, num_samples: int | None = None, total_num_samples: int | None = None,
              **info: Any) -> None:
        interrupt.watch_tune()


def _result_step(result: Mapping[str, Any]) -> int:
    """The MLflow step of a Tune result: its 1-based ``epoch``, else Tune's ``training_iteration``."""
    for key in ("epoch", "training_iteration"):
        value = result.get(key)
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return int(float(value))
    return 0


class MLflowTuneCallback(Callback):
    """Forward Ray Tune's trial events to a :class:`StudyTracker` (add it to ``tune.RunConfig(callbacks=...)``).

    The driver is the only writer, and every hook only queues a record (:class:`WriteQueue`): a background
    thread writes them in order, so a slow or unreachable MLflow store never holds up the Tune loop. Each result's
    ``epoch`` is the step; on completion the trial's last result is the final one, and its ``checkpoint_path`` (a
    storage path or URI) is fetched by the writer only when the trial is on the front. At the end of the study
    the hook waits a bounded time for the queue (:meth:`WriteQueue.close`); what is left is saved to
    ``<study_dir>/mlflow_pending.jsonl`` for ``python -m orchestrator.replay``.
    """

    def __init__(self, tracker: StudyTracker, study_dir: str | None = None) -> None:
        self.tracker = tracker
        self.study_dir = study_dir
        self._queue: WriteQueue | None = None
        self._seen: set[str] = set()
        self._ended: dict[str, Status] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (Tune pickles its RunConfig, callbacks included): the queue and its thread are not carried."""
        state = self.__dict__.copy()
        state["_queue"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"study_dir": None, "_seen": set(), "_ended": {}, **state, "_queue": None})

    def setup(self, stop: Any = None, num_samples: int | None = None, total_num_samples: int | None = None,
              **info: Any) -> None:
        """Start the writer (it gets or creates the experiment and parent run first) when Tune starts."""
        self._writer()

    def _writer(self) -> WriteQueue:
        if self._queue is None:
            pending = pending_path(self.study_dir) if self.study_dir else None
            self._queue = WriteQueue(self.tracker, pending).start()
        return self._queue

    def _ensure_trial(self, trial: Trial) -> None:
        if trial.trial_id not in self._seen:
            self._writer().put("trial_started", trial_id=trial.trial_id, config=dict(trial.config or {}))
            self._seen.add(trial.trial_id)

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        """Create or reuse the trial's child run."""
        self._seen.discard(trial.trial_id)  # a restart reopens a failed run
        self._ended.pop(trial.trial_id, None)
        self._ensure_trial(trial)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        """Log one epoch's metrics."""
        self._ensure_trial(trial)
        self._writer().put("trial_result", trial_id=trial.trial_id, metrics=numeric_metrics(result),
                           step=_result_step(result), time_ms=int(time.time() * 1000))

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        """Finish the trial's run, update the front, and log the model of a front trial (or record its stop)."""
        self._ensure_trial(trial)
        self._ended[trial.trial_id] = Status.FINISHED
        final = dict(trial.last_result or {})
        if stopped_early(trial):
            self._writer().put("trial_stopped", trial_id=trial.trial_id, final=numeric_metrics(final))
            return
        uri = final.get("checkpoint_path")
        self._writer().put("trial_completed", trial_id=trial.trial_id, final=numeric_metrics(final),
                           checkpoint_path=uri if isinstance(uri, str) else "")

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        """End the trial's run as FAILED with Tune's error text."""
        self._ensure_trial(trial)
        self._ended[trial.trial_id] = Status.FAILED
        self._writer().put("trial_failed", trial_id=trial.trial_id, error=error_text(trial))

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        """End the parent run (KILLED and tagged interrupted when the study was stopped) and wait for the queue."""
        stopped = [t.trial_id for t in trials if status_at_end(t, self._ended) == Status.INTERRUPTED]
        interrupted = bool(stopped) or interrupt.received() is not None
        queue = self._writer()
        queue.put("study_ended", status="KILLED" if interrupted else "FINISHED", interrupted=interrupted)
        queue.close()
        self._queue = None
