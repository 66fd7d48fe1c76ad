"""The private Ray APIs the study uses, each behind one function in ``orchestrator/ray_internals.py``: each answers
on the pinned Ray, and each falls back (None) when Ray moves or changes it; the callers keep working then."""

from __future__ import annotations

import logging
import sys

import optuna
import pytest
from ray.tune.search.optuna import OptunaSearch

from orchestrator import ray_internals
from orchestrator.capacity import autoscaler_node_types
from orchestrator.searcher import BudgetOptunaSearch


def test_train_report_logger_is_the_one_train_reports_with() -> None:
    from ray.train.v2._internal.execution import context

    logger = ray_internals.train_report_logger()
    assert logger is logging.getLogger(context.__file__)
    # Train's report line: ``logger = logging.getLogger(__file__)`` in that module, and it logs through it.
    assert context.logger is logger


def test_train_report_logger_falls_back_when_ray_moves_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray.train.v2._internal.execution.context", None)  # import raises ImportError
    assert ray_internals.train_report_logger() is None


def test_cluster_config_falls_back_without_the_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    # The reader with a joined cluster is checked in test_capacity (a real Ray with a record in its GCS); without
    # the private module, or without a cluster to ask, the answer is None and never an exception.
    monkeypatch.setitem(sys.modules, "ray._private.state", None)
    assert ray_internals.cluster_config() is None
    assert autoscaler_node_types() is None


def _callback_types(trainer_cls: type, **kwargs: object) -> list[str]:
    import ray.train

    trainer = trainer_cls(lambda: None, scaling_config=ray.train.ScalingConfig(num_workers=1), **kwargs)
    return [type(cb).__name__ for cb in trainer._create_default_callbacks()]


def test_lean_trainer_drops_only_the_dataset_manager_of_a_run_without_datasets() -> None:
    from ray.train.torch import TorchTrainer

    lean = ray_internals.lean_torch_trainer()
    assert issubclass(lean, TorchTrainer) and lean is not TorchTrainer
    full = _callback_types(TorchTrainer)
    assert "DatasetsCallback" in full  # what Train does on this Ray: a DatasetManager actor per run
    assert _callback_types(lean) == [name for name in full if name != "DatasetsCallback"]
    # A run given datasets keeps Train's callbacks as they are.
    assert _callback_types(lean, datasets={"train": lambda: None}) == _callback_types(
        TorchTrainer, datasets={"train": lambda: None})


def test_in_an_actor_the_lean_trainer_hosts_its_controller_with_one_cleaner_per_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The run itself, in a real actor on a real cluster, is test_faults' (what a stopped or killed trial gives back).
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    lean = ray_internals.lean_torch_trainer()
    assert lean.controller_in_process is True
    outside = _callback_types(lean)  # this test process is a driver, not an actor: Train's controller actor
    assert "PlacementGroupCleanerCallback" in outside
    monkeypatch.setattr(ray_internals, "_in_actor", lambda: True)
    inside = _callback_types(lean)
    assert inside == [n if n != "PlacementGroupCleanerCallback" else "ProcessCleanerCallback" for n in outside]
    cleaner = ray_internals._process_cleaner_callback()
    assert cleaner is not None and issubclass(cleaner, PlacementGroupCleanerCallback)


@pytest.mark.parametrize("moved", ["datasets", "controller", "both"])
def test_lean_trainer_falls_back_part_by_part(monkeypatch: pytest.MonkeyPatch, moved: str) -> None:
    from ray.train.torch import TorchTrainer

    modules = {"datasets": ["ray.train.v2._internal.callbacks.datasets"],
               "controller": ["ray.train.v2._internal.execution.controller"]}
    for module in modules.get(moved, [m for names in modules.values() for m in names]):
        monkeypatch.setitem(sys.modules, module, None)  # Ray moved it: importing it raises ImportError
    monkeypatch.setattr(ray_internals, "_in_actor", lambda: True)
    ray_internals.lean_torch_trainer.cache_clear()
    try:
        lean = ray_internals.lean_torch_trainer()
        if moved == "both":
            assert lean is TorchTrainer
            return
        full = _callback_types(TorchTrainer)
        if moved == "datasets":  # Train's callbacks, its cleaner swapped; the controller still in the actor
            assert lean.controller_in_process is True
            assert _callback_types(lean) == [
                n if n != "PlacementGroupCleanerCallback" else "ProcessCleanerCallback" for n in full]
        else:  # Train's controller actor and its own cleaner; no DatasetManager still
            assert lean.controller_in_process is False
            assert _callback_types(lean) == [n for n in full if n != "DatasetsCallback"]
    finally:
        ray_internals.lean_torch_trainer.cache_clear()


def test_without_an_autoscaler_the_lean_trainer_sends_no_resource_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the run then starts (no AutoscalingCoordinator actor) is test_faults', on a real cluster.
    import ray.train
    from ray.train.v2._internal.execution.scaling_policy.fixed import FixedScalingPolicy

    assert ray_internals.lean_torch_trainer().autoscaler_requests is True
    lean = ray_internals.lean_torch_trainer(autoscaler=False)
    assert lean.autoscaler_requests is False
    policy_cls = ray_internals._no_autoscaler_policy()
    assert policy_cls is not None and policy_cls.__mro__[1] is FixedScalingPolicy
    # The swap happens where Train hands the controller its policy; the controller itself is not started here.
    handed: dict[str, object] = {}
    monkeypatch.setattr(ray_internals, "_in_actor", lambda: True)
    monkeypatch.setattr(ray_internals, "run_controller_here", lambda cls, kwargs: handed.update(kwargs))
    config = ray.train.ScalingConfig(num_workers=2)
    lean(lambda: None, scaling_config=config)._initialize_and_run_controller(
        scaling_policy=FixedScalingPolicy(config))
    policy = handed["scaling_policy"]
    assert type(policy) is policy_cls and policy.scaling_config is config
    # Every hook that would reach the coordinator is inert: none creates its client, which all of Train's need.
    policy.after_controller_start(None)
    policy._maybe_send_resource_request()
    policy._cancel_resource_request()
    assert policy._coordinator_client is None
    assert policy.make_decision_for_non_running_worker_group().num_workers == 2


def test_the_no_autoscaler_policy_falls_back_when_ray_moves_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray.train.v2._internal.execution.scaling_policy.fixed", None)
    ray_internals._no_autoscaler_policy.cache_clear()
    ray_internals.lean_torch_trainer.cache_clear()
    try:
        assert ray_internals._no_autoscaler_policy() is None
        assert ray_internals.lean_torch_trainer(autoscaler=False).autoscaler_requests is True  # Train's requests
    finally:
        ray_internals._no_autoscaler_policy.cache_clear()
        ray_internals.lean_torch_trainer.cache_clear()


def test_started_local_ray_is_false_without_ray_and_without_the_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    # True and False on a real Ray: test_faults (a joined cluster); tune.py's own local Ray starts only in its study.
    assert ray_internals.started_local_ray() is False  # this process never called ray.init
    monkeypatch.setitem(sys.modules, "ray._private.worker", None)
    assert ray_internals.started_local_ray() is False


def _searcher(cls: type[OptunaSearch]) -> OptunaSearch:
    kwargs = {"budget_param": "optim.epochs"} if cls is BudgetOptunaSearch else {}
    searcher = cls(space={"x": optuna.distributions.FloatDistribution(0.0, 1.0)}, metric=["a", "b"],
                   mode=["max", "max"], sampler=optuna.samplers.RandomSampler(seed=0), **kwargs)
    assert searcher.suggest("t1") is not None
    return searcher


def test_optuna_search_trial_reaches_the_trial_and_study_on_this_ray() -> None:
    searcher = _searcher(OptunaSearch)
    found = ray_internals.optuna_search_trial(searcher, "t1")
    assert found is not None
    ot_trial, study, completed = found
    assert isinstance(ot_trial, optuna.Trial) and isinstance(study, optuna.Study) and completed == set()
    assert ot_trial.number == 0 and study.trials[0].state == optuna.trial.TrialState.RUNNING
    assert ray_internals.optuna_search_trial(searcher, "never suggested") is None


def test_a_changed_optuna_search_is_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    searcher = _searcher(OptunaSearch)
    monkeypatch.delattr(searcher, "_ot_study")  # what a Ray release that renamed it looks like to the reader
    assert ray_internals.optuna_search_trial(searcher, "t1") is None


def test_without_the_reader_the_searcher_hands_the_trial_to_optuna_search(monkeypatch: pytest.MonkeyPatch) -> None:
    searcher = _searcher(BudgetOptunaSearch)
    monkeypatch.setattr("orchestrator.searcher.optuna_search_trial", lambda *_: None)  # a changed OptunaSearch
    searcher.on_trial_complete("t1", {"a": 0.5, "b": 0.4, "epoch": 3, "config": {"optim.epochs": 3}})
    trial = searcher._ot_study.trials[0]  # OptunaSearch's own code told it: COMPLETE with the last values
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.values == [0.5, 0.4]


def test_the_budget_searcher_tells_pruned_through_the_reader() -> None:
    searcher = _searcher(BudgetOptunaSearch)
    searcher.on_trial_complete("t1", {"a": 0.5, "b": 0.4, "epoch": 1, "config": {"optim.epochs": 3}})
    _, study, completed = ray_internals.optuna_search_trial(searcher, "t1") or (None, None, None)
    assert study is not None and completed == {"t1"}
    assert study.trials[0].state == optuna.trial.TrialState.PRUNED


def test_no_other_module_reaches_into_ray() -> None:
    import re
    from pathlib import Path

    private = re.compile(r"ray\._private|\._internal\b|_internal\.|\._ot_|_completed_trials")
    root = Path(ray_internals.__file__).parent
    offenders = [f"{path.name}:{n}" for path in sorted(root.glob("*.py")) if path.name != "ray_internals.py"
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if private.search(line.split("#")[0])]
    assert offenders == []
