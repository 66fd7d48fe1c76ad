"""Model export: a checkpoint's adv-BN network as a standard single-BN model, logged to MLflow as a LoggedModel.

The only orchestrator module besides the trainable that imports torch; the tracker imports it when a front trial's
model is logged, so reading MLflow (``select``, ``verify``'s figures) stays free of torch.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow.pytorch
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.environment_variables import MLFLOW_TRACKING_URI
from mlflow.models import infer_signature
from mlflow.tracking._tracking_service.utils import _use_tracking_uri
from torch import nn

from arat_train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from arat_train.config import TrainConfig
from arat_train.models import export_model
from arat_train.train import build

MODEL_NAME = "model"


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


def log_checkpoint_model(client: MlflowClient, tracking_uri: str, checkpoint_path: str | Path, *,
                         experiment_id: str, run_id: str, step: int, tags: Mapping[str, str],
                         params: Mapping[str, Any]) -> str:
    """Log the exported network of ``checkpoint_path`` on run ``run_id`` as model ``model``; return its URI.

    The model is saved in ``torch.export``'s "pt2" format with a signature and an input example.
    """
    model, example = export_checkpoint(checkpoint_path)
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()  # (B, num_classes)
    signature = infer_signature(example, output)
    # log_model without an active run files the LoggedModel under the default experiment (MLflow 3.17), so it is
    # created here in the study's experiment and passed by id.
    logged = client.create_logged_model(experiment_id, name=MODEL_NAME, source_run_id=run_id, tags=dict(tags),
                                        params={k: str(v) for k, v in params.items()})
    with scoped_tracking_uri(tracking_uri):
        info = mlflow.pytorch.log_model(
            model, name=MODEL_NAME, model_id=logged.model_id, run_id=run_id, signature=signature,
            input_example=example, serialization_format="pt2",
            pip_requirements=[f"torch=={importlib.metadata.version('torch')}"], step=step)
    return str(info.model_uri)


@contextmanager
def scoped_tracking_uri(uri: str) -> Iterator[None]:
    """Set MLflow's global tracking URI for a block: ``log_model`` (and ``load_model``) build their client from it.

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
