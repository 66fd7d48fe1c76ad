"""PGD: stays in the eps-ball around the clean input and in [0, 1], leaves its input alone, and hurts."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from arat_train.attacks import pgd_attack
from arat_train.models import build_model


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A small CNN fitted to a fixed random batch (plain training), in eval mode."""
    torch.manual_seed(0)
    model = build_model("small_cnn", 4, in_channels=1, width=8)
    x = torch.rand(32, 1, 16, 16)
    y = torch.randint(0, 4, (32,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(x, bn="adv"), y).backward()
        opt.step()
    return model.eval(), x, y


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_result_inside_ball_and_unit_box_and_input_untouched(trained, norm: str, eps: float) -> None:  # type: ignore[no-untyped-def]
    model, x, y = trained
    x = x.clone()
    x[:4] = 0.0  # corners of the box make the [0, 1] projection matter
    x[4:8] = 1.0
    before = x.clone()
    x_adv = pgd_attack(partial(model, bn="adv"), x, y, eps=eps, step_size=eps / 3, steps=7, norm=norm)  # type: ignore[arg-type]
    assert torch.equal(x, before)
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-6).all()
    assert size.max() > 0.5 * eps
    assert not x_adv.requires_grad


def test_eps_zero_returns_the_input(trained) -> None:  # type: ignore[no-untyped-def]
    model, x, y = trained
    x_adv = pgd_attack(partial(model, bn="adv"), x, y, eps=0.0, step_size=0.0, steps=5)
    assert torch.equal(x_adv, x)


def test_attack_raises_the_loss_of_a_trained_model(trained) -> None:  # type: ignore[no-untyped-def]
    model, x, y = trained
    fn = partial(model, bn="adv")
    x_adv = pgd_attack(fn, x, y, eps=16 / 255, step_size=4 / 255, steps=10)
    with torch.no_grad():
        clean_loss, adv_loss = F.cross_entropy(fn(x), y).item(), F.cross_entropy(fn(x_adv), y).item()
        clean_acc = (fn(x).argmax(1) == y).float().mean().item()
        adv_acc = (fn(x_adv).argmax(1) == y).float().mean().item()
    assert clean_acc > 0.9
    assert adv_loss > clean_loss * 2
    assert adv_acc < clean_acc


def test_no_weight_gradients_accumulate(trained) -> None:  # type: ignore[no-untyped-def]
    model, x, y = trained
    model.zero_grad(set_to_none=True)
    pgd_attack(partial(model, bn="adv"), x, y, eps=8 / 255, step_size=2 / 255, steps=3)
    assert all(p.grad is None for p in model.parameters())


def test_no_weight_gradient_is_even_computed(trained) -> None:  # type: ignore[no-untyped-def]
    """A tensor hook fires whenever autograd computes that parameter's gradient: never during the attack (the
    backward passes stop at the input), once per parameter for an ordinary backward (the control)."""
    model, x, y = trained
    computed: list[str] = []
    handles = [p.register_hook(lambda g, n=name: computed.append(n)) for name, p in model.named_parameters()]
    try:
        pgd_attack(partial(model, bn="adv"), x, y, eps=8 / 255, step_size=2 / 255, steps=3)
        assert computed == []
        F.cross_entropy(model(x, bn="adv"), y).backward()
        convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(f"{c}.weight" in computed for c in convs)
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)


def test_unknown_norm_is_refused(trained) -> None:  # type: ignore[no-untyped-def]
    model, x, y = trained
    with pytest.raises(ValueError, match="norm"):
        pgd_attack(model, x, y, eps=0.1, step_size=0.1, steps=1, norm="l1")  # type: ignore[arg-type]
