"""Verify a study's Pareto front on the held-back split: clean, PGD and AutoAttack accuracy of each front model,
and the front those figures make.

    python -m orchestrator.verify --study runs/NAME [--trials front|all|ID,ID] [--split test|val]
                                  [--version standard|cheap] [--n-examples N] [--tracking-uri URI]

The search ranks trials on the validation split; the test split is kept for the chosen models' final figures
(docs/design.md, "Verification"). For each selected trial this loads its last checkpoint (from the study's
``trials.parquet``; local or a URI such as s3://), evaluates the adv-BN branch on ``--split`` with the study's
evaluation threat model: clean, PGD (the eval attack), AutoAttack (``standard`` by default). It adds the figures to
``<study>/verified.csv`` (a trial verified again replaces its row), logs ``<split>_clean_acc``,
``<split>_robust_acc`` and ``<split>_aa_acc`` to each trial's MLflow run (experiment = study name), and prints a
table with the search figures beside them.

On the test split it then computes the **verified front** over (test clean, test AutoAttack) of every trial
verified so far with that AutoAttack version, tags their runs ``pareto_verified`` (``true``/``false``) and
``pareto_verified_rank`` (rewritten, never duplicated, when more trials are verified), writes
``verified_front.png`` and ``verified_front.html`` next to the table and to the study's run (``pareto/``), and
prints both fronts and the trials that left the front.

Exit status: 0 when every selected trial was verified, 1 when some could not be (their error is in the table),
2 for bad input (no study, no such trial, a bad option, an MLflow store or experiment that is not there), before any
evaluation.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from orchestrator.names import (
    RUN_KIND_TAG,
    STUDY_TAG,
    TRIAL_TAG,
    VERIFIED_RANK_TAG,
    VERIFIED_TABLE,
    VERIFIED_TAG,
    Status,
)
from orchestrator.records import TableError, read_trials_table
from orchestrator.report import VerifiedFront, build_verified_front, write_verified
from orchestrator.storage import absolute, exists, local_dir, read_text, write_text
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


def verify_trial(row: pd.Series, args: argparse.Namespace, say: Callable[[str], None] = lambda _: None) -> Verified:
    """Clean, PGD (the study's eval attack) and AutoAttack accuracy of one trial's last checkpoint; ``say`` gets a
    progress line after each attack."""
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
        say(f"clean {pgd.clean_acc:.4f}, {pgd.attack} {pgd.robust_acc:.4f} on {pgd.n_examples} {args.split} images "
            f"({pgd.seconds:.1f} s); AutoAttack {args.version}:")
        aa = autoattack_accuracy(model, data.x, data.y, version=args.version, **common,
                                 on_attack=lambda line: say(f"  {line}"))
    except Exception as err:  # one unreadable checkpoint must not stop the others
        log.warning("trial %s: %s", out.trial_id, err)
        out.error = f"{type(err).__name__}: {err}"
        return out
    out.clean_acc, out.pgd_acc, out.aa_acc = pgd.clean_acc, pgd.robust_acc, aa.robust_acc
    out.n_examples, out.seconds = pgd.n_examples, pgd.seconds + aa.seconds
    return out


def _trial_runs(client: MlflowClient, study_name: str) -> tuple[str, dict[str, str]]:
    """(the study's parent run id or "", trial id -> run id) in the study's experiment."""
    exp = client.get_experiment_by_name(study_name)
    if exp is None:
        return "", {}
    runs = client.search_runs([exp.experiment_id], f"tags.{RUN_KIND_TAG} != ''", max_results=10_000)
    parent = next((r.info.run_id for r in runs if r.data.tags.get(RUN_KIND_TAG) == "study"
                   and r.data.tags.get(STUDY_TAG) == study_name), "")
    return parent, {r.data.tags[TRIAL_TAG]: r.info.run_id for r in runs if r.data.tags.get(RUN_KIND_TAG) == "trial"
                    and TRIAL_TAG in r.data.tags}


def log_to_mlflow(results: Sequence[Verified], study_name: str, uri: str, split: str, version: str,
                  front: VerifiedFront | None = None, report_dir: str | None = None) -> int:
    """Log each verified trial's figures to its MLflow run, and the verified front's tags and plots when given;
    return how many trial runs were found."""
    client = MlflowClient(uri)
    parent, by_trial = _trial_runs(client, study_name)
    if not by_trial:
        log.warning("no MLflow experiment %r with trial runs at %s: figures not logged there", study_name, uri)
        return 0
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
    if front is not None:
        for row in front.trials.itertuples():
            run_id = by_trial.get(str(row.trial_id))
            if run_id is not None and row.verified_rank >= 0:
                client.set_tag(run_id, VERIFIED_TAG, "true" if row.verified_pareto else "false")
                client.set_tag(run_id, VERIFIED_RANK_TAG, str(int(row.verified_rank)))
        if parent and report_dir is not None:
            client.log_artifacts(parent, report_dir, "pareto")
    return found


def merge_results(results: Sequence[Verified], study: str, split: str, version: str) -> pd.DataFrame:
    """Every verification of the study so far (``verified.csv``), this run's replacing a trial's earlier row of the
    same split and AutoAttack version."""
    new = pd.DataFrame([asdict(r) for r in results]).assign(split=split, version=version)
    path = f"{study.rstrip('/')}/{RESULT_NAME}"
    if exists(absolute(path)):
        import io

        old = pd.read_csv(io.StringIO(read_text(absolute(path))), dtype={"trial_id": str})
        if {"split", "version"} <= set(old.columns):
            same = (old["split"] == split) & (old["version"] == version) & old["trial_id"].isin(new["trial_id"])
            new = pd.concat([old[~same], new], ignore_index=True)
    return new


def write_results(table: pd.DataFrame, study: str) -> str:
    """``<study>/verified.csv`` (local or URI); returns where it went."""
    path = f"{study.rstrip('/')}/{RESULT_NAME}"
    write_text(absolute(path), table.to_csv(index=False))
    return path


def format_fronts(vf: VerifiedFront, trials: pd.DataFrame) -> str:
    """Both fronts and what moved, for the console."""
    search = sorted(trials.loc[trials["pareto"].astype(bool), "trial_id"].astype(str))
    verified = list(vf.front["trial_id"])
    unverified = sorted(set(search) - set(vf.trials["trial_id"]))
    lines = [f"search front (validation, the study's objective): {', '.join(search) or '-'}",
             f"verified front ({vf.split}, AutoAttack {vf.version}, over {int((vf.trials['verified_rank'] >= 0).sum())}"
             f" verified trials): {', '.join(verified) or '-'}",
             f"left the front when verified: {', '.join(vf.left) or 'none'}",
             f"joined the front when verified: {', '.join(vf.joined) or 'none'}"]
    if unverified:
        lines.append(f"search-front trials not verified yet: {', '.join(unverified)}")
    return "\n".join(lines)


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


def _say(prefix: str, line: str) -> None:
    print(f"{prefix} {line}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        trials = read_trials(args.study)
        chosen = select_trials(trials, args.trials)
        uri = check_tracking(args.study, args.tracking_uri)
    except VerifyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results = []
    for i, (_, row) in enumerate(chosen.iterrows(), start=1):
        prefix = f"[{i}/{len(chosen)}] trial {row['trial_id']}:"
        print(f"{prefix} loading its last checkpoint", flush=True)
        results.append(verify_trial(row, args, partial(_say, prefix)))
        done = results[-1]
        print(f"{prefix} " + (f"could not be verified: {done.error}" if done.error else
                              f"AutoAttack {args.version} {done.aa_acc:.4f} ({done.seconds:.1f} s in all)"), flush=True)
    print(format_table(results, args.split, args.version), flush=True)
    table = merge_results(results, args.study, args.split, args.version)
    print(f"written: {write_results(table, args.study)}")
    name = Path(args.study.rstrip("/")).name
    front = None
    if args.split == "test":  # the verified front is a test-split notion: validation figures chose the search front
        mine = table[(table["split"] == "test") & (table["version"] == args.version)]
        front = build_verified_front(mine, trials, split="test", version=args.version,
                                     title=f"Study {name}: search and verified fronts")
        print(format_fronts(front, trials))
        if "://" not in args.study:  # a bucket study gets the plots in MLflow only
            print(f"plots: {', '.join(str(p) for p in write_verified(front, args.study).values())}")
    with tempfile.TemporaryDirectory(prefix="arat_verified_") as tmp:
        if front is not None:
            write_verified(front, tmp)
        logged = log_to_mlflow(results, name, uri, args.split, args.version, front,
                               tmp if front is not None else None)
    print(f"logged to {logged} MLflow run(s) at {uri}")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
