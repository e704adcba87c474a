"""The SDK against a real group: through the gateway (sync and asyncio) and straight to the
replicas; every result comes with a certificate already verified against the pinned config."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from certs.config import GroupConfig
from certs.verify import verify
from marketplace.commands import GatewayProcess
from marketplace.local import LocalGroup
from marketplace.sdk import AsyncClient, AsyncReplicaClient, Client, InferenceResult, ReplicaClient, new_request_id
from tests.replica.cluster_helpers import wait_until

pytestmark = pytest.mark.processes


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess, local_group: LocalGroup) -> Iterator[Client]:
    with Client(gateway.address, local_group.group_config_path, client_id="sdk-tests") as c:
        yield c


def check(result: InferenceResult, config: GroupConfig) -> None:
    """What the SDK promises about every result it returns."""
    assert result.verified.request_checked
    again = verify(result.certificate, config, result.request)  # anyone can re-check it offline
    assert again.label == result.label
    assert result.labels == config.task.class_labels
    assert result.probabilities.shape == (len(config.task.class_labels),)
    if result.agreed:
        assert result.label_name == config.task.class_labels[result.label]
        assert int(np.argmax(result.probabilities)) == result.label
        assert abs(float(result.probabilities.sum()) - 1.0) < 0.01
    assert len(result.votes) >= config.quorum_size
    assert all(v.model_version == 1 for v in result.votes)
    assert set(result.supporters) <= {v.replica_id for v in result.votes}


def accuracy(results: list[InferenceResult], truth: np.ndarray) -> float:
    return float(np.mean([r.label == t for r, t in zip(results, truth)]))


def test_client_infer_returns_a_verified_result(client: Client, config: GroupConfig, digits: tuple[np.ndarray, np.ndarray], unanimous_digits: np.ndarray) -> None:
    features, labels = digits
    image = int(unanimous_digits[0])
    result = client.infer(features[image])
    check(result, config)
    assert result.client_id == "sdk-tests"
    assert result.group_id == config.group_id and result.epoch == config.epoch and result.seq >= 1
    assert result.label_name == str(labels[image])
    assert {v.replica_id for v in result.votes} <= set(config.replica_ids)  # each vote names its replica


def test_client_batch_and_certificate_fetch(client: Client, config: GroupConfig, digits: tuple[np.ndarray, np.ndarray]) -> None:
    features, labels = digits
    ids = [new_request_id() for _ in range(24)]
    results = client.infer_batch(features[120:144], request_ids=ids)
    assert [r.request_id for r in results] == ids
    for r in results:
        check(r, config)
    assert accuracy(results, labels[120:144]) >= 0.9
    fetched = client.get_certificate(ids[3])
    assert fetched.certificate.leaf == results[3].certificate.leaf
    assert fetched.verified.request_checked  # this client sent it, so it checks the digest too
    again = client.infer(features[123], request_id=ids[3])  # a retry: certified once
    assert again.certificate.header == results[3].certificate.header


def test_label_mapping_per_request(client: Client, digits: tuple[np.ndarray, np.ndarray]) -> None:
    features, labels = digits
    mapping = {"0": "round", "6": "round", "8": "round", "9": "round"}
    results = client.infer_batch(features[:20], label_mapping=mapping)
    for result in results:
        assert result.labels == ("1", "2", "3", "4", "5", "7", "round")  # the decision space
        assert result.certificate.leaf.label_space == result.labels
    assert np.mean([r.label_name == ("round" if str(t) in mapping else str(t)) for r, t in zip(results, labels[:20])]) >= 0.85


def test_group_info_and_status(client: Client, config: GroupConfig) -> None:
    info = client.group()
    assert info.config == config and info.chain == (config,)
    # a replica may be fetching a checkpoint for a moment after the earlier tests' load (normal
    # catching up on a shared machine): the group settles with every replica normal
    wait_until(lambda: all(r.status is not None and r.status.state == "normal" for r in client.status().replicas), 60)
    status = client.status()
    assert status.can_certify and status.reachable == config.n
    assert {r.replica_id for r in status.replicas} == set(config.replica_ids)
    for replica in status.replicas:
        assert replica.status.state == "normal"
        assert {v.replica_id: v.version for v in replica.status.versions} == {i: 1 for i in config.replica_ids}


async def test_async_client_batch_stream_and_fetch(
    gateway: GatewayProcess, config: GroupConfig, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    features, labels = digits
    async with AsyncClient(gateway.address, config) as client:
        single = await client.infer(features[11])
        check(single, config)
        batch = await client.infer_batch(features[160:176])
        assert accuracy(batch, labels[160:176]) >= 0.9
        streamed = [r async for r in client.infer_stream(list(features[180:220]))]
        assert all(isinstance(r, InferenceResult) for r in streamed), [r for r in streamed if not isinstance(r, InferenceResult)]
        by_input = {r.request.inputs[0].data: r for r in streamed if isinstance(r, InferenceResult)}
        ordered = [by_input[row.tobytes()] for row in features[180:220]]
        for r in ordered:
            check(r, config)
        assert accuracy(ordered, labels[180:220]) >= 0.9
        fetched = await client.get_certificate(single.request_id)
        assert fetched.certificate.leaf == single.certificate.leaf


def test_replica_client_needs_no_gateway(local_group: LocalGroup, config: GroupConfig, digits: tuple[np.ndarray, np.ndarray]) -> None:
    features, labels = digits
    with ReplicaClient(local_group.addresses, config, client_id="direct") as direct:
        results = direct.infer_batch(features[230:250])
        for r in results:
            check(r, config)
        assert accuracy(results, labels[230:250]) >= 0.9
        fetched = direct.get_certificate(results[0].request_id)
        assert fetched.certificate.leaf == results[0].certificate.leaf
        health = direct.status()
        assert all(h.reachable for h in health)


async def test_async_replica_client(local_group: LocalGroup, config: GroupConfig, digits: tuple[np.ndarray, np.ndarray]) -> None:
    features, labels = digits
    async with AsyncReplicaClient(None, local_group.group_config_path) as direct:  # addresses from the config
        result = await direct.infer(features[260])
        check(result, config)
        results = await direct.infer_batch(features[261:277])
        assert accuracy(results, labels[261:277]) >= 0.9
