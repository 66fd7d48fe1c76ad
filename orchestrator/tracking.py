"""MLflow tracking of a study, written from the Tune driver only (one writer; DESIGN §6).

:class:`StudyTracker` is Ray-free: it takes trial ids, flat configs, metric dicts and *local* checkpoint paths
and writes them through an explicit :class:`~mlflow.MlflowClient` (no global active run). Layout:

* one experiment per study name; a parent run (tags ``run_kind=study``, ``study_name``, ``sampler``, ``seed``,
  ``code_version``) holding the resolved search space as params and ``search_space.yaml``;
* a nested child run per trial (tags ``mlflow.parentRunId``, ``run_kind=trial``, ``trial_id``) with the trial's
  flat dotted params, per-epoch metrics (step = epoch) and final metrics; a failed trial ends ``FAILED`` with
  tag ``failure_reason``;
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

:class:`MLflowTuneCallback` adapts Ray Tune's callback hooks to the tracker and turns a checkpoint URI into a
local directory for it.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import numbers
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pytorch
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunStatus, RunTag
from mlflow.environment_variables import MLFLOW_TRACKING_URI
from mlflow.models import infer_signature
from mlflow.tracking._tracking_service.utils import _use_tracking_uri
from ray.tune import Callback
from torch import nn

from arat_train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from arat_train.config import TrainConfig, flatten
from arat_train.models import export_model
from arat_train.train import build

from .pareto import pareto_mask
from .report import FINISHED, MAXIMIZE, OBJECTIVES, build_front, write_report

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

log = logging.getLogger(__name__)

RUN_KIND_TAG = "run_kind"  # "study" on the parent, "trial" on a child
STUDY_TAG = "study_name"
TRIAL_TAG = "trial_id"
PARENT_TAG = "mlflow.parentRunId"
PARETO_TAG = "pareto"
RANK_TAG = "pareto_rank"
FINISH_ORDER_TAG = "finish_order"
FAILURE_TAG = "failure_reason"
MODEL_URI_TAG = "model_uri"
MODEL_ERROR_TAG = "model_error"
MODEL_NAME = "model"
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


def export_checkpoint(path: str | Path) -> tuple[nn.Module, np.ndarray]:
    """(exported single-BN network in eval mode, input example (2, C, H, W) float32) of a ``checkpoint.pt``.

    ``path`` is the file or the directory holding it. The network is rebuilt from the checkpoint's config and
    carries its adv-BN weights (:func:`arat_train.models.export_model`).
    """
    file = Path(path) / CHECKPOINT_NAME if Path(path).is_dir() else Path(path)
    ckpt = load_checkpoint(file, "cpu")
    cfg = TrainConfig.from_dict(ckpt["config"])
    state = ckpt["model"]
    num_classes = int(state["linear.weight"].shape[0])
    in_channels = int(next(v for v in state.values() if v.ndim == 4).shape[1])  # first conv: (out, in, k, k)
    objective = build(cfg, num_classes, in_channels, torch.device("cpu"))
    objective.model.load_state_dict(state)
    model = export_model(objective.model).eval()
    size = 32 if cfg.data.dataset.startswith("cifar") else cfg.data.image_size
    gen = torch.Generator().manual_seed(0)
    example = torch.rand((2, in_channels, size, size), generator=gen).numpy()  # (B, C, H, W) in [0, 1]
    return model, example


def _numeric(values: Mapping[str, Any]) -> dict[str, float]:
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
    finish_order: int | None = None
    last_step: int | None = None
    last_logged: dict[str, float] = field(default_factory=dict)  # metrics logged at last_step
    tags: dict[str, str] = field(default_factory=dict)  # current pareto tags
    model_uri: str = ""
    has_failure_tag: bool = False


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

    def finish(self, status: str = "FINISHED") -> None:
        """End the parent run with ``status`` (``FINISHED``, ``FAILED`` or ``KILLED``).

        Child runs still ``RUNNING`` (trials whose end this driver never saw, e.g. not resumed after a restart)
        end as ``KILLED``.
        """
        self._require_started()
        for trial in self._trials.values():
            if trial.status == "RUNNING":
                self.client.set_terminated(trial.run_id, "KILLED")
                trial.status = "KILLED"
        self.client.set_terminated(self.parent_run_id, status)

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
                finish_order=int(order) if order is not None else None,
                tags={k: tags[k] for k in (PARETO_TAG, RANK_TAG) if k in tags},
                model_uri=tags.get(MODEL_URI_TAG, ""), has_failure_tag=FAILURE_TAG in tags,
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
            trial.status = "RUNNING"
        self._log_params(trial.run_id, flatten(config), trial.params)
        return trial.run_id

    def trial_result(self, trial_id: str, metrics: Mapping[str, Any], step: int) -> None:
        """Log the numeric entries of one epoch's ``metrics`` at ``step`` (the 1-based epoch)."""
        trial = self._trial(trial_id)
        values = _numeric(metrics)
        self._log_metrics(trial.run_id, values, step)
        trial.last_step, trial.last_logged = step, values

    def needs_checkpoint(self, final: Mapping[str, Any]) -> bool:
        """Whether a trial finishing with ``final`` metrics would be on the front (so its model gets logged)."""
        values = _numeric(final)
        candidate = [values.get(k, math.nan) for k in OBJECTIVES]
        finished = [[t.clean_acc, t.robust_acc] for t in self._trials.values() if t.status == FINISHED]
        return bool(pareto_mask(np.array([*finished, candidate]), list(MAXIMIZE))[-1])

    def trial_completed(self, trial_id: str, final: Mapping[str, Any], checkpoint_path: str | Path | None) -> None:
        """End the trial's run as finished, update the front and, if the trial is on it, log its model.

        ``final`` is the trial's last result (its ``clean_acc`` and ``robust_acc`` are the objectives);
        ``checkpoint_path`` is a local ``checkpoint.pt`` or the directory holding it, or None.
        """
        trial = self._trial(trial_id)
        values = _numeric(final)
        step = trial.last_step if trial.last_step is not None else int(values.get("epoch", 0))
        unlogged = {k: v for k, v in values.items() if trial.last_logged.get(k) != v or step != trial.last_step}
        self._log_metrics(trial.run_id, unlogged, step)
        trial.last_step, trial.last_logged = step, {**trial.last_logged, **unlogged}
        on_front = self.needs_checkpoint(final)
        trial.clean_acc = values.get("clean_acc", math.nan)
        trial.robust_acc = values.get("robust_acc", math.nan)
        if math.isnan(trial.clean_acc) or math.isnan(trial.robust_acc):
            log.warning("trial %s finished without finite clean_acc and robust_acc; it cannot be on the front",
                        trial_id)
        if trial.finish_order is None:
            trial.finish_order = 1 + max((t.finish_order or 0 for t in self._trials.values()), default=0)
        self._log_tags(trial.run_id, {FINISH_ORDER_TAG: str(trial.finish_order)})
        self.client.set_terminated(trial.run_id, FINISHED)
        trial.status = FINISHED
        if on_front and checkpoint_path is not None and not trial.model_uri:
            self._log_model(trial_id, trial, checkpoint_path)
        self._publish(new_finished=True)

    def trial_failed(self, trial_id: str, reason: str) -> None:
        """End the trial's run as ``FAILED`` with ``reason`` (its tail, if long) as tag ``failure_reason``."""
        trial = self._trial(trial_id)
        reason = reason.strip() or "unknown error"
        self._log_tags(trial.run_id, {FAILURE_TAG: reason[-_MAX_TAG:]})
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

    def _log_metrics(self, run_id: str, values: Mapping[str, float], step: int) -> None:
        if values:
            now = _now_ms()
            self.client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def _records(self) -> list[dict[str, Any]]:
        return [{"trial_id": tid, "run_id": t.run_id, "status": t.status, "finish_order": t.finish_order,
                 "clean_acc": t.clean_acc, "robust_acc": t.robust_acc, "model_uri": t.model_uri, "params": t.params}
                for tid, t in self._trials.items()]

    def _publish(self, new_finished: bool) -> None:
        """Re-tag changed children, log the parent's front metrics and rewrite the report artifacts."""
        data = build_front(self._records(), self.reference_point, title=f"Study {self.study_name}")
        for row in data.trials.itertuples():
            if row.status == "RUNNING":
                continue  # tagged when it ends
            trial = self._trials[row.trial_id]
            want = {PARETO_TAG: "true" if row.pareto else "false"}
            if row.status == FINISHED:
                want[RANK_TAG] = str(int(row.pareto_rank))
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
        try:
            model, example = export_checkpoint(checkpoint_path)
            with torch.no_grad():
                output = model(torch.from_numpy(example)).numpy()  # (B, num_classes)
            signature = infer_signature(example, output)
            # log_model without an active run files the LoggedModel under the default experiment (MLflow 3.17),
            # so it is created here in the study's experiment and passed by id.
            logged = self.client.create_logged_model(
                self.experiment_id, name=MODEL_NAME, source_run_id=trial.run_id,
                tags={TRIAL_TAG: trial_id, STUDY_TAG: self.study_name}, params=trial.params)
            with _scoped_tracking_uri(self.tracking_uri):
                info = mlflow.pytorch.log_model(
                    model, name=MODEL_NAME, model_id=logged.model_id, run_id=trial.run_id,
                    signature=signature, input_example=example, serialization_format="pt2",
                    pip_requirements=[f"torch=={importlib.metadata.version('torch')}"],
                    step=trial.last_step or 0)
        except Exception as exc:  # a missing or unreadable checkpoint must not stop the study
            log.warning("trial %s: could not log its model from %s: %s", trial_id, checkpoint_path, exc)
            self._log_tags(trial.run_id, {MODEL_ERROR_TAG: f"{type(exc).__name__}: {exc}"[-_MAX_TAG:]})
            return
        trial.model_uri = info.model_uri
        self._log_tags(trial.run_id, {MODEL_URI_TAG: trial.model_uri})


@contextmanager
def _scoped_tracking_uri(uri: str) -> Iterator[None]:
    """Set MLflow's global tracking URI for a block: ``log_model`` builds its own client from it.

    MLflow's ``_use_tracking_uri`` restores the module global but unsets ``MLFLOW_TRACKING_URI`` when that global
    was unset, so the variable is restored here too.
    """
    saved = os.environ.get(MLFLOW_TRACKING_URI.name)
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        if saved is None:
            os.environ.pop(MLFLOW_TRACKING_URI.name, None)
        else:
            os.environ[MLFLOW_TRACKING_URI.name] = saved


# --- Ray Tune adapter ------------------------------------------------------------------------------------------


@contextmanager
def local_checkpoint_dir(path: str) -> Iterator[str]:
    """A local directory with the contents of checkpoint directory ``path`` (a local path or a URI, e.g. s3://).

    A local path is used in place; a remote one is downloaded to a temporary directory removed afterwards.
    """
    from ray.train import Checkpoint

    with Checkpoint(path).as_directory() as local:
        yield local


def _result_step(result: Mapping[str, Any]) -> int:
    """The MLflow step of a Tune result: its 1-based ``epoch``, else Tune's ``training_iteration``."""
    for key in ("epoch", "training_iteration"):
        value = result.get(key)
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return int(float(value))
    return 0


def _error_text(trial: Trial) -> str:
    """The trial's error as Tune recorded it (its error file), or a short note when there is none."""
    try:
        if trial.error_file and Path(trial.error_file).exists():
            return Path(trial.error_file).read_text(errors="replace")
        return str(trial.get_error() or f"trial {trial.trial_id} errored (no error file)")
    except OSError as exc:
        return f"trial {trial.trial_id} errored (error file unreadable: {exc})"


class MLflowTuneCallback(Callback):
    """Forward Ray Tune's trial events to a :class:`StudyTracker` (add it to ``tune.RunConfig(callbacks=...)``).

    The driver is the only writer. Each result's ``epoch`` is the step; on completion the trial's last result is
    the final one and its ``checkpoint_path`` (a storage path or URI) is fetched to a local directory only when the
    trial is on the front.
    """

    def __init__(self, tracker: StudyTracker) -> None:
        self.tracker = tracker
        self._started = False
        self._seen: set[str] = set()

    def setup(self, stop: Any = None, num_samples: int | None = None, total_num_samples: int | None = None,
              **info: Any) -> None:
        """Start the tracker (get or create the experiment and parent run) when Tune starts."""
        self._ensure_started()

    def _ensure_started(self) -> None:
        if not self._started:
            self.tracker.start()
            self._started = True

    def _ensure_trial(self, trial: Trial) -> None:
        self._ensure_started()
        if trial.trial_id not in self._seen:
            self.tracker.trial_started(trial.trial_id, dict(trial.config))
            self._seen.add(trial.trial_id)

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        """Create or reuse the trial's child run."""
        self._seen.discard(trial.trial_id)  # a restart reopens a failed run
        self._ensure_trial(trial)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        """Log one epoch's metrics."""
        self._ensure_trial(trial)
        self.tracker.trial_result(trial.trial_id, result, _result_step(result))

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        """Finish the trial's run, update the front, and log the model of a front trial."""
        self._ensure_trial(trial)
        final = dict(trial.last_result or {})
        uri = final.get("checkpoint_path")
        with ExitStack() as stack:
            local = None
            if isinstance(uri, str) and uri and self.tracker.needs_checkpoint(final):
                try:
                    local = stack.enter_context(local_checkpoint_dir(uri))
                except Exception as exc:  # unreachable storage costs the model, not the study's record
                    log.warning("trial %s: checkpoint %s unavailable (%s); no model logged", trial.trial_id, uri, exc)
            self.tracker.trial_completed(trial.trial_id, final, local)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        """End the trial's run as FAILED with Tune's error text."""
        self._ensure_trial(trial)
        self.tracker.trial_failed(trial.trial_id, _error_text(trial))

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        """End the parent run."""
        if self._started:
            self.tracker.finish()
