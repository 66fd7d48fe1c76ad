"""What the APGD objective costs against a trial's training, per preset: seconds measured side by side in one run.

A trial with ``eval.final_attack: apgd`` attacks its validation images once, at its last epoch, with the eval PGD,
APGD-CE and APGD-T (:func:`arat_train.robustness.objective_counts`). This measures, on the preset's own model,
attack settings and batch sizes:

* ``train_s_per_image``: one optimiser step of the preset's training (attack included), per image;
* ``pgd_s_per_image``, ``apgd_ce_s_per_image``, ``apgd_t_s_per_image``: each evaluation attack per attacked image.
  AutoAttack attacks only what is still robust, so these are measured with every image counted as attacked (the
  labels are the model's own predictions, and one APGD-T target runs on every image, times the targets): the most
  an image can cost;

and turns them into the objective's share of the trial's training time for the preset's sizes, at a robustness
profile: the images APGD-CE attacks are the clean-correct ones, those APGD-T attacks the ones still robust after
it. ``--profile`` gives (clean, robust) fractions (default: the paper's CIFAR-10 AR-AT figures, 0.88 / 0.49, and
the upper bound 1 / 1).

    python benchmarks/objective_cost.py search_spaces/cifar10_resnet18.yaml --device cpu --threads 2

On a GPU, training runs under bf16 autocast and the objective in fp32, so the share there is larger than on a CPU
by about the bf16 speed-up of the training step (measure it there with ``--device cuda``).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import torch

from arat_train.attacks import pgd_attack
from arat_train.robustness import AdvBranch, _build_autoattack, set_apgd_iters
from arat_train.train import build, make_optimizer, train_step
from orchestrator.space import load_spec

DATA_SIZES = {"digits": 1797, "cifar10": 50_000, "cifar100": 50_000}  # training-set images before the splits


def _time(fn: Callable[[], object], repeats: int) -> float:
    """Best of ``repeats`` timed calls (after one untimed warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(preset: str, device: torch.device, batch: int, repeats: int,
            iters: int) -> dict[str, float | int | str]:
    """Per-image seconds of a training step and of each evaluation attack, for the preset's fixed configuration."""
    spec = load_spec(preset)  # its model and attacks; they run on ``device`` whatever the preset's device
    cfg = spec.train_config({})
    channels = 1 if cfg.data.dataset == "digits" else 3
    size = cfg.data.image_size if cfg.data.dataset == "digits" else 32
    classes = 100 if cfg.data.dataset == "cifar100" else 10
    torch.manual_seed(0)
    objective = build(cfg, classes, channels, device)
    optimizer = make_optimizer(objective, cfg.optim, device)
    x = torch.rand(batch, channels, size, size, device=device)  # (B, C, H, W)
    y = torch.randint(0, classes, (batch,), device=device)
    train_s = _time(lambda: train_step(objective, objective, optimizer, x, y, cfg.attack, 0.5, cfg.optim.lr), repeats)
    model = objective.model.eval()
    net = AdvBranch(model)
    with torch.no_grad():
        own = net(x).argmax(1)  # the model's own predictions: every image starts out "correct"
    ev = cfg.eval
    pgd_s = _time(lambda: pgd_attack(partial(model, bn="adv"), x, own, **ev.attack.kwargs()), repeats)
    aa = _build_autoattack(net, "cheap", ("apgd-ce", "apgd-t"), eps=ev.attack.eps, norm=ev.attack.norm, seed=0,
                           num_classes=classes, device=device)
    # An APGD iteration costs the same throughout, so ``iters`` of them are timed and scaled to the preset's.
    timed = min(iters, ev.apgd_iters)
    for attack in (aa.apgd, aa.apgd_targeted):
        set_apgd_iters(attack, timed)
    scale = ev.apgd_iters / timed
    targets = min(ev.apgd_targets, classes - 1)
    # APGD-T attacks each target class in turn, only the images still robust; a single target over every image,
    # times the targets, is what an image that survives them all costs.
    aa.apgd_targeted.n_target_classes = 1
    ce_s = scale * _time(lambda: aa.apgd.perturb(x, own), repeats)
    t_s = scale * targets * _time(lambda: aa.apgd_targeted.perturb(x, own), repeats)
    n_train = DATA_SIZES[cfg.data.dataset] - cfg.data.val_size - (cfg.data.test_size if cfg.data.dataset == "digits"
                                                                   else 0)
    n_val = cfg.data.val_size if ev.max_examples <= 0 else min(ev.max_examples, cfg.data.val_size)
    return {"preset": Path(preset).name, "model": cfg.model.name, "batch": batch, "train_images": n_train,
            "epochs": cfg.optim.epochs, "final_examples": min(n_val, ev.final_examples or n_val),
            "apgd_iters": ev.apgd_iters, "apgd_targets": ev.apgd_targets, "final_attack": ev.final_attack,
            "train_s_per_image": train_s / batch, "pgd_s_per_image": pgd_s / batch,
            "apgd_ce_s_per_image": ce_s / batch, "apgd_t_s_per_image": t_s / batch}


def share(row: dict, clean: float, robust: float) -> float:
    """The objective's seconds over the trial's training seconds, at a (clean, robust) profile."""
    per_image = (row["pgd_s_per_image"] + clean * row["apgd_ce_s_per_image"] + robust * row["apgd_t_s_per_image"])
    training = row["train_s_per_image"] * row["train_images"] * row["epochs"]
    return per_image * row["final_examples"] / training


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("presets", nargs="+", help="study presets (search_spaces/*.yaml)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--batch", type=int, default=32, help="images per timed call")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--iters", type=int, default=20, help="APGD iterations timed (scaled to the preset's)")
    p.add_argument("--profile", action="append", default=[], metavar="CLEAN,ROBUST",
                   help="robustness profile(s) for the share (default: 0.88,0.49 and 1,1)")
    p.add_argument("--out", default="benchmarks/results/objective_cost.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    profiles = [tuple(float(v) for v in s.split(",")) for s in args.profile] or [(0.88, 0.49), (1.0, 1.0)]
    rows = []
    for preset in args.presets:
        row = measure(preset, device, args.batch, args.repeats, args.iters)
        row["shares"] = {f"{c:g}/{r:g}": share(row, c, r) for c, r in profiles}
        rows.append(row)
    name = platform.processor() or platform.machine()
    print(f"{device} ({name}), {torch.get_num_threads()} threads; seconds per image, objective share of a trial's "
          "training at (clean, robust) profiles")
    print(f"{'preset':<24}{'train':>9}{'PGD':>9}{'APGD-CE':>9}{'APGD-T':>9}  share " + "  ".join(row["shares"]))
    for r in rows:
        print(f"{r['preset']:<24}{r['train_s_per_image']:>9.4f}{r['pgd_s_per_image']:>9.4f}"
              f"{r['apgd_ce_s_per_image']:>9.4f}{r['apgd_t_s_per_image']:>9.4f}  "
              + "  ".join(f"{v:>7.1%}" for v in r["shares"].values()))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": str(device), "device_name": name, "threads": torch.get_num_threads(),
                               "torch": torch.__version__, "commit": commit,
                               "date": datetime.now(UTC).isoformat(timespec="seconds"), "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
