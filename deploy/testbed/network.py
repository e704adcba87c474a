"""The test bed's network: one Linux network namespace per site router and per replica host,
veth links from each host to its site's bridge, a WAN link between every pair of sites with the
one-way delay of `Topology`, and a link from the calling process's namespace (where the test or
benchmark client runs) to the clients' site.

    client (this namespace) --veth-- [site b: bridge + router] --WAN 30 ms-- [site c] -- replica 3
                                      |  |                      \\
                             replica 1  replica 2                WAN 20 ms -- [site a] -- replica 0
                                                    (a -- c: 40 ms)

WAN links are veth pairs with a `tc netem` delay where the kernel has netem, otherwise TUN
devices carried by a user-space wire process (deploy/testbed/wire.py). Cutting a link sets both
of its ends down: packets on it are dropped silently (a blackhole route stands behind the WAN
routes, so nothing answers with "unreachable"), as in a real partition. Healing sets them up and
restores the routes.

Everything is named with a prefix `qsb<owner pid, 6 hex><n>-`: `stop()` removes all of it (and
kills whatever still runs in its namespaces), and `start()` first removes what a test bed of a
process that no longer exists left behind. Requires root, `ip netns`, a bridge, and netem or TUN.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import itertools
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from deploy.testbed.topology import AddressPlan, Topology
from deploy.testbed.wire import Endpoint, LinkSpec, spec_to_json

log = logging.getLogger("quorumserve.testbed")

PREFIX = "qsb"
_NAME_RE = re.compile(rf"^{PREFIX}([0-9a-f]{{6}})([0-9a-f])-")
LOCK_PATH = Path("/run/quorumserve-testbed.lock")
NETS = range(100, 255)  # candidate second octets for 10.<net>.0.0/16
WIRE_START_TIMEOUT_S = 30.0
_instances = itertools.count()

LinkKind = Literal["auto", "netem", "tun"]


class TestbedError(RuntimeError):
    __test__ = False  # not a pytest test class despite the name


class TestbedUnavailableError(TestbedError):
    """This machine cannot host the test bed (the message says why)."""


def _run(args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise TestbedError(f"{' '.join(args)}: {result.stderr.strip() or f'exit {result.returncode}'}")
    return result


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ip", *(["-n", netns] if netns else []), *args], check=check)


def unavailable_reason() -> str | None:
    """Why this machine cannot host a test bed, or None when it can."""
    if os.geteuid() != 0:
        return "the test bed needs root (network namespaces, veth links, routes)"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if _run(["ip", "netns", "list"], check=False).returncode != 0:
        return "`ip netns` does not work here"
    # TUN first: the netem probe creates a scratch namespace, not worth it when TUN will do
    if not os.path.exists("/dev/net/tun") and not netem_available():
        return "neither tc netem nor /dev/net/tun is available for WAN delays"
    return None


_netem: bool | None = None


def netem_available() -> bool:
    """Whether `tc netem` works here, tried on the loopback of a scratch namespace of our own."""
    global _netem
    if _netem is None:
        if shutil.which("tc") is None or os.geteuid() != 0:
            _netem = False
        else:
            scratch = f"{PREFIX}{os.getpid():06x}{next(_instances) % 16:x}-probe"
            try:
                if _ip("netns", "add", scratch, check=False).returncode != 0:
                    _netem = False
                else:
                    _netem = _run(["tc", "-n", scratch, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"], check=False).returncode == 0
            finally:
                _ip("netns", "del", scratch, check=False)
    return _netem


# -- leftovers ------------------------------------------------------------------------------


def _owner_alive(name: str) -> bool:
    match = _NAME_RE.match(name)
    if match is None:
        return True  # not ours: never touched
    return os.path.exists(f"/proc/{int(match.group(1), 16)}")


def our_namespaces(prefix: str = PREFIX) -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip() and line.split()[0].startswith(prefix)]


def our_root_links(prefix: str = PREFIX) -> list[str]:
    out = _ip("-o", "link", "show", check=False).stdout
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            name = parts[1].strip().split("@")[0]
            if name.startswith(prefix):
                names.append(name)
    return names


def _remove_namespace(name: str) -> None:
    """Kill what still runs inside one of our namespaces, then delete it."""
    pids = _ip("netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    for _ in range(50):
        if not _ip("netns", "pids", name, check=False).stdout.split():
            break
        time.sleep(0.1)
    _ip("netns", "del", name, check=False)


def cleanup_leftovers() -> list[str]:
    """Remove namespaces and links of test beds whose owning process is gone; what was removed."""
    removed = []
    for name in our_namespaces():
        if not _owner_alive(name):
            _remove_namespace(name)
            removed.append(name)
    for name in our_root_links():
        if not _owner_alive(name):
            _ip("link", "del", name, check=False)
            removed.append(name)
    if removed:
        log.warning("removed test bed leftovers of exited processes: %s", ", ".join(removed))
    return removed


@contextlib.contextmanager
def _address_lock() -> Iterator[None]:
    """Serialises choosing a free 10.<net>/16 and claiming it with a route, across processes."""
    with open(LOCK_PATH, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _nets_in_use() -> set[int]:
    used: set[int] = set()
    text = _ip("-4", "-o", "route", "show", "table", "all", check=False).stdout + _ip("-4", "-o", "addr", "show", check=False).stdout
    for match in re.finditer(r"\b10\.(\d+)\.\d+\.\d+", text):
        used.add(int(match.group(1)))
    if re.search(r"\b10\.0\.0\.0/8\b", text):
        used.update(NETS)
    return used


# -- the test bed ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WanLink:
    a: str
    b: str
    device_at_a: str  # in site a's router namespace
    device_at_b: str
    address_a: str  # /30 inside 10.<net>.0.0/24
    address_b: str


class Testbed:
    """Sites and hosts in network namespaces, with WAN delays and partitions. `start()`/`stop()`
    or a `with` block; `stop()` removes everything, even after a failed `start()`."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, topology: Topology | None = None, *, link_kind: LinkKind = "auto") -> None:
        self.topology = topology or Topology()
        self.prefix = f"{PREFIX}{os.getpid():06x}{next(_instances) % 16:x}-"
        self.requested_link_kind = link_kind
        self.link_kind: Literal["netem", "tun"] | None = None
        self.plan: AddressPlan | None = None
        self.links: list[WanLink] = []
        self.cut: set[frozenset[str]] = set()
        self._wire: subprocess.Popen[str] | None = None
        self._namespaces: list[str] = []
        self._root_link: str | None = None
        self._started = False

    # -- names and addresses ------------------------------------------------------------------
    def site_netns(self, site: str) -> str:
        return f"{self.prefix}site-{site}"

    def replica_netns(self, replica_id: int) -> str:
        return f"{self.prefix}r{replica_id}"

    @property
    def client_link(self) -> str:
        return f"{self.prefix}cl"

    def _plan(self) -> AddressPlan:
        if self.plan is None:
            raise TestbedError("the test bed is not started")
        return self.plan

    def replica_address(self, replica_id: int) -> str:
        site = self.topology.site_of(replica_id)
        return self._plan().replica(self.topology.site_index(site), replica_id)

    @property
    def client_address(self) -> str:
        return self._plan().client(self.topology.site_index(self.topology.client_site))

    def exec_prefix(self, replica_id: int) -> list[str]:
        """Prefix a command with this to run it on replica `replica_id`'s host."""
        return ["ip", "netns", "exec", self.replica_netns(replica_id)]

    @property
    def namespaces(self) -> list[str]:
        return list(self._namespaces)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> Testbed:
        reason = unavailable_reason()
        if reason is not None:
            raise TestbedUnavailableError(reason)
        if self._started:
            return self
        self._started = True
        atexit.register(self.stop)  # also when the caller never reaches its own cleanup
        cleanup_leftovers()
        kind = self.requested_link_kind
        if kind == "auto":
            kind = "netem" if netem_available() else "tun"
        elif kind == "netem" and not netem_available():
            raise TestbedUnavailableError("tc netem is not available in this kernel")
        self.link_kind = kind
        try:
            self._build()
        except BaseException:
            self.stop()
            raise
        log.info(
            "test bed %s up: 10.%d.0.0/16, WAN links by %s, sites %s", self.prefix, self._plan().net, kind,
            {s: self.topology.replicas_at(s) for s in self.topology.sites},
        )
        return self

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("link", "set", "lo", "up", netns=name)

    def _build(self) -> None:
        topology = self.topology
        for site in topology.sites:
            ns = self.site_netns(site)
            self._add_namespace(ns)
            _run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
            _ip("link", "add", "name", "br0", "type", "bridge", netns=ns)
            _ip("link", "set", "br0", "up", netns=ns)
        for replica_id in sorted(topology.placement):
            self._add_namespace(self.replica_netns(replica_id))
        with _address_lock():
            used = _nets_in_use()
            free = [n for n in NETS if n not in used]
            if not free:
                raise TestbedError("no free 10.<net>.0.0/16 for the test bed")
            self.plan = AddressPlan(random.choice(free))
            self._add_client_link()
        plan = self.plan
        for site in topology.sites:
            index = topology.site_index(site)
            ns = self.site_netns(site)
            _ip("addr", "add", f"{plan.router(index)}/24", "dev", "br0", netns=ns)
            # behind the WAN routes: a cut link drops packets silently instead of answering
            _ip("route", "add", "blackhole", str(plan.network), netns=ns)
        for replica_id in sorted(topology.placement):
            index = topology.site_index(topology.site_of(replica_id))
            host_ns, site_ns = self.replica_netns(replica_id), self.site_netns(topology.site_of(replica_id))
            port = f"h{replica_id}"
            _ip("link", "add", "name", port, "type", "veth", "peer", "name", "eth0", "netns", host_ns, netns=site_ns)
            _ip("link", "set", port, "master", "br0", "up", netns=site_ns)
            _ip("addr", "add", f"{plan.replica(index, replica_id)}/24", "dev", "eth0", netns=host_ns)
            _ip("link", "set", "eth0", "up", netns=host_ns)
            _ip("route", "add", "default", "via", plan.router(index), netns=host_ns)
        self._add_wan_links()

    def _add_client_link(self) -> None:
        plan, site = self._plan(), self.topology.client_site
        index = self.topology.site_index(site)
        site_ns = self.site_netns(site)
        _ip("link", "add", "name", self.client_link, "type", "veth", "peer", "name", "client", "netns", site_ns)
        self._root_link = self.client_link
        _ip("link", "set", "client", "master", "br0", "up", netns=site_ns)
        _ip("addr", "add", f"{plan.client(index)}/24", "dev", self.client_link)
        _ip("link", "set", self.client_link, "up")
        _ip("route", "add", str(plan.network), "via", plan.router(index), "dev", self.client_link)

    def _add_wan_links(self) -> None:
        plan = self._plan()
        for k, (a, b) in enumerate(self.topology.pairs()):
            base = 4 * k
            if base + 2 > 254:
                raise TestbedError("too many site pairs for the link address block")
            self.links.append(WanLink(a, b, f"w{b}", f"w{a}", f"10.{plan.net}.0.{base + 1}", f"10.{plan.net}.0.{base + 2}"))
        if self.link_kind == "netem":
            for link in self.links:
                ns_a, ns_b = self.site_netns(link.a), self.site_netns(link.b)
                _ip("link", "add", "name", link.device_at_a, "type", "veth", "peer", "name", link.device_at_b, "netns", ns_b, netns=ns_a)
                delay = f"{self.topology.delay_ms(link.a, link.b):g}ms"
                for ns, device in ((ns_a, link.device_at_a), (ns_b, link.device_at_b)):
                    _run(["tc", "-n", ns, "qdisc", "add", "dev", device, "root", "netem", "delay", delay, "limit", "100000"])
        else:
            self._start_wire()
        for link in self.links:
            ns_a, ns_b = self.site_netns(link.a), self.site_netns(link.b)
            _ip("addr", "add", f"{link.address_a}/30", "dev", link.device_at_a, netns=ns_a)
            _ip("addr", "add", f"{link.address_b}/30", "dev", link.device_at_b, netns=ns_b)
            self._link_up(link)

    def _start_wire(self) -> None:
        specs = [
            LinkSpec(
                Endpoint(self.site_netns(link.a), link.device_at_a),
                Endpoint(self.site_netns(link.b), link.device_at_b),
                self.topology.delay_ms(link.a, link.b),
            )
            for link in self.links
        ]
        self._wire = subprocess.Popen(
            [sys.executable, "-m", "deploy.testbed.wire", spec_to_json(specs)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=str(Path(__file__).resolve().parents[2]),
        )
        if self._wire.stdout is None:
            raise TestbedError("the WAN wire process has no stdout")
        line = self._wire.stdout.readline().strip()
        if line != "ready":
            self._wire.wait(timeout=WIRE_START_TIMEOUT_S)
            error = self._wire.stderr.read() if self._wire.stderr else ""
            raise TestbedError(f"the WAN wire process did not start: {error.strip() or line or self._wire.returncode}")

    def _link_up(self, link: WanLink) -> None:
        plan = self._plan()
        ns_a, ns_b = self.site_netns(link.a), self.site_netns(link.b)
        index_a, index_b = self.topology.site_index(link.a), self.topology.site_index(link.b)
        _ip("link", "set", link.device_at_a, "up", netns=ns_a)
        _ip("link", "set", link.device_at_b, "up", netns=ns_b)
        # routes through a link go when it goes down: (re)add them
        _ip("route", "replace", str(plan.site_network(index_b)), "via", link.address_b, "dev", link.device_at_a, netns=ns_a)
        _ip("route", "replace", str(plan.site_network(index_a)), "via", link.address_a, "dev", link.device_at_b, netns=ns_b)

    def stop(self) -> None:
        """Remove everything this test bed created; safe to call more than once."""
        errors = []
        for name in reversed(self._namespaces):
            if not name.startswith(self.prefix):
                continue
            try:
                _remove_namespace(name)
            except Exception as exc:  # keep going: the rest must go too
                errors.append(f"{name}: {exc}")
        self._namespaces.clear()
        if self._wire is not None:
            with contextlib.suppress(Exception):
                if self._wire.stdin is not None:
                    self._wire.stdin.close()
            try:
                self._wire.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._wire.kill()
                self._wire.wait()
            for stream in (self._wire.stdout, self._wire.stderr):
                if stream is not None:
                    stream.close()
            self._wire = None
        if self._root_link is not None:
            _ip("link", "del", self._root_link, check=False)  # its peer and its route go with it
            self._root_link = None
        for name in our_namespaces(self.prefix):  # anything a failed start registered nowhere
            _remove_namespace(name)
        for name in our_root_links(self.prefix):
            _ip("link", "del", name, check=False)
        self.links.clear()
        self.cut.clear()
        self._started = False
        atexit.unregister(self.stop)
        if errors:
            raise TestbedError("test bed cleanup: " + "; ".join(errors))

    def __enter__(self) -> Testbed:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- partitions ---------------------------------------------------------------------------
    def _link(self, a: str, b: str) -> WanLink:
        for link in self.links:
            if {link.a, link.b} == {a, b}:
                return link
        raise TestbedError(f"no WAN link between sites {a} and {b}")

    def cut_link(self, a: str, b: str) -> None:
        """Cut the WAN link between two sites: everything on it is lost, both ways."""
        link = self._link(a, b)
        _ip("link", "set", link.device_at_a, "down", netns=self.site_netns(link.a))
        _ip("link", "set", link.device_at_b, "down", netns=self.site_netns(link.b))
        self.cut.add(frozenset((a, b)))
        log.info("test bed: cut %s -- %s", a, b)

    def heal_link(self, a: str, b: str) -> None:
        self._link_up(self._link(a, b))
        self.cut.discard(frozenset((a, b)))
        log.info("test bed: healed %s -- %s", a, b)

    def cut_site(self, site: str) -> None:
        """Partition one site from all others (its own hosts still reach each other)."""
        for other in self.topology.sites:
            if other != site:
                self.cut_link(site, other)

    def heal_site(self, site: str) -> None:
        for other in self.topology.sites:
            if other != site:
                self.heal_link(site, other)
