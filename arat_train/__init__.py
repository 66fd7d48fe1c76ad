"""AR-AT (Waseda et al., ICLR 2025) as a plain PyTorch library: split-BN models, PGD, the asymmetric invariance
loss with auto-balanced cross-entropy, the PGD-AT and TRADES baselines, and a training loop that hands per-epoch
metrics to a callback. No Ray, Optuna or MLflow here: ``orchestrator/`` is the shell around it.
"""

from __future__ import annotations

from .attacks import pgd_attack
from .checkpoint import load_checkpoint
from .config import TrainConfig, load_config
from .data import load_dataset, shard
from .losses import Predictor, Predictors, arat_loss, invariance_loss, trades_loss
from .models import build_model, export_model
from .train import TrainingDiverged, lr_at, train

__all__ = [
    "Predictor",
    "Predictors",
    "TrainConfig",
    "TrainingDiverged",
    "arat_loss",
    "build_model",
    "export_model",
    "invariance_loss",
    "load_checkpoint",
    "load_config",
    "load_dataset",
    "lr_at",
    "pgd_attack",
    "shard",
    "trades_loss",
    "train",
]
