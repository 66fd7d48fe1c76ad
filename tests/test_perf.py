"""The fast path computes what the fp32 path computes, learns as well, and never waits on the device in its loop."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from arat_train.config import TrainConfig
from arat_train.train import build, train


def assert_bf16_channels_last_matches_fp32(model: str, channels: int, size: int, device: torch.device,
                                           batch: int = 16) -> None:
    """The objective's loss and parts on one batch: bf16 autocast + channels-last against fp32, same weights and
    BN statistics, within bf16 tolerance. Shared with test_cuda.py."""
    cfg = TrainConfig.from_dict({"model": {"name": model}, "attack": {"eps": 8, "steps": 2},
                                 "perf": {"channels_last": "off"}})
    torch.manual_seed(0)
    obj = build(cfg, 10, channels, device).train()
    x = torch.rand(batch, channels, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    torch.manual_seed(1)
    x_adv = (x + torch.empty_like(x).uniform_(-8 / 255, 8 / 255)).clamp(0, 1)
    state = {k: v.clone() for k, v in obj.state_dict().items()}
    ref = obj(x, x_adv, y, 0.5)
    obj.load_state_dict(state)  # the forward above moved the BN statistics
    obj.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    xl, xal = (t.contiguous(memory_format=torch.channels_last) for t in (x, x_adv))
    with torch.autocast(device.type, dtype=torch.bfloat16):
        fast = obj(xl, xal, y, 0.5)
    for key in ("loss", "ce_adv", "ce_clean", "inv_loss"):
        assert fast[key].float().item() == pytest.approx(ref[key].item(), rel=5e-2, abs=5e-3), key


@pytest.mark.parametrize("model,channels,size", [("small_cnn", 1, 16), ("resnet18", 3, 32)])
def test_bf16_channels_last_loss_matches_fp32(model: str, channels: int, size: int) -> None:
    assert_bf16_channels_last_matches_fp32(model, channels, size, torch.device("cpu"))


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


# Tensor methods that make the host wait for the device (on CUDA): reading a value, a shape that depends on values,
# or a copy to the host.
_HOST_SYNCS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "__repr__", "__format__", "numpy",
               "cpu", "nonzero", "masked_select", "unique", "any", "all"}


class _HostSyncs(TorchFunctionMode):
    """Records every tensor call in ``_HOST_SYNCS`` made while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = getattr(func, "__name__", "")
        if name in _HOST_SYNCS:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def test_sync_detector_sees_a_per_step_item() -> None:
    with _HostSyncs() as mode:
        loss = torch.ones(3).sum()
        loss.item()
        bool(loss > 0)
    assert mode.calls == ["item", "__bool__"]


@pytest.mark.parametrize("method,extra", [("arat", {}), ("pgd_at", {}), ("trades", {}),
                                          ("arat", {"swa": {"enabled": True, "start": 0.0}})])
def test_step_loop_never_waits_on_the_device(method: str, extra: dict[str, Any]) -> None:
    """Every step of the loop (data, augmentation, attack, forward, backward, optimiser, SWA, running sums) runs with
    no value read back to the host: the loop below the detector is the real ``train`` loop."""
    cfg = TrainConfig.from_dict({"method": method, "data": {"dataset": "digits", "train_limit": 192, "augment": True},
                                 "model": {"name": "small_cnn", "width": 8}, "attack": {"eps": 51, "steps": 2},
                                 "optim": {"epochs": 2, "batch_size": 64}, "eval": {"max_examples": 64},
                                 **extra})
    mode, steps = _HostSyncs(), []

    def watched(batches: Iterable[Tensor]) -> Iterator[Tensor]:
        with mode:
            for batch in batches:
                steps.append(len(batch))
                yield batch

    metrics = train(cfg, progress=watched)
    assert steps == [64] * 6 and metrics["epoch"] == 2
    assert mode.calls == []


def test_compiled_network_trains_like_the_eager_one() -> None:
    """``perf.compile`` runs the same step through torch.compile (inductor; CPU here): same losses, same accuracy."""
    base = {"data": {"dataset": "digits", "train_limit": 256}, "model": {"name": "small_cnn", "width": 8},
            "attack": {"eps": 51, "steps": 2}, "optim": {"epochs": 1, "batch_size": 64, "lr": 0.05},
            "eval": {"attack": {"eps": 51, "steps": 2}, "max_examples": 128}}
    import torch._inductor.config as inductor
    from torch._dynamo.utils import counters

    # Compile in this process: a pool of compile workers (each importing torch) would only compete with the other
    # tests for the cores.
    threads, inductor.compile_threads = inductor.compile_threads, 1
    try:
        eager = train(TrainConfig.from_dict(base))
        graphs = counters["stats"]["unique_graphs"]
        compiled = train(TrainConfig.from_dict({**base, "perf": {"compile": True}}))
    finally:
        inductor.compile_threads = threads
    assert counters["stats"]["unique_graphs"] > graphs  # dynamo captured the network: it did not run eagerly
    for key in ("loss", "ce_adv", "ce_clean", "inv_loss"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-3, abs=1e-4), key
    assert abs(compiled["clean_acc"] - eager["clean_acc"]) <= 2 / 128
    assert abs(compiled["robust_acc"] - eager["robust_acc"]) <= 2 / 128
