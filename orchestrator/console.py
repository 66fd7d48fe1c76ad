"""The study's live console: per trial its epoch, objectives and searched parameters, the current front marked, and
a resource line that counts what the trials' Train workers hold (Tune's own table counts only the trial drivers,
which hold nothing, so it said ``0/2 CPUs`` while both cores were busy).

:class:`LiveTable` is a Ray Tune callback; the table itself is computed by :func:`render` from plain rows, so it is
tested without Ray.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
from ray.tune import Callback

from .names import MAXIMIZE, OBJECTIVES, Status
from .pareto import pareto_mask
from .records import masking_suspect
from .tune_callbacks import trial_status

if TYPE_CHECKING:
    from ray.tune.experiment import Trial


@dataclass
class Row:
    """What the console shows of one trial."""

    trial_id: str
    status: str
    epoch: float = math.nan
    budget: float = math.nan
    clean_acc: float = math.nan
    robust_acc: float = math.nan
    params: dict[str, Any] = field(default_factory=dict)
    masking_gap: float = math.nan  # PGD minus the objective's robust accuracy, reported at the last epoch


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def render(rows: Sequence[Row], searched: Sequence[str], resources: str = "",
           masking_threshold: float | None = None) -> str:
    """The table: one line per trial (front first), ``*`` on the finished trials of the current front and, with a
    ``masking_threshold``, SUSPECT on the finished trials whose masking gap exceeds it (gradient masking)."""
    finished = [r for r in rows if r.status == Status.FINISHED]
    points = np.array([[r.clean_acc, r.robust_acc] for r in finished], dtype=float).reshape(-1, 2)
    on_front = {r.trial_id for r, on in zip(finished, pareto_mask(points, list(MAXIMIZE)), strict=True) if on}
    header = ["", "trial", "status", "epoch", *OBJECTIVES, *[k.rsplit(".", 1)[-1] for k in searched]]
    flag = masking_threshold is not None
    header += ["masking"] if flag else []
    lines = []
    order = sorted(rows, key=lambda r: (r.trial_id not in on_front, r.status != Status.RUNNING, r.trial_id))
    for r in order:
        epoch = "-" if math.isnan(r.epoch) else f"{r.epoch:g}" + ("" if math.isnan(r.budget) else f"/{r.budget:g}")
        lines.append(["*" if r.trial_id in on_front else "", r.trial_id, r.status, epoch, _fmt(r.clean_acc),
                      _fmt(r.robust_acc), *[_fmt(r.params.get(k, "")) for k in searched]]
                     + (["SUSPECT" if r.status == Status.FINISHED and masking_suspect(r.masking_gap, masking_threshold)
                         else ""] if flag else []))
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    counts = {s: sum(r.status == s for r in rows) for s in dict.fromkeys(r.status for r in rows)}
    title = ", ".join(f"{n} {s.lower()}" for s, n in counts.items())
    legend = f"; SUSPECT = PGD over the objective by more than {masking_threshold:g}" if flag else ""
    out = [f"Trials ({title}); * = on the current front of finished trials{legend}"
           + (f"; {resources}" if resources else "")]
    out.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    return "\n".join(out)


def resource_line(running: int, workers: int, per_worker: Mapping[str, float], total: Mapping[str, float]) -> str:
    """What the running trials' workers hold, against what the cluster has."""
    held = ", ".join(f"{running * workers * v:g} of {total.get(k, 0):g} {k}s" for k, v in per_worker.items() if v)
    return f"{running} trial(s) running, {workers} worker(s) each: {held}"


class LiveTable(Callback):
    """Print a line when a trial starts, :func:`render`'s table when one ends, and the table at most every
    ``interval`` seconds as results come."""

    def __init__(self, searched: Sequence[str], workers: int, per_worker: Mapping[str, float],
                 interval: float = 15.0, out: TextIO | None = None, masking_threshold: float | None = None) -> None:
        self.searched = list(searched)
        self.masking_threshold = masking_threshold
        self.workers = workers
        self.per_worker = dict(per_worker)
        self.interval = interval
        self.out = out
        self._last = 0.0
        self._total: dict[str, float] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["out"] = None  # Tune pickles callbacks with the experiment; a stream is not picklable
        return state

    def setup(self, stop: Any = None, num_samples: int | None = None, total_num_samples: int | None = None,
              **info: Any) -> None:
        import ray

        self._total = {k: float(v) for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}

    def _rows(self, trials: Sequence[Trial], ended: Mapping[str, Status]) -> list[Row]:
        rows = []
        for t in trials:
            last = t.last_result or {}
            config = t.config or {}
            status = trial_status(t, ended.get(t.trial_id))
            epoch, budget = last.get("epoch", math.nan), config.get("optim.epochs", math.nan)
            rows.append(Row(str(t.trial_id), str(status), float(epoch), float(budget),
                            float(last.get(OBJECTIVES[0], math.nan)), float(last.get(OBJECTIVES[1], math.nan)),
                            {k: config.get(k, "") for k in self.searched}, float(last.get("masking_gap", math.nan))))
        return rows

    def show(self, trials: Sequence[Trial], ended: Mapping[str, Status] | None = None) -> None:
        rows = self._rows(trials, ended or {})
        running = sum(r.status == Status.RUNNING for r in rows)
        text = render(rows, self.searched, resource_line(running, self.workers, self.per_worker, self._total),
                      getattr(self, "masking_threshold", None))  # a study stored before it had one: none
        print(text, file=self.out, flush=True)
        self._last = time.monotonic()

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        config = trial.config or {}
        params = ", ".join(f"{k}={_fmt(config.get(k, ''))}" for k in self.searched)
        print(f"trial {trial.trial_id} started: {params}", file=self.out, flush=True)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        if time.monotonic() - self._last >= self.interval:
            self.show(trials)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.show(trials, {trial.trial_id: Status.FINISHED})

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.show(trials, {trial.trial_id: Status.FAILED})
