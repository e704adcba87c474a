"""The peer links between replicas (replica/transport.py): real gRPC on loopback."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import grpc
import grpc.aio
import pytest

from consensus.messages import FetchState, PeerMessage
from replica.transport import PeerTransport

DELIVERY_TIMEOUT_S = 30.0  # a hang guard, not a speed limit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _serve(port: int, received: list[tuple[int, PeerMessage]]) -> grpc.aio.Server:
    def on_messages(sender: int, messages: list[PeerMessage]) -> None:
        received.extend((sender, m) for m in messages)

    transport = PeerTransport(0, {}, on_messages, lambda reason, detail: None)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((transport.handler(),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server


async def _until(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(DELIVERY_TIMEOUT_S):
        while not condition():
            await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_messages_queued_for_a_peer_that_is_not_up_yet_reach_it_once_it_starts() -> None:
    port = _free_port()
    sender = PeerTransport(1, {0: f"127.0.0.1:{port}"}, lambda s, m: None, lambda r, d: None)
    sender.start()
    try:
        sent = [FetchState(sender=1, executed_seq=seq) for seq in range(5)]
        for message in sent:
            sender.send(0, message)
        await asyncio.sleep(0.3)  # the first connection attempts are refused
        assert sender.connected_peers() == []
        received: list[tuple[int, PeerMessage]] = []
        server = await _serve(port, received)
        try:
            await _until(lambda: len(received) == len(sent), "delivery")
            assert [m for _, m in received] == sent and {s for s, _ in received} == {1}
            assert sender.connected_peers() == [0]
        finally:
            await server.stop(None)
    finally:
        await sender.stop()


@pytest.fixture
def half_open_peer() -> Iterator[tuple[int, list[int]]]:
    """A port that accepts TCP connections and closes them at once (a peer still starting, or a
    proxy in front of a dead one): every gRPC connection attempt fails. Yields (port, attempts)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.1)
    attempts: list[int] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            attempts.append(1)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1]), attempts
    finally:
        stop.set()
        thread.join()
        listener.close()


@pytest.mark.asyncio
async def test_a_link_retries_a_failing_peer_within_a_second_not_on_grpc_default_backoff(
    half_open_peer: tuple[int, list[int]],
) -> None:
    # gRPC's own backoff (1 s, then 1.6x up to 120 s) would try about 3 times in 3 s and, after
    # a long outage, reach a restarted peer minutes late; the link retries at least every second
    port, attempts = half_open_peer
    sender = PeerTransport(1, {0: f"127.0.0.1:{port}"}, lambda s, m: None, lambda r, d: None)
    sender.start()
    try:
        sender.send(0, FetchState(sender=1, executed_seq=0))
        await asyncio.sleep(3.0)
    finally:
        await sender.stop()
    assert len(attempts) >= 5, f"{len(attempts)} connection attempts in 3 s"
