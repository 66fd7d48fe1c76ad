"""Pareto fronts, non-dominated ranks, crowding distance, hypervolume and the rung decision of multi-objective
successive halving, over numpy arrays.

Convention shared by every function:

* ``points`` is an ``(N, M)`` float array, one row per trial and one column per objective. An empty
  input (``N == 0``, including a 1-D array of size 0) gives an empty result.
* ``maximize`` is one bool for all objectives or a sequence of ``M`` bools saying, per objective,
  whether larger is better. Internally maximised columns are negated, so below "better" means smaller.
* Dominance: ``a`` dominates ``b`` when ``a`` is no worse in every objective and strictly better in at
  least one. Identical non-dominated points therefore all lie on the front.
* NaN: a row holding any NaN is never on the front, never dominates another row, gets rank ``-1``,
  crowding distance NaN, and adds no hypervolume.
* Infinity: ``+inf`` and ``-inf`` are ordinary values ordered as usual, so a maximised ``+inf`` beats
  every finite value. A point with an infinite coordinate that beats the reference (and that strictly
  beats it in every other objective) makes the hypervolume ``inf``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Upper bound on the elements of one (rows, N, M) comparison block, to keep memory bounded for large N.
_BLOCK_ELEMENTS = 1 << 22

Maximize = bool | Sequence[bool]


def _as_points(points: object, maximize: Maximize) -> np.ndarray:
    """Return ``points`` as an (N, M) float array; a 1-D empty input becomes (0, M)."""
    arr = np.asarray(points, dtype=float)
    if arr.ndim == 1 and arr.size == 0:
        n_obj = len(maximize) if isinstance(maximize, Sequence | np.ndarray) else 0
        return arr.reshape(0, n_obj)
    if arr.ndim != 2:
        raise ValueError(f"points must be a 2-D (N, M) array, got shape {arr.shape}")
    if arr.shape[0] > 0 and arr.shape[1] == 0:
        raise ValueError("points must have at least one objective column, got shape (N, 0)")
    return arr


def _signs(maximize: Maximize, n_obj: int) -> np.ndarray:
    """Return an (M,) array of -1 for maximised and +1 for minimised objectives."""
    if isinstance(maximize, bool | np.bool_):
        flags = np.full(n_obj, bool(maximize))
    else:
        is_sequence = isinstance(maximize, Sequence | np.ndarray) and not isinstance(maximize, str)
        if not is_sequence or not all(isinstance(f, bool | np.bool_) for f in maximize):
            raise ValueError(f"maximize must be a bool or a sequence of bools, got {maximize!r}")
        flags = np.array([bool(f) for f in maximize], dtype=bool)
        if flags.shape != (n_obj,):
            raise ValueError(f"maximize has {flags.size} entries but points have {n_obj} objectives")
    return np.where(flags, -1.0, 1.0)


def _to_min(points: object, maximize: Maximize) -> tuple[np.ndarray, np.ndarray]:
    """Return (minimisation array (N, M), valid-row mask (N,)) where valid means no NaN."""
    arr = _as_points(points, maximize)
    q = arr * _signs(maximize, arr.shape[1])
    return q, ~np.isnan(q).any(axis=1)


def _dominance_matrix(q: np.ndarray) -> np.ndarray:
    """(N, N) bool; entry [i, j] is True when row i dominates row j. ``q`` is minimised, NaN-free."""
    n, m = q.shape
    dom = np.empty((n, n), dtype=bool)
    step = max(1, _BLOCK_ELEMENTS // max(1, n * m))
    for start in range(0, n, step):
        block = q[start : start + step, None, :]  # (B, 1, M) against (1, N, M)
        no_worse = (block <= q[None]).all(axis=2)
        better = (block < q[None]).any(axis=2)
        dom[start : start + step] = no_worse & better
    return dom


def _nondominated(q: np.ndarray) -> np.ndarray:
    """(N,) bool mask of rows of the minimised, NaN-free ``q`` that no other row dominates."""
    return ~np.any(_dominance_matrix(q), axis=0)


def pareto_mask(points: object, maximize: Maximize = True) -> np.ndarray:
    """Return an (N,) bool mask, True for the non-dominated rows of ``points``.

    Identical non-dominated rows are all on the front; rows holding NaN never are and never dominate.
    """
    q, valid = _to_min(points, maximize)
    mask = np.zeros(q.shape[0], dtype=bool)
    mask[valid] = _nondominated(q[valid])
    return mask


def nondominated_ranks(points: object, maximize: Maximize = True) -> np.ndarray:
    """Return (N,) int front indices: 0 for the Pareto front, 1 for the front once it is removed, ...

    Rows holding NaN get rank -1.
    """
    q, valid = _to_min(points, maximize)
    ranks = np.full(q.shape[0], -1, dtype=int)
    index = np.flatnonzero(valid)
    dom = _dominance_matrix(q[index])
    n_dominators = dom.sum(axis=0)
    remaining = np.ones(index.size, dtype=bool)
    rank = 0
    while remaining.any():
        front = remaining & (n_dominators == 0)
        ranks[index[front]] = rank
        remaining &= ~front
        n_dominators -= dom[front].sum(axis=0)
        rank += 1
    return ranks


def crowding_distance(points: object, maximize: Maximize = True) -> np.ndarray:
    """Return the (N,) NSGA-II crowding distance of each row within ``points`` (call once per front).

    Per objective, the rows with the smallest and largest value get ``inf`` and each other row adds
    the gap between its two sorted neighbours divided by the objective's range. An objective with zero
    range adds 0 to every row, boundaries included; one with an infinite range adds only its boundary
    ``inf``. A set of at most two valid
    rows is all ``inf``. Rows holding NaN are left out and get NaN. Ties are broken by input order.
    """
    q, valid = _to_min(points, maximize)
    dist = np.full(q.shape[0], np.nan)
    dist[valid] = _crowding_min(q[valid])
    return dist


def _crowding_min(q: np.ndarray) -> np.ndarray:
    """Crowding distance of the NaN-free rows of ``q`` (direction does not matter)."""
    n = q.shape[0]
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for column in q.T:
        order = np.argsort(column, kind="stable")
        values = column[order]
        span = values[-1] - values[0]
        if span > 0:
            dist[order[[0, -1]]] = np.inf
        if span > 0 and np.isfinite(span):
            dist[order[1:-1]] += (values[2:] - values[:-2]) / span
    return dist


def staircase(points: object, maximize: Maximize = True) -> np.ndarray:
    """The attainment surface of two objectives: the (K, 2) vertices of the staircase through the front of
    ``points``, ordered by the first objective.

    Between two neighbouring front points the line goes first along the second objective, then along the first,
    through the corner both points attain (for two maximised objectives, (x1, y1) -> (x1, y2) -> (x2, y2) with
    x1 < x2, y1 > y2): a straight segment between them would claim trade-offs nobody measured. Dominated rows,
    NaN rows and duplicates of a front point add nothing; a front of one point is that point.
    """
    q, valid = _to_min(points, maximize)
    if q.shape[1] != 2:
        raise ValueError(f"a staircase needs exactly 2 objectives, got {q.shape[1]}")
    arr = np.asarray(points, dtype=float).reshape(q.shape)
    front = np.unique(arr[pareto_mask(arr, maximize)], axis=0)
    if front.shape[0] == 0:
        return np.empty((0, 2))
    front = front[np.argsort(front[:, 0], kind="stable")]  # along x
    if _signs(maximize, 2)[0] < 0:  # x maximised: the corner keeps the smaller x and the next point's y
        corners = np.column_stack([front[:-1, 0], front[1:, 1]])
    else:  # x minimised: the corner keeps the larger x and this point's y
        corners = np.column_stack([front[1:, 0], front[:-1, 1]])
    out = np.empty((2 * front.shape[0] - 1, 2))
    out[0::2], out[1::2] = front, corners
    return out


def _as_reference(reference: object, n_obj: int, maximize: Maximize) -> np.ndarray:
    """Return the reference point as a finite (M,) minimisation array or raise ValueError."""
    ref = np.asarray(reference, dtype=float)
    if ref.shape != (n_obj,):
        raise ValueError(f"reference must have shape ({n_obj},) to match points, got {ref.shape}")
    if not np.isfinite(ref).all():
        raise ValueError(f"reference must be finite, got {ref.tolist()}")
    return ref * _signs(maximize, n_obj)


def _prepare_hv(points: object, reference: object, maximize: Maximize) -> tuple[np.ndarray, np.ndarray]:
    """Return (minimised points (N, M), minimised reference (M,)) for the hypervolume functions."""
    ref_arr = np.asarray(reference, dtype=float)
    n_obj = ref_arr.shape[0] if ref_arr.ndim == 1 else -1
    arr = np.asarray(points, dtype=float)
    if arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, max(n_obj, 0))
    q, _ = _to_min(arr, maximize)
    return q, _as_reference(reference, q.shape[1], maximize)


def _beats_reference(q: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """(N,) mask of rows strictly better than ``ref`` in every objective (NaN rows are False)."""
    return np.all(q < ref, axis=1)


def hypervolume(points: object, reference: object, maximize: Maximize = True) -> float:
    """Return the volume dominated by ``points`` and bounded by ``reference``.

    ``reference`` is a finite point, in the same orientation as ``points``, that should be worse than
    them in every objective; rows that do not strictly beat it in every objective, and NaN rows, add
    nothing. Exact for any M: a length for M == 1, a sweep for M == 2 and slicing along the last
    objective (HSO) for M >= 3, which suits a few hundred points in 3-4 objectives.
    """
    q, ref = _prepare_hv(points, reference, maximize)
    return _hv_min(q[_beats_reference(q, ref)], ref)


def _hv_min(q: np.ndarray, ref: np.ndarray) -> float:
    """Hypervolume of minimised rows that all strictly beat ``ref``."""
    if q.shape[0] == 0:
        return 0.0
    if np.isneginf(q).any():
        return float("inf")
    if q.shape[1] == 1:
        return float(ref[0] - q[:, 0].min())
    if q.shape[1] == 2:
        return _hv_2d(q, ref)
    return _hv_slices(q, ref)


def _hv_2d(q: np.ndarray, ref: np.ndarray) -> float:
    """2-D sweep: in x order each point adds the strip below the lowest y seen so far."""
    order = np.lexsort((q[:, 1], q[:, 0]))
    x, y = q[order, 0], q[order, 1]
    lowest_before = np.concatenate(([ref[1]], np.minimum.accumulate(y)[:-1]))
    adds = y < lowest_before
    return float(np.sum((ref[0] - x[adds]) * (lowest_before[adds] - y[adds])))


def _hv_slices(q: np.ndarray, ref: np.ndarray) -> float:
    """Slice along the last objective; each slab's volume is depth times an (M-1)-D hypervolume."""
    q = q[_nondominated(q)]
    q = q[np.argsort(q[:, -1], kind="stable")]
    bounds = np.append(q[:, -1], ref[-1])
    total = 0.0
    for i in range(q.shape[0]):
        depth = bounds[i + 1] - bounds[i]
        if depth > 0:
            total += depth * _hv_min(q[: i + 1, :-1], ref[:-1])
    return total


def hypervolume_history(
    points_in_finish_order: object, reference: object, maximize: Maximize = True
) -> np.ndarray:
    """Return the (N,) hypervolume of the first k rows for k = 1..N, e.g. to log it as trials finish.

    Same conventions as :func:`hypervolume`; the result is non-decreasing.
    """
    q, ref = _prepare_hv(points_in_finish_order, reference, maximize)
    useful = _beats_reference(q, ref)
    history = np.zeros(q.shape[0])
    archive = q[:0]
    current = 0.0
    for k in range(q.shape[0]):
        if useful[k] and not _is_weakly_dominated(q[k], archive):
            archive = np.vstack([archive, q[k]])
            archive = archive[_nondominated(archive)]
            current = _hv_min(archive, ref)
        history[k] = current
    return history


def _is_weakly_dominated(row: np.ndarray, archive: np.ndarray) -> bool:
    """True when some archive row is no worse than ``row`` in every objective (so it adds no volume)."""
    return bool((archive <= row).all(axis=1).any())


# ---------------------------------------------------------------- successive halving at a rung


_WHOLE = 1e-9  # how far floating point may put a product of whole numbers past one (25 * 2.2 = 55.000000000000007)


def rung_levels(grace_period: float, reduction_factor: float, max_t: float) -> tuple[int, ...]:
    """The rungs of successive halving, in whole units of progress (1-based epochs): ``ceil(grace * eta**k)``
    for every ``k`` where that is below ``max_t`` (a result at ``max_t`` is final, never ranked at a rung).

    A level is met at the end of the first whole epoch at or past it (eta 2.5: 1, 2.5, 6.25 are met at 1, 3, 7).
    Every user of the rungs (the scheduler, the probes a trial runs for it) takes them from here, so they agree.
    """
    levels: list[int] = []
    level = float(grace_period)
    while (epoch := math.ceil(level - _WHOLE)) < max_t:
        levels.append(epoch)
        level *= reduction_factor
    return tuple(sorted(set(levels)))


def rung_keep(n_at_rung: int, reduction_factor: float) -> int:
    """How many of ``n_at_rung`` trials (the newcomer included) continue from a rung: ``max(1, floor(n / eta))``.

    ``floor`` keeps the continuing fraction at or below ``1 / eta``, the promotion rate of successive halving;
    ``max(1, .)`` lets the best trial continue however few have arrived. ``n / eta`` that floating point puts a
    hair below a whole number (11 / 2.2 = 4.999999999999999) is that number.
    """
    return max(1, math.floor(n_at_rung / reduction_factor + _WHOLE))


def rung_position(recorded: object, new: object, maximize: Maximize = True) -> int:
    """Return the 1-based position of ``new`` among the ``N + 1`` objective vectors of a rung.

    ``recorded`` is the ``(N, M)`` array of the vectors already recorded at the rung and ``new`` the ``(M,)``
    vector arriving. The position is one plus the number of rows ranked strictly ahead of ``new``:

    1. Non-dominated sorting (:func:`nondominated_ranks`): a row of a better front is ahead.
    2. Inside the newcomer's front, a row with a strictly larger crowding distance is ahead. The distance is
       computed on the objectives normalised to [0, 1] over the whole rung (every NaN-free row): per objective,
       a row whose value is the smallest or the largest in the front gets ``inf`` and any other row adds the
       gap between the nearest strictly smaller and strictly larger values in the front, divided by the rung's
       range. An objective constant over the front adds 0; one with an infinite range adds only its ``inf``.
       Built on values rather than on a sort order, it gives identical vectors the same distance, and the whole
       ranking does not depend on the order in which the rows were recorded.
    3. Rows still tied with ``new`` (identical vectors, equal distances) are not ahead: ties go to the newcomer.

    NaN: a row holding NaN never is ahead of a NaN-free row; a NaN newcomer comes after every NaN-free row.
    """
    rec, row = _rung_arrays(recorded, new, maximize)
    q, valid = _to_min(np.vstack([rec, row]), maximize)
    if not valid[-1]:
        return int(valid[:-1].sum()) + 1
    return _ahead_of_last(q[valid]) + 1


def rung_continues(recorded: object, new: object, reduction_factor: float, maximize: Maximize = True) -> bool:
    """Decide whether the trial whose vector ``new`` just reached a rung continues (True) or stops (False).

    With fewer than ``reduction_factor`` rows recorded the trial continues (too few to compare against).
    Otherwise it continues iff ``rung_position(recorded, new) <= rung_keep(N + 1, reduction_factor)``: its
    position among the ``N + 1`` trials at the rung (see :func:`rung_position`; ties go to the newcomer) is
    within the top ``max(1, floor((N + 1) / eta))``. A trial that dominates every recorded one is therefore
    always continued, and one that every recorded trial dominates always stops. A NaN newcomer stops whatever
    its position (a NaN objective is a broken evaluation, not a ranking), unless fewer than eta are recorded.
    The decision depends only on the multiset of recorded vectors, never on their order.
    """
    if not reduction_factor > 1:
        raise ValueError(f"reduction_factor must be > 1, got {reduction_factor!r}")
    rec, row = _rung_arrays(recorded, new, maximize)
    n = rec.shape[0]
    if n < reduction_factor:
        return True
    if np.isnan(row).any():
        return False
    return rung_position(recorded, new, maximize) <= rung_keep(n + 1, reduction_factor)


def _rung_arrays(recorded: object, new: object, maximize: Maximize) -> tuple[np.ndarray, np.ndarray]:
    """Return (recorded (N, M), new (1, M)) as float arrays with matching M, or raise ValueError."""
    row = np.asarray(new, dtype=float)
    if row.ndim != 1 or row.size == 0:
        raise ValueError(f"new must be a 1-D vector of M >= 1 objectives, got shape {row.shape}")
    rec = np.asarray(recorded, dtype=float)
    if rec.size == 0:
        rec = rec.reshape(0, row.size)
    rec = _as_points(rec, maximize)
    if rec.shape[1] != row.size:
        raise ValueError(f"recorded has {rec.shape[1]} objectives but new has {row.size}")
    _signs(maximize, row.size)  # validates maximize against M
    return rec, row[None, :]


def _ahead_of_last(q: np.ndarray) -> int:
    """How many rows of the minimised, NaN-free ``q`` are ranked strictly ahead of its last row."""
    ranks = nondominated_ranks(q, maximize=False)
    mine = ranks[-1]
    front = ranks == mine
    span = q.max(axis=0) - q.min(axis=0)  # the rung's range per objective
    dist = _value_crowding(q[front], span)  # the newcomer is the front's last row
    return int((ranks < mine).sum() + (dist[:-1] > dist[-1]).sum())


def _value_crowding(front: np.ndarray, span: np.ndarray) -> np.ndarray:
    """Crowding distance of each row of ``front`` (minimised, NaN-free) built on values, not sort order."""
    dist = np.zeros(front.shape[0])
    for column, width in zip(front.T, span, strict=True):
        values = np.unique(column)  # sorted, distinct
        if values.size == 1:
            continue
        where = np.searchsorted(values, column)
        boundary = (where == 0) | (where == values.size - 1)
        dist[boundary] = np.inf
        if not np.isfinite(width):
            continue
        inner = ~boundary
        gap = values[np.minimum(where + 1, values.size - 1)] - values[np.maximum(where - 1, 0)]
        dist[inner] += gap[inner] / width
    return dist
