"""Shared fixtures for the marketplace tests.

Process-level tests share ONE real group for the whole session (4 replica processes, each with
its own tritonserver and its own digits model; replica 3 votes wrong labels on purpose) and ONE
gateway process in front of it: starting Tritons is the slow part. A test that kills a replica
restarts it before it returns, so every test sees the whole group.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton

from certs.config import GroupConfig, load_group_config
from marketplace.commands import GatewayProcess, start_gateway_process
from marketplace.local import LocalGroup, free_ports
from tests.conftest import ALL_VOTES_PARAMS

LIAR = 3  # the replica that answers every request with the next class (misbehave "wrong-labels")


@pytest.fixture(scope="session")
def local_group(tmp_path_factory: pytest.TempPathFactory, digits_packages: list[Path]) -> Iterator[LocalGroup]:
    group = LocalGroup(
        tmp_path_factory.mktemp("marketplace-group"),
        f=1,
        model_packages=digits_packages,
        misbehave={LIAR: "wrong-labels"},
        params=ALL_VOTES_PARAMS,  # the liar's signed votes must reach the certificates
    )
    try:
        group.start()
        yield group
    finally:
        group.stop()
    left = [r.replica_id for r in group.replicas if r.process is not None and _alive(r.process.pid)]
    if left:
        raise RuntimeError(f"replica processes outlived the session group: {left}")


@pytest.fixture(scope="session")
def gateway(local_group: LocalGroup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    metrics_port = free_ports(1)[0]
    process = start_gateway_process(
        [local_group.group_config_path],
        metrics_port=metrics_port,
        log_path=tmp_path_factory.mktemp("gateway") / "gateway.log",
    )
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """Held-out digits (features float32 [N, 64], labels int64 [N]) that no model trained on."""
    from marketplace.models import held_out_digits

    return held_out_digits(0)


@pytest.fixture(scope="session")
def unanimous_digits(digits_packages: list[Path], digits: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Indexes of held-out images that every honest replica's model labels right, so the group
    certifies their true label whatever the liar says. A test about one image takes it from
    here: the models are trained where the tests run, and a build of torch on another CPU trains
    slightly different ones, whose rare mistakes (one honest model erring with the liar ties the
    vote 2-2, NO_AGREEMENT) fall on other images."""
    from marketplace.models import predict
    from replica.model_spec import load_model_package

    features, labels = digits
    right = np.ones(len(labels), dtype=bool)
    for replica_id, package in enumerate(digits_packages):
        if replica_id != LIAR:
            right &= predict(load_model_package(package), features) == labels
    return np.flatnonzero(right)


@pytest.fixture(scope="module")
def config(local_group: LocalGroup) -> GroupConfig:
    return load_group_config(local_group.group_config_path)


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> Iterator[Any]:
    """The stock tritonclient against the session's gateway (test_sdk.py uses the SDK's instead)."""
    with triton.InferenceServerClient(gateway.address) as c:
        yield c


@pytest.fixture(scope="session")
def group_config_path(local_group: LocalGroup) -> Path:
    return local_group.group_config_path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
