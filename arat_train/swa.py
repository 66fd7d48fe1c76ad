"""AR-AT+SWA: equal-weight parameter averaging, then re-estimation of the adv-BN statistics on PGD examples."""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .attacks import pgd_attack
from .config import AttackConfig
from .data import ArrayData, random_crop_flip, to_float
from .models import SplitBatchNorm


class ParamAverage:
    """Running equal-weight mean of a model's parameters, snapshot every ``every`` steps from ``start_step``."""

    def __init__(self, start_step: int, every: int) -> None:
        self.start_step = start_step
        self.every = every
        self.n = 0
        self.mean: dict[str, Tensor] = {}

    def due(self, step: int) -> bool:
        """Whether the model after optimiser step ``step`` (1-based) is a snapshot."""
        return step >= self.start_step and (step - self.start_step) % self.every == 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current parameters into the mean: ``mean += (p - mean) / (n + 1)``."""
        for name, p in model.named_parameters():
            if self.n == 0:
                self.mean[name] = p.detach().float().clone()
            else:
                self.mean[name] += (p.detach().float() - self.mean[name]) / (self.n + 1)
        self.n += 1

    def averaged(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` carrying the averaged parameters (buffers copied as they are)."""
        if self.n == 0:
            raise RuntimeError("no snapshot was averaged yet")
        out = copy.deepcopy(model)
        with torch.no_grad():
            for name, p in out.named_parameters():
                p.copy_(self.mean[name])
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "start_step": self.start_step, "every": self.every}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n, self.mean = state["n"], state["mean"]
        self.start_step, self.every = state["start_step"], state["every"]


def _adv_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorms the adv branch uses: each split pair's ``adv``, and every BN of a single-BN model."""
    clean = {id(m.clean) for m in model.modules() if isinstance(m, SplitBatchNorm)}
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in clean]


def _set_momentum(norms: list[nn.modules.batchnorm._BatchNorm], momentum: float | None) -> None:
    for bn in norms:
        bn.momentum = momentum


def reestimate_adv_bn(
    model: nn.Module, data: ArrayData, attack: AttackConfig, *, batch_size: int, augment: bool = False,
    generator: torch.Generator | None = None,
    autocast: Callable[[], AbstractContextManager[None]] = nullcontext,
) -> None:
    """Reset the adv-BN running statistics and re-estimate them with one pass of PGD examples (train mode).

    PGD runs with frozen statistics (momentum 0); each batch's adversarial examples then update a cumulative
    average (momentum ``None``). Under DDP the statistics are averaged across ranks.
    """
    norms = _adv_norms(model)
    saved = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
    was_training = model.training
    model.train()
    model_fn = partial(model, bn="adv")
    gen = generator or torch.Generator(device=data.x.device).manual_seed(0)
    try:
        for batch in torch.arange(len(data), device=data.x.device).split(batch_size):
            x, y = to_float(data.x[batch]), data.y[batch]
            if augment:
                x = random_crop_flip(x, gen)
            _set_momentum(norms, 0.0)
            seen = [bn.num_batches_tracked.clone() for bn in norms]  # type: ignore[union-attr]
            with autocast():
                x_adv = pgd_attack(model_fn, x, y, **attack.kwargs())
                # PGD's forwards advanced num_batches_tracked, the divisor of the cumulative average: undo that,
                # or the reset values (mean 0, var 1) keep most of the weight.
                for bn, count in zip(norms, seen, strict=True):
                    bn.num_batches_tracked.copy_(count)  # type: ignore[union-attr]
                _set_momentum(norms, None)
                with torch.no_grad():
                    model_fn(x_adv)
    finally:
        for bn, m in zip(norms, saved, strict=True):
            bn.momentum = m
        model.train(was_training)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for bn in norms:
            for buf in (bn.running_mean, bn.running_var):
                if buf is not None:
                    dist.all_reduce(buf)
                    buf /= dist.get_world_size()
