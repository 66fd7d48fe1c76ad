"""Robust accuracy of a trained model: AutoAttack (the reference implementation, PyPI ``pyautoattack``) and PGD
with restarts.

Both attack the **adv-BN branch in eval mode**, the network that test time uses (docs/design.md, "Test time").
eps is in 1/255 of the [0, 1] pixel range, as everywhere in the config. ``standard`` AutoAttack (APGD-CE, APGD-T,
FAB-T, Square) is the number people compare; ``cheap`` runs a subset (APGD-CE + APGD-T by default) for use during
a search. The command line around these is :mod:`arat_train.evaluate`.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .accuracy import accuracy_counts, eval_mode
from .attacks import pgd_attack
from .config import AttackConfig
from .data import ArrayData, to_float

log = logging.getLogger(__name__)

AA_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
AA_STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")
AA_CHEAP = ("apgd-ce", "apgd-t")
Progress = Callable[[Iterable[Any]], Iterable[Any]]


@dataclass(frozen=True)
class AttackResult:
    """Accuracies on the first ``n_examples`` examples; an example is robust only if it is also clean-correct."""

    attack: str
    clean_acc: float
    robust_acc: float
    n_examples: int
    seconds: float


class AdvBranch(nn.Module):
    """``model`` seen through its adv-BN branch: ``AdvBranch(model)(x) == model(x, bn="adv")`` (logits)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x, bn="adv")  # (B, num_classes)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch inside the block and restore the caller's RNG state after (AutoAttack reseeds globally)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class _Forward(logging.Handler):
    """Re-emits AutoAttack's log under this module's logger: warnings once each, the rest at debug level; each
    attack's result line ("robust accuracy after APGD-CE: ...") also goes to ``on_attack`` when given."""

    def __init__(self, on_attack: Callable[[str], None] | None = None) -> None:
        super().__init__(logging.DEBUG)
        self.seen: set[str] = set()
        self.on_attack = on_attack

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if self.on_attack is not None and msg.startswith("robust accuracy after"):
            self.on_attack(msg)
        if record.levelno < logging.WARNING:
            log.debug("autoattack: %s", msg)
        elif msg not in self.seen:
            self.seen.add(msg)
            log.warning("autoattack: %s", msg)


@contextmanager
def _tidy_autoattack_output(on_attack: Callable[[str], None] | None = None) -> Iterator[None]:
    """Route the ``auto-attack`` logger and its ``warnings.warn`` calls through this module's logger."""
    aa_log = logging.getLogger("auto-attack")
    saved = (aa_log.level, aa_log.propagate, list(aa_log.handlers))
    handler = _Forward(on_attack)
    aa_log.handlers, aa_log.propagate = [handler], False
    aa_log.setLevel(logging.DEBUG)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for w in caught:
            handler.emit(logging.LogRecord("auto-attack", logging.WARNING, "", 0, str(w.message), None, None))
    finally:
        aa_log.level, aa_log.propagate, aa_log.handlers = saved


def _take(x: Tensor, y: Tensor, n_examples: int | None, device: torch.device) -> tuple[Tensor, Tensor]:
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y differ in length: {x.shape[0]} vs {y.shape[0]}")
    if n_examples is not None and n_examples < 1:
        raise ValueError(f"n_examples must be >= 1 (or None for all), got {n_examples}")
    n = x.shape[0] if n_examples is None else min(n_examples, x.shape[0])
    return to_float(x[:n].to(device)), y[:n].to(device)


def aa_attacks(version: str, attacks: Sequence[str] | None) -> tuple[str, ...]:
    if version == "standard":
        if attacks is not None:
            raise ValueError("attacks: the standard version runs its fixed four attacks; use version='cheap'")
        return AA_STANDARD
    if version != "cheap":
        raise ValueError(f"version must be 'standard' or 'cheap', got {version!r}")
    chosen = tuple(attacks) if attacks is not None else AA_CHEAP
    unknown = [a for a in chosen if a not in AA_ATTACKS]
    if unknown or not chosen:
        raise ValueError(f"attacks: unknown or empty {list(unknown or chosen)}; allowed: {list(AA_ATTACKS)}")
    return chosen


def _build_autoattack(net: nn.Module, version: str, attacks: tuple[str, ...], *, eps: float, norm: str, seed: int,
                      num_classes: int, device: torch.device) -> Any:
    """The reference AutoAttack: its own standard version, or a custom subset with the standard settings."""
    from pyautoattack import AutoAttack

    common = {"device": device, "eps": eps / 255.0, "norm": "Linf" if norm == "linf" else "L2", "seed": seed}
    if version == "standard":
        aa = AutoAttack(net, version="standard", **common)
    else:
        aa = AutoAttack(net, attacks=list(attacks), version="custom", **common)
        # What AutoAttack._set_version("standard") sets for L-inf and L2.
        aa.apgd.n_restarts = aa.apgd_targeted.n_restarts = aa.fab.n_restarts = 1
        aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = 9
        aa.square.n_queries = 5000
    # Standard targets the 9 runner-up classes (CIFAR-10); with fewer classes there are fewer to target.
    aa.apgd_targeted.n_target_classes = min(aa.apgd_targeted.n_target_classes, num_classes - 1)
    aa.fab.n_target_classes = min(aa.fab.n_target_classes, num_classes - 1)
    return aa


def autoattack_accuracy(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: Literal["linf", "l2"] = "linf",
    version: Literal["standard", "cheap"] = "standard", attacks: Sequence[str] | None = None, seed: int = 0,
    batch_size: int = 256, n_examples: int | None = None, progress: Progress = iter,
    on_attack: Callable[[str], None] | None = None,
) -> AttackResult:
    """AutoAttack accuracy of ``model``'s adv-BN branch (eval mode) on the first ``n_examples`` of ``(x, y)``.

    ``eps`` is in 1/255 (both norms). ``version="standard"`` runs APGD-CE, APGD-T, FAB-T and Square;
    ``"cheap"`` runs ``attacks`` (default APGD-CE + APGD-T) with the standard settings of each. The same ``seed``
    gives the same number; the caller's RNG state is left as it was. Runs on the model's device. ``on_attack``
    receives AutoAttack's line after each attack of each batch ("robust accuracy after APGD-CE: 52.00% ...").
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0 (in 1/255), got {eps}")
    chosen = aa_attacks(version, attacks)
    device = _device(model)
    x, y = _take(x, y, n_examples, device)
    net = AdvBranch(model)
    start = time.perf_counter()
    clean = robust = 0
    with eval_mode(model), seeded(seed, device), _tidy_autoattack_output(on_attack):
        with torch.no_grad():
            num_classes = int(net(x[:1]).shape[1])
        aa = _build_autoattack(net, version, chosen, eps=eps, norm=norm, seed=seed, num_classes=num_classes,
                               device=device)
        for idx in progress(torch.arange(x.shape[0], device=device).split(batch_size)):
            xb, yb = x[idx], y[idx]
            x_adv, _ = aa.run_standard_evaluation(xb, yb, batch_size=batch_size)
            _check_ball(x_adv, xb, eps / 255.0, norm)
            with torch.no_grad():
                clean += int((net(xb).argmax(1) == yb).sum())
                robust += int((net(x_adv).argmax(1) == yb).sum())
    n = int(x.shape[0])
    return AttackResult(f"autoattack-{version}", clean / n, robust / n, n, time.perf_counter() - start)


def objective_counts(
    model: nn.Module, x: Tensor, y: Tensor, pgd: AttackConfig, *, attacks: Sequence[str] = AA_CHEAP, seed: int = 0,
    batch_size: int = 256, iters: int = 100, targets: int = 9,
) -> Tensor:
    """Counts ``[clean, pgd_robust, robust, total]`` (int64, on ``x``'s device) of ``model``'s adv-BN branch.

    An example is ``pgd_robust`` when it is classified correctly after each of ``pgd.restarts`` PGD runs, and
    ``robust`` when it also survives each of ``attacks`` (AutoAttack's, with their standard settings): the worst
    case over all of them, so ``robust <= pgd_robust`` on the same examples by construction. ``iters`` (APGD's
    iterations, per target for APGD-T) and ``targets`` (APGD-T's target classes) default to AutoAttack's standard
    100 and 9. Runs in eval mode and fp32, seeded (the caller's RNG state is left as it was). Counts, so DDP ranks
    can sum them over their shards.
    """
    device = _device(model)
    net = AdvBranch(model)
    counts = torch.zeros(4, dtype=torch.int64, device=device)
    if x.shape[0] == 0:
        return counts
    x, y = to_float(x.to(device)), y.to(device)
    with eval_mode(model), seeded(seed, device), _tidy_autoattack_output():
        with torch.no_grad():
            num_classes = int(net(x[:1]).shape[1])
        aa = _build_autoattack(net, "cheap", aa_attacks("cheap", attacks), eps=pgd.eps, norm=pgd.norm, seed=seed,
                               num_classes=num_classes, device=device)
        for attack in (aa.apgd, aa.apgd_targeted):
            set_apgd_iters(attack, iters)
        aa.apgd_targeted.n_target_classes = min(targets, num_classes - 1)
        for idx in torch.arange(x.shape[0], device=device).split(batch_size):
            xb, yb = x[idx], y[idx]
            with torch.no_grad():
                ok = net(xb).argmax(1) == yb
            pgd_ok = ok.clone()
            for _ in range(pgd.restarts):
                x_adv = pgd_attack(net, xb, yb, **pgd.kwargs())
                with torch.no_grad():
                    pgd_ok &= net(x_adv).argmax(1) == yb
            x_aa, _ = aa.run_standard_evaluation(xb, yb, batch_size=batch_size)
            _check_ball(x_aa, xb, pgd.eps / 255.0, pgd.norm)
            with torch.no_grad():
                worst = pgd_ok & (net(x_aa).argmax(1) == yb)
            counts += torch.stack([ok.sum(), pgd_ok.sum(), worst.sum(), torch.tensor(yb.numel(), device=device)])
    return counts


def set_apgd_iters(attack: Any, iters: int) -> None:
    """Give an APGD attack ``iters`` iterations: its step-size checkpoints are fractions of them, which the
    reference implementation derives once, when the attack is built, so they are set again here."""
    attack.n_iter = attack.n_iter_orig = iters
    attack.n_iter_2, attack.n_iter_min = max(int(0.22 * iters), 1), max(int(0.06 * iters), 1)
    attack.size_decr = max(int(0.03 * iters), 1)


def _check_ball(x_adv: Tensor, x: Tensor, eps: float, norm: str) -> None:
    """Refuse a result whose examples leave the eps-ball or [0, 1] (AutoAttack only logs this)."""
    diff = (x_adv - x).flatten(1)
    size = diff.abs().amax(1) if norm == "linf" else diff.norm(dim=1)
    if size.max() > eps + 1e-4 or x_adv.min() < -1e-6 or x_adv.max() > 1 + 1e-6:
        raise RuntimeError(f"AutoAttack returned examples outside the {norm} ball of radius {eps} or [0, 1]")


def pgd_accuracy(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, steps: int = 20, step_size: float | None = None,
    restarts: int = 1, norm: Literal["linf", "l2"] = "linf", seed: int = 0, batch_size: int = 256,
    n_examples: int | None = None, progress: Progress = iter,
) -> AttackResult:
    """PGD accuracy of ``model``'s adv-BN branch (eval mode), random start, robust only if every restart fails.

    ``eps`` and ``step_size`` are in 1/255; ``step_size`` defaults to ``eps / 4`` (PGD-20 at 8/255 uses 2/255).
    More ``restarts`` give a stronger (lower) estimate at proportional cost; the same ``seed`` gives the same number.
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    attack = AttackConfig(eps=eps, steps=steps, step_size=eps / 4 if step_size is None else step_size, norm=norm,
                          restarts=restarts)
    device = _device(model)
    x, y = _take(x, y, n_examples, device)
    start = time.perf_counter()
    with eval_mode(model), seeded(seed, device):
        counts = accuracy_counts(partial(model, bn="adv"), ArrayData(x, y, 0), attack, batch_size=batch_size,
                                 progress=progress)
    n = int(counts["total"])
    name = f"pgd{steps}" + (f"x{restarts}" if restarts > 1 else "")
    return AttackResult(name, int(counts["clean"]) / n, int(counts["robust"]) / n, n, time.perf_counter() - start)


__all__ = ["AA_CHEAP", "AA_STANDARD", "AdvBranch", "AttackResult", "autoattack_accuracy", "objective_counts",
           "pgd_accuracy"]
