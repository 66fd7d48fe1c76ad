"""Ray Tune callbacks of a study, run in the Tune driver: the trials table and MLflow tracking.

* :class:`TrialsTableCallback` rewrites ``<study>/trials.parquet`` (atomically) whenever a trial ends and when
  the study ends, from :func:`record_from_trial`: the same :class:`~orchestrator.records.TrialRecord` the
  MLflow report and ``verify`` read.
* :class:`MLflowTuneCallback` forwards trial events to the Ray-free :class:`~orchestrator.tracking.StudyTracker`
  (the driver is the one MLflow writer) and turns a checkpoint URI into a local directory for it.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from .names import FROM_TUNE, OBJECTIVES, Status
from .records import TrialRecord, one_line_reason, trials_table, write_trials_table
from .storage import local_dir
from .tracking import StudyTracker

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


def stopped_early(trial: Trial) -> bool:
    """Whether a trial's last result is from before its budget (``epoch < optim.epochs``): the scheduler stopped
    it. The same rule tells Optuna PRUNED (:class:`orchestrator.searcher.BudgetOptunaSearch`)."""
    epoch, budget = (trial.last_result or {}).get("epoch"), (trial.config or {}).get("optim.epochs")
    return isinstance(epoch, int | float) and isinstance(budget, int | float) and epoch < budget


def record_from_trial(trial: Trial, status: Status | None = None) -> TrialRecord:
    """The record of a Ray Tune trial: its status (``status`` when given), last result, config and error.

    A trial that ended normally before its budget is ``STOPPED``, not ``FINISHED``."""
    last = dict(trial.last_result or {})
    status = status or FROM_TUNE.get(str(trial.status), Status.PENDING)
    if status == Status.FINISHED and stopped_early(trial):
        status = Status.STOPPED
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

    def write(self, trials: Sequence[Trial], ended: Mapping[str, Status] | None = None) -> str:
        """Write the table of ``trials``; ``ended`` gives the status of trials whose end Tune is recording."""
        ended = ended or {}
        frame = trials_table([record_from_trial(t, ended.get(t.trial_id)) for t in trials], self.masking_threshold)
        return write_trials_table(frame, self.study_dir)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        """A trial ended normally (Tune marks it TERMINATED just after this hook)."""
        self.write(trials, {trial.trial_id: Status.FINISHED})

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.write(trials, {trial.trial_id: Status.FAILED})

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self.write(trials)


def _result_step(result: Mapping[str, Any]) -> int:
    """The MLflow step of a Tune result: its 1-based ``epoch``, else Tune's ``training_iteration``."""
    for key in ("epoch", "training_iteration"):
        value = result.get(key)
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return int(float(value))
    return 0


class MLflowTuneCallback(Callback):
    """Forward Ray Tune's trial events to a :class:`StudyTracker` (add it to ``tune.RunConfig(callbacks=...)``).

    The driver is the only writer. Each result's ``epoch`` is the step; on completion the trial's last result is
    the final one and its ``checkpoint_path`` (a storage path or URI) is fetched to a local directory only when the
    trial is on the front.
    """

    def __init__(self, tracker: StudyTracker) -> None:
        self.tracker = tracker
        self._started = False
        self._seen: set[str] = set()

    def setup(self, stop: Any = None, num_samples: int | None = None, total_num_samples: int | None = None,
              **info: Any) -> None:
        """Start the tracker (get or create the experiment and parent run) when Tune starts."""
        self._ensure_started()

    def _ensure_started(self) -> None:
        if not self._started:
            self.tracker.start()
            self._started = True

    def _ensure_trial(self, trial: Trial) -> None:
        self._ensure_started()
        if trial.trial_id not in self._seen:
            self.tracker.trial_started(trial.trial_id, dict(trial.config))
            self._seen.add(trial.trial_id)

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        """Create or reuse the trial's child run."""
        self._seen.discard(trial.trial_id)  # a restart reopens a failed run
        self._ensure_trial(trial)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        """Log one epoch's metrics."""
        self._ensure_trial(trial)
        self.tracker.trial_result(trial.trial_id, result, _result_step(result))

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        """Finish the trial's run, update the front, and log the model of a front trial (or record its stop)."""
        self._ensure_trial(trial)
        final = dict(trial.last_result or {})
        if stopped_early(trial):
            self.tracker.trial_stopped(trial.trial_id, final)
            return
        uri = final.get("checkpoint_path")
        with ExitStack() as stack:
            local = None
            if isinstance(uri, str) and uri and self.tracker.needs_checkpoint(final):
                try:
                    local = stack.enter_context(local_dir(uri))
                except Exception as exc:  # unreachable storage costs the model, not the study's record
                    log.warning("trial %s: checkpoint %s unavailable (%s); no model logged", trial.trial_id, uri, exc)
            self.tracker.trial_completed(trial.trial_id, final, local)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        """End the trial's run as FAILED with Tune's error text."""
        self._ensure_trial(trial)
        self.tracker.trial_failed(trial.trial_id, error_text(trial))

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        """End the parent run."""
        if self._started:
            self.tracker.finish()
