"""Pick a model from a study's Pareto front under an accuracy constraint.

    python -m orchestrator.select --experiment NAME [--tracking-uri URI] [--min-clean X | --min-robust Y]
                                  [--verified] [--json]

* ``--min-clean X``: among front trials with ``clean_acc >= X``, the one with the highest ``robust_acc``;
* ``--min-robust Y``: among front trials with ``robust_acc >= Y``, the one with the highest ``clean_acc``;
* neither: the most robust front trial (highest ``robust_acc``).

Ties go to the other objective, then to the smaller trial id. The front is read from the child runs' tags
(``tags.pareto = 'true'``, written by :mod:`orchestrator.tracking`). With ``--verified`` the choice is made on the
verified front instead (``tags.pareto_verified = 'true'``, written by ``orchestrator.verify``), with the test
split's clean accuracy and AutoAttack accuracy as the two figures. Exit status: 0 with a choice, 1 when no front
trial meets the constraint, 2 when the store, the experiment or its front is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from mlflow import MlflowClient

from .names import (
    MODEL_ERROR_TAG,
    MODEL_URI_TAG,
    OBJECTIVES,
    PARETO_TAG,
    RUN_KIND_TAG,
    TRIAL_TAG,
    VERIFIED_TAG,
)
from .records import one_line_reason
from .tracking import default_tracking_uri, store_problem

EXIT_NONE_QUALIFIES = 1
EXIT_NOT_FOUND = 2


@dataclass(frozen=True)
class FrontTrial:
    """One front trial as read back from MLflow."""

    trial_id: str
    run_id: str
    clean_acc: float
    robust_acc: float
    model_uri: str = ""  # empty when no model was logged
    model_error: str = ""
    params: dict[str, str] = field(default_factory=dict)


class SelectionError(RuntimeError):
    """The store, the experiment or its front is missing (exit status 2)."""


VERIFIED_METRICS = ("test_clean_acc", "test_aa_acc")  # what orchestrator.verify logs on the test split


class NotVerified(SelectionError):
    """``--verified`` on a study none of whose trials has been verified yet."""


def read_front(client: MlflowClient, experiment: str, *, verified: bool = False) -> list[FrontTrial]:
    """The finished trials tagged ``pareto = 'true'`` (``pareto_verified = 'true'`` with ``verified``) in
    experiment ``experiment``; with ``verified`` their figures are the test split's clean and AutoAttack
    accuracy."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None or exp.lifecycle_stage != "active":
        raise SelectionError(f"no MLflow experiment named {experiment!r} in this store")
    tag, (clean_key, robust_key) = (VERIFIED_TAG, VERIFIED_METRICS) if verified else (PARETO_TAG, OBJECTIVES)
    if verified:
        anything = client.search_runs([exp.experiment_id], f"tags.{VERIFIED_TAG} != ''", max_results=1)
        if not anything:
            raise NotVerified(f"study {experiment!r} has no verified figures yet: run python -m orchestrator.verify "
                              f"--study <storage-path>/{experiment} (test split, AutoAttack) first")
    query = f"tags.{RUN_KIND_TAG} = 'trial' AND tags.{tag} = 'true' AND attributes.status = 'FINISHED'"
    front = []
    for run in client.search_runs([exp.experiment_id], query, max_results=10_000):
        metrics, tags = run.data.metrics, run.data.tags
        front.append(FrontTrial(
            trial_id=tags.get(TRIAL_TAG, run.info.run_id), run_id=run.info.run_id,
            clean_acc=float(metrics.get(clean_key, math.nan)), robust_acc=float(metrics.get(robust_key, math.nan)),
            model_uri=tags.get(MODEL_URI_TAG, ""), model_error=tags.get(MODEL_ERROR_TAG, ""),
            params=dict(run.data.params)))
    return front


def choose(front: Sequence[FrontTrial], min_clean: float | None = None,
           min_robust: float | None = None) -> FrontTrial | None:
    """The best trial of ``front`` under at most one constraint (see the module docstring); None if none meets it."""
    if min_clean is not None and min_robust is not None:
        raise ValueError("give at most one of min_clean and min_robust")
    valid = [t for t in front if math.isfinite(t.clean_acc) and math.isfinite(t.robust_acc)]
    if min_robust is not None:
        eligible = [t for t in valid if t.robust_acc >= min_robust]
        return min(eligible, key=lambda t: (-t.clean_acc, -t.robust_acc, t.trial_id), default=None)
    eligible = [t for t in valid if min_clean is None or t.clean_acc >= min_clean]
    return min(eligible, key=lambda t: (-t.robust_acc, -t.clean_acc, t.trial_id), default=None)


def _constraint(min_clean: float | None, min_robust: float | None) -> str:
    if min_clean is not None:
        return f"clean_acc >= {min_clean:g}, highest robust_acc"
    if min_robust is not None:
        return f"robust_acc >= {min_robust:g}, highest clean_acc"
    return "highest robust_acc (no constraint)"


def _describe(choice: FrontTrial, experiment: str, uri: str, constraint: str, n_front: int, verified: bool) -> str:
    model = choice.model_uri or f"(none logged{': ' + choice.model_error if choice.model_error else ''})"
    which = "verified front trials, test-split figures" if verified else "front trials, validation figures"
    lines = [
        f"study:       {experiment} ({n_front} {which}; {constraint})",
        f"trial_id:    {choice.trial_id}",
        f"run_id:      {choice.run_id}",
        f"clean_acc:   {choice.clean_acc:.4f}" + ("  (test)" if verified else ""),
        f"robust_acc:  {choice.robust_acc:.4f}" + ("  (test, AutoAttack)" if verified else ""),
        f"model_uri:   {model}",
    ]
    if choice.model_uri:
        lines.append(f"load with:   MLFLOW_TRACKING_URI='{uri}' python -c \"import mlflow.pytorch; "
                     f"model = mlflow.pytorch.load_model('{choice.model_uri}')\"")
    return "\n".join(lines)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.select", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", required=True, help="the study name (its MLflow experiment)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: sqlite:///<cwd>/mlflow.db, the embedded store)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--min-clean", type=float, default=None, metavar="X",
                       help="require clean_acc >= X; maximise robust_acc")
    group.add_argument("--min-robust", type=float, default=None, metavar="Y",
                       help="require robust_acc >= Y; maximise clean_acc")
    parser.add_argument("--verified", action="store_true",
                        help="choose on the verified front (test split, AutoAttack; see orchestrator.verify)")
    parser.add_argument("--json", action="store_true", help="print the choice as one JSON object")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parse(argv)
    uri = args.tracking_uri or default_tracking_uri()
    problem = store_problem(uri)
    if problem:
        print(f"error: {problem}; run from the study's directory or pass --tracking-uri", file=sys.stderr)
        return EXIT_NOT_FOUND
    try:
        front = read_front(MlflowClient(uri), args.experiment, verified=args.verified)
    except SelectionError as exc:
        print(f"error: {exc} ({uri})", file=sys.stderr)
        return EXIT_NOT_FOUND
    except Exception as exc:  # a store MLflow cannot read (a damaged database, a server error)
        print(f"error: cannot read the MLflow store at {uri}: {one_line_reason(str(exc)) or type(exc).__name__}",
              file=sys.stderr)
        return EXIT_NOT_FOUND
    if not front:
        which = "verified front" if args.verified else "Pareto front"
        print(f"error: study {args.experiment!r} has no finished trial on its {which} yet", file=sys.stderr)
        return EXIT_NOT_FOUND
    constraint = _constraint(args.min_clean, args.min_robust)
    choice = choose(front, args.min_clean, args.min_robust)
    if choice is None:
        clean = [t.clean_acc for t in front]
        robust = [t.robust_acc for t in front]
        print(f"no front trial of study {args.experiment!r} meets {constraint.split(',')[0]}: the front spans "
              f"clean_acc {min(clean):.4f}-{max(clean):.4f} and robust_acc {min(robust):.4f}-{max(robust):.4f}",
              file=sys.stderr)
        return EXIT_NONE_QUALIFIES
    if args.json:
        print(json.dumps({"experiment": args.experiment, "constraint": constraint, "verified": args.verified,
                          **asdict(choice)}, sort_keys=True))
    else:
        print(_describe(choice, args.experiment, uri, constraint, len(front), args.verified))
    return 0


if __name__ == "__main__":
    sys.exit(main())
