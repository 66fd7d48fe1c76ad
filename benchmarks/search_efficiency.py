"""fifo against moasha on digits: hypervolume of the full-budget front against trial-epochs and wall time.

    python benchmarks/search_efficiency.py [--curves benchmarks/results/curves_quickstart.json] [--seeds 10]
                                           [--fifo-trials 16] [--moasha-trials 48]
                                           [--output benchmarks/results/search_efficiency.json]

A replay, not a simulation of the method: the learning curves are real trainings recorded by
``benchmarks/record_curves.py`` (a pool of configurations from the quick-start space, each trained its full
schedule, with its per-epoch evaluations, annealed probes and seconds), and every decision is the study's own code:

* the searcher is the study's :class:`orchestrator.searcher.BudgetOptunaSearch` with the preset's seeded sampler
  (``orchestrator.space.make_sampler``), its default point enqueued first, told PRUNED for stopped trials and
  COMPLETE for full-budget ones, exactly as in ``orchestrator/tune.py``;
* the scheduler is :class:`orchestrator.moasha.MOASHA` (``decide`` on every epoch's result) or none (fifo);
* a suggestion trains as the recorded configuration nearest to it (per key: the distance on the range, in log
  space for log ranges, over its width; 1 for a different choice), so the replayed trial's curve is a real one;
* time: ``max_concurrent`` trials at once (the quick start's 2 on 2 cores, as the curves were recorded), each
  epoch costing its recorded seconds, a rung's probe its recorded probe seconds (only under ``rank_on: probe`` and
  only at rung epochs, as in a study), and each trial ``--trial-overhead-s`` of start-up.

Hypervolume: of the full-budget trials' final (clean_acc, robust_acc) (the objective's APGD robust accuracy), against
the nadir of the pool (the worst final clean and robust accuracy of any recorded configuration; ``--reference
zero`` for the study's (0, 0), which on digits is dominated by the one rectangle under the best points: the default
configuration alone holds 95% of it). Per seed and setting it records the hypervolume after every full-budget trial
against the cumulative trial-epochs and seconds; the table gives the median and the range over seeds of: moasha's
hypervolume at one third of fifo's trial-epochs over fifo's final one, the share of fifo's epochs moasha needs to
reach 95% of it, and both at the end. Also the rank statistics of each rung option on the recorded pool: Spearman
correlation of the rung's evaluation with the final objective, and the share of the final front that a synchronous
halving at that rung (the kernel's ranking, top 1/eta kept) would keep.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from orchestrator.moasha import MOASHA  # noqa: E402  (benchmarks run as scripts)
from orchestrator.pareto import hypervolume, pareto_mask, rung_keep, rung_position  # noqa: E402
from orchestrator.searcher import BudgetOptunaSearch  # noqa: E402
from orchestrator.space import Search, load_spec, make_sampler, optuna_space  # noqa: E402

# ------------------------------------------------------------------ the recorded pool


class Pool:
    """The recorded configurations: their params, per-epoch metrics and final objectives."""

    def __init__(self, curves: dict[str, Any]) -> None:
        self.epochs: int = curves["epochs"]
        self.space: dict[str, dict[str, Any]] = curves["space"]
        self.configs: list[dict[str, Any]] = curves["configs"]
        self.final = np.array([[c["epochs"][-1]["clean_acc"], c["epochs"][-1]["robust_acc"]] for c in self.configs])

    def nearest(self, params: dict[str, Any]) -> int:
        """Index of the recorded configuration nearest to ``params`` (see the module docstring)."""
        dist = np.zeros(len(self.configs))
        for key, rng in self.space.items():
            value = params[key]
            for i, c in enumerate(self.configs):
                other = c["params"][key]
                if "choices" in rng:
                    dist[i] += 0.0 if other == value else 1.0
                else:
                    f = (lambda v: math.log(v)) if rng.get("log") else float
                    width = f(rng["high"]) - f(rng["low"])
                    dist[i] += abs(f(other) - f(value)) / width if width > 0 else 0.0
        return int(np.argmin(dist))

    def result(self, index: int, epoch: int) -> dict[str, float]:
        """What the trainable reports at ``epoch`` (1-based) for configuration ``index``."""
        row = self.configs[index]["epochs"][epoch - 1]
        out = {"epoch": float(epoch), "clean_acc": row["clean_acc"], "robust_acc": row["robust_acc"],
               "robust_acc_pgd": row["robust_acc_pgd"]}
        if "probe_clean_acc" in row:
            out.update(probe_clean_acc=row["probe_clean_acc"], probe_robust_acc=row["probe_robust_acc"])
        return out

    def seconds(self, index: int, epoch: int, probe: bool) -> float:
        row = self.configs[index]["epochs"][epoch - 1]
        return row["seconds"] + (row.get("probe_seconds", 0.0) if probe else 0.0)


# ------------------------------------------------------------------ one replayed study


def replay(pool: Pool, spec: Any, *, seed: int, num_samples: int, concurrency: int, scheduler: dict[str, Any] | None,
           trial_overhead_s: float, reference: tuple[float, float]) -> dict[str, Any]:
    """Run one study over the pool; return its per-full-budget-trial history and totals."""
    search = Search(**{**vars(spec.search), "seed": seed, "num_samples": num_samples})
    searcher = BudgetOptunaSearch(space=optuna_space(spec), metric=["clean_acc", "robust_acc"], mode=["max", "max"],
                                  points_to_evaluate=[spec.default_point()] if spec.search.enqueue_defaults else None,
                                  sampler=make_sampler(search), max_t=pool.epochs)
    moasha, probe_epochs = None, set()
    if scheduler is not None:
        metrics = (("probe_clean_acc", "probe_robust_acc") if scheduler["rank_on"] == "probe"
                   else ("clean_acc", "robust_acc"))
        moasha = MOASHA(max_t=pool.epochs, grace_period=scheduler["grace_period"],
                        reduction_factor=scheduler["reduction_factor"], metrics=metrics)
        if scheduler["rank_on"] == "probe":
            probe_epochs = {int(lv) for lv in moasha.rung_levels}
    events: list[tuple[float, int, str]] = []  # (time the trial's next epoch ends, sequence, trial id)
    running: dict[str, dict[str, Any]] = {}
    started = 0
    epochs_done, full, history, configs_used = 0, [], [], []

    def start(now: float) -> None:
        nonlocal started
        trial_id = f"t{started:03d}"
        params = searcher.suggest(trial_id)
        index = pool.nearest(params)
        configs_used.append(index)
        running[trial_id] = {"index": index, "epoch": 0}
        end = now + trial_overhead_s + pool.seconds(index, 1, 1 in probe_epochs)
        heapq.heappush(events, (end, started, trial_id))
        started += 1

    for _ in range(min(concurrency, num_samples)):
        start(0.0)
    while events:
        now, seq, trial_id = heapq.heappop(events)
        trial = running[trial_id]
        trial["epoch"] += 1
        epochs_done += 1
        result = pool.result(trial["index"], trial["epoch"])
        verdict = moasha.decide(trial_id, result) if moasha is not None else "CONTINUE"
        if verdict == "STOP" or trial["epoch"] >= pool.epochs:
            searcher.on_trial_complete(trial_id, result)
            del running[trial_id]
            if trial["epoch"] >= pool.epochs:
                full.append(pool.final[trial["index"]])
                history.append({"epochs": epochs_done, "seconds": now,
                                "hypervolume": hypervolume(np.array(full), reference)})
            if started < num_samples:
                start(now)
        else:
            e = trial["epoch"] + 1
            heapq.heappush(events, (now + pool.seconds(trial["index"], e, e in probe_epochs), seq, trial_id))
    return {"history": history, "epochs": epochs_done, "seconds": now, "full_budget_trials": len(full),
            "configs": configs_used, "hypervolume": history[-1]["hypervolume"] if history else 0.0}


def hv_at(history: list[dict[str, float]], key: str, budget: float) -> float:
    """Hypervolume reached once at most ``budget`` of ``key`` (epochs or seconds) was spent."""
    best = 0.0
    for h in history:
        if h[key] <= budget:
            best = h["hypervolume"]
    return best


def spent_to_reach(history: list[dict[str, float]], key: str, target: float) -> float:
    """``key`` spent when the hypervolume first reached ``target`` (inf if never, NaN for a NaN target)."""
    if math.isnan(target):
        return math.nan
    for h in history:
        if h["hypervolume"] >= target - 1e-12:
            return h[key]
    return math.inf


# ------------------------------------------------------------------ rung statistics on the pool


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (NaN when either side is constant)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.spearmanr(a, b).statistic)


def rung_statistics(pool: Pool, eta: float) -> list[dict[str, Any]]:
    """Per epoch before the last and per evaluation (epoch, probe): Spearman against the final objectives and
    the share of the final front a synchronous halving at that epoch would keep."""
    front = pareto_mask(pool.final)
    n = len(pool.configs)
    keep = rung_keep(n, eta)
    rows = []
    for epoch in range(1, pool.epochs):
        for rank_on, keys in (("epoch", ("clean_acc", "robust_acc_pgd")), ("probe", ("probe_clean_acc",
                                                                                     "probe_robust_acc"))):
            rung = np.array([[c["epochs"][epoch - 1][k] for k in keys] for c in pool.configs])
            kept = np.array([rung_position(np.delete(rung, i, axis=0), rung[i]) <= keep for i in range(n)])
            rows.append({"epoch": epoch, "rank_on": rank_on,
                         "spearman_clean": spearman(rung[:, 0], pool.final[:, 0]),
                         "spearman_robust": spearman(rung[:, 1], pool.final[:, 1]),
                         "front_kept": float(kept[front].mean()), "front_size": int(front.sum()), "kept": keep})
    return rows


# ------------------------------------------------------------------ main


def _fmt(values: list[float]) -> str:
    v = np.array(values, dtype=float)
    return f"{np.median(v):.3f} [{v.min():.3f}, {v.max():.3f}]"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--curves", type=Path, default=REPO / "benchmarks" / "results" / "curves_quickstart.json")
    p.add_argument("--preset", default=str(REPO / "search_spaces" / "quickstart.yaml"))
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--fifo-trials", type=int, default=16)
    p.add_argument("--moasha-trials", type=int, default=48)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--reference", choices=("nadir", "zero"), default="nadir",
                   help="hypervolume reference: the pool's worst final objectives, or (0, 0)")
    p.add_argument("--trial-overhead-s", type=float, default=None,
                   help="start-up seconds per trial (default: benchmarks/results/orchestration_overhead.json's)")
    p.add_argument("--settings", default="1:3:epoch,1:3:probe,2:3:epoch,2:3:probe,1:2:probe,3:2:probe",
                   help="moasha settings, grace:eta:rank_on, comma-separated")
    p.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "search_efficiency.json")
    p.add_argument("--plot", type=Path, default=REPO / "benchmarks" / "results" / "search_efficiency.png")
    args = p.parse_args(argv)

    curves = json.loads(args.curves.read_text())
    pool = Pool(curves)
    spec = load_spec(args.preset, [f"optim.epochs={pool.epochs}"])
    overhead = args.trial_overhead_s
    if overhead is None:
        path = REPO / "benchmarks" / "results" / "orchestration_overhead.json"
        overhead = json.loads(path.read_text()).get("overhead_per_trial_after_startup_s", 0.0) if path.exists() else 0.0
    reference = (tuple(float(v) for v in pool.final.min(axis=0)) if args.reference == "nadir" else (0.0, 0.0))
    settings = []
    for s in args.settings.split(","):
        g, e, r = s.split(":")
        settings.append({"grace_period": int(g), "reduction_factor": float(e), "rank_on": r})

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    runs: dict[str, list[dict[str, Any]]] = {"fifo": []}
    for seed in range(args.seeds):
        runs["fifo"].append(replay(pool, spec, seed=seed, num_samples=args.fifo_trials, concurrency=args.concurrency,
                                   scheduler=None, trial_overhead_s=overhead, reference=reference))
    for s in settings:
        name = f"moasha g{s['grace_period']} eta{s['reduction_factor']:g} {s['rank_on']}"
        runs[name] = [replay(pool, spec, seed=seed, num_samples=args.moasha_trials, concurrency=args.concurrency,
                             scheduler=s, trial_overhead_s=overhead, reference=reference) for seed in range(args.seeds)]

    best_possible = hypervolume(pool.final, reference)
    table = []
    for name, per_seed in runs.items():
        ratios_third, share_95, ratio_end, epoch_ratio_end, time_ratio_95 = [], [], [], [], []
        for fifo, run in zip(runs["fifo"], per_seed, strict=True):
            target = fifo["hypervolume"] or math.nan  # a front of nothing: no ratio
            ratios_third.append(hv_at(run["history"], "epochs", fifo["epochs"] / 3) / target)
            share_95.append(spent_to_reach(run["history"], "epochs", 0.95 * target) / fifo["epochs"])
            time_ratio_95.append(spent_to_reach(run["history"], "seconds", 0.95 * target) / fifo["seconds"])
            # spent_to_reach is inf where the run never got there, NaN where the target is NaN
            ratio_end.append(run["hypervolume"] / target)
            epoch_ratio_end.append(run["epochs"] / fifo["epochs"])
        table.append({"setting": name, "trials": len(per_seed[0]["configs"]),
                      "hv_at_third_of_fifo_epochs": ratios_third, "epochs_to_95pct": share_95,
                      "seconds_to_95pct": time_ratio_95, "hv_end": ratio_end, "epochs_end": epoch_ratio_end,
                      "full_budget_trials": [r["full_budget_trials"] for r in per_seed],
                      "hypervolume": [r["hypervolume"] for r in per_seed]})
    rungs = rung_statistics(pool, 3.0)

    print(f"pool: {len(pool.configs)} recorded configurations of {pool.epochs} epochs; hypervolume of the whole pool "
          f"{best_possible:.4f} (reference {reference[0]:.3f}, {reference[1]:.3f}); {args.seeds} seeds; fifo {args.fifo_trials} trials, moasha {args.moasha_trials}; "
          f"{args.concurrency} at once, {overhead:.1f} s start-up per trial")
    print(f"{'setting':<24}{'HV at 1/3 epochs':>24}{'epochs to 95%':>24}{'time to 95%':>24}{'HV at end':>24}"
          f"{'epochs at end':>24}")
    for row in table:
        print(f"{row['setting']:<24}{_fmt(row['hv_at_third_of_fifo_epochs']):>24}{_fmt(row['epochs_to_95pct']):>24}"
              f"{_fmt(row['seconds_to_95pct']):>24}{_fmt(row['hv_end']):>24}{_fmt(row['epochs_end']):>24}")
    print("(ratios to fifo's final hypervolume, trial-epochs and seconds, same seed; median [min, max] over seeds)")
    print(f"\nrung statistics on the pool (Spearman with the final objective; share of the final front of "
          f"{rungs[0]['front_size']} a halving to {rungs[0]['kept']} of {len(pool.configs)} keeps)")
    print(f"{'epoch':>6}{'rank on':>9}{'rho clean':>11}{'rho robust':>12}{'front kept':>12}")
    for r in rungs:
        print(f"{r['epoch']:>6}{r['rank_on']:>9}{r['spearman_clean']:>11.2f}{r['spearman_robust']:>12.2f}"
              f"{r['front_kept']:>12.2f}")

    out = {"curves": str(args.curves.relative_to(REPO)) if args.curves.is_relative_to(REPO) else str(args.curves),
           "pool": len(pool.configs), "epochs": pool.epochs, "seeds": args.seeds, "fifo_trials": args.fifo_trials,
           "moasha_trials": args.moasha_trials, "concurrency": args.concurrency, "trial_overhead_s": overhead,
           "reference": reference, "pool_hypervolume": best_possible, "table": table, "rungs": rungs,
           "histories": {name: [r["history"] for r in per_seed] for name, per_seed in runs.items()},
           "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(),
           "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                    text=True).stdout.strip()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=1, default=float) + "\n")
    _plot(runs, args.plot, table)
    print(f"written: {args.output}, {args.plot}")
    return 0


def _plot(runs: dict[str, list[dict[str, Any]]], path: Path, table: list[dict[str, Any]]) -> None:
    """Hypervolume against trial-epochs and seconds: the median over seeds, with the range shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, label in ((axes[0], "epochs", "cumulative trial-epochs"), (axes[1], "seconds", "wall time (s)")):
        horizon = max(r[key] for per_seed in runs.values() for r in per_seed for r in r["history"])
        grid = np.linspace(0, horizon, 200)
        for name, per_seed in runs.items():
            curves = np.array([[hv_at(r["history"], key, g) for g in grid] for r in per_seed])
            med = np.median(curves, axis=0)
            (line,) = ax.plot(grid, med, label=name, lw=2 if name == "fifo" else 1.2)
            ax.fill_between(grid, curves.min(axis=0), curves.max(axis=0), color=line.get_color(), alpha=0.12)
        ax.set_xlabel(label)
        ax.set_ylabel("hypervolume of the full-budget front")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("fifo vs moasha on the quick-start space (replayed recorded curves; median and range over seeds)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
