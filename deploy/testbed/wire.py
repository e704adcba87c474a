"""WAN links in user space: a pair of TUN devices per link and a process that carries packets
between them after a fixed one-way delay.

Used where the kernel has no `netem` qdisc (CONFIG_NET_SCH_NETEM off, as on some CI VMs): each
WAN link is a TUN device in each of the two site routers' namespaces, and this process reads an IP
packet from one end and writes it to the other end `delay_ms` later. The delay is constant, so a
FIFO queue per direction keeps packets in order, as a real WAN path mostly does. A link is cut the
same way as a veth link: set its devices down (writes to a down TUN fail and the packet is lost).

Run as `python -m deploy.testbed.wire` with a JSON spec on the command line; it creates every TUN
device, prints "ready" and carries packets until its standard input closes (its parent died or
stopped it) or it gets SIGTERM. TUN devices are not persistent: they vanish with this process.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import json
import os
import selectors
import signal
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass, field

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
PR_SET_PDEATHSIG = 1
PACKET_SIZE_MAX_BYTES = 65536
READS_PER_WAKEUP_MAX = 256  # bound one device's turn so a busy link cannot starve the others
QUEUED_BYTES_MAX = 64 * 1024 * 1024  # per direction; beyond it packets are dropped like a full router buffer


class WireError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Endpoint:
    netns: str  # name under /run/netns
    device: str  # TUN device name inside that namespace


@dataclass(frozen=True, slots=True)
class LinkSpec:
    a: Endpoint
    b: Endpoint
    delay_ms: float


def spec_to_json(links: list[LinkSpec]) -> str:
    return json.dumps(
        [{"a": [l.a.netns, l.a.device], "b": [l.b.netns, l.b.device], "delay_ms": l.delay_ms} for l in links]
    )


def spec_from_json(text: str) -> list[LinkSpec]:
    try:
        return [
            LinkSpec(Endpoint(*item["a"]), Endpoint(*item["b"]), float(item["delay_ms"]))
            for item in json.loads(text)
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise WireError(f"bad link spec: {exc}") from exc


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise WireError(f"setns: {os.strerror(code)}")


def open_tun(netns: str, device: str) -> int:
    """A TUN device named `device` inside network namespace `netns`, as a non-blocking fd.

    The device belongs to the namespace current when /dev/net/tun is opened, so this process
    enters `netns` for the open and then returns to its own namespace."""
    if len(device.encode()) > 15:
        raise WireError(f"device name {device!r} is longer than 15 bytes")
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    except OSError as exc:
        os.close(own)
        raise WireError(f"network namespace {netns}: {exc.strerror}") from exc
    try:
        _setns(target)
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
            try:
                fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", device.encode(), IFF_TUN | IFF_NO_PI))
            except OSError as exc:
                os.close(fd)
                raise WireError(f"TUN device {device} in {netns}: {exc.strerror}") from exc
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)
    return fd


@dataclass
class _Direction:
    """Packets read from `source` wait here until due, then go out on `target`."""

    source: int
    target: int
    delay_s: float
    queue: deque[tuple[float, bytes]] = field(default_factory=deque)
    queued_bytes: int = 0
    dropped: int = 0
    carried: int = 0


class Wire:
    def __init__(self, links: list[LinkSpec]) -> None:
        self.fds: list[int] = []
        self.directions: list[_Direction] = []
        self._by_source: dict[int, _Direction] = {}
        try:
            for link in links:
                fd_a = open_tun(link.a.netns, link.a.device)
                self.fds.append(fd_a)
                fd_b = open_tun(link.b.netns, link.b.device)
                self.fds.append(fd_b)
                for source, target in ((fd_a, fd_b), (fd_b, fd_a)):
                    direction = _Direction(source, target, link.delay_ms / 1000.0)
                    self.directions.append(direction)
                    self._by_source[source] = direction
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()

    def _read(self, direction: _Direction, now_s: float) -> None:
        for _ in range(READS_PER_WAKEUP_MAX):
            try:
                packet = os.read(direction.source, PACKET_SIZE_MAX_BYTES)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EIO, errno.EBADFD):  # the device went down
                    return
                raise
            if direction.queued_bytes + len(packet) > QUEUED_BYTES_MAX:
                direction.dropped += 1
                continue
            direction.queue.append((now_s + direction.delay_s, packet))
            direction.queued_bytes += len(packet)

    def _flush(self, now_s: float) -> float | None:
        """Send what is due; the time until the next packet is due (None: nothing queued)."""
        wait_s: float | None = None
        for direction in self.directions:
            queue = direction.queue
            while queue and queue[0][0] <= now_s:
                _, packet = queue.popleft()
                direction.queued_bytes -= len(packet)
                try:
                    os.write(direction.target, packet)
                    direction.carried += 1
                except OSError:  # the far end is down (a cut link) or its queue is full: lost
                    direction.dropped += 1
            if queue:
                due_s = queue[0][0] - now_s
                wait_s = due_s if wait_s is None else min(wait_s, due_s)
        return wait_s

    def run(self, stop_fd: int | None) -> None:
        selector = selectors.EpollSelector()
        for fd in self._by_source:
            selector.register(fd, selectors.EVENT_READ)
        if stop_fd is not None:
            selector.register(stop_fd, selectors.EVENT_READ)
        while True:
            wait_s = self._flush(time.monotonic())
            for key, _ in selector.select(wait_s):
                if key.fd == stop_fd:
                    if not os.read(stop_fd, 4096):  # EOF: the parent is gone or wants us gone
                        return
                    continue
                self._read(self._by_source[key.fd], time.monotonic())


def _die_with_parent() -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.testbed.wire", description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="JSON: [{a: [netns, device], b: [netns, device], delay_ms}]")
    args = parser.parse_args(argv)
    _die_with_parent()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        wire = Wire(spec_from_json(args.spec))
    except WireError as exc:
        print(f"wire: {exc}", file=sys.stderr, flush=True)
        return 1
    try:
        print("ready", flush=True)
        wire.run(sys.stdin.fileno())
    finally:
        wire.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
