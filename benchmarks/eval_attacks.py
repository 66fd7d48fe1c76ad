"""Seconds per 1,000 examples of the evaluation attacks: PGD-20, cheap AutoAttack and standard AutoAttack.

All three attack the same model (adv-BN branch, eval mode) on the same first ``--n`` validation examples.
AutoAttack only attacks the examples that are still classified correctly, so its cost grows with the model's
clean and robust accuracy: the model is trained briefly by default (``--epochs``; 0 = randomly initialised,
which makes AutoAttack look far cheaper than it is), or loaded with ``--checkpoint``. Accuracies are printed
next to the times so the figures can be read in that light.

    python benchmarks/eval_attacks.py                       # small_cnn, 8 epochs of AR-AT on digits, CPU
    python benchmarks/eval_attacks.py --checkpoint runs/r18/checkpoint.pt --device cuda --n 1000
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn

from arat_train.checkpoint import load_checkpoint
from arat_train.config import TrainConfig, load_config
from arat_train.data import ArrayData
from arat_train.robustness import AttackResult, autoattack_accuracy, pgd_accuracy
from arat_train.train import build, load_data, resolve_device, train

DIGITS = str(Path(__file__).resolve().parents[1] / "arat_train" / "configs" / "digits.yaml")


def _model(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, ArrayData, TrainConfig, str]:
    """(model, validation split, its config, how the model was made)."""
    ckpt = load_checkpoint(args.checkpoint, device) if args.checkpoint else None
    if ckpt is not None:
        cfg = TrainConfig.from_dict(ckpt["config"])
        how = f"checkpoint {args.checkpoint}"
    else:
        cfg = load_config(DIGITS, [f"model.name={args.model}", f"device={device}",
                                   f"optim.epochs={max(args.epochs, 1)}"])
        how = f"AR-AT, {args.epochs} epoch(s) on digits" if args.epochs else "randomly initialised"
    train_data, val = load_data(cfg, device)
    torch.manual_seed(cfg.seed)
    model = build(cfg, val.num_classes, int(val.x.shape[1]), device).model
    if ckpt is None and args.epochs:
        with tempfile.TemporaryDirectory(prefix="eval_attacks_") as tmp:
            train(cfg, checkpoint_dir=tmp, data=(train_data, val))
            ckpt = load_checkpoint(Path(tmp) / "checkpoint.pt", device)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    return model, val, cfg, how


def _row(result: AttackResult) -> dict[str, float | str | int]:
    return {"attack": result.attack, "seconds": round(result.seconds, 3),
            "s_per_1000": round(result.seconds * 1000 / result.n_examples, 2),
            "clean_acc": round(result.clean_acc, 4), "robust_acc": round(result.robust_acc, 4),
            "n": result.n_examples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="small_cnn", choices=["small_cnn", "resnet18", "wrn34_10"])
    parser.add_argument("--checkpoint", help="benchmark this checkpoint (any model and data set) instead")
    parser.add_argument("--epochs", type=int, default=8,
                        help="AR-AT epochs on digits before timing (8 = digits.yaml; 0 = random init)")
    parser.add_argument("--n", type=int, default=256, help="examples attacked by every attack")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--out", default="benchmarks/results/eval_attacks.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model, val, cfg, how = _model(args, device)
    eps = cfg.eval.attack.eps
    if args.threads:
        torch.set_num_threads(args.threads)  # training applies the config's perf.num_threads
    common = {"eps": eps, "n_examples": args.n, "batch_size": args.batch_size, "seed": 0}
    pgd_accuracy(model, val.x, val.y, **{**common, "n_examples": 16}, steps=2)  # warm-up, not timed
    rows = [
        _row(pgd_accuracy(model, val.x, val.y, steps=20, **common)),
        _row(autoattack_accuracy(model, val.x, val.y, version="cheap", **common)),
        _row(autoattack_accuracy(model, val.x, val.y, version="standard", **common)),
    ]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"{cfg.model.name} on {cfg.data.dataset}'s {len(val)}-example validation split ({how}); {device} ({name}), "
          f"{torch.get_num_threads()} threads, eps {eps:g}/255 linf, n = {rows[0]['n']}")
    print(f"{'attack':<22}{'s / 1,000':>11}{'seconds':>10}{'clean':>8}{'robust':>8}")
    for r in rows:
        print(f"{r['attack']:<22}{r['s_per_1000']:>11.2f}{r['seconds']:>10.2f}{r['clean_acc']:>8.3f}"
              f"{r['robust_acc']:>8.3f}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "model": cfg.model.name, "dataset": cfg.data.dataset, "model_source": how, "eps": eps,
        "norm": "linf", "n": args.n, "batch_size": args.batch_size, "device": str(device), "device_name": name,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "commit": commit,
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "rows": rows,
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
