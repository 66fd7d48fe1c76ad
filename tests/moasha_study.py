"""A small MOASHA study on a local Ray, for the tests: scripted learning curves, one trial at a time.

    python tests/moasha_study.py STORAGE NAME EVENTS [--resume]

runs (or, with ``--resume``, restores with ``Tuner.restore`` and finishes) the study ``STORAGE/NAME``. Every epoch a
trial appends ``<RUN_TAG> <curve> <trial id> <epoch>`` to the file ``EVENTS`` (``RUN_TAG`` from the environment)
and saves a checkpoint, which a resumed trial continues from. The scheduler's state is written as JSON to
``$MOASHA_PROBE.restored.json`` at the first step of the run (after Tune restored it) and to
``$MOASHA_PROBE.final.json`` at its end.

With ``max_t = 4``, ``eta = 2`` (rungs at epochs 1 and 2) and the trials in the order of ``CURVES``, the scheduler
stops t2 at epoch 1 (last of 3), t4 at epoch 2 (last of 4 at rung 2) and t6 at epoch 1, and lets t3 (dominating
every trial before it) and t5 (on the front with t3, best in clean accuracy) run to the end.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import optuna  # noqa: E402
from ray import tune  # noqa: E402

from orchestrator.moasha import MOASHA  # noqa: E402
from orchestrator.searcher import BudgetOptunaSearch  # noqa: E402

MAX_T, ETA = 4, 2
# (clean_acc, robust_acc) at epochs 1..4
CURVES: dict[str, list[tuple[float, float]]] = {
    "t0": [(0.5, 0.5), (0.6, 0.6), (0.7, 0.7), (0.8, 0.8)],
    "t1": [(0.4, 0.4), (0.5, 0.5), (0.6, 0.6), (0.7, 0.7)],
    "t2": [(0.3, 0.3), (0.4, 0.4), (0.5, 0.5), (0.6, 0.6)],
    "t3": [(0.9, 0.9), (0.95, 0.95), (0.96, 0.96), (0.97, 0.97)],
    "t4": [(0.85, 0.85), (0.3, 0.3), (0.3, 0.3), (0.3, 0.3)],
    "t5": [(1.0, 0.1), (1.0, 0.1), (1.0, 0.1), (1.0, 0.1)],
    "t6": [(0.2, 0.2), (0.2, 0.2), (0.2, 0.2), (0.2, 0.2)],
}
STOPPED = {"t2": 1, "t4": 2, "t6": 1}  # curve -> the epoch MOASHA stops it at


def scripted_trial(config: dict[str, Any]) -> None:
    """Report the curve named by ``config["curve"]``, one epoch at a time, with a checkpoint per epoch."""
    curve = CURVES[config["curve"]]
    trial_id = tune.get_context().get_trial_id()
    checkpoint = tune.get_checkpoint()
    start = 0
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            start = json.loads(Path(d, "state.json").read_text())["epoch"]
    for epoch in range(start + 1, len(curve) + 1):
        time.sleep(config["pause"])
        with open(config["events"], "a") as f:
            f.write(f"{os.environ.get('RUN_TAG', '-')} {config['curve']} {trial_id} {epoch}\n")
        clean, robust = curve[epoch - 1]
        with tempfile.TemporaryDirectory() as d:
            Path(d, "state.json").write_text(json.dumps({"epoch": epoch}))
            tune.report({"epoch": epoch, "clean_acc": clean, "robust_acc": robust},
                        checkpoint=tune.Checkpoint.from_directory(d))


class StateProbe(tune.Callback):
    """Writes the scheduler's state at the first step of a run and at its end (see the module docstring)."""

    def __init__(self, scheduler: MOASHA) -> None:
        self.scheduler = scheduler
        self.steps = 0

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self.steps == 0:
            self._write("restored")
        self.steps += 1

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._write("final")

    def _write(self, what: str) -> None:
        probe = os.environ.get("MOASHA_PROBE")
        if probe:
            Path(f"{probe}.{what}.json").write_text(json.dumps(self.scheduler.get_state()))


def build_tuner(storage: str, name: str, events: str, pause: float) -> tuple[tune.Tuner, MOASHA, BudgetOptunaSearch]:
    scheduler = MOASHA(max_t=MAX_T, grace_period=1, reduction_factor=ETA)
    searcher = BudgetOptunaSearch(
        space={"curve": optuna.distributions.CategoricalDistribution(list(CURVES))},
        metric=["clean_acc", "robust_acc"], mode=["max", "max"], max_t=MAX_T,
        points_to_evaluate=[{"curve": c} for c in CURVES], sampler=optuna.samplers.RandomSampler(seed=0))
    tuner = tune.Tuner(
        scripted_trial,
        param_space={"events": events, "pause": pause},
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=len(CURVES),
                                    max_concurrent_trials=1, reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0,
                                  callbacks=[scheduler.state_callback(), StateProbe(scheduler)],
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )
    return tuner, scheduler, searcher


def main(argv: list[str]) -> int:
    import ray

    storage, name, events = argv[:3]
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        if "--resume" in argv:
            tuner = tune.Tuner.restore(f"{storage}/{name}", scripted_trial, resume_unfinished=True,
                                       resume_errored=False, restart_errored=False)
        else:
            tuner = build_tuner(storage, name, events, pause=float(os.environ.get("MOASHA_PAUSE", "0")))[0]
        grid = tuner.fit()
        print(grid.get_dataframe()[["trial_id", "config/curve", "epoch"]].to_string(index=False))
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
