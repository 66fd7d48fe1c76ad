"""Robustness verification: AutoAttack (the reference implementation, PyPI ``pyautoattack``) and PGD with restarts.

Both attack the **adv-BN branch in eval mode**, the network that test time uses (DESIGN §2). eps is in 1/255 of
the [0, 1] pixel range, as everywhere in the config. ``standard`` AutoAttack (APGD-CE, APGD-T, FAB-T, Square) is
the number people compare; ``cheap`` runs a subset (APGD-CE + APGD-T by default) for use during a search.

CLI: ``python -m arat_train.evaluate --checkpoint runs/x/checkpoint.pt --attack autoattack --split test``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from tqdm import tqdm

from .config import AttackConfig, ConfigError, TrainConfig
from .data import ArrayData, load_dataset, to_float
from .evaluation import accuracy_counts, eval_mode
from .swa import ParamAverage, reestimate_adv_bn
from .train import build, load_checkpoint, load_data, resolve_device

log = logging.getLogger("arat_train.evaluate")  # the same name under `python -m`

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
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch inside the block and restore the caller's RNG state after (AutoAttack reseeds globally)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class _Forward(logging.Handler):
    """Re-emits AutoAttack's log under this module's logger: warnings once each, the rest at debug level."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if record.levelno < logging.WARNING:
            log.debug("autoattack: %s", msg)
        elif msg not in self.seen:
            self.seen.add(msg)
            log.warning("autoattack: %s", msg)


@contextmanager
def _tidy_autoattack_output() -> Iterator[None]:
    """Route the ``auto-attack`` logger and its ``warnings.warn`` calls through this module's logger."""
    aa_log = logging.getLogger("auto-attack")
    saved = (aa_log.level, aa_log.propagate, list(aa_log.handlers))
    handler = _Forward()
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


def _aa_attacks(version: str, attacks: Sequence[str] | None) -> tuple[str, ...]:
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
) -> AttackResult:
    """AutoAttack accuracy of ``model``'s adv-BN branch (eval mode) on the first ``n_examples`` of ``(x, y)``.

    ``eps`` is in 1/255 (both norms). ``version="standard"`` runs APGD-CE, APGD-T, FAB-T and Square;
    ``"cheap"`` runs ``attacks`` (default APGD-CE + APGD-T) with the standard settings of each. The same ``seed``
    gives the same number; the caller's RNG state is left as it was. Runs on the model's device.
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0 (in 1/255), got {eps}")
    chosen = _aa_attacks(version, attacks)
    device = _device(model)
    x, y = _take(x, y, n_examples, device)
    net = AdvBranch(model)
    start = time.perf_counter()
    clean = robust = 0
    with eval_mode(model), _seeded(seed, device), _tidy_autoattack_output():
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
    with eval_mode(model), _seeded(seed, device):
        counts = accuracy_counts(partial(model, bn="adv"), ArrayData(x, y, 0), attack, batch_size=batch_size,
                                 progress=progress)
    n = int(counts["total"])
    name = f"pgd{steps}" + (f"x{restarts}" if restarts > 1 else "")
    return AttackResult(name, int(counts["clean"]) / n, int(counts["robust"]) / n, n, time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------------- the CLI


class CliError(Exception):
    """A bad argument or input file; the CLI prints it and exits with status 2."""


def load_for_evaluation(path: str | Path, split: str, device: torch.device, *, data_root: str | None = None,
                        swa: bool = False, seed: int = 0) -> tuple[nn.Module, TrainConfig, ArrayData]:
    """The model of checkpoint ``path`` (or its SWA average), its config, and split ``split`` of its data set.

    Raises :class:`CliError` for a missing or unreadable file, or one that is not a training checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CliError(f"checkpoint not found: {path}")
    try:
        ckpt = load_checkpoint(path, device)
    except Exception as err:  # torch.load raises several unrelated types for a file that is not a checkpoint
        raise CliError(f"cannot read checkpoint {path}: {err}") from None
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
        raise CliError(f"{path} is not a checkpoint of arat_train.train (no 'config' / 'model' entries)")
    cfg = TrainConfig.from_dict(ckpt["config"])
    if data_root:
        cfg = replace(cfg, data=replace(cfg.data, root=data_root))
    if cfg.perf.num_threads:
        torch.set_num_threads(cfg.perf.num_threads)
    d = cfg.data
    kw = {"root": d.root, "val_size": d.val_size, "split_seed": d.split_seed, "image_size": d.image_size,
          "download": False, "fake_size": d.fake_size, "num_classes": d.num_classes}
    data = load_dataset(d.dataset, split, **kw).to(device)  # type: ignore[arg-type]
    model = build(cfg, data.num_classes, int(data.x.shape[1]), device).model
    model.load_state_dict(ckpt["model"])
    if swa:
        if not ckpt.get("swa") or not ckpt["swa"]["n"]:
            raise CliError(f"{path} holds no SWA average (train with swa.enabled: true)")
        average = ParamAverage(0, 1)
        average.load_state_dict(ckpt["swa"])
        model = average.averaged(model)
        train_data, _ = load_data(cfg, device)
        with _seeded(seed, device):
            reestimate_adv_bn(model, train_data, cfg.attack, batch_size=cfg.optim.batch_size,
                              augment=cfg.data.augment)
    return model, cfg, data


def _load(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, TrainConfig, ArrayData]:
    return load_for_evaluation(args.checkpoint, args.split, device, data_root=args.data_root, swa=args.swa,
                               seed=args.seed)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m arat_train.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt written by arat_train.train")
    p.add_argument("--attack", choices=("autoattack", "pgd"), default="pgd",
                   help="pgd: clean + PGD; autoattack: clean + PGD + AutoAttack")
    p.add_argument("--version", choices=("standard", "cheap"), default="standard", help="AutoAttack version")
    p.add_argument("--attacks", help="cheap AutoAttack's attacks, comma-separated (default apgd-ce,apgd-t)")
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--n-examples", type=int, help="first N examples of the split (default: all)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eps", type=float, help="radius in 1/255 (default: the checkpoint's eval eps)")
    p.add_argument("--norm", choices=("linf", "l2"), help="default: the checkpoint's eval norm")
    p.add_argument("--steps", type=int, help="PGD steps (default: the checkpoint's eval steps)")
    p.add_argument("--step-size", type=float, help="PGD step in 1/255 (default: the eval step, scaled with eps)")
    p.add_argument("--restarts", type=int, default=1, help="PGD restarts")
    p.add_argument("--swa", action="store_true", help="evaluate the SWA average (adv BN re-estimated)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--data-root", help="override the checkpoint's data.root")
    p.add_argument("--json", action="store_true", help="print the results as one JSON line")
    p.add_argument("-v", "--verbose", action="store_true", help="log AutoAttack's per-attack progress")
    return p


def _run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate as ``args`` say; the result as a flat JSON-able mapping."""
    for name in ("n_examples", "batch_size", "steps", "restarts"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CliError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    attacks = [a.strip() for a in args.attacks.split(",")] if args.attacks else None
    if args.attack == "autoattack":
        _aa_attacks(args.version, attacks)  # refuse a bad choice before any work
    device = resolve_device(args.device)
    model, cfg, data = _load(args, device)
    ev = cfg.eval.attack
    eps = ev.eps if args.eps is None else args.eps
    step = args.step_size if args.step_size is not None else ev.step * (eps / ev.eps if ev.eps > 0 else 1.0)
    norm = args.norm or ev.norm
    common = {"eps": eps, "norm": norm, "seed": args.seed, "batch_size": args.batch_size,
              "n_examples": args.n_examples}

    def bar(desc: str) -> Progress:
        return lambda batches: tqdm(list(batches), desc=desc, unit="batch", leave=False, file=sys.stderr)

    pgd = pgd_accuracy(model, data.x, data.y, steps=args.steps or ev.steps, step_size=step,
                       restarts=args.restarts, progress=bar("pgd"), **common)
    out: dict[str, Any] = {"checkpoint": str(args.checkpoint), "model": "swa" if args.swa else "final",
                           "split": args.split, "n_examples": pgd.n_examples, "eps": eps, "norm": norm,
                           "seed": args.seed, "clean_acc": pgd.clean_acc, "pgd_acc": pgd.robust_acc,
                           "pgd_attack": pgd.attack, "pgd_step_size": step, "pgd_s": pgd.seconds}
    if args.attack == "autoattack":
        aa = autoattack_accuracy(model, data.x, data.y, version=args.version, attacks=attacks,
                                 progress=bar(f"autoattack-{args.version}"), **common)
        out.update({"aa_acc": aa.robust_acc, "aa_version": args.version, "aa_s": aa.seconds})
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m arat_train.evaluate``; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        out = _run(args)
    except (CliError, ConfigError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{out['model']} model, {out['split']} split, {out['n_examples']} examples, "
              f"{out['norm']} eps {out['eps']:g}/255")
        print(f"clean_acc  {out['clean_acc']:.4f}")
        print(f"pgd_acc    {out['pgd_acc']:.4f}  ({out['pgd_attack']}, {out['pgd_s']:.1f} s)")
        if "aa_acc" in out:
            print(f"aa_acc     {out['aa_acc']:.4f}  (autoattack-{out['aa_version']}, {out['aa_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["AA_CHEAP", "AA_STANDARD", "AdvBranch", "AttackResult", "autoattack_accuracy", "pgd_accuracy"]
