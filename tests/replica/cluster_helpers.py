"""Helpers for tests that run real replica processes."""

from __future__ import annotations

import re
import time
import urllib.request

import grpc

from marketplace.local import LocalGroup
from protos import replica_api_pb2 as api
from protos import replica_api_pb2_grpc as api_grpc


def status(address: str, timeout_s: float = 2.0) -> api.StatusReply | None:
    try:
        with grpc.insecure_channel(address) as channel:
            return api_grpc.ReplicaStub(channel).Status(api.StatusRequest(), timeout=timeout_s)
    except grpc.RpcError:
        return None


def statuses(group: LocalGroup) -> dict[int, api.StatusReply]:
    out = {}
    for replica in group.replicas:
        reply = status(replica.address)
        if reply is not None:
            out[replica.replica_id] = reply
    return out


def current_primary(group: LocalGroup) -> int:
    views = [s.primary for s in statuses(group).values() if s.state == "normal"]
    return max(set(views), key=views.count)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        match = re.match(r"^(\w+)(\{([^}]*)\})?\s+([0-9.eE+-]+)$", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(3) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(4))
    return total


def wait_until(predicate, timeout_s: float, interval_s: float = 0.25) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())
