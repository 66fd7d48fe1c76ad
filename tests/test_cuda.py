"""The CUDA path: data on the GPU as uint8, bf16 autocast and channels-last by default, a step loop that never makes
the host wait, torch.compile, and DDP over NCCL with each rank pinned to its GPU.

Every test here needs a CUDA device and is skipped without one; the same code paths run on CPU in test_perf.py and
test_ddp.py. On a GPU machine: ``python -m pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_perf import assert_bf16_channels_last_matches_fp32
from torch import Tensor

from arat_train.config import TrainConfig
from arat_train.train import build, load_data, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device; the CPU path is tested in test_perf.py and test_ddp.py")

FAKE_CIFAR: dict[str, Any] = {
    "data": {"dataset": "fake", "fake_size": 640, "val_size": 128, "image_size": 32, "augment": True},
    "model": {"name": "resnet18"},
    "attack": {"eps": 8, "steps": 2},
    "optim": {"epochs": 2, "batch_size": 64, "lr": 0.05},
    "eval": {"attack": {"eps": 8, "steps": 2}, "max_examples": 128},
}


def test_defaults_put_uint8_data_and_a_channels_last_model_on_the_gpu() -> None:
    cfg = TrainConfig.from_dict(FAKE_CIFAR)
    device = torch.device("cuda")
    train_data, val_data = load_data(cfg, device)
    for d in (train_data, val_data):
        assert d.x.device.type == "cuda" and d.x.dtype == torch.uint8 and d.y.device.type == "cuda"
    obj = build(cfg, 10, 3, device)
    conv = next(m for m in obj.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_cuda and conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_bf16_channels_last_loss_matches_fp32_on_the_gpu() -> None:
    assert_bf16_channels_last_matches_fp32("resnet18", 3, 32, torch.device("cuda"), batch=32)


def test_second_epoch_runs_without_a_host_synchronisation() -> None:
    """CUDA's own sync check, set to raise, around every step of epoch 2 (epoch 1 lets cuDNN pick its kernels)."""
    epochs: list[int] = []

    def watched(batches: Iterable[Tensor]) -> Iterator[Tensor]:
        epochs.append(len(epochs))
        if len(epochs) == 1:
            yield from batches
            return
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield from batches
        finally:
            torch.cuda.set_sync_debug_mode("default")

    metrics = train(TrainConfig.from_dict(FAKE_CIFAR), progress=watched)
    assert epochs == [0, 1] and metrics["epoch"] == 2


def test_compiled_network_trains_like_the_eager_one_on_the_gpu() -> None:
    base = {**FAKE_CIFAR, "optim": {"epochs": 1, "batch_size": 64, "lr": 0.05}, "perf": {"amp": "fp32"}}
    eager = train(TrainConfig.from_dict(base))
    compiled = train(TrainConfig.from_dict({**base, "perf": {"amp": "fp32", "compile": True}}))
    for key in ("loss", "ce_adv", "ce_clean"):
        assert compiled[key] == pytest.approx(eager[key], rel=2e-2, abs=1e-3), key


def _nccl_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world, device_id=torch.device("cuda", rank))
    try:
        reports: list[dict[str, float]] = []
        cfg = {**FAKE_CIFAR, "device": f"cuda:{rank}"}
        train(TrainConfig.from_dict(cfg), checkpoint_dir=Path(out) / "ckpt", callback=lambda m, _p: reports.append(m))
        Path(out, f"rank{rank}.json").write_text(json.dumps(reports))
    finally:
        dist.destroy_process_group()
    # A finished rank sometimes aborts in C++ thread teardown at interpreter exit ("terminate called without an
    # active exception", SIGABRT) after its process group is destroyed and its results written: leave at once.
    os._exit(0)


def test_nccl_ranks_report_the_same_global_metrics(tmp_path: Path) -> None:
    world = min(2, torch.cuda.device_count())  # one rank per GPU; one GPU still runs NCCL's collectives
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_nccl_worker, args=(world, port, str(tmp_path)), nprocs=world, join=True)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    assert all(len(r) == 2 for r in reports)
    for other in reports[1:]:
        for a, b in zip(reports[0], other, strict=True):
            for key in ("clean_acc", "robust_acc", "eval_examples", "loss"):
                assert a[key] == b[key], key
    assert reports[0][-1]["eval_examples"] == 128
    assert (tmp_path / "ckpt" / "checkpoint.pt").is_file()
