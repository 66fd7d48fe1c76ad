"""Search the clean-vs-robust Pareto front of AR-AT: Ray Tune trials, each a Ray Train DDP run, sampled by Optuna.

    python orchestrator/tune.py [--config FILE] [--set key=value ...] [--num-samples N] [--name NAME]
                                [--resume] [--storage-path URI] [--tracking-uri URI] [--smoke-test]

Inside a Ray job, or with ``RAY_ADDRESS`` set, it joins that cluster; otherwise it starts a local Ray. The preset
(default ``search_spaces/quickstart.yaml``) is validated completely before Ray starts; a bad one exits with status
2 and a message naming the field, and nothing is started or written. Results: ``<storage>/<study>/trials.parquet``
and a console table of the trials and their Pareto front.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):
    # Run as a script (also under `ray job submit`): Python put orchestrator/ first on sys.path, where a module
    # named like a standard one (select.py, ...) would shadow it. Put the repo root there instead.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))

import argparse  # noqa: E402
import importlib  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import yaml  # noqa: E402

from arat_train.config import flatten  # noqa: E402
from orchestrator.capacity import UNBOUNDED, NodeShape, concurrent_trials, launcher_node_types  # noqa: E402
from orchestrator.space import (  # noqa: E402
    OBJECTIVES,
    SpecError,
    StudySpec,
    check_name,
    load_spec,
    make_sampler,
    optuna_space,
    read_preset,
    validate,
)
from orchestrator.storage import absolute, exists, read_text, write_text  # noqa: E402

log = logging.getLogger("orchestrator.tune")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PRESET = REPO / "search_spaces" / "quickstart.yaml"
SPEC_FILE = "study.yaml"


@dataclass(frozen=True)
class Study:
    """A validated study: its preset, its name and where it lives."""

    spec: StudySpec
    name: str
    storage_path: str  # absolute local path or URI
    tracking_uri: str
    resume: bool

    @property
    def path(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}"


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


def plan_study(args: argparse.Namespace) -> Study:
    """Resolve and validate everything a study needs, without starting Ray or writing anything."""
    storage = absolute(args.storage_path or "runs")
    tracking = args.tracking_uri or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"
    if args.num_samples is not None and args.num_samples < 1:
        raise SpecError("--num-samples", f"must be >= 1, got {args.num_samples}")
    if args.resume:
        return _plan_resume(args, storage, tracking)
    spec = load_spec(args.config or DEFAULT_PRESET, args.overrides, num_samples=args.num_samples,
                     smoke_test=args.smoke_test)
    name = args.name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.name is not None:
        check_name(args.name, "--name")
    study = Study(spec, name, storage, tracking, resume=False)
    if exists(study.path):
        raise SpecError("--name", f"a study {name!r} already exists in {storage}; pass --resume to continue it "
                                  "or choose another --name")
    return study


def _plan_resume(args: argparse.Namespace, storage: str, tracking: str) -> Study:
    name = args.name or _newest_study(storage, args.config)
    path = f"{storage.rstrip('/')}/{name}"
    if not exists(f"{path}/{SPEC_FILE}"):
        raise SpecError("--resume", f"no study {name!r} in {storage} (looked for {path}/{SPEC_FILE})")
    if args.overrides or args.num_samples is not None or args.smoke_test or args.tracking_uri:
        log.warning("--resume continues %s with its stored settings (MLflow tracking URI included); "
                    "--set/--num-samples/--smoke-test/--tracking-uri are ignored", name)
    raw = yaml.safe_load(read_text(f"{path}/{SPEC_FILE}"))
    return Study(validate(raw), name, storage, tracking, resume=True)


def _newest_study(storage: str, config: str | None) -> str:
    """The most recently changed study of the preset ``config`` (or the default preset) in local storage."""
    if "://" in storage:
        raise SpecError("--name", "is required with --resume when --storage-path is a URI")
    preset = str(read_preset(config or DEFAULT_PRESET).get("name", ""))
    found = sorted((p.stat().st_mtime, p.name) for p in Path(storage).glob(f"{preset}-*") if (p / SPEC_FILE).is_file())
    if not found:
        raise SpecError("--resume", f"no study of preset {preset!r} in {storage}; pass --name")
    return found[-1][1]


def check_local_gpus(spec: StudySpec) -> None:
    """Before starting a local Ray: refuse a trial that needs more GPUs than this machine has."""
    if not spec.scaling.use_gpu:
        return
    import torch

    have = torch.cuda.device_count()
    if spec.scaling.gpus_per_trial > have:
        raise SpecError("scaling.gpus_per_worker", _gpu_message(spec, have, "this machine"))


def _gpu_message(spec: StudySpec, have: float, where: str) -> str:
    s = spec.scaling
    return (f"a trial needs {s.gpus_per_trial:g} GPUs (num_workers {s.num_workers} x gpus_per_worker "
            f"{s.gpus_per_worker:g}) but {where} has {have:g}; lower them or use a cluster with more GPUs")


LAUNCHER_CONFIG = "~/ray_bootstrap_config.yaml"  # what `ray up` leaves on the head for its autoscaler


def cluster_nodes(launcher_config: str = LAUNCHER_CONFIG) -> tuple[list[NodeShape], str]:
    """The alive nodes of the joined cluster, plus the node types an autoscaler may add; and where those came from
    ("" when none are known).

    Node types come from the record an autoscaler publishes in the GCS (read through ``ray._private.state``, as
    Ray Data does), else from the cluster launcher's config on the head (this driver runs there under
    ``ray job submit``). KubeRay's autoscaler publishes neither: pass ``--autoscaling`` there.
    """
    import ray

    nodes = [NodeShape(float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)),
                       name=str(n.get("NodeManagerAddress", "node"))) for n in ray.nodes() if n.get("Alive")]
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception as err:  # a private reader: never let it stop a study
        log.debug("no autoscaler record in the GCS: %s", err)
        config = None
    added = [NodeShape(float(g.resources.get("CPU", 0)), float(g.resources.get("GPU", 0)),
                       UNBOUNDED if g.max_count < 0 else int(g.max_count), g.name)
             for g in (config.node_group_configs if config is not None else []) if g.max_count != 0]
    if added:
        return nodes + added, "the autoscaler's record in the GCS"
    path = Path(launcher_config).expanduser()
    if path.is_file():
        try:
            added = launcher_node_types(path)
        except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError) as err:
            log.warning("cannot read the cluster launcher's node types from %s: %s", path, err)
        if added:
            return nodes + added, str(path)
    return nodes, ""


def check_cluster(spec: StudySpec, autoscaling: bool = False) -> int:
    """Refuse a trial the cluster cannot place; return how many trials may run at once.

    With ``autoscaling`` and no known node types, a trial the live nodes cannot hold is let through (with a
    warning): it waits for the nodes the autoscaler adds.
    """
    nodes, source = cluster_nodes()
    limit = min(spec.search.max_concurrent or spec.search.num_samples, spec.search.num_samples)
    try:
        return max(1, _placeable(spec, nodes, source, limit))
    except SpecError as err:
        if autoscaling and not source:
            log.warning("the live nodes cannot hold a trial (%s); with --autoscaling it waits for the nodes the "
                        "autoscaler adds", err)
            return limit
        raise


def _placeable(spec: StudySpec, nodes: list[NodeShape], source: str, limit: int) -> int:
    cpus = sum(n.cpus * n.count for n in nodes)
    gpus = sum(n.gpus * n.count for n in nodes)
    where = "the Ray cluster" + (f" (with the node types from {source})" if source else "")
    s = spec.scaling
    if s.gpus_per_trial > gpus + 1e-9:
        raise SpecError("scaling.gpus_per_worker", _gpu_message(spec, gpus, where))
    if s.cpus_per_trial > cpus + 1e-9:
        raise SpecError("scaling.cpus_per_worker",
                        f"a trial needs {s.cpus_per_trial:g} CPUs (num_workers {s.num_workers} x cpus_per_worker "
                        f"{s.cpus_per_worker:g}) but {where} has {cpus:g}")
    return concurrent_trials(nodes, s, limit)


def make_callbacks(args: argparse.Namespace, study: Study) -> list[Any]:
    """Tune callbacks of the study: MLflow tracking from the driver (the one writer), when available."""
    try:
        tracking = importlib.import_module("orchestrator.tracking")
    except ModuleNotFoundError as err:
        if err.name != "orchestrator.tracking":
            raise
        log.warning("orchestrator/tracking.py is not there: MLflow tracking is off")
        return []
    spec = study.spec.to_dict()
    tracker = tracking.StudyTracker(
        study.tracking_uri, study.name, space_yaml=yaml.safe_dump(spec, sort_keys=False),
        params={k: v for k, v in flatten(spec).items() if k != "description"},
        sampler=study.spec.search.sampler, seed=study.spec.search.seed, code_version=tracking.code_version())
    return [tracking.MLflowTuneCallback(tracker)]


def build_tuner(study: Study, concurrency: int, args: argparse.Namespace) -> Any:
    """A new Tuner for ``study``, or the restored one with ``--resume`` (whose callbacks were stored with it)."""
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from orchestrator.trainable import StudyContext, run_trial, trial_name

    spec = study.spec
    context = StudyContext(name=study.name, train=spec.train, storage_path=study.storage_path,
                           num_workers=spec.scaling.num_workers, use_gpu=spec.scaling.use_gpu,
                           resources_per_worker=spec.scaling.resources_per_worker(),
                           train_max_failures=spec.failure.train_max_failures, fail_trials=spec.debug.fail_trials,
                           placement_strategy=spec.scaling.placement_strategy)
    # The trial function only waits on its TorchTrainer, whose workers hold the CPUs/GPUs, and Tune refuses a
    # trial that asks for nothing: a token of memory (1 byte) and no CPU, so a trial's driver never takes a CPU
    # its workers need. Concurrency is capped by max_concurrent_trials, derived from the cluster's resources.
    trainable = tune.with_resources(tune.with_parameters(run_trial, study=context), {"CPU": 0, "memory": 1})
    if study.resume:
        return tune.Tuner.restore(study.path, trainable, resume_unfinished=True, resume_errored=False,
                                  restart_errored=False)
    searcher = OptunaSearch(
        space=optuna_space(spec),
        metric=list(OBJECTIVES), mode=["max", "max"],  # on the searcher only: a TuneConfig metric makes it 1-D
        points_to_evaluate=[spec.default_point()] if spec.search.enqueue_defaults else None,
        sampler=make_sampler(spec.search),
        study_name=study.name,
    )
    return tune.Tuner(
        trainable,
        param_space={k: v for k, v in spec.fixed_flat().items() if k not in spec.space},
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=spec.search.num_samples,
                                    max_concurrent_trials=concurrency, trial_name_creator=trial_name,
                                    trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(name=study.name, storage_path=study.storage_path,
                                  callbacks=make_callbacks(args, study),
                                  failure_config=tune.FailureConfig(max_failures=spec.failure.max_failures)),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
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
    print(f"study {study.name}: {study.spec.search.num_samples} trials, {concurrency} at a time, "
          f"{study.spec.search.sampler} sampler; storage {study.path}", flush=True)
    if not study.resume:
        write_text(f"{study.path}/{SPEC_FILE}", yaml.safe_dump(study.spec.to_dict(), sort_keys=False))
    result_grid = build_tuner(study, concurrency, args).fit()
    return report(result_grid, study)


class ClusterUnreachable(RuntimeError):
    """``RAY_ADDRESS`` names a cluster this process cannot join."""


def connect(study: Study, autoscaling: bool = False) -> int:
    """Start or join Ray, then check the study against the cluster; return the trial concurrency."""
    import ray
    import ray.exceptions

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


def report(result_grid: Any, study: Study) -> int:
    """Write the trials table next to the study, print it with the front; exit status 0 if any trial finished."""
    from orchestrator.results import format_table, trials_frame, write_parquet

    frame = trials_frame(result_grid)
    where = write_parquet(frame, study.path)
    print(format_table(frame, list(study.spec.space)), flush=True)
    print(f"trials table: {where}", flush=True)
    finished = bool((frame["status"] == "TERMINATED").any())
    if finished:  # the search ranked by PGD on the validation split: the next step is the test split and AutoAttack
        print(f"verify the front: python -m orchestrator.verify --study {study.path} --tracking-uri "
              f"{study.tracking_uri}", flush=True)
    return 0 if finished else 1


if __name__ == "__main__":
    sys.exit(main())
