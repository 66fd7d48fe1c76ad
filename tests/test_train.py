"""The training loop: exact resume, metrics, and learning on real data (scikit-learn's digits)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from arat_train.attacks import pgd_attack
from arat_train.checkpoint import load_checkpoint
from arat_train.config import AttackConfig, ConfigError, TrainConfig
from arat_train.models import build_model
from arat_train.train import Objective, TrainingDiverged, train

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


def _their_pgd_linf(model_fn: Callable[[torch.Tensor], torch.Tensor], bx: torch.Tensor, by: torch.Tensor,
                    eps: float, step_size: float, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' ``attacks.PGD_linf.forward``, transcribed; returns (what the clean branch then sees, x_adv)."""
    adv_bx = bx.detach()  # shares bx's storage: the noise below lands in bx too
    adv_bx += torch.zeros_like(adv_bx).uniform_(-eps, eps)
    for _ in range(steps):
        adv_bx.requires_grad_()
        loss = F.cross_entropy(model_fn(adv_bx), by, reduction="sum")
        grad = torch.autograd.grad(loss, adv_bx, only_inputs=True)[0]
        adv_bx = adv_bx.detach() + step_size * torch.sign(grad.detach())
        adv_bx = torch.min(torch.max(adv_bx, bx - eps), bx + eps).clamp(0, 1)
    return bx, adv_bx


@pytest.mark.usefixtures("one_torch_thread")
def test_legacy_inplace_noise_is_the_authors_attack_at_the_edges_of_the_pixel_range() -> None:
    torch.manual_seed(0)
    objective = Objective(build_model("resnet18", 10), TrainConfig.from_dict({"method": "arat"})).train()
    x = torch.rand(2, 3, 32, 32)
    x[:, :, :12] = 0.0  # pixels at exactly 0 and 1, where clamping the noisy image would change it
    x[:, :, -12:] = 1.0
    y = torch.tensor([3, 7])
    attack = AttackConfig(eps=8, steps=4, step_size=2, legacy_inplace_noise=True)
    eps, step = 8 / 255, 2 / 255
    torch.manual_seed(1)
    x_clean, x_adv = objective.adversarial(x, y, attack)
    torch.manual_seed(1)
    their_clean, their_adv = _their_pgd_linf(partial(objective.model, bn="adv"), x.clone(), y, eps, step, 4)
    assert torch.equal(x_clean, their_clean)  # the clean branch gets x + noise, unclamped...
    assert x_clean.min() < -eps / 2 and x_clean.max() > 1 + eps / 2  # ...which leaves [0, 1]
    assert (x_clean - x).abs().max() <= eps + 1e-7
    assert torch.equal(x_adv, their_adv)  # their arithmetic, so bit for bit
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x_clean).abs().max() <= eps + 1e-6  # the ball around the noisy image
    assert (x_adv - x).abs().max() > eps + 1e-3
    # the default path is unchanged: the caller's x, and PGD around it
    torch.manual_seed(2)
    x_out, x_adv_default = objective.adversarial(x, y, AttackConfig(eps=8, steps=3, step_size=2))
    torch.manual_seed(2)
    expected = pgd_attack(partial(objective.model, bn="adv"), x, y, eps=eps, step_size=step, steps=3)
    assert x_out is x
    assert torch.equal(x_adv_default, expected)


def test_legacy_inplace_noise_is_refused_for_l2() -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict({"attack": {"norm": "l2", "legacy_inplace_noise": True}})
    assert info.value.field == "attack.legacy_inplace_noise"


def test_annealed_probe_leaves_the_run_as_it_was() -> None:
    """A probe after epoch 1 reports the annealed copy's figures and is thrown away: the run's own numbers are
    those of the same run without it, to the last bit."""
    plain: list[dict[str, float]] = []
    train(TrainConfig.from_dict(SMALL), callback=lambda m, _p: plain.append(m))
    probed: list[dict[str, float]] = []
    cfg = TrainConfig.from_dict({**SMALL, "probe": {"epochs": [1], "fraction": 0.5}})
    train(cfg, callback=lambda m, _p: probed.append(m))
    keys = ("loss", "clean_acc", "robust_acc", "balance_a")
    assert [[m[k] for k in keys] for m in probed] == [[m[k] for k in keys] for m in plain]
    assert {"probe_clean_acc", "probe_robust_acc"} <= set(probed[0]) and "probe_clean_acc" not in probed[1]
    assert probed[0]["probe_steps"] == 2  # half of the 4 steps of an epoch of 256 images at batch 64
    assert (probed[0]["probe_clean_acc"], probed[0]["probe_robust_acc"]) != (plain[0]["clean_acc"],
                                                                             plain[0]["robust_acc"])
    with pytest.raises(ConfigError, match=r"probe.fraction: must be in \(0, 1\]"):
        TrainConfig.from_dict({"probe": {"fraction": 0}})
