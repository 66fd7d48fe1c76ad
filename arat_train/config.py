"""Typed, frozen training configuration. YAML, ``--set`` overrides, Tune's search space and MLflow params all use
the same dotted keys (``attack.eps``, ``arat.gamma``, ``optim.lr``...).

Units: ``eps`` and ``step_size`` are in 1/255 of the [0, 1] pixel range; when ``step_size`` is left out it is
``step_ratio * eps / steps`` (capped at eps), so a searched ``step_ratio`` keeps its meaning across eps and steps.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad configuration value; ``field`` is the dotted key, the message says what is allowed."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(field, message)


def _within(value: float, low: float, high: float, field: str, unit: str = "") -> None:
    """Refuse ``value`` outside ``[low, high]``, naming the field and the allowed range."""
    _require(low <= value <= high, field, f"must be in [{low:,}, {high:,}]{unit}, got {value!r}")


DIGITS_SIZE = 1797  # scikit-learn's digits: every image, before any split
# Upper bounds of counts: far above any real use, low enough that a typo cannot start a run that never ends.
MAX_EPOCHS = 10_000
MAX_BATCH = 16_384
MAX_ATTACK_STEPS = 1_000
MAX_RESTARTS = 100
MAX_IMAGES = 1_000_000  # train_limit, balance_samples, eval.max_examples
MAX_FAKE_IMAGES = 100_000
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit
# Training images CIFAR's validation split is drawn from (known without loading them); digits: DIGITS_SIZE.
CIFAR_TRAIN_SIZE = {"cifar10": 50_000, "cifar100": 50_000}


@dataclass(frozen=True)
class DataConfig:
    """Which data set and how it is split: ``train`` / ``val`` (the search's objectives) / ``test`` (verification).

    ``val`` is held out of the training set with ``split_seed``. CIFAR's test split is its official test set; digits
    has none, so a fixed ``test_size`` images (always seed 0, whatever ``split_seed``) are held out of everything
    else first: the search never sees them.
    """

    dataset: Literal["digits", "cifar10", "cifar100", "fake"] = "digits"
    root: str = "data"
    download: bool = False
    val_size: int = 360
    test_size: int = 360  # digits only: the fixed held-out test split
    split_seed: int = 0
    image_size: int = 16
    augment: bool = False
    train_limit: int = 0  # 0 = the whole training split; otherwise its first N examples (smoke runs)
    fake_size: int = 512
    num_classes: int = 10

    def __post_init__(self) -> None:
        _require(self.val_size > 0, "val_size", f"must be > 0, got {self.val_size}")
        _require(self.test_size > 0, "test_size", f"must be > 0, got {self.test_size}")
        if self.dataset == "digits":
            _within(self.test_size, 1, DIGITS_SIZE - 2, "test_size", f" (digits has {DIGITS_SIZE} images)")
            room = DIGITS_SIZE - self.test_size - 1
            _require(self.val_size <= room, "val_size",
                     f"digits has {DIGITS_SIZE} images, {self.test_size} of them held out for test (data.test_size); "
                     f"val_size must be in [1, {room}], got {self.val_size}")
        pool = CIFAR_TRAIN_SIZE.get(self.dataset)
        if pool is not None:
            _require(self.val_size < pool, "val_size",
                     f"must be < {pool:,} ({self.dataset} has {pool:,} training images), got {self.val_size}")
        _within(self.split_seed, 0, MAX_SEED, "split_seed")
        _within(self.train_limit, 0, MAX_IMAGES, "train_limit", " (0 = all)")
        _within(self.fake_size, 1, MAX_FAKE_IMAGES, "fake_size")
        _within(self.num_classes, 2, 1_000, "num_classes")
        _require(self.image_size in (8, 16, 32), "image_size", f"allowed: 8, 16, 32; got {self.image_size}")
        _require(self.train_limit >= 0, "train_limit", f"must be >= 0 (0 = all), got {self.train_limit}")
        _require(self.fake_size > self.val_size or self.dataset != "fake", "fake_size",
                 f"must exceed data.val_size ({self.val_size}), got {self.fake_size}")
        _require(self.num_classes >= 2, "num_classes", f"must be >= 2, got {self.num_classes}")


@dataclass(frozen=True)
class ModelConfig:
    name: Literal["small_cnn", "resnet18", "wrn34_10"] = "small_cnn"
    width: int = 32  # small_cnn only
    aligned_layers: tuple[str, ...] = ()  # empty = the architecture's default (docs/design.md, "The method")

    def __post_init__(self) -> None:
        _require(self.width >= 1, "width", f"must be >= 1, got {self.width}")
        _within(self.width, 1, 1_024, "width")


@dataclass(frozen=True)
class AttackConfig:
    """PGD settings (eps and step in 1/255), for training (``attack``) and evaluation (``eval.attack``).

    ``legacy_inplace_noise`` (off by default; training only; L-inf only) reproduces the authors' code
    (futakw/AR-AT, ``attacks.PGD_linf``), which adds the uniform random start to the clean batch in place and never
    clamps it: the clean-BN branch (and TRADES' clean term) trains on that noisy image, which can lie in
    [-eps, 1 + eps], and PGD starts there and projects onto the eps-ball around it, then onto [0, 1]. Here the
    ball is centred on the clean image (README, "Differences from the authors' code"); switch it on only to
    compare with the paper's figures.
    """

    eps: float = 8.0  # in 1/255
    steps: int = 10
    step_size: float | None = None  # in 1/255; None = step_ratio * eps / steps
    step_ratio: float = 2.5
    norm: Literal["linf", "l2"] = "linf"
    random_start: bool = True
    restarts: int = 1  # evaluation only: an example counts as robust only if it survives every restart
    legacy_inplace_noise: bool = False  # reproduce the authors' code's noisy-centre ball (training only)

    def __post_init__(self) -> None:
        _require(self.eps >= 0, "eps", f"must be >= 0 (in 1/255), got {self.eps}")
        _require(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        _require(self.step_ratio > 0, "step_ratio", f"must be > 0, got {self.step_ratio}")
        _require(self.restarts >= 1, "restarts", f"must be >= 1, got {self.restarts}")
        _within(self.steps, 1, MAX_ATTACK_STEPS, "steps")
        _within(self.restarts, 1, MAX_RESTARTS, "restarts")
        if self.norm == "linf":
            _within(self.eps, 0, 255, "eps", " (in 1/255: 255 is the whole pixel range)")
        _require(not self.legacy_inplace_noise or self.norm == "linf", "legacy_inplace_noise",
                 "reproduces the authors' L-inf attack only (their L2 attack adds no noise in place); norm is 'l2'")
        if self.step_size is not None:
            _require(self.step_size > 0, "step_size", f"must be > 0 (in 1/255), got {self.step_size}")
            _require(self.step_size <= self.eps, "step_size",
                     f"must be <= eps ({self.eps}), got {self.step_size}")

    @property
    def step(self) -> float:
        """Step size in 1/255: explicit, or ``step_ratio * eps / steps`` capped at eps."""
        if self.step_size is not None:
            return self.step_size
        return min(self.step_ratio * self.eps / self.steps, self.eps)

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`arat_train.attacks.pgd_attack`, in [0, 1] pixel units."""
        return {"eps": self.eps / 255.0, "step_size": self.step / 255.0, "steps": self.steps, "norm": self.norm,
                "random_start": self.random_start}


@dataclass(frozen=True)
class ARATConfig:
    gamma: float = 30.0  # invariance weight
    predictor_ratio: float = 0.25  # predictor width r: max(1, int(r * d)) hidden units; 0 = no predictor
    balance_samples: int = 1024  # training images on which the balance weight a is measured

    def __post_init__(self) -> None:
        _require(self.gamma >= 0, "gamma", f"must be >= 0, got {self.gamma}")
        _require(0 <= self.predictor_ratio <= 4, "predictor_ratio", f"must be in [0, 4], got {self.predictor_ratio}")
        _require(self.balance_samples >= 1, "balance_samples", f"must be >= 1, got {self.balance_samples}")
        _within(self.balance_samples, 1, MAX_IMAGES, "balance_samples")


@dataclass(frozen=True)
class TradesConfig:
    beta: float = 6.0

    def __post_init__(self) -> None:
        _require(self.beta >= 0, "beta", f"must be >= 0, got {self.beta}")


@dataclass(frozen=True)
class SWAConfig:
    enabled: bool = False
    start: float = 0.76  # fraction of the epochs after which averaging starts
    every: int = 500  # iterations between snapshots

    def __post_init__(self) -> None:
        _require(0 <= self.start < 1, "start", f"must be in [0, 1), got {self.start}")
        _require(self.every >= 1, "every", f"must be >= 1, got {self.every}")
        _within(self.every, 1, 1_000_000, "every")


@dataclass(frozen=True)
class OptimConfig:
    """SGD and its learning-rate schedule (:func:`arat_train.train.lr_at`).

    ``schedule``: ``nominal`` multiplies lr by ``lr_decay`` at each milestone (a fraction of the steps) after an
    optional linear warm-up. ``authors`` reproduces the authors' code (futakw/AR-AT, ``train_ARAT.py``: ``get_lr``
    and ``CustomLR``), which trains its first epoch at 0.02 (lr / 5 at their lr 0.1) and applies each decay one epoch
    late: with 100 epochs, 0.02 in epoch 1, 0.1 in epochs 2-76, 0.01 in 77-91, 0.001 in 92-100 (1-based). Other
    budgets scale the milestones as ``nominal`` does (their code hard-codes epochs 75 and 90).
    """

    epochs: int = 100
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    milestones: tuple[float, ...] = (0.75, 0.9)  # fractions of the total steps where lr is multiplied by lr_decay
    lr_decay: float = 0.1
    warmup_epochs: float = 0.0
    schedule: Literal["nominal", "authors"] = "nominal"

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        _require(self.schedule in ("nominal", "authors"), "schedule",
                 f"allowed: 'nominal', 'authors'; got {self.schedule!r}")
        _require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _within(self.epochs, 1, MAX_EPOCHS, "epochs")
        _within(self.batch_size, 1, MAX_BATCH, "batch_size")
        _require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _require(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")
        _require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _require(all(0 < m < 1 for m in self.milestones) and list(self.milestones) == sorted(self.milestones),
                 "milestones", f"must be increasing fractions in (0, 1), got {list(self.milestones)}")
        _require(0 < self.lr_decay <= 1, "lr_decay", f"must be in (0, 1], got {self.lr_decay}")
        _require(0 <= self.warmup_epochs < self.epochs, "warmup_epochs",
                 f"must be in [0, epochs={self.epochs}), got {self.warmup_epochs}")
        _require(self.schedule == "nominal" or self.warmup_epochs == 0, "warmup_epochs",
                 f"must be 0 with optim.schedule: authors (its first epoch at lr / 5 is the warm-up), "
                 f"got {self.warmup_epochs}")


@dataclass(frozen=True)
class EvalConfig:
    """The objectives' measurement on the validation split (adv-BN branch, eval mode).

    Every epoch reports ``clean_acc`` and ``robust_acc_pgd`` (PGD with ``attack``) on the first ``max_examples``
    validation images. The last epoch's ``robust_acc``, the objective a study ranks by, comes from
    ``final_attack``: ``apgd`` is the worst case over PGD, APGD-CE and APGD-T (AutoAttack's first two attacks, the
    reference implementation; ``apgd_iters`` and ``apgd_targets`` as in its standard version unless a preset
    trades some strength for time) on the first ``final_examples`` of those images; ``pgd`` is the PGD figure.
    Earlier epochs report ``robust_acc`` = ``robust_acc_pgd`` as progress.
    """

    attack: AttackConfig = AttackConfig(eps=8.0, steps=20, step_size=2.0)
    batch_size: int = 256
    max_examples: int = 0  # 0 = the whole validation split
    final_attack: Literal["pgd", "apgd"] = "pgd"
    final_examples: int = 0  # 0 = the same images as max_examples
    apgd_iters: int = 100  # iterations of APGD-CE and of APGD-T per target (AutoAttack's standard: 100)
    apgd_targets: int = 9  # APGD-T's target classes, the runner-up logits (standard: 9; at most classes - 1)

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _require(self.max_examples >= 0, "max_examples", f"must be >= 0 (0 = all), got {self.max_examples}")
        _within(self.batch_size, 1, MAX_BATCH, "batch_size")
        _within(self.max_examples, 0, MAX_IMAGES, "max_examples", " (0 = all)")
        _require(self.final_examples >= 0, "final_examples",
                 f"must be >= 0 (0 = the eval.max_examples images), got {self.final_examples}")
        _within(self.final_examples, 0, MAX_IMAGES, "final_examples", " (0 = the eval.max_examples images)")
        _require(self.apgd_iters >= 1, "apgd_iters", f"must be >= 1, got {self.apgd_iters}")
        _require(self.apgd_targets >= 1, "apgd_targets", f"must be >= 1, got {self.apgd_targets}")
        _within(self.apgd_iters, 1, MAX_ATTACK_STEPS, "apgd_iters")
        _within(self.apgd_targets, 1, 999, "apgd_targets")


@dataclass(frozen=True)
class ProbeConfig:
    """Annealed probes: after each epoch in ``epochs`` (1-based), a copy of the run trains ``fraction`` of an epoch
    at the first decayed learning rate (``optim.lr * optim.lr_decay``), is evaluated like every epoch
    (``probe_clean_acc``, ``probe_robust_acc``), and is thrown away; the run itself continues unchanged.

    Before its first decay a step schedule's accuracies predict the final ones poorly; a probe shows what the
    model would be worth annealed now, for early stopping to rank on (docs/design.md, "Early stopping").
    """

    epochs: tuple[int, ...] = ()
    fraction: float = 0.25  # of an epoch's optimiser steps, at least one step

    def __post_init__(self) -> None:
        _require(all(1 <= e <= MAX_EPOCHS for e in self.epochs), "epochs",
                 f"must be epochs in [1, {MAX_EPOCHS:,}], got {list(self.epochs)}")
        _require(0 < self.fraction <= 1, "fraction", f"must be in (0, 1], got {self.fraction}")


@dataclass(frozen=True)
class PerfConfig:
    amp: Literal["auto", "bf16", "fp32"] = "auto"  # auto = bf16 autocast on CUDA, fp32 elsewhere
    channels_last: Literal["auto", "on", "off"] = "auto"  # auto = on for CUDA
    compile: bool = False  # torch.compile the network (first epoch pays the compile time)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    num_threads: int = 0  # CPU threads for torch; 0 = leave torch's default

    def __post_init__(self) -> None:
        _require(self.num_threads >= 0, "num_threads", f"must be >= 0 (0 = torch's default), got {self.num_threads}")
        _within(self.num_threads, 0, 1_024, "num_threads", " (0 = torch's default)")
        _require(self.compile or self.compile_mode == "default", "compile_mode",
                 f"{self.compile_mode!r} applies only with perf.compile: true")


@dataclass(frozen=True)
class TrainConfig:
    method: Literal["arat", "pgd_at", "trades"] = "arat"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    arat: ARATConfig = field(default_factory=ARATConfig)
    trades: TradesConfig = field(default_factory=TradesConfig)
    swa: SWAConfig = field(default_factory=SWAConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)

    def __post_init__(self) -> None:
        _require(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"), "device",
                 f"allowed: auto, cpu, cuda, cuda:N; got {self.device!r}")
        _within(self.seed, 0, MAX_SEED, "seed")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from a nested mapping; unknown keys, bad types and bad ranges raise :class:`ConfigError`."""
        return _build(cls, data, "")

    def to_dict(self) -> dict[str, Any]:
        """Nested plain-Python form (tuples as lists), the inverse of :meth:`from_dict`."""
        return _plain(dataclasses.asdict(self))

    def flat(self) -> dict[str, Any]:
        """Flat ``{dotted.key: value}`` form, as logged to MLflow."""
        return flatten(self.to_dict())


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; ints are accepted for floats, lists for tuples."""
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"expected a mapping of {sorted(f.name for f in dataclasses.fields(tp))}")
        return _build(tp, value, key + ".")
    if origin is Literal:
        if value not in typing.get_args(tp) or isinstance(value, bool) != isinstance(typing.get_args(tp)[0], bool):
            raise ConfigError(key, f"allowed: {', '.join(repr(a) for a in typing.get_args(tp))}; got {value!r}")
        return value
    if origin in (types.UnionType, typing.Union):
        for arg in typing.get_args(tp):
            try:
                return _convert(arg, value, key)
            except ConfigError:
                continue
        raise ConfigError(key, f"expected {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(key, f"expected {_type_name(tp)}, got {value!r}")
        return tuple(_convert(typing.get_args(tp)[0], v, key) for v in value)
    if tp is type(None):
        if value is not None:
            raise ConfigError(key, f"expected null, got {value!r}")
        return None
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(key, f"expected a finite number, got {value!r}")
        return number
    if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(key, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cls: type[T], data: Mapping[str, Any], prefix: str) -> T:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(prefix + str(unknown[0]), f"unknown key; allowed keys here: {', '.join(names)}")
    kwargs = {k: _convert(hints[k], v, prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(prefix + err.field, str(err).split(": ", 1)[1]) from None


def flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in nested.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}``; nested mappings among the values are merged."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(key, f"{p!r} is a value, not a section")
        if isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
            node[leaf] = deep_merge(node[leaf], value)
        else:
            node[leaf] = value
    return out


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``, recursively for nested mappings."""
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["optim.lr=0.05", "model.name=resnet18"]`` -> a nested mapping; values are parsed as YAML scalars."""
    from .safe_yaml import load_yaml  # it imports ConfigError from here

    flat: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(pair, "an override must look like key.subkey=value")
        flat[key.strip()] = load_yaml(raw, key.strip())
    return unflatten(flat)


def load_config(path: str | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML training config (or the defaults) and apply ``--set`` overrides."""
    from .safe_yaml import read_yaml_file

    data: dict[str, Any] = {}
    if path is not None:
        loaded = read_yaml_file(path, "--config") or {}
        if not isinstance(loaded, dict):
            raise ConfigError(str(path), "the file must hold a mapping of config sections")
        data = loaded
    return TrainConfig.from_dict(deep_merge(data, parse_overrides(overrides)))
