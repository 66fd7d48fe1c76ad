"""Oracle tests for orchestrator.pareto: closed-form fronts and volumes, brute-force grids, edge cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from orchestrator.pareto import (
    crowding_distance,
    hypervolume,
    hypervolume_history,
    nondominated_ranks,
    pareto_mask,
    staircase,
)


def _staircase(n: int) -> np.ndarray:
    """Points (i, n + 1 - i) for i = 1..n: all mutually non-dominated when maximised."""
    i = np.arange(1, n + 1, dtype=float)
    return np.stack([i, n + 1 - i], axis=1)


def _exact_union_volume(points: np.ndarray, reference: np.ndarray) -> float:
    """Brute-force oracle (maximisation): union of boxes [reference, p] on the compressed coordinate grid."""
    points = points[(points > reference).all(axis=1)]
    if points.size == 0:
        return 0.0
    axes = [np.unique(np.append(points[:, d], reference[d])) for d in range(points.shape[1])]
    total = 0.0
    for cell in itertools.product(*(range(len(a) - 1) for a in axes)):
        upper = np.array([a[c + 1] for a, c in zip(axes, cell, strict=True)])
        lower = np.array([a[c] for a, c in zip(axes, cell, strict=True)])
        if (points >= upper).all(axis=1).any():
            total += float(np.prod(upper - lower))
    return total


def _grid_volume(points: np.ndarray, reference: np.ndarray, upper: float, cells: int) -> float:
    """Uniform-grid estimate (maximisation): fraction of cell centres in [reference, upper]^M covered."""
    m = points.shape[1]
    width = (upper - reference) / cells
    centres = np.stack(
        np.meshgrid(*(reference[d] + (np.arange(cells) + 0.5) * width[d] for d in range(m)), indexing="ij"),
        axis=-1,
    ).reshape(-1, m)
    covered = np.zeros(len(centres), dtype=bool)
    for p in points:
        covered |= (centres <= p).all(axis=1)
    return float(covered.sum() * np.prod(width))


# ---------------------------------------------------------------- pareto_mask


def test_staircase_all_on_front_and_dominated_inner_points_off() -> None:
    stairs = _staircase(5)
    inner = stairs[:-1] - 0.5  # each strictly below a stair in both objectives
    points = np.vstack([stairs, inner])
    np.testing.assert_array_equal(pareto_mask(points), [True] * 5 + [False] * 4)


def test_minimise_flips_the_front() -> None:
    points = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    np.testing.assert_array_equal(pareto_mask(points, maximize=False), [True, False, False])
    np.testing.assert_array_equal(pareto_mask(points, maximize=True), [False, True, True])


def test_shuffled_input_gives_permuted_mask() -> None:
    rng = np.random.default_rng(0)
    points = rng.random((60, 3))
    perm = rng.permutation(60)
    np.testing.assert_array_equal(pareto_mask(points[perm]), pareto_mask(points)[perm])


def test_duplicates_on_front_are_all_kept() -> None:
    points = np.array([[1.0, 2.0], [1.0, 2.0], [2.0, 1.0], [0.5, 0.5], [0.5, 0.5]])
    np.testing.assert_array_equal(pareto_mask(points), [True, True, True, False, False])


def test_nan_rows_never_on_front_and_never_dominate() -> None:
    # The NaN row would dominate everything if its NaN were ignored.
    points = np.array([[np.nan, 10.0], [1.0, 1.0], [0.5, 0.5]])
    np.testing.assert_array_equal(pareto_mask(points), [False, True, False])


def test_infinities_are_ordinary_values() -> None:
    points = np.array([[np.inf, 0.0], [1.0, 1.0], [-np.inf, 5.0], [np.inf, -1.0]])
    np.testing.assert_array_equal(pareto_mask(points), [True, True, True, False])
    np.testing.assert_array_equal(pareto_mask([[np.inf, 1.0], [1.0, 1.0]]), [True, False])


def test_empty_inputs() -> None:
    empties: list[object] = [np.empty((0, 2)), np.array([]), []]
    for empty in empties:
        assert pareto_mask(empty).shape == (0,)
        assert pareto_mask(empty).dtype == bool
        assert nondominated_ranks(empty).shape == (0,)
        assert crowding_distance(empty).shape == (0,)
        assert hypervolume(empty, [0.0, 0.0]) == 0.0
        assert hypervolume_history(empty, [0.0, 0.0]).shape == (0,)


def test_mixed_directions() -> None:
    # (accuracy: maximise, loss: minimise)
    points = np.array([[0.9, 0.5], [0.8, 0.3], [0.7, 0.6], [0.9, 0.5]])
    np.testing.assert_array_equal(pareto_mask(points, maximize=[True, False]), [True, True, False, True])
    np.testing.assert_array_equal(pareto_mask(points, maximize=[False, True]), [False, False, True, False])


def test_bad_arguments_raise_naming_the_argument() -> None:
    with pytest.raises(ValueError, match="points"):
        pareto_mask(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="points"):
        pareto_mask(np.zeros(3))
    with pytest.raises(ValueError, match="maximize"):
        pareto_mask(np.zeros((2, 2)), maximize=[True, False, True])
    with pytest.raises(ValueError, match="maximize"):
        nondominated_ranks(np.zeros((2, 2)), maximize="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="maximize"):
        crowding_distance(np.zeros((2, 2)), maximize=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reference"):
        hypervolume(np.ones((2, 2)), [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="reference"):
        hypervolume(np.ones((2, 2)), [0.0, np.nan])
    with pytest.raises(ValueError, match="reference"):
        hypervolume_history(np.ones((2, 2)), [0.0, -np.inf])


# ---------------------------------------------------------------- ranks and crowding


def test_ranks_on_hand_built_fronts() -> None:
    points = np.array(
        [
            [2.0, 2.0],  # front 2: dominated by (1, 2) and (2, 1)
            [0.0, 2.0],  # front 0
            [1.0, 2.0],  # front 1: dominated by (0, 2)
            [np.nan, 0.0],  # no rank
            [1.0, 1.0],  # front 0
            [3.0, 3.0],  # front 3
            [2.0, 0.0],  # front 0
            [2.0, 1.0],  # front 1: dominated by (1, 1) and (2, 0)
            [1.0, 1.0],  # front 0 (duplicate)
        ]
    )
    expected = [2, 0, 1, -1, 0, 3, 0, 1, 0]
    np.testing.assert_array_equal(nondominated_ranks(points, maximize=False), expected)
    perm = np.random.default_rng(1).permutation(len(points))
    np.testing.assert_array_equal(nondominated_ranks(points[perm], maximize=False), np.array(expected)[perm])


def test_rank_zero_matches_pareto_mask() -> None:
    points = np.random.default_rng(2).random((80, 2))
    np.testing.assert_array_equal(nondominated_ranks(points) == 0, pareto_mask(points))


def test_crowding_distance_four_point_front() -> None:
    points = np.array([[1.0, 6.0], [0.0, 10.0], [6.0, 0.0], [3.0, 3.0]])
    # ranges 6 and 10; (1, 6): 3/6 + 7/10; (3, 3): 5/6 + 6/10
    expected = [3 / 6 + 7 / 10, np.inf, np.inf, 5 / 6 + 6 / 10]
    np.testing.assert_allclose(crowding_distance(points), expected)
    np.testing.assert_allclose(crowding_distance(points, maximize=False), expected)


def test_crowding_distance_small_sets_zero_range_and_nan() -> None:
    assert np.all(np.isinf(crowding_distance([[1.0, 2.0], [3.0, 0.0]])))
    # second objective is constant and adds nothing; first gives (2 - 0) / 3 to the middle
    np.testing.assert_allclose(
        crowding_distance([[0.0, 5.0], [2.0, 5.0], [3.0, 5.0], [1.0, 5.0]]), [np.inf, 2 / 3, np.inf, 2 / 3]
    )
    result = crowding_distance([[0.0, 1.0], [np.nan, 1.0], [1.0, 0.0]])
    assert np.isnan(result[1])
    assert np.all(np.isinf(result[[0, 2]]))


# ---------------------------------------------------------------- hypervolume


def test_single_box_and_one_dimension() -> None:
    assert hypervolume([[1.0, 1.0]], [0.0, 0.0]) == 1.0
    assert hypervolume([[1.0, 1.0]], [2.0, 3.0], maximize=False) == 2.0
    assert hypervolume([[1.0], [3.0], [2.0]], [0.0]) == 3.0
    assert hypervolume([[1.0], [3.0], [2.0]], [5.0], maximize=False) == 4.0


@pytest.mark.parametrize("n", [1, 2, 7, 30])
def test_staircase_hypervolume_closed_form(n: int) -> None:
    stairs = _staircase(n)
    assert hypervolume(stairs, [0.0, 0.0]) == pytest.approx(n * (n + 1) / 2)
    with_inner = np.vstack([stairs, stairs - 0.5])
    assert hypervolume(with_inner, [0.0, 0.0]) == pytest.approx(n * (n + 1) / 2)


def test_union_of_rectangles_by_hand_mixed_directions() -> None:
    points = np.array([[0.9, 0.5], [0.8, 0.3], [0.7, 0.6]])
    # [0, .9] x [.5, 1] = .45, [0, .8] x [.3, 1] = .56, overlap [0, .8] x [.5, 1] = .40
    assert hypervolume(points, [0.0, 1.0], maximize=[True, False]) == pytest.approx(0.61)
    flipped = points * np.array([-1.0, 1.0])
    assert hypervolume(flipped, [0.0, 1.0], maximize=False) == pytest.approx(0.61)


def test_shuffled_and_duplicated_input_same_hypervolume() -> None:
    rng = np.random.default_rng(3)
    for m in (2, 3):
        points = rng.random((40, m))
        ref = np.zeros(m)
        base = hypervolume(points, ref)
        assert hypervolume(points[rng.permutation(40)], ref) == pytest.approx(base, rel=1e-12)
        assert hypervolume(np.vstack([points, points]), ref) == pytest.approx(base, rel=1e-12)


def test_points_not_beating_reference_nan_and_inf() -> None:
    # (1, 0) ties the reference in objective 1; (-1, 5) is worse in objective 0; NaN row ignored
    points = np.array([[1.0, 1.0], [1.0, 0.0], [-1.0, 5.0], [np.nan, 9.0]])
    assert hypervolume(points, [0.0, 0.0]) == 1.0
    assert hypervolume([[np.inf, 0.0], [1.0, 1.0]], [0.0, 0.0]) == 1.0
    assert hypervolume([[np.inf, 1.0], [1.0, 1.0]], [0.0, 0.0]) == np.inf
    assert hypervolume([[-np.inf, 5.0], [1.0, 1.0]], [0.0, 0.0]) == 1.0
    assert hypervolume([[np.inf, 1.0, 1.0]], [0.0, 0.0, 0.0]) == np.inf


def test_three_d_boxes_by_inclusion_exclusion() -> None:
    two = np.array([[2.0, 2.0, 2.0], [3.0, 1.0, 1.0]])
    assert hypervolume(two, [0.0, 0.0, 0.0]) == pytest.approx(8 + 3 - 2)
    three = np.vstack([two, [1.0, 3.0, 1.0]])
    # pairwise overlaps 2, 2, 1; triple overlap 1
    assert hypervolume(three, [0.0, 0.0, 0.0]) == pytest.approx(8 + 3 + 3 - 2 - 2 - 1 + 1)
    assert hypervolume(-three, [0.0, 0.0, 0.0], maximize=False) == pytest.approx(10)


@pytest.mark.parametrize(("m", "n", "cells", "rel"), [(2, 25, 200, 0.02), (3, 15, 60, 0.03)])
def test_hypervolume_matches_uniform_grid(m: int, n: int, cells: int, rel: float) -> None:
    rng = np.random.default_rng(10 + m)
    points = rng.random((n, m))
    ref = np.zeros(m)
    estimate = _grid_volume(points, ref, upper=1.0, cells=cells)
    assert hypervolume(points, ref) == pytest.approx(estimate, rel=rel)


@pytest.mark.parametrize(("m", "n"), [(2, 40), (3, 20), (4, 8)])
def test_hypervolume_matches_exact_cell_oracle(m: int, n: int) -> None:
    rng = np.random.default_rng(20 + m)
    for _ in range(3):
        points = rng.random((n, m)) - 0.1  # some rows fail to beat the reference
        ref = np.zeros(m)
        assert hypervolume(points, ref) == pytest.approx(_exact_union_volume(points, ref), rel=1e-9)


def test_hypervolume_history_by_hand() -> None:
    points = np.array([[1.0, 3.0], [3.0, 1.0], [2.0, 2.0], [0.5, 0.5], [np.nan, 9.0]])
    np.testing.assert_allclose(hypervolume_history(points, [0.0, 0.0]), [3, 5, 6, 6, 6])


@pytest.mark.parametrize("m", [2, 3])
def test_hypervolume_history_non_decreasing_and_ends_at_total(m: int) -> None:
    rng = np.random.default_rng(30 + m)
    points = rng.random((50, m))
    history = hypervolume_history(points, np.zeros(m))
    assert history.shape == (50,)
    assert np.all(np.diff(history) >= 0)
    assert history[-1] == pytest.approx(hypervolume(points, np.zeros(m)), rel=1e-12)
    assert history[9] == pytest.approx(hypervolume(points[:10], np.zeros(m)), rel=1e-12)


def test_staircase_goes_through_the_attained_corners() -> None:
    """Two maximised objectives: (x1, y1) -> (x1, y2) -> (x2, y2) -> ...; dominated, NaN and duplicate rows add
    nothing; the other orientations turn the corners the other way."""
    points = [[0.9, 0.1], [0.7, 0.3], [0.8, 0.2], [0.6, 0.05], [0.7, 0.3], [np.nan, 0.9]]
    expected = [[0.7, 0.3], [0.7, 0.2], [0.8, 0.2], [0.8, 0.1], [0.9, 0.1]]
    np.testing.assert_array_equal(staircase(points), expected)
    np.testing.assert_array_equal(staircase(points[::-1]), expected)  # order does not matter
    np.testing.assert_array_equal(staircase([[0.5, 0.5]]), [[0.5, 0.5]])
    assert staircase(np.empty((0, 2))).shape == (0, 2)
    np.testing.assert_array_equal(staircase([[1, 3], [2, 2], [3, 1]], maximize=False),
                                  [[1, 3], [2, 3], [2, 2], [3, 2], [3, 1]])
    np.testing.assert_array_equal(staircase([[1, 1], [2, 2]], maximize=[False, True]), [[1, 1], [2, 1], [2, 2]])
    # Every corner is weakly dominated by a front point: the staircase claims nothing that was not measured.
    rng = np.random.default_rng(0)
    for _ in range(50):
        pts = rng.uniform(size=(12, 2))
        front = pts[pareto_mask(pts)]
        for corner in staircase(pts):
            assert ((front >= corner - 1e-12).all(axis=1)).any()
    with pytest.raises(ValueError, match="2 objectives"):
        staircase(np.ones((3, 3)))
