"""One Tune trial = one Ray Train run: the Tune function trainable and the Train worker loop around ``arat_train``.

* :func:`run_trial` (the Tune trainable) builds the trial's TrainConfig, launches a ``TorchTrainer`` (DDP: gloo on
  CPU, NCCL on GPU) whose run name is stable across the trial's retries and unique per study, and lets
  ``TuneReportCallback`` forward rank 0's (already all-reduced) metrics to Tune.
* :func:`worker_loop` (every Train worker) runs :func:`arat_train.train`; after each epoch every rank calls
  ``ray.train.report`` and rank 0 attaches the epoch's checkpoint; a restarted run resumes from
  ``ray.train.get_checkpoint()``.

Deterministic failures (a diverged loss, the ``debug.fail_trials`` hook) are not worth retrying: the workers return
the reason instead of raising (so Ray Train does not restart them), the trainable records it next to the Train run
and raises :class:`TrialFailed`, and a Tune-level retry of that trial fails at once from the record.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import torch
from ray import tune
from ray.train.torch import TorchConfig, get_device
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

from arat_train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from arat_train.config import TrainConfig
from arat_train.train import TrainingDiverged, train

from .ray_internals import lean_torch_trainer, train_report_logger
from .space import trial_config
from .storage import exists, read_text, storage_uri, write_text
from .train_report import URIReportCallback

log = logging.getLogger(__name__)

FAILURE_RECORD = "trial_failure.json"
CHECKPOINTS_TO_KEEP = 2  # the latest is what a front model is logged from; one more covers a report in flight
TRAIN_LOG_LEVEL = "WARNING"  # Ray Train's console level (its log files under the session directory keep INFO)


class TrialFailed(RuntimeError):
    """A trial failed for a reason that a retry would repeat (divergence, the forced-failure hook)."""


class ForcedTrialFailure(RuntimeError):
    """Raised on purpose by the ``debug.fail_trials`` test hook."""


@dataclass(frozen=True)
class StudyContext:
    """What every trial of a study shares; passed to the trainable with ``tune.with_parameters``."""

    name: str
    train: dict[str, Any]  # the preset's fixed TrainConfig mapping
    storage_path: str  # study storage root (local absolute path or URI); Train runs live under <root>/<name>/
    num_workers: int
    use_gpu: bool
    resources_per_worker: dict[str, float]
    train_max_failures: int
    fail_trials: tuple[int, ...] = ()
    placement_strategy: str = "PACK"  # of the trial's workers over nodes (ray.train.ScalingConfig)

    @property
    def train_storage(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}/train_runs"


def trial_name(trial: Any) -> str:
    """``t<index>_<trial_id>``: the 0-based creation index (Tune's experiment tag counter) and the trial id."""
    counter = int(str(trial.experiment_tag).split("_", 1)[0] or 1)
    return f"t{counter - 1:03d}_{trial.trial_id}"


def trial_index(name: str) -> int:
    """The index :func:`trial_name` put in a trial's name (-1 if it is not there)."""
    match = re.match(r"^t(\d+)_", name)
    return int(match.group(1)) if match else -1


def run_trial(config: dict[str, Any], study: StudyContext) -> None:
    """Tune function trainable: train one configuration (flat dotted keys) with a Ray Train ``TorchTrainer``."""
    context = tune.get_context()
    trial_id, name = context.get_trial_id(), context.get_trial_name()
    run_name = f"{study.name}_{trial_id}"  # stable across this trial's retries, unique per study
    failure = _read_failure(study.train_storage, run_name)
    if failure is not None:
        raise TrialFailed(f"{failure} (recorded by an earlier attempt; not retried)")
    cfg = trial_config(study.train, config)
    trainer_cls = lean_torch_trainer()
    in_process = bool(getattr(trainer_cls, "controller_in_process", False))  # the controller runs in this process
    trainer = trainer_cls(
        worker_loop,  # Train V2 hands rank 0's return value on as Result.return_value
        train_loop_config={"train": cfg.to_dict(), "fail": trial_index(name) in study.fail_trials,
                           "train_storage": study.train_storage},
        torch_config=TorchConfig(backend="nccl" if study.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=study.num_workers, use_gpu=study.use_gpu,
                                               resources_per_worker=study.resources_per_worker,
                                               placement_strategy=study.placement_strategy),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=study.train_storage,
            failure_config=ray.train.FailureConfig(max_failures=study.train_max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=CHECKPOINTS_TO_KEEP),
            callbacks=[URIReportCallback(study.train_storage, in_process)],  # type: ignore[list-item]  # a V2 UserCallback
            # Train's INFO lines (resources requested, worker group started, each report and checkpoint) would
            # bury Tune's status table; they stay in Train's log files under the Ray session directory.
            logging_config=ray.train.LoggingConfig(log_level=TRAIN_LOG_LEVEL),  # type: ignore[call-arg]
        ),
    )
    outcome = getattr(trainer.fit(), "return_value", None)  # fit raises once Train's retries are spent
    if isinstance(outcome, dict) and outcome.get("error"):
        _write_failure(study.train_storage, run_name, outcome["error"])
        raise TrialFailed(outcome["error"])


def _failure_path(train_storage: str, run_name: str) -> str:
    return f"{train_storage.rstrip('/')}/{run_name}/{FAILURE_RECORD}"


def _read_failure(train_storage: str, run_name: str) -> str | None:
    path = _failure_path(train_storage, run_name)
    if not exists(path):
        return None
    return str(json.loads(read_text(path))["error"])


def _write_failure(train_storage: str, run_name: str, error: str) -> None:
    write_text(_failure_path(train_storage, run_name), json.dumps({"error": error}))


def _quiet_report_log() -> None:
    """Train's per-report INFO line ("Reporting training result ...") comes from a logger named after its module's
    file, outside ``ray.train``, so LoggingConfig does not reach it: hold it to the same level."""
    logger = train_report_logger()  # None on another Ray layout: its logging stays as it is
    if logger is not None:
        logger.setLevel(TRAIN_LOG_LEVEL)


def worker_loop(config: dict[str, Any]) -> dict[str, str] | None:
    """Ray Train worker: ``arat_train.train`` with per-epoch ``ray.train.report``; rank 0 attaches checkpoints.

    Returns ``{"error": reason}`` for a deterministic failure (every rank reaches it at the same epoch, since the
    loss is all-reduced), ``None`` otherwise.
    """
    cfg = _on_worker_device(TrainConfig.from_dict(config["train"]))
    _quiet_report_log()
    rank = ray.train.get_context().get_world_rank()
    node_id = ray.get_runtime_context().get_node_id()  # gathered into ``node_ids`` by URIReportCallback
    restored = ray.train.get_checkpoint()
    resumed_from = 0  # epoch of the checkpoint this attempt started from, reported with every epoch
    reports = 0

    def report(metrics: dict[str, float], saved: Path | None) -> None:
        nonlocal reports
        epoch = int(metrics["epoch"])
        checkpoint = ray.train.Checkpoint.from_directory(str(saved.parent)) if saved is not None else None
        ray.train.report({**metrics, "resumed_from_epoch": float(resumed_from), "node_id": node_id},
                         checkpoint=checkpoint, checkpoint_dir_name=f"epoch_{epoch:04d}")
        reports += 1
        if config.get("fail"):
            raise ForcedTrialFailure(f"debug.fail_trials: trial forced to fail after epoch {epoch}")

    with (restored.as_directory() if restored is not None else nullcontext(None)) as resume_dir, \
            tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as checkpoint_dir:
        resume_from = Path(resume_dir) / CHECKPOINT_NAME if resume_dir is not None else None
        last: dict[str, float] = {}
        if resume_from is not None:
            state = load_checkpoint(resume_from)
            resumed_from, last = int(state["epoch"]), dict(state["history"][-1]) if state["history"] else {}
            log.info("rank %d resumes from %s (epoch %d)", rank, resume_from, resumed_from)
        try:
            train(cfg, callback=report, checkpoint_dir=checkpoint_dir, resume_from=resume_from)
        except (TrainingDiverged, ForcedTrialFailure) as err:
            return {"error": f"{type(err).__name__}: {err}"}
    if reports == 0 and restored is not None and last:
        # The run had already finished (its study driver died before Tune recorded the end): report the final
        # result again, pointing at the checkpoint it ended with.
        ray.train.report({**last, "resumed_from_epoch": float(resumed_from), "node_id": node_id,
                          CHECKPOINT_PATH_KEY: storage_uri(config["train_storage"], str(restored.path))})
    return None


def _on_worker_device(cfg: TrainConfig) -> TrainConfig:
    """Pin a CUDA run to this worker's GPU: Ray Train may show a node's workers all of its GPUs."""
    if cfg.device in ("auto", "cuda") and torch.cuda.is_available():
        device = get_device()
        torch.cuda.set_device(device)
        return dataclasses.replace(cfg, device=str(device))
    return cfg
