"""The training loop: AR-AT, PGD-AT and TRADES share the data, attack, schedule, metric and checkpoint code.

The loop hands per-epoch metrics to a callback and never prints; the shell (the CLI or the orchestrator) reports
them. Under ``torch.distributed`` each rank trains on its own shard and evaluation counts are all-reduced, so the
metrics every rank hands over are the global ones.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .accuracy import accuracy_counts, eval_mode
from .attacks import pgd_attack, pgd_linf_from_noisy
from .checkpoint import (
    CHECKPOINT_NAME,
    CheckpointError,
    Metrics,
    RunState,
    first_line,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import AttackConfig, OptimConfig, TrainConfig
from .data import ArrayData, epoch_batches, load_split, random_crop_flip, shard, to_float
from .losses import Predictors, arat_loss, trades_kl, trades_loss
from .models import build_model
from .robustness import objective_counts
from .swa import ParamAverage, reestimate_adv_bn

log = logging.getLogger(__name__)

Callback = Callable[[Metrics, Path | None], None]


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


def lr_at(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Learning rate at optimiser step ``step`` (0-based) of ``total_steps``: linear warm-up, then step decay.

    ``cfg.schedule == "authors"``: the first epoch at ``lr / 5``, then the same step decay one epoch late.
    """
    late = total_steps / cfg.epochs if cfg.schedule == "authors" else 0.0  # one epoch, in steps
    if step < late:
        return cfg.lr / 5
    warmup = cfg.warmup_epochs / cfg.epochs * total_steps
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    passed = sum(step - late >= m * total_steps for m in cfg.milestones)
    return cfg.lr * cfg.lr_decay**passed


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def dist_info() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside ``torch.distributed``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Objective(nn.Module):
    """The model plus the method's extra modules; ``forward`` returns the method's loss and its parts.

    One ``forward`` per step runs every pass that needs gradients, so a DDP wrapper sees one forward per backward.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.method = cfg.method
        self.gamma = cfg.arat.gamma
        self.beta = cfg.trades.beta
        self.predictors: Predictors | None = None
        if cfg.method == "arat":
            feature_dims: dict[str, int] = model.feature_dims  # type: ignore[assignment]
            aligned: tuple[str, ...] = model.aligned_layers  # type: ignore[assignment]
            dims = {k: feature_dims[k] for k in aligned}
            self.predictors = Predictors(dims, cfg.arat.predictor_ratio)

    def forward(self, x: Tensor, x_adv: Tensor, y: Tensor, a: float) -> dict[str, Tensor]:
        if self.method == "arat":
            assert self.predictors is not None
            logits_c, feats_c = self.model(x, bn="clean", return_features=True)
            logits_a, feats_a = self.model(x_adv, bn="adv", return_features=True)
            return arat_loss(logits_a, logits_c, y, self.predictors(feats_a), feats_c, a=a, gamma=self.gamma)
        if self.method == "pgd_at":
            ce_adv = F.cross_entropy(self.model(x_adv), y)  # Madry: no clean term
            return {"loss": ce_adv, "ce_adv": ce_adv}
        return trades_loss(self.model(x_adv), self.model(x), y, beta=self.beta)

    def adversarial(self, x: Tensor, y: Tensor, attack: AttackConfig) -> tuple[Tensor, Tensor]:
        """The (clean, adversarial) pair of a training batch; the clean one changes only with the legacy switch."""
        kwargs = attack.kwargs()
        run: Callable[..., Tensor] = partial(pgd_attack, **kwargs)
        if attack.legacy_inplace_noise and attack.random_start:
            # The authors' code adds the random start to x in place and never clamps it: the clean branch sees the
            # noisy image (up to eps outside [0, 1]) and PGD runs around it. Reproduced only on request.
            x = x + torch.empty_like(x).uniform_(-kwargs["eps"], kwargs["eps"])
            run = partial(pgd_linf_from_noisy, eps=kwargs["eps"], step_size=kwargs["step_size"], steps=kwargs["steps"])
        if self.method == "trades":
            with eval_mode(self.model):
                with torch.no_grad():
                    target = self.model(x)
                x_adv = run(self.model, x, y, loss_fn=lambda logits, _: trades_kl(logits, target))
            return x, x_adv
        return x, run(partial(self.model, bn="adv"), x, y)


def _autocast(device: torch.device, cfg: TrainConfig) -> Callable[[], AbstractContextManager[Any]]:
    bf16 = cfg.perf.amp == "bf16" or (cfg.perf.amp == "auto" and device.type == "cuda")
    if not bf16:
        return nullcontext
    return partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Attack noise of each (epoch, rank) comes from its own seed, so a resumed or restarted run repeats it."""
    s = (seed * 1_000_003 + epoch * 7919 + rank) % 2**31
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s)


def build(cfg: TrainConfig, num_classes: int, in_channels: int, device: torch.device) -> Objective:
    """The model (split BN for AR-AT, one BN set for the baselines) wrapped in its method's objective."""
    model = build_model(cfg.model.name, num_classes, in_channels=in_channels, width=cfg.model.width,
                        aligned_layers=cfg.model.aligned_layers or None, split_bn=cfg.method == "arat")
    objective = Objective(model, cfg).to(device)
    if _channels_last(cfg, device):
        objective.to(memory_format=torch.channels_last)
    return objective


def make_optimizer(objective: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.SGD:
    """SGD over every parameter of the objective; one fused kernel for the whole update on CUDA."""
    return torch.optim.SGD(objective.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.nesterov, fused=device.type == "cuda" or None)


def _channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.perf.channels_last == "on" or (cfg.perf.channels_last == "auto" and device.type == "cuda")


def load_data(cfg: TrainConfig, device: torch.device) -> tuple[ArrayData, ArrayData]:
    """(train, val) splits on ``device``; the validation split is held out from the training set."""
    train_data, val_data = load_split(cfg.data, "train"), load_split(cfg.data, "val")
    if cfg.data.train_limit:
        train_data = train_data.subset(torch.arange(min(cfg.data.train_limit, len(train_data))))
    return train_data.to(device), val_data.to(device)


def balance_weight(model: nn.Module, data: ArrayData, n: int, batch_size: int,
                   autocast: Callable[[], AbstractContextManager[Any]] = nullcontext, *, seed: int = 0,
                   epoch: int = 0, augment: bool = False) -> float:
    """AR-AT's ``a``: clean top-1 accuracy of the clean-BN branch (eval mode) on ``n`` random training images.

    As in the authors' code, which reads its first batches of a freshly shuffled, augmented training loader before
    each epoch: a new sample each epoch, with training's crop and flip when ``augment``. The sample and the
    augmentation come from their own generator seeded by (``seed``, ``epoch``), so a resumed run measures the same
    ``a``, every DDP rank measures it on the same images, and the global generators are left alone.
    """
    gen = torch.Generator().manual_seed(seed * 1_000_033 + epoch * 7_919 + 104_729)
    idx = torch.randperm(len(data), generator=gen)[: min(n, len(data))]
    sub = data.subset(idx)
    if augment:
        sub = ArrayData(random_crop_flip(to_float(sub.x), gen), sub.y, sub.num_classes)
    with eval_mode(model):
        counts = accuracy_counts(partial(model, bn="clean"), sub, None, batch_size=batch_size, autocast=autocast)
    return counts["clean"].item() / max(1, counts["total"].item())


def _all_reduce(t: Tensor) -> Tensor:
    if dist_info()[1] > 1:
        dist.all_reduce(t)
    return t


def evaluate_model(model: nn.Module, data: ArrayData, cfg: TrainConfig,
                   autocast: Callable[[], AbstractContextManager[Any]] = nullcontext) -> Metrics:
    """``clean_acc`` and ``robust_acc_pgd`` of the adv-BN branch in eval mode, summed over every rank's shard.

    ``robust_acc`` repeats the PGD figure: the final epoch replaces it with :func:`final_objective`'s.
    """
    rank, world = dist_info()
    with eval_mode(model):
        c = accuracy_counts(partial(model, bn="adv"), data, cfg.eval.attack, batch_size=cfg.eval.batch_size,
                            rank=rank, world_size=world, max_examples=cfg.eval.max_examples, autocast=autocast)
    counts = _all_reduce(torch.stack([c["clean"], c["robust"], c["total"]]))
    clean, robust, total = (int(v) for v in counts.tolist())
    return {"clean_acc": clean / total, "robust_acc": robust / total, "robust_acc_pgd": robust / total,
            "eval_examples": float(total)}


def final_objective(model: nn.Module, data: ArrayData, cfg: TrainConfig) -> Metrics:
    """The objective ``robust_acc`` of a trained model with ``eval.final_attack = apgd``, and its masking gap.

    On the first ``eval.final_examples`` evaluation images (each rank its shard, counts summed): the worst case over
    the eval PGD, APGD-CE and APGD-T (:func:`arat_train.robustness.objective_counts`). ``masking_gap`` is PGD's
    robust accuracy minus that, on the same images: a large gap means PGD's gradients mislead (gradient masking).
    When those are all the evaluation images, ``robust_acc_pgd`` is that PGD run's figure, so that
    ``masking_gap == robust_acc_pgd - robust_acc``.
    """
    ev = cfg.eval
    n_eval = len(data) if ev.max_examples <= 0 else min(ev.max_examples, len(data))
    n = min(n_eval, ev.final_examples) if ev.final_examples else n_eval
    rank, world = dist_info()
    mine = data.subset(shard(n, rank, world))
    start = time.perf_counter()
    counts = _all_reduce(objective_counts(model, mine.x, mine.y, ev.attack, seed=cfg.seed, batch_size=ev.batch_size,
                                          iters=ev.apgd_iters, targets=ev.apgd_targets))
    _, pgd, robust, total = (int(v) for v in counts.tolist())
    out = {"robust_acc": robust / total, "masking_gap": (pgd - robust) / total, "final_examples": float(total),
           "final_s": time.perf_counter() - start}
    if n == n_eval:  # the same images as the per-epoch PGD figure: report the PGD run the gap was measured with
        out["robust_acc_pgd"] = pgd / total
    return out


@dataclass
class Run:
    """The pieces of one training run, built once by :func:`prepare` and advanced by :func:`run_epoch`."""

    cfg: TrainConfig
    objective: Objective
    step_module: nn.Module  # the objective, or its DDP wrapper: what one step's forward calls
    optimizer: torch.optim.Optimizer
    train_data: ArrayData
    val_data: ArrayData
    total_steps: int
    swa: ParamAverage | None
    state: RunState
    autocast: Callable[[], AbstractContextManager[Any]]

    def save(self, path: Path) -> None:
        """Write this run's checkpoint to ``path``."""
        save_checkpoint(path, model=self.objective.model, predictors=self.objective.predictors,
                        optimizer=self.optimizer, state=self.state, cfg=self.cfg,
                        swa=self.swa.state_dict() if self.swa is not None else None)


def prepare(cfg: TrainConfig, data: tuple[ArrayData, ArrayData] | None = None,
            resume_from: str | Path | None = None) -> Run:
    """Data, model, optimiser and schedule of ``cfg`` on its device; resumed from a checkpoint when given."""
    device = resolve_device(cfg.device)
    rank, world = dist_info()
    if cfg.perf.num_threads:
        torch.set_num_threads(cfg.perf.num_threads)
    train_data, val_data = data if data is not None else load_data(cfg, device)
    train_data, val_data = train_data.to(device), val_data.to(device)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    objective = build(cfg, train_data.num_classes, int(train_data.x.shape[1]), device)
    optimizer = make_optimizer(objective, cfg.optim, device)
    steps_per_epoch = len(epoch_batches(len(train_data), cfg.optim.batch_size, 0, cfg.seed, rank, world))
    total_steps = steps_per_epoch * cfg.optim.epochs
    swa = ParamAverage(int(cfg.swa.start * total_steps), cfg.swa.every) if cfg.swa.enabled else None
    state = _restore(resume_from, objective, optimizer, swa, device) if resume_from is not None else RunState()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick each convolution's fastest kernel once
    if cfg.perf.compile:
        objective.model.compile(mode=cfg.perf.compile_mode)
    step_module: nn.Module = objective
    if world > 1:
        step_module = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None)
    return Run(cfg, objective, step_module, optimizer, train_data, val_data, total_steps, swa, state,
               _autocast(device, cfg))


def _restore(path: str | Path, objective: Objective, optimizer: torch.optim.Optimizer, swa: ParamAverage | None,
             device: torch.device) -> RunState:
    """Load a checkpoint into the run's modules, optimiser, average and RNGs; return its progress.

    Raises :class:`CheckpointError` for a file that is not a checkpoint, or one of another network or optimiser.
    """
    ckpt = read_checkpoint(path, device)
    try:
        objective.model.load_state_dict(ckpt["model"])
        if objective.predictors is not None:
            objective.predictors.load_state_dict(ckpt["predictors"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if swa is not None and ckpt.get("swa"):
            swa.load_state_dict(ckpt["swa"])
        set_rng_state(ckpt["rng"])
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path} does not fit this run (another network, predictor or optimiser?): "
                              f"{first_line(err)}") from None
    log.info("resumed from %s at epoch %d", path, ckpt["epoch"])
    return RunState(ckpt["epoch"], ckpt["step"], list(ckpt["history"]))


def train(
    cfg: TrainConfig,
    *,
    callback: Callback | None = None,
    checkpoint_dir: str | Path | None = None,
    resume_from: str | Path | None = None,
    data: tuple[ArrayData, ArrayData] | None = None,
    progress: Callable[[Iterable[Tensor]], Iterable[Tensor]] | None = None,
) -> Metrics:
    """Train ``cfg`` and return the last epoch's metrics.

    After every epoch, rank 0 writes ``checkpoint_dir/checkpoint.pt`` (when given) and every rank calls
    ``callback(metrics, checkpoint_path_or_None)``. ``resume_from`` continues a checkpoint exactly.
    Raises :class:`TrainingDiverged` when the loss is not finite.
    """
    run = prepare(cfg, data, resume_from)
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    for epoch in range(run.state.epoch, cfg.optim.epochs):
        metrics = run_epoch(run, epoch, progress)
        saved = None
        if ckpt_path is not None and dist_info()[0] == 0:
            run.save(ckpt_path)
            saved = ckpt_path
        if callback is not None:
            callback(dict(metrics), saved)
    return dict(run.state.history[-1]) if run.state.history else {}


def run_epoch(run: Run, epoch: int, progress: Callable[[Iterable[Tensor]], Iterable[Tensor]] | None = None) -> Metrics:
    """Train epoch ``epoch`` (0-based), evaluate, and append the metrics to ``run.state.history``."""
    cfg, model = run.cfg, run.objective.model
    rank, world = dist_info()
    _seed_epoch(cfg.seed, epoch, rank)
    metrics = _train_epoch(run.objective, run.step_module, run.optimizer, run.train_data, cfg, run.state, epoch,
                           run.total_steps, run.swa, run.autocast, progress)
    if world > 1:
        # The attack's train-mode forwards run outside DDP and move each rank's BN statistics on their own:
        # take rank 0's, so every rank evaluates (and next epoch balances) the model rank 0 saves.
        for buf in run.objective.buffers():
            dist.broadcast(buf, src=0)
    metrics.update(evaluate_model(model, run.val_data, cfg, run.autocast))
    if epoch == cfg.optim.epochs - 1 and cfg.eval.final_attack == "apgd":
        metrics.update(final_objective(model, run.val_data, cfg))
    if epoch + 1 in cfg.probe.epochs:
        metrics.update(annealed_probe(run, epoch, metrics.get("balance_a", 0.0)))
    if run.swa is not None and epoch == cfg.optim.epochs - 1 and run.swa.n > 0:
        metrics.update(_swa_metrics(model, run.swa, run.train_data, run.val_data, cfg, run.autocast))
    run.state.epoch, metrics["epoch"] = epoch + 1, float(epoch + 1)
    run.state.history.append(metrics)
    return metrics


def annealed_probe(run: Run, epoch: int, a: float) -> Metrics:
    """``probe_clean_acc`` and ``probe_robust_acc`` of the run annealed now (:class:`~arat_train.config.ProbeConfig`).

    The modules, optimiser and every RNG are saved first and restored after, so the run continues exactly as
    without the probe; under DDP every rank probes its own shard in step (the steps go through DDP).
    """
    cfg = run.cfg
    rank, world = dist_info()
    device = run.train_data.x.device
    saved = (copy.deepcopy(run.objective.state_dict()), copy.deepcopy(run.optimizer.state_dict()), rng_state())
    try:
        batches = epoch_batches(len(run.train_data), cfg.optim.batch_size, epoch + _PROBE_EPOCH, cfg.seed, rank, world)
        steps = max(1, round(cfg.probe.fraction * len(batches)))
        gen = torch.Generator(device=device).manual_seed(cfg.seed * 7_919 + (epoch + _PROBE_EPOCH) * 31 + rank)
        lr = cfg.optim.lr * cfg.optim.lr_decay
        run.objective.train()
        for batch in batches[:steps]:
            x, y = batch_inputs(run.train_data, batch.to(device), augment=cfg.data.augment, generator=gen,
                                channels_last=_channels_last(cfg, device))
            train_step(run.objective, run.step_module, run.optimizer, x, y, cfg.attack, a, lr, run.autocast)
        if world > 1:
            for buf in run.objective.buffers():
                dist.broadcast(buf, src=0)
        probed = evaluate_model(run.objective.model, run.val_data, cfg, run.autocast)
    finally:
        run.objective.load_state_dict(saved[0])
        run.optimizer.load_state_dict(saved[1])
        set_rng_state(saved[2])
    return {"probe_clean_acc": probed["clean_acc"], "probe_robust_acc": probed["robust_acc_pgd"],
            "probe_steps": float(steps)}


_PROBE_EPOCH = 1_000_003  # probes draw their batches and crops from epochs no training epoch uses


def batch_inputs(data: ArrayData, batch: Tensor, *, augment: bool, generator: torch.Generator,
                 channels_last: bool) -> tuple[Tensor, Tensor]:
    """Float images in [0, 1] and labels of the examples ``batch`` indexes, built on ``data``'s device."""
    x, y = to_float(data.x[batch]), data.y[batch]
    if augment:
        x = random_crop_flip(x, generator)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def train_step(objective: Objective, step_module: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
               attack: AttackConfig, a: float, lr: float,
               autocast: Callable[[], AbstractContextManager[Any]] = nullcontext) -> dict[str, Tensor]:
    """One optimiser step: the attack, one forward of ``step_module`` (the objective, or its DDP wrapper), backward.

    Returns the loss and its parts as device tensors; nothing here waits for the device.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    with autocast():
        x, x_adv = objective.adversarial(x, y, attack)
        parts = step_module(x, x_adv, y, a)
    optimizer.zero_grad(set_to_none=True)
    parts["loss"].backward()
    optimizer.step()
    return parts


def _train_epoch(
    objective: Objective, step_module: nn.Module, optimizer: torch.optim.Optimizer, data: ArrayData,
    cfg: TrainConfig, state: RunState, epoch: int, total_steps: int, swa: ParamAverage | None,
    autocast: Callable[[], AbstractContextManager[Any]], progress: Callable[[Iterable[Tensor]], Iterable[Tensor]] | None,
) -> Metrics:
    rank, world = dist_info()
    device = data.x.device
    a = 0.0
    if cfg.method == "arat":
        a = balance_weight(objective.model, data, cfg.arat.balance_samples, cfg.eval.batch_size, autocast,
                           seed=cfg.seed, epoch=epoch, augment=cfg.data.augment)
    # One host-to-device copy of this epoch's order; the loop below then never waits on the host.
    order = torch.cat(epoch_batches(len(data), cfg.optim.batch_size, epoch, cfg.seed, rank, world)).to(device)
    batches = list(order.split(cfg.optim.batch_size))
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 7_919 + epoch * 31 + rank)
    channels_last = _channels_last(cfg, device)
    sums: dict[str, Tensor] = {}
    seen = 0
    objective.train()
    start = time.perf_counter()
    lr = cfg.optim.lr
    for batch in progress(batches) if progress is not None else batches:
        x, y = batch_inputs(data, batch, augment=cfg.data.augment, generator=gen, channels_last=channels_last)
        lr = lr_at(state.step, total_steps, cfg.optim)
        parts = train_step(objective, step_module, optimizer, x, y, cfg.attack, a, lr, autocast)
        state.step += 1
        if swa is not None and swa.due(state.step):
            swa.update(objective.model)
        n = y.shape[0]
        seen += n
        for k, v in parts.items():  # summed on the device: no host synchronisation inside the loop
            sums[k] = sums.get(k, torch.zeros((), device=device)) + v.detach().float() * n
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    keys = sorted(sums)
    totals = _all_reduce(torch.stack([sums[k] for k in keys] + [torch.tensor(float(seen), device=device)]))
    values = totals.tolist()
    out = {k: v / values[-1] for k, v in zip(keys, values[:-1], strict=True)}
    if not math.isfinite(out.get("loss", 0.0)):
        raise TrainingDiverged(f"training loss is {out['loss']} at epoch {epoch + 1}")
    out.update({"lr": lr, "epoch_s": elapsed, "images_per_s": values[-1] / max(elapsed, 1e-9)})
    if cfg.method == "arat":
        out["balance_a"] = a
    return out


def _swa_metrics(model: nn.Module, swa: ParamAverage, train_data: ArrayData, val_data: ArrayData,
                 cfg: TrainConfig, autocast: Callable[[], AbstractContextManager[Any]]) -> Metrics:
    """Metrics of the averaged model after re-estimating its adv-BN statistics, prefixed ``swa_``."""
    averaged = ParamAverage.averaged(swa, model)
    reestimate_adv_bn(averaged, train_data, cfg.attack, batch_size=cfg.optim.batch_size,
                      augment=cfg.data.augment, autocast=autocast)
    return {f"swa_{k}": v for k, v in evaluate_model(averaged, val_data, cfg, autocast).items()}
