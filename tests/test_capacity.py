"""Placement checks before a study starts: a trial whose workers no set of nodes can hold is refused (its placement
group would wait forever), and the number of trials run at once follows what the nodes hold."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import REPO

from orchestrator.capacity import NodeShape, concurrent_trials, launcher_node_types, workers_per_node
from orchestrator.space import Scaling, SpecError, load_spec


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


def test_our_launcher_configs_give_their_gpu_node_types() -> None:
    """``ray up`` leaves the cluster YAML on the head as ``~/ray_bootstrap_config.yaml``: read from ours."""
    aws = {n.name: n for n in launcher_node_types(REPO / "cluster" / "aws-gpu.yaml")}
    assert aws == {"ray.worker.gpu1": NodeShape(4, 1, 4, "ray.worker.gpu1"),
                   "ray.worker.gpu4": NodeShape(48, 4, 2, "ray.worker.gpu4")}  # the head type is left out
    gcp = launcher_node_types(REPO / "cluster" / "gcp-gpu.yaml")
    assert sorted((n.gpus, n.count) for n in gcp) == [(1.0, 4), (4.0, 2)]
    # The GPU presets fit there: the 1-GPU, 4-CPU trials of cifar10_resnet18 run 4 + 2 x 4 = 12 at once.
    spec = load_spec(REPO / "search_spaces" / "cifar10_resnet18.yaml")
    assert spec.scaling.use_gpu and concurrent_trials(list(aws.values()), spec.scaling, limit=100) == 12


def test_launcher_max_workers_caps_every_node_type(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        "max_workers: 3\nhead_node_type: head\navailable_node_types:\n"
        "  head: {resources: {CPU: 8}, max_workers: 0}\n"
        "  gpu: {resources: {CPU: 4, GPU: 1}, min_workers: 0, max_workers: 10}\n"
        "  cpu: {resources: {CPU: 16}}\n")
    assert launcher_node_types(tmp_path / "c.yaml") == [NodeShape(4, 1, 3, "gpu"), NodeShape(16, 0, 3, "cpu")]


_AUTOSCALER_SCRIPT = """
import json, shutil, sys
from pathlib import Path
import ray
from ray.core.generated import autoscaler_pb2
from ray.experimental import internal_kv
from orchestrator.space import SpecError, load_spec
from orchestrator.capacity import autoscaler_node_types, check_cluster

repo = Path(sys.argv[1])
spec = load_spec(repo / "search_spaces" / "quickstart.yaml", [
    "scaling.use_gpu=true", "scaling.gpus_per_worker=1", "scaling.num_workers=4", "scaling.cpus_per_worker=1",
    "device=auto", "search.num_samples=8"])
ray.init(num_cpus=1, num_gpus=0, include_dashboard=False)
out = {}
try:
    check_cluster(spec)
except SpecError as err:
    out["live_nodes_only"] = str(err)
out["autoscaling_flag"] = check_cluster(spec, autoscaling=True)
# What `ray up` leaves on the head (HOME is a temporary directory here): our AWS launcher config.
shutil.copy(repo / "cluster" / "aws-gpu.yaml", Path.home() / "ray_bootstrap_config.yaml")
out["launcher_config"] = check_cluster(spec)
# What an autoscaler that publishes its node types writes in the GCS: up to two 8-CPU, 4-GPU nodes.
config = autoscaler_pb2.ClusterConfig(node_group_configs=[autoscaler_pb2.NodeGroupConfig(
    name="gpu-x4", resources={"CPU": 8, "GPU": 4}, min_count=0, max_count=2)])
internal_kv._internal_kv_put(ray._raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY.encode(), config.SerializeToString(),
                             namespace=ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE.encode())
out["gcs_record"] = check_cluster(spec)
# A Ray release without the private GCS reader: no record, so the launcher's config on the head counts again.
sys.modules["ray._private.state"] = None
out["reader_gone"] = [autoscaler_node_types(), check_cluster(spec)]
ray.shutdown()
print("RESULT " + json.dumps(out))
"""


@pytest.mark.ray
def test_a_gpu_study_on_a_cluster_that_may_add_gpu_nodes() -> None:
    """A real local Ray with 1 CPU and no GPU, and a study of 4 one-GPU workers per trial: refused on the live nodes
    alone; let through (8 at a time, the samples) with --autoscaling; sized from the launcher's config on the head
    (4 one-GPU nodes and 2 four-GPU nodes: 12 workers, 3 trials); sized from an autoscaler's GCS record (2 trials);
    and, when Ray's private GCS reader cannot be imported, from the launcher's config again (3 trials)."""
    temp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's unix socket paths must stay < 108 bytes
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _AUTOSCALER_SCRIPT, str(REPO)], cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": temp, "HOME": temp},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=180)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert proc.returncode == 0 and line is not None, proc.stdout[-3000:]
    out = json.loads(line[len("RESULT "):])
    assert out["live_nodes_only"].startswith("scaling.gpus_per_worker: a trial needs 4 GPUs")
    assert out == {"live_nodes_only": out["live_nodes_only"], "autoscaling_flag": 8, "launcher_config": 3,
                   "gcs_record": 2, "reader_gone": [None, 3]}
