"""Projected gradient descent (Madry et al.) in L-inf and L2, around the clean input and inside [0, 1]."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

ModelFn = Callable[[Tensor], Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]
Norm = Literal["linf", "l2"]


def _flat_norm(t: Tensor) -> Tensor:
    """Per-example L2 norm, shaped to broadcast against ``t``."""
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def _project(delta: Tensor, eps: float, norm: Norm) -> Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    return delta * (eps / _flat_norm(delta)).clamp(max=1.0)


def _random_start(x: Tensor, eps: float, norm: Norm) -> Tensor:
    if norm == "linf":
        return torch.empty_like(x).uniform_(-eps, eps)
    direction = torch.randn_like(x)
    radius = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device, dtype=x.dtype)
    return direction / _flat_norm(direction) * radius * eps


def pgd_attack(
    model_fn: ModelFn,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    norm: Norm = "linf",
    random_start: bool = True,
    loss_fn: LossFn | None = None,
) -> Tensor:
    """Adversarial examples for ``model_fn`` by ``steps`` of projected gradient ascent.

    ``eps`` and ``step_size`` are in input units ([0, 1] pixels). After every step the perturbation is projected
    onto the eps-ball around the clean ``x`` and the example onto [0, 1]. ``loss_fn(logits, y)`` defaults to
    cross-entropy (TRADES passes its KL term). Only the input's gradient is taken (no weight gradients), and
    ``x`` is never modified. The caller chooses train or eval mode and the BN branch through ``model_fn``.
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    loss_fn = loss_fn or (lambda logits, target: F.cross_entropy(logits, target))
    x = x.detach()
    delta = _random_start(x, eps, norm) if random_start and eps > 0 else torch.zeros_like(x)
    delta = (x + delta).clamp(0.0, 1.0) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = loss_fn(model_fn(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            step = grad.sign() if norm == "linf" else grad / _flat_norm(grad)
            delta = _project(delta + step_size * step, eps, norm)
            delta = (x + delta).clamp(0.0, 1.0) - x
    return (x + delta).detach()


def pgd_linf_from_noisy(
    model_fn: ModelFn,
    centre: Tensor,
    y: Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    loss_fn: LossFn | None = None,
) -> Tensor:
    """L-inf PGD as the authors' code (futakw/AR-AT, ``attacks.PGD_linf``) runs it after its in-place random start.

    ``centre`` is their noisy image ``x + U(-eps, eps)``, not clamped: the first gradient is taken there, and every
    step is projected onto the eps-ball around ``centre``, then onto [0, 1]. Their arithmetic is kept (the example
    is carried, not the perturbation; summed cross-entropy), so the result matches theirs bit for bit. Only for
    ``attack.legacy_inplace_noise``; :func:`pgd_attack` is the attack.
    """
    loss_fn = loss_fn or (lambda logits, target: F.cross_entropy(logits, target, reduction="sum"))
    centre = centre.detach()
    x_adv = centre
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(model_fn(x_adv), y), x_adv)
        with torch.no_grad():
            x_adv = x_adv + step_size * grad.sign()
            x_adv = torch.min(torch.max(x_adv, centre - eps), centre + eps).clamp(0.0, 1.0)
    return x_adv.detach()
