"""Placement checks before a study starts: a trial whose workers no set of nodes can hold is refused (its placement
group would wait forever), and the number of trials run at once follows what the nodes hold."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
from conftest import REPO

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


_AUTOSCALER_SCRIPT = """
import json, sys
import ray
from ray.core.generated import autoscaler_pb2
from ray.experimental import internal_kv
from orchestrator.space import SpecError, load_spec
from orchestrator.tune import check_cluster

spec = load_spec(sys.argv[1], ["scaling.use_gpu=true", "scaling.gpus_per_worker=1", "scaling.num_workers=4",
                               "scaling.cpus_per_worker=1", "device=auto", "search.num_samples=8"])
ray.init(num_cpus=1, num_gpus=0, include_dashboard=False)
out = {}
try:
    check_cluster(spec)
except SpecError as err:
    out["before"] = str(err)
# What the autoscaler publishes in the GCS: its node types, here up to two 8-CPU, 4-GPU nodes.
config = autoscaler_pb2.ClusterConfig(node_group_configs=[autoscaler_pb2.NodeGroupConfig(
    name="gpu-x4", resources={"CPU": 8, "GPU": 4}, min_count=0, max_count=2)])
internal_kv._internal_kv_put(ray._raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY.encode(), config.SerializeToString(),
                             namespace=ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE.encode())
out["after"] = check_cluster(spec)
ray.shutdown()
print("RESULT " + json.dumps(out))
"""


def test_a_gpu_study_starts_on_a_cluster_whose_autoscaler_may_add_gpu_nodes() -> None:
    """A real local Ray (1 CPU, no GPU): refused while nothing says GPU nodes may come; once the autoscaler's
    record of its node types is in the GCS, 2 trials of 4 one-GPU workers fit (two 4-GPU nodes)."""
    temp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's unix socket paths must stay < 108 bytes
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _AUTOSCALER_SCRIPT, str(REPO / "search_spaces" / "quickstart.yaml")],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": temp},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=180)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert proc.returncode == 0 and line is not None, proc.stdout[-3000:]
    out = json.loads(line[len("RESULT "):])
    assert out["before"].startswith("scaling.gpus_per_worker: a trial needs 4 GPUs")
    assert out["after"] == 2
