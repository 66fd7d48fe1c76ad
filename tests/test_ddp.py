"""The library under torch.distributed (gloo, 2 processes, no Ray): disjoint shards, global metrics on every rank,
and a reported accuracy that is the accuracy of the model rank 0 checkpoints."""

from __future__ import annotations

import json
import os
import socket
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from arat_train.accuracy import accuracy_counts, eval_mode
from arat_train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from arat_train.config import TrainConfig
from arat_train.train import build, load_data, train

CFG = {
    "data": {"dataset": "digits", "train_limit": 320},
    "model": {"name": "small_cnn", "width": 8},
    "attack": {"eps": 51, "steps": 2},
    "optim": {"epochs": 2, "batch_size": 32, "lr": 0.05},
    "eval": {"attack": {"eps": 51, "steps": 3, "step_size": 25.5}, "batch_size": 64},
    "perf": {"num_threads": 1},
}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        reports: list[dict[str, float]] = []
        train(TrainConfig.from_dict(CFG), checkpoint_dir=Path(out) / "ckpt",
              callback=lambda m, _p: reports.append(m))
        Path(out, f"rank{rank}.json").write_text(json.dumps(reports))
    finally:
        dist.destroy_process_group()
    # A finished rank sometimes aborts in C++ thread teardown at interpreter exit ("terminate called without an
    # active exception", SIGABRT) after its process group is destroyed and its results written: leave at once.
    os._exit(0)


def test_two_ranks_report_the_checkpointed_model(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert len(r0) == len(r1) == 2
    for a, b in zip(r0, r1, strict=True):  # every rank hands over the same, global, numbers
        for key in ("clean_acc", "robust_acc", "eval_examples", "loss", "ce_adv", "balance_a"):
            assert a[key] == b[key], key
    assert r0[-1]["eval_examples"] == 360  # both shards together: the whole validation split

    ckpt = load_checkpoint(tmp_path / "ckpt" / CHECKPOINT_NAME)
    cfg = TrainConfig.from_dict(ckpt["config"])
    train_data, val_data = load_data(cfg, torch.device("cpu"))
    obj = build(cfg, 10, 1, torch.device("cpu"))
    obj.model.load_state_dict(ckpt["model"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        correct = 0
        with eval_mode(obj.model):
            for rank in range(2):  # each shard as its rank evaluated it (same batches: same rounding)
                c = accuracy_counts(partial(obj.model, bn="adv"), val_data, None, batch_size=64, rank=rank,
                                    world_size=2)
                correct += int(c["clean"])
    finally:
        torch.set_num_threads(threads)
    assert correct / 360 == r0[-1]["clean_acc"]
