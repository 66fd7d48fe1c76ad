"""The study's trials as one table: status, reason of failure, objectives, checkpoint, Pareto membership, config.

:func:`trials_frame` turns a Ray Tune ``ResultGrid`` into a DataFrame, :func:`write_parquet` stores it in the
study's directory and :func:`format_table` renders it for the console. Pareto membership and non-dominated ranks
are computed over the finished (``TERMINATED``) trials only, with ``orchestrator.pareto``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .pareto import nondominated_ranks, pareto_mask
from .storage import absolute, filesystem

OBJECTIVES = ("clean_acc", "robust_acc")
BASE_COLUMNS = ("trial_id", "status", "error", "clean_acc", "robust_acc", "checkpoint_path", "pareto",
                "pareto_rank")
PARQUET_NAME = "trials.parquet"
FINISHED = "TERMINATED"


def error_reason(error: BaseException | None) -> str:
    """A one-line reason for a trial's error: the original exception's type and its last message line."""
    if error is None:
        return ""
    cause = getattr(error, "cause", None)
    err = cause if isinstance(cause, BaseException) else error
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    message = lines[-1] if lines else ""
    name = type(err).__name__
    text = message if message.startswith(name) or ": " in message[:60] else f"{name}: {message}"
    return text[:300]


def _plain(value: Any) -> Any:
    """Lists and mappings as JSON text, so every config column has one Parquet type."""
    if isinstance(value, list | tuple | dict):
        return json.dumps(value)
    return value


def trials_frame(result_grid: Any) -> pd.DataFrame:
    """One row per trial of ``result_grid`` (a ``ray.tune.ResultGrid``).

    Columns: ``trial_id, status, error, clean_acc, robust_acc, checkpoint_path, pareto, pareto_rank``, then
    ``config/<dotted.key>`` for every fixed and searched training key, then the other last-reported metrics.
    ``clean_acc`` / ``robust_acc`` are the last reported values (NaN if none); only finished trials can be on the
    front (``pareto_rank`` -1 otherwise).
    """
    # ResultGrid keeps one Result per trial, in the order of its experiment's trials; the Trial objects are the
    # only place that holds the status and config of a trial that never reported.
    trials = list(result_grid._experiment_analysis.trials)
    rows = [_row(trial, result_grid[i]) for i, trial in enumerate(trials)]
    return with_pareto(pd.DataFrame(rows))


def _row(trial: Any, result: Any) -> dict[str, Any]:
    last = dict(trial.last_result or {})
    row: dict[str, Any] = {
        "trial_id": trial.trial_id,
        "status": trial.status,
        "error": error_reason(result.error) if trial.status != FINISHED else "",
        "clean_acc": float(last.get("clean_acc", math.nan)),
        "robust_acc": float(last.get("robust_acc", math.nan)),
        "checkpoint_path": str(last.get("checkpoint_path") or ""),
    }
    for key, value in sorted((trial.config or {}).items()):
        row[f"config/{key}"] = _plain(value)
    for key, value in sorted(last.items()):
        if key not in row and key != "config" and isinstance(value, int | float | str | bool):
            row[key] = value
    return row


def with_pareto(frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``pareto`` and ``pareto_rank`` over the finished trials (both objectives maximised)."""
    frame = frame.copy()
    if frame.empty:
        for col in BASE_COLUMNS:
            frame[col] = pd.Series(dtype=object)
        return frame
    finished = (frame["status"] == FINISHED).to_numpy()
    points = frame[list(OBJECTIVES)].to_numpy(dtype=float).copy()
    points[~finished] = np.nan  # never on the front, rank -1
    frame["pareto"] = pareto_mask(points, maximize=True)
    frame["pareto_rank"] = nondominated_ranks(points, maximize=True)
    head = [c for c in BASE_COLUMNS if c in frame]
    rest = [c for c in frame.columns if c not in head]
    return frame[head + sorted(c for c in rest if c.startswith("config/"))
                 + [c for c in rest if not c.startswith("config/")]]


def write_parquet(frame: pd.DataFrame, study_dir: str) -> str:
    """Write ``frame`` as ``<study_dir>/trials.parquet`` (a local path or a URI); return where it went."""
    path = f"{study_dir.rstrip('/')}/{PARQUET_NAME}"
    fs, where = filesystem(absolute(path))
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), where, filesystem=fs)
    return path


def format_table(frame: pd.DataFrame, searched: Sequence[str] = ()) -> str:
    """A console table of the trials (front first), followed by the Pareto front."""
    if frame.empty:
        return "no trials"
    cols = ["trial_id", "status", "clean_acc", "robust_acc", "pareto_rank"]
    cols += [f"config/{k}" for k in searched if f"config/{k}" in frame]
    view = frame.assign(_order=frame["pareto_rank"].where(frame["pareto_rank"] >= 0, 10**9))
    view = view.sort_values(["_order", "clean_acc"], ascending=[True, False])[cols + ["error"]]
    view = view.rename(columns={c: c.removeprefix("config/") for c in cols})
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.max_colwidth", 60,
                           "display.float_format", "{:.4g}".format):
        table = view.to_string(index=False)
        front = frame[frame["pareto"]].sort_values("clean_acc", ascending=False)
        lines = [f"  {r.trial_id}: clean {r.clean_acc:.4f}  robust {r.robust_acc:.4f}  {r.checkpoint_path}"
                 for r in front.itertuples()]
    counts = frame["status"].value_counts().to_dict()
    summary = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
    return "\n".join([f"Trials ({summary}):", table, f"Pareto front ({len(lines)} of {len(frame)}):", *lines])
