"""Shared fixtures for tests with real Triton servers.

Everything expensive is session-scoped: the digits models are trained once, and one backend
(one tritonserver) serves every test that does not need a server of its own. Tests that load
extra versions into the shared backend take fresh version numbers and unload what they load.
"""

from __future__ import annotations

import itertools
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from marketplace.models import constant_model_package, digits_task
from replica.model_spec import ModelPackage, load_model_package
from replica.triton_backend import TritonBackend, triton_processes

PortAllocator = Callable[[int], list[int]]


@pytest.fixture(scope="session")
def port_allocator() -> PortAllocator:
    """Hands out free loopback TCP ports, never the same one twice in a session."""
    handed_out: set[int] = set()

    def allocate(count: int) -> list[int]:
        ports: list[int] = []
        while len(ports) < count:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind(("127.0.0.1", 0))
                port = int(probe.getsockname()[1])
            if port not in handed_out:
                handed_out.add(port)
                ports.append(port)
        return ports

    return allocate


@pytest.fixture(scope="session")
def digits_models(digits_packages: list[Path]) -> dict[str, ModelPackage]:
    """The four demo model packages (trained once per session, see tests/conftest.py), by
    architecture: logreg, mlp, wide-mlp, cnn."""
    packages = [load_model_package(path) for path in digits_packages]
    return {package.spec.name.removeprefix("digits-"): package for package in packages}


@pytest.fixture(scope="session")
def lying_package(tmp_path_factory: pytest.TempPathFactory) -> ModelPackage:
    """A model that always answers "3"."""
    return constant_model_package(tmp_path_factory.mktemp("constant-3"), "3")


@pytest.fixture(scope="session")
def triton_backend(
    tmp_path_factory: pytest.TempPathFactory, port_allocator: PortAllocator
) -> Iterator[TritonBackend]:
    """One started backend for the session, for the digits task; checked to leave no process."""
    grpc_port, http_port, metrics_port = port_allocator(3)
    backend = TritonBackend(
        tmp_path_factory.mktemp("triton-backend"),
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port,
        task=digits_task(),
    )
    backend.start()
    triton_dir = backend.triton_dir
    try:
        yield backend
    finally:
        backend.stop()
    if triton_dir is not None and triton_processes(triton_dir):
        raise RuntimeError(f"tritonserver processes outlived the session backend: {triton_processes(triton_dir)}")


@pytest.fixture(scope="session")
def serving_version(triton_backend: TritonBackend, digits_models: dict[str, ModelPackage]) -> int:
    """Version 1 of the shared backend: the MLP, loaded for the whole session."""
    model = digits_models["mlp"]
    triton_backend.load(1, model.directory, expected_digest=model.weights_digest)
    return 1


@pytest.fixture(scope="session")
def version_numbers() -> Iterator[int]:
    return itertools.count(100)


@pytest.fixture
def fresh_version(version_numbers: Iterator[int]) -> Callable[[], int]:
    """A version number no other test of the session uses."""
    return lambda: next(version_numbers)


@pytest.fixture
def package_copy(tmp_path: Path) -> Callable[[Path], Path]:
    """Copy a package directory into this test's tmp_path, to damage it safely."""

    def copy(source: Path) -> Path:
        target = tmp_path / f"copy-{source.name}"
        shutil.copytree(source, target)
        return target

    return copy
