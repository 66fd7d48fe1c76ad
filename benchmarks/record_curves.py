"""Record learning curves of a pool of configurations from a preset's space, for ``search_efficiency.py`` to replay.

    python benchmarks/record_curves.py [--preset search_spaces/quickstart.yaml] [--pool 32] [--jobs 2]
                                       [--output benchmarks/results/curves_quickstart.json]

Draws ``--pool`` configurations from the preset's search space with Optuna's seeded ``RandomSampler`` (the first is
the preset's own values, as a study's enqueued first trial), and trains each one exactly as a trial of the preset
would (``arat_train.train``: the same data, model, schedule, evaluation and final objective), in ``--jobs``
processes of one thread each (the quick start's two trials at a time on two cores). After every epoch it records the
epoch's evaluation (``clean_acc``, ``robust_acc_pgd``; the last epoch adds the objective's APGD ``robust_acc``) and,
for every epoch before the last, an annealed probe (``arat_train.train.annealed_probe``: a copy trained a quarter of
an epoch at the decayed learning rate, evaluated, thrown away; it leaves the run unchanged). Each epoch's seconds
and each probe's seconds are timed apart, so a replay can charge a rung's probe only where a study would run it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def draw_pool(preset: str, size: int, seed: int) -> list[dict[str, Any]]:
    """The preset's default point, then ``size - 1`` seeded random draws from its space."""
    import optuna

    from orchestrator.space import load_spec, optuna_space

    spec = load_spec(preset)
    dists = optuna_space(spec)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "maximize"],
                                sampler=optuna.samplers.RandomSampler(seed=seed))
    pool = [dict(spec.default_point())]
    for _ in range(size - 1):
        trial = study.ask(dists)
        pool.append(dict(trial.params))
        study.tell(trial, [0.0, 0.0])
    return pool


def record(preset: str, index: int, params: dict[str, Any], threads: int) -> dict[str, Any]:
    """Train one configuration and return its per-epoch evaluations, probes and seconds."""
    import torch

    from arat_train.train import annealed_probe, prepare, run_epoch
    from orchestrator.space import load_spec

    torch.set_num_threads(threads)
    cfg = load_spec(preset).train_config(params)
    run = prepare(cfg)
    epochs: list[dict[str, float]] = []
    for epoch in range(cfg.optim.epochs):
        start = time.perf_counter()
        metrics = run_epoch(run, epoch)
        row = {"epoch": epoch + 1, "seconds": time.perf_counter() - start,
               **{k: float(metrics[k]) for k in ("clean_acc", "robust_acc", "robust_acc_pgd") if k in metrics}}
        if epoch + 1 < cfg.optim.epochs:
            start = time.perf_counter()
            probe = annealed_probe(run, epoch, metrics.get("balance_a", 0.0))
            row.update(probe_seconds=time.perf_counter() - start, probe_clean_acc=probe["probe_clean_acc"],
                       probe_robust_acc=probe["probe_robust_acc"])
        epochs.append(row)
        print(f"config {index:>3} epoch {epoch + 1}: clean {row['clean_acc']:.3f} robust {row['robust_acc']:.3f} "
              f"({row['seconds']:.1f} s)", flush=True)
    return {"index": index, "params": params, "epochs": epochs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=str(REPO / "search_spaces" / "quickstart.yaml"))
    p.add_argument("--pool", type=int, default=32, help="configurations to train (the first is the preset's own)")
    p.add_argument("--seed", type=int, default=1234, help="of the random draw of the pool")
    p.add_argument("--jobs", type=int, default=2, help="processes training at once, one thread each")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="preset overrides (e.g. optim.epochs=2 for a smoke run)")
    p.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "curves_quickstart.json")
    args = p.parse_args(argv)
    preset = args.preset
    if args.overrides:  # a preset with the overrides applied, so that every process reads the same spec
        from orchestrator.space import load_spec

        spec = load_spec(preset, args.overrides)
        derived = args.output.with_suffix(".preset.yaml")
        derived.parent.mkdir(parents=True, exist_ok=True)
        import yaml

        derived.write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
        preset = str(derived)
    pool = draw_pool(preset, args.pool, args.seed)
    start, load_before = time.perf_counter(), os.getloadavg()
    with ProcessPoolExecutor(max_workers=args.jobs) as ex:
        futures = [ex.submit(record, preset, i, params, 1) for i, params in enumerate(pool)]
        configs = [f.result() for f in futures]
    from orchestrator.space import load_spec

    spec = load_spec(preset)
    out = {
        "preset": Path(args.preset).name, "overrides": args.overrides, "pool_seed": args.seed, "jobs": args.jobs,
        "epochs": spec.train_config({}).optim.epochs, "space": {k: r.to_yaml() for k, r in spec.space.items()},
        "wall_s": round(time.perf_counter() - start, 1), "load_before": [round(v, 2) for v in load_before],
        "cpus": os.cpu_count(), "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                 text=True).stdout.strip(),
        "configs": configs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=1) + "\n")
    print(f"{len(configs)} configurations recorded in {out['wall_s']} s: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
