"""The baselines (PGD-AT, TRADES) and AR-AT+SWA in the shared harness: formulas, gradients, BN statistics, and
where each method lands on digits relative to the others (docs/design.md, "Data")."""

from __future__ import annotations

import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from arat_train.config import AttackConfig, load_config
from arat_train.data import ArrayData
from arat_train.losses import trades_loss
from arat_train.models import SmallCNN, SplitBatchNorm
from arat_train.swa import ParamAverage, reestimate_adv_bn
from arat_train.train import Objective, build, train

DIGITS = str(Path(__file__).resolve().parents[1] / "arat_train" / "configs" / "digits.yaml")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _softmax(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def test_trades_loss_matches_hand_computed_formula() -> None:
    """``CE(f(x), y) + beta * KL(f(x) || f(x_adv))``, as TRADES' reference code computes it (batch mean)."""
    clean = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]]
    adv = [[0.0, 1.0, 0.5], [1.0, -1.0, 2.0]]
    y = [0, 1]
    beta = 6.0
    ce = sum(-math.log(_softmax(c)[t]) for c, t in zip(clean, y, strict=True)) / 2
    kl = sum(
        sum(p * (math.log(p) - math.log(q)) for p, q in zip(_softmax(c), _softmax(a), strict=True))
        for c, a in zip(clean, adv, strict=True)
    ) / 2
    out = trades_loss(torch.tensor(adv), torch.tensor(clean), torch.tensor(y), beta=beta)
    assert out["ce_clean"].item() == pytest.approx(ce, rel=1e-6)
    assert out["kl"].item() == pytest.approx(kl, rel=1e-6)
    assert out["loss"].item() == pytest.approx(ce + beta * kl, rel=1e-6)


def test_trades_gradient_reaches_the_clean_logits_through_the_kl_term() -> None:
    """The reference code does not detach f(x) inside the KL: the clean logits get CE and KL gradients."""
    torch.manual_seed(0)
    clean, adv, y = torch.randn(4, 5, requires_grad=True), torch.randn(4, 5), torch.randint(0, 5, (4,))
    (g_beta0,) = torch.autograd.grad(trades_loss(adv, clean, y, beta=0.0)["loss"], clean)
    (g_beta6,) = torch.autograd.grad(trades_loss(adv, clean, y, beta=6.0)["loss"], clean)
    p, q = F.softmax(clean, 1), F.softmax(adv, 1)
    kl = (p * (p.log() - q.log())).sum(1).mean()
    (g_kl,) = torch.autograd.grad(kl, clean)
    torch.testing.assert_close(g_beta6, g_beta0 + 6.0 * g_kl)


def _objective(method: str) -> Objective:
    cfg = load_config(DIGITS, [f"method={method}"])
    torch.manual_seed(0)
    return build(cfg, 10, 1, torch.device("cpu"))


def _batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 16, 16, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def test_baselines_have_one_bn_set_and_arat_two() -> None:
    for method, split in (("pgd_at", False), ("trades", False), ("arat", True)):
        model = _objective(method).model
        assert any(isinstance(m, SplitBatchNorm) for m in model.modules()) is split, method


def test_pgd_at_objective_has_no_clean_term() -> None:
    objective = _objective("pgd_at")
    x, y = _batch()
    x_adv = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    x = x.requires_grad_(True)
    out = objective(x, x_adv, y, 0.5)
    assert set(out) == {"loss", "ce_adv"}  # no ce_clean, no balance weight
    (grad_x,) = torch.autograd.grad(out["loss"], x, allow_unused=True)
    assert grad_x is None or torch.count_nonzero(grad_x) == 0
    other = objective(torch.zeros_like(x), x_adv, y, 0.9)["loss"]  # train-mode BN: batch statistics only
    assert other.item() == pytest.approx(out["loss"].item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx(F.cross_entropy(objective.model(x_adv), y).item(), rel=1e-6)


def _stats(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(running_mean, running_var) of a BatchNorm."""
    assert isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None and bn.running_var is not None
    return bn.running_mean, bn.running_var


def _running_means(model: nn.Module) -> list[torch.Tensor]:
    return [_stats(m)[0].clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def test_trades_attack_runs_in_eval_mode_and_pgd_at_attack_in_train_mode() -> None:
    x, y = _batch()
    for method, stats_change in (("trades", False), ("pgd_at", True)):
        objective = _objective(method)
        objective.train()
        before = _running_means(objective.model)
        x_out, x_adv = objective.adversarial(x, y, AttackConfig(eps=51, steps=3))
        changed = any(not torch.equal(a, b) for a, b in zip(before, _running_means(objective.model), strict=True))
        assert changed is stats_change, method
        assert objective.model.training  # mode restored
        assert x_out is x
        assert (x_adv - x).abs().max() <= 51 / 255 + 1e-6
        assert not torch.equal(x_adv, x)


def test_legacy_inplace_noise_changes_the_clean_batch_and_the_default_does_not() -> None:
    objective = _objective("arat")
    x, y = _batch()
    original = x.clone()
    eps = 51 / 255
    x_out, x_adv = objective.adversarial(x, y, AttackConfig(eps=51, steps=3))
    assert torch.equal(x_out, original)
    assert (x_adv - original).abs().max() <= eps + 1e-6
    x_noisy, x_adv = objective.adversarial(x, y, AttackConfig(eps=51, steps=3, legacy_inplace_noise=True))
    assert torch.equal(x, original)  # the caller's tensor itself is left alone
    assert not torch.equal(x_noisy, original)
    assert (x_noisy - original).abs().max() <= eps + 1e-6
    assert (x_adv - x_noisy).abs().max() <= eps + 1e-6  # the ball is centred on the noisy image...
    assert (x_adv - original).abs().max() > eps + 1e-3  # ...so it reaches outside the clean image's ball


def test_param_average_is_the_mean_of_the_snapshots() -> None:
    model = nn.Linear(3, 2)
    snapshots = [
        (torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), torch.tensor([1.0, -1.0])),
        (torch.tensor([[0.0, 0.0, 3.0], [-4.0, 5.0, 0.0]]), torch.tensor([2.0, 2.0])),
        (torch.tensor([[2.0, 1.0, 0.0], [3.0, 2.0, 3.0]]), torch.tensor([0.0, 5.0])),
    ]
    average = ParamAverage(start_step=10, every=5)
    assert [s for s in range(1, 26) if average.due(s)] == [10, 15, 20, 25]
    for weight, bias in snapshots:
        with torch.no_grad():
            model.weight.copy_(weight)
            model.bias.copy_(bias)
        average.update(model)
    averaged = average.averaged(model)
    torch.testing.assert_close(averaged.weight, torch.tensor([[1.0, 1.0, 2.0], [1.0, 4.0, 3.0]]))
    torch.testing.assert_close(averaged.bias, torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(model.bias, snapshots[-1][1])  # the live model is not touched


def test_reestimate_adv_bn_recomputes_adv_statistics_and_leaves_clean_ones() -> None:
    torch.manual_seed(0)
    model = SmallCNN(num_classes=10, in_channels=1, width=8)
    splits = [m for m in model.modules() if isinstance(m, SplitBatchNorm)]
    with torch.no_grad():
        for m in splits:
            for mean, var in (_stats(m.clean), _stats(m.adv)):
                mean.uniform_(-1, 1)
                var.uniform_(0.5, 2)
    clean_before = [tuple(t.clone() for t in _stats(m.clean)) for m in splits]
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(256, 1, 16, 16, generator=gen) * 0.5 + 0.5
    data = ArrayData(x, torch.randint(0, 10, (256,), generator=gen), 10)
    model.eval()
    # eps 0: the "adversarial" examples are x itself, so the first layer's statistics have a closed form.
    reestimate_adv_bn(model, data, AttackConfig(eps=0, steps=3), batch_size=64)
    assert not model.training  # mode restored
    for m, (mean, var) in zip(splits, clean_before, strict=True):
        assert torch.equal(_stats(m.clean)[0], mean) and torch.equal(_stats(m.clean)[1], var)
        adv_mean, adv_var = _stats(m.adv)
        assert not torch.allclose(adv_mean, torch.zeros_like(mean))
        assert not torch.allclose(adv_var, torch.ones_like(var))
    with torch.no_grad():
        first = model.convs[0](x)  # (N, C, H, W)
    torch.testing.assert_close(_stats(splits[0].adv)[0], first.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- each method trained on digits

RUNS = {
    # AR-AT+SWA trains the same trajectory as plain AR-AT (averaging only reads the weights), so one run gives
    # both: clean_acc / robust_acc are AR-AT's, swa_clean_acc / swa_robust_acc the averaged model's.
    "arat": ["swa.enabled=true", "swa.every=5"],
    "pgd_at": ["method=pgd_at"],
    "trades": ["method=trades"],
}
# digits.yaml (PGD-5 training at eps 51/255), but the per-epoch metric is PGD-10 on 200 validation images instead
# of PGD-20 on 360, to keep this file short, and 10 epochs instead of 8: PGD-AT needs about 170 optimiser steps to
# leave chance, and digits keeps 1,077 training images (17 steps of 64 an epoch) once its test split is held out.
FAST = ["eval.attack.steps=10", "eval.max_examples=200", "perf.num_threads=1", "optim.epochs=10"]


def _train_one(sets: list[str]) -> dict[str, float]:
    start = time.perf_counter()
    metrics = train(load_config(DIGITS, [*sets, *FAST]))
    return {**metrics, "seconds": time.perf_counter() - start}


@pytest.fixture(scope="module")
def trained() -> dict[str, dict[str, float]]:
    """The three runs, two at a time in fresh single-thread processes (each seeded: the same figures as in this
    process, in about two thirds of the time on two cores)."""
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {name: pool.submit(_train_one, sets) for name, sets in RUNS.items()}
        results = {name: future.result() for name, future in futures.items()}
    for name, m in results.items():
        print(name, {k: round(v, 3) for k, v in m.items() if "acc" in k or k == "seconds"})
    return results


def test_every_method_beats_chance_and_is_robust(trained: dict[str, dict[str, float]]) -> None:
    for name, m in trained.items():
        assert m["clean_acc"] > 0.4, name  # chance is 0.1
        assert m["robust_acc"] > 0.08, name  # plain training scores 0.00 here (docs/design.md, "Data")
        assert m["robust_acc"] < m["clean_acc"], name


def test_arat_is_cleaner_than_pgd_at_at_similar_robustness(trained: dict[str, dict[str, float]]) -> None:
    arat, pgd_at = trained["arat"], trained["pgd_at"]
    assert arat["clean_acc"] > pgd_at["clean_acc"] + 0.1
    assert arat["robust_acc"] > pgd_at["robust_acc"] - 0.05


def test_trades_clean_term_keeps_more_clean_accuracy_than_pgd_at(trained: dict[str, dict[str, float]]) -> None:
    assert trained["trades"]["clean_acc"] > trained["pgd_at"]["clean_acc"] + 0.1


def test_swa_metrics_are_reported_next_to_the_plain_model(trained: dict[str, dict[str, float]]) -> None:
    arat = trained["arat"]
    for key in ("clean_acc", "robust_acc", "swa_clean_acc", "swa_robust_acc"):
        assert 0.0 <= arat[key] <= 1.0, key
    assert arat["swa_clean_acc"] > 0.6
    assert 0.08 < arat["swa_robust_acc"] < arat["swa_clean_acc"]
    assert "swa_clean_acc" not in trained["pgd_at"]
