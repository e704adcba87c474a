"""The compose group (deploy/compose), validated and merged by `docker-compose config` (no
container daemon runs here), with a real bundle of keys, models and group config.

Checks what would break a `docker-compose up`: a replica that reads another's config or key,
a config path nothing mounts, a group config whose addresses are not the services' names,
replicas reachable from outside their private network, a missing GPU reservation.
"""

from __future__ import annotations

import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from certs.config import load_group_config
from deploy.bundle import REPLICA_PORT, Bundle, make_bundle
from replica.config import ReplicaConfig, load_replica_config
from tests.deploy.helpers import DEPLOY, compose_config, compose_tool, last, read_dockerfile

COMPOSE = DEPLOY / "compose"
N = 4

pytestmark = pytest.mark.skipif(
    compose_tool() is None,
    reason="docker-compose is not installed (CI installs Debian's docker-compose in .ci/run; locally: apt-get install docker-compose)",
)


@pytest.fixture(scope="module")
def compose_dir(tmp_path_factory: pytest.TempPathFactory, digits_packages: list[Path]) -> tuple[Path, Bundle]:
    """A copy of deploy/compose with a bundle in it, as `python -m deploy.bundle compose` makes."""
    directory = tmp_path_factory.mktemp("compose") / "compose"
    shutil.copytree(COMPOSE, directory, ignore=shutil.ignore_patterns("bundle"))
    bundle = make_bundle(directory / "bundle", {i: f"replica-{i}:{REPLICA_PORT}" for i in range(N)}, model_packages=digits_packages)
    return directory, bundle


@pytest.fixture(scope="module")
def cpu(compose_dir: tuple[Path, Bundle]) -> dict[str, Any]:
    return compose_config([compose_dir[0] / "docker-compose.yml"])


@pytest.fixture(scope="module")
def gpu(compose_dir: tuple[Path, Bundle]) -> dict[str, Any]:
    return compose_config([compose_dir[0] / "docker-compose.yml", compose_dir[0] / "docker-compose.gpu.yml"])


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """target -> (source, read-only) for a service's volumes, short or long syntax."""
    mounts: dict[str, tuple[str, bool]] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            parts = volume.split(":")
            mounts[parts[1]] = (parts[0], len(parts) > 2 and "ro" in parts[2].split(","))
        else:
            mounts[volume["target"]] = (str(volume["source"]), bool(volume.get("read_only", False)))
    return mounts


def _replica_config(compose_dir: Path, service: dict[str, Any]) -> ReplicaConfig:
    source, read_only = _mounts(service)["/etc/quorumserve/replica.toml"]
    assert read_only
    return load_replica_config(Path(source) if Path(source).is_absolute() else compose_dir / source)


def test_the_group_is_four_replicas_and_a_gateway(cpu: dict[str, Any]) -> None:
    assert set(cpu["services"]) == {f"replica-{i}" for i in range(N)} | {"gateway"}


def test_each_replica_mounts_its_own_config_key_model_and_state(compose_dir: tuple[Path, Bundle], cpu: dict[str, Any]) -> None:
    directory, bundle = compose_dir
    entrypoint = last(read_dockerfile(DEPLOY / "docker" / "Dockerfile.replica"), "ENTRYPOINT").exec_form()
    config_in_image = entrypoint[entrypoint.index("--config") + 1]
    state_volumes = set()
    for i in range(N):
        service = cpu["services"][f"replica-{i}"]
        mounts = _mounts(service)
        assert config_in_image in mounts, "the entrypoint's config path is not mounted"
        config = _replica_config(directory, service)
        assert config.replica_id == i
        # the group config and the model: read-only, the bundle's
        source, read_only = mounts[str(config.group_config)]
        assert read_only and Path(source) == bundle.group_config_path
        source, read_only = mounts[str(config.model_package)]
        assert read_only and Path(source) == bundle.model_path(i)
        # state on a named volume of its own, at the data dir
        source, read_only = mounts[str(config.data_dir)]
        assert not read_only and not source.startswith("/")
        state_volumes.add(source)
        # the key is this replica's secret, where the config looks for it
        (secret,) = service["secrets"]
        assert f"/run/secrets/{secret['target']}" == str(config.key_file)
        assert Path(cpu["secrets"][secret["source"]]["file"]) == bundle.replica_key_path(i)
        # keys never travel as plain mounts or environment
        assert not any("key" in Path(s).name for s, _ in mounts.values())
        assert not any("seed" in str(v).lower() or "key" in str(k).lower() for k, v in (service.get("environment") or {}).items())
    assert len(state_volumes) == N


def test_group_config_names_the_services_on_the_port_they_listen_on(compose_dir: tuple[Path, Bundle], cpu: dict[str, Any]) -> None:
    directory, bundle = compose_dir
    config = load_group_config(bundle.group_config_path)
    for member in config.members:
        host, port = member.address.rsplit(":", 1)
        service = cpu["services"][host]
        assert service.get("hostname", host) == host
        assert int(port) == _replica_config(directory, service).listen_port


def test_replicas_live_on_a_private_network_and_only_the_gateway_is_published(cpu: dict[str, Any]) -> None:
    private = [name for name, network in cpu["networks"].items() if network and network.get("internal")]
    assert private, "no internal network"
    for i in range(N):
        service = cpu["services"][f"replica-{i}"]
        assert set(service["networks"]) <= set(private)
        assert not service.get("ports"), f"replica-{i} publishes ports"
    gateway = cpu["services"]["gateway"]
    assert set(gateway["networks"]) & set(private), "the gateway cannot reach the replicas"
    assert set(gateway["networks"]) - set(private), "the gateway is not reachable from outside"
    (port,) = gateway["ports"]
    published = port if isinstance(port, dict) else None
    target = int(published["target"]) if published else int(str(port).split(":")[-1].split("/")[0])
    assert target == int(gateway["command"][gateway["command"].index("--port") + 1])
    assert all(gateway["depends_on"][f"replica-{i}"]["condition"] == "service_healthy" for i in range(N))


def test_gateway_reads_the_bundles_group_config(compose_dir: tuple[Path, Bundle], cpu: dict[str, Any]) -> None:
    _, bundle = compose_dir
    gateway = cpu["services"]["gateway"]
    path = gateway["command"][gateway["command"].index("--config") + 1]
    source, read_only = _mounts(gateway)[path]
    assert read_only and Path(source) == bundle.group_config_path
    assert not gateway.get("secrets"), "the gateway holds no keys"


def test_gpu_override_reserves_a_gpu_for_every_replica(gpu: dict[str, Any], cpu: dict[str, Any]) -> None:
    for i in range(N):
        devices = gpu["services"][f"replica-{i}"]["deploy"]["resources"]["reservations"]["devices"]
        assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
        assert "deploy" not in cpu["services"][f"replica-{i}"], "the base file must start on a host without GPUs"
    assert "deploy" not in gpu["services"]["gateway"]


def test_gpu_ids_are_chosen_per_replica(compose_dir: tuple[Path, Bundle]) -> None:
    merged = compose_config(
        [compose_dir[0] / "docker-compose.yml", compose_dir[0] / "docker-compose.gpu.yml"],
        env={f"QUORUMSERVE_GPU_{i}": str(i) for i in range(N)},
    )
    chosen = [merged["services"][f"replica-{i}"]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for i in range(N)]
    assert chosen == [[str(i)] for i in range(N)]


def test_bundle_keys_are_owner_only(compose_dir: tuple[Path, Bundle]) -> None:
    _, bundle = compose_dir
    for i in range(N):
        for key in (bundle.replica_key_path(i), bundle.owner_key_path(i)):
            assert stat.S_IMODE(key.stat().st_mode) == 0o600
