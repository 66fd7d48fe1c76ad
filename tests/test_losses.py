"""The asymmetric invariance loss: where its gradient flows, and the auto-balanced cross-entropy."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from arat_train.config import TrainConfig
from arat_train.data import ArrayData
from arat_train.losses import balanced_ce, invariance_loss
from arat_train.models import SplitBatchNorm, build_model
from arat_train.train import Objective, balance_weight


def _grads_of_invariance_term(ratio: float) -> tuple[Objective, torch.Tensor]:
    torch.manual_seed(0)
    cfg = TrainConfig.from_dict({"arat": {"predictor_ratio": ratio}})
    obj = Objective(build_model("small_cnn", 10, in_channels=1), cfg).train()
    x = torch.rand(8, 1, 16, 16)
    x_adv = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    _, feats_c = obj.model(x, bn="clean", return_features=True)
    _, feats_a = obj.model(x_adv, bn="adv", return_features=True)
    assert obj.predictors is not None
    inv = invariance_loss(obj.predictors(feats_a), feats_c)
    inv.backward()
    return obj, inv


@pytest.mark.parametrize("ratio", [0.25, 0.0])
def test_invariance_gradient_stops_at_the_clean_features(ratio: float) -> None:
    obj, inv = _grads_of_invariance_term(ratio)
    assert inv.item() > 0
    splits = [m for m in obj.model.modules() if isinstance(m, SplitBatchNorm)]
    for bn in splits:
        for p in bn.clean.parameters():
            assert p.grad is None or torch.count_nonzero(p.grad) == 0
    # adv BN of the tapped layers receives gradient, and so do the shared convolutions
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for bn in splits for p in bn.adv.parameters())
    assert obj.model.convs[0].weight.grad.abs().sum() > 0  # type: ignore[union-attr]
    assert obj.predictors is not None
    pred_params = list(obj.predictors.parameters())
    if ratio > 0:
        assert pred_params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in pred_params)
    else:
        assert not pred_params


def test_invariance_loss_is_one_minus_cosine() -> None:
    p = {"l": torch.tensor([[1.0, 0.0], [0.0, 2.0]])}
    z = {"l": torch.tensor([[1.0, 1.0], [0.0, 1.0]])}
    expected = 1 - (1 / math.sqrt(2) + 1.0) / 2
    assert invariance_loss(p, z).item() == pytest.approx(expected)


def test_balanced_ce_weights_by_a() -> None:
    logits_a, logits_c = torch.randn(5, 3), torch.randn(5, 3)
    y = torch.tensor([0, 1, 2, 1, 0])
    total, ce_a, ce_c = balanced_ce(logits_a, logits_c, y, 0.8)
    assert total.item() == pytest.approx(0.8 * F.cross_entropy(logits_a, y).item()
                                         + 0.2 * F.cross_entropy(logits_c, y).item(), rel=1e-6)


def test_balance_weight_is_the_clean_branch_accuracy() -> None:
    class Known(torch.nn.Module):
        """Predicts class 0 on the clean branch, the true class on the adv branch; records the labels it saw."""

        def __init__(self) -> None:
            super().__init__()
            self.seen: list[torch.Tensor] = []

        def forward(self, x: torch.Tensor, bn: str = "adv") -> torch.Tensor:
            y = x[:, 0, 0, 0].long()
            self.seen.append(y)
            target = torch.zeros_like(y) if bn == "clean" else y
            return F.one_hot(target, 4).float()

    y = torch.tensor([0, 0, 0, 1, 2, 3, 1, 0])  # 4 of 8 are class 0
    x = y.float().view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    data = ArrayData(x, y, 4)
    assert balance_weight(Known(), data, 8, batch_size=3) == pytest.approx(0.5)  # all eight, in any order
    assert balance_weight(Known(), data, 20, batch_size=3) == pytest.approx(0.5)  # capped at the data size
    # a sample of four: the fraction of class 0 among the four images it picked
    values = set()
    for epoch in range(6):
        model = Known()
        a = balance_weight(model, data, 4, batch_size=3, epoch=epoch)
        seen = torch.cat(model.seen)
        assert seen.numel() == 4
        assert a == pytest.approx((seen == 0).float().mean().item())
        values.add(a)
    assert len(values) > 1  # not the same four images every epoch


class _Recorder(torch.nn.Module):
    """Records the images its clean branch sees and predicts class 0 for each."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, bn: str = "adv") -> torch.Tensor:
        assert bn == "clean"
        self.seen.append(x.clone())
        return F.one_hot(torch.zeros(x.shape[0], dtype=torch.long), 2).float()


def _sample_seen(data: ArrayData, **kwargs: object) -> torch.Tensor:
    rec = _Recorder()
    balance_weight(rec, data, 8, batch_size=3, **kwargs)  # type: ignore[arg-type]
    return torch.cat(rec.seen)


def _crops_and_flips(img: torch.Tensor) -> torch.Tensor:
    """Every 4-pixel-padded crop of ``img`` (C, H, W), and its mirror image."""
    _, h, w = img.shape
    padded = F.pad(img, (4, 4, 4, 4))
    crops = torch.stack([padded[:, i:i + h, j:j + w] for i in range(9) for j in range(9)])
    return torch.cat([crops, crops.flip(3)])


def test_balance_weight_measures_a_fresh_seeded_sample_each_epoch() -> None:
    torch.manual_seed(0)
    x = torch.rand(64, 1, 8, 8)  # every image distinct
    data = ArrayData(x, torch.zeros(64, dtype=torch.long), 2)

    def indices(seen: torch.Tensor) -> list[int]:
        return [int((x == img).flatten(1).all(1).nonzero()) for img in seen]

    first = indices(_sample_seen(data, seed=3, epoch=0))
    assert len(set(first)) == 8 and first != list(range(8))  # eight distinct images, not the first eight
    assert indices(_sample_seen(data, seed=3, epoch=0)) == first  # same (seed, epoch): same sample, same a
    assert set(indices(_sample_seen(data, seed=3, epoch=1))) != set(first)  # another epoch: another sample
    assert set(indices(_sample_seen(data, seed=4, epoch=0))) != set(first)  # another seed: another sample


def test_balance_weight_augments_like_training_when_augmentation_is_on() -> None:
    torch.manual_seed(0)
    x = torch.rand(16, 1, 8, 8) * 0.9 + 0.1  # no zero pixel: a padded crop is told apart from the image
    data = ArrayData(x, torch.zeros(16, dtype=torch.long), 2)
    plain = _sample_seen(data, seed=1, epoch=2)
    augmented = _sample_seen(data, seed=1, epoch=2, augment=True)
    assert torch.equal(augmented, _sample_seen(data, seed=1, epoch=2, augment=True))  # seeded
    variants = [_crops_and_flips(img) for img in x]
    for img in plain:
        assert any((x == img).flatten(1).all(1))  # off: training images as they are
    moved = 0
    for img in augmented:
        matches = [(v == img).flatten(1).all(1) for v in variants]
        assert any(m.any() for m in matches)  # on: a crop/flip of some training image...
        moved += not any((x == img).flatten(1).all(1))
    assert moved >= 4  # ...mostly not the image itself (1 of 162 crop/flip variants is the identity)
