"""Data: digits, the CIFAR pickle path, the held-out split, DDP shards and augmentation."""

from __future__ import annotations

import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from arat_train.config import ConfigError, TrainConfig
from arat_train.data import (
    epoch_batches,
    load_dataset,
    random_crop_flip,
    shard,
    split_indices,
    three_way_split,
)
from arat_train.train import load_data


def write_tiny_cifar10(root: Path, per_batch: int = 12, test: int = 10, seed: int = 0) -> np.ndarray:
    """CIFAR-10's real on-disk layout: ``cifar-10-batches-py/data_batch_{1..5}``, ``test_batch`` and
    ``batches.meta``, each a pickled dict with ``data`` (N, 3072) uint8 and ``labels``."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    first = None
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        entry = {"batch_label": name, "labels": rng.integers(0, 10, n).tolist(), "data": data,
                 "filenames": [f"{name}_{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh, protocol=2)
        first = data if first is None else first
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)], "num_cases_per_batch": per_batch}, fh)
    assert first is not None
    return first


def test_cifar10_reads_the_python_pickle_format(tmp_path: Path) -> None:
    first = write_tiny_cifar10(tmp_path)
    full = load_dataset("cifar10", "train", root=str(tmp_path), val_size=10)
    val = load_dataset("cifar10", "val", root=str(tmp_path), val_size=10)
    test = load_dataset("cifar10", "test", root=str(tmp_path))
    assert len(full) == 50 and len(val) == 10 and len(test) == 10
    assert full.x.dtype == torch.uint8 and full.x.shape[1:] == (3, 32, 32)
    # The first training image is the first row of data_batch_1, as channel planes (R, G, B).
    all_train = torch.cat([full.x, val.x])
    assert any(torch.equal(img, torch.from_numpy(first[0].reshape(3, 32, 32))) for img in all_train)
    cfg = TrainConfig.from_dict({"data": {"dataset": "cifar10", "root": str(tmp_path), "val_size": 10,
                                          "augment": True}, "model": {"name": "resnet18"}})
    train_data, val_data = load_data(cfg, torch.device("cpu"))
    assert len(train_data) == 50 and len(val_data) == 10


def test_missing_cifar_root_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="data.root"):
        load_dataset("cifar10", "train", root=str(tmp_path / "absent"))


def test_digits_are_real_images_in_unit_range() -> None:
    train = load_dataset("digits", "train", val_size=360, test_size=360, image_size=16)
    val = load_dataset("digits", "val", val_size=360, test_size=360, image_size=16)
    assert len(train) == 1077 and len(val) == 360
    assert train.x.shape[1:] == (1, 16, 16) and train.x.dtype == torch.float32
    assert train.x.min() >= 0.0 and train.x.max() <= 1.0 and train.x.max() > 0.9
    assert set(train.y.unique().tolist()) == set(range(10))


def test_split_is_deterministic_and_disjoint() -> None:
    a_train, a_val = split_indices(100, 20, seed=3)
    b_train, b_val = split_indices(100, 20, seed=3)
    assert torch.equal(a_val, b_val) and torch.equal(a_train, b_train)
    assert not set(a_train.tolist()) & set(a_val.tolist())
    assert sorted(a_train.tolist() + a_val.tolist()) == list(range(100))
    assert not torch.equal(split_indices(100, 20, seed=4)[1], a_val)


def test_shards_are_disjoint() -> None:
    parts = [shard(10, r, 3).tolist() for r in range(3)]
    assert sorted(sum(parts, [])) == list(range(10))
    equal = [shard(10, r, 3, equal=True).tolist() for r in range(3)]
    assert [len(p) for p in equal] == [3, 3, 3]
    assert not set(equal[0]) & set(equal[1])
    per_rank = [torch.cat(epoch_batches(50, 8, epoch=1, seed=0, rank=r, world_size=2)) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 25
    assert not set(per_rank[0].tolist()) & set(per_rank[1].tolist())
    with pytest.raises(ValueError, match="rank"):
        shard(10, 3, 3)


def test_crop_flip_keeps_shape_and_content() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8) + 1
    out = random_crop_flip(x, torch.Generator().manual_seed(0), padding=2)
    assert out.shape == x.shape
    again = random_crop_flip(x, torch.Generator().manual_seed(0), padding=2)
    assert torch.equal(out, again)
    # every output value is either padding (0) or a value of the same image and channel
    for b in range(2):
        for c in range(3):
            assert set(out[b, c].unique().tolist()) <= set(x[b, c].unique().tolist()) | {0.0}


def _bytes(x: torch.Tensor) -> set[bytes]:
    return {img.numpy().tobytes() for img in x}


@pytest.mark.parametrize("split_seed", [0, 1])
def test_digits_train_val_test_are_disjoint_and_test_never_moves(split_seed: int) -> None:
    """By index and by image bytes; the test split is the same whatever split_seed the search uses."""
    idx = three_way_split(1797, 360, 360, split_seed)
    assert [len(idx[k]) for k in ("train", "val", "test")] == [1077, 360, 360]
    sets = {k: set(v.tolist()) for k, v in idx.items()}
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"] and not sets["val"] & sets["test"]
    assert sets["train"] | sets["val"] | sets["test"] == set(range(1797))
    assert torch.equal(idx["test"], three_way_split(1797, 360, 360, 1 - split_seed)["test"])
    assert not torch.equal(idx["val"], three_way_split(1797, 360, 360, 1 - split_seed)["val"])
    splits = {k: load_dataset("digits", k, val_size=360, test_size=360, split_seed=split_seed, image_size=8)
              for k in ("train", "val", "test")}
    images = {k: _bytes(v.x) for k, v in splits.items()}
    assert [len(images[k]) for k in ("train", "val", "test")] == [1077, 360, 360]  # no image twice in a split
    assert not images["test"] & images["train"] and not images["test"] & images["val"]
    assert not images["val"] & images["train"]


def test_digits_split_sizes_are_checked_against_the_data_set() -> None:
    with pytest.raises(ConfigError, match=r"data.val_size: digits has 1797 images, 360 of them held out for test"):
        TrainConfig.from_dict({"data": {"dataset": "digits", "val_size": 1500}})
    assert TrainConfig.from_dict({"data": {"dataset": "digits", "val_size": 1436}}).data.val_size == 1436


def test_digits_are_exactly_scikit_learns_and_load_without_importing_it() -> None:
    code = ("import sys, numpy as np; from arat_train.data import _digits; x, y = _digits(8); "
            "assert 'sklearn' not in sys.modules; np.save(sys.argv[1], x); np.save(sys.argv[2], y)")
    with tempfile.TemporaryDirectory() as tmp:
        xs, ys = Path(tmp, "x.npy"), Path(tmp, "y.npy")
        subprocess.run([sys.executable, "-c", code, str(xs), str(ys)], check=True, cwd=Path(__file__).parent.parent)
        x, y = np.load(xs), np.load(ys)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    np.testing.assert_array_equal(x[:, 0], bunch.images.astype(np.float32) / 16.0)
    np.testing.assert_array_equal(y, bunch.target)
    assert x.dtype == np.float32 and y.dtype == np.int64
