"""Every use of a Ray API that is not public, each behind one small function that falls back when Ray changes it.

Five things the study needs have no public Ray API (Ray 2.60):

* :func:`cluster_config`: the node types an autoscaler published in the GCS (``ray._private.state``, which Ray
  Data reads the same way). Fallback: None, and :mod:`orchestrator.capacity` tries the launcher's config.
* :func:`train_report_logger`: Train's per-report INFO logger, named after its module's file rather than under
  ``ray.train`` (``ray.train.v2._internal.execution.context``). Fallback: None, and Train logs as it does.
* :func:`optuna_search_trial`: the Optuna trial and study behind a Tune trial of ``OptunaSearch`` (its
  ``_ot_trials``, ``_ot_study`` and ``_completed_trials``), so that a stopped trial can be told PRUNED. Fallback:
  None, and :class:`orchestrator.searcher.BudgetOptunaSearch` hands the trial to ``OptunaSearch`` itself.

* :func:`lean_torch_trainer`: a ``TorchTrainer`` that starts fewer processes per run.

  * No ``DatasetManager`` actor when a run is given no Ray Data sets (``DataParallelTrainer._create_default_callbacks``
    less its ``DatasetsCallback``). Train starts that actor for every run, datasets or not, importing Ray Data.
  * The run's ``TrainController`` runs in the calling actor (a Tune trial's) instead of a new actor of its own
    (``DataParallelTrainer._initialize_and_run_controller``): the same controller, callbacks, worker group,
    checkpoints and restarts, without one more process start and its imports of Ray Train and torch per trial.
    Its class attribute ``controller_in_process`` says so, for the report callback (:mod:`orchestrator.train_report`).
    Outside an actor (a driver script) the controller is an actor as Train makes it.
  * Then one ``PlacementGroupCleaner`` per actor process, for all the runs it hosts (Train's
    ``PlacementGroupCleanerCallback`` less its stop at each run's end), instead of one started and stopped per run.

  * On a Ray without an autoscaler (:func:`started_local_ray`), no resource requests to Train's
    ``AutoscalingCoordinator`` (``FixedScalingPolicy`` less them): the first run on a cluster starts that
    coordinator, a detached actor, and waits for it, for requests nothing would serve there.

  Fallback, for each part on its own: what ``TorchTrainer`` does.

* :func:`started_local_ray`: whether this process's ``ray.init`` started the Ray it is connected to
  (``ray._private.worker._global_node``). Fallback: False, as if it had joined a cluster.

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
def lean_torch_trainer(autoscaler: bool = True) -> type:
    """``ray.train.torch.TorchTrainer`` less the per-run ``DatasetManager`` of a run without datasets, with its
    controller in the calling actor, and without resource requests to an autoscaler unless ``autoscaler``; each
    part as ``TorchTrainer`` has it where this Ray builds it differently (``TorchTrainer`` itself if all)."""
    from ray.train.torch import TorchTrainer

    datasets_callback = _datasets_callback_class()
    controller_cls = _train_controller_class()
    cleaner_callback = _process_cleaner_callback()
    local_policy = None if autoscaler else _no_autoscaler_policy()
    if datasets_callback is None and controller_cls is None and local_policy is None:
        return TorchTrainer

    class LeanTorchTrainer(TorchTrainer):
        """A ``TorchTrainer`` whose run starts no ``DatasetManager`` without datasets to shard, whose controller
        runs in the calling actor, and which asks no autoscaler for resources on a Ray that has none."""

        controller_in_process = controller_cls is not None
        autoscaler_requests = local_policy is None

        def _create_default_callbacks(self) -> list[Any]:
            callbacks = list(super()._create_default_callbacks())  # type: ignore[misc]  # a V2 method
            if datasets_callback is not None and not getattr(self, "datasets", None):
                callbacks = [cb for cb in callbacks if not isinstance(cb, datasets_callback)]
            if controller_cls is not None and cleaner_callback is not None and _in_actor():
                callbacks = [cleaner_callback() if isinstance(cb, cleaner_callback.__mro__[1]) else cb
                             for cb in callbacks]
            return callbacks

        def _initialize_and_run_controller(self, **controller_init_kwargs: Any) -> Any:
            policy = controller_init_kwargs.get("scaling_policy")
            if local_policy is not None and type(policy) is local_policy.__mro__[1]:  # Train's fixed-size policy
                controller_init_kwargs["scaling_policy"] = local_policy(scaling_config=self.scaling_config)
            if controller_cls is None or not _in_actor():
                return super()._initialize_and_run_controller(**controller_init_kwargs)  # type: ignore[misc]
            return run_controller_here(controller_cls, controller_init_kwargs)

    return LeanTorchTrainer


def started_local_ray() -> bool:
    """Whether ``ray.init`` in this process started the Ray it is connected to (a single machine, no autoscaler),
    rather than joining a running cluster; False when it cannot tell."""
    try:
        from ray._private import worker

        node = worker._global_node
    except (ImportError, AttributeError):
        return False
    return bool(node is not None and getattr(node, "head", False) is True)


@functools.cache
def _no_autoscaler_policy() -> type | None:
    """Train's ``FixedScalingPolicy`` less its requests to the ``AutoscalingCoordinator``; None if Ray changed it.

    A run registers its workers' resources with that coordinator, a detached actor the first run on a cluster
    starts (one more process, which the run waits for), and renews and cancels them, so that an autoscaler adds
    nodes. On a Ray without an autoscaler nothing reads them.
    """
    try:
        from ray.train.v2._internal.execution.scaling_policy.fixed import FixedScalingPolicy
    except ImportError:
        return None
    hooks = ("after_controller_start", "_send_resource_request", "_maybe_send_resource_request",
             "_cancel_resource_request")
    if not all(callable(getattr(FixedScalingPolicy, name, None)) for name in hooks):
        return None

    class NoAutoscalerScalingPolicy(FixedScalingPolicy):
        def after_controller_start(self, train_run_context: Any) -> None:
            pass  # Train's creates the coordinator's client and sends the run's first request

        def _send_resource_request(self) -> None:
            pass

        def _maybe_send_resource_request(self) -> None:
            pass

        def _cancel_resource_request(self) -> None:
            pass

    return NoAutoscalerScalingPolicy


def _datasets_callback_class() -> type | None:
    """Train's ``DatasetsCallback`` if ``DataParallelTrainer`` still builds its callbacks in
    ``_create_default_callbacks``; None otherwise."""
    from ray.train.torch import TorchTrainer

    try:
        from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    except ImportError:
        return None
    return DatasetsCallback if callable(getattr(TorchTrainer, "_create_default_callbacks", None)) else None


def _train_controller_class() -> type | None:
    """Train's ``TrainController`` if it is the class ``DataParallelTrainer`` starts as its controller actor with
    the hooks :func:`run_controller_here` uses; None otherwise."""
    try:
        from ray.train.v2._internal.execution.controller import TrainController
        from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
    except ImportError:
        return None
    needed = ("run", "get_result", "get_state", "get_worker_group")
    if not all(callable(getattr(TrainController, name, None)) for name in needed):
        return None
    if not callable(getattr(DataParallelTrainer, "_initialize_and_run_controller", None)):
        return None
    return TrainController


def _in_actor() -> bool:
    import ray

    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None


@functools.cache
def _process_cleaner_callback() -> type | None:
    """Train's ``PlacementGroupCleanerCallback`` with one cleaner per process, for every run a reused Tune trial
    actor hosts; None if Ray changed it.

    The cleaner, a detached actor, removes a run's placement group if the controller's process dies before the run
    ends (a placement group made by an actor outlives it until the job ends). Train starts one per run and stops it
    at the run's end, which waits up to its 1 s check interval. With the controller in the trial actor, the process
    it watches is the same for every run there: the first run starts it, later runs register their placement group
    with it (the newest replaces the last, which its run removed), and it exits once the process is gone.
    """
    try:
        from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    except ImportError:
        return None
    hooks = ("after_controller_start", "after_worker_group_start", "_stop_cleaner")
    if not all(callable(getattr(PlacementGroupCleanerCallback, name, None)) for name in hooks):
        return None

    class ProcessCleanerCallback(PlacementGroupCleanerCallback):
        shared: Any = None  # this process's cleaner actor

        def after_controller_start(self, train_run_context: Any) -> None:
            import ray
            import ray.exceptions

            cls = type(self)
            if cls.shared is not None:
                try:
                    ray.get(cls.shared.start_monitoring.remote(), timeout=10)  # alive, and watching
                    self._cleaner = cls.shared
                    self._controller_actor_id = ray.get_runtime_context().get_actor_id()
                    return
                except (ray.exceptions.RayError, TimeoutError):
                    cls.shared = None  # gone (its node, or killed): start another
            super().after_controller_start(train_run_context)
            cls.shared = self._cleaner

        def _stop_cleaner(self) -> None:
            self._cleaner = None  # it keeps watching this process, for the next run here

    return ProcessCleanerCallback


def run_controller_here(controller_cls: type, init_kwargs: dict[str, Any]) -> Any:
    """Run a Train controller in this process until its run ends; its ``Result``.

    Whatever stops it early (the Tune trial stopped at a report, an error out of the loop) first aborts its worker
    group, as the controller's own abort does, but without ending this process, which Train's ``abort`` would.
    """
    import asyncio

    controller = controller_cls(**init_kwargs)
    try:
        asyncio.run(controller.run())
    except BaseException:
        _abort_controller(controller)
        raise
    return controller.get_result()


def _abort_controller(controller: Any) -> None:
    if controller.get_state().is_terminal():
        return
    callbacks = getattr(controller, "_controller_callback_manager", None)
    if callbacks is not None:  # Train's abort hooks (the preemption watcher's teardown, among others)
        callbacks.invoke_best_effort("before_controller_abort")
    worker_group = controller.get_worker_group()
    if worker_group is not None:
        try:
            worker_group.abort()  # its workers, synchronisation actor and placement group
        except Exception as err:  # noqa: BLE001  # the original exception is what the caller must see
            log.warning("could not abort the Train worker group: %s", err)
