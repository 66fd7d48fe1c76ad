"""Verify a study's Pareto front on the held-back split: clean, PGD and AutoAttack accuracy of each front model.

    python -m orchestrator.verify --study runs/NAME [--trials front|all|ID,ID] [--split test|val]
                                  [--version standard|cheap] [--n-examples N] [--tracking-uri URI]

The search ranks trials by PGD on the validation split; PGD over-states robustness, and the test split is kept
for the chosen models' final figures (docs/design.md, "Verification"). For each selected trial this loads its last checkpoint (from
the study's ``trials.parquet``; local or a URI such as s3://), evaluates the adv-BN branch on ``--split`` with the
study's evaluation threat model: clean, PGD (the eval attack), AutoAttack (``standard`` by default). It writes
``<study>/verified.csv``, logs ``<split>_clean_acc``, ``<split>_robust_acc`` and ``<split>_aa_acc`` to each
trial's MLflow run (experiment = study name), and prints a table with the search figures beside them.

Exit status: 0 when every selected trial was verified, 1 when some could not be (their error is in the table),
2 for bad input (no study, no such trial, a bad option, an MLflow store or experiment that is not there), before any
evaluation.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from orchestrator.names import RUN_KIND_TAG, TRIAL_TAG, VERIFIED_TABLE, Status
from orchestrator.records import TableError, read_trials_table
from orchestrator.storage import absolute, local_dir, write_text
from orchestrator.tracking import default_tracking_uri

log = logging.getLogger("orchestrator.verify")

RESULT_NAME = VERIFIED_TABLE
NEEDED_COLUMNS = ("trial_id", "status", "clean_acc", "robust_acc", "checkpoint_path", "pareto")


@dataclass
class Verified:
    """One trial's search figures and its verification (NaN and an error when it could not be verified)."""

    trial_id: str
    search_clean_acc: float
    search_robust_acc: float
    clean_acc: float = math.nan
    pgd_acc: float = math.nan
    aa_acc: float = math.nan
    n_examples: int = 0
    seconds: float = 0.0
    error: str = ""


class VerifyError(RuntimeError):
    """Bad input: the study, a trial or an option (exit status 2)."""


def read_trials(study: str) -> pd.DataFrame:
    """``<study>/trials.parquet`` (a local directory or a URI) as written by ``orchestrator/tune.py``."""
    try:
        return read_trials_table(study, required=NEEDED_COLUMNS)
    except TableError as err:
        raise VerifyError(f"--study: {err}; pass the study's directory, <storage-path>/<study name>, after its "
                          "first run") from None


def check_tracking(study: str, given: str | None) -> str:
    """The MLflow store the figures go to (``--tracking-uri``, else the study's stored one, else the default):
    :class:`VerifyError` unless it and the study's experiment are there, so no evaluation runs for nothing."""
    from mlflow import MlflowClient

    from orchestrator.names import PENDING_RECORDS
    from orchestrator.space import SpecError
    from orchestrator.storage import exists
    from orchestrator.study import stored_tracking_uri
    from orchestrator.tracking import store_problem

    try:
        uri = given or stored_tracking_uri(study, "--study") or default_tracking_uri()
    except SpecError as err:
        raise VerifyError(str(err)) from None
    problem = store_problem(uri)
    if problem:
        raise VerifyError(f"--tracking-uri: {problem}; pass the study's MLflow tracking URI")
    name = Path(study.rstrip("/")).name
    try:
        found = MlflowClient(uri).get_experiment_by_name(name)
    except Exception as err:  # a store MLflow cannot read
        raise VerifyError(f"--tracking-uri: cannot read the MLflow store at {uri}: "
                          f"{str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__}") \
            from None
    if found is None:
        pending = f"{study.rstrip('/')}/{PENDING_RECORDS}"
        hint = (f"; its records wait in {pending}: log them first with python -m orchestrator.replay --study {study}"
                if exists(absolute(pending)) else "; pass the study's MLflow tracking URI")
        raise VerifyError(f"--tracking-uri: no MLflow experiment {name!r} at {uri}{hint}")
    return uri


def select_trials(frame: pd.DataFrame, which: str) -> pd.DataFrame:
    """The finished trials named by ``which``: ``front`` (its Pareto front), ``all``, or comma-separated ids."""
    finished = frame[frame["status"] == Status.FINISHED]
    if which == "front":
        chosen = finished[finished["pareto"].astype(bool)]
    elif which == "all":
        chosen = finished
    else:
        ids = [t.strip() for t in which.split(",") if t.strip()]
        unknown = sorted(set(ids) - set(frame["trial_id"]))
        if unknown:
            raise VerifyError(f"--trials: no trial {', '.join(unknown)} in this study; it has "
                              f"{', '.join(sorted(frame['trial_id']))}")
        unfinished = sorted(set(ids) - set(finished["trial_id"]))
        if unfinished:
            raise VerifyError(f"--trials: {', '.join(unfinished)} did not finish; only finished trials have a "
                              "final model")
        chosen = finished[finished["trial_id"].isin(ids)]
    if chosen.empty:
        raise VerifyError(f"--trials {which}: no finished trial to verify in this study")
    return chosen.sort_values(["clean_acc", "trial_id"], ascending=[False, True])


def verify_trial(row: pd.Series, args: argparse.Namespace) -> Verified:
    """Clean, PGD (the study's eval attack) and AutoAttack accuracy of one trial's last checkpoint."""
    import torch

    from arat_train.checkpoint import CHECKPOINT_NAME
    from arat_train.evaluate import load_for_evaluation
    from arat_train.robustness import autoattack_accuracy, pgd_accuracy
    from arat_train.train import resolve_device

    out = Verified(str(row["trial_id"]), float(row["clean_acc"]), float(row["robust_acc"]))
    uri = row.get("checkpoint_path")
    if not isinstance(uri, str) or not uri:
        out.error = "no checkpoint recorded for this trial"
        return out
    device = resolve_device(args.device)
    try:
        with local_dir(uri) as local:
            model, cfg, data = load_for_evaluation(Path(local) / CHECKPOINT_NAME, args.split, device,
                                                   data_root=args.data_root, seed=args.seed)
        ev = cfg.eval.attack
        common = {"eps": ev.eps, "norm": ev.norm, "seed": args.seed, "batch_size": args.batch_size,
                  "n_examples": args.n_examples}
        if args.threads:
            torch.set_num_threads(args.threads)
        pgd = pgd_accuracy(model, data.x, data.y, steps=ev.steps, step_size=ev.step, restarts=ev.restarts,
                           **common)
        aa = autoattack_accuracy(model, data.x, data.y, version=args.version, **common)
    except Exception as err:  # one unreadable checkpoint must not stop the others
        log.warning("trial %s: %s", out.trial_id, err)
        out.error = f"{type(err).__name__}: {err}"
        return out
    out.clean_acc, out.pgd_acc, out.aa_acc = pgd.clean_acc, pgd.robust_acc, aa.robust_acc
    out.n_examples, out.seconds = pgd.n_examples, pgd.seconds + aa.seconds
    return out


def log_to_mlflow(results: Sequence[Verified], study_name: str, uri: str, split: str, version: str) -> int:
    """Log each verified trial's figures to its MLflow run; return how many runs were found."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(study_name)
    if exp is None:
        log.warning("no MLflow experiment %r at %s: figures not logged there", study_name, uri)
        return 0
    runs = client.search_runs([exp.experiment_id], f"tags.{RUN_KIND_TAG} = 'trial'", max_results=10_000)
    by_trial = {r.data.tags.get(TRIAL_TAG): r.info.run_id for r in runs}
    found = 0
    for r in results:
        run_id = by_trial.get(r.trial_id)
        if run_id is None or r.error:
            continue
        for key, value in ((f"{split}_clean_acc", r.clean_acc), (f"{split}_robust_acc", r.pgd_acc),
                           (f"{split}_aa_acc", r.aa_acc)):
            client.log_metric(run_id, key, value)
        client.set_tag(run_id, f"{split}_aa_version", version)
        client.set_tag(run_id, f"{split}_examples", str(r.n_examples))
        found += 1
    return found


def write_results(results: Sequence[Verified], study: str) -> str:
    """``<study>/verified.csv`` (local or URI); returns where it went."""
    path = f"{study.rstrip('/')}/{RESULT_NAME}"
    write_text(absolute(path), pd.DataFrame([asdict(r) for r in results]).to_csv(index=False))
    return path


def format_table(results: Sequence[Verified], split: str, version: str) -> str:
    head = (f"{'trial':<10} {'search clean':>12} {'search PGD':>10} {split + ' clean':>11} {split + ' PGD':>9} "
            f"{split + ' AA':>8}  {'n':>5}")
    lines = [f"AutoAttack {version}: the adv-BN branch in eval mode, the study's eval threat model", head]
    for r in results:
        if r.error:
            lines.append(f"{r.trial_id:<10} {r.search_clean_acc:>12.4f} {r.search_robust_acc:>10.4f}  {r.error}")
        else:
            lines.append(f"{r.trial_id:<10} {r.search_clean_acc:>12.4f} {r.search_robust_acc:>10.4f} "
                         f"{r.clean_acc:>11.4f} {r.pgd_acc:>9.4f} {r.aa_acc:>8.4f}  {r.n_examples:>5}")
    return "\n".join(lines)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m orchestrator.verify", description=__doc__.split("\n\n")[0])
    p.add_argument("--study", required=True, help="the study's directory: <storage-path>/<study name> (or a URI)")
    p.add_argument("--trials", default="front", help="front (default), all, or comma-separated trial ids")
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.add_argument("--version", choices=("standard", "cheap"), default="standard", help="AutoAttack version")
    p.add_argument("--n-examples", type=int, help="first N examples of the split (default: all)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--data-root", help="where the data set is, if not where the study trained")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: the one stored with the study, else "
                        "sqlite:///<cwd>/mlflow.db)")
    args = p.parse_args(argv)
    for name in ("n_examples", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        chosen = select_trials(read_trials(args.study), args.trials)
        uri = check_tracking(args.study, args.tracking_uri)
    except VerifyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results = [verify_trial(row, args) for _, row in chosen.iterrows()]
    print(format_table(results, args.split, args.version), flush=True)
    print(f"written: {write_results(results, args.study)}")
    logged = log_to_mlflow(results, Path(args.study.rstrip("/")).name, uri, args.split, args.version)
    print(f"logged to {logged} MLflow run(s) at {uri}")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
