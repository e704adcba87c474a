"""The container images (deploy/docker), checked offline: no daemon runs here to build them.

What an operator would hit otherwise: a key or data baked into an image, a container running as
root, a port the config listens on that the image does not expose, an entrypoint that reads the
config from somewhere nothing mounts it, a health check that cannot tell a serving replica from
a dead one, a gateway image missing a package the gateway imports, a torch build that does not
match the project's pin.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from packaging.requirements import Requirement
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from deploy.bundle import CONTAINER_UID
from marketplace.local import free_ports
from replica.config import load_replica_config
from tests.deploy.helpers import DEPLOY, REPO, Instruction, copy_sources, last, read_dockerfile

DOCKER = DEPLOY / "docker"
REPLICA_DOCKERFILE = DOCKER / "Dockerfile.replica"
GATEWAY_DOCKERFILE = DOCKER / "Dockerfile.gateway"
REPLICA_CONFIG_IN_IMAGE = "/etc/quorumserve/replica.toml"
SHIPPED_REPLICA_CONFIGS = sorted((DEPLOY / "compose" / "config").glob("replica-*.toml")) + sorted(
    (DEPLOY / "k8s" / "replica" / "overlays").glob("owner-*/replica.toml")
)
# what may enter an image from the build context: the project's code and pins, nothing else
ALLOWED_SOURCES = {
    "requirements.txt", "constraints.txt", "pyproject.toml", "README.md",
    "certs", "consensus", "replica", "marketplace", "protos", "deploy/docker/healthcheck.py",
}
# imported when present, not needed: grpc parses .proto files at run time with grpc_tools if it
# can; setuptools' .pth file loads _distutils_hack into every interpreter of this venv
OPTIONAL_MODULES = {"grpc_tools", "_distutils_hack"}
SECRET_LIKE = ("*.key", "keys", "*/keys/*", "secrets", "bundle", "data", "*.sqlite*", "*.db", ".venv", "models")


@pytest.fixture(scope="module", params=["replica", "gateway"])
def image(request: pytest.FixtureRequest) -> tuple[str, list[Instruction]]:
    path = REPLICA_DOCKERFILE if request.param == "replica" else GATEWAY_DOCKERFILE
    return request.param, read_dockerfile(path)


def test_images_copy_only_the_project_never_keys_data_or_a_venv(image: tuple[str, list[Instruction]]) -> None:
    name, instructions = image
    sources = [s.rstrip("/").removeprefix("./") for s in copy_sources(instructions)]
    assert sources, f"{name}: copies nothing?"
    assert not [i for i in instructions if i.keyword == "ADD"], f"{name}: ADD can fetch URLs and unpack archives; use COPY"
    for source in sources:
        assert source in ALLOWED_SOURCES, f"{name} image copies {source!r} from the build context"
        assert not any(fnmatch.fnmatch(source, pattern) for pattern in SECRET_LIKE)
    # the whole context is never copied
    assert "." not in sources and "*" not in sources


def test_dockerignore_lets_in_only_what_the_dockerfile_copies(image: tuple[str, list[Instruction]]) -> None:
    name, instructions = image
    ignore = DOCKER / f"Dockerfile.{name}.dockerignore"
    rules = [line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert rules[0] == "**", "the context must start from nothing"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    assert set(copy_sources(instructions)) <= allowed | {s + "/" for s in allowed}, "a COPY source is ignored: the build would fail"
    assert allowed <= ALLOWED_SOURCES
    # and keys, data and virtual environments stay out even inside the allowed folders
    denied = [rule for rule in rules if not rule.startswith("!")]
    for needed in ("**/*.key", "**/keys/", "**/.venv/", "**/data/"):
        assert needed in denied, f"{ignore.name} does not keep {needed} out"


def test_images_run_as_the_non_root_user_the_manifests_expect(image: tuple[str, list[Instruction]]) -> None:
    name, instructions = image
    user = last(instructions, "USER").arguments
    uid = user.split(":")[0]
    # numeric, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd
    assert uid.isdigit() and int(uid) != 0, f"{name}: USER {user}"
    assert int(uid) == CONTAINER_UID  # compose secrets are chowned to it; k8s runs as it
    # and nothing after USER switches back
    assert instructions.index(last(instructions, "USER")) > max(i for i, x in enumerate(instructions) if x.keyword == "RUN")


@pytest.mark.parametrize("config_path", SHIPPED_REPLICA_CONFIGS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_replica_image_exposes_the_ports_its_configs_listen_on(config_path: Path) -> None:
    instructions = read_dockerfile(REPLICA_DOCKERFILE)
    exposed = {int(p.split("/")[0]) for i in instructions if i.keyword == "EXPOSE" for p in i.words()}
    config = load_replica_config(config_path)
    assert config.listen.startswith("0.0.0.0:"), "in a container the replica must listen on every interface"
    assert config.listen_port in exposed
    assert config.metrics_port in exposed
    # Triton's ports are private to the container (it binds 127.0.0.1): not exposed
    assert not {config.triton.grpc_port, config.triton.http_port, config.triton.metrics_port} & exposed
    # everything the replica writes is under its data dir, the image's volume
    volumes = {v for i in instructions if i.keyword == "VOLUME" for v in json.loads(i.arguments)}
    assert str(config.data_dir) in volumes


def test_replica_entrypoint_runs_quorumserve_replica_with_the_mounted_config() -> None:
    instructions = read_dockerfile(REPLICA_DOCKERFILE)
    command = last(instructions, "ENTRYPOINT").exec_form()
    start = command.index("quorumserve")
    assert command[start : start + 4] == ["quorumserve", "replica", "--config", REPLICA_CONFIG_IN_IMAGE]
    # an init as PID 1 reaps Triton's processes and forwards SIGTERM for an orderly stop
    assert command[0] in ("tini", "/usr/bin/tini", "dumb-init")


def test_replica_healthcheck_asks_the_grpc_health_service_for_the_configs_port() -> None:
    instructions = read_dockerfile(REPLICA_DOCKERFILE)
    command = last(instructions, "HEALTHCHECK").exec_form()
    assert command[-2:] == ["--config", REPLICA_CONFIG_IN_IMAGE]
    assert any(part.endswith("quorumserve-healthcheck") for part in command)
    assert "COPY deploy/docker/healthcheck.py /usr/local/bin/quorumserve-healthcheck" in [
        f"{i.keyword} {i.arguments}" for i in instructions
    ]


def test_gateway_image_serves_the_gateway_and_checks_it() -> None:
    instructions = read_dockerfile(GATEWAY_DOCKERFILE)
    entrypoint = last(instructions, "ENTRYPOINT").exec_form()
    assert entrypoint[-2:] == ["quorumserve", "gateway"]
    args = last(instructions, "CMD").exec_form()
    port = int(args[args.index("--port") + 1])
    assert args[args.index("--host") + 1] == "0.0.0.0"
    exposed = {int(p) for i in instructions if i.keyword == "EXPOSE" for p in i.words()}
    assert port in exposed and int(args[args.index("--metrics-port") + 1]) in exposed
    healthcheck = last(instructions, "HEALTHCHECK").exec_form()
    assert healthcheck[-2:] == ["--kserve", f"127.0.0.1:{port}"]


def test_gateway_image_installs_every_package_the_gateway_imports() -> None:
    """The gateway image leaves out the model side (torch, Triton): whatever `quorumserve
    gateway` and the health check import must still be installed there."""
    probe = (
        "import sys, json\n"
        "import marketplace.cli, marketplace.commands, marketplace.gateway, marketplace.registry\n"
        "import grpc_health.v1.health, tritonclient.grpc, uvloop\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    modules = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO).stdout)
    assert "torch" not in modules and "pytriton" not in modules, "the gateway should not need the model stack"
    providers = importlib.metadata.packages_distributions()
    needed = {_normal(d) for m in modules if m in providers and m not in OPTIONAL_MODULES for d in providers[m]} - {"quorumserve"}
    installed_line = next(i for i in read_dockerfile(GATEWAY_DOCKERFILE) if i.keyword == "RUN" and "-c constraints.txt" in i.arguments)
    named = [w for w in installed_line.words() if re.match(r"^[A-Za-z][\w.\-]*(\[[\w,]+\])?$", w) and w not in ("pip", "install", "python")]
    # what pip installs for those: their requirements by their own metadata, extras included
    closure: set[str] = set()
    pending = [Requirement(name) for name in named]
    while pending:
        requirement = pending.pop()
        name = _normal(requirement.name)
        if name in closure:
            continue
        closure.add(name)
        try:
            requires = importlib.metadata.requires(requirement.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requires:
            dependency = Requirement(text)
            environments = [{"extra": extra} for extra in requirement.extras] or [{"extra": ""}]
            if dependency.marker is None or any(dependency.marker.evaluate(env) for env in environments):
                pending.append(dependency)
    missing = needed - closure
    assert not missing, f"the gateway imports packages its image does not install: {sorted(missing)}"


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_replica_image_pins_the_projects_torch_and_takes_the_build_from_the_index() -> None:
    instructions = read_dockerfile(REPLICA_DOCKERFILE)
    args = {i.arguments.split("=", 1)[0]: i.arguments.split("=", 1)[1] for i in instructions if i.keyword == "ARG" and "=" in i.arguments}
    pinned = next(line for line in (REPO / "requirements.txt").read_text().splitlines() if line.startswith("torch=="))
    assert args["TORCH_VERSION"] == pinned.split("==")[1]
    assert args["TORCH_INDEX_URL"].startswith("https://download.pytorch.org/whl/cu"), "the default image must be able to use a GPU"
    assert "nvidia/cuda" in args["CUDA_IMAGE"] and "runtime" in args["CUDA_IMAGE"]
    install = " ".join(i.arguments for i in instructions if i.keyword == "RUN")
    assert '--index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}"' in install
    # the development pin is the CPU build: it must not reach the image's resolver
    assert "grep -v -E '^torch==' constraints.txt" in install
    # Triton's Python backend links the interpreter's shared library
    python = re.search(r"python3\.(\d+)-venv", install)
    assert python is not None and f"libpython3.{python.group(1)}" in install


# -- the health check script itself -----------------------------------------------------------


@pytest.fixture
def health_server() -> Iterator[tuple[int, health.HealthServicer]]:
    port = free_ports(1)[0]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        yield port, servicer
    finally:
        server.stop(grace=None)


def _healthcheck(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(DOCKER / "healthcheck.py"), *args], capture_output=True, text=True, cwd=REPO)


def test_healthcheck_passes_only_while_the_replica_service_is_serving(tmp_path: Path, health_server: tuple[int, health.HealthServicer]) -> None:
    port, servicer = health_server
    config = tmp_path / "replica.toml"
    text = (DEPLOY / "compose" / "config" / "replica-0.toml").read_text().replace('listen = "0.0.0.0:7100"', f'listen = "0.0.0.0:{port}"')
    config.write_text(text)
    assert tomllib.loads(text)["listen"] == f"0.0.0.0:{port}"
    # starting: the process answers but the replica service is not serving yet
    servicer.set("quorumserve.v1.Replica", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert _healthcheck("--config", str(config)).returncode == 1
    servicer.set("quorumserve.v1.Replica", health_pb2.HealthCheckResponse.SERVING)
    assert _healthcheck("--config", str(config)).returncode == 0


def test_healthcheck_fails_when_nothing_answers(tmp_path: Path) -> None:
    port = free_ports(1)[0]
    config = tmp_path / "replica.toml"
    config.write_text(f'listen = "0.0.0.0:{port}"\n')
    failed = _healthcheck("--config", str(config), "--timeout", "1")
    assert failed.returncode == 1 and "UNAVAILABLE" in failed.stderr
    assert _healthcheck("--kserve", f"127.0.0.1:{port}", "--timeout", "1").returncode == 1
    assert _healthcheck("--config", str(tmp_path / "missing.toml")).returncode == 1
