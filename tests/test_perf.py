"""The fast path (bf16 autocast, channels-last) computes the same loss as fp32 and learns as well."""

from __future__ import annotations

import pytest
import torch

from arat_train.config import TrainConfig
from arat_train.train import build, train


@pytest.mark.parametrize("model,channels,size", [("small_cnn", 1, 16), ("resnet18", 3, 32)])
def test_bf16_channels_last_loss_matches_fp32(model: str, channels: int, size: int) -> None:
    cfg = TrainConfig.from_dict({"model": {"name": model}, "attack": {"eps": 8, "steps": 2}})
    torch.manual_seed(0)
    obj = build(cfg, 10, channels, torch.device("cpu")).train()
    x, y = torch.rand(16, channels, size, size), torch.randint(0, 10, (16,))
    torch.manual_seed(1)
    x_adv = (x + torch.empty_like(x).uniform_(-8 / 255, 8 / 255)).clamp(0, 1)
    state = {k: v.clone() for k, v in obj.state_dict().items()}
    ref = obj(x, x_adv, y, 0.5)
    obj.load_state_dict(state)  # the forward above moved the BN statistics
    obj.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    xl, xal = (t.contiguous(memory_format=torch.channels_last) for t in (x, x_adv))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = obj(xl, xal, y, 0.5)
    for key in ("loss", "ce_adv", "ce_clean", "inv_loss"):
        assert fast[key].float().item() == pytest.approx(ref[key].item(), rel=5e-2, abs=5e-3), key


def test_fast_path_reaches_the_same_accuracy_band_on_digits() -> None:
    base = {"data": {"dataset": "digits"}, "model": {"name": "small_cnn"}, "attack": {"eps": 51, "steps": 3},
            "optim": {"epochs": 4, "batch_size": 64, "lr": 0.05},
            "eval": {"attack": {"eps": 51, "steps": 10, "step_size": 12.75}, "max_examples": 200}}
    fp32 = train(TrainConfig.from_dict({**base, "perf": {"amp": "fp32", "channels_last": "off"}}))
    fast = train(TrainConfig.from_dict({**base, "perf": {"amp": "bf16", "channels_last": "on"}}))
    print(f"fp32 {fp32['clean_acc']:.3f}/{fp32['robust_acc']:.3f}  bf16+CL {fast['clean_acc']:.3f}/"
          f"{fast['robust_acc']:.3f}")
    assert fast["clean_acc"] > 0.6 and fp32["clean_acc"] > 0.6
    assert abs(fast["clean_acc"] - fp32["clean_acc"]) < 0.12
    assert abs(fast["robust_acc"] - fp32["robust_acc"]) < 0.12
