"""AR-AT (Waseda et al., ICLR 2025) as a plain PyTorch library: split-BN models, PGD, the asymmetric invariance
loss with auto-balanced cross-entropy, the PGD-AT and TRADES baselines, and a training loop that hands per-epoch
metrics to a callback. No Ray, Optuna or MLflow here: ``orchestrator/`` is the shell around it.

The names below load on first use, so ``arat_train.config`` (plain Python and YAML) can be imported without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "pgd_attack": "attacks",
    "load_checkpoint": "checkpoint",
    "TrainConfig": "config",
    "load_config": "config",
    "load_dataset": "data",
    "shard": "data",
    "Predictor": "losses",
    "Predictors": "losses",
    "arat_loss": "losses",
    "invariance_loss": "losses",
    "trades_loss": "losses",
    "build_model": "models",
    "export_model": "models",
    "TrainingDiverged": "train",
    "lr_at": "train",
    "train": "train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'arat_train' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
