"""Verify a checkpoint's robustness from the command line: clean, PGD (with restarts) and AutoAttack accuracy.

    python -m arat_train.evaluate --checkpoint runs/x/checkpoint.pt --attack autoattack --split test

The attacks themselves are in :mod:`arat_train.robustness`; this module loads a checkpoint (or its SWA average)
with the split it asks for and prints or returns the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from tqdm import tqdm

from .checkpoint import CheckpointError, first_line, read_checkpoint
from .config import ConfigError, TrainConfig
from .data import ArrayData, Split, load_split
from .robustness import Progress, aa_attacks, autoattack_accuracy, pgd_accuracy, seeded
from .swa import ParamAverage, reestimate_adv_bn
from .train import build, load_data, resolve_device

log = logging.getLogger("arat_train.evaluate")  # the same name under `python -m`


class CliError(Exception):
    """A bad argument or input file; the CLI prints it and exits with status 2."""


def load_for_evaluation(path: str | Path, split: str, device: torch.device, *, data_root: str | None = None,
                        swa: bool = False, seed: int = 0) -> tuple[nn.Module, TrainConfig, ArrayData]:
    """The model of checkpoint ``path`` (or its SWA average), its config, and split ``split`` of its data set.

    Raises :class:`CliError` for a missing or unreadable file, or one that is not a training checkpoint.
    """
    path = Path(path)
    try:
        ckpt = read_checkpoint(path, device)
    except CheckpointError as err:
        raise CliError(str(err)) from None
    stored_data = ckpt["config"].get("data") if isinstance(ckpt["config"], dict) else None
    if split == "test" and isinstance(stored_data, dict) and stored_data.get("dataset") == "digits" \
            and "test_size" not in stored_data:
        raise CliError(f"{path} was trained before digits held out its test split (its config has no "
                       "data.test_size): it trained on today's test images, so --split test would not be held out; "
                       "use --split val, or train it again")
    try:
        cfg = TrainConfig.from_dict(ckpt["config"])
    except (ConfigError, TypeError) as err:
        raise CliError(f"{path} holds a config this version refuses: {first_line(err)}") from None
    if data_root:
        cfg = replace(cfg, data=replace(cfg.data, root=data_root))
    if cfg.perf.num_threads:
        torch.set_num_threads(cfg.perf.num_threads)
    data = load_split(cfg.data, cast(Split, split), download=False).to(device)
    model = build(cfg, data.num_classes, int(data.x.shape[1]), device).model
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, AttributeError) as err:
        raise CliError(f"{path}: its weights do not fit the network of its own config ({first_line(err)})") \
            from None
    if swa:
        if not ckpt.get("swa") or not ckpt["swa"]["n"]:
            raise CliError(f"{path} holds no SWA average (train with swa.enabled: true)")
        average = ParamAverage(0, 1)
        average.load_state_dict(ckpt["swa"])
        model = average.averaged(model)
        train_data, _ = load_data(cfg, device)
        with seeded(seed, device):
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
        aa_attacks(args.version, attacks)  # refuse a bad choice before any work
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
        print(f"error: {first_line(err)}", file=sys.stderr)
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

