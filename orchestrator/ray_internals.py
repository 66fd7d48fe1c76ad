"""Every use of a Ray API that is not public, each behind one small function that falls back when Ray changes it.

Four things the study needs have no public Ray API (Ray 2.60):

* :func:`cluster_config`: the node types an autoscaler published in the GCS (``ray._private.state``, which Ray
  Data reads the same way). Fallback: None, and :mod:`orchestrator.capacity` tries the launcher's config.
* :func:`train_report_logger`: Train's per-report INFO logger, named after its module's file rather than under
  ``ray.train`` (``ray.train.v2._internal.execution.context``). Fallback: None, and Train logs as it does.
* :func:`optuna_search_trial`: the Optuna trial and study behind a Tune trial of ``OptunaSearch`` (its
  ``_ot_trials``, ``_ot_study`` and ``_completed_trials``), so that a stopped trial can be told PRUNED. Fallback:
  None, and :class:`orchestrator.searcher.BudgetOptunaSearch` hands the trial to ``OptunaSearch`` itself.

* :func:`lean_torch_trainer`: a ``TorchTrainer`` whose runs start no ``DatasetManager`` actor when they are given no
  Ray Data sets (``DataParallelTrainer._create_default_callbacks`` less its ``DatasetsCallback``). Train starts that
  actor for every run, datasets or not: one more process per trial, importing Ray Data. Fallback: ``TorchTrainer``
  itself.

``tests/test_ray_internals.py`` checks that each one answers on the pinned Ray and that each fallback holds.
"""

from __future__ import annotations

import functools
import importlib
import logging
from typing import Any

log = logging.getLogger(__name__)


def cluster_config() -> Any | None:
    """The autoscaler's cluster config record in the joined cluster's GCS (``node_group_configs`` with each
    group's ``name``, ``resources`` and ``max_count``); None when there is none or Ray no longer has the reader."""
    try:
        from ray._private.state import state

        return state.get_cluster_config()
    except Exception as err:  # a private reader: never let it stop a study
        log.debug("no autoscaler record in the GCS: %s", err)
        return None


def train_report_logger() -> logging.Logger | None:
    """The logger of Ray Train's "Reporting training result ..." INFO line; None if Ray moved it."""
    try:
        context = importlib.import_module("ray.train.v2._internal.execution.context")
    except ImportError:
        return None
    return logging.getLogger(context.__file__)


def optuna_search_trial(searcher: Any, trial_id: str) -> tuple[Any, Any, set[str]] | None:
    """(Optuna trial, Optuna study, ids of the Tune trials already told) of ``trial_id`` in an ``OptunaSearch``;
    None if its internals changed (or the trial was never suggested by it)."""
    try:
        ot_trial = searcher._ot_trials[trial_id]
        study = searcher._ot_study
        completed = searcher._completed_trials
    except (AttributeError, KeyError, TypeError):
        return None
    if study is None or not isinstance(completed, set):
        return None
    return ot_trial, study, completed


@functools.cache
def lean_torch_trainer() -> type:
    """``ray.train.torch.TorchTrainer``, less the per-run ``DatasetManager`` actor for a run without datasets;
    ``TorchTrainer`` itself if this Ray builds its callbacks differently."""
    from ray.train.torch import TorchTrainer

    try:
        from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    except ImportError:
        return TorchTrainer
    if not callable(getattr(TorchTrainer, "_create_default_callbacks", None)):
        return TorchTrainer

    class LeanTorchTrainer(TorchTrainer):
        """A ``TorchTrainer`` whose run starts no ``DatasetManager`` when it has no datasets to shard."""

        def _create_default_callbacks(self) -> list[Any]:
            callbacks = list(super()._create_default_callbacks())  # type: ignore[misc]  # a V2 method
            if getattr(self, "datasets", None):
                return callbacks
            return [cb for cb in callbacks if not isinstance(cb, DatasetsCallback)]

    return LeanTorchTrainer
