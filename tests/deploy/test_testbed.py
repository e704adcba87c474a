"""A 4-replica group across three emulated sites (deploy/testbed): each replica in its own network
namespace with its own address, WAN delays between sites, and a partition of the primary's site.

One test bed and one group for the whole file; the tests run in file order and tell one story:
the WAN delays are in effect, the group certifies across sites, cutting off the primary's site
makes the rest change view and keep serving, healing brings the cut-off replica back, and every
certificate a client received along the way is still served at the end.

Placement (deploy/testbed/topology.py): replica 0 (primary of view 0) alone at site a, replicas
1 and 2 at site b with the clients, replica 3 at site c; one-way delays a-b 20 ms, a-c 40 ms,
b-c 30 ms.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from certs.certificate import decode_certificate
from certs.verify import verify
from deploy.testbed.group import TestbedGroup
from deploy.testbed.network import Testbed, TestbedUnavailableError, unavailable_reason
from deploy.testbed.probe import rtt_ms
from marketplace.local import free_ports
from marketplace.models import held_out_digits
from protos import replica_api_pb2 as api
from protos import replica_api_pb2_grpc as api_grpc
from tests.replica.cluster_helpers import status, statuses, wait_until
from tests.replica.load import Certified, Load, LoadResult, digits_request

pytestmark = pytest.mark.processes
log = logging.getLogger("tests.testbed")

CATCH_UP_TIMEOUT_S = 180.0  # liveness bound only: far above what catching up takes
STALL_S = 120.0  # liveness bound only: how long clients may wait for their last certificates


@dataclass
class Story:
    """What the tests of this file hand on to the later ones."""

    certified: dict[str, list[Certified]] = field(default_factory=dict)  # by phase
    cut_site: str | None = None
    cut_replicas: list[int] = field(default_factory=list)

    def record(self, phase: str, result: LoadResult | list[Certified]) -> None:
        items = result.certified.values() if isinstance(result, LoadResult) else result
        self.certified.setdefault(phase, []).extend(items)


@pytest.fixture(scope="module")
def testbed() -> Iterator[Testbed]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"no multi-site test bed on this machine: {reason}")
    bed = Testbed()
    try:
        bed.start()
    except TestbedUnavailableError as exc:
        pytest.skip(f"no multi-site test bed on this machine: {exc}")
    try:
        yield bed
    finally:
        bed.stop()


@pytest.fixture(scope="module")
def group(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory, digits_packages: list[Path]) -> Iterator[TestbedGroup]:
    g = TestbedGroup(tmp_path_factory.mktemp("testbed-group"), model_packages=digits_packages, testbed=testbed)
    try:
        g.prepare()
        g.start()
        yield g
    finally:
        g.stop()


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    return held_out_digits(0)


@pytest.fixture(scope="module")
def story() -> Story:
    return Story()


def certify_all(group: TestbedGroup, requests: list[Any]) -> list[Certified]:
    if group.config is None:
        raise RuntimeError("group not prepared")
    load = Load(group.config, group.addresses, np.zeros((1, 64), dtype=np.float32), client_id="unused")

    async def run() -> list[Certified]:
        channels = [grpc.aio.insecure_channel(a) for a in group.addresses]
        stubs = [api_grpc.ReplicaStub(c) for c in channels]
        try:
            return list(await asyncio.wait_for(asyncio.gather(*(load.certify(r, stubs) for r in requests)), STALL_S))
        except asyncio.TimeoutError:
            pytest.fail(f"requests still uncertified after {STALL_S:.0f} s; see {group.data_dir}/replica-*.log")
        finally:
            for c in channels:
                await c.close()

    return asyncio.run(run())


def run_load_around(
    group: TestbedGroup, digits: tuple[np.ndarray, np.ndarray], action: Callable[[], object], client_id: str,
    before_s: float = 4.0, after_s: float = 12.0,
) -> tuple[LoadResult, float]:
    """Keep 8 clients busy; after `before_s` run `action()` (in a thread), then keep going."""
    if group.config is None:
        raise RuntimeError("group not prepared")
    load = Load(group.config, group.addresses, digits[0], client_id=client_id)

    async def scenario() -> tuple[LoadResult, float]:
        done = asyncio.Event()
        running = asyncio.ensure_future(load.run(8, until=done))
        await asyncio.sleep(before_s)
        at_s = time.monotonic() - load.started_s
        await asyncio.get_running_loop().run_in_executor(None, action)
        await asyncio.sleep(after_s)
        done.set()
        # clients retry until certified: bound the wait so a group that stopped certifying fails
        # the test instead of hanging it (a liveness bound, far above any certification time)
        try:
            return await asyncio.wait_for(running, STALL_S), at_s
        except asyncio.TimeoutError:
            pytest.fail(f"requests still uncertified {STALL_S:.0f} s after the load stopped; see {group.data_dir}/replica-*.log")

    return asyncio.run(scenario())


def served_by(address: str, certified: Certified) -> str:
    """What the replica at `address` serves for this request now: "same" (this certificate),
    "missing" (NOT_FOUND), "other" (a different certificate) or "error"."""
    client_id, request_id = certified.request.key
    with grpc.insecure_channel(address) as channel:
        try:
            reply = api_grpc.ReplicaStub(channel).GetCertificate(
                api.GetCertificateRequest(client_id=client_id, request_id=request_id), timeout=10
            )
        except grpc.RpcError as exc:
            return "missing" if exc.code() == grpc.StatusCode.NOT_FOUND else "error"
    found = decode_certificate(reply.certificate)
    same = found.header.seq == certified.certificate.header.seq and found.leaf == certified.certificate.leaf
    return "same" if same else "other"


def test_round_trips_between_sites_follow_the_delay_table(testbed: Testbed) -> None:
    topology = testbed.topology
    port = free_ports(1)[0]
    servers = []
    try:
        for replica_id in sorted(topology.placement):
            server = subprocess.Popen(
                [*testbed.exec_prefix(replica_id), sys.executable, "-m", "deploy.testbed.probe", "serve", testbed.replica_address(replica_id), str(port)],
                stdout=subprocess.PIPE, text=True, cwd=str(Path(__file__).resolve().parents[2]),
            )
            servers.append(server)
            if server.stdout is None or server.stdout.readline().strip() != "ready":
                pytest.fail(f"probe server on replica {replica_id}'s host did not start")
        for replica_id in sorted(topology.placement):
            site = topology.site_of(replica_id)
            measured_ms = rtt_ms(testbed.replica_address(replica_id), port, 5)
            expected_ms = 2 * topology.delay_ms(topology.client_site, site)
            log.warning("client (site %s) -> replica %d (site %s): %.1f ms round trip, table %.0f ms", topology.client_site, replica_id, site, measured_ms, expected_ms)
            # a round trip can never be shorter than the emulated path
            assert measured_ms >= 0.95 * expected_ms
        # between replicas too: replica 0 (site a) to replica 3 (site c)
        out = subprocess.run(
            [*testbed.exec_prefix(0), sys.executable, "-m", "deploy.testbed.probe", "rtt", testbed.replica_address(3), str(port), "5"],
            capture_output=True, text=True, cwd=str(Path(__file__).resolve().parents[2]), check=True,
        )
        assert float(out.stdout) >= 0.95 * 2 * topology.delay_ms(topology.site_of(0), topology.site_of(3))
    finally:
        for server in servers:
            server.kill()
            server.wait()


def test_group_across_three_sites_certifies(group: TestbedGroup, digits: tuple[np.ndarray, np.ndarray], story: Story) -> None:
    assert group.config is not None
    topology = group.started_testbed().topology
    X, y = digits
    requests = [digits_request(group.config, "sites", f"s-{i}", X[i]) for i in range(40)]
    certified = certify_all(group, requests)
    story.record("before", certified)
    correct = 0
    nearest_other_site_ms = min(topology.delay_ms(topology.client_site, s) for s in topology.sites if s != topology.client_site)
    for i, (request, item) in enumerate(zip(requests, certified)):
        verified = verify(item.certificate, group.config, request)
        correct += int(verified.label == y[i])
        signers = {signature.replica_id for signature in item.certificate.quorum}
        assert len(signers) >= group.config.quorum_size
        # the clients' site holds fewer than 2f+1 replicas: every quorum spans sites
        assert {topology.site_of(r) for r in signers} != {topology.client_site}
        # so no certificate can come back faster than a round trip to another site
        assert item.latency_s * 1000 >= 2 * nearest_other_site_ms * 0.95
    assert correct >= 36, f"only {correct}/40 certified decisions are right"
    latencies_ms = sorted(c.latency_s * 1000 for c in certified)
    log.warning("40 concurrent requests across 3 sites: latency p50 %.0f ms, max %.0f ms", latencies_ms[20], latencies_ms[-1])


def test_cutting_off_the_primary_site_changes_view_and_service_continues(
    group: TestbedGroup, digits: tuple[np.ndarray, np.ndarray], story: Story
) -> None:
    testbed = group.started_testbed()
    before = statuses(group)
    old_view = max(s.view for s in before.values())
    primary = max({s.primary for s in before.values()}, key=[s.primary for s in before.values()].count)
    site = testbed.topology.site_of(primary)
    cut_off = testbed.topology.replicas_at(site)
    assert len(cut_off) <= group.f, "cutting off the primary's site must leave a quorum"
    story.cut_site, story.cut_replicas = site, cut_off
    result, cut_at_s = run_load_around(group, digits, lambda: testbed.cut_site(site), "partition")
    story.record("partition", result)
    assert result.invalid == 0
    after = [t for t, _ in result.timeline if t > cut_at_s]
    assert len(after) > 20, f"only {len(after)} requests certified after site {site} (primary {primary}) was cut off"
    survivors = {rid: s for rid, s in statuses(group).items() if rid not in cut_off}
    assert set(survivors) == set(range(group.n)) - set(cut_off), "replicas outside the cut site must stay reachable"
    assert all(s.view > old_view and s.state == "normal" for s in survivors.values()), f"no view change: {survivors}"
    assert all(s.primary not in cut_off for s in survivors.values())
    for replica_id in cut_off:
        assert status(group.replicas[replica_id].address, timeout_s=1.0) is None, "the cut-off replica still answers clients"
    gap_s = max(b - a for a, b in zip([cut_at_s] + after, after)) if after else float("inf")
    log.warning("site %s (primary %d) cut off: view %d -> %d, longest gap without certificates %.2f s", site, primary, old_view, max(s.view for s in survivors.values()), gap_s)
    print(f"\nsite {site} cut off: longest gap without certificates {gap_s:.2f} s")


def test_healing_brings_the_cut_off_replica_back(group: TestbedGroup, digits: tuple[np.ndarray, np.ndarray], story: Story) -> None:
    testbed = group.started_testbed()
    if story.cut_site is None:
        pytest.skip("the partition test did not run")
    testbed.heal_site(story.cut_site)
    reference = statuses(group)
    target_seq = max(s.executed_seq for s in reference.values())
    group_view = max(s.view for s in reference.values())

    def caught_up(replica_id: int) -> bool:
        s = status(group.replicas[replica_id].address)
        return s is not None and s.state == "normal" and s.executed_seq >= target_seq and s.view >= group_view

    for replica_id in story.cut_replicas:
        assert wait_until(lambda: caught_up(replica_id), CATCH_UP_TIMEOUT_S), (
            f"replica {replica_id} did not catch up after healing: {status(group.replicas[replica_id].address)} vs {reference}"
        )
    # it takes part again: with load running, new certificates carry its vote
    result, _ = run_load_around(group, digits, lambda: None, "healed", before_s=2.0, after_s=6.0)
    story.record("healed", result)
    assert result.invalid == 0
    recent = sorted(result.certified.values(), key=lambda c: c.certificate.header.seq)[-20:]
    for replica_id in story.cut_replicas:
        assert any(replica_id in {v.replica_id for v in c.certificate.leaf.votes} for c in recent), f"replica {replica_id} no longer votes"


def test_no_certified_request_is_lost(group: TestbedGroup, story: Story) -> None:
    """Every certificate a client received, before, during and after the partition, is still
    served unchanged by every replica that never left. The healed replica serves those of before
    the cut and after healing; those of the partition it skipped by state transfer (it installed
    a snapshot, which holds no certificates) it may not have, but it never serves a different one."""
    assert group.config is not None
    assert story.certified.get("before") and story.certified.get("partition"), "the earlier tests certified nothing"
    cut = story.cut_replicas or []
    stayed = [r for r in range(group.n) if r not in cut]
    for phase, items in story.certified.items():
        for certified in items[:: max(1, len(items) // 30)]:
            verify(certified.certificate, group.config, certified.request)
            for replica_id in stayed:
                assert served_by(group.replicas[replica_id].address, certified) == "same", (
                    f"{phase} certificate {certified.request.key} not served by replica {replica_id}"
                )
            for replica_id in cut:
                found = served_by(group.replicas[replica_id].address, certified)
                if phase == "partition":
                    assert found in ("same", "missing"), f"healed replica {replica_id} serves another certificate for {certified.request.key}"
                else:
                    assert found == "same", f"{phase} certificate {certified.request.key} not served by healed replica {replica_id}"
