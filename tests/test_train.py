"""The training loop: exact resume, metrics, and learning on real data (scikit-learn's digits)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from arat_train.checkpoint import load_checkpoint
from arat_train.config import TrainConfig
from arat_train.train import TrainingDiverged, train

SMALL = {
    "data": {"dataset": "digits", "train_limit": 256},
    "model": {"name": "small_cnn", "width": 8},
    "attack": {"eps": 51, "steps": 2},
    "optim": {"epochs": 2, "batch_size": 64, "lr": 0.05},
    "eval": {"attack": {"eps": 51, "steps": 3, "step_size": 25.5}, "max_examples": 64},
}


def test_resume_continues_exactly(tmp_path: Path) -> None:
    cfg = TrainConfig.from_dict(SMALL)
    seen: list[dict[str, float]] = []
    straight = train(cfg, checkpoint_dir=tmp_path / "a", callback=lambda m, _p: seen.append(m))
    assert [m["epoch"] for m in seen] == [1.0, 2.0]
    for key in ("clean_acc", "robust_acc", "ce_adv", "ce_clean", "inv_loss", "balance_a", "lr", "epoch_s",
                "images_per_s"):
        assert key in straight
    one = TrainConfig.from_dict({**SMALL, "optim": {**SMALL["optim"], "epochs": 2}})
    first: list[Path | None] = []

    def stop_after_first(_m: dict[str, float], path: Path | None) -> None:
        first.append(path)
        raise KeyboardInterrupt  # an interrupted run: the epoch-1 checkpoint is on disk

    with pytest.raises(KeyboardInterrupt):
        train(one, checkpoint_dir=tmp_path / "b", callback=stop_after_first)
    assert first[0] is not None and load_checkpoint(first[0])["epoch"] == 1
    resumed = train(one, checkpoint_dir=tmp_path / "b", resume_from=first[0])
    for key in ("clean_acc", "robust_acc", "loss", "ce_adv", "balance_a"):
        assert resumed[key] == straight[key], key
    a, b = load_checkpoint(tmp_path / "a" / "checkpoint.pt"), load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 2
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for k, v in a["predictors"].items():
        assert torch.equal(v, b["predictors"][k]), k
    assert set(a) >= {"model", "predictors", "optimizer", "epoch", "rng", "config"}


def test_nan_loss_raises(tmp_path: Path) -> None:
    cfg = TrainConfig.from_dict({**SMALL, "optim": {**SMALL["optim"], "lr": 1e30, "epochs": 1}})
    with pytest.raises(TrainingDiverged, match="loss"):
        train(cfg)


def _fit(method: str, eps: float) -> dict[str, float]:
    cfg = TrainConfig.from_dict({
        "method": method,
        "data": {"dataset": "digits"},
        "model": {"name": "small_cnn", "width": 32},
        "attack": {"eps": eps, "steps": 5},
        "optim": {"epochs": 6, "batch_size": 64, "lr": 0.05},
        "eval": {"attack": {"eps": 51, "steps": 10, "step_size": 12.75}},
    })
    return train(cfg)


def test_arat_learns_digits_and_beats_plain_training_on_robustness() -> None:
    """AR-AT at eps 0.2 against plain training (no attack: PGD-AT with eps 0 is plain CE on one BN set)."""
    arat = _fit("arat", 51)
    plain = _fit("pgd_at", 0)
    print(f"AR-AT clean {arat['clean_acc']:.3f} robust {arat['robust_acc']:.3f}; "
          f"plain clean {plain['clean_acc']:.3f} robust {plain['robust_acc']:.3f}")
    assert arat["clean_acc"] > 0.6  # chance is 0.1
    assert plain["clean_acc"] > 0.9
    assert arat["robust_acc"] > plain["robust_acc"] + 0.05


def test_cli_trains_and_refuses_bad_config(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "arat_train", "--set", "optim.epochs=1", "--set", "data.train_limit=128",
         "--set", "eval.max_examples=32", "--json", "--checkpoint-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert '"clean_acc"' in ok.stdout.splitlines()[-1]
    assert (tmp_path / "checkpoint.pt").exists()
    bad = subprocess.run([sys.executable, "-m", "arat_train", "--set", "attack.eps=-3"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "attack.eps: must be >= 0" in bad.stderr


def test_library_imports_no_orchestration_packages() -> None:
    code = ("import sys, pkgutil, importlib, arat_train\n"
            "for m in pkgutil.walk_packages(arat_train.__path__, 'arat_train.'):\n"
            "    importlib.import_module(m.name)\n"
            "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('ray', 'optuna', 'mlflow'))\n"
            "print(bad); sys.exit(1 if bad else 0)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    import random

    import numpy as np

    from arat_train.checkpoint import rng_state, set_rng_state

    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    torch.save({"rng": rng_state()}, tmp_path / "rng.pt")
    first = (torch.rand(3).tolist(), random.random(), np.random.rand(3).tolist())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert (torch.rand(3).tolist(), random.random(), np.random.rand(3).tolist()) == first


class _RunsCode:
    """Unpickling this calls ``open(path, "w")``: what a planted checkpoint could do with any callable."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (self.path, "w")


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path: Path) -> None:
    import pickle

    marker = tmp_path / "ran"
    torch.save({"epoch": 1, "model": {}, "payload": _RunsCode(str(marker))}, tmp_path / "planted.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint(tmp_path / "planted.pt")
    assert not marker.exists()
