"""Static checks of the files under cluster/: Ray's own schema, pinned versions and security defaults.

Offline and fast: nothing here starts Ray or talks to a cloud. Each check is a small helper with a
negative test that feeds it a hand-made bad input, so a green run means the helpers can see a problem.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
DOCKERFILE = CLUSTER / "docker" / "Dockerfile"
LAUNCHER_FILES = ("aws-gpu.yaml", "gcp-gpu.yaml", "local.yaml")
CLOUD_LAUNCHER_FILES = ("aws-gpu.yaml", "gcp-gpu.yaml")
SETUP_PINNED = ("ray", "torch", "torchvision", "mlflow")
SEARCH_SPACES = ("cifar10_resnet18.yaml", "cifar10_wrn34.yaml", "cifar100_resnet18.yaml")
ENTRYPOINT_PREFIX = "python orchestrator/tune.py --config "

GUARDED_PORTS = (8265, 6379, 5000)  # Ray dashboard, Ray GCS, MLflow
OPEN_CIDRS = frozenset({"0.0.0.0/0", "::/0"})
ALL_PORTS = (0, 65535)
RULE_KEYS = frozenset(
    {
        "FromPort",
        "ToPort",
        "from_port",
        "to_port",
        "fromPort",
        "toPort",
        "port",
        "ports",
        "allowed",
        "IpProtocol",
    }
)
PUBLIC_SERVICE_TYPES = frozenset({"LoadBalancer", "NodePort"})
PUBLIC_KINDS = frozenset({"Ingress", "Gateway", "HTTPRoute", "Route"})
CREDENTIAL_PATTERNS = {
    "AWS secret key setting": re.compile(r"aws_secret_access_key", re.IGNORECASE),
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "service-account key field": re.compile(r"\bprivate_key\b"),
    "PEM private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "inline launcher credentials": re.compile(r"\bgcp_credentials\b"),
}
# name[extras]==version, as in pip command lines, Dockerfiles and pyproject dependency strings.
PIN_RE = re.compile(r"(?<![\w.-])([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([A-Za-z0-9.+!_-]+)")


# --- loading -----------------------------------------------------------------------------------


def load_yaml(path: Path) -> dict[str, Any]:
    """The single YAML document in `path`."""
    with path.open() as f:
        doc = yaml.safe_load(f)
    assert isinstance(doc, dict), f"{path} is not a YAML mapping"
    return doc


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    """All non-empty YAML documents in `path`."""
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def cluster_yaml_files() -> list[Path]:
    return sorted(p for p in CLUSTER.rglob("*") if p.suffix in {".yaml", ".yml"})


def kuberay_doc(filename: str, kind: str) -> dict[str, Any]:
    """The one document of `kind` in cluster/kuberay/`filename`."""
    docs = [d for d in load_yaml_documents(KUBERAY / filename) if d.get("kind") == kind]
    assert len(docs) == 1, f"{filename}: expected one {kind}, found {len(docs)}"
    return docs[0]


def iter_dicts(obj: Any) -> Iterator[dict[str, Any]]:
    """Every mapping nested anywhere in `obj`, `obj` included."""
    if isinstance(obj, dict):
        yield obj
        for value in obj.values():
            yield from iter_dicts(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from iter_dicts(item)


def iter_strings(obj: Any) -> Iterator[str]:
    """Every string value nested anywhere in `obj`."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from iter_strings(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from iter_strings(item)


# --- versions ----------------------------------------------------------------------------------


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_versions(text: str) -> dict[str, str]:
    """Package name -> version for every `name==version` pin in `text`."""
    return {normalize(name): version for name, version in PIN_RE.findall(text)}


def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def pyproject_pins() -> dict[str, str]:
    """The `==` pins among the project's runtime dependencies."""
    return pinned_versions("\n".join(pyproject()["project"]["dependencies"]))


def pin_mismatches(text: str, reference: dict[str, str], required: tuple[str, ...]) -> list[str]:
    """Pins in `text` that are missing (for `required`) or differ from `reference`."""
    found = pinned_versions(text)
    problems = [f"{name} is not pinned" for name in required if name not in found]
    problems += [
        f"{name}=={version} but pyproject pins {reference[name]}"
        for name, version in found.items()
        if name in reference and version != reference[name]
    ]
    return problems


def launcher_commands(config: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    """The shell commands under `keys`, top level and per node type."""
    commands = [cmd for key in keys for cmd in config.get(key, [])]
    for node_type in config.get("available_node_types", {}).values():
        commands += [cmd for key in keys for cmd in node_type.get(key, [])]
    return commands


SETUP_KEYS = ("setup_commands", "head_setup_commands", "worker_setup_commands")
START_KEYS = ("head_start_ray_commands", "worker_start_ray_commands")
ALL_COMMAND_KEYS = ("initialization_commands", *SETUP_KEYS, *START_KEYS)


# --- security ----------------------------------------------------------------------------------


def port_span(value: Any) -> tuple[int, int] | None:
    """An int port, a "lo-hi" / "lo:hi" string, or -1 (every port) as an inclusive range."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return ALL_PORTS if value < 0 else (value, value)
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(-?\d+)\s*(?:[-:]\s*(\d+))?\s*", value)
        if match:
            low = int(match[1])
            return ALL_PORTS if low < 0 else (low, int(match[2] or low))
    return None


def _listed_port_spans(entries: Any) -> list[tuple[int, int]]:
    """Spans of a `ports` value: scalars, "lo-hi" strings, or {port, endPort} mappings."""
    spans: list[tuple[int, int]] = []
    for entry in entries if isinstance(entries, list) else [entries]:
        if isinstance(entry, dict):
            low, high = port_span(entry.get("port")), port_span(entry.get("endPort", entry.get("port")))
            if low and high:
                spans.append((low[0], high[1]))
        elif (span := port_span(entry)) is not None:
            spans.append(span)
    return spans


def rule_port_spans(rule: dict[str, Any]) -> list[tuple[int, int]]:
    """Port ranges a firewall / security-group rule admits (AWS, GCP, Terraform, Kubernetes shapes)."""
    spans: list[tuple[int, int]] = []
    if str(rule.get("IpProtocol", "")) in {"-1", "all"}:
        spans.append(ALL_PORTS)
    for low_key, high_key in (("FromPort", "ToPort"), ("from_port", "to_port"), ("fromPort", "toPort")):
        if low_key in rule or high_key in rule:
            low = port_span(rule.get(low_key, rule.get(high_key)))
            high = port_span(rule.get(high_key, rule.get(low_key)))
            if low and high:
                spans.append((min(low[0], high[0]), max(low[1], high[1])))
    for key in ("port", "ports"):
        if key in rule:
            spans += _listed_port_spans(rule[key])
    for allowed in rule.get("allowed", []):  # GCP firewall: no `ports` means every port
        if isinstance(allowed, dict):
            spans += _listed_port_spans(allowed["ports"]) if "ports" in allowed else [ALL_PORTS]
    return spans


def open_guarded_ports(doc: Any) -> list[str]:
    """Rules in `doc` that admit 0.0.0.0/0 (or ::/0) to a dashboard, GCS or MLflow port."""
    findings = []
    for rule in iter_dicts(doc):
        if not RULE_KEYS & rule.keys():
            continue
        if not any(s.strip() in OPEN_CIDRS for s in iter_strings(rule)):
            continue
        for low, high in rule_port_spans(rule):
            findings += [f"port {p} open to the internet: {rule}" for p in GUARDED_PORTS if low <= p <= high]
    for mapping in iter_dicts(doc):  # a hostPort is reachable on the node's own address
        if port_span(mapping.get("hostPort")) in {(p, p) for p in GUARDED_PORTS}:
            findings.append(f"hostPort {mapping['hostPort']} exposes a guarded port")
    return findings


def public_exposures(doc: dict[str, Any]) -> list[str]:
    """Kubernetes objects that publish something outside the cluster network."""
    kind = doc.get("kind")
    findings = []
    if kind == "Service" and doc.get("spec", {}).get("type") in PUBLIC_SERVICE_TYPES:
        findings.append(f"Service {doc['metadata']['name']} is of type {doc['spec']['type']}")
    if kind in PUBLIC_KINDS:
        findings.append(f"{kind} {doc.get('metadata', {}).get('name')} publishes a route")
    for mapping in iter_dicts(doc):
        if mapping.get("serviceType") in PUBLIC_SERVICE_TYPES:
            findings.append(f"serviceType {mapping['serviceType']}")
    return findings


def credential_findings(text: str) -> list[str]:
    """Names of the credential patterns that occur in `text`."""
    return [name for name, pattern in CREDENTIAL_PATTERNS.items() if pattern.search(text)]


# --- launcher YAMLs: Ray's schema and validator ----------------------------------------------------


@pytest.fixture(scope="module")
def ray_schema() -> dict[str, Any]:
    """The cluster-launcher schema shipped with the installed Ray (a project dependency)."""
    import ray

    path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def ray_launcher_util() -> Any:
    """Ray's own prepare/validate functions; skipped only where a Ray release has moved them."""
    try:
        util = importlib.import_module("ray.autoscaler._private.util")
    except ImportError:
        pytest.skip("this Ray has no ray.autoscaler._private.util")
    if not all(hasattr(util, name) for name in ("prepare_config", "validate_config")):
        pytest.skip("this Ray has no ray.autoscaler._private.util.validate_config")
    return util


@pytest.mark.parametrize("filename", LAUNCHER_FILES)
def test_launcher_yaml_matches_ray_schema(filename: str, ray_schema: dict[str, Any]) -> None:
    jsonschema.validate(load_yaml(CLUSTER / filename), ray_schema)


def test_ray_schema_rejects_unknown_keys(ray_schema: dict[str, Any]) -> None:
    bad = load_yaml(CLUSTER / "aws-gpu.yaml")
    bad["head_node"] = {"InstanceType": "m5.large"}  # a field Ray 2.x removed
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, ray_schema)


@pytest.mark.parametrize("filename", LAUNCHER_FILES)
def test_launcher_yaml_passes_ray_validate_config(filename: str, ray_launcher_util: Any) -> None:
    """What `ray up` does before touching a cloud: fill defaults, then validate."""
    config = ray_launcher_util.prepare_config(load_yaml(CLUSTER / filename))
    ray_launcher_util.validate_config(config)


def test_ray_validate_config_rejects_min_workers_above_max(ray_launcher_util: Any) -> None:
    bad = load_yaml(CLUSTER / "aws-gpu.yaml")
    bad["max_workers"] = 0
    bad["available_node_types"]["ray.worker.gpu1"]["min_workers"] = 1
    with pytest.raises(ValueError):
        ray_launcher_util.validate_config(ray_launcher_util.prepare_config(bad))


@pytest.mark.parametrize("filename", CLOUD_LAUNCHER_FILES)
def test_cloud_launcher_has_cpu_head_and_single_and_multi_gpu_workers(filename: str) -> None:
    config = load_yaml(CLUSTER / filename)
    node_types = config["available_node_types"]
    assert node_types[config["head_node_type"]]["resources"]["GPU"] == 0
    workers = {name: spec for name, spec in node_types.items() if name != config["head_node_type"]}
    gpus = sorted(spec["resources"]["GPU"] for spec in workers.values())
    assert gpus[0] == 1 and gpus[-1] > 1, f"want a 1-GPU and a multi-GPU worker type, got {gpus}"
    for name, spec in workers.items():
        assert 0 <= spec["min_workers"] <= spec["max_workers"], name


@pytest.mark.parametrize("filename", LAUNCHER_FILES)
def test_launcher_syncs_and_installs_the_checkout(filename: str) -> None:
    config = load_yaml(CLUSTER / filename)
    assert config["file_mounts"]["~/arat-tune"] == "."
    assert any(re.search(r"pip install ~/arat-tune\s*$", cmd) for cmd in config["setup_commands"])


# --- versions -----------------------------------------------------------------------------------


@pytest.mark.parametrize("filename", LAUNCHER_FILES)
def test_launcher_setup_pins_match_pyproject(filename: str) -> None:
    config = load_yaml(CLUSTER / filename)
    setup = "\n".join(launcher_commands(config, SETUP_KEYS))
    assert pin_mismatches(setup, pyproject_pins(), SETUP_PINNED) == []


def test_pin_check_flags_missing_and_different_versions() -> None:
    reference = {"ray": "2.60.0", "torch": "2.14.1"}
    text = 'pip install "ray[default]==2.59.0" "boto3==1.0"'
    assert pin_mismatches(text, reference, ("ray", "torch")) == [
        "torch is not pinned",
        "ray==2.59.0 but pyproject pins 2.60.0",
    ]


def test_dockerfile_pins_and_base_image_match_pyproject() -> None:
    text = DOCKERFILE.read_text()
    pins = pyproject_pins()
    assert pin_mismatches(text, pins, SETUP_PINNED) == []
    assert re.search(rf"^FROM rayproject/ray:{re.escape(pins['ray'])}-py311-gpu\s*$", text, re.MULTILINE)


@pytest.mark.parametrize("filename", CLOUD_LAUNCHER_FILES)
def test_launcher_docker_images_are_the_pinned_ray(filename: str) -> None:
    docker = load_yaml(CLUSTER / filename)["docker"]
    ray_version = pyproject_pins()["ray"]
    for key in ("image", "head_image", "worker_image"):
        if key in docker:
            assert docker[key].startswith(f"rayproject/ray:{ray_version}-"), docker[key]


def test_kuberay_versions_match_pyproject() -> None:
    project = pyproject()["project"]
    ray_version = pyproject_pins()["ray"]
    for spec in kuberay_cluster_specs():
        assert spec["rayVersion"] == ray_version
        for image in pod_images(spec):
            assert image.rsplit(":", 1)[1] == project["version"], image
    mlflow_pod = kuberay_doc("mlflow.yaml", "Deployment")["spec"]["template"]
    assert mlflow_pod["spec"]["containers"][0]["image"].endswith(f":{project['version']}")


# --- KubeRay manifests -------------------------------------------------------------------------------


def kuberay_cluster_specs() -> list[dict[str, Any]]:
    """The RayCluster's spec and the RayJob's rayClusterSpec."""
    return [
        kuberay_doc("raycluster.yaml", "RayCluster")["spec"],
        kuberay_doc("rayjob.yaml", "RayJob")["spec"]["rayClusterSpec"],
    ]


def pod_templates(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [spec["headGroupSpec"]["template"], *(group["template"] for group in spec["workerGroupSpecs"])]


def pod_images(spec: dict[str, Any]) -> list[str]:
    return [c["image"] for template in pod_templates(spec) for c in template["spec"]["containers"]]


def missing_raycluster_fields(spec: dict[str, Any]) -> list[str]:
    """Fields KubeRay needs in a RayCluster spec that `spec` lacks."""
    head = spec.get("headGroupSpec", {})
    missing = [f"headGroupSpec.{key}" for key in ("rayStartParams", "template") if key not in head]
    containers = head.get("template", {}).get("spec", {}).get("containers", [{}])
    if not containers[0].get("image"):
        missing.append("headGroupSpec.template.spec.containers[0].image")
    groups = spec.get("workerGroupSpecs") or []
    if not groups:
        missing.append("workerGroupSpecs")
    for i, group in enumerate(groups):
        for key in ("groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template"):
            if key not in group:
                missing.append(f"workerGroupSpecs[{i}].{key}")
    return missing


def test_kuberay_manifests_parse() -> None:
    for path in sorted(KUBERAY.glob("*.yaml")):
        docs = load_yaml_documents(path)
        assert docs, path
        assert all({"apiVersion", "kind", "metadata"} <= doc.keys() for doc in docs), path


def test_kuberay_cluster_specs_have_required_fields() -> None:
    for spec in kuberay_cluster_specs():
        assert missing_raycluster_fields(spec) == []


def test_required_field_check_flags_an_incomplete_spec() -> None:
    spec = copy.deepcopy(kuberay_cluster_specs()[0])
    del spec["headGroupSpec"]["rayStartParams"]
    del spec["workerGroupSpecs"][0]["maxReplicas"]
    assert missing_raycluster_fields(spec) == [
        "headGroupSpec.rayStartParams",
        "workerGroupSpecs[0].maxReplicas",
    ]


def test_kuberay_gpu_workers_request_gpus() -> None:
    for spec in kuberay_cluster_specs():
        gpus = []
        for group in spec["workerGroupSpecs"]:
            limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
            gpus.append(int(limits["nvidia.com/gpu"]))
            assert 0 <= group["minReplicas"] <= group["maxReplicas"], group["groupName"]
        assert min(gpus) == 1 and max(gpus) > 1, gpus


def test_rayjob_cluster_is_the_raycluster() -> None:
    """One cluster definition, two copies: they must not drift apart."""
    cluster_spec, job_cluster_spec = kuberay_cluster_specs()
    assert job_cluster_spec == cluster_spec


def entrypoint_config(entrypoint: str) -> str:
    """The --config file named by a tune.py entrypoint."""
    assert entrypoint.startswith(ENTRYPOINT_PREFIX), entrypoint
    return entrypoint[len(ENTRYPOINT_PREFIX) :].split()[0]


def test_rayjob_runs_a_known_search_space() -> None:
    spec = kuberay_doc("rayjob.yaml", "RayJob")["spec"]
    config = entrypoint_config(spec["entrypoint"])
    assert re.fullmatch(r"search_spaces/[\w.-]+\.yaml", config), config
    assert Path(config).name in SEARCH_SPACES
    if (ROOT / "search_spaces").is_dir():
        assert (ROOT / config).is_file(), f"{config} does not exist"
    assert "--storage-path " in spec["entrypoint"]
    # Its GPU worker groups start at 0 replicas and KubeRay's autoscaler publishes no node types the driver can
    # read: without --autoscaling the study would be refused before the first GPU pod exists.
    groups = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert all(g.get("minReplicas", 0) == 0 for g in groups) and "--autoscaling" in spec["entrypoint"].split()
    assert spec["shutdownAfterJobFinishes"] is True


def test_entrypoint_check_rejects_other_commands() -> None:
    with pytest.raises(AssertionError):
        entrypoint_config("python train.py --config search_spaces/cifar10_resnet18.yaml")
    assert entrypoint_config(ENTRYPOINT_PREFIX + "search_spaces/x.yaml --resume") == "search_spaces/x.yaml"


# --- token authentication --------------------------------------------------------------------------


def token_env_problems(container: dict[str, Any]) -> list[str]:
    """What keeps `container` from running with Ray token auth from a Secret."""
    env = {item["name"]: item for item in container.get("env", [])}
    problems = []
    if env.get("RAY_AUTH_MODE", {}).get("value") != "token":
        problems.append(f"{container.get('name')}: RAY_AUTH_MODE is not token")
    if "secretKeyRef" not in env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}):
        problems.append(f"{container.get('name')}: RAY_AUTH_TOKEN does not come from a Secret")
    return problems


def test_kuberay_pods_use_token_auth_from_a_secret() -> None:
    for spec in kuberay_cluster_specs():
        assert spec["authOptions"]["mode"] == "token"
        problems = token_env_problems(spec["autoscalerOptions"])
        for template in pod_templates(spec):
            for container in template["spec"]["containers"]:
                problems += token_env_problems(container)
        assert problems == []


def test_token_check_flags_plain_token() -> None:
    container = {"name": "c", "env": [{"name": "RAY_AUTH_TOKEN", "value": "abc"}]}
    assert token_env_problems(container) == [
        "c: RAY_AUTH_MODE is not token",
        "c: RAY_AUTH_TOKEN does not come from a Secret",
    ]


@pytest.mark.parametrize("filename", LAUNCHER_FILES)
def test_launcher_starts_ray_with_token_auth(filename: str) -> None:
    commands = launcher_commands(load_yaml(CLUSTER / filename), START_KEYS)
    starts = [cmd for cmd in commands if "ray start" in cmd]
    assert len(starts) == 2
    assert all("RAY_AUTH_MODE=token" in cmd for cmd in starts)


# --- security ------------------------------------------------------------------------------------


@pytest.mark.parametrize("filename", LAUNCHER_FILES)
def test_launcher_servers_do_not_listen_on_every_interface(filename: str) -> None:
    config = load_yaml(CLUSTER / filename)
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert re.search(r"mlflow server .*--host ", head_start)
    assert all("0.0.0.0" not in cmd for cmd in launcher_commands(config, ALL_COMMAND_KEYS))


def test_aws_nodes_get_credentials_from_instance_profiles() -> None:
    config = load_yaml(CLUSTER / "aws-gpu.yaml")
    for name, node_type in config["available_node_types"].items():
        assert node_type["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), name


def test_gcp_workers_get_credentials_from_service_accounts() -> None:
    config = load_yaml(CLUSTER / "gcp-gpu.yaml")
    assert "gcp_credentials" not in config["provider"]
    for name, node_type in config["available_node_types"].items():
        if name != config["head_node_type"]:  # Ray attaches its own service account to the head
            assert node_type["node_config"]["serviceAccounts"][0]["email"], name


@pytest.mark.parametrize("path", cluster_yaml_files(), ids=lambda p: str(p.relative_to(CLUSTER)))
def test_no_guarded_port_is_open_to_the_internet(path: Path) -> None:
    for doc in load_yaml_documents(path):
        assert open_guarded_ports(doc) == []


@pytest.mark.parametrize(
    "rule",
    [
        {"IpProtocol": "tcp", "FromPort": 5000, "ToPort": 5000, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        {"IpProtocol": "tcp", "FromPort": 8000, "ToPort": 8300, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        {"FromPort": 6379, "ToPort": 6379, "Ipv6Ranges": [{"CidrIpv6": "::/0"}]},
        {"sourceRanges": ["0.0.0.0/0"], "allowed": [{"IPProtocol": "tcp", "ports": ["6000-7000"]}]},
        {"sourceRanges": ["0.0.0.0/0"], "allowed": [{"IPProtocol": "all"}]},
        {"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 8000, "endPort": 9000}]},
        {"cidr_blocks": ["0.0.0.0/0"], "from_port": 8265, "to_port": 8265},
        {"containerPort": 8265, "hostPort": 8265},
    ],
)
def test_port_check_flags_open_rules(rule: dict[str, Any]) -> None:
    doc = {"provider": {"security_group": {"GroupName": "bad", "IpPermissions": [rule]}}}
    assert open_guarded_ports(doc) != []


@pytest.mark.parametrize(
    "rule",
    [
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]},
        {"sourceRanges": ["0.0.0.0/0"], "allowed": [{"IPProtocol": "tcp", "ports": ["22", "443"]}]},
        {"name": "dashboard", "containerPort": 8265},
    ],
)
def test_port_check_passes_safe_rules(rule: dict[str, Any]) -> None:
    assert open_guarded_ports({"rules": [rule]}) == []


@pytest.mark.parametrize("path", cluster_yaml_files(), ids=lambda p: str(p.relative_to(CLUSTER)))
def test_nothing_is_published_outside_the_cluster(path: Path) -> None:
    for doc in load_yaml_documents(path):
        assert public_exposures(doc) == []


def test_exposure_check_flags_public_services() -> None:
    service = {"kind": "Service", "metadata": {"name": "mlflow"}, "spec": {"type": "LoadBalancer"}}
    ray_cluster = {"kind": "RayCluster", "spec": {"headGroupSpec": {"serviceType": "NodePort"}}}
    ingress = {"kind": "Ingress", "metadata": {"name": "dashboard"}}
    assert public_exposures(service) == ["Service mlflow is of type LoadBalancer"]
    assert public_exposures(ray_cluster) == ["serviceType NodePort"]
    assert public_exposures(ingress) == ["Ingress dashboard publishes a route"]


def test_no_cloud_credentials_under_cluster() -> None:
    for path in sorted(p for p in CLUSTER.rglob("*") if p.is_file()):
        assert credential_findings(path.read_text(errors="replace")) == [], path


def test_credential_check_flags_keys() -> None:
    fake_key_id = "AKIA" + "ABCDEFGHIJKLMNOP"
    assert credential_findings(f"aws_access_key_id: {fake_key_id}") == ["AWS access key id"]
    assert credential_findings("AWS_SECRET_ACCESS_KEY=x") == ["AWS secret key setting"]
    assert credential_findings('{"type": "service_account", "private_key": "..."}') == [
        "service-account key field"
    ]
    assert credential_findings("-----BEGIN RSA PRIVATE KEY-----") == ["PEM private key"]
    assert credential_findings("ssh_private_key: ~/.ssh/id_ed25519") == []
