"""Study presets (``search_spaces/*.yaml``): schema, loading, ``--set`` overrides and validation.

A preset is checked completely before Ray starts; every problem raises :class:`SpecError` naming the field and
what is allowed. Fixed values (``train:``) and searched ranges (``space:``) use the training config's dotted keys,
so one TrainConfig is built per trial from ``fixed + searched``.

Layout (every section but ``train`` and ``space`` optional)::

    name: quickstart                      # study name prefix: letters, digits, '.', '_', '-'
    description: free text
    train: {...}                          # a TrainConfig mapping (arat_train/config.py)
    scaling: {num_workers: 2, use_gpu: false, cpus_per_worker: 0.5, gpus_per_worker: 0,
              placement_strategy: PACK}   # PACK | SPREAD | STRICT_PACK | STRICT_SPREAD (a trial's workers)
    search: {sampler: tpe, seed: 0, num_samples: 8, max_concurrent: 0, enqueue_defaults: true,
             sampler_options: {}, masking_threshold: 0.1,
             scheduler: {type: moasha, grace_period: 1, reduction_factor: 3}}   # or {type: fifo}
    space:                                # dotted TrainConfig key -> range
      arat.gamma: {low: 1, high: 300, log: true}
      attack.steps: {low: 3, high: 10, type: int}
      arat.predictor_ratio: {choices: [0, 0.25, 0.5, 1.0]}  # width max(1, int(r * d)); 0 = none
    failure: {max_failures: 1, train_max_failures: 2}
    debug: {fail_trials: []}              # test hook: 0-based trial indices that fail after their first epoch
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arat_train.config import (
    MAX_SEED,
    ConfigError,
    TrainConfig,
    deep_merge,
    flatten,
    parse_overrides,
    unflatten,
)
from arat_train.safe_yaml import load_yaml, read_yaml_file

from .pareto import rung_levels

SECTIONS = ("name", "description", "train", "scaling", "search", "space", "failure", "debug")
SAMPLERS = ("tpe", "nsga2", "gp", "random")
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")  # of a trial's placement group
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TRAIN_KEYS = TrainConfig().flat()  # every dotted TrainConfig key with its default
# Upper bounds of the study's counts (README, "Preset schema"); the training values' bounds are in TrainConfig.
MAX_TRIALS = 10_000
MAX_CONCURRENT = 1_024
MAX_FAILURES = 100  # restarts of a trial, or of its worker group (-1 = unlimited is allowed too)
MAX_WORKERS = 1_024
MAX_CPUS_PER_WORKER = 1_024
MAX_GPUS_PER_WORKER = 16
MAX_CHOICES = 100


class SpecError(ConfigError):
    """A bad study preset or override; ``field`` is the dotted key in the preset."""

    @classmethod
    def of(cls, err: ConfigError) -> SpecError:
        """The same refusal as a :class:`SpecError`."""
        return cls(err.field, str(err).split(": ", 1)[1] if ": " in str(err) else str(err))


@dataclass(frozen=True)
class Range:
    """One searched dimension: ``[low, high]`` (float or int, optionally log scale) or a list of choices."""

    kind: str  # "float" | "int" | "choice"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def values_to_check(self) -> list[tuple[str, Any]]:
        """(label, value) pairs whose TrainConfig must be valid: both endpoints, or every choice."""
        if self.kind == "choice":
            return [(f"choice {v!r}", v) for v in self.choices]
        return [(f"low = {self.low}", self.low), (f"high = {self.high}", self.high)]

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.choices
        return isinstance(value, int | float) and self.low <= value <= self.high  # type: ignore[operator]

    def describe(self) -> str:
        if self.kind == "choice":
            return f"one of {list(self.choices)}"
        return f"[{self.low}, {self.high}]" + (" (log)" if self.log else "")

    def to_yaml(self) -> dict[str, Any]:
        if self.kind == "choice":
            return {"choices": list(self.choices)}
        out: dict[str, Any] = {"low": self.low, "high": self.high, "type": self.kind}
        if self.log:
            out["log"] = True
        return out


@dataclass(frozen=True)
class Scaling:
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    placement_strategy: str = "PACK"  # one of PLACEMENT_STRATEGIES: how a trial's workers spread over nodes

    @property
    def cpus_per_trial(self) -> float:
        return self.num_workers * self.cpus_per_worker

    @property
    def gpus_per_trial(self) -> float:
        return self.num_workers * self.gpus_per_worker

    def resources_per_worker(self) -> dict[str, float]:
        res = {"CPU": self.cpus_per_worker}
        if self.use_gpu:
            res["GPU"] = self.gpus_per_worker
        return res


SCHEDULERS = ("fifo", "moasha")


@dataclass(frozen=True)
class Scheduler:
    """How trials are stopped early: ``fifo`` never stops one; ``moasha`` stops a trial at a rung
    (``grace_period * reduction_factor**k`` epochs, below the trial's ``optim.epochs``) unless it ranks in the top
    ``1 / reduction_factor`` of the trials recorded there (:mod:`orchestrator.moasha`)."""

    type: str = "fifo"
    grace_period: int = 1  # epochs before the first rung
    reduction_factor: float = 3.0  # eta: rungs eta apart, the top 1 / eta continue
    # What a rung ranks: the epoch's own evaluation, or an annealed probe of it (arat_train's ProbeConfig: a thrown-
    # away copy trained probe_fraction of an epoch at the decayed learning rate), which predicts the final
    # objectives better before a step schedule's first decay.
    rank_on: str = "epoch"
    probe_fraction: float = 0.25

    def rung_epochs(self, max_t: int) -> tuple[int, ...]:
        """The epochs (1-based) at which a trial of ``max_t`` epochs meets a rung: ``grace * eta**k < max_t``."""
        return rung_levels(self.grace_period, self.reduction_factor, max_t)

    @property
    def metrics(self) -> tuple[str, str]:
        """The result keys a rung ranks (the objectives, or their annealed probe's)."""
        return ("probe_clean_acc", "probe_robust_acc") if self.rank_on == "probe" else ("clean_acc", "robust_acc")


@dataclass(frozen=True)
class Search:
    sampler: str = "tpe"
    seed: int = 0
    num_samples: int = 8
    max_concurrent: int = 0  # 0 = as many trials as the cluster's resources fit
    enqueue_defaults: bool = True
    sampler_options: dict[str, Any] = field(default_factory=dict)
    # A finished trial whose masking_gap (PGD minus the objective's robust accuracy, on the same images) exceeds
    # this is tagged gradient_masking_suspect: PGD's gradients mislead on it.
    masking_threshold: float = 0.1
    scheduler: Scheduler = Scheduler()


@dataclass(frozen=True)
class Failure:
    max_failures: int = 1  # Ray Tune: restarts of a trial whose driver function died (-1 = unlimited)
    train_max_failures: int = 2  # Ray Train: worker-group restarts inside a trial, from its last checkpoint


@dataclass(frozen=True)
class Debug:
    fail_trials: tuple[int, ...] = ()


@dataclass(frozen=True)
class StudySpec:
    """A validated study preset."""

    name: str
    train: dict[str, Any]  # nested TrainConfig mapping, as written (relative data.root made absolute)
    space: dict[str, Range]
    scaling: Scaling = Scaling()
    search: Search = Search()
    failure: Failure = Failure()
    debug: Debug = Debug()
    description: str = ""

    def fixed_flat(self) -> dict[str, Any]:
        """The preset's fixed training values as ``{dotted.key: value}``: Tune's ``param_space``."""
        return flatten(self.train)

    def train_config(self, params: Mapping[str, Any]) -> TrainConfig:
        """The TrainConfig of one trial: fixed values, then ``params`` (dotted keys) on top."""
        return trial_config(self.train, params)

    def default_point(self) -> dict[str, Any]:
        """The searched keys at their fixed (or TrainConfig default) values: the enqueued first trial."""
        fixed = self.fixed_flat()
        return {k: fixed.get(k, _TRAIN_KEYS[k]) for k in self.space}

    def to_dict(self) -> dict[str, Any]:
        """The resolved preset as YAML-ready data (stored with the study, read back by ``--resume``)."""
        return {
            "name": self.name,
            "description": self.description,
            "train": copy.deepcopy(self.train),
            "scaling": vars(self.scaling).copy(),
            "search": {**vars(self.search), "sampler_options": dict(self.search.sampler_options),
                       "scheduler": vars(self.search.scheduler).copy()},
            "space": {k: r.to_yaml() for k, r in self.space.items()},
            "failure": vars(self.failure).copy(),
            "debug": {"fail_trials": list(self.debug.fail_trials)},
        }


def trial_config(train: Mapping[str, Any], params: Mapping[str, Any]) -> TrainConfig:
    """The TrainConfig of one trial: the preset's fixed ``train`` mapping, then ``params`` (dotted training keys;
    other keys are ignored) on top."""
    flat = {k: v for k, v in params.items() if k in _TRAIN_KEYS}
    return TrainConfig.from_dict(deep_merge(train, unflatten(flat)))


# --------------------------------------------------------------------------------------------- loading


def read_preset(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a preset file, read strictly (:mod:`arat_train.safe_yaml`: size, text, no aliases)."""
    try:
        data = read_yaml_file(path, "--config")
    except ConfigError as err:
        raise SpecError.of(err) from None
    if not isinstance(data, dict):
        raise SpecError("--config", f"{path} must hold a mapping with sections {', '.join(SECTIONS)}")
    return data


def apply_overrides(raw: Mapping[str, Any], pairs: Sequence[str]) -> dict[str, Any]:
    """Apply ``--set key=value`` pairs to a raw preset.

    ``search.num_samples=4`` sets a preset field; a key that is not a preset section is a training key
    (``optim.epochs=2`` means ``train.optim.epochs=2``); ``space.arat.gamma={low: 1, high: 10, log: true}``
    replaces a range, ``space.arat.gamma.high=50`` changes one of its fields and ``space.arat.gamma=null``
    stops searching the key.
    """
    out = copy.deepcopy(dict(raw))
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpecError(pair, "an override must look like section.key=value, e.g. search.num_samples=4")
        try:
            value = load_yaml(text, key)
            head, _, rest = key.partition(".")
            if head == "space" and rest:
                out["space"] = _override_space(dict(out.get("space") or {}), rest, value)
            elif head in SECTIONS:
                out = deep_merge(out, parse_overrides([f"{key}={text}"]))
            else:
                out["train"] = deep_merge(out.get("train") or {}, parse_overrides([f"{key}={text}"]))
        except ConfigError as err:
            raise SpecError.of(err) from None
    return out


def _override_space(space: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    parent, _, leaf = key.rpartition(".")
    if key not in _TRAIN_KEYS and parent in _TRAIN_KEYS and leaf in ("low", "high", "log", "type", "choices"):
        entry = dict(space.get(parent) or {})
        entry[leaf] = value
        space[parent] = entry
    elif value is None:
        space.pop(key, None)
    else:
        space[key] = value
    return space


def smoke(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Shrink a raw preset for CI: at most 3 trials of at most 2 epochs on a few hundred images."""
    out = copy.deepcopy(dict(raw))
    train = out.setdefault("train", {})
    if not isinstance(train, dict):
        return out  # validation reports it
    optim, data, ev = train.setdefault("optim", {}), train.setdefault("data", {}), train.setdefault("eval", {})
    arat = train.setdefault("arat", {})
    if not all(isinstance(s, dict) for s in (optim, data, ev, arat)):
        return out
    optim["epochs"] = min(_int_or(optim.get("epochs"), 2), 2)
    data["train_limit"] = min(_int_or(data.get("train_limit"), 512) or 512, 512)
    ev["max_examples"] = min(_int_or(ev.get("max_examples"), 512) or 512, 512)
    arat["balance_samples"] = min(_int_or(arat.get("balance_samples"), 256), 256)
    search = out.setdefault("search", {})
    if isinstance(search, dict):
        search["num_samples"] = min(_int_or(search.get("num_samples"), 3), 3)
        scheduler = search.get("scheduler")
        if isinstance(scheduler, dict) and scheduler.get("type") == "moasha":  # a rung below the shrunk budget
            scheduler["grace_period"] = min(_int_or(scheduler.get("grace_period"), 1), optim["epochs"] - 1) or 1
    return out


def _int_or(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def load_spec(path: str | Path, overrides: Sequence[str] = (), *, num_samples: int | None = None,
              smoke_test: bool = False, base_dir: str | Path | None = None) -> StudySpec:
    """Read, override, (optionally) shrink and validate a preset. Raises :class:`SpecError`."""
    raw = apply_overrides(read_preset(path), overrides)
    if num_samples is not None:
        raw.setdefault("search", {})
        if isinstance(raw["search"], dict):
            raw["search"]["num_samples"] = num_samples
    if smoke_test:
        raw = smoke(raw)
    return validate(raw, base_dir=base_dir)


# ------------------------------------------------------------------------------------------ validation


def validate(raw: Mapping[str, Any], *, base_dir: str | Path | None = None) -> StudySpec:
    """Check a raw preset completely; relative ``train.data.root`` is made absolute against ``base_dir``."""
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise SpecError(str(unknown[0]), f"unknown top-level key; allowed: {', '.join(SECTIONS)}")
    name = check_name(raw.get("name"), "name")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise SpecError("description", f"expected a string, got {description!r}")
    train = _mapping(raw.get("train"), "train", required=True)
    try:
        cfg = TrainConfig.from_dict(train)
    except ConfigError as err:
        raise SpecError(f"train.{err.field}", str(err).split(": ", 1)[1]) from None
    train = _absolute_root(train, cfg, base_dir)
    scaling = _scaling(_mapping(raw.get("scaling"), "scaling"), cfg)
    search = _search(_mapping(raw.get("search"), "search"))
    failure = _failure(_mapping(raw.get("failure"), "failure"))
    debug = _debug(_mapping(raw.get("debug"), "debug"))
    space = {k: _range(k, v, train) for k, v in _mapping(raw.get("space"), "space", required=True).items()}
    if not space:
        raise SpecError("space", "must hold at least one searched key, e.g. arat.gamma: {low: 1, high: 300, log: true}")
    spec = StudySpec(name=name, description=description, train=train, space=space, scaling=scaling,
                     search=search, failure=failure, debug=debug)
    if search.enqueue_defaults:
        for key, value in spec.default_point().items():
            if not space[key].contains(value):
                raise SpecError("search.enqueue_defaults",
                                f"the default {key} = {value!r} lies outside space.{key} {space[key].describe()}; "
                                "widen the range, set train." + key + " inside it, or set enqueue_defaults: false")
    _check_scheduler(spec, cfg)
    spec = dataclasses.replace(spec, train=_with_probes(spec.train, search.scheduler, cfg))
    make_sampler(search)  # sampler options are checked by building the sampler once
    return spec


def check_name(name: Any, field_name: str) -> str:
    """A study or preset name: it becomes a directory and an MLflow experiment name."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise SpecError(field_name, f"expected a name of letters, digits, '.', '_' or '-', got {name!r}")
    return name


def _mapping(value: Any, field_name: str, *, required: bool = False) -> dict[str, Any]:
    if value is None and not required:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(field_name, f"expected a mapping, got {type(value).__name__} {value!r}")
    return dict(value)


def _check_keys(data: Mapping[str, Any], allowed: Sequence[str], section: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise SpecError(f"{section}.{unknown[0]}", f"unknown key; allowed keys here: {', '.join(allowed)}")


def _number(value: Any, field_name: str, *, integer: bool = False) -> Any:
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if not ok or isinstance(value, bool) or (isinstance(value, float) and not math.isfinite(value)):
        kind = "an integer" if integer else "a finite number"
        raise SpecError(field_name, f"expected {kind}, got {type(value).__name__} {value!r}")
    return value


def _at_most(value: float, high: float, field_name: str, low: float, note: str = "") -> None:
    if value > high:
        raise SpecError(field_name, f"must be in [{low}, {high:,}]{note}, got {value:,}")


def _bool(value: Any, field_name: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(field_name, f"expected true or false, got {value!r}")
    return value


def _absolute_root(train: dict[str, Any], cfg: TrainConfig, base_dir: str | Path | None) -> dict[str, Any]:
    """Trials run in other working directories: pin a relative data root, and refuse a missing one."""
    if cfg.data.dataset not in ("cifar10", "cifar100"):
        return train
    root = Path(cfg.data.root).expanduser()
    if not root.is_absolute():
        root = Path(base_dir or Path.cwd()).resolve() / root
    if not cfg.data.download and not root.is_dir():
        raise SpecError("train.data.root", f"{root} does not exist; point it at a directory holding "
                        f"{cfg.data.dataset} (shared or pre-staged on every node) or set train.data.download: true")
    return deep_merge(train, {"data": {"root": str(root)}})


def _scaling(data: dict[str, Any], cfg: TrainConfig) -> Scaling:
    _check_keys(data, ("num_workers", "use_gpu", "cpus_per_worker", "gpus_per_worker", "placement_strategy"),
                "scaling")
    workers = _number(data.get("num_workers", 1), "scaling.num_workers", integer=True)
    if workers < 1:
        raise SpecError("scaling.num_workers", f"must be >= 1, got {workers}")
    _at_most(workers, MAX_WORKERS, "scaling.num_workers", 1)
    use_gpu = _bool(data.get("use_gpu", False), "scaling.use_gpu")
    cpus = _number(data.get("cpus_per_worker", 1), "scaling.cpus_per_worker")
    if cpus <= 0:
        raise SpecError("scaling.cpus_per_worker", f"must be > 0 (fractions allowed), got {cpus}")
    _at_most(cpus, MAX_CPUS_PER_WORKER, "scaling.cpus_per_worker", 0, " (0 excluded)")
    gpus = _number(data.get("gpus_per_worker", 1 if use_gpu else 0), "scaling.gpus_per_worker")
    _at_most(gpus, MAX_GPUS_PER_WORKER, "scaling.gpus_per_worker", 0)
    if use_gpu and gpus <= 0:
        raise SpecError("scaling.gpus_per_worker", f"must be > 0 when scaling.use_gpu is true, got {gpus}")
    if not use_gpu and gpus != 0:
        raise SpecError("scaling.gpus_per_worker", f"must be 0 unless scaling.use_gpu is true, got {gpus}")
    if not use_gpu and cfg.device.startswith("cuda"):
        raise SpecError("train.device", f"is {cfg.device!r} but scaling.use_gpu is false; use auto or cpu")
    if use_gpu and cfg.device == "cpu":
        raise SpecError("train.device", "is 'cpu' but scaling.use_gpu is true; use auto or cuda")
    strategy = data.get("placement_strategy", "PACK")
    if strategy not in PLACEMENT_STRATEGIES:
        raise SpecError("scaling.placement_strategy", f"must be one of {', '.join(PLACEMENT_STRATEGIES)}, "
                                                      f"got {strategy!r}")
    return Scaling(num_workers=workers, use_gpu=use_gpu, cpus_per_worker=float(cpus), gpus_per_worker=float(gpus),
                   placement_strategy=strategy)


def _search(data: dict[str, Any]) -> Search:
    _check_keys(data, ("sampler", "seed", "num_samples", "max_concurrent", "enqueue_defaults", "sampler_options",
                       "masking_threshold", "scheduler"), "search")
    sampler = data.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise SpecError("search.sampler", f"allowed: {', '.join(SAMPLERS)}; got {sampler!r}")
    seed = _number(data.get("seed", 0), "search.seed", integer=True)
    if not 0 <= seed <= MAX_SEED:
        raise SpecError("search.seed", f"must be in [0, {MAX_SEED:,}], got {seed}")
    num_samples = _number(data.get("num_samples", 8), "search.num_samples", integer=True)
    if num_samples < 1:
        raise SpecError("search.num_samples", f"must be >= 1, got {num_samples}")
    _at_most(num_samples, MAX_TRIALS, "search.num_samples", 1)
    max_concurrent = _number(data.get("max_concurrent", 0), "search.max_concurrent", integer=True)
    if max_concurrent < 0:
        raise SpecError("search.max_concurrent", f"must be >= 0 (0 = what the cluster fits), got {max_concurrent}")
    _at_most(max_concurrent, MAX_CONCURRENT, "search.max_concurrent", 0, " (0 = what the cluster fits)")
    enqueue = _bool(data.get("enqueue_defaults", True), "search.enqueue_defaults")
    options = _mapping(data.get("sampler_options"), "search.sampler_options")
    masking = float(_number(data.get("masking_threshold", 0.1), "search.masking_threshold"))
    if not 0 <= masking <= 1:
        raise SpecError("search.masking_threshold", f"must be in [0, 1] (an accuracy difference), got {masking}")
    return Search(sampler=sampler, seed=seed, num_samples=num_samples, max_concurrent=max_concurrent,
                  enqueue_defaults=enqueue, sampler_options=options, masking_threshold=masking,
                  scheduler=_scheduler(_mapping(data.get("scheduler"), "search.scheduler")))


def _scheduler(data: dict[str, Any]) -> Scheduler:
    _check_keys(data, ("type", "grace_period", "reduction_factor", "rank_on", "probe_fraction"), "search.scheduler")
    kind = data.get("type", "fifo")
    if kind not in SCHEDULERS:
        raise SpecError("search.scheduler.type", f"allowed: {', '.join(SCHEDULERS)}; got {kind!r}")
    grace = _number(data.get("grace_period", 1), "search.scheduler.grace_period", integer=True)
    if grace < 1:
        raise SpecError("search.scheduler.grace_period", f"must be >= 1 (epochs before the first rung), got {grace}")
    eta = float(_number(data.get("reduction_factor", 3), "search.scheduler.reduction_factor"))
    if eta < 2:
        raise SpecError("search.scheduler.reduction_factor", f"must be >= 2 (eta: the top 1/eta continue), got {eta:g}")
    rank_on = data.get("rank_on", "epoch")
    if rank_on not in ("epoch", "probe"):
        raise SpecError("search.scheduler.rank_on", f"allowed: epoch, probe; got {rank_on!r}")
    fraction = float(_number(data.get("probe_fraction", 0.25), "search.scheduler.probe_fraction"))
    if not 0 < fraction <= 1:
        raise SpecError("search.scheduler.probe_fraction", f"must be in (0, 1] (of an epoch), got {fraction:g}")
    return Scheduler(type=kind, grace_period=grace, reduction_factor=eta, rank_on=rank_on, probe_fraction=fraction)


def _with_probes(train: dict[str, Any], scheduler: Scheduler, cfg: TrainConfig) -> dict[str, Any]:
    """A moasha study that ranks rungs on probes: every trial probes at the rung epochs."""
    if scheduler.type != "moasha" or scheduler.rank_on != "probe":
        return train
    rungs = scheduler.rung_epochs(cfg.optim.epochs)
    if cfg.probe.epochs and tuple(cfg.probe.epochs) != rungs:  # a stored study carries exactly these
        raise SpecError("train.probe.epochs", f"is set by search.scheduler.rank_on: probe (the rung epochs, "
                                              f"{list(rungs)}); leave it out")
    probe = {"epochs": list(rungs), "fraction": scheduler.probe_fraction}
    return deep_merge(train, {"probe": probe})


def _check_scheduler(spec: StudySpec, cfg: TrainConfig) -> None:
    """A rung must come before the end of every trial's budget, and every trial must have the same budget."""
    s = spec.search.scheduler
    if s.type == "fifo":
        return
    if "optim.epochs" in spec.space:
        raise SpecError("space.optim.epochs", "cannot be searched with search.scheduler.type: moasha (its rungs "
                                              "need one budget for every trial); fix train.optim.epochs or use fifo")
    if s.grace_period >= cfg.optim.epochs:
        raise SpecError("search.scheduler.grace_period", f"must be below the trial's epochs (train.optim.epochs = "
                        f"{cfg.optim.epochs}), got {s.grace_period}; lower it or use type: fifo")


def _failure(data: dict[str, Any]) -> Failure:
    _check_keys(data, ("max_failures", "train_max_failures"), "failure")
    values = {}
    for key, default in (("max_failures", 1), ("train_max_failures", 2)):
        values[key] = _number(data.get(key, default), f"failure.{key}", integer=True)
        if not -1 <= values[key] <= MAX_FAILURES:
            raise SpecError(f"failure.{key}", f"must be in [0, {MAX_FAILURES}], or -1 for unlimited; "
                                              f"got {values[key]}")
    return Failure(**values)


def _debug(data: dict[str, Any]) -> Debug:
    _check_keys(data, ("fail_trials",), "debug")
    trials = data.get("fail_trials") or []
    if not isinstance(trials, list):
        raise SpecError("debug.fail_trials", f"expected a list of 0-based trial indices, got {trials!r}")
    for t in trials:
        if _number(t, "debug.fail_trials", integer=True) < 0:
            raise SpecError("debug.fail_trials", f"trial indices must be >= 0, got {t}")
    return Debug(fail_trials=tuple(trials))


def _range(key: str, value: Any, train: Mapping[str, Any]) -> Range:
    where = f"space.{key}"
    if key not in _TRAIN_KEYS:
        raise SpecError(where, f"{key!r} is not a training config key; {_nearby_keys(key)}")
    if not isinstance(value, Mapping):
        raise SpecError(where, "expected {low: L, high: H[, log: true][, type: int|float]} or {choices: [...]}, "
                        f"got {value!r}")
    value = dict(value)
    if "choices" in value:
        _check_keys(value, ("choices",), where)
        choices = value["choices"]
        if not isinstance(choices, list) or not choices:
            raise SpecError(f"{where}.choices", f"expected a non-empty list, got {choices!r}")
        if len(choices) > MAX_CHOICES:
            raise SpecError(f"{where}.choices", f"at most {MAX_CHOICES} choices, got {len(choices)}")
        if any(isinstance(c, dict | list) for c in choices) or len({repr(c) for c in choices}) != len(choices):
            raise SpecError(f"{where}.choices", f"expected distinct scalar values, got {choices!r}")
        rng = Range("choice", choices=tuple(choices))
    else:
        _check_keys(value, ("low", "high", "log", "type"), where)
        for end in ("low", "high"):
            if end not in value:
                raise SpecError(f"{where}.{end}", "is required (or give choices: [...] instead of a range)")
        default_kind = "int" if isinstance(_TRAIN_KEYS[key], int) and not isinstance(_TRAIN_KEYS[key], bool) \
            else "float"
        kind = value.get("type", default_kind)
        if kind not in ("int", "float"):
            raise SpecError(f"{where}.type", f"allowed: int, float; got {kind!r}")
        low = _number(value["low"], f"{where}.low", integer=kind == "int")
        high = _number(value["high"], f"{where}.high", integer=kind == "int")
        log = _bool(value.get("log", False), f"{where}.log")
        if low >= high:
            raise SpecError(where, f"low ({low}) must be < high ({high})")
        if log and low <= 0:
            raise SpecError(f"{where}.low", f"must be > 0 on a log scale, got {low}")
        rng = Range(kind, low=low if kind == "int" else float(low), high=high if kind == "int" else float(high),
                    log=log)
    for label, v in rng.values_to_check():
        try:
            TrainConfig.from_dict(deep_merge(train, unflatten({key: v})))
        except ConfigError as err:
            raise SpecError(where, f"{label} is not a valid training value: {err}") from None
    return rng


def _nearby_keys(key: str) -> str:
    section = key.rpartition(".")[0]
    same = [k for k in _TRAIN_KEYS if k.rpartition(".")[0] == section]
    if same:
        return f"allowed in {section}: {', '.join(same)}"
    sections = sorted({k.rpartition(".")[0] for k in _TRAIN_KEYS if "." in k})
    return f"keys are dotted TrainConfig keys under: {', '.join(sections)} (or method, seed, device)"


# ----------------------------------------------------------------------------------------- to Optuna


def optuna_space(spec: StudySpec) -> dict[str, Any]:
    """The searched keys as Optuna distributions (both ends inclusive), keyed by dotted training key."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for key, rng in spec.space.items():
        if rng.kind == "choice":
            out[key] = CategoricalDistribution(list(rng.choices))
        elif rng.kind == "int":
            out[key] = IntDistribution(int(rng.low), int(rng.high), log=rng.log)  # type: ignore[arg-type]
        else:
            out[key] = FloatDistribution(float(rng.low), float(rng.high), log=rng.log)  # type: ignore[arg-type]
    return out


def make_sampler(search: Search) -> Any:
    """The seeded Optuna sampler named by ``search.sampler``, with ``sampler_options`` on top of these defaults.

    TPE is multivariate (Optuna 5 models multi-objective studies one parameter at a time unless told), and the
    random start of TPE and GP and the NSGA-II population scale with ``num_samples`` so that a small study still
    gets past them: ``n_startup_trials = clip(num_samples // 3 + 1, 2, 10)``,
    ``population_size = clip(num_samples // 2, 4, 50)``.
    """
    import optuna

    startup = min(10, max(2, search.num_samples // 3 + 1))
    samplers = {
        "tpe": (optuna.samplers.TPESampler, {"multivariate": True, "n_startup_trials": startup}),
        "nsga2": (optuna.samplers.NSGAIISampler, {"population_size": min(50, max(4, search.num_samples // 2))}),
        "gp": (optuna.samplers.GPSampler, {"n_startup_trials": startup}),
        "random": (optuna.samplers.RandomSampler, {}),
    }
    cls, defaults = samplers[search.sampler]
    try:
        return cls(**{**defaults, **search.sampler_options, "seed": search.seed})
    except (TypeError, ValueError) as err:
        raise SpecError("search.sampler_options", f"not accepted by {cls.__name__} (search.sampler: "
                        f"{search.sampler}): {err}; give that sampler's keyword arguments, or none with "
                        "--set search.sampler_options=null") from None
