"""One Tune trial = one Ray Train run: the Tune function trainable around the Train worker loop.

* :func:`run_trial` (the Tune trainable) builds the trial's TrainConfig, launches a ``TorchTrainer`` (DDP: gloo on
  CPU, NCCL on GPU) whose run name is stable across the trial's retries and unique per study, and lets
  :class:`~orchestrator.train_report.URIReportCallback` forward rank 0's (already all-reduced) metrics to Tune.
* :func:`orchestrator.train_worker.worker_loop` (every Train worker) runs :func:`arat_train.train`.

The study's driver imports this module for :func:`run_trial` and :class:`StudyContext`; torch and the method
library are imported by :func:`run_trial` itself, in the trial's actor, so the driver never loads them for it.

Deterministic failures (a diverged loss, the ``debug.fail_trials`` hook) are not worth retrying: the workers return
the reason instead of raising (so Ray Train does not restart them), the trainable records it next to the Train run
and raises :class:`TrialFailed`, and a Tune-level retry of that trial fails at once from the record.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import ray.train
from ray import tune

from .ray_internals import lean_torch_trainer
from .space import trial_config
from .storage import exists, read_text, write_text
from .train_report import URIReportCallback

FAILURE_RECORD = "trial_failure.json"
CHECKPOINTS_TO_KEEP = 2  # the latest is what a front model is logged from; one more covers a report in flight
TRAIN_LOG_LEVEL = "WARNING"  # Ray Train's console level (its log files under the session directory keep INFO)


class TrialFailed(RuntimeError):
    """A trial failed for a reason that a retry would repeat (divergence, the forced-failure hook)."""


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
    autoscaler: bool = True  # False on the single-machine Ray the driver started: no autoscaler to ask for nodes

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
    # torch and the method library load here, in the trial's actor, and never in the study's driver.
    from ray.train.torch import TorchConfig

    from .train_worker import worker_loop

    trainer_cls = lean_torch_trainer(autoscaler=study.autoscaler)
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
