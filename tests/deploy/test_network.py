"""The test bed's network on its own (deploy/testbed/network.py), without replicas: partitions cut
and heal, and nothing is left behind, even after a failed start or a killed owner."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.testbed import network
from deploy.testbed.network import PREFIX, Testbed, TestbedError, cleanup_leftovers, our_namespaces, our_root_links, unavailable_reason
from deploy.testbed.probe import ProbeError, rtt_ms

REPO = Path(__file__).resolve().parents[2]
PROBE_PORT = 5999  # inside our own namespaces: every port is free there

_UNAVAILABLE = unavailable_reason()
pytestmark = pytest.mark.skipif(_UNAVAILABLE is not None, reason=f"no multi-site test bed on this machine: {_UNAVAILABLE}")


def leftovers(bed: Testbed) -> list[str]:
    return our_namespaces(bed.prefix) + our_root_links(bed.prefix)


@pytest.fixture
def probe_servers() -> Iterator[list[subprocess.Popen[str]]]:
    servers: list[subprocess.Popen[str]] = []
    try:
        yield servers
    finally:
        for server in servers:
            server.kill()
            server.wait()


def serve_probe(bed: Testbed, replica_id: int, servers: list[subprocess.Popen[str]]) -> None:
    server = subprocess.Popen(
        [*bed.exec_prefix(replica_id), sys.executable, "-m", "deploy.testbed.probe", "serve", bed.replica_address(replica_id), str(PROBE_PORT)],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )
    servers.append(server)
    if server.stdout is None or server.stdout.readline().strip() != "ready":
        raise TestbedError(f"probe server on replica {replica_id}'s host did not start")


def reachable(bed: Testbed, replica_id: int) -> bool:
    try:
        rtt_ms(bed.replica_address(replica_id), PROBE_PORT, 1, timeout_s=1.0)
    except ProbeError:
        return False
    return True


def test_cutting_a_site_off_and_healing_it(probe_servers: list[subprocess.Popen[str]]) -> None:
    bed = Testbed()
    try:
        bed.start()
        for replica_id in sorted(bed.topology.placement):
            serve_probe(bed, replica_id, probe_servers)
        assert all(reachable(bed, r) for r in bed.topology.placement)
        bed.cut_site("a")
        cut_off = set(bed.topology.replicas_at("a"))
        assert {r for r in bed.topology.placement if not reachable(bed, r)} == cut_off
        bed.heal_site("a")
        assert all(reachable(bed, r) for r in bed.topology.placement)
        # one link only: clients at b lose a, nothing else
        bed.cut_link("a", "b")
        assert not reachable(bed, 0) and reachable(bed, 3)
        bed.heal_link("a", "b")
        assert reachable(bed, 0)
    finally:
        for server in probe_servers:
            server.kill()
        bed.stop()
    assert leftovers(bed) == []


def test_a_failed_start_leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Testbed) -> None:
        raise TestbedError("injected failure while adding WAN links")

    monkeypatch.setattr(Testbed, "_add_wan_links", broken)
    bed = Testbed()
    with pytest.raises(TestbedError, match="injected"):
        bed.start()
    assert leftovers(bed) == []


def test_leftovers_of_an_exited_owner_are_removed_and_others_kept() -> None:
    dead_pid = next(pid for pid in range(0x3FFFFF, 0x300000, -1) if not os.path.exists(f"/proc/{pid}"))
    dead = f"{PREFIX}{dead_pid:06x}0-r0"
    alive = f"{PREFIX}{os.getpid():06x}f-r0"
    try:
        for name in (dead, alive):
            subprocess.run(["ip", "netns", "add", name], check=True)
        removed = cleanup_leftovers()
        assert dead in removed
        assert alive in our_namespaces() and dead not in our_namespaces()
    finally:
        for name in (dead, alive):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_names_fit_linux_interface_names() -> None:
    bed = Testbed()
    assert len(bed.client_link) <= 15  # IFNAMSIZ - 1: the only name in the caller's namespace
    assert network._NAME_RE.match(bed.client_link)
