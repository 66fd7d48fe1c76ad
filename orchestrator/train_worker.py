"""What every Ray Train worker of a trial runs: :func:`worker_loop` around :func:`arat_train.train`.

After each epoch every rank calls ``ray.train.report`` and rank 0 attaches the epoch's checkpoint; a restarted run
resumes from ``ray.train.get_checkpoint()``. Deterministic failures (a diverged loss, the ``debug.fail_trials``
hook) are returned, not raised, so that Ray Train does not restart the workers for them (see
:mod:`orchestrator.trainable`, which records them).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import ray.train
import torch
from ray.train.torch import get_device
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

from arat_train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from arat_train.config import TrainConfig
from arat_train.train import TrainingDiverged, train

from .ray_internals import train_report_logger
from .storage import storage_uri
from .trainable import TRAIN_LOG_LEVEL

log = logging.getLogger(__name__)


class ForcedTrialFailure(RuntimeError):
    """Raised on purpose by the ``debug.fail_trials`` test hook."""


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
