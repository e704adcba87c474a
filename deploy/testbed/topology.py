"""Where things are on the test bed: sites, the WAN delays between them, and addresses.

Three emulated cloud sites. One-way delays are in milliseconds (a round trip is twice that);
they are of the order of real inter-region figures:

| one-way delay (ms) | a: us-east | b: us-west | c: eu-west |
|--------------------|-----------:|-----------:|-----------:|
| a: us-east         |          - |         20 |         40 |
| b: us-west         |         20 |          - |         30 |
| c: eu-west         |         40 |         30 |          - |

Inside a site, hosts share a LAN (a kernel bridge, no added delay).

Default placement of a 4-replica group: replica 0 (the primary of view 0) alone at site a,
replicas 1 and 2 at site b, replica 3 at site c; clients at site b. Cutting off site a therefore
removes the primary and leaves 2f+1 = 3 replicas, so the group must change view and continue.

Addresses: the test bed owns 10.<net>.0.0/16 (<net> chosen free at start); site i (0-based) is
10.<net>.<i+1>.0/24 with its router at .1, the client link at .2 and replica r at .(10 + r).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

SITE_LABELS: dict[str, str] = {"a": "us-east", "b": "us-west", "c": "eu-west"}
DEFAULT_DELAYS_MS: dict[frozenset[str], float] = {
    frozenset("ab"): 20.0,
    frozenset("ac"): 40.0,
    frozenset("bc"): 30.0,
}
DEFAULT_PLACEMENT: dict[int, str] = {0: "a", 1: "b", 2: "b", 3: "c"}
DEFAULT_CLIENT_SITE = "b"

ROUTER_HOST = 1
CLIENT_HOST = 2
REPLICA_HOST_BASE = 10


class TopologyError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Topology:
    """Sites, one-way delays between every pair, which replica sits where, and the clients' site."""

    sites: tuple[str, ...] = ("a", "b", "c")
    delays_ms: Mapping[frozenset[str], float] = field(default_factory=lambda: dict(DEFAULT_DELAYS_MS))
    placement: Mapping[int, str] = field(default_factory=lambda: dict(DEFAULT_PLACEMENT))
    client_site: str = DEFAULT_CLIENT_SITE

    def __post_init__(self) -> None:
        if len(set(self.sites)) != len(self.sites) or not self.sites:
            raise TopologyError(f"site names must be distinct and non-empty: {self.sites}")
        if len(self.sites) > 200:
            raise TopologyError("at most 200 sites (one /24 each)")
        for name in self.sites:
            if not name.isalnum() or len(name) > 4:
                raise TopologyError(f"site name {name!r}: up to 4 letters or digits (it names interfaces)")
        for a, b in self.pairs():
            delay = self.delays_ms.get(frozenset((a, b)))
            if delay is None or delay < 0:
                raise TopologyError(f"no delay (ms, >= 0) between sites {a} and {b}")
        for replica_id, site in self.placement.items():
            if site not in self.sites:
                raise TopologyError(f"replica {replica_id} placed at unknown site {site!r}")
            if not 0 <= replica_id < 256 - REPLICA_HOST_BASE:
                raise TopologyError(f"replica id {replica_id} does not fit the address plan")
        if self.client_site not in self.sites:
            raise TopologyError(f"clients placed at unknown site {self.client_site!r}")

    def pairs(self) -> list[tuple[str, str]]:
        """Every unordered pair of sites once, in site order: one WAN link each."""
        return [(a, b) for i, a in enumerate(self.sites) for b in self.sites[i + 1 :]]

    def delay_ms(self, a: str, b: str) -> float:
        """One-way delay between two sites (0 inside a site)."""
        return 0.0 if a == b else float(self.delays_ms[frozenset((a, b))])

    def site_of(self, replica_id: int) -> str:
        try:
            return self.placement[replica_id]
        except KeyError:
            raise TopologyError(f"replica {replica_id} has no site") from None

    def site_index(self, site: str) -> int:
        return self.sites.index(site)

    def replicas_at(self, site: str) -> list[int]:
        return sorted(r for r, s in self.placement.items() if s == site)

    def delay_table(self) -> str:
        """The one-way delays as a Markdown table."""
        labels = [f"{s}: {SITE_LABELS[s]}" if s in SITE_LABELS else s for s in self.sites]
        rows = ["| one-way delay (ms) | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
        for site, label in zip(self.sites, labels):
            cells = ["-" if other == site else f"{self.delay_ms(site, other):g}" for other in self.sites]
            rows.append(f"| {label} | " + " | ".join(cells) + " |")
        return "\n".join(rows)


@dataclass(frozen=True, slots=True)
class AddressPlan:
    """The test bed's 10.<net>.0.0/16."""

    net: int

    def __post_init__(self) -> None:
        if not 0 <= self.net <= 255:
            raise TopologyError(f"net {self.net} is not an octet")

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.{self.net}.0.0/16")

    def site_network(self, site_index: int) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.{self.net}.{site_index + 1}.0/24")

    def host(self, site_index: int, host: int) -> str:
        return f"10.{self.net}.{site_index + 1}.{host}"

    def router(self, site_index: int) -> str:
        return self.host(site_index, ROUTER_HOST)

    def client(self, site_index: int) -> str:
        return self.host(site_index, CLIENT_HOST)

    def replica(self, site_index: int, replica_id: int) -> str:
        return self.host(site_index, REPLICA_HOST_BASE + replica_id)
