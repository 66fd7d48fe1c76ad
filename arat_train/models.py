"""Split-BatchNorm networks for AR-AT: CIFAR ResNet-18, WRN-34-10 and a small CNN for tiny images.

Every BatchNorm is a pair (``clean``, ``adv``); convolutions and the classifier are shared. The branch is an
argument of ``forward``, never object state. ``forward(x, bn=..., return_features=True)`` also returns the
ReLU + global-average-pooled outputs of the configured *aligned layers*, keyed by layer name.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

Branch = Literal["clean", "adv"]
Taps = dict[str, Tensor] | None


class SplitBatchNorm(nn.Module):
    """Two BatchNorms over the same channels; ``forward(x, bn)`` picks one."""

    def __init__(self, num_features: int, dim: int = 2) -> None:
        super().__init__()
        bn_cls = nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d
        self.clean = bn_cls(num_features)
        self.adv = bn_cls(num_features)

    def forward(self, x: Tensor, bn: Branch) -> Tensor:
        if bn == "adv":
            return self.adv(x)
        if bn == "clean":
            return self.clean(x)
        raise ValueError(f"bn must be 'clean' or 'adv', got {bn!r}")


class SingleBatchNorm2d(nn.BatchNorm2d):
    """A standard BatchNorm2d that accepts (and ignores) the branch argument: the exported network's norm."""

    def forward(self, x: Tensor, bn: Branch | None = None) -> Tensor:
        return super().forward(x)


def _norm(channels: int, split: bool) -> nn.Module:
    return SplitBatchNorm(channels) if split else SingleBatchNorm2d(channels)


def _tap(taps: Taps, name: str, x: Tensor) -> None:
    """Record ReLU + global average pooling of ``x`` under ``name`` when the layer is tapped."""
    if taps is not None and name in taps:
        taps[name] = F.relu(x).mean(dim=(2, 3))  # (B, C)


class _Net(nn.Module):
    """Shared forward contract of every model here."""

    default_aligned: tuple[str, ...] = ()
    feature_dims: dict[str, int]

    def __init__(self, aligned_layers: Sequence[str] | None, split_bn: bool) -> None:
        super().__init__()
        self.split_bn = split_bn
        self.aligned_layers = tuple(aligned_layers) if aligned_layers else self.default_aligned

    def _check_aligned(self) -> None:
        unknown = [n for n in self.aligned_layers if n not in self.feature_dims]
        if unknown:
            raise ValueError(f"model.aligned_layers: unknown layer(s) {unknown}; allowed: {sorted(self.feature_dims)}")

    def forward(
        self, x: Tensor, bn: Branch = "adv", return_features: bool = False
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Logits of ``x`` through the ``bn`` branch; with ``return_features`` also the aligned-layer features."""
        if bn not in ("clean", "adv"):
            raise ValueError(f"bn must be 'clean' or 'adv', got {bn!r}")
        taps: Taps = dict.fromkeys(self.aligned_layers) if return_features else None  # type: ignore[assignment]
        logits = self._forward(x, bn, taps)
        if return_features:
            return logits, taps  # type: ignore[return-value]
        return logits

    def _forward(self, x: Tensor, bn: Branch, taps: Taps) -> Tensor:
        raise NotImplementedError


class BasicBlock(nn.Module):
    """ResNet basic block; taps ``<name>.bn1`` and ``<name>.bn2`` (bn2 before the residual add)."""

    def __init__(self, name: str, cin: int, cout: int, stride: int, split: bool) -> None:
        super().__init__()
        self.name = name
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _norm(cout, split)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _norm(cout, split)
        self.shortcut_conv: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut_conv = nn.Conv2d(cin, cout, 1, stride, bias=False)
            self.shortcut_bn = _norm(cout, split)

    def forward(self, x: Tensor, bn: Branch, taps: Taps) -> Tensor:
        out = self.bn1(self.conv1(x), bn)
        _tap(taps, f"{self.name}.bn1", out)
        out = self.bn2(self.conv2(F.relu(out)), bn)
        _tap(taps, f"{self.name}.bn2", out)
        short = x if self.shortcut_conv is None else self.shortcut_bn(self.shortcut_conv(x), bn)
        return F.relu(out + short)


class ResNet18(_Net):
    """CIFAR ResNet-18: 3x3 stem, no max-pool, four stages of two basic blocks; PyTorch's default initialisation,
    as in the authors' split-BN ResNet-18."""

    default_aligned = ("layer4.0.bn1", "layer4.0.bn2", "layer4.1.bn1", "layer4.1.bn2")

    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, aligned_layers: Sequence[str] | None = None,
        split_bn: bool = True,
    ) -> None:
        super().__init__(aligned_layers, split_bn)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = _norm(64, split_bn)
        blocks: list[BasicBlock] = []
        self.feature_dims = {}
        cin = 64
        for stage, (cout, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)], start=1):
            for i in range(2):
                name = f"layer{stage}.{i}"
                blocks.append(BasicBlock(name, cin, cout, stride if i == 0 else 1, split_bn))
                self.feature_dims.update({f"{name}.bn1": cout, f"{name}.bn2": cout})
                cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.linear = nn.Linear(512, num_classes)
        self._check_aligned()

    def _forward(self, x: Tensor, bn: Branch, taps: Taps) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x), bn))  # (B, 64, H, W)
        for block in self.blocks:
            out = block(out, bn, taps)
        return self.linear(out.mean(dim=(2, 3)))  # (B, num_classes)


class WideBlock(nn.Module):
    """Pre-activation wide block; taps ``<name>.relu1`` and ``<name>.relu2``."""

    def __init__(self, name: str, cin: int, cout: int, stride: int, split: bool) -> None:
        super().__init__()
        self.name = name
        self.bn1 = _norm(cin, split)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = _norm(cout, split)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout and stride == 1
        self.shortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: Tensor, bn: Branch, taps: Taps) -> Tensor:
        act = F.relu(self.bn1(x, bn))
        _tap(taps, f"{self.name}.relu1", act)
        out = F.relu(self.bn2(self.conv1(act), bn))
        _tap(taps, f"{self.name}.relu2", out)
        out = self.conv2(out)
        short = x if self.shortcut is None else self.shortcut(act)
        return out + short


def _wide_resnet_init(m: nn.Module) -> None:
    """The usual Wide-ResNet initialisation, as the authors' WRN (``models/wrn_split_bn.py``) applies it.

    Convolutions: normal(0, sqrt(2 / fan_out)) with fan_out = k * k * out_channels; BatchNorms (both branches):
    weight 1, bias 0; the classifier: bias 0, its weight left at PyTorch's default.
    """
    if isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear) and m.bias is not None:
        nn.init.zeros_(m.bias)


class WideResNet(_Net):
    """WRN-depth-widen (no dropout), Wide-ResNet initialisation. WRN-34-10 aligns every ReLU of the last stage plus
    the pooled feature."""

    def __init__(
        self, depth: int = 34, widen: int = 10, num_classes: int = 10, in_channels: int = 3,
        aligned_layers: Sequence[str] | None = None, split_bn: bool = True,
    ) -> None:
        if (depth - 4) % 6:
            raise ValueError(f"model.depth: WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        names = [f"block3.{i}.relu{j}" for i in range(n) for j in (1, 2)]
        super().__init__(aligned_layers or (*names, "final"), split_bn)
        self.feature_dims = {}
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks: list[WideBlock] = []
        cin = widths[0]
        for stage, stride in zip((1, 2, 3), (1, 2, 2), strict=True):
            cout = widths[stage]
            for i in range(n):
                name = f"block{stage}.{i}"
                blocks.append(WideBlock(name, cin, cout, stride if i == 0 else 1, split_bn))
                self.feature_dims.update({f"{name}.relu1": cin, f"{name}.relu2": cout})
                cin = cout
        self.feature_dims["final"] = cin
        self.blocks = nn.ModuleList(blocks)
        self.bn_final = _norm(cin, split_bn)
        self.linear = nn.Linear(cin, num_classes)
        self._check_aligned()
        self.apply(_wide_resnet_init)

    def _forward(self, x: Tensor, bn: Branch, taps: Taps) -> Tensor:
        out = self.conv1(x)
        for block in self.blocks:
            out = block(out, bn, taps)
        out = F.relu(self.bn_final(out, bn))
        _tap(taps, "final", out)
        return self.linear(out.mean(dim=(2, 3)))


class SmallCNN(_Net):
    """Three conv-BN-ReLU layers and a linear head, for 8x8 / 16x16 grey images (digits) and fast tests."""

    default_aligned = ("conv2", "conv3")

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, width: int = 32,
        aligned_layers: Sequence[str] | None = None, split_bn: bool = True,
    ) -> None:
        super().__init__(aligned_layers, split_bn)
        chans = [in_channels, width, 2 * width, 4 * width]
        self.convs = nn.ModuleList(
            nn.Conv2d(chans[i], chans[i + 1], 3, 1 if i == 0 else 2, 1, bias=False) for i in range(3)
        )
        self.bns = nn.ModuleList(_norm(chans[i + 1], split_bn) for i in range(3))
        self.feature_dims = {f"conv{i + 1}": chans[i + 1] for i in range(3)}
        self.linear = nn.Linear(chans[-1], num_classes)
        self._check_aligned()

    def _forward(self, x: Tensor, bn: Branch, taps: Taps) -> Tensor:
        out = x
        for i, (conv, norm) in enumerate(zip(self.convs, self.bns, strict=True), start=1):
            out = norm(conv(out), bn)
            _tap(taps, f"conv{i}", out)
            out = F.relu(out)
        return self.linear(out.mean(dim=(2, 3)))


MODELS = ("small_cnn", "resnet18", "wrn34_10")


def build_model(
    name: str, num_classes: int, *, in_channels: int = 3, aligned_layers: Sequence[str] | None = None,
    width: int = 32, split_bn: bool = True,
) -> _Net:
    """Build a model by name (``small_cnn``, ``resnet18``, ``wrn34_10``); ``split_bn=False`` gives one BN set."""
    common = {"num_classes": num_classes, "in_channels": in_channels, "aligned_layers": aligned_layers,
              "split_bn": split_bn}
    if name == "resnet18":
        return ResNet18(**common)  # type: ignore[arg-type]
    if name == "wrn34_10":
        return WideResNet(34, 10, **common)  # type: ignore[arg-type]
    if name == "small_cnn":
        return SmallCNN(width=width, **common)  # type: ignore[arg-type]
    raise ValueError(f"model.name: unknown model {name!r}; allowed: {list(MODELS)}")


def export_model(model: nn.Module) -> nn.Module:
    """A standard single-BN copy of ``model`` carrying its adv-BN branch; ``exported(x)`` == ``model(x, bn="adv")``.

    The copy has plain ``BatchNorm2d`` layers (state-dict keys without ``.adv``) and keeps no clean-BN weights.
    A model that already has one BN set is copied as it is.
    """
    exported = copy.deepcopy(model)
    for parent in exported.modules():
        for child_name, child in list(parent.named_children()):
            if isinstance(child, SplitBatchNorm):
                single = SingleBatchNorm2d(child.adv.num_features, eps=child.adv.eps, momentum=child.adv.momentum)
                single.load_state_dict(child.adv.state_dict())
                single.to(next(iter(child.adv.buffers())).device)
                setattr(parent, child_name, single)
    if isinstance(exported, _Net):
        exported.split_bn = False
    return exported


__all__ = ["MODELS", "SmallCNN", "ResNet18", "SplitBatchNorm", "WideResNet", "build_model", "export_model"]
