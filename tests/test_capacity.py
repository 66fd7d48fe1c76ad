"""Placement checks before a study starts: a trial whose workers no set of nodes can hold is refused (its placement
group would wait forever), and the number of trials run at once follows what the nodes hold."""

from __future__ import annotations

import pytest

from orchestrator.capacity import NodeShape, concurrent_trials, workers_per_node
from orchestrator.space import Scaling, SpecError


def _s(workers: int, cpus: float = 1.0, gpus: float = 0.0, strategy: str = "PACK") -> Scaling:
    return Scaling(num_workers=workers, use_gpu=gpus > 0, cpus_per_worker=cpus, gpus_per_worker=gpus,
                   placement_strategy=strategy)


def test_workers_per_node_takes_the_scarcer_resource() -> None:
    assert workers_per_node(NodeShape(16, 4), _s(1, cpus=2, gpus=1)) == 4
    assert workers_per_node(NodeShape(6, 4), _s(1, cpus=2, gpus=1)) == 3
    assert workers_per_node(NodeShape(2, 0), _s(1, cpus=0.5)) == 4
    assert workers_per_node(NodeShape(8, 0), _s(1, cpus=1, gpus=1)) == 0
    assert workers_per_node(NodeShape(8, 1), _s(1, cpus=1, gpus=0.5)) == 2  # fractional GPUs


def test_pack_counts_workers_node_by_node_not_the_cluster_total() -> None:
    nodes = [NodeShape(1.5, 0, count=2)]  # 3 CPUs in all, but a 1-CPU worker fits once per node
    assert concurrent_trials(nodes, _s(2), limit=10) == 1
    with pytest.raises(SpecError, match=r"^scaling\.num_workers: a trial needs 3 workers but the nodes can place "
                                        r"only 2"):
        concurrent_trials(nodes, _s(3), limit=10)
    assert concurrent_trials([NodeShape(2, 0), NodeShape(1, 0)], _s(2, cpus=0.5), limit=10) == 3
    assert concurrent_trials([NodeShape(2, 0), NodeShape(1, 0)], _s(2, cpus=0.5), limit=2) == 2  # capped


def test_a_worker_larger_than_every_node_is_refused_naming_the_resource() -> None:
    nodes = [NodeShape(8, 1, count=4)]  # 4 GPUs in all, 1 per node
    with pytest.raises(SpecError, match=r"^scaling\.gpus_per_worker: a worker needs 1 CPUs and 2 GPUs on one node, "
                                        r"but no node has that \(largest: 8 CPUs, 1 GPUs\)"):
        concurrent_trials(nodes, _s(1, cpus=1, gpus=2), limit=4)
    with pytest.raises(SpecError, match=r"^scaling\.cpus_per_worker: a worker needs 16 CPUs on one node"):
        concurrent_trials([NodeShape(8, 0, count=4)], _s(1, cpus=16), limit=4)


def test_strict_spread_needs_a_node_per_worker() -> None:
    two = [NodeShape(2, 0), NodeShape(1, 0)]
    assert concurrent_trials(two, _s(2, cpus=0.5, strategy="STRICT_SPREAD"), limit=10) == 2
    with pytest.raises(SpecError, match=r"^scaling\.placement_strategy: STRICT_SPREAD puts each of a trial's 3 "
                                        r"workers on its own node, but only 2 node\(s\) can hold a worker"):
        concurrent_trials(two, _s(3, cpus=0.5, strategy="STRICT_SPREAD"), limit=10)
    # Nodes holding 4, 1 and 1 workers: 6 places, but each trial of 2 needs two distinct nodes, and the big node
    # cannot pair with itself: 2 trials, not 3. With 4, 1 and 0: 1 trial.
    assert concurrent_trials([NodeShape(4, 0), NodeShape(1, 0), NodeShape(1, 0)],
                             _s(2, strategy="STRICT_SPREAD"), limit=10) == 2
    assert concurrent_trials([NodeShape(4, 0), NodeShape(1, 0), NodeShape(1, 0)],
                             _s(2, strategy="SPREAD"), limit=10) == 3
    assert concurrent_trials([NodeShape(4, 0), NodeShape(1, 0), NodeShape(0.5, 0)],
                             _s(2, strategy="STRICT_SPREAD"), limit=10) == 1


def test_strict_pack_needs_one_node_for_the_whole_trial() -> None:
    nodes = [NodeShape(8, 4), NodeShape(8, 1, count=3)]
    assert concurrent_trials(nodes, _s(4, cpus=1, gpus=1, strategy="STRICT_PACK"), limit=10) == 1
    assert concurrent_trials(nodes, _s(4, cpus=1, gpus=1, strategy="PACK"), limit=10) == 1  # 7 GPUs: one trial
    with pytest.raises(SpecError, match=r"^scaling\.placement_strategy: STRICT_PACK puts all 5 workers of a trial on "
                                        r"one node, but no node holds more than 4"):
        concurrent_trials(nodes, _s(5, cpus=1, gpus=1, strategy="STRICT_PACK"), limit=10)


def test_autoscaler_node_types_count_with_their_maximum() -> None:
    """A CPU-only head plus a 4-GPU node type the autoscaler may add twice: 2 GPU trials of 4 workers at once."""
    nodes = [NodeShape(8, 0, name="head"), NodeShape(48, 4, count=2, name="gpu-x4")]
    assert concurrent_trials(nodes, _s(4, cpus=8, gpus=1), limit=16) == 2
    assert concurrent_trials(nodes, _s(1, cpus=8, gpus=1), limit=16) == 8
