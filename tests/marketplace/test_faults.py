"""A slow or dead replica does not change what clients get. The faulty replica is replica 3, a
backup that also lies on every vote, so the group never has more than f = 1 faulty member;
each test brings it back before it returns."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from certs.config import GroupConfig
from marketplace.commands import GatewayProcess
from marketplace.local import LocalGroup
from marketplace.sdk import Client, ReplicaClient
from tests.marketplace.conftest import LIAR
from tests.marketplace.kserve import CertifiedRow, certified_rows, pixels_input, verify_row

pytestmark = pytest.mark.processes


def certify(client: Any, config: GroupConfig, rows: np.ndarray) -> list[CertifiedRow]:
    result = client.infer(config.group_id, [pixels_input(rows)])
    certified = certified_rows(result, config, rows)
    for row in certified:
        verify_row(row, config)
    return certified


def test_a_slow_replica_changes_nothing(local_group: LocalGroup, client: Any, config: GroupConfig, digits: tuple[np.ndarray, np.ndarray]) -> None:
    features, labels = digits
    rows, truth = features[240:272], labels[240:272]
    before = [r.label for r in certify(client, config, rows)]
    local_group.pause(LIAR)  # SIGSTOP: connected, but answers nothing
    try:
        after = certify(client, config, rows)
        # one row per call goes over the gateway's streams to the replicas, not a SubmitBatch
        singles = [certify(client, config, rows[i : i + 1])[0] for i in range(4)]
    finally:
        local_group.resume(LIAR)
    assert np.mean([a.label == b for a, b in zip(after, before)]) >= 0.9
    assert np.mean([a.label == t for a, t in zip(after, truth)]) >= 0.9
    assert [s.label for s in singles] == [a.label for a in after[:4]]


def test_a_dead_replica_changes_nothing(
    local_group: LocalGroup, gateway: GatewayProcess, client: Any, config: GroupConfig, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    features, labels = digits
    rows, truth = features[280:312], labels[280:312]
    before = [r.label for r in certify(client, config, rows)]
    local_group.kill(LIAR)  # kill -9, Triton too
    try:
        after = certify(client, config, rows)
        singles = [certify(client, config, rows[i : i + 1])[0] for i in range(4)]
        assert all(LIAR not in {v.replica_id for v in r.certificate.leaf.votes} for r in after + singles)
        assert [s.label for s in singles] == [a.label for a in after[:4]]
        assert np.mean([a.label == b for a, b in zip(after, before)]) >= 0.9
        assert np.mean([a.label == t for a, t in zip(after, truth)]) >= 0.9
        with ReplicaClient(local_group.addresses, config) as direct:  # no gateway either
            results = direct.infer_batch(rows[:8])
        assert [r.label for r in results] == [a.label for a in after[:8]]
        with Client(gateway.address, config) as sdk:
            status = sdk.status()
        assert status.can_certify and status.reachable == config.n - 1
        assert [r.replica_id for r in status.replicas if not r.reachable] == [LIAR]
    finally:
        local_group.start_replica(LIAR)  # it catches up from its own state and its peers
