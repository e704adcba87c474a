"""In-process fake replicas: the Replica client API with scripted behaviour, for gateway and SDK
tests that need no processes.

An honest fake answers each request with a real certificate: deterministic votes from every
member, the policy's decision, and COMMIT signatures from a quorum, all signed with the test
group's keys (tests/certs/helpers.py). Faulty fakes lie in the ways a Byzantine replica can.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio

from certs.batch import Leaf
from certs.certificate import decode_certificate, encode_certificate
from certs.outputs import quantise
from certs.policy import Vote, decide
from certs.request import InferenceRequest
from certs.wire import request_from_proto
from marketplace.local import free_ports
from protos import replica_api_pb2 as api
from tests.certs.helpers import Group, certify

BEHAVIOURS = (
    "honest",
    "forge",  # a certificate whose decision does not follow from its votes
    "bad-signature",  # quorum signatures that are not the members'
    "other-request",  # a valid certificate, but for another request
    "garbage",  # bytes that are no SubmitBatchReply at all
    "silent",  # never answers
    "reject",  # says every request is invalid
    "timeout",  # says nothing was committed in time
    "overloaded",  # says it is at its admission limits (OVERLOADED, come back in OVERLOADED_RETRY_MS)
    "dead",  # not listening
)

OVERLOADED_RETRY_MS = 250


def probabilities_for(label: int, num_classes: int, confidence: float) -> list[float]:
    rest = (1.0 - confidence) / (num_classes - 1)
    return [confidence if c == label else rest for c in range(num_classes)]


def true_label(request: InferenceRequest, num_classes: int) -> int:
    """What the honest fakes' models answer: a function of the request's data only."""
    return request.inputs[0].data[0] % num_classes if request.inputs and request.inputs[0].data else 0


def honest_certificate(group: Group, request: InferenceRequest, seq: int = 1) -> bytes:
    config = group.config
    names = config.task.class_labels
    top_k = min(config.task.top_k, len(names))
    label = true_label(request, len(names))
    votes = tuple(
        Vote(m.replica_id, m.model_version, quantise(probabilities_for(label, len(names), 0.7 + 0.05 * m.replica_id), top_k))
        for m in config.members
    )
    leaf = Leaf(
        request_digest=request.digest,
        client_id=request.client_id,
        request_id=request.request_id,
        label_space=(),
        policy=config.policy.describe(config.f),
        votes=votes,
        decision=decide(config.policy, config.f, config.quorum_size, votes, top_k),
    )
    return encode_certificate(certify(group, [leaf], seq=seq)[0])


class FakeReplica:
    def __init__(self, group: Group, replica_id: int, behaviour: str = "honest", *, delay_s: float = 0.0) -> None:
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}")
        self.group = group
        self.replica_id = replica_id
        self.behaviour = behaviour
        self.delay_s = delay_s
        self.port = free_ports(1)[0]
        self.server: grpc.aio.Server | None = None
        self.requests_seen = 0
        self.stream_messages = 0  # SubmitBatchStream messages read

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        if self.behaviour == "dead":
            return
        server = grpc.aio.server()

        def unary(fn: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=None, response_serializer=None)

        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "quorumserve.v1.Replica",
                    {
                        "Submit": unary(self._submit),
                        "SubmitBatch": unary(self._submit_batch),
                        "SubmitBatchStream": grpc.stream_stream_rpc_method_handler(self._submit_batch_stream, request_deserializer=None, response_serializer=None),
                        "GetCertificate": unary(self._get_certificate),
                        "Status": unary(self._status),
                    },
                ),
            )
        )
        server.add_insecure_port(self.address)
        await server.start()
        self.server = server

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)
            self.server = None

    # -- answers --------------------------------------------------------------------------------
    async def _answer(self, message: api.SubmitRequest) -> api.SubmitReply:
        self.requests_seen += 1
        request = request_from_proto(message.request)
        ids = {"client_id": request.client_id, "request_id": request.request_id, "replica_id": self.replica_id}
        if self.behaviour == "silent":
            await asyncio.Event().wait()
        if self.behaviour == "reject":
            return api.SubmitReply(status=api.REJECTED, error="bogus: this replica rejects everything", **ids)  # type: ignore[arg-type]
        if self.behaviour == "timeout":
            return api.SubmitReply(status=api.TIMEOUT, error="not committed in time", **ids)  # type: ignore[arg-type]
        if self.behaviour == "overloaded":
            return api.SubmitReply(status=api.OVERLOADED, error="replica is overloaded: limit is 1 requests", retry_after_ms=OVERLOADED_RETRY_MS, **ids)  # type: ignore[arg-type]
        await asyncio.sleep(self.delay_s)
        return api.SubmitReply(status=api.CERTIFIED, certificate=self._certificate(request), seq=1, **ids)  # type: ignore[arg-type]

    def _certificate(self, request: InferenceRequest) -> bytes:
        data = honest_certificate(self.group, request)
        if self.behaviour == "forge":
            certificate = decode_certificate(data)
            leaf = certificate.leaf
            forged = dataclasses.replace(leaf.decision, label=(leaf.decision.label + 1) % len(self.group.config.task.class_labels))
            return encode_certificate(dataclasses.replace(certificate, leaf=dataclasses.replace(leaf, decision=forged)))
        if self.behaviour == "bad-signature":
            certificate = decode_certificate(data)
            quorum = tuple(dataclasses.replace(q, signature=bytes(64)) for q in certificate.quorum)
            return encode_certificate(dataclasses.replace(certificate, quorum=quorum))
        if self.behaviour == "other-request":
            return honest_certificate(self.group, dataclasses.replace(request, request_id=request.request_id + "-other"))
        return data

    async def _submit(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        reply = await self._answer(api.SubmitRequest.FromString(raw))
        return reply.SerializeToString()

    async def _submit_batch(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        message = api.SubmitBatchRequest.FromString(raw)
        if self.behaviour == "garbage":
            self.requests_seen += len(message.requests)
            return b"\xff\xff\xff\xff garbage"
        replies = await asyncio.gather(*(self._answer(r) for r in message.requests))
        return api.SubmitBatchReply(replies=replies).SerializeToString()

    async def _submit_batch_stream(self, iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """The SDK's path: like the replica's, but one reply message per answer (a real replica
        groups the answers ready at once; clients must take either)."""
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def one(message: api.SubmitRequest) -> None:
            if self.behaviour == "garbage":
                self.requests_seen += 1
                await queue.put(b"\xff\xff\xff\xff garbage")
                return
            reply = await self._answer(message)
            await queue.put(api.SubmitBatchReply(replies=[reply]).SerializeToString())

        async def read() -> None:
            tasks = []
            async for raw in iterator:
                self.stream_messages += 1
                for message in api.SubmitBatchRequest.FromString(raw).requests:
                    tasks.append(asyncio.get_running_loop().create_task(one(message)))
            await asyncio.gather(*tasks)
            await queue.put(None)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while (item := await queue.get()) is not None:
                yield item
        finally:
            reader.cancel()

    async def _get_certificate(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.NOT_FOUND, "fakes keep nothing")
        return b""

    async def _status(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        config = self.group.config
        return api.StatusReply(
            group_id=config.group_id, epoch=config.epoch, config_digest=config.digest, replica_id=self.replica_id,
            view=0, primary=0, state="normal", executed_seq=1, stable_seq=0,
        ).SerializeToString()
