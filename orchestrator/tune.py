"""Search the clean-vs-robust Pareto front of AR-AT: Ray Tune trials, each a Ray Train DDP run, sampled by Optuna.

    python orchestrator/tune.py [--config FILE] [--set key=value ...] [--num-samples N] [--name NAME]
                                [--resume] [--storage-path URI] [--tracking-uri URI] [--smoke-test]

Inside a Ray job, or with ``RAY_ADDRESS`` set, it joins that cluster; otherwise it starts a local Ray. The preset
(default ``search_spaces/quickstart.yaml``) is validated completely before Ray starts; a bad one exits with status
2 and a message naming the field, and nothing is started or written. Results: ``<storage>/<study>/trials.parquet``
and a console table of the trials and their Pareto front. SIGINT (Ctrl-C) or SIGTERM stops the study: its
unfinished trials are INTERRUPTED in every record, it prints the command that resumes it and exits with status 130.
SIGUSR1 prints the stack of every thread of the driver and nothing else.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):
    # Run as a script (also under `ray job submit`): Python put orchestrator/ first on sys.path, where a module
    # named like a standard one (select.py) would shadow it. Put the repo root there instead; the imports below
    # come after this on purpose (E402 is off for this file in pyproject.toml).
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))

import argparse
import atexit
import contextlib
import faulthandler
import logging
import signal
import threading
from typing import Any, NoReturn

import yaml

from arat_train.config import flatten
from orchestrator import interrupt, reclaim
from orchestrator.capacity import check_cluster, check_local_gpus
from orchestrator.records import mark_interrupted
from orchestrator.space import SpecError, StudySpec
from orchestrator.study import DEFAULT_PRESET, REPO, Study, plan_study
from orchestrator.summary import EXIT_INTERRUPTED, final_report

log = logging.getLogger("orchestrator.tune")

# Ray settings for a local Ray, unless already set. A Train controller polls its workers every 2 s by default, so
# a trial's end (and its next trial's start) waited up to that long; every 0.2 s, a poll is a millisecond's RPC per
# worker. Train's Prometheus metrics feed a dashboard nobody watches on a laptop. Ray starts one idle worker process
# per CPU when the driver connects, for tasks; a study runs only actors, each with Tune's or Train's environment
# variables, which such a worker cannot take: they only competed with the study's start for the cores. Nodes
# started with ``ray start`` take these from their own environment.
LOCAL_RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "RAY_TRAIN_METRICS_ENABLED": "0",
                   "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_prestart_worker_first_driver": "0"}


class ClusterUnreachable(RuntimeError):
    """``RAY_ADDRESS`` names a cluster this process cannot join."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python orchestrator/tune.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help=f"study preset YAML (default: {DEFAULT_PRESET.relative_to(REPO)})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset key (search.num_samples=4, optim.epochs=2, space.arat.gamma.high=100, "
                        "debug.fail_trials=[1]); repeatable")
    p.add_argument("--num-samples", type=int, help="number of trials (overrides search.num_samples)")
    p.add_argument("--name", help="study name (default: <preset name>-<date>-<time>); with --resume, the study "
                                  "to continue (default: the newest study of the preset)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted study from its storage")
    p.add_argument("--storage-path", help="where studies are stored: a local directory or a URI such as "
                                          "s3://bucket/path; shared storage on multi-node clusters "
                                          "(default: ./runs)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--autoscaling", action="store_true",
                   help="the cluster adds nodes on demand and its node types are not known here (KubeRay): a "
                        "trial the live nodes cannot hold waits for them instead of being refused")
    p.add_argument("--smoke-test", action="store_true", help="shrink the study for CI: <= 3 trials of <= 2 "
                                                             "epochs on a few hundred images")
    return p.parse_args(argv)


def connect(study: Study, autoscaling: bool = False) -> int:
    """Start or join Ray, then check the study against the cluster; return the trial concurrency."""
    import ray
    import ray.exceptions

    if not os.environ.get("RAY_ADDRESS"):
        # A local Ray is one machine that nothing preempts: Ray Train's preemption watcher (an actor per trial, and
        # an error line per trial from Ray's core about its restartable constructor) has nothing to watch.
        for key, value in LOCAL_RAY_ENV.items():  # before the local Ray starts: its processes inherit them
            os.environ.setdefault(key, value)
    try:
        # A local Ray keeps its dashboard (on 127.0.0.1): Ray Train's placement-group cleaner asks the State API,
        # which the dashboard serves, whether a trial's controller is still alive.
        ray.init()  # joins the cluster of this Ray job or of RAY_ADDRESS, else starts a local one
    except (ConnectionError, ray.exceptions.RayError) as err:
        if not os.environ.get("RAY_ADDRESS"):
            raise
        raise ClusterUnreachable(
            f"cannot join the Ray cluster at RAY_ADDRESS={os.environ['RAY_ADDRESS']}: {str(err).splitlines()[0]}. "
            "A cluster with token authentication (Ray's default once a token exists) needs RAY_AUTH_MODE=token "
            "and the cluster's token (RAY_AUTH_TOKEN, or ~/.ray/auth_token)") from None
    try:
        return check_cluster(study.spec, autoscaling)
    except SpecError:
        ray.shutdown()
        raise


def make_callbacks(study: Study, scheduler: Any) -> list[Any]:
    """The study's Tune callbacks: the trials table, MLflow tracking from the driver (the one writer), the
    scheduler's state (Ray saves callbacks with the experiment, never the scheduler), and Tune's CSV and JSON
    loggers (each trial's ``progress.csv`` and ``result.json``), which Tune adds by itself unless
    ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS`` is set, as :func:`main` sets it to leave out TensorBoard's."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from orchestrator.console import LiveTable
    from orchestrator.tracking import StudyTracker, code_version
    from orchestrator.tune_callbacks import MLflowTuneCallback, StopSignalCallback, TrialsTableCallback

    spec = study.spec.to_dict()
    tracker = StudyTracker(
        study.tracking_uri, study.name, space_yaml=yaml.safe_dump(spec, sort_keys=False),
        params={k: v for k, v in flatten(spec).items() if k != "description"},
        sampler=study.spec.search.sampler, seed=study.spec.search.seed, code_version=code_version(),
        masking_threshold=study.spec.search.masking_threshold)
    scaling = study.spec.scaling
    callbacks = [StopSignalCallback(), TrialsTableCallback(study.path, study.spec.search.masking_threshold),
                 MLflowTuneCallback(tracker, study.path),
                 LiveTable(list(study.spec.space), scaling.num_workers, scaling.resources_per_worker(),
                           masking_threshold=study.spec.search.masking_threshold),
                 CSVLoggerCallback(), JsonLoggerCallback()]
    return callbacks + ([scheduler.state_callback()] if scheduler is not None else [])


def build_tuner(study: Study, concurrency: int) -> Any:
    """A new Tuner for ``study``, or the restored one with ``--resume`` (whose callbacks were stored with it)."""
    from ray import tune

    from orchestrator.moasha import study_scheduler
    from orchestrator.ray_internals import started_local_ray
    from orchestrator.searcher import study_searcher
    from orchestrator.trainable import StudyContext, run_trial, trial_name

    spec: StudySpec = study.spec
    context = StudyContext(name=study.name, train=spec.train, storage_path=study.storage_path,
                           num_workers=spec.scaling.num_workers, use_gpu=spec.scaling.use_gpu,
                           resources_per_worker=spec.scaling.resources_per_worker(),
                           train_max_failures=spec.failure.train_max_failures, fail_trials=spec.debug.fail_trials,
                           placement_strategy=spec.scaling.placement_strategy,
                           autoscaler=not started_local_ray())
    # The trial function only waits on its TorchTrainer, whose workers hold the CPUs/GPUs, and Tune refuses a
    # trial that asks for nothing: a token of memory (1 byte) and no CPU, so a trial's driver never takes a CPU
    # its workers need. Concurrency is capped by max_concurrent_trials, derived from the cluster's resources.
    trainable = tune.with_resources(tune.with_parameters(run_trial, study=context), {"CPU": 0, "memory": 1})
    if study.resume:
        return tune.Tuner.restore(study.path, trainable, resume_unfinished=True, resume_errored=False,
                                  restart_errored=False)
    searcher = study_searcher(spec, study.name)  # a trial stopped before its epochs reaches Optuna as PRUNED
    scheduler = study_scheduler(spec)
    return tune.Tuner(
        trainable,
        param_space={k: v for k, v in spec.fixed_flat().items() if k not in spec.space},
        # reuse_actors: a trial's driver (which only starts its TorchTrainer) is one process for every trial it runs.
        # Not under moasha: Tune reuses a stopped trial's driver only if its thread ends within 2 s, and a thread
        # blocked in TorchTrainer.fit does not, so the next trial would fail; a fresh driver per trial instead,
        # and the stopped one's driver is killed with the Train controller and workers it owns.
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=spec.search.num_samples,
                                    max_concurrent_trials=concurrency, trial_name_creator=trial_name,
                                    trial_dirname_creator=trial_name,
                                    reuse_actors=spec.search.scheduler.type == "fifo"),
        # verbose=0: Tune's own table (which counted the trial drivers' 0 CPUs and none of the objectives) gives way
        # to the study's LiveTable (with Tune's legacy reporter, see main: the new one prints its configuration box
        # and a TensorBoard hint at any verbosity); errors still reach the log.
        run_config=tune.RunConfig(name=study.name, storage_path=study.storage_path,
                                  callbacks=make_callbacks(study, scheduler), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=spec.failure.max_failures)),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 <pid>` prints every thread's stack: where a quiet study waits
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # not its INFO lines about creating a database
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's legacy reporter, silent at verbose=0
    # Tune's own loggers are added by make_callbacks, less its TensorBoard one: the study's record is MLflow, and
    # that logger imported tensorboardX and torch into the driver (1.5 s before the first trial could start).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    try:
        study = plan_study(args)  # everything is checked before Ray starts or anything is written
        if not os.environ.get("RAY_ADDRESS"):
            check_local_gpus(study.spec)
        concurrency = connect(study, args.autoscaling)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ClusterUnreachable as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted before the study started: nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    interrupt.install()  # after ray.init, which sets its own SIGTERM handler
    print(f"study {study.name}: {study.spec.search.num_samples} trials, {concurrency} at a time, "
          f"{study.spec.search.sampler} sampler; storage {study.path}", flush=True)
    try:
        if not study.resume:
            study.write_spec()
            reclaim.record_driver(study.path)
        else:
            reclaim.release_earlier_drivers(study.path)
        build_tuner(study, concurrency).fit()
        reclaim.release([reclaim.current_job()], "this study's trials")
    except KeyboardInterrupt:  # a signal outside Tune's graceful stop (a second one, or before fit began)
        relabelled = mark_interrupted(study.path)  # the table as the callbacks left it, unfinished rows relabelled
        print(f"study {study.name} stopped at once by {' then '.join(interrupt.signals()) or 'a stop signal'}: "
              f"{relabelled} unfinished trial(s) INTERRUPTED in its trials table (MLflow may show them RUNNING)",
              flush=True)
        print(f"resume it: {study.resume_command()}", flush=True)
        return EXIT_INTERRUPTED
    return final_report(study)


def exit_now(code: int) -> NoReturn:
    """Exit with ``code`` once what is registered to run at exit has run (Ray's shutdown of the local cluster,
    logging's flush), without the interpreter's module-by-module teardown: with Ray, Tune, MLflow and pandas loaded
    that took 3 s of a study on 2 cores, for memory the OS takes back at once. A non-daemon thread still running
    gets the normal exit, which waits for it."""
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    working = any(not t.daemon for t in threading.enumerate() if t is not threading.main_thread())
    if run_exit_handlers is None or working:
        sys.exit(code)
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream: what it was owed is lost anyway
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
