"""Multi-objective asynchronous successive halving (stopping type) as a Ray Tune scheduler.

Every Ray Tune 2.60 scheduler ranks trials by one metric. :class:`MOASHA` ranks them by a vector of objectives
(default ``clean_acc`` and ``robust_acc``, both maximised). Rungs sit at ``grace_period * eta**k < max_t`` in units
of ``time_attr`` (default ``epoch``, 1-based). When a trial's result reaches a rung, its objective vector is
recorded there and :func:`orchestrator.pareto.rung_continues` decides: the trial continues iff it is within the
top ``max(1, floor((N + 1) / eta))`` of the ``N + 1`` trials recorded at that rung (non-dominated sorting, then
crowding distance; fewer than ``eta`` recorded: continue). A result at or past ``max_t`` is never stopped.

* A result past a rung that the trial has not been recorded at (a trial resumed from a later checkpoint, or
  results skipping epochs) is recorded at the highest such rung at or below it and decided there; lower rungs
  it skipped stay without it. Its later-epoch numbers can only favour it, so it is never stopped unfairly.
* A trial already recorded at that rung or a higher one (restarted from an earlier checkpoint) continues: the
  decision was made when it first arrived. A trial that was stopped and reports again is stopped again.
* A missing objective counts as NaN (never ranked ahead of a number); a result without ``time_attr`` continues.

State across ``Tuner.restore``: Ray 2.60 never saves a scheduler. ``TuneController.save_to_dir``
(``ray/tune/execution/tune_controller.py``) writes the trials, the searcher and the callbacks' states, and its
``__getstate__`` leaves ``_scheduler_alg`` out; ``TrialScheduler.save``/``restore`` are never called; the
scheduler in ``tuner.pkl`` is pickled once, when the Tuner is built, before any result. Callbacks, though, are
saved with every experiment checkpoint (``CallbackList.save_to_dir``, ``callback-states-<session>.pkl``) and
restored by ``TuneController.resume`` before the trials are re-queued. So the scheduler's state travels in a
callback: put :meth:`MOASHA.state_callback` in ``RunConfig(callbacks=[...])``. ``tuner.pkl`` pickles the
TuneConfig and the RunConfig together, so after ``Tuner.restore`` that callback still holds the restored
scheduler. The state is saved in the same call as the trial states, so the two agree at every snapshot.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ray.tune import Callback
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from .names import OBJECTIVES
from .pareto import rung_continues, rung_levels

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

    from .space import StudySpec

STATE_VERSION = 1


@dataclass(frozen=True)
class RungCount:
    """One rung: its level (in ``time_attr`` units), the trials recorded there and how many it stopped there."""

    level: float
    recorded: int
    stopped: int


@dataclass(frozen=True)
class MOASHAStats:
    """What the console reports: trials stopped, trial-epochs saved (``max_t`` minus the epoch each stopped at)."""

    stopped: int
    epochs_saved: float
    rungs: tuple[RungCount, ...]

    def describe(self, unit: str = "epoch") -> str:
        rungs = ", ".join(f"{unit} {_num(r.level)}: {r.recorded} recorded, {r.stopped} stopped" for r in self.rungs)
        return f"{self.stopped} trials stopped, {_num(self.epochs_saved)} trial-{unit}s saved ({rungs})"


class MOASHA(FIFOScheduler):
    """Stopping-type multi-objective ASHA; one bracket. See the module docstring for the rules.

    Args:
        max_t: the full budget of a trial in ``time_attr`` units (its epochs); a result there is never stopped.
        grace_period: the first rung, ``1 <= grace_period < max_t``.
        reduction_factor: eta, ``>= 2``: rungs are ``eta`` apart and keep the top ``1 / eta``.
        metrics: the objective names read from each result.
        mode: ``"max"`` or ``"min"`` for all metrics, or one per metric.
        time_attr: the result key counting progress, 1-based and increasing (``epoch``).
    """

    _supports_buffered_results = False  # a rung decision must see each epoch's result as it comes

    def __init__(self, *, max_t: int, grace_period: int = 1, reduction_factor: float = 3,
                 metrics: Sequence[str] = OBJECTIVES, mode: str | Sequence[str] = "max",
                 time_attr: str = "epoch") -> None:
        super().__init__()
        self._metrics, self._maximize = _check_metrics(metrics, mode)
        _check_budget(max_t, grace_period, reduction_factor)
        if not isinstance(time_attr, str) or not time_attr:
            raise ValueError(f"time_attr must be a non-empty result key, got {time_attr!r}")
        self._max_t = max_t
        self._grace_period = grace_period
        self._eta = reduction_factor
        self._time_attr = time_attr
        self._levels: tuple[float, ...] = tuple(map(float, rung_levels(grace_period, reduction_factor, max_t)))
        self._rungs: dict[float, dict[str, tuple[float, ...]]] = {lv: {} for lv in self._levels}
        self._stopped: dict[str, float] = {}  # trial id -> time_attr of the result it was stopped at

    # ------------------------------------------------------------ what it reads and what it has decided

    @property
    def rung_levels(self) -> tuple[float, ...]:
        return self._levels

    @property
    def metrics(self) -> tuple[str, ...]:
        return self._metrics

    @property
    def max_t(self) -> int:
        return self._max_t

    @property
    def time_attr(self) -> str:
        return self._time_attr

    def recorded(self, level: float) -> dict[str, tuple[float, ...]]:
        """Trial id -> objective vector recorded at the rung ``level`` (a copy)."""
        return dict(self._rungs[level])

    @property
    def stopped_trials(self) -> dict[str, float]:
        """Trial id -> the ``time_attr`` value it was stopped at (a copy)."""
        return dict(self._stopped)

    def stats(self) -> MOASHAStats:
        at = [max(lv for lv in self._levels if lv <= t) for t in self._stopped.values()]  # the rung of each stop
        rungs = tuple(RungCount(lv, len(rec), at.count(lv)) for lv, rec in self._rungs.items())
        saved = sum(self._max_t - t for t in self._stopped.values())
        return MOASHAStats(len(self._stopped), saved, rungs)

    def debug_string(self) -> str:
        return f"MOASHA on {', '.join(self._metrics)}, eta {_num(self._eta)}: {self.stats().describe(self._time_attr)}"

    # ------------------------------------------------------------ Ray's hooks

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        """Keep the constructor's metrics: a single TuneConfig metric must not replace the objective vector."""
        return True

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        return self.decide(trial.trial_id, result)

    def decide(self, trial_id: str, result: Mapping[str, Any]) -> str:
        """Record ``result`` at its rung if it reached one, and return ``CONTINUE`` or ``STOP``."""
        if trial_id in self._stopped:
            return TrialScheduler.STOP
        t = result.get(self._time_attr)
        if t is None or t >= self._max_t:
            return TrialScheduler.CONTINUE
        reached = [lv for lv in self._levels if lv <= t]
        if not reached or any(trial_id in self._rungs[lv] for lv in self._levels if lv >= reached[-1]):
            return TrialScheduler.CONTINUE
        rung = self._rungs[reached[-1]]
        vector = tuple(_as_float(result.get(m)) for m in self._metrics)
        keep = rung_continues(list(rung.values()), vector, self._eta, self._maximize)
        rung[trial_id] = vector
        if keep:
            return TrialScheduler.CONTINUE
        self._stopped[trial_id] = float(t)
        return TrialScheduler.STOP

    # ------------------------------------------------------------ state

    def get_state(self) -> dict[str, Any]:
        """A JSON-ready record of the settings, every rung's vectors and the stopped trials."""
        return {
            "version": STATE_VERSION,
            "settings": self._settings(),
            "rungs": [[lv, {tid: list(v) for tid, v in rec.items()}] for lv, rec in self._rungs.items()],
            "stopped": dict(self._stopped),
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`get_state`'s record; refuse one taken with other settings."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"MOASHA state version {state.get('version')!r} is not {STATE_VERSION}")
        if state["settings"] != self._settings():
            raise ValueError(f"MOASHA state was saved with {state['settings']}, this scheduler has "
                             f"{self._settings()}")
        saved = {float(lv): rec for lv, rec in state["rungs"]}
        self._rungs = {lv: {str(tid): tuple(_as_float(x) for x in v) for tid, v in saved.get(float(lv), {}).items()}
                       for lv in self._levels}
        self._stopped = {str(tid): float(t) for tid, t in state["stopped"].items()}

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:
            json.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            self.set_state(json.load(f))

    def state_callback(self) -> MOASHAStateCallback:
        """A Tune callback that saves and restores this scheduler with the experiment: put it in
        ``RunConfig(callbacks=[...])`` so that ``Tuner.restore`` keeps the rungs and the stopped trials."""
        return MOASHAStateCallback(self)

    def _settings(self) -> dict[str, Any]:
        return {"max_t": self._max_t, "grace_period": self._grace_period, "reduction_factor": self._eta,
                "metrics": list(self._metrics), "maximize": list(self._maximize), "time_attr": self._time_attr}


class MOASHAStateCallback(Callback):
    """Carries a :class:`MOASHA` scheduler's state in Tune's experiment checkpoints (see the module docstring)."""

    def __init__(self, scheduler: MOASHA) -> None:
        self.scheduler = scheduler

    def get_state(self) -> dict[str, Any] | None:
        return {"moasha": self.scheduler.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.scheduler.set_state(state["moasha"])


def _check_metrics(metrics: Sequence[str], mode: str | Sequence[str]) -> tuple[tuple[str, ...], tuple[bool, ...]]:
    if isinstance(metrics, str) or not metrics or not all(isinstance(m, str) and m for m in metrics):
        raise ValueError(f"metrics must be a non-empty sequence of result keys, got {metrics!r}")
    if len(set(metrics)) != len(metrics):
        raise ValueError(f"metrics must be distinct, got {list(metrics)}")
    modes = [mode] * len(metrics) if isinstance(mode, str) else list(mode)
    if len(modes) != len(metrics) or any(m not in ("max", "min") for m in modes):
        raise ValueError(f"mode must be 'max' or 'min', or one of them per metric ({len(metrics)}), got {mode!r}")
    return tuple(metrics), tuple(m == "max" for m in modes)


def _check_budget(max_t: int, grace_period: int, reduction_factor: float) -> None:
    if not _is_int(max_t) or max_t < 2:
        raise ValueError(f"max_t must be an integer >= 2 (the trial's epochs), got {max_t!r}")
    if not _is_int(grace_period) or not 1 <= grace_period < max_t:
        raise ValueError(f"grace_period must be an integer with 1 <= grace_period < max_t = {max_t}, "
                         f"got {grace_period!r}")
    if isinstance(reduction_factor, bool) or not isinstance(reduction_factor, int | float) \
            or not reduction_factor >= 2 or math.isinf(reduction_factor):
        raise ValueError(f"reduction_factor must be a finite number >= 2, got {reduction_factor!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _num(x: float) -> str:
    return f"{x:g}"


def study_scheduler(spec: StudySpec) -> MOASHA | None:
    """The trial scheduler of ``search.scheduler``: None (Tune's FIFO, every trial runs its budget) or MOASHA, whose
    ``max_t`` is the trial's ``optim.epochs``."""
    s = spec.search.scheduler
    if s.type == "fifo":
        return None
    return MOASHA(max_t=spec.train_config({}).optim.epochs, grace_period=s.grace_period,
                  reduction_factor=s.reduction_factor, metrics=s.metrics)
