"""Time the README's main command end to end and record the front it finds, so the README's figures stay true.

    python benchmarks/quickstart.py [--verify cheap|standard|none] [--set KEY=VALUE ...]
                                    [--output benchmarks/results/quickstart.json]

Runs ``python orchestrator/tune.py`` (the default preset, a local Ray, SQLite MLflow) in a fresh directory, the way
a new user does after installing, and times it. Then, unless ``--verify none``, it verifies the study's front on the
test split with ``python -m orchestrator.verify`` (cheap AutoAttack by default; ``standard`` for the figures a
user would quote) and times that too. Writes the wall times, the search front and the verified figures as JSON and
prints a table, with the trials' statuses, the trial-epochs they trained and the hypervolume of the full-budget
front (so a fifo and a moasha run of the same preset and seed make a real end-to-end pair). Run it on an idle
machine: say what else ran when you quote it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path[0] = str(REPO)  # run as a script: import the repo's packages, not benchmarks/ neighbours

from orchestrator.pareto import hypervolume  # noqa: E402


def _run(cmd: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout[-6000:])
        raise SystemExit(f"{' '.join(cmd[:3])} failed with exit status {proc.returncode}")
    return wall, proc.stdout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--verify", choices=("cheap", "standard", "none"), default="cheap")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="passed on to tune.py (e.g. a smaller study for a smoke run)")
    p.add_argument("--hv-reference", type=float, nargs=2, default=[0.0, 0.0], metavar=("CLEAN", "ROBUST"),
                   help="reference point of the recorded hypervolume (default: the study's own, (0, 0))")
    p.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "quickstart.json")
    args = p.parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="arat-quickstart-") as tmp:
        work = Path(tmp)
        cmd = [sys.executable, str(REPO / "orchestrator" / "tune.py"), "--name", "quickstart-bench"]
        cmd += [a for o in args.overrides for a in ("--set", o)]
        study_s, _ = _run(cmd, work)
        study = work / "runs" / "quickstart-bench"
        frame = pd.read_parquet(study / "trials.parquet")
        front = frame[frame["pareto"]].sort_values("clean_acc", ascending=False)
        full = frame[frame["status"] == "FINISHED"]
        result: dict = {
            "study_wall_s": round(study_s, 1), "trials": len(frame),
            "finished": len(full),
            "stopped": int((frame["status"] == "STOPPED").sum()),
            "trial_epochs": int(frame["epoch"].fillna(0).sum()),
            # of the full-budget trials' (clean_acc, robust_acc), against the reference of --hv-reference
            "hypervolume": hypervolume(full[["clean_acc", "robust_acc"]].to_numpy(), args.hv_reference),
            "hv_reference": args.hv_reference,
            "trial_time_total_s": [round(float(v), 1) for v in frame["time_total_s"]],
            "final_objective_s": [round(float(v), 2) for v in frame.get("final_s", pd.Series(dtype=float))],
            "front": [{"trial_id": r.trial_id, "clean_acc": r.clean_acc, "robust_acc": r.robust_acc,
                       "robust_acc_pgd": r.robust_acc_pgd} for r in front.itertuples()],
        }
        if args.verify != "none":
            verify = [sys.executable, "-m", "orchestrator.verify", "--study", str(study), "--version", args.verify,
                      "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}"]
            verify_s, _ = _run(verify, REPO)
            table = pd.read_csv(study / "verified.csv").set_index("trial_id")
            result["verify"] = {"version": args.verify, "wall_s": round(verify_s, 1)}
            for row in result["front"]:
                row.update(test_clean_acc=float(table.loc[row["trial_id"], "clean_acc"]),
                           test_aa_acc=float(table.loc[row["trial_id"], "aa_acc"]))
    result.update({"load_before": [round(v, 2) for v in load_before],
                   "load_after": [round(v, 2) for v in os.getloadavg()], "cpus": os.cpu_count(),
                   "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                   "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                            text=True).stdout.strip()})
    print(f"study: {result['study_wall_s']} s wall, {result['finished']} of {result['trials']} trials finished, "
          f"{result['stopped']} stopped, {result['trial_epochs']} trial-epochs, hypervolume "
          f"{result['hypervolume']:.4f}; load before {result['load_before'][0]}")
    head = f"{'trial':<10}{'clean':>8}{'robust':>8}{'PGD':>8}"
    if "verify" in result:
        head += f"{'test clean':>12}{'test AA':>9}"
        print(f"verify ({result['verify']['version']} AutoAttack): {result['verify']['wall_s']} s wall")
    print(head)
    for r in result["front"]:
        line = f"{r['trial_id']:<10}{r['clean_acc']:>8.3f}{r['robust_acc']:>8.3f}{r['robust_acc_pgd']:>8.3f}"
        if "test_aa_acc" in r:
            line += f"{r['test_clean_acc']:>12.3f}{r['test_aa_acc']:>9.3f}"
        print(line)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
