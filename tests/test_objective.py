"""The study's robust objective: the worst case over PGD, APGD-CE and APGD-T at the final epoch, PGD as progress
before it, and the masking gap that shows when PGD's gradients mislead. Real attacks on a small trained model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from arat_train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from arat_train.config import AttackConfig, TrainConfig
from arat_train.robustness import objective_counts
from arat_train.train import build, final_objective, load_data, train

EPS = 25.0
CFG = {
    "device": "cpu", "seed": 0,
    "data": {"dataset": "digits", "image_size": 16},
    "model": {"name": "small_cnn", "width": 16},
    "attack": {"eps": EPS, "steps": 3},
    "arat": {"balance_samples": 256},
    "optim": {"epochs": 4, "batch_size": 64, "lr": 0.1},
    "eval": {"attack": {"eps": EPS, "steps": 10, "step_size": EPS / 4}, "max_examples": 128,
             "final_attack": "apgd"},
    "perf": {"num_threads": 1},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> tuple[list[dict[str, float]], Path]:
    """Per-epoch metrics of a 4-epoch AR-AT run on digits and its checkpoint directory (about 20 s)."""
    out = tmp_path_factory.mktemp("objective")
    history: list[dict[str, float]] = []
    train(TrainConfig.from_dict(CFG), checkpoint_dir=out, callback=lambda m, _: history.append(m))
    return history, out


def test_the_final_report_carries_both_attacks(run: tuple[list[dict[str, float]], Path]) -> None:
    history, _ = run
    *early, final = history
    for m in early:  # progress: PGD, and robust_acc repeats it
        assert m["robust_acc"] == m["robust_acc_pgd"] and "masking_gap" not in m
    assert final["final_examples"] == 128 == final["eval_examples"]  # the same images for both attacks
    assert final["robust_acc"] <= final["robust_acc_pgd"] <= final["clean_acc"]
    assert final["masking_gap"] == pytest.approx(final["robust_acc_pgd"] - final["robust_acc"])
    assert final["clean_acc"] > 0.4  # a trained model (chance: 0.1), so the attacks have something to take


def test_pgd_objective_keeps_the_pgd_figure(tmp_path: Path, one_torch_thread: None) -> None:
    cfg = TrainConfig.from_dict({**CFG, "optim": {**CFG["optim"], "epochs": 1},
                                 "eval": {**CFG["eval"], "final_attack": "pgd"}})
    final = train(cfg)
    assert final["robust_acc"] == final["robust_acc_pgd"] and "masking_gap" not in final


class _Saturated(nn.Module):
    """The same classifier with its logits scaled by 10^4: predictions unchanged, but the softmax saturates, so
    the cross-entropy gradient PGD follows is zero wherever the model is right (a planted gradient masking)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor, bn: str = "adv", **kw: object) -> Tensor:
        return self.inner(x, bn=bn) * 1e4  # (B, num_classes)


def _model(ckpt_dir: Path) -> tuple[nn.Module, TrainConfig]:
    ckpt = load_checkpoint(ckpt_dir / CHECKPOINT_NAME)
    cfg = TrainConfig.from_dict(ckpt["config"])
    model = build(cfg, 10, 1, torch.device("cpu")).model
    model.load_state_dict(ckpt["model"])
    return model, cfg


def test_a_planted_masking_shows_as_a_large_gap(run: tuple[list[dict[str, float]], Path]) -> None:
    """PGD on CE cannot move a saturated model; APGD-T's DLR loss (scale-invariant) still can."""
    model, cfg = _model(run[1])
    _, val = load_data(cfg, torch.device("cpu"))
    x, y = val.x[:128], val.y[:128]
    pgd = AttackConfig(eps=EPS, steps=10, step_size=EPS / 4)
    honest = objective_counts(model, x, y, pgd).tolist()
    masked = objective_counts(_Saturated(model), x, y, pgd).tolist()
    assert masked[0] == honest[0]  # the same predictions on clean images
    gap = lambda c: (c[1] - c[2]) / c[3]  # noqa: E731
    assert masked[1] > honest[1]  # PGD is fooled by the saturation...
    assert gap(masked) > 0.1 + gap(honest)  # ...and the worst case exposes it
    assert abs(masked[2] - honest[2]) <= 0.05 * honest[3]  # APGD-T sees the same robustness in both


def test_apgd_settings_are_validated() -> None:
    cfg = TrainConfig.from_dict({"eval": {"final_attack": "apgd", "apgd_iters": 25, "apgd_targets": 3}})
    assert (cfg.eval.apgd_iters, cfg.eval.apgd_targets) == (25, 3)
    assert (TrainConfig().eval.apgd_iters, TrainConfig().eval.apgd_targets) == (100, 9)  # AutoAttack's standard
    for key in ("apgd_iters", "apgd_targets", "final_examples"):
        with pytest.raises(Exception, match=rf"eval\.{key}: must be >= "):
            TrainConfig.from_dict({"eval": {key: -1}})


def test_fewer_apgd_iterations_move_the_step_size_checkpoints_too() -> None:
    """An APGD built for 100 iterations and cut to 25 schedules its step size as one built for 25."""
    from pyautoattack.autopgd_base import APGDAttack

    from arat_train.robustness import set_apgd_iters

    model = nn.Linear(4, 3)
    cut, fresh = APGDAttack(model, n_iter=100, eps=0.1), APGDAttack(model, n_iter=25, eps=0.1)
    set_apgd_iters(cut, 25)
    for key in ("n_iter", "n_iter_orig", "n_iter_2", "n_iter_min", "size_decr"):
        assert getattr(cut, key) == getattr(fresh, key), key


def test_a_planted_masking_is_tagged_from_the_model_to_mlflow(run: tuple[list[dict[str, float]], Path],
                                                              tmp_path: Path) -> None:
    """The whole path of a planted masking: the trial's final objective measures its gap, the study's tracker
    tags its MLflow run a suspect and the trials table marks it; the honest model gets neither."""
    from mlflow import MlflowClient

    from orchestrator.records import trials_table
    from orchestrator.tracking import StudyTracker

    model, cfg = _model(run[1])
    data = cfg.to_dict()
    data["eval"] = {**data["eval"], "max_examples": 128, "final_examples": 128, "apgd_iters": 25, "apgd_targets": 3}
    cfg = TrainConfig.from_dict(data)
    _, val = load_data(cfg, torch.device("cpu"))
    finals = {"honest": final_objective(model, val, cfg), "masked": final_objective(_Saturated(model), val, cfg)}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = StudyTracker(uri, "planted", space_yaml="{}", params={}, sampler="tpe", seed=0, code_version="test",
                           masking_threshold=0.1)
    tracker.start()
    for trial_id, final in finals.items():
        tracker.trial_started(trial_id, {})
        tracker.trial_completed(trial_id, {**final, "clean_acc": 0.9, "epoch": 1}, None)
    tracker.finish()
    tags = {t: MlflowClient(uri).get_run(tracker.run_id(t)).data.tags["gradient_masking_suspect"] for t in finals}
    assert tags == {"honest": "false", "masked": "true"}, finals
    frame = trials_table(tracker._records(), masking_threshold=0.1).set_index("trial_id")
    assert frame["masking_suspect"].to_dict() == {"honest": False, "masked": True}
