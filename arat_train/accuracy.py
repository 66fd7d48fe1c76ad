"""Clean and PGD accuracy of a model, as counts that ranks can sum before anything is reported."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import Tensor, nn

from .attacks import pgd_attack
from .config import AttackConfig
from .data import ArrayData, shard, to_float


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode inside the block, its previous mode restored after."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


@torch.no_grad()
def _correct(model_fn: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> Tensor:
    return model_fn(x).argmax(dim=1) == y


def accuracy_counts(
    model_fn: Callable[[Tensor], Tensor],
    data: ArrayData,
    attack: AttackConfig | None,
    *,
    batch_size: int = 256,
    rank: int = 0,
    world_size: int = 1,
    max_examples: int = 0,
    autocast: Callable[[], AbstractContextManager[None]] = nullcontext,
    progress: Callable[[Iterable[Tensor]], Iterable[Tensor]] = iter,
) -> dict[str, Tensor]:
    """Counts ``{"clean": c, "robust": r, "total": n}`` (int64 tensors) over this rank's shard of ``data``.

    The caller puts the model in eval mode and picks the BN branch through ``model_fn``. An example is robust only
    if it is classified correctly after each of ``attack.restarts`` PGD runs. ``attack=None`` skips PGD (robust = 0).
    Sum the counts across ranks (all-reduce) before turning them into accuracies.
    """
    n = len(data) if max_examples <= 0 else min(max_examples, len(data))
    idx = shard(n, rank, world_size)
    device = data.x.device
    counts = torch.zeros(3, dtype=torch.int64, device=device)
    for batch in progress(idx.split(batch_size)):
        x, y = to_float(data.x[batch.to(device)]), data.y[batch.to(device)]
        with autocast():
            ok = _correct(model_fn, x, y)
            counts[0] += ok.sum()
            robust = ok.clone()
            if attack is not None:
                for _ in range(attack.restarts):
                    x_adv = pgd_attack(model_fn, x, y, **attack.kwargs())
                    robust &= _correct(model_fn, x_adv, y)
                counts[1] += robust.sum()
        counts[2] += y.numel()
    return {"clean": counts[0], "robust": counts[1], "total": counts[2]}
