"""MLflow tracking of a study, written from the Tune driver only (one writer; docs/design.md, "Tracking").

:class:`StudyTracker` imports neither Ray nor torch: it takes trial ids, flat configs, metric dicts and *local* checkpoint paths
and writes them through an explicit :class:`~mlflow.MlflowClient` (no global active run). Layout:

* one experiment per study name; a parent run (tags ``run_kind=study``, ``study_name``, ``sampler``, ``seed``,
  ``code_version``) holding the resolved search space as params and ``search_space.yaml``;
* a nested child run per trial (tags ``mlflow.parentRunId``, ``run_kind=trial``, ``trial_id``) with the trial's
  flat dotted params, per-epoch metrics (step = epoch) and final metrics; a failed trial ends ``FAILED`` with
  tag ``failure_reason`` (one line) and artifact ``failure/error.txt`` (the whole error); a trial the study was
  stopped in ends ``KILLED`` with tag ``interrupted = true``;
* as trials finish, the parent gets metrics ``hypervolume`` and ``pareto_size`` (step = finished trials) and the
  artifacts ``pareto/{front.csv,trials.parquet,front.png,front.html,hypervolume.png}``; each finished child is
  tagged ``pareto`` (``true``/``false``) and ``pareto_rank`` (0 = front, -1 = an objective is NaN), re-tagged
  when the front changes, so ``tags.pareto = 'true'`` filters the front in the UI;
* a trial that is on the front when it finishes has its exported single-BN network logged as an MLflow PyTorch
  model (a LoggedModel named ``model``, pt2 format) and its URI (``models:/<model_id>``) as tag ``model_uri``.
  A trial never re-enters the front once it is dominated (finished trials are never removed), so no model is
  logged later; models of trials pushed off the front are kept.

Resume: :meth:`StudyTracker.start` finds the parent run by its ``study_name`` tag and every child by its
``trial_id`` tag and reuses them, rebuilding the front from the logged metrics and ``finish_order`` tags.

Ray Tune's hooks reach the tracker through :class:`orchestrator.tune_callbacks.MLflowTuneCallback` and the write
queue of :mod:`orchestrator.tracking_queue` (a background thread, so an unreachable server never stalls the study);
a front model is exported by :mod:`orchestrator.export`, imported only when a model is logged.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import numbers
import re
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunStatus, RunTag

from arat_train.config import flatten

from .names import (
    FAILURE_ARTIFACT,
    FAILURE_TAG,
    FINISH_ORDER_TAG,
    FROM_MLFLOW,
    INTERRUPTED_TAG,
    MASKING_TAG,
    MAXIMIZE,
    MODEL_ERROR_TAG,
    MODEL_URI_TAG,
    OBJECTIVES,
    PARENT_TAG,
    PARETO_TAG,
    RANK_TAG,
    RUN_KIND_TAG,
    STOPPED_AT_TAG,
    STUDY_TAG,
    TRIAL_STATUS_TAG,
    TRIAL_TAG,
    Status,
)
from .pareto import pareto_mask
from .records import TrialRecord, one_line_reason
from .report import build_front, write_report

log = logging.getLogger(__name__)

FINISHED = RunStatus.to_string(RunStatus.FINISHED)
REPORT_DIR = "pareto"
SPACE_ARTIFACT = "search_space.yaml"
# Bookkeeping values in Tune results that are not metrics of the trial.
_NOT_METRICS = frozenset({"timestamp", "pid"})
_MAX_PARAM = 6000  # MLflow's limits on a param and a tag value
_MAX_TAG = 8000
_BATCH = 100  # params or tags per log_batch


def default_tracking_uri(directory: str | Path | None = None) -> str:
    """The embedded store: ``sqlite:////abs/dir/mlflow.db`` (absolute, as a ``ray job`` cwd is a temp dir)."""
    return f"sqlite:///{(Path(directory or Path.cwd()).resolve() / 'mlflow.db').as_posix()}"


def store_problem(uri: str, timeout_s: float = 5.0) -> str | None:
    """Why the MLflow store at ``uri`` cannot be used now, in one line, or None. Creates nothing (an MLflow client
    would create a missing SQLite store) and waits at most ``timeout_s`` for a server."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            return f"no MLflow store at {path}"
        try:
            with open(path, "rb") as fh:
                header = fh.read(16)
        except OSError as err:
            return f"cannot read the MLflow store {path}: {err.strerror}"
        return None if header == b"SQLite format 3\x00" else f"{path} is not an SQLite database"
    if uri.startswith(("http://", "https://")):
        probe = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1"
        try:
            with urllib.request.urlopen(probe, timeout=timeout_s):  # noqa: S310 - the user's tracking server
                return None
        except urllib.error.HTTPError:
            return None  # it answered
        except (OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            return f"the MLflow server at {uri} does not answer ({reason})"
    if uri.startswith("file:") or "://" not in uri:
        path = Path(uri.removeprefix("file://").removeprefix("file:"))
        return None if path.is_dir() else f"no MLflow store at {path}"
    return None


def code_version() -> str:
    """The git SHA of this checkout (``-dirty`` with uncommitted changes), else the package version."""
    root = Path(__file__).resolve().parent.parent
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()

        if Path(git("rev-parse", "--show-toplevel")).resolve() == root:
            dirty = git("status", "--porcelain", "--untracked-files=no")
            return git("rev-parse", "HEAD") + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return f"arat-tune=={importlib.metadata.version('arat-tune')}"
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def numeric_metrics(values: Mapping[str, Any]) -> dict[str, float]:
    """The real-number entries of a result dict (bools, strings, dicts and bookkeeping keys dropped)."""
    return {k: float(v) for k, v in values.items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_) and k not in _NOT_METRICS}


def _param_value(value: Any) -> str:
    return str(value)[:_MAX_PARAM]


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _Trial:
    """What the tracker knows of one trial's run."""

    run_id: str
    status: str = RunStatus.to_string(RunStatus.RUNNING)
    params: dict[str, str] = field(default_factory=dict)
    clean_acc: float = math.nan
    robust_acc: float = math.nan
    masking_gap: float = math.nan
    finish_order: int | None = None
    last_step: int | None = None
    last_logged: dict[str, float] = field(default_factory=dict)  # metrics logged at last_step
    tags: dict[str, str] = field(default_factory=dict)  # current pareto tags
    model_uri: str = ""
    has_failure_tag: bool = False
    has_interrupted_tag: bool = False
    stopped: bool = False  # ended early by the scheduler (its MLflow run is FINISHED, tag trial_status STOPPED)


class StudyTracker:
    """Log one study to MLflow: a parent run, a child run per trial, the Pareto front and its models.

    Call :meth:`start` once, then the ``trial_*`` methods as trials progress, then :meth:`finish`. Every method
    is idempotent per trial, so a resumed driver may repeat calls. The tracker holds no global MLflow state.
    """

    def __init__(
        self,
        tracking_uri: str,
        study_name: str,
        *,
        space_yaml: str,
        params: Mapping[str, Any],
        sampler: str,
        seed: int,
        code_version: str,
        reference_point: Sequence[float] = (0.0, 0.0),
        masking_threshold: float | None = None,
    ) -> None:
        if not study_name:
            raise ValueError("study_name must not be empty")
        if len(reference_point) != len(OBJECTIVES):
            raise ValueError(f"reference_point must have {len(OBJECTIVES)} values, got {list(reference_point)}")
        self.tracking_uri = tracking_uri
        self.study_name = study_name
        self.space_yaml = space_yaml
        self.params = dict(params)
        self.sampler = sampler
        self.seed = seed
        self.code_version = code_version
        self.reference_point = (float(reference_point[0]), float(reference_point[1]))
        self.masking_threshold = masking_threshold
        self.experiment_id = ""
        self.parent_run_id = ""
        self._trials: dict[str, _Trial] = {}

    @cached_property
    def client(self) -> MlflowClient:
        """The explicit MLflow client (made on first use: an SQLite store is created when a client opens it)."""
        return MlflowClient(self.tracking_uri)

    # --- study ---------------------------------------------------------------------------------------------

    def start(self) -> str:
        """Get or create the experiment and the parent run, load existing child runs; returns the parent id."""
        self.experiment_id = self._experiment()
        self.parent_run_id = self._parent_run()
        self._load_trials()
        return self.parent_run_id

    def finish(self, status: str = "FINISHED", interrupted: bool = False) -> None:
        """End the parent run with ``status`` (``FINISHED``, ``FAILED`` or ``KILLED``).

        Child runs still ``RUNNING`` (trials whose end this driver never saw: the study was stopped, or they were
        not resumed after a restart) end as ``KILLED`` with tag ``interrupted = true``; so does the parent of an
        ``interrupted`` study. ``tags.interrupted = 'true'`` finds them; a resume continues them.
        """
        self._require_started()
        for trial in self._trials.values():
            if trial.status == "RUNNING":
                self._log_tags(trial.run_id, {INTERRUPTED_TAG: "true", TRIAL_STATUS_TAG: Status.INTERRUPTED})
                self.client.set_terminated(trial.run_id, "KILLED")
                trial.status, trial.has_interrupted_tag = "KILLED", True
        self._publish(new_finished=False)  # the report's table shows them INTERRUPTED
        if interrupted:
            self._log_tags(self.parent_run_id, {INTERRUPTED_TAG: "true"})
        self.client.set_terminated(self.parent_run_id, status)

    def settings(self) -> dict[str, Any]:
        """What :meth:`from_settings` needs to make this tracker again (in another process)."""
        return {"tracking_uri": self.tracking_uri, "study_name": self.study_name, "space_yaml": self.space_yaml,
                "params": self.params, "sampler": self.sampler, "seed": self.seed,
                "code_version": self.code_version, "reference_point": list(self.reference_point),
                "masking_threshold": self.masking_threshold}

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], tracking_uri: str | None = None) -> StudyTracker:
        """The tracker :meth:`settings` describes, writing to ``tracking_uri`` if given."""
        fields = dict(settings)
        uri = tracking_uri or fields.pop("tracking_uri")
        fields.pop("tracking_uri", None)
        study_name = fields.pop("study_name")
        return cls(uri, study_name, **fields)

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (Tune pickles its RunConfig, callbacks included): the client is made again on use."""
        state = self.__dict__.copy()
        state.pop("client", None)
        return state

    def run_id(self, trial_id: str) -> str:
        """The child run id of ``trial_id`` (KeyError when the tracker has not seen it)."""
        return self._trials[trial_id].run_id

    def _require_started(self) -> None:
        if not self.parent_run_id:
            raise RuntimeError("StudyTracker.start() must be called first")

    def _experiment(self) -> str:
        exp = self.client.get_experiment_by_name(self.study_name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                raise RuntimeError(f"MLflow experiment {self.study_name!r} is deleted; restore it "
                                   "(mlflow experiments restore) or choose another study name")
            return str(exp.experiment_id)
        return self.client.create_experiment(self.study_name, artifact_location=self._artifact_location(),
                                             tags={STUDY_TAG: self.study_name})

    def _artifact_location(self) -> str | None:
        """For an SQLite store, artifacts next to the database (MLflow's default is ``./mlruns`` of the cwd)."""
        if not self.tracking_uri.startswith("sqlite:///"):
            return None  # a server decides
        db = Path(self.tracking_uri[len("sqlite:///"):])
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.study_name)
        return (db.resolve().parent / "mlruns" / slug).as_uri()

    def _search(self, filter_string: str) -> list[Run]:
        runs: list[Run] = []
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string, max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def _parent_run(self) -> str:
        found = [r for r in self._search(f"tags.{RUN_KIND_TAG} = 'study'")
                 if r.data.tags.get(STUDY_TAG) == self.study_name]
        tags = {"sampler": self.sampler, "seed": str(self.seed), "reference_point": str(list(self.reference_point))}
        if found:
            run = min(found, key=lambda r: r.info.start_time)
            if run.info.status != "RUNNING":
                self.client.update_run(run.info.run_id, status="RUNNING")
            if run.data.tags.get("code_version") != self.code_version:
                tags["code_version.resumed"] = self.code_version
            if INTERRUPTED_TAG in run.data.tags:
                self.client.delete_tag(run.info.run_id, INTERRUPTED_TAG)
            existing = dict(run.data.params)
        else:
            run = self.client.create_run(self.experiment_id, run_name=self.study_name,
                                         tags={RUN_KIND_TAG: "study", STUDY_TAG: self.study_name})
            tags["code_version"] = self.code_version
            existing = {}
        run_id = run.info.run_id
        self._log_tags(run_id, tags)
        study_params = {"study.sampler": self.sampler, "study.seed": self.seed, **flatten(self.params)}
        self._log_params(run_id, study_params, existing)
        self.client.log_text(run_id, self.space_yaml, SPACE_ARTIFACT)
        return run_id

    def _load_trials(self) -> None:
        """Rebuild the trial table from the child runs already under the parent (a resumed study)."""
        self._trials = {}
        query = f"tags.{RUN_KIND_TAG} = 'trial' AND tags.`{PARENT_TAG}` = '{self.parent_run_id}'"
        for run in sorted(self._search(query), key=lambda r: r.info.start_time):
            tags, metrics = run.data.tags, run.data.metrics
            trial_id = tags.get(TRIAL_TAG)
            if trial_id is None or trial_id in self._trials:
                log.warning("ignoring child run %s: trial id %r missing or seen twice", run.info.run_id, trial_id)
                continue
            order = tags.get(FINISH_ORDER_TAG)
            self._trials[trial_id] = _Trial(
                run_id=run.info.run_id, status=run.info.status, params=dict(run.data.params),
                clean_acc=metrics.get("clean_acc", math.nan), robust_acc=metrics.get("robust_acc", math.nan),
                masking_gap=metrics.get("masking_gap", math.nan),
                finish_order=int(order) if order is not None else None,
                tags={k: tags[k] for k in (PARETO_TAG, RANK_TAG, MASKING_TAG) if k in tags},
                model_uri=tags.get(MODEL_URI_TAG, ""), has_failure_tag=FAILURE_TAG in tags,
                has_interrupted_tag=INTERRUPTED_TAG in tags,
                stopped=tags.get(TRIAL_STATUS_TAG) == Status.STOPPED,
            )
        log.info("study %r: reusing parent run %s with %d trial run(s)", self.study_name, self.parent_run_id,
                 len(self._trials))

    # --- trials --------------------------------------------------------------------------------------------

    def trial_started(self, trial_id: str, config: Mapping[str, Any]) -> str:
        """Create (or reuse) the trial's child run and log its flat params; returns the run id."""
        self._require_started()
        trial = self._trials.get(trial_id)
        if trial is None:
            run = self.client.create_run(self.experiment_id, run_name=f"trial_{trial_id}", tags={
                PARENT_TAG: self.parent_run_id, RUN_KIND_TAG: "trial", TRIAL_TAG: trial_id})
            trial = self._trials[trial_id] = _Trial(run.info.run_id)
        elif trial.status in ("FAILED", "KILLED"):  # restarted by a resumed study: the same run goes on
            self.client.update_run(trial.run_id, status="RUNNING")
            if trial.has_failure_tag:
                self.client.delete_tag(trial.run_id, FAILURE_TAG)
                trial.has_failure_tag = False
            if trial.has_interrupted_tag:
                self.client.delete_tag(trial.run_id, INTERRUPTED_TAG)
                trial.has_interrupted_tag = False
            self._log_tags(trial.run_id, {TRIAL_STATUS_TAG: Status.RUNNING})
            trial.status = "RUNNING"
        self._log_params(trial.run_id, flatten(config), trial.params)
        return trial.run_id

    def trial_result(self, trial_id: str, metrics: Mapping[str, Any], step: int, time_ms: int | None = None) -> None:
        """Log the numeric entries of one epoch's ``metrics`` at ``step`` (the 1-based epoch), stamped ``time_ms``
        (when the result arrived; now by default)."""
        trial = self._trial(trial_id)
        values = numeric_metrics(metrics)
        self._log_metrics(trial.run_id, values, step, time_ms)
        trial.last_step, trial.last_logged = step, values

    def needs_checkpoint(self, final: Mapping[str, Any]) -> bool:
        """Whether a trial finishing with ``final`` metrics would be on the front (so its model gets logged)."""
        values = numeric_metrics(final)
        candidate = [values.get(k, math.nan) for k in OBJECTIVES]
        finished = [[t.clean_acc, t.robust_acc] for t in self._trials.values()
                    if t.status == FINISHED and not t.stopped]
        return bool(pareto_mask(np.array([*finished, candidate]), list(MAXIMIZE))[-1])

    def trial_completed(self, trial_id: str, final: Mapping[str, Any], checkpoint_path: str | Path | None) -> None:
        """End the trial's run as finished, update the front and, if the trial is on it, log its model.

        ``final`` is the trial's last result (its ``clean_acc`` and ``robust_acc`` are the objectives);
        ``checkpoint_path`` is a local ``checkpoint.pt`` or the directory holding it, or None.
        """
        trial = self._trial(trial_id)
        on_front = self.needs_checkpoint(final)
        self._log_final(trial, final)
        if math.isnan(trial.clean_acc) or math.isnan(trial.robust_acc):
            log.warning("trial %s finished without finite clean_acc and robust_acc; it cannot be on the front",
                        trial_id)
        if trial.finish_order is None:
            trial.finish_order = 1 + max((t.finish_order or 0 for t in self._trials.values()), default=0)
        self._log_tags(trial.run_id, {FINISH_ORDER_TAG: str(trial.finish_order), TRIAL_STATUS_TAG: Status.FINISHED})
        self.client.set_terminated(trial.run_id, FINISHED)
        trial.status = FINISHED
        if on_front and checkpoint_path is not None and not trial.model_uri:
            self._log_model(trial_id, trial, checkpoint_path)
        self._publish(new_finished=True)

    def trial_stopped(self, trial_id: str, final: Mapping[str, Any]) -> None:
        """End the run of a trial the scheduler stopped at epoch ``final["epoch"]``: tagged ``trial_status``
        ``STOPPED`` and ``stopped_at_epoch``, never on the front (its figures are not final ones)."""
        trial = self._trial(trial_id)
        self._log_final(trial, final)
        epoch = numeric_metrics(final).get("epoch", math.nan)
        self._log_tags(trial.run_id, {TRIAL_STATUS_TAG: Status.STOPPED, STOPPED_AT_TAG: f"{epoch:g}"})
        self.client.set_terminated(trial.run_id, FINISHED)
        trial.status, trial.stopped = FINISHED, True
        self._publish(new_finished=False)

    def _log_final(self, trial: _Trial, final: Mapping[str, Any]) -> None:
        """Log what of a trial's last result is not logged yet, and keep its objectives."""
        values = numeric_metrics(final)
        step = trial.last_step if trial.last_step is not None else int(values.get("epoch", 0))
        unlogged = {k: v for k, v in values.items() if trial.last_logged.get(k) != v or step != trial.last_step}
        self._log_metrics(trial.run_id, unlogged, step)
        trial.last_step, trial.last_logged = step, {**trial.last_logged, **unlogged}
        trial.clean_acc = values.get("clean_acc", math.nan)
        trial.robust_acc = values.get("robust_acc", math.nan)
        trial.masking_gap = values.get("masking_gap", math.nan)

    def trial_failed(self, trial_id: str, reason: str) -> None:
        """End the trial's run as ``FAILED``: tag ``failure_reason`` is the reason in one line (the last line of a
        traceback), and the whole ``reason`` text is the run's artifact ``failure/error.txt``."""
        trial = self._trial(trial_id)
        text = reason.strip() or "unknown error"
        self.client.log_text(trial.run_id, text + "\n", FAILURE_ARTIFACT)
        self._log_tags(trial.run_id, {FAILURE_TAG: one_line_reason(text), TRIAL_STATUS_TAG: Status.FAILED})
        self.client.set_terminated(trial.run_id, "FAILED")
        trial.status, trial.has_failure_tag = "FAILED", True
        self._publish(new_finished=False)

    def _trial(self, trial_id: str) -> _Trial:
        """The trial's state; a trial first seen here (e.g. after a driver restart) gets its run first."""
        if trial_id not in self._trials:
            self.trial_started(trial_id, {})
        return self._trials[trial_id]

    # --- writing -------------------------------------------------------------------------------------------

    def _log_params(self, run_id: str, params: Mapping[str, Any], existing: dict[str, str]) -> None:
        """Log the params not logged yet (MLflow params are immutable); ``existing`` is updated in place."""
        new: list[Param] = []
        for key, value in params.items():
            text = _param_value(value)
            if key in existing:
                if existing[key] != text:
                    log.warning("run %s: param %r stays %r (MLflow params are immutable), not %r",
                                run_id, key, existing[key], text)
                continue
            new.append(Param(key, text))
            existing[key] = text
        for i in range(0, len(new), _BATCH):
            self.client.log_batch(run_id, params=new[i:i + _BATCH])

    def _log_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, tags=items[i:i + _BATCH])

    def _log_metrics(self, run_id: str, values: Mapping[str, float], step: int, time_ms: int | None = None) -> None:
        if values:
            stamp = _now_ms() if time_ms is None else time_ms
            self.client.log_batch(run_id, metrics=[Metric(k, v, stamp, step) for k, v in values.items()])

    def _records(self) -> list[TrialRecord]:
        return [TrialRecord(trial_id=tid, run_id=t.run_id, status=Status.STOPPED if t.stopped else FROM_MLFLOW[t.status],
                            finish_order=t.finish_order if t.finish_order is not None else math.nan,
                            clean_acc=t.clean_acc, robust_acc=t.robust_acc, model_uri=t.model_uri, params=t.params,
                            masking_gap=t.masking_gap)
                for tid, t in self._trials.items()]

    def _publish(self, new_finished: bool) -> None:
        """Re-tag changed children, log the parent's front metrics and rewrite the report artifacts."""
        data = build_front(self._records(), self.reference_point, title=f"Study {self.study_name}",
                           masking_threshold=self.masking_threshold)
        for row in data.trials.itertuples():
            if row.status == Status.RUNNING:
                continue  # tagged when it ends
            trial = self._trials[row.trial_id]
            want = {PARETO_TAG: "true" if row.pareto else "false"}
            if row.status == Status.FINISHED:
                want[RANK_TAG] = str(int(row.pareto_rank))
                if math.isfinite(row.masking_gap):
                    want[MASKING_TAG] = "true" if row.masking_suspect else "false"
            changed = {k: v for k, v in want.items() if trial.tags.get(k) != v}
            if changed:
                self._log_tags(trial.run_id, changed)
                trial.tags.update(changed)
        n_finished = len(data.finished)
        if new_finished and n_finished:
            self._log_metrics(self.parent_run_id, {"hypervolume": float(data.hypervolume[-1]),
                                                   "pareto_size": float(data.finished["pareto"].sum())}, n_finished)
        with tempfile.TemporaryDirectory(prefix="arat_report_") as tmp:
            write_report(data, tmp)
            self.client.log_artifacts(self.parent_run_id, tmp, REPORT_DIR)

    def _log_model(self, trial_id: str, trial: _Trial, checkpoint_path: str | Path) -> None:
        """Log the exported network of a front trial as a LoggedModel linked to its run; failures are tagged."""
        from .export import log_checkpoint_model  # torch and mlflow.pytorch, only when a model is logged

        try:
            uri = log_checkpoint_model(self.client, self.tracking_uri, checkpoint_path, experiment_id=self.experiment_id,
                                       run_id=trial.run_id, step=trial.last_step or 0,
                                       tags={TRIAL_TAG: trial_id, STUDY_TAG: self.study_name}, params=trial.params)
        except Exception as exc:  # a missing or unreadable checkpoint must not stop the study
            if store_problem(self.tracking_uri):
                raise  # the store went away: the record waits (orchestrator.tracking_queue), not a model error
            log.warning("trial %s: could not log its model from %s: %s", trial_id, checkpoint_path, exc)
            self._log_tags(trial.run_id, {MODEL_ERROR_TAG: f"{type(exc).__name__}: {exc}"[-_MAX_TAG:]})
            return
        trial.model_uri = uri
        self._log_tags(trial.run_id, {MODEL_URI_TAG: trial.model_uri})
