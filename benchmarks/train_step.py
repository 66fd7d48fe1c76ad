"""Images per second of one AR-AT training step: the library's fast path against a plain reference step.

The *plain* step is written the usual way: a DataLoader over CPU tensors with per-image crop+flip (4 worker
processes and pinned memory on a GPU), ``.to(device)`` every batch, fp32, default memory format, an attack that
calls ``loss.backward()`` (so weight gradients are computed during every attack iteration) and a ``loss.item()``
per step. The *fast* step is ``arat_train``'s: data resident on the device, batched crop+flip there, input-only
gradients in the attack, one forward of the objective per step, no host synchronisation in the loop, optional
bf16 autocast and channels-last.

Both run on the same model, batch size and attack steps, side by side in one process. The FLOP floor is the one
in docs/design.md ("Work per image"): (2K + 6) forward-equivalents per image, the forward's FLOPs counted by
torch's FlopCounterMode.

    python benchmarks/train_step.py --model resnet18 --batch-size 128 --attack-steps 10 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import time
from collections.abc import Callable
from contextlib import nullcontext
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from arat_train.config import TrainConfig
from arat_train.data import ArrayData
from arat_train.losses import arat_loss
from arat_train.train import Objective, batch_inputs, build, make_optimizer, train_step

VARIANTS = ("plain", "fast-fp32", "fast-bf16", "fast-fp32-compile", "fast-bf16-compile")
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 tensor-core rates


class _Images(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """uint8 images with per-item random crop (pad 4) and flip, as torchvision transforms would do."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = F.pad(self.x[i].float() / 255.0, (4, 4, 4, 4))
        oy, ox = torch.randint(0, 9, (2,)).tolist()
        img = img[:, oy:oy + self.x.shape[2], ox:ox + self.x.shape[3]]
        if torch.rand(()) < 0.5:
            img = img.flip(2)
        return img, self.y[i]


def _plain_pgd(model_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, eps: float,
               step: float, steps: int) -> torch.Tensor:
    """PGD as research code usually writes it: ``loss.backward()``, so weight gradients are computed too."""
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model_fn(x_adv), y)
        loss.backward()
        with torch.no_grad():
            x_adv = x_adv + step * x_adv.grad.sign()  # type: ignore[union-attr]
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def run_plain(obj: Objective, cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor, device: torch.device,
              iters: int, warmup: int) -> float:
    # The usual GPU set-up: worker processes for the per-image transforms, pinned host memory; on a CPU the
    # workers would compete with the step for the same cores.
    workers = min(4, max(0, (os.cpu_count() or 1) - 1)) if device.type == "cuda" else 0
    loader = DataLoader(_Images(x, y), batch_size=cfg.optim.batch_size, shuffle=True, drop_last=True,
                        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    opt = torch.optim.SGD(obj.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    kw = cfg.attack.kwargs()
    obj.train()
    done, start = 0, 0.0
    while done < warmup + iters:
        for xb, yb in loader:
            if done == warmup:
                _sync(device)
                start = time.perf_counter()
            xb, yb = xb.to(device), yb.to(device)
            x_adv = _plain_pgd(partial(obj.model, bn="adv"), xb, yb, kw["eps"], kw["step_size"], kw["steps"])
            opt.zero_grad()
            logits_c, feats_c = obj.model(xb, bn="clean", return_features=True)
            logits_a, feats_a = obj.model(x_adv, bn="adv", return_features=True)
            assert obj.predictors is not None
            loss = arat_loss(logits_a, logits_c, yb, obj.predictors(feats_a), feats_c, a=0.5, gamma=30.0)["loss"]
            loss.backward()
            opt.step()
            loss.item()  # the usual per-step logging sync
            done += 1
            if done == warmup + iters:
                break
    _sync(device)
    return iters * cfg.optim.batch_size / (time.perf_counter() - start)


def run_fast(obj: Objective, cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor, device: torch.device,
             iters: int, warmup: int, bf16: bool, channels_last: bool) -> float:
    """The library's own step (``batch_inputs`` + ``train_step``), fed as ``train`` feeds it."""
    data = ArrayData(x, y, 10).to(device)  # uint8, resident on the device
    gen = torch.Generator(device=device).manual_seed(0)
    opt = make_optimizer(obj, cfg.optim, device)
    bs = cfg.optim.batch_size
    order = torch.randperm(len(data) - len(data) % bs, device=device, generator=gen)
    batches = list(order.split(bs))
    autocast = partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16) if bf16 else nullcontext
    obj.train()
    start = 0.0
    for i in range(warmup + iters):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        xb, yb = batch_inputs(data, batches[i % len(batches)], augment=True, generator=gen,
                              channels_last=channels_last)
        train_step(obj, obj, opt, xb, yb, cfg.attack, 0.5, 0.01, autocast)
    _sync(device)
    return iters * bs / (time.perf_counter() - start)


def profile(obj: Objective, variant: str, cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor, device: torch.device,
            steps: int, trace: Path) -> None:
    """Where a fast step's time goes: the top operators by device (or CPU) time, and a Chrome trace."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    channels_last = variant.startswith("fast") and device.type == "cuda"
    with torch_profile(activities=activities) as prof:
        run_fast(obj, cfg, x, y, device, steps, 0, "bf16" in variant, channels_last)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\nprofile of {steps} steps of {variant}:")
    print(prof.key_averages().table(sort_by=key, row_limit=15))
    trace.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(trace))
    print(f"wrote {trace} (open in chrome://tracing or https://ui.perfetto.dev)")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (cumulative on CPU)


def forward_gflops(obj: Objective, shape: tuple[int, ...], device: torch.device) -> float:
    """FLOPs of one forward of one image (in GFLOP), counted by torch."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        obj.model.eval()(torch.rand(1, *shape, device=device), bn="adv")
    return counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18", choices=["small_cnn", "resnet18", "wrn34_10"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--attack-steps", type=int, default=10)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--variants", default="plain,fast-fp32,fast-bf16",
                        help=f"comma-separated, from: {', '.join(VARIANTS)}")
    parser.add_argument("--compile-mode", default="default",
                        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                        help="torch.compile mode of the *-compile variants")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="after timing, profile this many steps of the last fast variant: top kernels, trace")
    parser.add_argument("--repeats", type=int, default=1,
                        help="measure the variants in turn this many times and keep each one's best")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="the device's dense bf16 peak for the FLOP-floor fraction (auto on H100/A100)")
    parser.add_argument("--out", default="benchmarks/results/train_step.json")
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {unknown}; allowed: {', '.join(VARIANTS)}")

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    channels, size = (1, 16) if args.model == "small_cnn" else (3, 32)
    cfg = TrainConfig.from_dict({"model": {"name": args.model}, "optim": {"batch_size": args.batch_size},
                                 "attack": {"eps": 8, "steps": args.attack_steps}})
    x = torch.randint(0, 256, (max(4 * args.batch_size, 1024), channels, size, size), dtype=torch.uint8)
    y = torch.randint(0, 10, (len(x),))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), 0.0)

    best: dict[str, dict[str, float | None]] = {}
    gflop_fwd = 0.0
    work = 0.0
    last_fast: tuple[Objective, str] | None = None
    for _ in range(args.repeats):  # interleaved, so drifting load hits every variant alike
        for variant in variants:
            torch.manual_seed(0)
            channels_last = variant.startswith("fast") and device.type == "cuda"
            bf16 = "bf16" in variant
            obj = build(cfg, 10, channels, device)
            if channels_last:
                obj.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            gflop_fwd = gflop_fwd or forward_gflops(obj, (channels, size, size), device)
            work = (2 * args.attack_steps + 6) * gflop_fwd  # GFLOP per image (docs/design.md, "Work per image")
            if variant.endswith("-compile"):
                obj.model.compile(mode=args.compile_mode)
            if device.type == "cuda":
                torch.backends.cudnn.benchmark = variant != "plain"
                torch.cuda.reset_peak_memory_stats(device)
            if variant == "plain":
                ips = run_plain(obj, cfg, x, y, device, args.iters, args.warmup)
            else:
                ips = run_fast(obj, cfg, x, y, device, args.iters, args.warmup, bf16, channels_last)
                last_fast = (obj, variant)
            if variant not in best or ips > (best[variant]["images_per_s"] or 0.0):
                best[variant] = {"variant": variant, "images_per_s": ips, "peak_mem_mb": _peak_mem_mb(device),
                                 "tflops": ips * work / 1e3,
                                 "floor_fraction": ips * work / 1e3 / peak if peak else None}
    rows = list(best.values())
    base = next((r["images_per_s"] for r in rows if r["variant"] == "plain"), rows[0]["images_per_s"])
    for r in rows:
        r["ratio_vs_plain"] = r["images_per_s"] / base

    print(f"{args.model}, batch {args.batch_size}, {args.attack_steps} attack steps, {name} ({device}); "
          f"{gflop_fwd:.3f} GFLOP/forward, {(2 * args.attack_steps + 6) * gflop_fwd:.1f} GFLOP/image")
    print(f"{'variant':<18} {'images/s':>10} {'x plain':>8} {'TFLOP/s':>8} {'floor %':>8} {'peak MB':>9}")
    for r in rows:
        floor = f"{100 * r['floor_fraction']:.1f}" if r["floor_fraction"] is not None else "-"
        print(f"{r['variant']:<18} {r['images_per_s']:>10.1f} {r['ratio_vs_plain']:>8.2f} {r['tflops']:>8.3f} "
              f"{floor:>8} {r['peak_mem_mb']:>9.0f}")
    if args.profile and last_fast is not None:
        profile(last_fast[0], last_fast[1], cfg, x, y, device, args.profile, Path(args.out).with_suffix(".trace.json"))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "batch_size": args.batch_size,
                               "attack_steps": args.attack_steps, "device": name, "torch": torch.__version__,
                               "threads": torch.get_num_threads(), "date": datetime.now(UTC).isoformat(),
                               "commit": commit, "gflop_forward": gflop_fwd, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
