"""The Kubernetes manifests (deploy/k8s), rendered offline with `kubectl kustomize` from a copy of
the tree holding a real bundle (group config and one key per owner), and checked for what a
cluster would need: probes on the port the replica listens on, the state volume at its data dir,
the key readable by the replica and by nobody else, a GPU, metrics where Prometheus is told to
look, each owner's own replica id and key, and no secret material outside Secrets.
"""

from __future__ import annotations

import base64
import json
import posixpath
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest

from certs.config import GroupConfig
from certs.keys import KeyPair
from deploy.bundle import Bundle, install_k8s, make_bundle
from tests.deploy.helpers import DEPLOY, kustomize, last, read_dockerfile

N = 4
REPLICA_SERVICE = "quorumserve.v1.Replica"

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed (kubectl kustomize renders the manifests)")


@pytest.fixture(scope="module")
def k8s(tmp_path_factory: pytest.TempPathFactory, digits_packages: list[Path]) -> tuple[Path, Bundle]:
    """A copy of deploy/k8s with group.json and each owner's replica.key, as
    `python -m deploy.bundle k8s` writes them."""
    root = tmp_path_factory.mktemp("k8s")
    tree = root / "k8s"
    shutil.copytree(DEPLOY / "k8s", tree)
    addresses = {i: f"replica.owner-{i}.example.net:7100" for i in range(N)}
    bundle = make_bundle(root / "bundle", addresses, model_packages=digits_packages)
    install_k8s(bundle, tree)
    return tree, bundle


@pytest.fixture(scope="module")
def overlays(k8s: tuple[Path, Bundle]) -> dict[int, list[dict[str, Any]]]:
    tree, _ = k8s
    return {i: kustomize(tree / "replica" / "overlays" / f"owner-{i}") for i in range(N)}


@pytest.fixture(scope="module")
def gateway(k8s: tuple[Path, Bundle]) -> list[dict[str, Any]]:
    return kustomize(k8s[0] / "gateway")


def one(objects: list[dict[str, Any]], kind: str, name_part: str = "") -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and name_part in o["metadata"]["name"]]
    assert len(found) == 1, f"{len(found)} {kind} named *{name_part}*: {[o['metadata']['name'] for o in found]}"
    return found[0]


def container(pod_spec: dict[str, Any], name: str, init: bool = False) -> dict[str, Any]:
    return next(c for c in pod_spec["initContainers" if init else "containers"] if c["name"] == name)


def mount_of(c: dict[str, Any], volume: str) -> dict[str, Any]:
    mounts = [m for m in c.get("volumeMounts", []) if m["name"] == volume]
    assert len(mounts) == 1, f"container {c['name']} mounts volume {volume} {len(mounts)} times"
    return mounts[0]


def replica_toml(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return tomllib.loads(one(objects, "ConfigMap", "replica-config")["data"]["replica.toml"])


def load_group_config_text(text: str) -> GroupConfig:
    return GroupConfig.from_json(json.loads(text))


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


@pytest.mark.parametrize("owner", range(N))
def test_overlay_runs_one_replica_with_its_own_id_config_and_key(owner: int, overlays: dict[int, list[dict[str, Any]]], k8s: tuple[Path, Bundle]) -> None:
    _, bundle = k8s
    objects = overlays[owner]
    statefulset = one(objects, "StatefulSet")
    assert statefulset["spec"]["replicas"] == 1, "a second pod would sign with the same key"
    config = replica_toml(objects)
    assert config["replica_id"] == owner
    configmap = one(objects, "ConfigMap", "replica-config")
    assert load_group_config_text(configmap["data"]["group.json"]).digest == bundle.config.digest
    # the Secret holds this owner's replica key: the one the group config lists for replica <owner>
    secret = one(objects, "Secret", "replica-key")
    key = json.loads(base64.b64decode(secret["data"]["replica.key"]))
    member = bundle.config.member(owner)
    assert member is not None and KeyPair(bytes.fromhex(key["seed"])).public_key == member.public_key
    # and the pod reads exactly that Secret and that ConfigMap
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    assert volumes["key-secret"]["secret"]["secretName"] == secret["metadata"]["name"]
    assert volumes["config"]["configMap"]["name"] == configmap["metadata"]["name"]
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert labels["quorumserve.io/replica-id"] == str(owner)


def test_owners_install_into_separate_namespaces_with_separate_names(overlays: dict[int, list[dict[str, Any]]]) -> None:
    namespaces = set()
    secret_names = set()
    for owner, objects in overlays.items():
        (namespace,) = {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"}
        assert one(objects, "Namespace")["metadata"]["name"] == namespace
        namespaces.add(namespace)
        secret_names.add(one(objects, "Secret")["metadata"]["name"])
    assert len(namespaces) == N and len(secret_names) == N


@pytest.mark.parametrize("owner", range(N))
def test_probes_ask_the_grpc_health_service_on_the_port_the_replica_listens_on(owner: int, overlays: dict[int, list[dict[str, Any]]]) -> None:
    objects = overlays[owner]
    config = replica_toml(objects)
    listen_port = port_of(config["listen"])
    assert config["listen"].startswith("0.0.0.0:"), "kubelet probes and peers connect to the pod IP"
    replica = container(one(objects, "StatefulSet")["spec"]["template"]["spec"], "replica")
    ports = {p["name"]: p["containerPort"] for p in replica["ports"]}
    assert ports["grpc"] == listen_port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc_probe = replica[probe]["grpc"]
        assert grpc_probe["port"] == listen_port and grpc_probe["service"] == REPLICA_SERVICE, probe
    # the startup probe allows for Triton's start and the model load before liveness applies
    startup = replica["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    # the peer Service reaches that port, and the group config's address for this replica uses it
    peer = one(objects, "Service", "peer")
    assert peer["spec"]["type"] == "LoadBalancer"
    assert [p["targetPort"] for p in peer["spec"]["ports"]] == ["grpc"]


@pytest.mark.parametrize("owner", range(N))
def test_state_volume_is_the_data_dir_and_survives_the_pod(owner: int, overlays: dict[int, list[dict[str, Any]]]) -> None:
    objects = overlays[owner]
    config = replica_toml(objects)
    statefulset = one(objects, "StatefulSet")
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    replica = container(statefulset["spec"]["template"]["spec"], "replica")
    mount = mount_of(replica, claim["metadata"]["name"])
    assert mount["mountPath"] == config["data_dir"] and not mount.get("readOnly", False)
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    # the replica's user can write it; nothing else it writes goes to the (read-only) image
    pod = statefulset["spec"]["template"]["spec"]
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]
    assert replica["securityContext"]["readOnlyRootFilesystem"] is True
    assert mount_of(replica, "tmp")["mountPath"] == "/tmp"
    # the model is read from the models claim, read-only
    models = mount_of(replica, "models")
    assert config["model"]["package"].startswith(models["mountPath"].rstrip("/") + "/") and models["readOnly"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim_name = volumes["models"]["persistentVolumeClaim"]["claimName"]
    assert one(objects, "PersistentVolumeClaim")["metadata"]["name"] == claim_name


@pytest.mark.parametrize("owner", range(N))
def test_key_reaches_the_replica_owner_only(owner: int, overlays: dict[int, list[dict[str, Any]]]) -> None:
    objects = overlays[owner]
    config = replica_toml(objects)
    pod = one(objects, "StatefulSet")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["key-secret"]["secret"]["defaultMode"] in (0o400, 0o600)
    assert volumes["key"]["emptyDir"]["medium"] == "Memory", "the key copy must never touch a disk"
    replica = container(pod, "replica")
    # the replica container never mounts the Secret (fsGroup would make it group-readable,
    # which the replica refuses); it reads a 0400 copy made by the init container
    assert all(m["name"] != "key-secret" for m in replica["volumeMounts"])
    key_mount = mount_of(replica, "key")
    assert key_mount["readOnly"] and posixpath.dirname(config["key_file"]) == key_mount["mountPath"]
    init = container(pod, "install-key", init=True)
    secret_dir = mount_of(init, "key-secret")["mountPath"]
    key_dir = mount_of(init, "key")["mountPath"]
    command = init["command"]
    assert command[:3] == ["install", "-m", "0400"]
    assert command[3] == posixpath.join(secret_dir, "replica.key") and command[4] == posixpath.join(key_dir, posixpath.basename(config["key_file"]))
    # everyone runs as the image's non-root user, so the copy belongs to the replica
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    image_user = last(read_dockerfile(DEPLOY / "docker" / "Dockerfile.replica"), "USER").arguments.split(":")[0]
    assert security["runAsUser"] == int(image_user)
    for c in (init, replica):
        assert "runAsUser" not in c.get("securityContext", {}) and c["securityContext"]["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize("owner", range(N))
def test_replica_requests_a_gpu(owner: int, overlays: dict[int, list[dict[str, Any]]]) -> None:
    replica = container(one(overlays[owner], "StatefulSet")["spec"]["template"]["spec"], "replica")
    assert int(replica["resources"]["limits"]["nvidia.com/gpu"]) >= 1  # extended resources are set as limits
    assert replica["resources"]["requests"]["nvidia.com/gpu"] == replica["resources"]["limits"]["nvidia.com/gpu"]


@pytest.mark.parametrize("owner", range(N))
def test_prometheus_scrapes_the_replicas_metrics_port(owner: int, overlays: dict[int, list[dict[str, Any]]]) -> None:
    objects = overlays[owner]
    config = replica_toml(objects)
    template = one(objects, "StatefulSet")["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == config["metrics_port"]
    ports = {p["name"]: p["containerPort"] for p in container(template["spec"], "replica")["ports"]}
    assert ports["metrics"] == config["metrics_port"]


def test_the_config_is_mounted_where_the_image_reads_it(overlays: dict[int, list[dict[str, Any]]]) -> None:
    entrypoint = last(read_dockerfile(DEPLOY / "docker" / "Dockerfile.replica"), "ENTRYPOINT").exec_form()
    config_path = entrypoint[entrypoint.index("--config") + 1]
    for objects in overlays.values():
        config = replica_toml(objects)
        replica = container(one(objects, "StatefulSet")["spec"]["template"]["spec"], "replica")
        mount = mount_of(replica, "config")
        assert posixpath.join(mount["mountPath"], "replica.toml") == config_path
        assert posixpath.join(mount["mountPath"], "group.json") == config["group_config"]
        assert "command" not in replica, "the image's entrypoint runs the replica"


def test_no_secret_material_outside_secrets(k8s: tuple[Path, Bundle], overlays: dict[int, list[dict[str, Any]]], gateway: list[dict[str, Any]]) -> None:
    _, bundle = k8s
    seeds = []
    for i in range(N):
        for path in (bundle.replica_key_path(i), bundle.owner_key_path(i)):
            seeds.append(json.loads(path.read_text())["seed"])
    rendered = [o for objects in overlays.values() for o in objects] + gateway
    for o in rendered:
        if o["kind"] == "Secret":
            continue
        text = json.dumps(o)
        assert not any(seed in text for seed in seeds), f"{o['kind']} {o['metadata']['name']} holds a private key"
        assert '\\"seed\\"' not in text and "PRIVATE KEY" not in text
    assert not [o for o in gateway if o["kind"] == "Secret"], "the gateway holds no keys"


def test_gateway_serves_the_group_config_on_its_service_port(gateway: list[dict[str, Any]], k8s: tuple[Path, Bundle]) -> None:
    _, bundle = k8s
    deployment = one(gateway, "Deployment")
    assert deployment["spec"]["replicas"] >= 2, "one gateway is a single point of failure for clients that use it"
    pod = deployment["spec"]["template"]["spec"]
    c = container(pod, "gateway")
    args = c["args"]
    port = int(args[args.index("--port") + 1])
    assert args[args.index("--host") + 1] == "0.0.0.0"
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["grpc"] == port
    config_path = args[args.index("--config") + 1]
    mount = mount_of(c, "config")
    assert posixpath.dirname(config_path) == mount["mountPath"]
    configmap = one(gateway, "ConfigMap")
    assert {v["name"]: v for v in pod["volumes"]}["config"]["configMap"]["name"] == configmap["metadata"]["name"]
    assert load_group_config_text(configmap["data"][posixpath.basename(config_path)]).digest == bundle.config.digest
    (service,) = [o for o in gateway if o["kind"] == "Service" and o["metadata"]["name"] == "quorumserve-gateway"]
    assert service["spec"]["ports"][0]["targetPort"] == "grpc"
    assert c["readinessProbe"]["exec"]["command"][-2:] == ["--kserve", f"127.0.0.1:{port}"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == int(args[args.index("--metrics-port") + 1])
    assert pod["securityContext"]["runAsNonRoot"] is True
