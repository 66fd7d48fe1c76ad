"""MOASHA's rung bookkeeping and BudgetOptunaSearch's verdicts, driven directly (no Ray runtime needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from ray.tune.callback import CallbackList
from ray.tune.schedulers import TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from orchestrator.moasha import MOASHA, MOASHAStateCallback
from orchestrator.searcher import BudgetOptunaSearch
from orchestrator.space import Scheduler

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def _result(epoch: float, clean: float, robust: float) -> dict[str, float]:
    return {"epoch": epoch, "clean_acc": clean, "robust_acc": robust}


# ---------------------------------------------------------------- MOASHA


def test_rung_levels() -> None:
    assert MOASHA(max_t=9).rung_levels == (1, 3)
    assert MOASHA(max_t=10).rung_levels == (1, 3, 9)
    assert MOASHA(max_t=16, grace_period=2, reduction_factor=2).rung_levels == (2, 4, 8)
    assert MOASHA(max_t=10, grace_period=4, reduction_factor=4).rung_levels == (4,)
    # Levels are met at the end of a whole epoch: eta 2.5 gives 1, 2.5 -> 3, 6.25 -> 7 (not below max_t 7).
    assert MOASHA(max_t=7, reduction_factor=2.5).rung_levels == (1, 3)
    assert MOASHA(max_t=10, reduction_factor=2.5).rung_levels == (1, 3, 7)
    # 25 * 2.2 is 55.000000000000007 in floating point: the rung is epoch 55, where the study's probes run.
    assert MOASHA(max_t=100, grace_period=25, reduction_factor=2.2).rung_levels == (25, 55)


def test_the_scheduler_ranks_at_the_epochs_the_study_probes() -> None:
    """MOASHA's rungs and the preset's probe epochs come from one function: for every grace and eta they agree,
    and a trial is ranked at the epoch its probe ran (so a probe's figures are never missing at a rung)."""
    for grace in range(1, 40):
        for eta in [2 + k / 10 for k in range(40)]:
            spec = Scheduler(type="moasha", grace_period=grace, reduction_factor=eta)
            s = MOASHA(max_t=200, grace_period=grace, reduction_factor=eta, metrics=spec.metrics)
            assert tuple(map(int, s.rung_levels)) == spec.rung_epochs(200), (grace, eta)
    s = MOASHA(max_t=100, grace_period=25, reduction_factor=2.2, metrics=("probe_clean_acc", "probe_robust_acc"))
    for trial in "abc":
        assert s.decide(trial, {"epoch": 25, "probe_clean_acc": 0.5, "probe_robust_acc": 0.5}) == CONTINUE
    for trial in "abc":
        assert s.decide(trial, {"epoch": 55, "probe_clean_acc": 0.6, "probe_robust_acc": 0.6}) == CONTINUE
    assert set(s.recorded(55.0)) == {"a", "b", "c"}


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"max_t": 4, "reduction_factor": 1}, "reduction_factor"),
    ({"max_t": 4, "reduction_factor": 1.5}, "reduction_factor"),
    ({"max_t": 4, "reduction_factor": True}, "reduction_factor"),
    ({"max_t": 4, "reduction_factor": math.inf}, "reduction_factor"),
    ({"max_t": 4, "grace_period": 0}, "grace_period"),
    ({"max_t": 4, "grace_period": 4}, "grace_period"),
    ({"max_t": 4, "grace_period": 1.5}, "grace_period"),
    ({"max_t": 1}, "max_t"),
    ({"max_t": 4.0}, "max_t"),
    ({"max_t": 4, "metrics": []}, "metrics"),
    ({"max_t": 4, "metrics": "clean_acc"}, "metrics"),
    ({"max_t": 4, "metrics": ["a", "a"]}, "metrics"),
    ({"max_t": 4, "mode": ["max"]}, "mode"),
    ({"max_t": 4, "mode": "up"}, "mode"),
    ({"max_t": 4, "time_attr": ""}, "time_attr"),
])
def test_bad_arguments_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        MOASHA(**kwargs)


def test_rung_decisions_and_counters() -> None:
    s = MOASHA(max_t=4, grace_period=1, reduction_factor=2)  # rungs at epochs 1 and 2
    assert s.decide("a", _result(1, 0.5, 0.5)) == CONTINUE  # fewer than eta recorded
    assert s.decide("b", _result(1, 0.4, 0.4)) == CONTINUE
    assert s.decide("c", _result(1, 0.3, 0.3)) == STOP  # last of 3, keep 1
    assert s.decide("d", _result(1, 0.9, 0.9)) == CONTINUE  # dominates all
    assert s.decide("a", _result(2, 0.6, 0.6)) == CONTINUE
    assert s.decide("b", _result(2, 0.5, 0.5)) == CONTINUE
    assert s.decide("d", _result(2, 0.1, 0.1)) == STOP  # last of 3 at rung 2
    assert s.decide("a", _result(3, 0.0, 0.0)) == CONTINUE  # between rungs
    assert s.decide("b", _result(4, 0.0, 0.0)) == CONTINUE  # max_t: never stopped, not recorded
    assert s.recorded(1) == {"a": (0.5, 0.5), "b": (0.4, 0.4), "c": (0.3, 0.3), "d": (0.9, 0.9)}
    assert s.recorded(2) == {"a": (0.6, 0.6), "b": (0.5, 0.5), "d": (0.1, 0.1)}
    assert s.stopped_trials == {"c": 1.0, "d": 2.0}
    stats = s.stats()
    assert (stats.stopped, stats.epochs_saved) == (2, 3 + 2)
    assert [(r.level, r.recorded, r.stopped) for r in stats.rungs] == [(1, 4, 1), (2, 3, 1)]
    assert "2 trials stopped, 5 trial-epochs saved" in s.debug_string()
    # A stopped trial that reports again is stopped again; nothing is counted twice.
    assert s.decide("c", _result(2, 1.0, 1.0)) == STOP
    assert s.stats().stopped == 2 and s.recorded(2).keys() == {"a", "b", "d"}


def test_late_and_repeated_results() -> None:
    s = MOASHA(max_t=9, grace_period=1, reduction_factor=2)  # rungs 1, 2, 4, 8
    for tid, v in (("a", 0.5), ("b", 0.6)):
        for epoch in (1, 2, 4):
            assert s.decide(tid, _result(epoch, v, v)) == CONTINUE
    # First result at epoch 5 (resumed from a later checkpoint): recorded at rung 4 only, and decided there.
    assert s.decide("late", _result(5, 0.1, 0.1)) == STOP
    assert "late" in s.recorded(4) and "late" not in s.recorded(1) and "late" not in s.recorded(2)
    assert s.stopped_trials == {"late": 5.0}
    assert [r.stopped for r in s.stats().rungs] == [0, 0, 1, 0]
    # A trial recorded at rung 4 restarted from an earlier checkpoint: its rung-1 and rung-2 results again continue
    # without being recorded anew, whatever they are.
    assert s.decide("a", _result(1, 0.0, 0.0)) == CONTINUE
    assert s.decide("a", _result(2, 0.0, 0.0)) == CONTINUE
    assert s.recorded(1)["a"] == (0.5, 0.5)
    # No time attribute: nothing to place on a rung.
    assert s.decide("x", {"clean_acc": 0.0, "robust_acc": 0.0}) == CONTINUE


def test_missing_objective_counts_as_nan() -> None:
    s = MOASHA(max_t=4, reduction_factor=2)
    s.decide("a", _result(1, 0.5, 0.5))
    s.decide("b", _result(1, 0.4, 0.4))
    assert s.decide("c", {"epoch": 1, "clean_acc": 0.99}) == STOP
    assert math.isnan(s.recorded(1)["c"][1])


def test_other_metrics_and_modes() -> None:
    s = MOASHA(max_t=4, reduction_factor=2, metrics=("err", "acc"), mode=["min", "max"], time_attr="step")
    s.decide("a", {"step": 1, "err": 0.1, "acc": 0.9})
    s.decide("b", {"step": 1, "err": 0.2, "acc": 0.8})
    assert s.decide("c", {"step": 1, "err": 0.05, "acc": 0.95}) == CONTINUE
    assert s.decide("d", {"step": 1, "err": 0.5, "acc": 0.5}) == STOP


def test_state_round_trip_through_file_and_callback(tmp_path: Path) -> None:
    s = MOASHA(max_t=4, reduction_factor=2)
    for tid, v in (("a", 0.5), ("b", 0.4), ("c", 0.3)):
        s.decide(tid, _result(1, v, v))
    s.decide("n", _result(1, math.nan, 0.2))
    s.save(str(tmp_path / "moasha.json"))
    fresh = MOASHA(max_t=4, reduction_factor=2)
    fresh.restore(str(tmp_path / "moasha.json"))
    assert fresh.stopped_trials == s.stopped_trials == {"c": 1.0, "n": 1.0}
    assert fresh.recorded(1).keys() == s.recorded(1).keys() and math.isnan(fresh.recorded(1)["n"][0])
    assert fresh.get_state()["rungs"][0][1]["a"] == [0.5, 0.5]

    # What Tune does with callbacks at an experiment checkpoint and on resume.
    CallbackList([s.state_callback()]).save_to_dir(str(tmp_path), session_str="x")
    other = MOASHA(max_t=4, reduction_factor=2)
    callbacks = CallbackList([MOASHAStateCallback(other)])
    assert callbacks.can_restore(str(tmp_path))
    callbacks.restore_from_dir(str(tmp_path))
    assert other.stopped_trials == s.stopped_trials and other.recorded(1).keys() == s.recorded(1).keys()
    assert other.decide("c", _result(2, 1.0, 1.0)) == STOP

    with pytest.raises(ValueError, match="max_t"):
        MOASHA(max_t=5, reduction_factor=2).set_state(s.get_state())


# ---------------------------------------------------------------- BudgetOptunaSearch


def _searcher(**kwargs: Any) -> BudgetOptunaSearch:
    space: dict[str, optuna.distributions.BaseDistribution] = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    return BudgetOptunaSearch(space=space, metric=["clean_acc", "robust_acc"], mode=["max", "max"], max_t=3,
                              sampler=optuna.samplers.RandomSampler(seed=0), **kwargs)


def _told(searcher: OptunaSearch) -> dict[str, tuple[str, list[float] | None, dict]]:
    assert searcher._ot_study is not None
    frozen = {t.number: t for t in searcher._ot_study.trials}
    return {tid: (frozen[t.number].state.name, frozen[t.number].values, frozen[t.number].user_attrs)
            for tid, t in searcher._ot_trials.items()}


def test_searcher_tells_pruned_complete_and_fail(tmp_path: Path) -> None:
    searcher = _searcher(points_to_evaluate=[{"x": 0.25}])
    for tid in "abcdef":
        searcher.suggest(tid)
    assert searcher._ot_trials["a"].params == {"x": 0.25}  # points_to_evaluate still come first
    searcher.on_trial_complete("a", _result(1, 0.5, 0.2))  # stopped at a rung
    searcher.on_trial_complete("b", {**_result(3, 0.7, 0.3), "done": True})  # full budget
    searcher.on_trial_complete("c", _result(2, 0.6, 0.25), error=True)
    searcher.on_trial_complete("d", _result(3, math.nan, 0.3))
    searcher.on_trial_complete("e")  # removed before it ran
    searcher.on_trial_complete("f", {**_result(2, 0.9, 0.9), "done": True})  # Tune marks a stopped result done
    searcher.on_trial_complete("b", _result(3, 0.0, 0.0))  # a second completion is ignored
    told = _told(searcher)
    assert told["a"] == ("PRUNED", None, {"stopped_at_epoch": 1, "last_clean_acc": 0.5, "last_robust_acc": 0.2})
    assert told["b"] == ("COMPLETE", [0.7, 0.3], {})
    assert told["c"][:2] == ("FAIL", None)
    assert told["d"][:2] == ("FAIL", None)
    assert told["e"] == ("PRUNED", None, {})
    assert told["f"][:2] == ("PRUNED", None)

    # Ray's save/restore keep the subclass's settings and restore into either class.
    path = str(tmp_path / "searcher.pkl")
    searcher.save(path)
    plain = OptunaSearch()
    plain.restore(path)
    assert {k: v[:2] for k, v in _told(plain).items()} == {k: v[:2] for k, v in told.items()}
    again = BudgetOptunaSearch(max_t=99)
    again.restore(path)
    assert again._max_t == 3
    again.suggest("g")
    again.on_trial_complete("g", _result(2, 0.1, 0.1))
    assert _told(again)["g"][0] == "PRUNED"


def test_searcher_rejects_a_bad_budget() -> None:
    with pytest.raises(ValueError, match="max_t"):
        BudgetOptunaSearch(max_t=0)


# ---------------------------------------------------------------- what Optuna's samplers make of PRUNED trials


def _study(sampler: optuna.samplers.BaseSampler, complete: int, pruned: int) -> optuna.Study:
    """``complete`` trials at x in [0, 0.5] on a front of (x, 1 - x), then ``pruned`` PRUNED trials at x = 0.9."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=sampler)
    space: dict[str, optuna.distributions.BaseDistribution] = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    for i in range(complete):
        x = 0.5 * i / max(1, complete - 1)
        study.enqueue_trial({"x": x})
        study.tell(study.ask(space), [x, 1 - x])
    for _ in range(pruned):
        study.enqueue_trial({"x": 0.9})
        study.tell(study.ask(space), state=optuna.trial.TrialState.PRUNED)
    return study


def _probe(study: optuna.Study, n: int) -> list[float]:
    """The next ``n`` points the sampler proposes; told FAIL, which every sampler ignores, so the study stays put."""
    space: dict[str, optuna.distributions.BaseDistribution] = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    xs = []
    for _ in range(n):
        trial = study.ask(space)
        xs.append(trial.params["x"])
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return xs


def test_tpe_counts_pruned_trials_and_samples_away_from_them() -> None:
    def tpe() -> optuna.samplers.TPESampler:
        return optuna.samplers.TPESampler(multivariate=True, n_startup_trials=5, seed=0)

    near = [x for x in _probe(_study(tpe(), complete=10, pruned=0), 100) if x > 0.8]
    avoided = [x for x in _probe(_study(tpe(), complete=10, pruned=30), 100) if x > 0.8]
    assert len(near) > 50 and avoided == []  # PRUNED trials sit in TPE's "bad" group
    # PRUNED trials count for n_startup_trials = 5: with four TPE still draws what its seeded random sampler draws,
    # with five alone it no longer does.
    def random() -> optuna.samplers.RandomSampler:
        return optuna.samplers.RandomSampler(seed=0)

    assert _probe(_study(tpe(), complete=0, pruned=4), 10) == _probe(_study(random(), complete=0, pruned=4), 10)
    assert _probe(_study(tpe(), complete=0, pruned=5), 10) != _probe(_study(random(), complete=0, pruned=5), 10)


def test_nsga2_fills_each_generation_with_complete_trials_only() -> None:
    study = optuna.create_study(directions=["maximize", "maximize"],
                                sampler=optuna.samplers.NSGAIISampler(population_size=4, seed=0))
    space: dict[str, optuna.distributions.BaseDistribution] = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    for _ in range(40):
        trial = study.ask(space)
        x = trial.params["x"]
        if x > 0.5:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, [x, 1 - x])
    generation: dict[int, list[str]] = {}
    for t in study.trials:
        generation.setdefault(t.system_attrs["NSGAIISampler:generation"], []).append(t.state.name)
    last = max(generation)
    assert all(states.count("COMPLETE") == 4 for g, states in generation.items() if g < last)
    assert any(len(states) > 4 for states in generation.values())  # PRUNED ones did not fill a generation


def test_gp_ignores_pruned_trials() -> None:
    def gp() -> optuna.samplers.GPSampler:
        return optuna.samplers.GPSampler(n_startup_trials=5, seed=0)

    assert _probe(_study(gp(), complete=8, pruned=0), 3) == _probe(_study(gp(), complete=8, pruned=20), 3)
