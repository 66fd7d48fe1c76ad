"""Split-BN models: branch isolation, feature taps, predictor width and export parity."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from arat_train.losses import Predictor, Predictors
from arat_train.models import SplitBatchNorm, WideResNet, build_model, export_model


def _stats(model: torch.nn.Module, branch: str) -> list[torch.Tensor]:
    return [getattr(m, branch).running_mean.clone() for m in model.modules() if isinstance(m, SplitBatchNorm)]


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_train_forward_with_adv_bn_changes_only_adv_statistics(name: str) -> None:
    torch.manual_seed(0)
    channels, size = (1, 16) if name == "small_cnn" else (3, 32)
    model = build_model(name, 10, in_channels=channels).train()
    clean_before, adv_before = _stats(model, "clean"), _stats(model, "adv")
    model(torch.rand(4, channels, size, size), bn="adv")
    assert all(torch.equal(a, b) for a, b in zip(clean_before, _stats(model, "clean"), strict=True))
    assert all(not torch.equal(a, b) for a, b in zip(adv_before, _stats(model, "adv"), strict=True))


def test_unknown_branch_is_refused() -> None:
    model = build_model("small_cnn", 10, in_channels=1)
    with pytest.raises(ValueError, match="bn must be"):
        model(torch.rand(2, 1, 16, 16), bn="both")  # type: ignore[arg-type]


def test_resnet18_taps_layer4_with_bn2_before_the_residual_add() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", 10).eval()
    x = torch.rand(3, 3, 32, 32)
    logits, feats = model(x, bn="clean", return_features=True)
    assert logits.shape == (3, 10)
    assert list(feats) == ["layer4.0.bn1", "layer4.0.bn2", "layer4.1.bn1", "layer4.1.bn2"]
    assert all(f.shape == (3, 512) for f in feats.values())
    # The bn2 tap is ReLU + GAP of the BN output itself, not of the block output after the residual add.
    block = model.blocks[7]
    seen: dict[str, torch.Tensor] = {}
    block.bn2.register_forward_hook(lambda _m, _i, out: seen.__setitem__("bn2", out))
    block.register_forward_hook(lambda _m, _i, out: seen.__setitem__("block", out))
    model(x, bn="clean", return_features=True)
    expected = F.relu(seen["bn2"]).mean(dim=(2, 3))
    torch.testing.assert_close(feats["layer4.1.bn2"], expected)
    assert not torch.allclose(feats["layer4.1.bn2"], seen["block"].mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def wrn34_10() -> nn.Module:
    """One fresh WRN-34-10 for the module (it is large: build it once)."""
    torch.manual_seed(0)
    return build_model("wrn34_10", 10)


def test_wrn34_10_has_the_wide_resnet_initialisation(wrn34_10: nn.Module) -> None:
    convs = [m for m in wrn34_10.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 2 * 15 + 3  # stem, two per block, three 1x1 shortcuts
    for conv in convs:
        w = conv.weight.detach()
        expected = math.sqrt(2.0 / (conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels))
        # std of a sample std is about sigma / sqrt(2n): 15% is over 4 of those for the smallest conv (432 weights)
        assert w.std().item() == pytest.approx(expected, rel=0.15), conv
        assert abs(w.mean().item()) < 4 * expected / math.sqrt(w.numel()), conv
    last = [m for m in convs if m.out_channels == 640 and m.in_channels == 640]
    assert last and all(m.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 640)), rel=0.02) for m in last)
    splits = [m for m in wrn34_10.modules() if isinstance(m, SplitBatchNorm)]
    assert len(splits) == 2 * 15 + 1
    for split in splits:
        for bn in (split.clean, split.adv):
            assert torch.equal(bn.weight, torch.ones_like(bn.weight))
            assert torch.equal(bn.bias, torch.zeros_like(bn.bias))
    linear = wrn34_10.linear
    assert torch.equal(linear.bias, torch.zeros_like(linear.bias))
    bound = 1 / math.sqrt(linear.in_features)  # the weight keeps PyTorch's default: U(-1/sqrt(d), 1/sqrt(d))
    assert linear.weight.abs().max().item() <= bound
    assert linear.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)


def test_resnet18_keeps_pytorchs_default_initialisation() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", 10)
    for conv in (m for m in model.modules() if isinstance(m, nn.Conv2d)):
        fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        assert conv.weight.abs().max().item() <= 1 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5))
    assert model.linear.bias.abs().max().item() > 0


def test_wrn34_10_takes_an_arat_step_at_small_batch(wrn34_10: nn.Module) -> None:
    """One AR-AT step of WRN-34-10 on CPU at batch 2, with the authors' in-place-noise attack and a predictor of
    width int(r * d): a finite loss whose gradients reach every convolution, both BN sets and every predictor."""
    import copy

    from arat_train.config import AttackConfig, TrainConfig
    from arat_train.losses import predictor_width
    from arat_train.train import Objective

    cfg = TrainConfig.from_dict({"method": "arat", "model": {"name": "wrn34_10"},
                                 "arat": {"gamma": 30.0, "predictor_ratio": 0.25}})
    objective = Objective(copy.deepcopy(wrn34_10), cfg).train()  # the fixture stays fresh for the other tests
    assert objective.predictors is not None
    dims = {k: objective.model.feature_dims[k] for k in objective.model.aligned_layers}
    assert {k: p.hidden for k, p in zip(dims, objective.predictors.heads.values(), strict=True)} == {
        k: predictor_width(d, 0.25) for k, d in dims.items()}
    torch.manual_seed(0)
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([1, 8])
    x_clean, x_adv = objective.adversarial(x, y, AttackConfig(eps=8, steps=1, step_size=2,
                                                              legacy_inplace_noise=True))
    assert (x_adv - x_clean).abs().max() <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    out = objective(x_clean, x_adv, y, a=0.5)
    assert all(torch.isfinite(v).all() for v in out.values())
    out["loss"].backward()
    convs = [m for m in objective.model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) >= 34 and all(c.weight.grad is not None and c.weight.grad.abs().sum() > 0 for c in convs)
    splits = [m for m in objective.model.modules() if isinstance(m, SplitBatchNorm)]
    for branch in ("clean", "adv"):
        assert all(getattr(m, branch).weight.grad.abs().sum() > 0 for m in splits), branch
    for head in objective.predictors.heads.values():
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def test_wrn34_10_aligns_eleven_layers(wrn34_10: nn.Module) -> None:
    model = wrn34_10
    assert len(model.aligned_layers) == 11
    assert model.aligned_layers[-1] == "final"
    assert all(model.feature_dims[k] == 640 for k in model.aligned_layers[1:])


def test_unknown_aligned_layer_names_the_field() -> None:
    with pytest.raises(ValueError, match="model.aligned_layers"):
        build_model("small_cnn", 10, in_channels=1, aligned_layers=["conv9"])


@pytest.mark.parametrize("ratio,dim,hidden", [
    (0.25, 512, 128), (0.3, 10, 3), (1.0, 64, 64),
    (0.3, 9, 2), (0.25, 650, 162), (0.29, 100, 28),  # int(r * d) floors (2.7, 162.5, 28.999...), as the authors' code
    (0.01, 10, 1), (0.001, 640, 1),  # r * d < 1 with r > 0: one hidden unit, never a zero-width predictor
])
def test_predictor_width_is_int_r_times_d_and_at_least_one(ratio: float, dim: int, hidden: int) -> None:
    pred = Predictor(dim, ratio)
    assert pred.hidden == hidden
    assert pred.net[0].weight.shape == (hidden, dim)  # type: ignore[index]
    assert pred(torch.rand(4, dim)).shape == (4, dim)


def test_ratio_zero_means_no_predictor() -> None:
    heads = Predictors({"a.b": 8}, 0.0)
    z = torch.rand(2, 8)
    assert torch.equal(heads({"a.b": z})["a.b"], z)
    assert sum(p.numel() for p in heads.parameters()) == 0


@pytest.mark.parametrize("make", [
    lambda: build_model("small_cnn", 10, in_channels=1),
    lambda: build_model("resnet18", 10),
    lambda: WideResNet(depth=10, widen=2, num_classes=10),
])
def test_export_matches_the_adv_branch(make) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = make()
    channels = model.conv1.in_channels if hasattr(model, "conv1") else 1
    size = 16 if channels == 1 else 32
    model.train()
    for _ in range(3):  # give the two branches different statistics
        model(torch.rand(8, channels, size, size), bn="adv")
        model(torch.rand(8, channels, size, size) * 0.5, bn="clean")
    model.eval()
    exported = export_model(model).eval()
    x = torch.rand(4, channels, size, size)
    diff = (exported(x) - model(x, bn="adv")).abs().max().item()
    assert diff < 1e-5
    assert (exported(x) - model(x, bn="clean")).abs().max().item() > 1e-3
    assert not any(isinstance(m, SplitBatchNorm) for m in exported.modules())
    assert not any(".adv." in k or ".clean." in k for k in exported.state_dict())
