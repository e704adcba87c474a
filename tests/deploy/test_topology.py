"""The test bed's layout (deploy/testbed/topology.py) and the bundle's address parsing: pure
checks, no namespaces needed."""

from __future__ import annotations

import ipaddress

import pytest

from deploy.bundle import BundleError, parse_addresses
from deploy.testbed.topology import AddressPlan, Topology, TopologyError


def test_default_layout_makes_the_partition_story_possible() -> None:
    topology = Topology()
    n, f = 4, 1
    quorum = 2 * f + 1
    primary_site = topology.site_of(0)  # primary of view 0
    # cutting off the primary's site leaves a quorum elsewhere
    assert n - len(topology.replicas_at(primary_site)) >= quorum
    # the clients' site alone holds no quorum: every certificate crosses a WAN link
    assert len(topology.replicas_at(topology.client_site)) < quorum
    assert sorted(topology.placement) == list(range(n))


def test_delays_are_symmetric_and_within_the_wan_range() -> None:
    topology = Topology()
    for a, b in topology.pairs():
        assert topology.delay_ms(a, b) == topology.delay_ms(b, a)
        assert 20 <= topology.delay_ms(a, b) <= 80
    assert topology.delay_ms("a", "a") == 0


def test_delay_table_lists_every_pair() -> None:
    table = Topology().delay_table()
    lines = table.splitlines()
    assert len(lines) == 2 + 3
    assert "| a: us-east | - | 20 | 40 |" in lines
    assert "| c: eu-west | 40 | 30 | - |" in lines


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sites": ("a", "a")}, "distinct"),
        ({"delays_ms": {frozenset("ab"): 20.0}}, "no delay"),
        ({"placement": {0: "x"}}, "unknown site"),
        ({"client_site": "z"}, "unknown site"),
        ({"sites": ("a-b",), "delays_ms": {}, "placement": {}, "client_site": "a-b"}, "letters or digits"),
    ],
)
def test_bad_layouts_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        Topology(**kwargs)  # type: ignore[arg-type]


def test_address_plan_gives_each_host_its_own_address() -> None:
    plan = AddressPlan(123)
    addresses = {plan.router(0), plan.client(0), plan.replica(0, 0), plan.replica(1, 1), plan.replica(1, 2)}
    assert len(addresses) == 5
    assert all(a.startswith("10.123.") for a in addresses)
    assert ipaddress.ip_address(plan.replica(2, 3)) in plan.site_network(2)
    assert all(plan.site_network(i).subnet_of(plan.network) for i in range(3))


def test_bundle_addresses_must_cover_every_replica() -> None:
    assert parse_addresses(["0=a:1", "1=b:2", "2=c:3", "3=d:4"], 4) == {0: "a:1", 1: "b:2", 2: "c:3", 3: "d:4"}
    with pytest.raises(BundleError, match="missing \\[3\\]"):
        parse_addresses(["0=a:1", "1=b:2", "2=c:3"], 4)
    with pytest.raises(BundleError, match="ID=HOST:PORT"):
        parse_addresses(["0=a"], 1)
