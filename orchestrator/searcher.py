"""Ray's ``OptunaSearch`` that tells Optuna the truth about trials an early-stopping scheduler cut short.

Ray's ``OptunaSearch.on_trial_complete`` tells a trial COMPLETE with its last result's values, so in a
multi-objective study (where it drops every intermediate result) a trial that a scheduler stopped at epoch 1
enters the study as a finished trial with epoch-1 accuracies. :class:`BudgetOptunaSearch` tells Optuna:

* ``PRUNED`` for a trial that ended before its full budget: its last result's ``time_attr`` (``epoch``) is below
  ``max_t``, or it ended with no result at all (removed while pending). Optuna takes no values with PRUNED; the
  epoch and the objectives it stopped with are kept as user attributes (``stopped_at_<time_attr>``,
  ``last_<metric>``).
* ``COMPLETE`` with every objective's value only for a trial that reached ``max_t``; ``FAIL`` if one of them is
  missing or NaN there (Optuna refuses them, and Ray would leave the trial RUNNING in the study).
* ``FAIL`` for an errored trial, as Ray does.

Why the epoch and not ``done``: Tune sets ``done=True`` on the result a scheduler stops a trial at
(``TuneController._on_training_result``), so ``done`` cannot tell a stopped trial from a finished one; the epoch
is in every result the trainable reports and is ``max_t`` exactly when the trial ran its whole schedule.

Only :meth:`on_trial_complete` is overridden; suggestion, ``points_to_evaluate`` and Ray's save/restore (which
pickle ``__dict__``, these settings included) are Ray's. A state saved by this class restores into a plain
``OptunaSearch`` and the other way round.

What Optuna 5.0's samplers do with PRUNED trials in a multi-objective study (read in their source and checked by
experiment; none of them gets values from a PRUNED trial, since a multi-objective trial cannot report
intermediate values):

* **TPE** (``TPESampler``, multivariate here) counts PRUNED with COMPLETE trials for ``n_startup_trials`` and for
  the size of its "good" set (``ceil(0.1 n)``), and models them: ``_split_trials`` fills the good set with COMPLETE
  trials first (non-dominated sort, then hypervolume subset selection) and takes PRUNED ones (all tied, by trial
  number) only if too few COMPLETE trials exist; otherwise every PRUNED trial is in the "bad" set, so TPE samples
  away from where trials were stopped. Early in a study with few COMPLETE trials, the first-numbered PRUNED
  trials can count as good.
* **NSGA-II** (``NSGAIISampler``) uses COMPLETE trials only: a generation is full when it holds
  ``population_size`` COMPLETE trials, so PRUNED trials neither advance generations nor become parents; the
  sampler keeps drawing the current generation until enough of its trials finish.
* **GP** (``GPSampler``) fits COMPLETE trials only and counts only them for ``n_startup_trials``; PRUNED trials
  are ignored (it samples the same points with or without them).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from .names import OBJECTIVES
from .ray_internals import optuna_search_trial
from .space import StudySpec, make_sampler, optuna_space

log = logging.getLogger(__name__)


class BudgetOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells PRUNED for trials ending before their budget and COMPLETE only at it.

    Takes ``OptunaSearch``'s arguments plus the budget: ``max_t`` (the same for every trial) or ``budget_param``
    (the config key holding each trial's own budget, e.g. ``optim.epochs``, read from the result's ``config``),
    and ``time_attr`` (the result key counting it, default ``epoch``).
    """

    def __init__(self, *args: Any, max_t: int | None = None, budget_param: str | None = None,
                 time_attr: str = "epoch", **kwargs: Any) -> None:
        if (max_t is None) == (budget_param is None):
            raise ValueError("give exactly one of max_t and budget_param")
        if max_t is not None and (isinstance(max_t, bool) or not isinstance(max_t, int) or max_t < 1):
            raise ValueError(f"max_t must be an integer >= 1 (the trial's epochs), got {max_t!r}")
        self._max_t = max_t
        self._budget_param = budget_param
        self._time_attr = time_attr
        super().__init__(*args, **kwargs)

    def _budget(self, result: dict[str, Any]) -> float:
        """The trial's full budget: ``max_t``, or its config's ``budget_param`` (NaN when the result lacks it)."""
        if self._max_t is not None:
            return self._max_t
        config = result.get("config")
        value = config.get(self._budget_param) if isinstance(config, dict) else result.get(
            f"config/{self._budget_param}")
        return _number(value)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        found = optuna_search_trial(self, trial_id)
        if found is None:  # internals changed, or a trial it never suggested: OptunaSearch handles it as it does
            log.error("trial %s is not in OptunaSearch's state as this Ray lays it out: handed to OptunaSearch, "
                      "which tells Optuna COMPLETE with its last values, never PRUNED", trial_id)
            super().on_trial_complete(trial_id, result, error)
            return
        ot_trial, study, completed = found
        if trial_id in completed:
            log.warning("Received another completion of trial %s, which already finished; ignored", trial_id)
            return
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        state, values = self._verdict(ot_trial, metrics, result, error)
        study.tell(ot_trial, values, state=state)
        completed.add(trial_id)

    def _verdict(self, ot_trial: optuna.Trial, metrics: list[str], result: dict[str, Any] | None,
                 error: bool) -> tuple[optuna.trial.TrialState, list[float] | None]:
        """(state, values) to tell Optuna; records where a pruned trial stopped as user attributes."""
        TrialState = optuna.trial.TrialState
        if error:
            return TrialState.FAIL, None
        budget = (result or {}).get(self._time_attr)
        if budget is None or not budget >= self._budget(result or {}):  # also when the budget is unknown
            if result:
                ot_trial.set_user_attr(f"stopped_at_{self._time_attr}", budget)
                for m in metrics:
                    if m in result:
                        ot_trial.set_user_attr(f"last_{m}", _number(result[m]))
            return TrialState.PRUNED, None
        values = [_number((result or {}).get(m)) for m in metrics]
        if any(math.isnan(v) for v in values):
            log.warning("trial %d reached %s %s without a number for every objective %s: %s; told FAIL",
                        ot_trial.number, self._time_attr, budget, metrics, values)
            return TrialState.FAIL, None
        return TrialState.COMPLETE, values


def _number(value: Any) -> float:
    """``value`` as a float; NaN when it is missing or not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def study_searcher(spec: StudySpec, study_name: str) -> BudgetOptunaSearch:
    """The study's searcher: the preset's Optuna sampler on its space, both objectives maximised, the preset's
    default point first (``search.enqueue_defaults``), each trial's budget its ``optim.epochs``."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "a new study created in memory"
    return BudgetOptunaSearch(
        space=optuna_space(spec),
        metric=list(OBJECTIVES), mode=["max", "max"],  # on the searcher only: a TuneConfig metric makes it 1-D
        points_to_evaluate=[spec.default_point()] if spec.search.enqueue_defaults else None,
        sampler=make_sampler(spec.search),
        study_name=study_name,
        budget_param="optim.epochs",
    )
