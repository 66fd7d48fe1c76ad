"""Log the MLflow records a study could not write (its store was unreachable when the study ended).

    python -m orchestrator.replay --study runs/NAME [--tracking-uri URI] [--wait SECONDS]

The study saved them, in order, to ``<study>/mlflow_pending.jsonl`` with its tracker's settings
(:mod:`orchestrator.tracking_queue`). They are written as the study would have written them: the same experiment,
parent run and one run per trial, found again by their tags, so nothing already logged is created twice. The file
is removed once every record is written. ``--tracking-uri`` sends them to another store than the study's.

Exit status: 0 when everything is logged (or nothing was pending), 1 when some records are still not logged (the
file keeps them), 2 for bad input: a file that is not one of pending records, or a store that is not there.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from orchestrator.storage import absolute, exists
from orchestrator.tracking import StudyTracker, store_problem
from orchestrator.tracking_queue import WriteQueue, describe, load_pending, pending_path

log = logging.getLogger("orchestrator.replay")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m orchestrator.replay", description=__doc__.split("\n\n")[0])
    p.add_argument("--study", required=True, help="the study's directory: <storage-path>/<study name> (or a URI)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the study's own)")
    p.add_argument("--wait", type=float, default=30.0, help="seconds to wait for an unreachable store (default 30)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    path = pending_path(args.study)
    if not exists(absolute(path)):
        print(f"nothing to log: no {path}")
        return 0
    try:
        settings, records = load_pending(path)
        tracker = StudyTracker.from_settings(settings, args.tracking_uri)
    except (OSError, ValueError, TypeError, KeyError) as err:
        print(f"error: --study: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 2
    problem = store_problem(tracker.tracking_uri)
    if problem:
        print(f"error: {problem}; start it, or pass --tracking-uri", file=sys.stderr)
        return 2
    queue = WriteQueue(tracker, path).start()  # writes the file's records, then removes it
    left = queue.close(wait_away_s=args.wait)
    if left:
        print(f"{describe(left)} still not logged; they stay in {path}", file=sys.stderr)
        return 1
    print(f"logged {describe(records)} to {tracker.tracking_uri} (study {tracker.study_name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
