"""gRPC between replicas: one long-lived client-streaming `Peer.Send` call to every peer.

Outgoing messages are encoded once (a broadcast is not re-encoded per peer) and queued per peer;
a sender task drains its queue into one `PeerBatch` frame per write, so a burst of votes or
commits is one gRPC message, not thousands. A peer that is down costs nothing but a bounded
queue: the oldest messages are dropped when it overflows (consensus retransmits what matters)
and the stream reconnects with capped exponential backoff.

Incoming frames arrive as raw bytes and are decoded by the strict codec, so garbage on the port
is counted and dropped and never reaches consensus or crashes the replica.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio

from certs.errors import DecodeError
from certs.wire import repeated_field, varint
from consensus.messages import PeerMessage
from replica.codec import PEER_BATCH_MESSAGES_MAX, decode_peer_batch, encode_peer_message
from protos import consensus_pb2

log = logging.getLogger("quorumserve.transport")

PEER_SERVICE = "quorumserve.v1.Peer"
PEER_MESSAGE_SIZE_MAX_BYTES = 256 * 1024 * 1024  # state transfer replies can be large
FRAME_SIZE_TARGET_BYTES = 4 * 1024 * 1024
QUEUE_MESSAGES_MAX = 50_000
RECONNECT_BACKOFF_INITIAL_MS = 50
RECONNECT_BACKOFF_MAX_MS = 1000
# gRPC's own reconnect backoff starts at 1 s and grows to 120 s, and `channel_ready` waits it
# out: a peer that started a moment after this replica, or came back from a crash, was reached up
# to a second (after a long outage, up to two minutes) after it could have been, and the votes
# this replica sent it meanwhile missed their certificates. Retry as the link loop does.
RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_INITIAL_MS),
    ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_INITIAL_MS),
    ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MAX_MS),
]
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", PEER_MESSAGE_SIZE_MAX_BYTES),
    ("grpc.max_receive_message_length", PEER_MESSAGE_SIZE_MAX_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    *RECONNECT_OPTIONS,
]


def frame(sender: int, encoded_messages: list[bytes]) -> bytes:
    """A PeerBatch from already-encoded PeerMessages, byte for byte what protobuf would emit:
    field 1 (sender, omitted when 0 as proto3 does), then field 2 once per message."""
    head = b"\x08" + varint(sender) if sender else b""
    return head + repeated_field(2, encoded_messages)


InboundHandler = Callable[[int, list[PeerMessage]], None]
RejectHandler = Callable[[str, str], None]


class _PeerLink:
    """The outgoing stream to one peer."""

    def __init__(self, transport: PeerTransport, peer_id: int, address: str) -> None:
        self.transport = transport
        self.peer_id = peer_id
        self.address = address
        self.queue: deque[bytes] = deque()
        self.wakeup = asyncio.Event()
        self.dropped = 0
        self.connected = False
        self.task: asyncio.Task[None] | None = None

    def enqueue(self, encoded: bytes) -> None:
        if len(self.queue) >= QUEUE_MESSAGES_MAX:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(encoded)
        self.wakeup.set()

    async def _frames(self) -> AsyncIterator[bytes]:
        sender = self.transport.replica_id
        while True:
            while not self.queue:
                self.wakeup.clear()
                await self.wakeup.wait()
            batch: list[bytes] = []
            size = 0
            while self.queue and len(batch) < PEER_BATCH_MESSAGES_MAX and size < FRAME_SIZE_TARGET_BYTES:
                encoded = self.queue.popleft()
                batch.append(encoded)
                size += len(encoded)
            yield frame(sender, batch)

    async def run(self) -> None:
        backoff_s = RECONNECT_BACKOFF_INITIAL_MS / 1000
        while True:
            channel = grpc.aio.insecure_channel(self.address, options=CHANNEL_OPTIONS)
            try:
                call = channel.stream_unary(
                    f"/{PEER_SERVICE}/Send",
                    request_serializer=None,
                    response_deserializer=consensus_pb2.SendAck.FromString,
                )
                await channel.channel_ready()
                self.connected = True
                backoff_s = RECONNECT_BACKOFF_INITIAL_MS / 1000
                await call(self._frames())
            except asyncio.CancelledError:
                await channel.close(grace=None)
                raise
            except Exception as exc:  # the peer is down or restarting: try again later
                if self.connected:
                    log.info("link to replica %d (%s) lost: %s", self.peer_id, self.address, exc)
            finally:
                self.connected = False
            await channel.close(grace=None)
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, RECONNECT_BACKOFF_MAX_MS / 1000)


class PeerTransport:
    def __init__(
        self,
        replica_id: int,
        peers: dict[int, str],
        on_messages: InboundHandler,
        on_reject: RejectHandler,
    ) -> None:
        self.replica_id = replica_id
        self._on_messages = on_messages
        self._on_reject = on_reject
        self._links = {peer: _PeerLink(self, peer, address) for peer, address in peers.items() if peer != replica_id}

    # -- outgoing ---------------------------------------------------------------------------
    def start(self) -> None:
        for link in self._links.values():
            link.task = asyncio.get_running_loop().create_task(link.run(), name=f"peer-link-{link.peer_id}")

    async def stop(self) -> None:
        tasks = [link.task for link in self._links.values() if link.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def add_peers(self, peers: dict[int, str]) -> None:
        """Open links to replicas that joined (or moved); existing links stay as they are."""
        loop = asyncio.get_running_loop()
        for peer, address in peers.items():
            if peer == self.replica_id:
                continue
            link = self._links.get(peer)
            if link is not None and link.address == address:
                continue
            if link is not None and link.task is not None:
                link.task.cancel()
            link = _PeerLink(self, peer, address)
            self._links[peer] = link
            link.task = loop.create_task(link.run(), name=f"peer-link-{peer}")

    def send(self, to: int | None, message: PeerMessage) -> None:
        encoded = encode_peer_message(message)
        if to is None:
            for link in self._links.values():
                link.enqueue(encoded)
        else:
            link = self._links.get(to)
            if link is not None:
                link.enqueue(encoded)

    def send_encoded(self, targets: list[int], encoded: bytes) -> None:
        for to in targets:
            link = self._links.get(to)
            if link is not None:
                link.enqueue(encoded)

    @property
    def peer_ids(self) -> list[int]:
        return sorted(list(self._links))  # a copy first: the metrics thread asks too

    def connected_peers(self) -> list[int]:
        # a copy first: the metrics thread asks too, while the loop may be adding links
        return sorted(peer for peer, link in list(self._links.items()) if link.connected)

    # -- incoming ---------------------------------------------------------------------------
    async def _handle_send(self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
        async for raw in request_iterator:
            try:
                sender, messages = decode_peer_batch(raw)
            except DecodeError as exc:
                self._on_reject("malformed", f"undecodable peer frame from {context.peer()}: {exc}")
                continue
            except Exception as exc:  # never let a peer's bytes take the replica down
                self._on_reject("malformed", f"peer frame from {context.peer()} broke the decoder: {exc!r}")
                continue
            self._on_messages(sender, messages)
        return consensus_pb2.SendAck()

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            PEER_SERVICE,
            {
                "Send": grpc.stream_unary_rpc_method_handler(
                    self._handle_send,
                    request_deserializer=None,
                    response_serializer=consensus_pb2.SendAck.SerializeToString,
                )
            },
        )
