"""Oracle tests for the rung decision of multi-objective successive halving (orchestrator.pareto.rung_*)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from orchestrator.pareto import rung_continues, rung_keep, rung_position


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Maximisation dominance on plain tuples."""
    return all(x >= y for x, y in zip(a, b, strict=True)) and any(x > y for x, y in zip(a, b, strict=True))


def _oracle_position(recorded: list[tuple[float, ...]], new: tuple[float, ...]) -> int:
    """The documented ranking, spelled out with loops (maximisation, finite values)."""
    rows = [*recorded, new]
    me = len(rows) - 1
    if any(math.isnan(v) for v in new):
        return sum(not any(math.isnan(v) for v in r) for r in recorded) + 1
    alive = {i for i, r in enumerate(rows) if not any(math.isnan(v) for v in r)}
    lo = [min(rows[i][m] for i in alive) for m in range(len(new))]
    hi = [max(rows[i][m] for i in alive) for m in range(len(new))]
    better = 0
    while True:
        front = {i for i in alive if not any(_dominates(rows[j], rows[i]) for j in alive)}
        if me in front:
            break
        better += len(front)
        alive -= front

    def crowding(i: int) -> float:
        total = 0.0
        for m in range(len(new)):
            values = sorted({rows[j][m] for j in front})
            if len(values) == 1:
                continue
            v = rows[i][m]
            if v in (values[0], values[-1]):
                return math.inf
            k = values.index(v)
            total += (values[k + 1] - values[k - 1]) / (hi[m] - lo[m])
        return total

    mine = crowding(me)
    return better + sum(crowding(j) > mine for j in front if j != me) + 1


def _syne_tune_rule(recorded: np.ndarray, new: np.ndarray, eta: float) -> bool:
    """Syne Tune's MOASHA rung (continue?) for rows totally ordered by dominance: it takes the argsort order
    of the rung (best first) as if it held each trial's rank and reads the newcomer's entry."""
    rows = np.vstack([recorded, new])
    order = np.argsort(-rows.sum(axis=1), kind="stable")  # best first; valid because the rows form a chain
    ranks = np.searchsorted(np.sort(order), order) / len(order)
    return bool(ranks[-1] <= 1 / eta)


def _random_rung(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    """Random rows; half the time on a coarse grid so that ties and duplicates are common."""
    if rng.random() < 0.5:
        return rng.integers(0, 4, size=(n, m)).astype(float)
    return rng.random((n, m))


# ---------------------------------------------------------------- the cut


def test_keep_is_floor_of_n_over_eta_and_at_least_one() -> None:
    assert [rung_keep(n, 3) for n in range(1, 11)] == [1, 1, 1, 1, 1, 2, 2, 2, 3, 3]
    assert [rung_keep(n, 2) for n in range(1, 7)] == [1, 1, 1, 2, 2, 3]
    assert rung_keep(5, 2.5) == 2
    assert rung_keep(4, 2.5) == 1
    # n / eta that floating point puts a hair below a whole number keeps that number: 11 / 2.2 is 5.
    assert rung_keep(11, 2.2) == 5 and rung_keep(23, 2.3) == 10 and rung_keep(12, 2.4) == 5


def test_fewer_than_eta_recorded_always_continues() -> None:
    worst = [-1.0, -1.0]
    for eta in (2, 3, 4):
        for n in range(eta):
            recorded = np.ones((n, 2))
            assert rung_continues(recorded, worst, eta)
            assert rung_continues(recorded, [np.nan, 0.0], eta)
    assert rung_continues(np.empty((0, 2)), worst, 2)
    assert rung_continues([], worst, 2)
    assert rung_continues(np.ones((2, 2)), worst, 2.5)
    assert not rung_continues(np.ones((3, 2)), worst, 2.5)


# ---------------------------------------------------------------- closed-form cases


def test_middle_of_a_three_point_front_stops_and_a_new_extreme_continues() -> None:
    # All on one front; extremes have infinite crowding, the middle one 1/1 + 1/1 = 2; keep floor(3/2) = 1.
    assert rung_position([[1.0, 0.0], [0.0, 1.0]], [0.5, 0.5]) == 3
    assert not rung_continues([[1.0, 0.0], [0.0, 1.0]], [0.5, 0.5], 2)
    # A new extreme ties the other extreme (both inf) and ties go to the newcomer.
    assert rung_position([[0.5, 0.5], [0.0, 1.0]], [1.0, 0.0]) == 1
    assert rung_continues([[0.5, 0.5], [0.0, 1.0]], [1.0, 0.0], 2)


def test_front_order_then_cut() -> None:
    # (1, 1) front 0; the newcomer front 1; (0, 0) front 2.
    assert rung_position([[1.0, 1.0], [0.0, 0.0]], [0.5, 0.5]) == 2
    assert not rung_continues([[1.0, 1.0], [0.0, 0.0]], [0.5, 0.5], 2)  # keep floor(3/2) = 1
    assert rung_continues([[1.0, 1.0], [0.0, 0.0], [0.2, 0.2]], [0.5, 0.5], 2)  # keep floor(4/2) = 2


def test_crowding_ties_inside_the_front_go_to_the_newcomer() -> None:
    # Five on one front: (0, 4) and (4, 0) are boundaries (inf); (1, 3), (3, 1) and the newcomer (2, 2) all have
    # crowding 2/4 + 2/4 = 1 on ranges of 4. (0, 0) is dominated. Position 3 of 6.
    recorded = [[0.0, 4.0], [1.0, 3.0], [3.0, 1.0], [4.0, 0.0], [0.0, 0.0]]
    assert rung_position(recorded, [2.0, 2.0]) == 3
    assert not rung_continues(recorded, [2.0, 2.0], 3)  # keep floor(6/3) = 2
    assert rung_continues(recorded, [2.0, 2.0], 2)  # keep 3


def test_crowding_is_normalised_over_the_rung_not_the_front() -> None:
    # Front (0, 10), (1, 2), (2, 1), (10, 0). On ranges 10 x 10 the inner two tie at 2/10 + 9/10 (position 3).
    # (-90, 0) is dominated but stretches objective 0 to a range of 100: (1, 2) then scores 2/100 + 9/10 = 0.92
    # and the newcomer (2, 1) 9/100 + 2/10 = 0.29, so it drops to position 4.
    front = [[0.0, 10.0], [1.0, 2.0], [10.0, 0.0]]
    assert rung_position(front, [2.0, 1.0]) == 3
    assert rung_position([*front, [-90.0, 0.0]], [2.0, 1.0]) == 4


def test_minimised_and_mixed_objectives() -> None:
    # Same cases as above with objective 1 flipped and declared minimised.
    flip = np.array([1.0, -1.0])
    recorded = np.array([[1.0, 1.0], [0.0, 0.0], [0.2, 0.2]])
    assert rung_continues(recorded * flip, np.array([0.5, 0.5]) * flip, 2, maximize=[True, False])
    assert not rung_continues(recorded[:2] * flip, np.array([0.5, 0.5]) * flip, 2, maximize=[True, False])
    assert rung_continues(-recorded, [-0.5, -0.5], 2, maximize=False)


# ---------------------------------------------------------------- dominating and dominated newcomers


def test_syne_tune_argsort_as_rank_case_continues() -> None:
    # Recorded best-first; the newcomer dominates all of them. Its position is 1, but the argsort order is
    # [3, 0, 1, 2], whose last entry (2, the worst trial's index) Syne Tune reads as the newcomer's rank: 2/4 > 1/3.
    recorded = np.array([[0.3, 0.3], [0.2, 0.2], [0.1, 0.1]])
    new = np.array([0.9, 0.9])
    assert not _syne_tune_rule(recorded, new, 3)
    assert rung_position(recorded, new) == 1
    assert rung_continues(recorded, new, 3)
    longer = np.array([[0.5, 0.4], [0.4, 0.3], [0.3, 0.2], [0.2, 0.1]])
    assert not _syne_tune_rule(longer, new, 2)
    assert rung_continues(longer, new, 2)


@pytest.mark.parametrize("m", [2, 3])
def test_a_newcomer_dominating_every_recorded_trial_always_continues(m: int) -> None:
    rng = np.random.default_rng(100 + m)
    for case in range(400):
        n = int(rng.integers(0, 30))
        eta = float(rng.choice([2, 3, 4, 2.5]))
        recorded = _random_rung(rng, n, m)
        if n and rng.random() < 0.2:
            recorded[rng.integers(0, n), rng.integers(0, m)] = np.nan
        finite = recorded[~np.isnan(recorded).any(axis=1)]
        top = finite.max(axis=0) if len(finite) else np.zeros(m)
        if case % 2:  # strictly better everywhere
            new = top + rng.random(m) + 1e-6
        else:  # weakly: ties the best in all but one objective
            new = top.copy()
            new[rng.integers(0, m)] += 1e-3
        maximize = [bool(b) for b in rng.integers(0, 2, size=m)]
        signs = np.where(maximize, 1.0, -1.0)
        assert rung_position(recorded * signs, new * signs, maximize) == 1
        assert rung_continues(recorded * signs, new * signs, eta, maximize)


def test_a_newcomer_dominated_by_every_recorded_trial_stops_once_eta_are_recorded() -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        eta = int(rng.integers(2, 5))
        n = int(rng.integers(0, 20))
        recorded = _random_rung(rng, n, 2) + 1.0
        new = recorded.min(axis=0) - rng.random(2) - 1e-6 if n else np.zeros(2)
        assert rung_continues(recorded, new, eta) == (n < eta)
        if n:
            assert rung_position(recorded, new) == n + 1


# ---------------------------------------------------------------- order independence and the oracle


def test_decision_is_the_same_for_every_order_of_the_recorded_trials() -> None:
    rng = np.random.default_rng(11)
    for _ in range(150):
        n, m = int(rng.integers(2, 12)), int(rng.integers(2, 4))
        recorded = _random_rung(rng, n, m)
        new = recorded[rng.integers(0, n)].copy() if rng.random() < 0.3 else _random_rung(rng, 1, m)[0]
        eta = float(rng.choice([2, 3]))
        position = rung_position(recorded, new)
        decision = rung_continues(recorded, new, eta)
        for _ in range(6):
            shuffled = recorded[rng.permutation(n)]
            assert rung_position(shuffled, new) == position
            assert rung_continues(shuffled, new, eta) == decision


def test_every_order_of_a_small_tied_rung() -> None:
    recorded = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [0.0, 0.0]])
    decisions = {rung_continues(np.array(p), [0.5, 0.5], 2) for p in itertools.permutations(recorded)}
    positions = {rung_position(np.array(p), [0.5, 0.5]) for p in itertools.permutations(recorded)}
    # Front: two copies of (1, 0) and (0, 1) are boundaries (inf); the recorded (0.5, 0.5) ties the newcomer at
    # 1 + 1 = 2. Three rows ahead: position 4 of 6, keep floor(6/2) = 3.
    assert positions == {4}
    assert decisions == {False}


@pytest.mark.parametrize("m", [2, 3])
def test_position_matches_the_loop_oracle(m: int) -> None:
    rng = np.random.default_rng(20 + m)
    for _ in range(300):
        n = int(rng.integers(0, 15))
        recorded = _random_rung(rng, n, m)
        new = recorded[rng.integers(0, n)].copy() if n and rng.random() < 0.3 else _random_rung(rng, 1, m)[0]
        if n and rng.random() < 0.2:
            recorded[rng.integers(0, n), rng.integers(0, m)] = np.nan
        if rng.random() < 0.1:
            new[rng.integers(0, m)] = np.nan
        rows = [tuple(float(v) for v in r) for r in recorded]
        assert rung_position(recorded, new) == _oracle_position(rows, tuple(float(v) for v in new))


# ---------------------------------------------------------------- duplicates and NaN


def test_identical_vectors_are_treated_alike() -> None:
    # A copy of the best recorded trial ties it and continues where the cut keeps one.
    recorded = [[1.0, 1.0], [0.5, 0.5], [0.2, 0.2]]
    assert rung_position(recorded, [1.0, 1.0]) == 1
    assert rung_continues(recorded, [1.0, 1.0], 3)
    # Three recorded copies of the newcomer's vector: none is ahead of it.
    assert rung_position([[0.5, 0.5]] * 3, [0.5, 0.5]) == 1
    assert rung_continues([[0.5, 0.5]] * 3, [0.5, 0.5], 2)
    # A copy of a dominated vector still stops behind the trial dominating both.
    assert not rung_continues([[1.0, 1.0], [0.2, 0.2]], [0.2, 0.2], 2)


def test_nan_never_beats_a_number() -> None:
    nan = np.nan
    recorded = [[nan, 1.0], [nan, nan], [0.1, 0.1]]
    # A finite newcomer beats every NaN row, even one whose other objective is larger.
    assert rung_position(recorded, [0.0, 0.0]) == 2
    assert rung_position(recorded, [0.5, 0.5]) == 1
    assert rung_continues(recorded, [0.5, 0.5], 3)
    # A NaN newcomer comes after every finite row and stops once eta trials are recorded.
    assert rung_position(recorded, [nan, 9.0]) == 2
    assert not rung_continues(recorded, [nan, 9.0], 2)  # position 2 is within keep 2, but NaN stops
    assert not rung_continues([[nan, nan]] * 3, [nan, 9.0], 3)
    assert rung_continues([[nan, nan]] * 2, [nan, 9.0], 3)  # fewer than eta recorded


def test_infinities_are_ordinary_values() -> None:
    # (1, 1) dominates (0, 1) and (0.5, 0.5); it shares the front with (inf, 0), both boundaries: a tie.
    assert rung_position([[np.inf, 0.0], [0.0, 1.0], [0.5, 0.5]], [1.0, 1.0]) == 1
    # Front (inf, 0), (0, 2), (1, 1): objective 0 has an infinite range and adds only its boundaries; objective 1
    # gives the newcomer (2 - 0) / 2 = 1, behind the two boundaries.
    assert rung_position([[np.inf, 0.0], [0.0, 2.0], [0.5, 0.5]], [1.0, 1.0]) == 3


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="reduction_factor"):
        rung_continues([[1.0, 1.0]], [0.0, 0.0], 1)
    with pytest.raises(ValueError, match="objectives"):
        rung_continues([[1.0, 1.0, 1.0]], [0.0, 0.0], 2)
    with pytest.raises(ValueError, match="new"):
        rung_position([[1.0, 1.0]], [[0.0, 0.0]])
    with pytest.raises(ValueError, match="maximize"):
        rung_position([[1.0, 1.0]], [0.0, 0.0], maximize=[True])
