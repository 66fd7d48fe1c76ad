"""Training checkpoints: one file holding the modules, the optimiser, the run's progress and every RNG state.

A checkpoint holds only tensors and plain Python values, so it loads with ``weights_only=True``: a planted file
that asks the unpickler to run code is refused. Writes are atomic (a temporary file, then a rename).
"""

from __future__ import annotations

import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from .config import TrainConfig

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = 1

Metrics = dict[str, float]


@dataclass
class RunState:
    """Everything a checkpoint holds beyond the modules and the optimiser."""

    epoch: int = 0  # completed epochs
    step: int = 0  # completed optimiser steps
    history: list[Metrics] = field(default_factory=list)


def rng_state() -> dict[str, Any]:
    """Every generator's state, as tensors and plain Python values (a checkpoint loads with ``weights_only``)."""
    name, keys, pos, has_gauss, cached = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                                       float(cached)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, *, model: nn.Module, predictors: nn.Module | None,
                    optimizer: torch.optim.Optimizer, state: RunState, cfg: TrainConfig,
                    swa: dict[str, Any] | None) -> None:
    """Write a checkpoint atomically (temp file, then rename); ``swa`` is the average's ``state_dict``."""
    payload = {
        "format": FORMAT,
        "config": cfg.to_dict(),
        "epoch": state.epoch,
        "step": state.step,
        "history": state.history,
        "model": model.state_dict(),
        "predictors": predictors.state_dict() if predictors is not None else None,
        "optimizer": optimizer.state_dict(),
        "swa": swa,
        "rng": rng_state(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only``: data, never code)."""
    return torch.load(path, map_location=map_location, weights_only=True)


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable, or not one of :func:`save_checkpoint`'s; one line."""


def first_line(err: BaseException) -> str:
    """An exception's message as one line (torch's load errors run over several)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """:func:`load_checkpoint` for a file a user named: :class:`CheckpointError` says in one line what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's remarks on a damaged file's "pickle protocol" say nothing more
            ckpt = load_checkpoint(path, map_location)
    except OSError as err:  # the file itself: permissions, I/O
        raise CheckpointError(f"cannot read checkpoint {path}: {first_line(err)}") from None
    except Exception as err:  # bytes that are no checkpoint: torch.load raises any of a dozen unrelated types
        reason = first_line(err)
        if reason.startswith("Weights only load failed"):  # torch's advice there (weights_only=False) is unsafe
            why = "corrupt, or it holds code"
        else:  # IndexError "pop from empty list", EOFError, KeyError, UnicodeDecodeError, a broken zip ...
            why = f"corrupt or truncated: {type(err).__name__}: {reason}" if reason != type(err).__name__ else \
                f"corrupt or truncated: {reason}"
        raise CheckpointError(f"cannot read checkpoint {path}: not a file torch.load accepts with weights_only=True "
                              f"({why})") from None
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a checkpoint of arat_train.train (no 'config' / 'model' entries)")
    return ckpt
