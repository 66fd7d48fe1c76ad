"""Can the Ray cluster place a trial's workers, and how many trials at once? Pure functions over node shapes.

A trial is ``num_workers`` bundles of ``{CPU: cpus_per_worker, GPU: gpus_per_worker}`` in one placement group; a
bundle never spans nodes, and the placement strategy decides how the bundles may share them:

* ``PACK`` / ``SPREAD``: any nodes (soft preferences);
* ``STRICT_PACK``: all bundles on one node;
* ``STRICT_SPREAD``: each bundle on a different node.

A placement group that no node set can satisfy waits forever, so the study is refused up front, naming the field.
On an autoscaling cluster the shapes include the node types the autoscaler may still add (up to their maximum):
from the record an autoscaler publishes in the GCS (:func:`autoscaler_node_types`), else from the cluster
launcher's config on the head (:func:`launcher_node_types`).

The pure functions take node shapes; :func:`check_local_gpus` and :func:`check_cluster` are the study's two checks
(before a local Ray starts, and right after joining a cluster).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .ray_internals import cluster_config
from .space import Scaling, SpecError, StudySpec

log = logging.getLogger(__name__)

LAUNCHER_CONFIG = "~/ray_bootstrap_config.yaml"  # what `ray up` leaves on the head for its autoscaler
UNBOUNDED = 1_000  # node count used for an autoscaler node type without a maximum
_EPS = 1e-9


@dataclass(frozen=True)
class NodeShape:
    """``count`` nodes with ``cpus`` CPUs and ``gpus`` GPUs each (alive now, or that the autoscaler may add)."""

    cpus: float
    gpus: float
    count: int = 1
    name: str = "node"


def launcher_node_types(path: str | Path) -> list[NodeShape]:
    """The worker node types of a Ray cluster-launcher config, each counted up to its ``max_workers``.

    ``ray up`` leaves the cluster's config on the head as ``~/ray_bootstrap_config.yaml`` (the
    ``--autoscaling-config`` of ``ray start --head``); its ``available_node_types`` carry each type's
    ``resources`` and ``max_workers``, and the top-level ``max_workers`` caps them all. The head type is left out
    (the head is alive already).
    """
    data: dict[str, Any] = yaml.safe_load(Path(path).expanduser().read_text()) or {}
    cap = int(data.get("max_workers", UNBOUNDED))
    head = data.get("head_node_type")
    shapes = []
    for name, node_type in (data.get("available_node_types") or {}).items():
        resources = (node_type or {}).get("resources") or {}
        count = min(int((node_type or {}).get("max_workers", cap)), cap)
        if name != head and count > 0:
            shapes.append(NodeShape(float(resources.get("CPU", 0)), float(resources.get("GPU", 0)), count, name))
    return shapes


def workers_per_node(node: NodeShape, s: Scaling) -> int:
    """How many of a trial's worker bundles one such node holds."""
    fit = math.floor(node.cpus / s.cpus_per_worker + _EPS)
    if s.use_gpu and s.gpus_per_worker > 0:
        fit = min(fit, math.floor(node.gpus / s.gpus_per_worker + _EPS))
    return max(0, fit)


def concurrent_trials(nodes: Sequence[NodeShape], s: Scaling, limit: int) -> int:
    """The most trials of shape ``s`` (at most ``limit``) the nodes hold at once; :class:`SpecError` when not even
    one fits."""
    fits = [(workers_per_node(n, s), n.count) for n in nodes]
    n = s.num_workers
    if not any(f > 0 for f, _ in fits):
        largest = max(nodes, key=lambda x: (x.gpus, x.cpus), default=NodeShape(0, 0))
        gpu_short = s.use_gpu and all(x.gpus + _EPS < s.gpus_per_worker for x in nodes)
        need = f"{s.cpus_per_worker:g} CPUs" + (f" and {s.gpus_per_worker:g} GPUs" if s.use_gpu else "")
        raise SpecError("scaling.gpus_per_worker" if gpu_short else "scaling.cpus_per_worker",
                        f"a worker needs {need} on one node, but no node has that (largest: {largest.cpus:g} CPUs, "
                        f"{largest.gpus:g} GPUs); a worker cannot span nodes: lower the per-worker resources")
    if s.placement_strategy == "STRICT_PACK":
        best = max(f for f, _ in fits)
        if best < n:
            raise SpecError("scaling.placement_strategy",
                            f"STRICT_PACK puts all {n} workers of a trial on one node, but no node holds more than "
                            f"{best}; use PACK, or num_workers <= {best}")
        return min(limit, sum(c * (f // n) for f, c in fits))
    if s.placement_strategy == "STRICT_SPREAD":
        hosts = sum(c for f, c in fits if f > 0)
        if hosts < n:
            raise SpecError("scaling.placement_strategy",
                            f"STRICT_SPREAD puts each of a trial's {n} workers on its own node, but only {hosts} "
                            f"node(s) can hold a worker; use SPREAD, or num_workers <= {hosts}")
        # t trials need t workers on each of n distinct nodes per trial: sum over nodes of min(fit, t) >= t * n.
        t = 1
        while t < limit and sum(c * min(f, t + 1) for f, c in fits) >= (t + 1) * n:
            t += 1
        return t
    total = sum(c * f for f, c in fits)
    if total < n:
        raise SpecError("scaling.num_workers",
                        f"a trial needs {n} workers but the nodes can place only {total} (each worker needs "
                        f"{s.cpus_per_worker:g} CPUs on one node); lower num_workers or cpus_per_worker")
    return min(limit, total // n)


# ----------------------------------------------------------------------------------------- the study's checks


def check_local_gpus(spec: StudySpec) -> None:
    """Before starting a local Ray: refuse a trial that needs more GPUs than this machine has."""
    if not spec.scaling.use_gpu:
        return
    import torch

    have = torch.cuda.device_count()
    if spec.scaling.gpus_per_trial > have:
        raise SpecError("scaling.gpus_per_worker", _gpu_message(spec.scaling, have, "this machine"))


def _gpu_message(s: Scaling, have: float, where: str) -> str:
    return (f"a trial needs {s.gpus_per_trial:g} GPUs (num_workers {s.num_workers} x gpus_per_worker "
            f"{s.gpus_per_worker:g}) but {where} has {have:g}; lower them or use a cluster with more GPUs")


def autoscaler_node_types() -> list[NodeShape] | None:
    """The node types an autoscaler published in the joined cluster's GCS; None when there is no such record.

    Read through :func:`orchestrator.ray_internals.cluster_config` (a private Ray API): if a Ray release moves or
    changes it, the answer is None and the launcher's config is tried instead.
    """
    config = cluster_config()
    if config is None:
        return None
    return [NodeShape(float(g.resources.get("CPU", 0)), float(g.resources.get("GPU", 0)),
                      UNBOUNDED if g.max_count < 0 else int(g.max_count), g.name)
            for g in config.node_group_configs if g.max_count != 0]


def cluster_nodes(launcher_config: str = LAUNCHER_CONFIG) -> tuple[list[NodeShape], str]:
    """The alive nodes of the joined cluster, plus the node types an autoscaler may add; and where those came from
    ("" when none are known).

    Node types come from the autoscaler's record in the GCS, else from the cluster launcher's config on the head
    (this driver runs there under ``ray job submit``). KubeRay's autoscaler publishes neither: pass
    ``--autoscaling`` there.
    """
    import ray

    nodes = [NodeShape(float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)),
                       name=str(n.get("NodeManagerAddress", "node"))) for n in ray.nodes() if n.get("Alive")]
    added = autoscaler_node_types()
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
    """Refuse a trial the joined cluster cannot place; return how many trials may run at once.

    With ``autoscaling`` and no known node types, a trial the live nodes cannot hold is let through (with a
    warning): it waits for the nodes the autoscaler adds.
    """
    nodes, source = cluster_nodes()
    limit = min(spec.search.max_concurrent or spec.search.num_samples, spec.search.num_samples)
    try:
        return max(1, _placeable(spec.scaling, nodes, source, limit))
    except SpecError as err:
        if autoscaling and not source:
            log.warning("the live nodes cannot hold a trial (%s); with --autoscaling it waits for the nodes the "
                        "autoscaler adds", err)
            return limit
        raise


def _placeable(s: Scaling, nodes: list[NodeShape], source: str, limit: int) -> int:
    cpus = sum(n.cpus * n.count for n in nodes)
    gpus = sum(n.gpus * n.count for n in nodes)
    where = "the Ray cluster" + (f" (with the node types from {source})" if source else "")
    if s.gpus_per_trial > gpus + 1e-9:
        raise SpecError("scaling.gpus_per_worker", _gpu_message(s, gpus, where))
    if s.cpus_per_trial > cpus + 1e-9:
        raise SpecError("scaling.cpus_per_worker",
                        f"a trial needs {s.cpus_per_trial:g} CPUs (num_workers {s.num_workers} x cpus_per_worker "
                        f"{s.cpus_per_worker:g}) but {where} has {cpus:g}")
    return concurrent_trials(nodes, s, limit)
