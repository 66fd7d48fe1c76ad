"""The end of a study on the console: the trials table with its front, what early stopping saved, the gradient-
masking suspects, and the verification to run next, with the time it should take on this machine.

The time is estimated from the study's own trials: the last epoch of an APGD-objective trial records
``final_s``, the seconds its objective attack took on ``final_examples`` validation images. Verifying a model with
cheap AutoAttack is the same kind of work on the test split at AutoAttack's standard settings, so its time scales
from that; standard AutoAttack adds FAB-T and Square on whatever is still robust.
"""

from __future__ import annotations

import math
import os

import pandas as pd

from . import interrupt
from .names import Status
from .records import TableError, epochs_summary, finished, format_table, read_trials_table, table_path
from .study import Study

EXIT_INTERRUPTED = 130  # 128 + SIGINT, for SIGTERM too
AA_STANDARD_WORK = 100 * (1 + 9)  # APGD-CE's iterations plus APGD-T's over its 9 targets, per image


def cheap_verify_seconds(front: pd.DataFrame, test_images: int, verify_threads: int | None = None) -> float:
    """About how long cheap AutoAttack takes on ``test_images`` images for every trial of ``front``, scaled from
    the trials' own APGD objective (NaN when they did not use one).

    A CPU trial measured its objective on ``perf.num_threads`` threads; verification runs alone on
    ``verify_threads`` (all the cores), so the time scales by their ratio (measured: 1-thread trials on 2 cores
    over-estimated cheap verification 1.8-2.4x without it).
    """
    needed = {"final_s", "final_examples", "config/eval.apgd_iters", "config/eval.apgd_targets"}
    if front.empty or not needed <= set(front.columns):
        return math.nan
    work = front["config/eval.apgd_iters"].astype(float) * (1 + front["config/eval.apgd_targets"].astype(float))
    per_trial = front["final_s"].astype(float) / front["final_examples"].astype(float) * test_images
    if verify_threads and {"config/perf.num_threads", "config/device"} <= set(front.columns):
        threads = pd.to_numeric(front["config/perf.num_threads"], errors="coerce").fillna(0)
        on_cpu = front["config/device"].astype(str).eq("cpu") & (threads > 0)
        per_trial = per_trial.where(~on_cpu, per_trial * (threads / verify_threads).clip(upper=1.0))
    return float((per_trial * AA_STANDARD_WORK / work).sum())


def verify_hint(study: Study, frame: pd.DataFrame) -> list[str]:
    """The verification commands to run next: cheap AutoAttack on the whole front first, standard on the model
    one picks, with the time the first should take."""
    front = frame[frame["pareto"]]
    cfg = study.spec.train_config({})
    test_images = cfg.data.test_size if cfg.data.dataset == "digits" else 10_000
    seconds = cheap_verify_seconds(front, test_images, os.cpu_count())
    about = f", about {_duration(seconds)} here" if math.isfinite(seconds) else ""
    base = f"python -m orchestrator.verify --study {study.path} --tracking-uri {study.tracking_uri}"
    return [f"verify the front with cheap AutoAttack (APGD-CE + APGD-T) on the test split ({len(front)} model(s)"
            f"{about}):", f"  {base} --version cheap",
            "then the model you pick with standard AutoAttack (adds FAB-T and Square; several times longer):",
            f"  {base} --trials <trial id>"]


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def final_report(study: Study) -> int:
    """Print the end of the study; its exit status: 0 if any trial finished, 1 if none did,
    :data:`EXIT_INTERRUPTED` if a stop signal ended it."""
    try:
        frame = read_trials_table(study.path)
    except TableError as err:  # stopped before the table was written
        print(f"no trials table: {err}", flush=True)
        return interrupted(study, 0) if interrupt.received() else 1
    print(format_table(frame, list(study.spec.space)), flush=True)
    if study.spec.search.scheduler.type != "fifo":
        print(epochs_summary(frame), flush=True)
    suspects = frame.loc[frame["masking_suspect"], "trial_id"].tolist()
    if suspects:
        print(f"gradient masking suspected (PGD over the objective's attack by more than "
              f"{study.spec.search.masking_threshold:g}): {', '.join(suspects)}", flush=True)
    print(f"trials table: {table_path(study.path)}", flush=True)
    n_interrupted = int((frame["status"] == Status.INTERRUPTED).sum())
    if n_interrupted or interrupt.received():
        return interrupted(study, n_interrupted)
    if finished(frame).empty:
        return 1
    print("\n".join(verify_hint(study, frame)), flush=True)
    return 0


def interrupted(study: Study, n_interrupted: int) -> int:
    """Say that a stop signal ended the study and how to continue it; the exit status."""
    signal_name = interrupt.received() or "a stop signal"
    print(f"study {study.name} interrupted by {signal_name}: {n_interrupted} trial(s) INTERRUPTED; their last "
          f"checkpoints are kept", flush=True)
    print(f"resume it: {study.resume_command()}", flush=True)
    return EXIT_INTERRUPTED
