"""Study presets: every preset validates, overrides mean what they say, and bad input is refused before Ray starts.

The refusal cases run ``orchestrator/tune.py`` as a subprocess in an empty directory (default storage and MLflow
paths there) and check the exit status, the field named in the message, and that nothing was written.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from conftest import run_tune

from orchestrator.names import Status
from orchestrator.records import TrialRecord, format_table, trials_table
from orchestrator.space import (
    SpecError,
    apply_overrides,
    load_spec,
    make_sampler,
    optuna_space,
    read_preset,
    validate,
)

REPO = Path(__file__).resolve().parent.parent
PRESETS = sorted((REPO / "search_spaces").glob("*.yaml"))
QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"


def test_the_expected_presets_exist() -> None:
    assert {p.name for p in PRESETS} >= {"quickstart.yaml", "cifar10_resnet18.yaml", "cifar10_wrn34.yaml",
                                         "cifar100_resnet18.yaml"}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_loads_and_validates(preset: Path) -> None:
    for smoke_test in (False, True):
        spec = load_spec(preset, smoke_test=smoke_test)
        assert {"arat.gamma", "arat.predictor_ratio", "attack.eps", "attack.steps", "attack.step_ratio"} <= set(
            spec.space)
        assert spec.space["arat.gamma"].log
        # The enqueued defaults lie inside the space and make a valid training config.
        point = spec.default_point()
        assert all(spec.space[k].contains(v) for k, v in point.items())
        spec.train_config(point)
        # Every searched range becomes an Optuna distribution that contains the default point.
        dists = optuna_space(spec)
        assert all(dists[k]._contains(dists[k].to_internal_repr(v)) for k, v in point.items())
        # The stored form (what --resume reads back) validates to the same spec.
        assert validate(spec.to_dict()) == spec
    smoke = load_spec(preset, smoke_test=True)
    assert smoke.search.num_samples <= 3 and smoke.train_config({}).optim.epochs <= 2


def test_overrides_reach_sections_training_keys_and_ranges() -> None:
    raw = apply_overrides(read_preset(QUICKSTART), [
        "search.num_samples=5", "optim.epochs=3", "train.optim.lr=0.1", "space.arat.gamma.high=50",
        "space.attack.step_ratio=null", "space.optim.weight_decay={low: 1.0e-4, high: 1.0e-3, log: true}",
        "debug.fail_trials=[1, 2]",
    ])
    spec = validate(raw)
    assert spec.search.num_samples == 5
    cfg = spec.train_config(spec.default_point())
    assert cfg.optim.epochs == 3 and cfg.optim.lr == 0.1
    assert spec.space["arat.gamma"].high == 50 and spec.space["arat.gamma"].log
    assert "attack.step_ratio" not in spec.space
    assert spec.space["optim.weight_decay"].log
    assert spec.debug.fail_trials == (1, 2)
    # An int TrainConfig field is searched as an int without saying so.
    assert spec.space["attack.steps"].kind == "int"


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "gp", "random"])
def test_every_sampler_is_built_seeded(sampler: str) -> None:
    spec = load_spec(QUICKSTART, [f"search.sampler={sampler}"])
    built = make_sampler(spec.search)
    expected = {"tpe": optuna.samplers.TPESampler, "nsga2": optuna.samplers.NSGAIISampler,
                "gp": optuna.samplers.GPSampler, "random": optuna.samplers.RandomSampler}[sampler]
    assert isinstance(built, expected)
    if sampler == "tpe":  # Optuna 5 defaults to independent TPE for several objectives; the study asks for joint
        assert built._multivariate is True and built._n_startup_trials == 3  # 6 trials: 6 // 3 + 1


def test_bad_sampler_options_are_refused() -> None:
    with pytest.raises(SpecError, match=r"search\.sampler_options"):
        load_spec(QUICKSTART, ["search.sampler_options={no_such_option: 1}"])


def test_pareto_columns_cover_finished_trials_only() -> None:
    out = trials_table([
        TrialRecord("a", Status.FINISHED, 0.9, 0.1, checkpoint_path="/a"),
        TrialRecord("b", Status.FINISHED, 0.8, 0.3, checkpoint_path="/b"),
        TrialRecord("c", Status.FAILED, 0.99, 0.9, error="TrialFailed: boom"),
        TrialRecord("d", Status.FINISHED, 0.7, 0.2, checkpoint_path="/d"),
    ])
    assert out["pareto"].tolist() == [True, True, False, False]
    assert out["pareto_rank"].tolist() == [0, 0, -1, 1]
    text = format_table(out)
    assert "Pareto front (2 of 4)" in text and "boom" in text


BAD_INPUTS = [
    # (--set overrides, field named in the message, words of what is allowed)
    (["search.colour=red"], "search.colour", "allowed keys here"),
    (["optim.no_such_key=1"], "train.optim.no_such_key", "allowed keys here"),
    (["space.arat.nope={low: 1, high: 2}"], "space.arat.nope", "allowed in arat"),
    (["search.num_samples=many"], "search.num_samples", "expected an integer"),
    (["optim.epochs=two"], "train.optim.epochs", "expected int"),
    (["space.attack.eps.high=5"], "space.attack.eps", "must be < high"),
    (["space.attack.eps.low=-4"], "space.attack.eps", "must be >= 0"),
    (["space.attack.steps.low=0"], "space.attack.steps", "must be >= 1"),
    (["attack.steps=0"], "train.attack.steps", "must be >= 1"),
    (["search.sampler=cmaes"], "search.sampler", "tpe, nsga2, gp, random"),
    (["data.dataset=cifar10", "data.root=/nonexistent/cifar", "data.download=false"], "train.data.root",
     "does not exist"),
    (["scaling.use_gpu=true", "scaling.gpus_per_worker=1", "device=auto"], "scaling.gpus_per_worker",
     "this machine has 0"),
]


@pytest.mark.parametrize(("overrides", "field", "allowed"), BAD_INPUTS, ids=[c[1] + ":" + c[2] for c in BAD_INPUTS])
def test_bad_input_is_refused_before_anything_starts(tmp_path: Path, overrides: list[str], field: str,
                                                     allowed: str, auth_env: dict[str, str]) -> None:
    args = [arg for o in overrides for arg in ("--set", o)]
    env = {**auth_env, "CUDA_VISIBLE_DEVICES": "", "RAY_TMPDIR": str(tmp_path / "ray_tmp")}
    proc = run_tune(args, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, proc.stdout
    assert lines[0].startswith(f"error: {field}: ") and allowed in lines[0], lines[0]
    assert "Traceback" not in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nothing may be written (storage, mlflow.db, Ray)"


def test_resume_without_a_study_is_refused(tmp_path: Path, auth_env: dict[str, str]) -> None:
    proc = run_tune(["--resume"], env=auth_env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "error: --resume: no study of preset 'quickstart'" in proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_num_samples_must_be_positive(tmp_path: Path, auth_env: dict[str, str]) -> None:
    proc = run_tune(["--num-samples", "0"], env=auth_env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "error: --num-samples: must be >= 1" in proc.stdout
    assert list(tmp_path.iterdir()) == []


SCHEDULER_INPUTS = [
    (["search.scheduler={type: hyperband}"], "search.scheduler.type", "allowed: fifo, moasha"),
    (["search.scheduler={type: moasha, reduction_factor: 1.5}"], "search.scheduler.reduction_factor", "must be >= 2"),
    (["search.scheduler={type: moasha, grace_period: 0}"], "search.scheduler.grace_period", "must be >= 1"),
    (["search.scheduler={type: moasha, grace_period: 2.5}"], "search.scheduler.grace_period", "expected an integer"),
    (["search.scheduler={type: moasha, grace_period: 6}", "optim.epochs=6"], "search.scheduler.grace_period",
     "must be below the trial's epochs (train.optim.epochs = 6)"),
    (["search.scheduler={type: moasha, eta: 3}"], "search.scheduler.eta", "allowed keys here: type, grace_period"),
    (["search.scheduler={type: moasha}", "space.optim.epochs={low: 2, high: 10}"], "space.optim.epochs",
     "cannot be searched with search.scheduler.type: moasha"),
]


@pytest.mark.parametrize(("overrides", "field", "allowed"), SCHEDULER_INPUTS,
                         ids=[c[1] + ":" + c[2] for c in SCHEDULER_INPUTS])
def test_scheduler_settings_are_checked(overrides: list[str], field: str, allowed: str) -> None:
    """search.scheduler is validated with the rest of the preset (the CLI path is the same SpecError, above)."""
    with pytest.raises(SpecError) as err:
        load_spec(QUICKSTART, overrides)
    assert err.value.field == field and allowed in str(err.value), str(err.value)


def test_quick_start_is_the_calibrated_study() -> None:
    """The settings benchmarks/RESULTS.md "Quick start" measured (a front of 3 verified at 0.41-0.51 cheap
    AutoAttack on the test split, about 3 minutes on 2 cores): eps 25/255 for training and evaluation, training eps
    searched around it, an APGD objective on 200 validation images, 6 trials of 6 epochs, 1 worker of 1 CPU."""
    spec = load_spec(QUICKSTART)
    cfg = spec.train_config(spec.default_point())
    assert cfg.attack.eps == cfg.eval.attack.eps == 25 and spec.space["attack.eps"].contains(25)
    assert (spec.space["attack.eps"].low, spec.space["attack.eps"].high) == (8, 32)
    assert (cfg.eval.final_attack, cfg.eval.max_examples, cfg.eval.apgd_iters, cfg.eval.apgd_targets) == (
        "apgd", 200, 25, 3)
    assert (cfg.optim.epochs, spec.search.num_samples, spec.search.scheduler.type) == (6, 6, "fifo")
    assert (spec.scaling.num_workers, spec.scaling.cpus_per_worker, cfg.perf.num_threads) == (1, 1, 1)
    assert (cfg.data.val_size, cfg.data.test_size) == (360, 360)


@pytest.mark.parametrize("preset", ["cifar10_resnet18", "cifar10_wrn34", "cifar100_resnet18"])
def test_cifar_presets_rank_by_standard_apgd_on_the_whole_validation_split(preset: str) -> None:
    cfg = load_spec(REPO / "search_spaces" / f"{preset}.yaml").train_config({})
    assert (cfg.eval.final_attack, cfg.eval.apgd_iters, cfg.eval.apgd_targets) == ("apgd", 100, 9)
    assert cfg.eval.max_examples == cfg.eval.final_examples == 0 and cfg.data.val_size == 5000


def test_scheduler_defaults_and_smoke_shrink() -> None:
    spec = load_spec(QUICKSTART, ["search.scheduler={type: moasha, grace_period: 3}", "optim.epochs=8"])
    assert (spec.search.scheduler.type, spec.search.scheduler.grace_period) == ("moasha", 3)
    assert spec.search.scheduler.reduction_factor == 3.0  # the default eta
    assert load_spec(QUICKSTART, ["search.scheduler={type: fifo}"]).search.scheduler.type == "fifo"
    smoke = load_spec(QUICKSTART, ["search.scheduler={type: moasha, grace_period: 3}", "optim.epochs=8"],
                      smoke_test=True)
    assert smoke.train_config({}).optim.epochs == 2 and smoke.search.scheduler.grace_period == 1


def test_rungs_can_rank_on_annealed_probes() -> None:
    spec = load_spec(QUICKSTART, ["optim.epochs=8",
                                  "search.scheduler={type: moasha, reduction_factor: 3, rank_on: probe}"])
    assert spec.search.scheduler.rung_epochs(8) == (1, 3)
    assert spec.search.scheduler.metrics == ("probe_clean_acc", "probe_robust_acc")
    cfg = spec.train_config({})
    assert (cfg.probe.epochs, cfg.probe.fraction) == ((1, 3), 0.25)  # every trial probes at the rungs
    assert validate(spec.to_dict()).train_config({}).probe.epochs == (1, 3)  # a resumed study reads it back
    # eta 2.5: rungs at 1, 2.5 and 6.25 epochs are met at the ends of epochs 1, 3 and 7.
    odd = load_spec(QUICKSTART, ["optim.epochs=10", "search.scheduler={type: moasha, reduction_factor: 2.5}"])
    assert odd.search.scheduler.rung_epochs(10) == (1, 3, 7) and odd.train_config({}).probe.epochs == ()
    for overrides, field in ((["search.scheduler={type: moasha, rank_on: final}"], "search.scheduler.rank_on"),
                             (["search.scheduler={type: moasha, rank_on: probe, probe_fraction: 0}"],
                              "search.scheduler.probe_fraction"),
                             (["search.scheduler={type: moasha, rank_on: probe}", "probe.epochs=[2]"],
                              "train.probe.epochs")):
        with pytest.raises(SpecError) as err:
            load_spec(QUICKSTART, [*overrides, "optim.epochs=8"])
        assert err.value.field == field, str(err.value)
