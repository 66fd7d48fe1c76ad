"""Typed config: errors that name the field, overrides, and the pure learning-rate schedule."""

from __future__ import annotations

import pytest

from arat_train.config import (
    AttackConfig,
    ConfigError,
    OptimConfig,
    TrainConfig,
    load_config,
    parse_overrides,
)
from arat_train.train import lr_at


@pytest.mark.parametrize("data,field,allowed", [
    ({"attack": {"epsilon": 8}}, "attack.epsilon", "allowed keys here: eps"),
    ({"nonsense": 1}, "nonsense", "allowed keys here: method"),
    ({"optim": {"epochs": "ten"}}, "optim.epochs", "expected int"),
    ({"optim": {"epochs": 2.5}}, "optim.epochs", "expected int"),
    ({"attack": {"random_start": 1}}, "attack.random_start", "expected bool"),
    ({"attack": {"eps": -1}}, "attack.eps", "must be >= 0"),
    ({"attack": {"eps": 4, "step_size": 5}}, "attack.step_size", "must be <= eps"),
    ({"eval": {"attack": {"steps": 0}}}, "eval.attack.steps", "must be >= 1"),
    ({"method": "mart"}, "method", "allowed: 'arat', 'pgd_at', 'trades'"),
    ({"model": {"name": "vit"}}, "model.name", "allowed: 'small_cnn'"),
    ({"data": "digits"}, "data", "expected a mapping"),
    ({"optim": {"milestones": [0.9, 0.5]}}, "optim.milestones", "increasing fractions"),
    ({"perf": {"compile_mode": "turbo", "compile": True}}, "perf.compile_mode", "allowed: 'default', 'reduce-overhead'"),
    ({"perf": {"compile_mode": "reduce-overhead"}}, "perf.compile_mode", "applies only with perf.compile: true"),
    ({"perf": {"num_threads": -1}}, "perf.num_threads", "must be >= 0"),
    ({"perf": {"amp": "fp16"}}, "perf.amp", "allowed: 'auto', 'bf16', 'fp32'"),
    ({"optim": {"schedule": "cosine"}}, "optim.schedule", "allowed: 'nominal', 'authors'"),
    ({"optim": {"schedule": "authors", "warmup_epochs": 1}}, "optim.warmup_epochs", "must be 0 with optim.schedule"),
])
def test_bad_values_name_the_field_and_the_allowed_values(data: dict, field: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(data)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert allowed in str(info.value)


def test_round_trip_and_flat_keys() -> None:
    cfg = TrainConfig.from_dict({"attack": {"eps": 4}, "optim": {"milestones": [0.5]}})
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    flat = cfg.flat()
    assert flat["attack.eps"] == 4.0 and flat["optim.milestones"] == [0.5]
    assert flat["eval.attack.steps"] == 20


def test_frozen() -> None:
    cfg = TrainConfig()
    with pytest.raises(AttributeError):
        cfg.seed = 3  # type: ignore[misc]


def test_overrides_parse_yaml_scalars_and_win(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert parse_overrides(["optim.lr=0.05", "model.name=resnet18", "swa.enabled=true"]) == {
        "optim": {"lr": 0.05}, "model": {"name": "resnet18"}, "swa": {"enabled": True}}
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.2\n  epochs: 3\n")
    cfg = load_config(str(path), ["optim.lr=0.01"])
    assert cfg.optim.lr == 0.01 and cfg.optim.epochs == 3
    with pytest.raises(ConfigError, match="key.subkey=value"):
        parse_overrides(["optim.lr"])


def test_step_size_units() -> None:
    assert AttackConfig(eps=8, steps=10).step == pytest.approx(2.0)  # 2.5 * eps / steps
    assert AttackConfig(eps=8, steps=1).step == pytest.approx(8.0)  # capped at eps
    assert AttackConfig(eps=8, steps=10, step_size=1).step == 1.0
    kw = AttackConfig(eps=8, steps=10).kwargs()
    assert kw["eps"] == pytest.approx(8 / 255) and kw["step_size"] == pytest.approx(2 / 255)


def test_lr_at_table() -> None:
    cfg = OptimConfig(epochs=100, lr=0.1)
    total = 1000
    table = {0: 0.1, 749: 0.1, 750: 0.01, 899: 0.01, 900: 0.001, 999: 0.001}
    for step, lr in table.items():
        assert lr_at(step, total, cfg) == pytest.approx(lr), step
    warm = OptimConfig(epochs=10, lr=0.1, warmup_epochs=1)
    assert [round(lr_at(s, 100, warm), 4) for s in (0, 4, 9, 10)] == [0.01, 0.05, 0.1, 0.1]


def _authors_epoch_lr(epoch: int, lr: float = 0.1) -> float:
    """The lr the authors' code trains 1-based ``epoch`` with: ``CustomLR`` sets 0.02 for epoch 1, then
    ``scheduler.step(e)`` after epoch ``e`` sets ``get_lr(e)`` for epoch ``e + 1`` (train_ARAT.py)."""
    if epoch == 1:
        return 0.02
    e = epoch - 1
    return lr if e <= 75 else lr * 0.1 if e <= 90 else lr * 0.01


def test_authors_schedule_matches_their_code_for_100_epochs() -> None:
    cfg = TrainConfig.from_dict({"optim": {"epochs": 100, "schedule": "authors"}}).optim
    per_epoch, total = 7, 700
    for epoch in range(1, 101):
        for step in ((epoch - 1) * per_epoch, epoch * per_epoch - 1):  # first and last step of the epoch
            assert lr_at(step, total, cfg) == pytest.approx(_authors_epoch_lr(epoch)), (epoch, step)
    table = {0: 0.02, 6: 0.02, 7: 0.1, 76 * 7 - 1: 0.1, 76 * 7: 0.01, 91 * 7 - 1: 0.01, 91 * 7: 0.001, 699: 0.001}
    for step, lr in table.items():
        assert lr_at(step, total, cfg) == pytest.approx(lr), step
    # nominal (the default) decays at exactly 75% and 90% and has no slow first epoch
    nominal = OptimConfig(epochs=100)
    assert nominal.schedule == "nominal"
    assert [lr_at(s, total, nominal) for s in (0, 75 * 7 - 1)] == pytest.approx([0.1, 0.1])
    assert [lr_at(s, total, nominal) for s in (75 * 7, 90 * 7)] == pytest.approx([0.01, 0.001])


def test_authors_schedule_scales_with_the_epoch_budget() -> None:
    cfg = OptimConfig(epochs=20, lr=0.2, schedule="authors")  # nominal decays at epochs 16 and 19 (1-based), these 17, 20
    lrs = [lr_at(e * 5, 100, cfg) for e in range(20)]
    assert lrs == pytest.approx([0.04] + [0.2] * 15 + [0.02] * 3 + [0.002])
