"""What the orchestration costs: N trials of one fixed small configuration through ``orchestrator/tune.py``
(local Ray, Tune, a Ray Train run per trial, checkpoints to storage, MLflow tracking) against the same N runs of
``arat_train.train`` one after another in this process (checkpoints written too).

    python benchmarks/orchestration_overhead.py [--trials 3] [--epochs 2] [--workers 1] [--threads 1]
                                                [--output benchmarks/results/orchestration_overhead.json]

Trials run one at a time (``search.max_concurrent=1``) with the same thread count as the baseline, so the
difference is orchestration, not parallelism. Prints the per-trial overhead in seconds and the wall-time ratio and
writes them as JSON.
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

REPO = Path(__file__).resolve().parent.parent
sys.path[0] = str(REPO)  # run as a script: import the repo's packages, not benchmarks/ neighbours

from arat_train.config import TrainConfig  # noqa: E402
from arat_train.train import train  # noqa: E402
from orchestrator.space import load_spec  # noqa: E402

PRESET = REPO / "search_spaces" / "quickstart.yaml"


def overrides(args: argparse.Namespace) -> list[str]:
    """The quick-start preset pinned to one configuration (the paper's defaults), run one trial at a time."""
    fixed = [f"space.{key}=null" for key in ("arat.gamma", "attack.eps", "attack.steps", "attack.step_ratio")]
    return [*fixed, "space.arat.predictor_ratio={choices: [0.25]}", f"optim.epochs={args.epochs}",
            f"perf.num_threads={args.threads}", f"scaling.num_workers={args.workers}",
            f"scaling.cpus_per_worker={args.threads}", "search.max_concurrent=1", "search.enqueue_defaults=false"]


def run_tune(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    cmd = [sys.executable, str(REPO / "orchestrator" / "tune.py"), "--config", str(PRESET), "--name", "bench",
           "--num-samples", str(args.trials), "--storage-path", str(workdir / "runs"),
           "--tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}"]
    cmd += [a for o in overrides(args) for a in ("--set", o)]
    start = time.perf_counter()
    started = None
    with subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        log = []
        for line in proc.stdout:
            log.append(line)
            if started is None and line.startswith("study bench:"):  # Ray is up, the cluster checked
                started = time.perf_counter() - start
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stdout.write("".join(log[-60:]))
        raise SystemExit(f"tune.py failed with exit status {proc.returncode}")
    return {"wall_s": wall, "startup_s": started or 0.0}


def run_baseline(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    spec = load_spec(PRESET, overrides(args), num_samples=args.trials)
    cfg: TrainConfig = spec.train_config(spec.default_point())
    start = time.perf_counter()
    for i in range(args.trials):
        train(cfg, checkpoint_dir=workdir / f"baseline_{i}")
    return {"wall_s": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workers", type=int, default=1, help="DDP workers per Tune trial (the baseline uses one)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process, and CPUs per worker")
    p.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "orchestration_overhead.json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="arat-bench-") as tmp:
        workdir = Path(tmp)
        baseline = run_baseline(args, workdir)
        tuned = run_tune(args, workdir)
    n = args.trials
    result = {
        "trials": n, "epochs": args.epochs, "workers_per_trial": args.workers, "threads": args.threads,
        "baseline_wall_s": round(baseline["wall_s"], 2),
        "tune_wall_s": round(tuned["wall_s"], 2),
        "tune_startup_s": round(tuned["startup_s"], 2),
        "overhead_per_trial_s": round((tuned["wall_s"] - baseline["wall_s"]) / n, 2),
        "overhead_per_trial_after_startup_s": round((tuned["wall_s"] - tuned["startup_s"] - baseline["wall_s"]) / n,
                                                    2),
        "wall_ratio": round(tuned["wall_s"] / baseline["wall_s"], 2),
        "cpus": os.cpu_count(), "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                 text=True).stdout.strip(),
    }
    print(f"{n} trials x {args.epochs} epochs: in-process {result['baseline_wall_s']} s, through tune.py "
          f"{result['tune_wall_s']} s (Ray start and checks {result['tune_startup_s']} s)")
    print(f"overhead per trial: {result['overhead_per_trial_s']} s "
          f"({result['overhead_per_trial_after_startup_s']} s after start-up); wall-time ratio {result['wall_ratio']}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
