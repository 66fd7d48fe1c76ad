"""One record per trial and one table of them: what the study's ``trials.parquet``, the MLflow report and
``verify`` all read.

A :class:`TrialRecord` is built by an adapter from wherever trials live (Ray Tune's trials, the tracker's MLflow
runs); :func:`trials_table` turns records into one DataFrame with the front computed over the finished trials;
:func:`write_trials_table` / :func:`read_trials_table` store it. Nothing here imports Ray, torch or MLflow.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .names import CONFIG_PREFIX, MAXIMIZE, OBJECTIVES, TRIALS_TABLE, Status
from .pareto import nondominated_ranks, pareto_mask
from .storage import absolute, filesystem

BASE_COLUMNS = ("trial_id", "status", "error", *OBJECTIVES, "checkpoint_path", "pareto", "pareto_rank", "run_id",
                "finish_order", "model_uri", "masking_gap", "masking_suspect")


class TableError(ValueError):
    """A trials table that cannot be read, or lacks the columns a reader needs."""


@dataclass(frozen=True)
class TrialRecord:
    """One trial: its status, objectives, parameters, where its model is, and its other last metrics."""

    trial_id: str
    status: Status
    clean_acc: float = math.nan
    robust_acc: float = math.nan
    params: Mapping[str, Any] = field(default_factory=dict)  # dotted training key -> value
    checkpoint_path: str = ""  # directory of its last checkpoint.pt (local path or URI)
    error: str = ""  # one-line reason of a failure
    run_id: str = ""  # its MLflow run, when known
    finish_order: float = math.nan  # 1 for the first trial to finish, ...
    model_uri: str = ""  # its logged MLflow model, when on the front
    masking_gap: float = math.nan  # PGD minus the objective's robust accuracy, on the same images (final epoch)
    metrics: Mapping[str, Any] = field(default_factory=dict)  # other last-reported values (epoch, loss, ...)


def one_line_reason(text: str, limit: int = 300) -> str:
    """The reason of an error text or traceback: its last non-empty line (``Type: message``), at most ``limit``."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return (lines[-1] if lines else "")[:limit]


def error_reason(error: BaseException | None) -> str:
    """A one-line reason for a trial's error: the original exception's type and its last message line."""
    if error is None:
        return ""
    cause = getattr(error, "cause", None)
    err = cause if isinstance(cause, BaseException) else error
    message = one_line_reason(str(err), limit=10_000)
    name = type(err).__name__
    text = message if message.startswith(name) or ": " in message[:60] else f"{name}: {message}"
    return text[:300]


def _plain(value: Any) -> Any:
    """Lists and mappings as JSON text, so every config column has one Parquet type."""
    if isinstance(value, list | tuple | dict):
        return json.dumps(value)
    return value


def _as_float(value: Any) -> float:
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _row(rec: TrialRecord) -> dict[str, Any]:
    row: dict[str, Any] = {
        "trial_id": str(rec.trial_id), "status": str(Status(rec.status)), "error": rec.error,
        "clean_acc": _as_float(rec.clean_acc), "robust_acc": _as_float(rec.robust_acc),
        "checkpoint_path": rec.checkpoint_path, "pareto": False, "pareto_rank": -1, "run_id": rec.run_id,
        "finish_order": _as_float(rec.finish_order), "model_uri": rec.model_uri,
        "masking_gap": _as_float(rec.masking_gap), "masking_suspect": False,
    }
    for key, value in sorted(rec.params.items()):
        row[f"{CONFIG_PREFIX}{key}"] = _plain(value)
    for key, value in sorted(rec.metrics.items()):
        if key not in row and not key.startswith(CONFIG_PREFIX) and isinstance(value, int | float | str | bool):
            row[key] = value
    return row


def masking_suspect(gap: float, threshold: float | None) -> bool:
    """Whether a trial's masking gap (PGD minus the objective's robust accuracy) exceeds the study's threshold."""
    return threshold is not None and math.isfinite(gap) and gap > threshold


def trials_table(records: Iterable[TrialRecord], masking_threshold: float | None = None) -> pd.DataFrame:
    """One row per record: :data:`BASE_COLUMNS`, then ``config/<dotted.key>`` columns, then the other metrics.

    ``pareto`` and ``pareto_rank`` are computed over the finished trials only (both objectives maximised): an
    unfinished trial, or one with a NaN objective, is never on the front and has rank -1. ``masking_suspect`` is
    :func:`masking_suspect` of the row's gap.
    """
    frame = pd.DataFrame([_row(r) for r in records])
    for column in BASE_COLUMNS:
        if column not in frame:
            frame[column] = pd.Series(dtype=object)
    if len(frame):
        points = frame[list(OBJECTIVES)].to_numpy(dtype=float).copy()  # (N, 2)
        points[(frame["status"] != Status.FINISHED).to_numpy()] = np.nan
        frame["pareto"] = pareto_mask(points, list(MAXIMIZE))
        frame["pareto_rank"] = nondominated_ranks(points, list(MAXIMIZE))
        frame["masking_suspect"] = [masking_suspect(g, masking_threshold) for g in frame["masking_gap"]]
    frame["pareto"] = frame["pareto"].astype(bool)
    frame["masking_suspect"] = frame["masking_suspect"].astype(bool)
    frame["pareto_rank"] = frame["pareto_rank"].astype(int)
    rest = [c for c in frame.columns if c not in BASE_COLUMNS]
    config = sorted(c for c in rest if c.startswith(CONFIG_PREFIX))
    for column in config:  # params read back from MLflow are strings: one type per column
        if frame[column].map(type).nunique() > 1:
            frame[column] = frame[column].map(lambda v: "" if v is None else str(v))
    metrics = [c for c in rest if not c.startswith(CONFIG_PREFIX)]
    return frame[[*BASE_COLUMNS, *config, *metrics]].reset_index(drop=True)


def finished(frame: pd.DataFrame) -> pd.DataFrame:
    """The finished rows of a trials table."""
    return frame[frame["status"] == Status.FINISHED]


def table_path(study_dir: str) -> str:
    return f"{study_dir.rstrip('/')}/{TRIALS_TABLE}"


def write_trials_table(frame: pd.DataFrame, study_dir: str) -> str:
    """Write ``frame`` as ``<study_dir>/trials.parquet`` (a local path or a URI) and return where it went.

    Locally the table is written to a temporary file and renamed, so a reader never sees half a table.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = table_path(study_dir)
    fs, where = filesystem(absolute(path))
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if "://" in path:
        pq.write_table(table, where, filesystem=fs)
        return path
    os.makedirs(os.path.dirname(where), exist_ok=True)
    tmp = f"{where}.{uuid.uuid4().hex}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, where)
    return path


def mark_interrupted(study_dir: str) -> int:
    """Relabel the RUNNING and PENDING rows of a study's trials table INTERRUPTED (a study stopped at once, before
    its callbacks could); return how many. A study without a table yet has nothing to relabel: 0."""
    try:
        frame = read_trials_table(study_dir)
    except TableError:
        return 0
    unfinished = frame["status"].isin([Status.RUNNING, Status.PENDING])
    if unfinished.any():
        frame.loc[unfinished, "status"] = Status.INTERRUPTED
        write_trials_table(frame, study_dir)
    return int(unfinished.sum())


def read_trials_table(study_dir: str, required: Sequence[str] = BASE_COLUMNS) -> pd.DataFrame:
    """``<study_dir>/trials.parquet``; :class:`TableError` when it is missing, unreadable or lacks a column."""
    import pyarrow.parquet as pq

    path = table_path(study_dir)
    try:
        fs, where = filesystem(absolute(path))
        with fs.open_input_file(where) as fh:  # one open: a table renamed over it meanwhile is not read half-and-half
            frame = pq.read_table(fh).to_pandas()
    except (OSError, ValueError) as err:
        raise TableError(f"no trials table at {path} ({str(err).splitlines()[0]})") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise TableError(f"{path} lacks the column(s) {', '.join(missing)}; it was not written by this version of "
                         "orchestrator/tune.py (a resume rewrites it)")
    return frame


def format_table(frame: pd.DataFrame, searched: Sequence[str] = ()) -> str:
    """A console table of the trials (front first), followed by the Pareto front."""
    if frame.empty:
        return "no trials"
    cols = ["trial_id", "status", *OBJECTIVES, "pareto_rank"]
    if frame["masking_gap"].notna().any():
        cols += ["masking_gap", "masking"]
    cols += [f"{CONFIG_PREFIX}{k}" for k in searched if f"{CONFIG_PREFIX}{k}" in frame]
    view = frame.assign(_order=frame["pareto_rank"].where(frame["pareto_rank"] >= 0, 10**9),
                        masking=frame["masking_suspect"].map({True: "SUSPECT", False: ""}))
    view = view.sort_values(["_order", "clean_acc"], ascending=[True, False])[cols + ["error"]]
    view = view.rename(columns={c: c.removeprefix(CONFIG_PREFIX) for c in cols})
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.max_colwidth", 60,
                           "display.float_format", "{:.4g}".format):
        table = view.to_string(index=False)
        front = frame[frame["pareto"]].sort_values("clean_acc", ascending=False)
        lines = [f"  {r.trial_id}: clean {r.clean_acc:.4f}  robust {r.robust_acc:.4f}  {r.checkpoint_path}"
                 + ("  [gradient masking suspect]" if r.masking_suspect else "") for r in front.itertuples()]
    counts = frame["status"].value_counts().to_dict()
    summary = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
    return "\n".join([f"Trials ({summary}):", table, f"Pareto front ({len(lines)} of {len(frame)}):", *lines])


def epochs_summary(frame: pd.DataFrame) -> str:
    """What early stopping saved: the trials stopped, and the trial-epochs trained against their full budgets."""
    budget_col = f"{CONFIG_PREFIX}optim.epochs"
    if frame.empty or budget_col not in frame or "epoch" not in frame:
        return ""
    started = frame[frame["status"] != Status.PENDING]
    budget = pd.to_numeric(started[budget_col], errors="coerce").fillna(0)
    trained = pd.to_numeric(started["epoch"], errors="coerce").fillna(0)
    stopped = started["status"] == Status.STOPPED
    saved = float((budget - trained)[stopped].sum())
    return (f"early stopping: {int(stopped.sum())} of {len(started)} trials stopped at a rung; "
            f"{trained.sum():g} trial-epochs trained of {budget.sum():g} full budgets ({saved:g} saved)")
