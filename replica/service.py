"""The replica's client API (protos/replica_api.proto): submit requests, fetch certificates,
status, model updates. Every replica serves it, so clients need no gateway.

Requests arrive as raw bytes and are decoded here, so malformed protobuf, a wrong shape or
dtype, or an unknown group gets a precise gRPC status and a metric, never an exception that
escapes into gRPC's logs.
"""

from __future__ import annotations

import asyncio
import io
import logging
import tarfile
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import grpc
import grpc.aio
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message

from certs.errors import CertificateError
from certs.wire import repeated_field, request_from_proto
from consensus.errors import RequestRejectedError
from protos import replica_api_pb2 as api
from consensus.messages import ModelUpdate
from replica.codec import checkpoint_to_proto, control_op_from_proto, model_update_from_proto, snapshot_to_proto


def config_link_record_to_proto(record: Any, out: Any) -> Any:
    from replica.codec import config_link_to_proto

    config_link_to_proto(record.link, out.link)
    out.start_seq = record.start_seq
    return out
from replica.archive import ArchiveBusyError, pushback_trailer
from replica.node import Certified, ReplicaError, ReplicaNode, ReplicaOverloadedError

log = logging.getLogger("quorumserve.replica.api")

REPLICA_SERVICE = "quorumserve.v1.Replica"
SUBMIT_BATCH_MAX = 4096
LIST_CERTIFICATES_MAX = 1024  # certificates per ListCertificates reply (about 1 MiB)
PACKAGE_ARCHIVE_MAX_BYTES = 1 << 30


class ReplicaService:
    def __init__(self, node: ReplicaNode, on_model_update: Callable[..., Any] | None = None) -> None:
        self.node = node
        self.on_model_update = on_model_update

    # -- helpers ------------------------------------------------------------------------------
    def _parse(self, message_type: type[Message], raw: bytes) -> Any:
        message = message_type()
        try:
            message.ParseFromString(raw)
        except (ProtobufDecodeError, RuntimeError, ValueError) as exc:
            self.node.metrics.labels(self.node.metrics.requests, outcome="malformed").inc()
            raise _Invalid(f"malformed {message_type.__name__}: {exc}") from exc
        return message

    def _reply(self, certified: Certified, compact: bool) -> api.SubmitReply:
        return api.SubmitReply(
            client_id=certified.client_id,
            request_id=certified.request_id,
            status=api.CERTIFIED,
            certificate=certified.compact_certificate if compact else certified.certificate,
            seq=certified.seq,
            replica_id=self.node.replica_id,
        )

    async def _submit_one(self, message: api.SubmitRequest) -> api.SubmitReply:
        reply: asyncio.Future[api.SubmitReply] = asyncio.get_running_loop().create_future()
        self._submit_soon(message, lambda r: reply.done() or reply.set_result(r))
        return await reply

    # -- RPCs --------------------------------------------------------------------------------
    async def submit(self, raw: bytes, context: grpc.aio.ServicerContext) -> api.SubmitReply:
        message = await self._checked(context, api.SubmitRequest, raw)
        reply = await self._submit_one(message)
        if reply.status == api.REJECTED:
            await context.abort(_status_for(reply.error), reply.error)
        if reply.status == api.OVERLOADED:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, reply.error, trailing_metadata=pushback_trailer(reply.retry_after_ms / 1000))
        return reply

    async def submit_batch(self, raw: bytes, context: grpc.aio.ServicerContext) -> api.SubmitBatchReply:
        message = await self._checked(context, api.SubmitBatchRequest, raw)
        if len(message.requests) > SUBMIT_BATCH_MAX:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"at most {SUBMIT_BATCH_MAX} requests per batch")
        replies = await asyncio.gather(*(self._submit_one(r) for r in message.requests))
        return api.SubmitBatchReply(replies=replies)

    def _submit_soon(self, message: api.SubmitRequest, deliver: Callable[[api.SubmitReply], object]) -> None:
        """Submit one request; `deliver` is called once, on the loop, with its reply (a
        certificate, a rejection or a timeout). Callbacks rather than a task per request: under
        load a stream carries thousands of requests in flight, and a task plus a wait_for each
        cost more than the rest of the replica's work on a request."""
        ids = {"client_id": message.request.client_id, "request_id": message.request.request_id, "replica_id": self.node.replica_id}
        timeout_s = message.timeout_ms / 1000 if message.timeout_ms else self.node.config.request_timeout_s
        try:
            request = request_from_proto(message.request)
            _, future = self.node.submit(request, fanout=bool(message.fanout), timeout_s=timeout_s)
        except (CertificateError, RequestRejectedError) as exc:
            self.node.metrics.labels(self.node.metrics.requests, outcome="rejected").inc()
            deliver(api.SubmitReply(status=api.REJECTED, error=str(exc), **ids))
            return
        except ReplicaOverloadedError as exc:  # counted by the node
            deliver(api.SubmitReply(status=api.OVERLOADED, error=str(exc), retry_after_ms=exc.retry_after_ms, **ids))
            return
        delivered = False

        def once(reply: api.SubmitReply) -> None:
            nonlocal delivered
            if not delivered:
                delivered = True
                deliver(reply)

        def on_timeout() -> None:
            once(api.SubmitReply(status=api.TIMEOUT, error=f"not committed within {timeout_s:.1f} s; retry with the same ids", **ids))

        timer = asyncio.get_running_loop().call_later(timeout_s, on_timeout)

        def on_done(done: asyncio.Future[Certified]) -> None:
            timer.cancel()
            if done.cancelled():
                once(api.SubmitReply(status=api.TIMEOUT, error="replica stopping", **ids))
            elif (error := done.exception()) is not None:
                once(api.SubmitReply(status=api.TIMEOUT, error=str(error), **ids))
            else:
                once(self._reply(done.result(), compact=True))

        future.add_done_callback(on_done)

    async def _answer_stream(
        self,
        request_iterator: AsyncIterator[bytes],
        requests_of: Callable[[bytes], tuple[Sequence[api.SubmitRequest], list[api.SubmitReply]]],
    ) -> AsyncIterator[list[api.SubmitReply]]:
        """Both submit streams: each incoming message gives requests to submit and replies
        already decided (`requests_of`; _Invalid: one rejection without ids). Yields the replies
        ready at each wake-up, until the client stopped writing and every request is answered."""
        ready: list[api.SubmitReply] = []
        wakeup = asyncio.Event()
        outstanding = 0
        reading = True

        def deliver(reply: api.SubmitReply) -> None:
            nonlocal outstanding
            outstanding -= 1
            ready.append(reply)
            wakeup.set()

        async def reader() -> None:
            nonlocal outstanding, reading
            async for raw in request_iterator:
                try:
                    requests, answered = requests_of(raw)
                except _Invalid as exc:
                    requests, answered = (), [api.SubmitReply(status=api.REJECTED, error=str(exc), replica_id=self.node.replica_id)]
                ready.extend(answered)
                wakeup.set()
                outstanding += len(requests)
                for message in requests:
                    self._submit_soon(message, deliver)
            reading = False
            wakeup.set()

        task = asyncio.get_running_loop().create_task(reader())
        try:
            while True:
                while not ready and (reading or outstanding):
                    wakeup.clear()
                    await wakeup.wait()
                if not ready:
                    return
                out = ready[:]
                ready.clear()
                yield out
        finally:
            task.cancel()

    async def submit_stream(self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[api.SubmitReply]:
        def requests_of(raw: bytes) -> tuple[Sequence[api.SubmitRequest], list[api.SubmitReply]]:
            return (self._parse(api.SubmitRequest, raw),), []

        async for replies in self._answer_stream(request_iterator, requests_of):
            for reply in replies:
                yield reply

    async def submit_batch_stream(self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """Many requests per message in, every reply ready at once out as one message (raw
        bytes: replies are serialized once and framed, see certs.wire.repeated_field)."""

        def requests_of(raw: bytes) -> tuple[Sequence[api.SubmitRequest], list[api.SubmitReply]]:
            batch = self._parse(api.SubmitBatchRequest, raw)
            if len(batch.requests) <= SUBMIT_BATCH_MAX:
                return batch.requests, []
            self.node.metrics.labels(self.node.metrics.requests, outcome="rejected").inc(len(batch.requests))
            error = f"at most {SUBMIT_BATCH_MAX} requests per message"
            return (), [
                api.SubmitReply(status=api.REJECTED, error=error, client_id=m.request.client_id, request_id=m.request.request_id, replica_id=self.node.replica_id)
                for m in batch.requests
            ]

        async for replies in self._answer_stream(request_iterator, requests_of):
            for start in range(0, len(replies), SUBMIT_BATCH_MAX):
                yield repeated_field(1, [r.SerializeToString() for r in replies[start : start + SUBMIT_BATCH_MAX]])

    async def get_certificate(self, raw: bytes, context: grpc.aio.ServicerContext) -> api.SubmitReply:
        message = await self._checked(context, api.GetCertificateRequest, raw)
        try:
            certified = await self.node.get_certificate(message.client_id, message.request_id)
        except ArchiveBusyError as exc:
            await self._busy(context, exc)
        if certified is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no certificate for {message.client_id}/{message.request_id} at replica {self.node.replica_id}")
        return self._reply(certified, compact=False)

    async def list_certificates(self, raw: bytes, context: grpc.aio.ServicerContext) -> api.CertificateRangeReply:
        message = await self._checked(context, api.CertificateRangeRequest, raw)
        if message.through_seq < message.after_seq:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"through_seq {message.through_seq} is below after_seq {message.after_seq}")
        limit = min(message.limit or LIST_CERTIFICATES_MAX, LIST_CERTIFICATES_MAX)
        try:
            page, next_after, more = await self.node.list_certificates(message.after_seq, message.through_seq, limit)
        except ArchiveBusyError as exc:
            await self._busy(context, exc)
        return api.CertificateRangeReply(certificates=[c for _, c in page], next_after_seq=next_after, more=more)

    async def status(self, raw: bytes, context: grpc.aio.ServicerContext) -> api.StatusReply:
        await self._checked(context, api.StatusRequest, raw)
        s = self.node.status()
        return api.StatusReply(
            group_id=s["group_id"], epoch=s["epoch"], config_digest=s["config_digest"], replica_id=s["replica_id"],
            view=s["view"], primary=s["primary"], state=s["state"], executed_seq=s["executed_seq"],
            stable_seq=s["stable_seq"], pending_requests=s["pending_requests"],
            versions=[api.ModelVersionInfo(replica_id=r, version=v, weights_digest=d) for r, v, d in s["versions"]],  # type: ignore[attr-defined]
            loaded_versions=list(s["loaded_versions"]),  # type: ignore[call-overload]
            connected_peers=list(s["connected_peers"]),  # type: ignore[call-overload]
            peers=list(s["peers"]),  # type: ignore[call-overload]
            triton_models=[
                api.TritonModel(version=v, model_name=name, model_version=triton_version)
                for v, (name, triton_version) in s["triton_models"].items()  # type: ignore[attr-defined]
            ],
            activations=[
                api.Activation(replica_id=a.replica_id, version=a.version, weights_digest=a.weights_digest, from_seq=a.from_seq)
                for a in await self.node.activations()
            ],
        )

    async def update_model(self, raw: bytes, context: grpc.aio.ServicerContext) -> api.ModelUpdateReply:
        message = await self._checked(context, api.ModelUpdateRequest, raw)
        if self.on_model_update is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this replica does not take model updates")
        try:
            update = model_update_from_proto(message.update)
        except CertificateError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed model update: {exc}")
        if update.replica_id != self.node.replica_id:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this is replica {self.node.replica_id}; the update is for replica {update.replica_id}",
            )
        try:
            package = _package_location(message, self.node.config.data_dir)
            digest = await self.on_model_update(update, package)  # type: ignore[misc]
        except RequestRejectedError as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED if "signed" in str(exc) else grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except (ValueError, OSError, ReplicaError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return api.ModelUpdateReply(status="ordered", version=update.new_version, weights_digest=digest)

    async def list_evidence(self, raw: bytes, context: grpc.aio.ServicerContext) -> api.EvidenceReply:
        message = await self._checked(context, api.EvidenceRequest, raw)
        items = await self.node.list_evidence(message.after_id, message.limit or 100)
        return api.EvidenceReply(items=[api.EvidenceItem(id=i, evidence=e, summary=s) for i, e, s in items])

    async def get_config_chain(self, raw: bytes, context: grpc.aio.ServicerContext) -> api.ConfigChainReply:
        await self._checked(context, api.ConfigChainRequest, raw)
        reply = api.ConfigChainReply()
        for record in await self.node.config_links():
            config_link_record_to_proto(record, reply.links.add())
        return reply

    async def submit_control(self, raw: bytes, context: grpc.aio.ServicerContext) -> api.ControlReply:
        message = await self._checked(context, api.ControlRequest, raw)
        try:
            op = control_op_from_proto(message.op)
        except CertificateError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed control operation: {exc}")
        if isinstance(op, ModelUpdate):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "model updates go through UpdateModel (the replica loads the model first)")
        try:
            self.node.submit_control(op)
        except RequestRejectedError as exc:
            code = grpc.StatusCode.PERMISSION_DENIED if "signature" in str(exc) or "approval" in str(exc) else grpc.StatusCode.FAILED_PRECONDITION
            await context.abort(code, str(exc))
        return api.ControlReply(status="submitted", epoch=self.node.core.config.epoch)

    async def ledger(self, raw: bytes, context: grpc.aio.ServicerContext) -> api.LedgerReply:
        await self._checked(context, api.LedgerRequest, raw)
        found = self.node.ledger()
        if found is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no stable checkpoint yet: the ledger is not certified")
        summary, proof = found
        reply = api.LedgerReply(executed_hash=summary.executed_hash.to_bytes(32, "big"))
        snapshot_to_proto(self.node.core.state.snapshot(summary, since_seq=summary.seq), reply.summary)
        for checkpoint in proof:
            checkpoint_to_proto(checkpoint, reply.proof.add())
        return reply

    @staticmethod
    async def _busy(context: grpc.aio.ServicerContext, exc: ArchiveBusyError) -> NoReturn:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), trailing_metadata=exc.trailer())
        raise AssertionError("abort returned")  # it raises

    async def _checked(self, context: grpc.aio.ServicerContext, message_type: type[Message], raw: bytes) -> Any:
        try:
            return self._parse(message_type, raw)
        except _Invalid as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(fn: Callable[..., Any], response: type[Message]) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=None, response_serializer=response.SerializeToString)

        return grpc.method_handlers_generic_handler(
            REPLICA_SERVICE,
            {
                "Submit": unary(self.submit, api.SubmitReply),
                "SubmitBatch": unary(self.submit_batch, api.SubmitBatchReply),
                "SubmitStream": grpc.stream_stream_rpc_method_handler(
                    self.submit_stream, request_deserializer=None, response_serializer=api.SubmitReply.SerializeToString
                ),
                "SubmitBatchStream": grpc.stream_stream_rpc_method_handler(
                    self.submit_batch_stream, request_deserializer=None, response_serializer=None
                ),
                "GetCertificate": unary(self.get_certificate, api.SubmitReply),
                "ListCertificates": unary(self.list_certificates, api.CertificateRangeReply),
                "Status": unary(self.status, api.StatusReply),
                "UpdateModel": unary(self.update_model, api.ModelUpdateReply),
                "ListEvidence": unary(self.list_evidence, api.EvidenceReply),
                "GetConfigChain": unary(self.get_config_chain, api.ConfigChainReply),
                "SubmitControl": unary(self.submit_control, api.ControlReply),
                "Ledger": unary(self.ledger, api.LedgerReply),
            },
        )


class _Invalid(ValueError):
    pass


def _status_for(error: str) -> grpc.StatusCode:
    if "exceeds" in error:
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if "is for group" in error:
        return grpc.StatusCode.NOT_FOUND
    if "already in use" in error or "for a different request" in error:
        return grpc.StatusCode.ALREADY_EXISTS
    return grpc.StatusCode.INVALID_ARGUMENT


def _package_location(message: api.ModelUpdateRequest, data_dir: Path) -> Path:
    """Where the new model package is: a local path, or an uploaded tar archive unpacked under
    the replica's data directory (member names checked so an archive cannot write elsewhere)."""
    if message.package_path:
        return Path(message.package_path)
    if not message.package_archive:
        raise ValueError("a model update needs package_path or package_archive")
    if len(message.package_archive) > PACKAGE_ARCHIVE_MAX_BYTES:
        raise ValueError("model package archive is too large")
    target = Path(tempfile.mkdtemp(prefix="model-", dir=data_dir))
    with tarfile.open(fileobj=io.BytesIO(message.package_archive)) as archive:
        archive.extractall(target, filter="data")
    entries = [p for p in target.iterdir()]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else target
