"""Data sets as in-memory tensors in [0, 1] (no mean/std normalisation), with a held-out validation split.

Every data set is small enough to hold whole (CIFAR-10 is 150 MB as uint8), so batching, the per-epoch
permutation and the crop+flip augmentation are batched tensor operations on whatever device the tensors live on.
"""

from __future__ import annotations

import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .config import DataConfig

DATASETS = ("digits", "cifar10", "cifar100", "fake")
Split = Literal["train", "val", "test"]


@dataclass(frozen=True)
class ArrayData:
    """Images ``x`` (N, C, H, W), uint8 or float in [0, 1], and labels ``y`` (N,) int64."""

    x: Tensor
    y: Tensor
    num_classes: int

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device | str) -> ArrayData:
        return ArrayData(self.x.to(device), self.y.to(device), self.num_classes)

    def subset(self, idx: Tensor) -> ArrayData:
        return ArrayData(self.x[idx.to(self.x.device)], self.y[idx.to(self.y.device)], self.num_classes)


def to_float(x: Tensor) -> Tensor:
    """Images as float32 in [0, 1] (uint8 is divided by 255)."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def _digits_file() -> Path:
    """scikit-learn's ``datasets/data/digits.csv.gz`` (what ``load_digits`` reads), found without importing
    scikit-learn: the import costs about a second in every training process."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the digits data set ships with scikit-learn: pip install scikit-learn")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"


def _digits(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Digits' 1,797 images and labels, as ``sklearn.datasets.load_digits`` gives them (64 pixels in 0..16, then
    the label, per row)."""
    rows = np.loadtxt(_digits_file(), delimiter=",", dtype=np.float32)
    images, target = rows[:, :-1].reshape(-1, 8, 8), rows[:, -1]
    x = torch.from_numpy(images / 16.0).unsqueeze(1)  # (1797, 1, 8, 8) in [0, 1]
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False).clamp(0, 1)
    return x.numpy(), target.astype(np.int64)


_CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels"),
}


def read_cifar_pickles(folder: Path, files: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read CIFAR's python-pickle batches (``data``: (N, 3072) uint8 rows, RGB planes) from ``folder``."""
    xs, ys = [], []
    for name in files:
        with open(folder / name, "rb") as fh:
            entry = pickle.load(fh, encoding="latin1")
        xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(entry[label_key], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def _cifar(name: str, root: str, train: bool, download: bool) -> tuple[np.ndarray, np.ndarray]:
    folder_name, train_files, test_files, label_key = _CIFAR_FILES[name]
    root_path = Path(root).expanduser()
    folder = root_path / folder_name
    if download and not folder.is_dir():
        from filelock import FileLock
        from torchvision import datasets

        cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        root_path.mkdir(parents=True, exist_ok=True)
        # Several trials on one node may start at once: one downloads (checksummed), the others wait, then read.
        with FileLock(str(root_path / f".{name}.lock")):
            cls(str(root_path), train=train, download=True)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"data.root: {folder} does not exist; put {name} there or set data.download: true to fetch it")
    return read_cifar_pickles(folder, train_files if train else test_files, label_key)


def _fake(size: int, image_size: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from torchvision.datasets import FakeData
    from torchvision.transforms.functional import pil_to_tensor

    ds = FakeData(size=size, image_size=(3, image_size, image_size), num_classes=num_classes, random_offset=seed)
    xs, ys = zip(*((pil_to_tensor(img), label) for img, label in ds), strict=True)
    return torch.stack(xs).numpy(), np.asarray(ys, dtype=np.int64)


def split_indices(n: int, val_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """A deterministic (train, val) split of ``range(n)``; the same ``seed`` gives the same split everywhere."""
    if not 0 < val_size < n:
        raise ValueError(f"data.val_size must be in (0, {n}), got {val_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


TEST_SPLIT_SEED = 0  # the held-out test split of a data set without one (digits) never moves


def three_way_split(n: int, val_size: int, test_size: int, seed: int) -> dict[str, Tensor]:
    """Disjoint sorted ``train`` / ``val`` / ``test`` indices of ``range(n)``.

    ``test`` is the first ``test_size`` of a permutation with a fixed seed, so it is the same for every
    ``seed``; ``val`` and ``train`` split the rest with ``seed``.
    """
    if not 0 < test_size < n:
        raise ValueError(f"data.test_size must be in (0, {n}), got {test_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(TEST_SPLIT_SEED))
    test, rest = perm[:test_size].sort().values, perm[test_size:].sort().values
    train, val = split_indices(len(rest), val_size, seed)
    return {"train": rest[train], "val": rest[val], "test": test}


def load_dataset(
    name: str, split: Split, *, root: str = "data", val_size: int = 5000, test_size: int = 360, split_seed: int = 0,
    image_size: int = 16, download: bool = False, fake_size: int = 256, num_classes: int = 10,
) -> ArrayData:
    """Load ``split`` of data set ``name``: ``train`` and ``val`` are disjoint parts of the training set; ``test``
    is CIFAR's official test set, digits' fixed held-out ``test_size`` images, or a separate FakeData draw."""
    if name == "digits":
        x, y = _digits(image_size)
        data = ArrayData(torch.from_numpy(x), torch.from_numpy(y), 10)
        return data.subset(three_way_split(len(data), val_size, test_size, split_seed)[split])
    if name in ("cifar10", "cifar100"):
        x, y = _cifar(name, root, train=split != "test", download=download)
        classes = 10 if name == "cifar10" else 100
    elif name == "fake":
        x, y = _fake(fake_size, image_size, num_classes, seed=0 if split != "test" else 1_000_003)
        classes = num_classes
    else:
        raise ValueError(f"data.dataset: unknown data set {name!r}; allowed: {list(DATASETS)}")
    data = ArrayData(torch.from_numpy(x), torch.from_numpy(y), classes)
    if split == "test":
        return data
    train_idx, val_idx = split_indices(len(data), val_size, split_seed)
    return data.subset(train_idx if split == "train" else val_idx)


def load_split(cfg: DataConfig, split: Split, *, download: bool | None = None) -> ArrayData:
    """Split ``split`` of the data set ``cfg`` describes; ``download`` overrides ``cfg.download``."""
    return load_dataset(cfg.dataset, split, root=cfg.root, val_size=cfg.val_size, test_size=cfg.test_size,
                        split_seed=cfg.split_seed, image_size=cfg.image_size, download=cfg.download if download is None else download,
                        fake_size=cfg.fake_size, num_classes=cfg.num_classes)


def shard(n: int, rank: int, world_size: int, *, equal: bool = False) -> Tensor:
    """Indices of DDP rank ``rank`` of ``world_size``: disjoint strided shards covering ``range(n)``.

    With ``equal=True`` every rank gets ``n // world_size`` indices (training: all ranks take the same number of
    steps, as DDP's collectives require); otherwise the shards cover every index (evaluation).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    idx = torch.arange(rank, n, world_size)
    return idx[: n // world_size] if equal else idx


def random_crop_flip(x: Tensor, generator: torch.Generator, padding: int = 4) -> Tensor:
    """Batched random crop (zero padding) and horizontal flip, on ``x``'s device. ``x`` is (B, C, H, W)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    dev = x.device
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=generator.device).to(dev)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=generator.device).to(dev)
    rows = (oy[:, None] + torch.arange(h, device=dev)[None, :])[:, None, :, None]  # (B, 1, H, 1)
    cols = (ox[:, None] + torch.arange(w, device=dev)[None, :])[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=dev)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=dev)[None, :, None, None]
    out = padded[batch, chan, rows, cols]  # (B, C, H, W)
    flip = torch.rand(b, generator=generator, device=generator.device).to(dev) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def epoch_batches(
    n: int, batch_size: int, epoch: int, seed: int, rank: int = 0, world_size: int = 1
) -> list[Tensor]:
    """This rank's training batches for ``epoch``: a seeded permutation (identical on every rank), sharded."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    mine = perm[shard(n, rank, world_size, equal=True)]
    return list(mine.split(batch_size))
