"""Client SDK: certified inference, every certificate verified against the config you pinned.

    from marketplace.sdk import Client

    with Client("127.0.0.1:8001", "group.json") as client:
        result = client.infer(pixels)  # raises InvalidCertificateError rather than return a forgery
        print(result.label_name, result.probabilities, [v.label_name for v in result.votes])

The client trusts only the group config it pins (the members' keys and f). Three ways in:

- `Client` / `AsyncClient`: through a gateway's native API (protos/marketplace.proto). The gateway
  verifies certificates too, but the SDK checks each one again against its own request: a
  gateway can drop requests, never forge results.
- `ReplicaClient` / `AsyncReplicaClient`: straight to the replicas, no gateway. Every request
  goes to every replica (one SubmitBatch each, fanout=1) and the first certificate that verifies
  wins, so up to f slow, dead or lying replicas change nothing.
- `ReplicaFanout`: the asyncio engine under the replica clients and under the gateway.

Requests are exactly-once per (client_id, request_id): retrying with the same ids returns the
certificate of the first execution. Ids default to a fixed anonymous client id and a fresh
random request id per row; pass your own to make retries safe.

Errors: every failure is a `ClientError` carrying the gRPC status code that describes it:
`InvalidCertificateError` (also a certs CertificateError), `RequestRejectedError` (bad input,
ValueError), `GroupNotFoundError` (LookupError), `UnavailableError` (ConnectionError) and
`CertificationTimeoutError` (TimeoutError).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import grpc.aio
import numpy as np
from google.protobuf.message import DecodeError as ProtobufDecodeError

from certs.certificate import Certificate, decode_certificate
from certs.config import GroupConfig, load_group_config
from certs.errors import CertificateError, DecodeError
from certs.membership import ConfigLink
from certs.outputs import PROB_SCALE, decision_space
from certs.request import InferenceRequest, TensorData
from certs.verify import VerifiedCertificate, verify
from certs.wire import repeated_field, request_to_proto
from marketplace.membership import ConfigChain, Ledger, LedgerError, UnknownEpochError, best_ledger, links_from_chain_reply, links_from_group_reply
from protos import marketplace_pb2 as mpb
from protos import replica_api_pb2 as api
from replica.admission import RETRY_AFTER_MAX_MS  # a hint above it (a faulty replica's) is not believed
from replica.archive import pushback_ms
from replica.config import STREAM_COALESCE_S

log = logging.getLogger("quorumserve.sdk")

T = TypeVar("T")

DEFAULT_CLIENT_ID = "anonymous"
DEFAULT_TIMEOUT_S = 30.0
# Replicas are told to give up this much before the caller does, so their TIMEOUT reply (which
# says "retry with the same ids") arrives before the caller's own deadline.
REPLY_MARGIN_S = 0.25
REPLICA_SERVICE = "quorumserve.v1.Replica"
GATEWAY_SERVICE = "quorumserve.v1.Gateway"
MESSAGE_SIZE_MAX_BYTES = 256 * 1024 * 1024
# Reconnect quickly to a replica that comes back (gRPC's default backoff grows to two minutes).
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", MESSAGE_SIZE_MAX_BYTES),
    ("grpc.max_send_message_length", MESSAGE_SIZE_MAX_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
)
STREAM_REOPEN_INTERVAL_S = 1.0
CHAIN_TIMEOUT_S = 5.0  # one round of asking the replicas for their config links
CHAIN_REFRESH_INTERVAL_S = 1.0  # unforced refreshes of the chain, at most this often
CHAIN_RETRY_INTERVAL_S = 0.2  # a new epoch's link may still be gathering its quorum of signatures
STREAM_QUEUE_MAX = 8192  # requests waiting to be written to one replica's stream
# one stream message carries at most this many requests (the replica's SUBMIT_BATCH_MAX) and
# stops growing past this size (a message is never split: one large row goes alone)
STREAM_MESSAGE_ROWS_MAX = 4096
STREAM_MESSAGE_TARGET_BYTES = 4 * 1024 * 1024
# KServe v2 datatype -> numpy dtype (BF16 and BYTES have none)
NUMPY_DTYPES: dict[str, str] = {
    "BOOL": "bool", "UINT8": "uint8", "INT8": "int8", "UINT16": "uint16", "INT16": "int16",
    "FP16": "float16", "UINT32": "uint32", "INT32": "int32", "FP32": "float32",
    "UINT64": "uint64", "INT64": "int64", "FP64": "float64",
}
REQUEST_CACHE_SIZE = 10_000
# ModelInfer calls the group refused for now (RESOURCE_EXHAUSTED) are tried again by gRPC itself
# after the wait the gateway's grpc-retry-pushback-ms trailer names (gRFC A6), up to 5 tries
RETRY_ATTEMPTS_MAX = 5


def retrying_channel_args(attempts_max: int = RETRY_ATTEMPTS_MAX) -> list[tuple[str, Any]]:
    """Channel arguments for the stock Triton client (`tritonclient.grpc` or its asyncio
    twin, `channel_args=`) that make gRPC retry a ModelInfer the group refused for now, after
    the wait the gateway asks for, with the same request id (so nothing is certified twice):

        InferenceServerClient(address, channel_args=retrying_channel_args())

    A refusal about the call itself (too many rows, too large) is retried too and refused
    again; the last refusal is what the caller sees."""
    policy = {
        "maxAttempts": attempts_max,
        "initialBackoff": "0.1s",
        "maxBackoff": f"{RETRY_AFTER_MAX_MS / 1000:g}s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["RESOURCE_EXHAUSTED"],
    }
    config = {"methodConfig": [{"name": [{"service": "inference.GRPCInferenceService", "method": "ModelInfer"}], "retryPolicy": policy}]}
    return [("grpc.enable_retries", 1), ("grpc.service_config", json.dumps(config))]


# =========================================================================================
# errors
# =========================================================================================


class ClientError(Exception):
    """A certified result could not be obtained; `code` is the matching gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class InvalidCertificateError(ClientError, CertificateError):
    """A certificate did not verify against the pinned config (and the request it answers)."""

    code = grpc.StatusCode.DATA_LOSS


class RequestRejectedError(ClientError, ValueError):
    """The request is invalid: wrong input, ids reused for another request, bad mapping."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str, *, request_id: str | None = None, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message, request_id=request_id)
        if code is not None:
            self.code = code


class GroupNotFoundError(ClientError, LookupError):
    code = grpc.StatusCode.NOT_FOUND


class UnavailableError(ClientError, ConnectionError):
    """Too few replicas (or the gateway) could be reached."""

    code = grpc.StatusCode.UNAVAILABLE


class CertificationTimeoutError(ClientError, TimeoutError):
    """Not certified in time; retrying with the same ids is safe (exactly-once)."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class GroupOverloadedError(ClientError):
    """The group refused the request for now (its gateway, or more than f replicas, by the
    admission rules of replica/admission.py): ask again, with the same ids, after
    `retry_after_s` (the request may be certified meanwhile; a retry then returns it)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, *, request_id: str | None = None, retry_after_s: float = 1.0) -> None:
        super().__init__(message, request_id=request_id)
        self.retry_after_s = retry_after_s


def error_for_code(code: grpc.StatusCode, message: str, request_id: str | None = None) -> ClientError:
    if code == grpc.StatusCode.NOT_FOUND:
        return GroupNotFoundError(message, request_id=request_id)
    if code == grpc.StatusCode.UNAVAILABLE:
        return UnavailableError(message, request_id=request_id)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return CertificationTimeoutError(message, request_id=request_id)
    if code == grpc.StatusCode.DATA_LOSS:
        return InvalidCertificateError(message, request_id=request_id)
    if code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
    ):
        return RequestRejectedError(message, request_id=request_id, code=code)
    error = ClientError(message, request_id=request_id)
    error.code = code
    return error


def status_code(value: int) -> grpc.StatusCode:
    """The grpc.StatusCode with this number (UNKNOWN for any other number)."""
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code
    return grpc.StatusCode.UNKNOWN


def rejection_code(error: str) -> grpc.StatusCode:
    """The status code for a replica's rejection message (as replica/service.py words them)."""
    if "exceeds" in error:
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if "is for group" in error:
        return grpc.StatusCode.NOT_FOUND
    if "already in use" in error or "for a different request" in error:
        return grpc.StatusCode.ALREADY_EXISTS
    return grpc.StatusCode.INVALID_ARGUMENT


# =========================================================================================
# requests and results
# =========================================================================================


def new_request_id() -> str:
    return uuid.uuid4().hex


def normalise_mapping(label_mapping: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> tuple[tuple[str, str], ...]:
    """A label -> decision mapping as the sorted pairs a request carries."""
    if not label_mapping:
        return ()
    items = label_mapping.items() if isinstance(label_mapping, Mapping) else label_mapping
    pairs = tuple(sorted((str(label), str(decision)) for label, decision in items))
    if len({label for label, _ in pairs}) != len(pairs):
        raise RequestRejectedError("label mapping names a label twice")
    return pairs


def check_mapping(config: GroupConfig, mapping: Sequence[tuple[str, str]]) -> tuple[str, ...]:
    """The decision space of `mapping` (() for none); RequestRejectedError if it does not fit."""
    if not mapping:
        return ()
    try:
        return decision_space(config.task.class_labels, dict(mapping))
    except ValueError as exc:
        raise RequestRejectedError(f"label mapping: {exc}") from exc


def row_bytes(config: GroupConfig, array: Any) -> bytes:
    """One input row as the task wants it (its datatype, its element count), or RequestRejectedError."""
    task = config.task
    dtype = np.dtype(NUMPY_DTYPES[task.input_datatype])
    values = np.asarray(array)
    expected = int(np.prod(task.input_shape))
    if values.size != expected:
        raise RequestRejectedError(
            f"input {task.input_name!r} needs shape {list(task.input_shape)} ({expected} values), got shape {list(values.shape)}"
        )
    if values.dtype != dtype:
        if not np.can_cast(values.dtype, dtype, casting="same_kind"):
            raise RequestRejectedError(f"input {task.input_name!r} needs {task.input_datatype}, got {values.dtype}")
        values = values.astype(dtype)
    return np.ascontiguousarray(values.reshape(task.input_shape)).tobytes()


def build_request(
    config: GroupConfig,
    array: Any,
    *,
    client_id: str = DEFAULT_CLIENT_ID,
    request_id: str | None = None,
    label_mapping: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
) -> InferenceRequest:
    """The InferenceRequest for one input row, exactly as it will be certified."""
    mapping = normalise_mapping(label_mapping)
    check_mapping(config, mapping)
    task = config.task
    return InferenceRequest(
        group_id=config.group_id,
        client_id=client_id,
        request_id=request_id or new_request_id(),
        inputs=(TensorData(task.input_name, task.input_datatype, tuple(task.input_shape), row_bytes(config, array)),),
        label_mapping=mapping,
    )


def expand_probabilities(pairs: Sequence[tuple[int, int]], num_classes: int) -> np.ndarray:
    """Quantised (class, probability) pairs as a float32 vector over the whole label space."""
    out = np.zeros(num_classes, dtype=np.float32)
    for cls, q in pairs:
        if 0 <= cls < num_classes:
            out[cls] = q / PROB_SCALE
    return out


@dataclass(frozen=True, eq=False)
class ReplicaVote:
    """What one replica's model answered, as the certificate records it (signed by the quorum)."""

    replica_id: int
    model_version: int
    label: int
    label_name: str
    probabilities: np.ndarray  # float32 over the label space


@dataclass(frozen=True, eq=False)
class InferenceResult:
    """A certified result whose certificate has been verified against the pinned config."""

    request: InferenceRequest
    label: int  # index into `labels`; -1 when the replicas did not agree (NO_AGREEMENT)
    label_name: str | None  # None when they did not agree
    labels: tuple[str, ...]  # the label space: the task's labels, or the mapping's decisions
    probabilities: np.ndarray  # float32 [len(labels)]: the certified decision's probabilities
    votes: tuple[ReplicaVote, ...]
    certificate: Certificate
    certificate_bytes: bytes  # the protobuf certificate, as received (what `quorumserve verify` reads)
    verified: VerifiedCertificate
    replica_id: int  # the replica whose certificate this is (any correct one would do)

    @property
    def agreed(self) -> bool:
        return self.label_name is not None

    @property
    def client_id(self) -> str:
        return self.request.client_id

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def group_id(self) -> str:
        return self.verified.group_id

    @property
    def epoch(self) -> int:
        return self.verified.epoch

    @property
    def seq(self) -> int:
        return self.verified.seq

    @property
    def supporters(self) -> tuple[int, ...]:
        return self.verified.supporters

    def probabilities_by_label(self) -> dict[str, float]:
        return {name: float(p) for name, p in zip(self.labels, self.probabilities)}

    def describe(self) -> str:
        return self.verified.describe()


def make_result(
    request: InferenceRequest,
    certificate: Certificate,
    certificate_bytes: bytes,
    verified: VerifiedCertificate,
    config: GroupConfig,
    replica_id: int,
) -> InferenceResult:
    leaf = certificate.leaf
    names = tuple(leaf.label_space or config.task.class_labels)
    votes = tuple(
        ReplicaVote(
            replica_id=vote.replica_id,
            model_version=vote.model_version,
            label=vote.output.label,
            label_name=names[vote.output.label],
            probabilities=expand_probabilities(vote.output.top, len(names)),
        )
        for vote in leaf.votes
    )
    return InferenceResult(
        request=request,
        label=verified.label,
        label_name=verified.label_name,
        labels=names,
        probabilities=expand_probabilities(leaf.decision.probabilities, len(names)),
        votes=votes,
        certificate=certificate,
        certificate_bytes=certificate_bytes,
        verified=verified,
        replica_id=replica_id,
    )


class LaterEpochError(InvalidCertificateError):
    """A certificate from an epoch after every config the client holds: it verifies only once
    the chain of configs from the pinned one reaches that epoch (see `ReplicaFanout.follow_chain`)."""

    def __init__(self, epoch: int, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message, request_id=request_id)
        self.epoch = epoch


class PinnedConfigs:
    """The configs a client trusts, by epoch: the ones it pinned (a GroupConfig, or a chain of
    them it trusts as given), then each later epoch's config accepted only through a link signed
    by a quorum of the epoch before it (`extend`). A certificate from an epoch with no trusted
    config is refused."""

    def __init__(self, config: GroupConfig | Sequence[GroupConfig]) -> None:
        pinned = (config,) if isinstance(config, GroupConfig) else tuple(config)
        if not pinned:
            raise ValueError("at least one group config is needed")
        self.trusted = ConfigChain(pinned[-1])
        self._given = {c.epoch: c for c in pinned}

    @property
    def chain(self) -> tuple[GroupConfig, ...]:
        """Every trusted config, oldest first."""
        by_epoch = {**self._given, **{c.epoch: c for c in self.trusted.configs}}
        return tuple(by_epoch[e] for e in sorted(by_epoch))

    @property
    def current(self) -> GroupConfig:
        return self.trusted.current

    @property
    def links(self) -> dict[int, ConfigLink]:
        """epoch -> the quorum-signed link through which that epoch's config was accepted."""
        return dict(self.trusted.links)

    def extend(self, links: Iterable[ConfigLink], start_seqs: Mapping[int, int] | None = None) -> list[GroupConfig]:
        """Accept the links that continue the chain (each checked against the config before it);
        returns the configs gained. Raises InvalidCertificateError for a link that carries a
        quorum of signatures that do not verify."""
        try:
            return self.trusted.extend(links, start_seqs)
        except CertificateError as exc:
            raise InvalidCertificateError(f"config chain: {exc}") from exc

    def for_epoch(self, epoch: int) -> GroupConfig:
        config = self._given.get(epoch) or self.trusted.for_epoch(epoch)
        if config is None:
            known = [c.epoch for c in self.chain]
            message = f"certificate is from epoch {epoch} of group {self.current.group_id!r}; the trusted configs cover epochs {known}"
            if epoch > self.current.epoch:
                raise LaterEpochError(epoch, message + " (no valid chain to that epoch yet)")
            raise InvalidCertificateError(message)
        return config

    def check(self, data: bytes, request: InferenceRequest | None, *, ids: tuple[str, str] | None = None) -> tuple[Certificate, VerifiedCertificate]:
        """Decode and verify; raise InvalidCertificateError saying what is wrong."""
        try:
            certificate = decode_certificate(data)
            if certificate.header.group_id != self.current.group_id:
                raise CertificateError(f"certificate is for group {certificate.header.group_id!r}, not {self.current.group_id!r}")
            verified = verify(certificate, self.for_epoch(certificate.header.epoch), request)
        except InvalidCertificateError:
            raise
        except CertificateError as exc:
            raise InvalidCertificateError(f"invalid certificate: {exc}", request_id=request.request_id if request else None) from exc
        if ids is not None and (verified.client_id, verified.request_id) != ids:
            raise InvalidCertificateError(
                f"certificate is for {verified.client_id}/{verified.request_id}, asked for {ids[0]}/{ids[1]}", request_id=ids[1]
            )
        return certificate, verified

    def conflict(self, data: bytes, request: InferenceRequest) -> str | None:
        """If `data` is a valid certificate for the same ids but another request, say so: the
        group already certified those ids (exactly-once), so this request can never be."""
        try:
            certificate, verified = self.check(data, None)
        except InvalidCertificateError:
            return None
        if (verified.client_id, verified.request_id) != request.key or verified.request_digest == request.digest:
            return None
        return (
            f"request id {request.request_id!r} of client {request.client_id!r} is already in use by a different "
            f"request (certified at seq {verified.seq}); use a new request id"
        )


def _load_config(group_config: GroupConfig | Sequence[GroupConfig] | str | os.PathLike[str]) -> PinnedConfigs:
    if isinstance(group_config, (str, os.PathLike)):
        return PinnedConfigs(load_group_config(group_config))
    return PinnedConfigs(group_config)


# =========================================================================================
# the fan-out engine
# =========================================================================================

CERTIFIED = "certified"
REJECTED = "rejected"
UNAVAILABLE = "unavailable"
TIMEOUT = "timeout"
OVERLOADED = "overloaded"


@dataclass
class RowOutcome:
    """What became of one request sent to every replica."""

    request: InferenceRequest
    status: str  # CERTIFIED, REJECTED, UNAVAILABLE, TIMEOUT or OVERLOADED
    error: str = ""
    certificate_bytes: bytes = b""
    certificate: Certificate | None = None
    verified: VerifiedCertificate | None = None
    replica_id: int = -1
    invalid_certificates: int = 0
    retry_after_ms: int = 0  # OVERLOADED: when to ask again

    @property
    def code(self) -> grpc.StatusCode:
        if self.status == CERTIFIED:
            return grpc.StatusCode.OK
        if self.status == REJECTED:
            return rejection_code(self.error)
        if self.status == UNAVAILABLE:
            return grpc.StatusCode.UNAVAILABLE
        if self.status == OVERLOADED:
            return grpc.StatusCode.RESOURCE_EXHAUSTED
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def error_object(self) -> ClientError:
        if self.status == OVERLOADED:
            return GroupOverloadedError(self.error, request_id=self.request.request_id, retry_after_s=self.retry_after_ms / 1000)
        return error_for_code(self.code, self.error, self.request.request_id)


class _Row:
    """One request's answers so far; decided once certified, rejected by f+1 replicas, refused
    as overloaded by f+1 (at least one of them correct), or every replica has answered (or
    failed)."""

    def __init__(self, request: InferenceRequest, replica_ids: Sequence[int], f: int) -> None:
        self.request = request
        self.replica_ids = frozenset(replica_ids)
        self.f = f
        self.answered: set[int] = set()
        self.rejections: dict[int, str] = {}
        self.overloads: dict[int, tuple[str, int]] = {}  # replica -> (error, retry after ms)
        self.timeouts: dict[int, str] = {}
        self.failures: dict[int, str] = {}
        self.invalid = 0
        self.certified: RowOutcome | None = None
        self.conflicting: str | None = None
        self.waiter: asyncio.Future[None] | None = None
        # certificates from an epoch the client has no config for yet: checked again once the
        # chain of configs is followed (replica id, certificate bytes)
        self.deferred: list[tuple[int, bytes]] = []

    @property
    def done(self) -> bool:
        return (
            self.certified is not None
            or self.conflicting is not None
            or len(self.rejections) > self.f
            or len(self.overloads) > self.f
            or self.answered >= self.replica_ids
        )

    def _answer(self, replica_id: int) -> None:
        self.answered.add(replica_id)
        if self.done and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def certify(self, replica_id: int, data: bytes, certificate: Certificate, verified: VerifiedCertificate) -> None:
        if self.certified is None:
            self.certified = RowOutcome(self.request, CERTIFIED, "", data, certificate, verified, replica_id)
        self._answer(replica_id)

    def reject(self, replica_id: int, error: str) -> None:
        self.rejections[replica_id] = error
        self._answer(replica_id)

    def time_out(self, replica_id: int, error: str) -> None:
        self.timeouts[replica_id] = error
        self._answer(replica_id)

    def overload(self, replica_id: int, error: str, retry_after_ms: int) -> None:
        self.overloads[replica_id] = (error, retry_after_ms)
        self._answer(replica_id)

    def fail(self, replica_id: int, error: str) -> None:
        self.failures[replica_id] = error
        self._answer(replica_id)

    def conflict(self, replica_id: int, error: str) -> None:
        """A valid certificate proves these ids were certified for another request."""
        self.conflicting = error
        self._answer(replica_id)

    def defer(self, replica_id: int, data: bytes) -> None:
        """A certificate from a later epoch: it counts once the chain reaches that epoch."""
        self.deferred.append((replica_id, bytes(data)))
        self._answer(replica_id)

    def invalid_answer(self, replica_id: int, error: str) -> None:
        self.invalid += 1
        self.failures[replica_id] = f"invalid certificate: {error}"
        self._answer(replica_id)

    def outcome(self) -> RowOutcome:
        if self.certified is not None:
            self.certified.invalid_certificates = self.invalid
            return self.certified
        request, invalid = self.request, self.invalid
        if self.conflicting is not None:
            return RowOutcome(request, REJECTED, self.conflicting, invalid_certificates=invalid)
        if len(self.rejections) > self.f:
            # f+1 replicas agree the request is invalid: at least one of them is correct
            error = collections.Counter(self.rejections.values()).most_common(1)[0][0]
            return RowOutcome(request, REJECTED, error, invalid_certificates=invalid)
        if len(self.overloads) > self.f:
            # f+1 say so, so a correct replica is at its limit. The earliest hint: it is no later
            # than a correct replica's, and a retry too early costs one more refusal
            wait_ms = min(RETRY_AFTER_MAX_MS, max(1, min(ms for _, ms in self.overloads.values())))
            first = min(self.overloads)
            return RowOutcome(
                request, OVERLOADED,
                f"the group is overloaded: {len(self.overloads)} of {len(self.replica_ids)} replicas refused it for now "
                f"({self.overloads[first][0]}); retry with the same ids in about {wait_ms} ms",
                invalid_certificates=invalid, retry_after_ms=wait_ms,
            )
        details = "; ".join(
            f"replica {rid}: {reason}"
            for rid, reason in sorted(
                {**self.failures, **self.timeouts, **self.rejections, **{r: e for r, (e, _) in self.overloads.items()}}.items()
            )
        )
        missing = sorted(self.replica_ids - self.answered)
        if missing:
            details = f"{details}; " if details else ""
            details += f"no answer yet from replicas {missing}"
        if self.timeouts or missing:
            return RowOutcome(request, TIMEOUT, f"not certified in time ({details}); retry with the same ids", invalid_certificates=invalid)
        return RowOutcome(request, UNAVAILABLE, f"no replica returned a valid certificate ({details})", invalid_certificates=invalid)


@dataclass
class ReplicaHealth:
    """One replica's answer to Status (what it says of itself; not verified)."""

    replica_id: int
    address: str
    reachable: bool
    error: str = ""
    status: api.StatusReply | None = None
    latency_s: float = 0.0


InvalidHook = Callable[[int, InferenceRequest | None, str], None]
FailureHook = Callable[[int, str], None]


class ReplicaFanout:
    """Sends requests to every replica of a group and keeps, per request, the first certificate
    that verifies against the pinned config and the request itself.

    Invalid certificates, malformed replies and unreachable replicas are reported to
    `on_invalid(replica_id, request, reason)` / `on_failure(replica_id, kind)` and otherwise
    ignored: f of them cannot stop f+1 correct replicas' certificates from getting through.
    Channels are created on first use in the running event loop.
    """

    def __init__(
        self,
        config: GroupConfig | Sequence[GroupConfig] | PinnedConfigs,
        addresses: Mapping[int, str] | Sequence[str] | None = None,
        *,
        on_invalid: InvalidHook | None = None,
        on_failure: FailureHook | None = None,
        on_new_configs: Callable[[list[GroupConfig]], None] | None = None,
        on_stream_write: Callable[[int], None] | None = None,
        stream_coalesce_s: float = STREAM_COALESCE_S,
    ) -> None:
        if not stream_coalesce_s >= 0:
            raise ValueError(f"stream_coalesce_s must be 0 or more, not {stream_coalesce_s}")
        self.configs = config if isinstance(config, PinnedConfigs) else PinnedConfigs(config)
        current = self.configs.current
        if addresses is None:
            self._overrides: dict[int, str] = {}
        elif isinstance(addresses, Mapping):
            self._overrides = dict(addresses)
        else:
            if len(addresses) != current.n:
                raise ValueError(f"{len(addresses)} addresses for {current.n} replicas")
            self._overrides = {m.replica_id: a for m, a in zip(current.members, addresses)}
        self.addresses = self._member_addresses(current)
        self.on_invalid = on_invalid
        self.on_failure = on_failure
        self.on_new_configs = on_new_configs
        self.on_stream_write = on_stream_write  # called with the rows of each message written to a stream
        self.stream_coalesce_s = stream_coalesce_s
        self._channels: dict[int, grpc.aio.Channel] = {}
        self._stream: FanoutStream | None = None
        self._following: asyncio.Task[list[GroupConfig]] | None = None
        self._followed_at_s = -CHAIN_REFRESH_INTERVAL_S

    def _member_addresses(self, config: GroupConfig) -> dict[int, str]:
        return {m.replica_id: self._overrides.get(m.replica_id, m.address) for m in config.members}

    def _known_addresses(self) -> dict[int, str]:
        """Every replica of every trusted epoch (a replica that left may still serve the chain)."""
        known: dict[int, str] = {}
        for config in self.configs.chain:
            known.update(self._member_addresses(config))
        return known

    @property
    def config(self) -> GroupConfig:
        return self.configs.current

    @property
    def replica_ids(self) -> tuple[int, ...]:
        return tuple(self.addresses)

    def channel(self, replica_id: int) -> grpc.aio.Channel:
        channel = self._channels.get(replica_id)
        if channel is None:
            address = self.addresses.get(replica_id) or self._known_addresses()[replica_id]
            channel = grpc.aio.insecure_channel(address, options=list(CHANNEL_OPTIONS))
            self._channels[replica_id] = channel
        return channel

    async def close(self) -> None:
        if self._following is not None:
            await _cancel([self._following])
        if self._stream is not None:
            await self._stream.close()
            self._stream = None
        channels, self._channels = list(self._channels.values()), {}
        await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)

    # -- following the chain of configs ----------------------------------------------------
    async def follow_chain(self, *, timeout_s: float = CHAIN_TIMEOUT_S, force: bool = False) -> list[GroupConfig]:
        """Ask the replicas for the configs of later epochs and accept those whose links verify
        from the pinned config; new members get requests from then on, members that left do
        not. Returns the configs gained. At most one refresh runs at a time, and at most one
        per CHAIN_REFRESH_INTERVAL_S (CHAIN_RETRY_INTERVAL_S when `force`d), so a faulty
        replica flashing certificates of made-up epochs cannot make the client hammer the group."""
        task = self.start_following(timeout_s=timeout_s, force=force)
        if task is None:
            return []
        return list(await asyncio.shield(task))

    def start_following(self, *, timeout_s: float = CHAIN_TIMEOUT_S, force: bool = False) -> asyncio.Task[list[GroupConfig]] | None:
        """The running refresh of the chain, or a new one (None when one ran too recently)."""
        loop = asyncio.get_running_loop()
        if self._following is None:
            interval_s = CHAIN_RETRY_INTERVAL_S if force else CHAIN_REFRESH_INTERVAL_S
            if loop.time() - self._followed_at_s < interval_s:
                return None
            self._following = loop.create_task(self._follow(timeout_s))
            self._following.add_done_callback(self._followed)
        return self._following

    def _followed(self, task: asyncio.Task[list[GroupConfig]]) -> None:
        self._following = None
        self._followed_at_s = asyncio.get_running_loop().time()

    async def _follow(self, timeout_s: float) -> list[GroupConfig]:
        gained: list[GroupConfig] = []
        payload = api.ConfigChainRequest().SerializeToString()
        asked: set[int] = set()

        async def ask(rid: int) -> tuple[int, bytes | Exception]:
            try:
                return rid, await self._unary(rid, "GetConfigChain", payload, timeout_s)
            except Exception as exc:  # unreachable, too old to serve the chain...: the others answer
                return rid, exc

        while True:
            targets = [rid for rid in self._known_addresses() if rid not in asked]
            asked.update(targets)
            before = len(gained)
            for next_done in asyncio.as_completed([ask(rid) for rid in targets]):
                rid, raw = await next_done
                if isinstance(raw, Exception):
                    continue
                reply = api.ConfigChainReply()
                try:
                    reply.ParseFromString(raw)
                    links, starts = links_from_chain_reply(reply)
                    new = self.configs.extend(links, starts)
                except (ProtobufDecodeError, RuntimeError, ValueError, DecodeError, InvalidCertificateError) as exc:
                    self._invalid(rid, None, f"config chain: {exc}")
                    continue
                if new:
                    gained += new
                    self._adopt_current()  # at once: requests waiting on this epoch need not wait for slow replicas
            if len(gained) == before:
                return gained
            # members of the new epochs may already know of yet later ones: ask them too

    def _adopt_current(self) -> None:
        """Send to the members of the newest trusted epoch from now on."""
        addresses = self._member_addresses(self.configs.current)
        if addresses == self.addresses:
            return
        # channels to replicas that left stay open until close(): calls in flight on them
        # finish normally (a replica that left still answers, or refuses, what it was sent)
        self.addresses = addresses
        if self._stream is not None:
            self._stream.sync_replicas()
        log.info("group %s: now at epoch %d, replicas %s", self.config.group_id, self.config.epoch, sorted(addresses))
        if self.on_new_configs is not None:
            self.on_new_configs(list(self.configs.chain))

    def _follow_soon(self) -> None:
        """Start following the chain now (a certificate of a later epoch just arrived)."""
        self.start_following(force=True)

    def learn_links(self, links: Iterable[ConfigLink]) -> list[GroupConfig]:
        """Accept configs of later epochs from elsewhere (a gateway's GetGroup), each verified."""
        gained = self.configs.extend(links)
        if gained:
            self._adopt_current()
        return gained

    async def _resolve_deferred(self, rows: Sequence[_Row], deadline_s: float) -> None:
        """Certificates from epochs the client did not know when they arrived: follow the chain
        and check them again, retrying until the deadline (right after an epoch change the
        replicas may still be gathering the quorum of signatures on the new config)."""
        loop = asyncio.get_running_loop()
        while True:
            waiting = [row for row in rows if row.certified is None and row.deferred]
            if not waiting:
                return
            final = loop.time() + CHAIN_RETRY_INTERVAL_S >= deadline_s
            if not final:
                task = self.start_following(timeout_s=min(CHAIN_TIMEOUT_S, deadline_s - loop.time()), force=True)
                if task is not None:
                    await asyncio.wait([task], timeout=CHAIN_RETRY_INTERVAL_S)
                else:
                    await asyncio.sleep(CHAIN_RETRY_INTERVAL_S)
            for row in waiting:
                self._recheck(row, final=final)
            if final:
                return

    def _recheck(self, row: _Row, *, final: bool) -> None:
        deferred, row.deferred = row.deferred, []
        for replica_id, data in deferred:
            if row.certified is not None:
                return
            try:
                certificate, verified = self.configs.check(data, row.request if row.request.inputs else None)
            except LaterEpochError as exc:
                if final:
                    self._invalid(replica_id, row, str(exc))
                else:
                    row.deferred.append((replica_id, data))
                continue
            except InvalidCertificateError as exc:
                self._invalid(replica_id, row, str(exc))
                continue
            if (verified.client_id, verified.request_id) != row.request.key:
                self._invalid(replica_id, row, f"certificate is for {verified.client_id}/{verified.request_id}")
                continue
            row.certify(replica_id, data, certificate, verified)

    # -- the fee ledger --------------------------------------------------------------------
    async def ledger(self, *, timeout_s: float = CHAIN_TIMEOUT_S) -> Ledger:
        """The fee ledger at the newest stable checkpoint any replica proves: its figures are
        checked against a quorum of checkpoint signatures of the epoch that signed them.
        Raises UnavailableError when no replica returns one that verifies."""
        payload = api.LedgerRequest().SerializeToString()
        followed = False
        while True:
            targets = list(self.replica_ids)
            raws = await asyncio.gather(*(self._unary(rid, "Ledger", payload, timeout_s) for rid in targets), return_exceptions=True)
            replies: list[api.LedgerReply] = []
            failures: list[str] = []
            for rid, raw in zip(targets, raws):
                if isinstance(raw, grpc.aio.AioRpcError):
                    failures.append(f"replica {rid}: {raw.code().name} {raw.details()}")
                    continue
                if isinstance(raw, BaseException):
                    failures.append(f"replica {rid}: {raw}")
                    continue
                reply = api.LedgerReply()
                try:
                    reply.ParseFromString(raw)
                except (ProtobufDecodeError, RuntimeError, ValueError) as exc:
                    failures.append(f"replica {rid}: malformed ledger reply: {exc}")
                    continue
                replies.append(reply)
            best, errors = best_ledger(replies, self.configs.trusted)
            for error in errors:
                if not isinstance(error, UnknownEpochError):
                    log.warning("group %s: a replica sent a ledger that does not verify: %s", self.config.group_id, error)
            later = any(isinstance(e, UnknownEpochError) for e in errors)
            if (later or best is None) and not followed:
                followed = True
                if await self.follow_chain(timeout_s=timeout_s, force=True):
                    continue
            if best is not None:
                return best
            raise UnavailableError("no replica returned a ledger that verifies: " + "; ".join([str(e) for e in errors] + failures))

    async def _unary(self, replica_id: int, method: str, payload: bytes, timeout_s: float) -> bytes:
        call = self.channel(replica_id).unary_unary(f"/{REPLICA_SERVICE}/{method}")  # raw bytes both ways
        result: bytes = await call(payload, timeout=timeout_s)
        return result

    def _invalid(self, replica_id: int, row: _Row | None, reason: str) -> None:
        if row is not None:
            row.invalid_answer(replica_id, reason)
        if self.on_invalid is not None:
            self.on_invalid(replica_id, row.request if row is not None else None, reason)

    def _failed(self, replica_id: int, kind: str) -> None:
        if self.on_failure is not None:
            self.on_failure(replica_id, kind)

    def _absorb_reply(self, replica_id: int, row: _Row, reply: api.SubmitReply) -> None:
        """One replica's SubmitReply for one row."""
        request = row.request
        if (reply.client_id, reply.request_id) != request.key:
            self._invalid(replica_id, row, f"reply names {reply.client_id}/{reply.request_id}, sent {request.client_id}/{request.request_id}")
            return
        if reply.status == api.CERTIFIED:
            if row.certified is not None:
                row._answer(replica_id)  # no need to check a second certificate
                return
            try:
                certificate, verified = self.configs.check(reply.certificate, request)
            except LaterEpochError:
                row.defer(replica_id, reply.certificate)  # checked again once the chain is followed
                self._follow_soon()
                return
            except InvalidCertificateError as exc:
                conflict = self.configs.conflict(reply.certificate, request)
                if conflict is not None:
                    row.conflict(replica_id, conflict)
                else:
                    self._invalid(replica_id, row, str(exc))
                return
            row.certify(replica_id, bytes(reply.certificate), certificate, verified)
        elif reply.status == api.REJECTED:
            row.reject(replica_id, reply.error or "rejected")
        elif reply.status == api.TIMEOUT:
            row.time_out(replica_id, reply.error or "timed out")
        elif reply.status == api.OVERLOADED:
            row.overload(replica_id, reply.error or "overloaded", reply.retry_after_ms)
        else:
            self._invalid(replica_id, row, f"reply with unknown status {reply.status}")

    def _absorb_batch(self, replica_id: int, task: asyncio.Task[bytes], rows: Sequence[_Row]) -> None:
        if task.cancelled():
            for row in rows:
                row.fail(replica_id, "call cancelled")
            return
        try:
            raw = task.result()
        except grpc.aio.AioRpcError as exc:
            kind = "timeout" if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED else "unavailable"
            self._failed(replica_id, kind)
            for row in rows:
                if kind == "timeout":
                    row.time_out(replica_id, f"{exc.code().name}: {exc.details()}")
                else:
                    row.fail(replica_id, f"{exc.code().name}: {exc.details()}")
            return
        reply = api.SubmitBatchReply()
        try:
            reply.ParseFromString(raw)
        except (ProtobufDecodeError, RuntimeError, ValueError) as exc:
            self._failed(replica_id, "malformed")
            for row in rows:
                self._invalid(replica_id, row, f"malformed SubmitBatchReply: {exc}")
            return
        if len(reply.replies) != len(rows):
            self._failed(replica_id, "malformed")
            for row in rows:
                self._invalid(replica_id, row, f"{len(reply.replies)} replies for {len(rows)} requests")
            return
        for row, one in zip(rows, reply.replies):
            self._absorb_reply(replica_id, row, one)

    async def submit(self, requests: Sequence[InferenceRequest], *, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[RowOutcome]:
        """Certify every request: ONE SubmitBatch to each replica, first valid certificate per row.

        Returns as soon as every row is decided (later replies are not awaited), or at the
        deadline with TIMEOUT outcomes for the undecided rows.
        """
        if not requests:
            return []
        config = self.config
        rows = [_Row(r, self.replica_ids, config.f) for r in requests]
        timeout_ms = max(1, int((timeout_s - REPLY_MARGIN_S) * 1000))
        payload = api.SubmitBatchRequest(
            requests=[api.SubmitRequest(request=request_to_proto(r), fanout=1, timeout_ms=timeout_ms) for r in requests]
        ).SerializeToString()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        tasks = {
            loop.create_task(self._unary(rid, "SubmitBatch", payload, timeout_s + REPLY_MARGIN_S)): rid
            for rid in self.replica_ids
        }
        pending: set[asyncio.Task[bytes]] = set(tasks)
        try:
            while pending and not all(row.done for row in rows):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                done, pending = await asyncio.wait(pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    self._absorb_batch(tasks[task], task, rows)
            await self._resolve_deferred(rows, deadline)
        finally:
            await _cancel(pending)
        return [row.outcome() for row in rows]

    async def get_certificate(
        self,
        client_id: str,
        request_id: str,
        *,
        request: InferenceRequest | None = None,
        timeout_s: float = 10.0,
    ) -> RowOutcome:
        """The full certificate of a certified request, from the first replica whose copy verifies.
        With `request`, the certificate must also be about exactly that request."""
        placeholder = request or InferenceRequest(self.config.group_id, client_id, request_id, ())
        row = _Row(placeholder, self.replica_ids, self.config.f)
        payload = api.GetCertificateRequest(client_id=client_id, request_id=request_id).SerializeToString()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        tasks = {loop.create_task(self._unary(rid, "GetCertificate", payload, timeout_s)): rid for rid in self.replica_ids}
        pending: set[asyncio.Task[bytes]] = set(tasks)
        not_found: dict[int, str] = {}
        try:
            while pending and not row.done:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                done, pending = await asyncio.wait(pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    rid = tasks[task]
                    try:
                        raw = task.result()
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() == grpc.StatusCode.NOT_FOUND:
                            not_found[rid] = exc.details() or "not found"
                        else:
                            self._failed(rid, "unavailable")
                        row.fail(rid, f"{exc.code().name}: {exc.details()}")
                        continue
                    reply = api.SubmitReply()
                    try:
                        reply.ParseFromString(raw)
                    except (ProtobufDecodeError, RuntimeError, ValueError) as exc:
                        self._invalid(rid, row, f"malformed reply: {exc}")
                        continue
                    if reply.status != api.CERTIFIED:
                        self._invalid(rid, row, f"GetCertificate answered status {reply.status}")
                        continue
                    try:
                        certificate, verified = self.configs.check(reply.certificate, request, ids=(client_id, request_id))
                    except LaterEpochError:
                        row.defer(rid, reply.certificate)
                        self._follow_soon()
                        continue
                    except InvalidCertificateError as exc:
                        self._invalid(rid, row, str(exc))
                        continue
                    row.certify(rid, bytes(reply.certificate), certificate, verified)
            await self._resolve_deferred([row], deadline)
        finally:
            await _cancel(pending)
        outcome = row.outcome()
        if outcome.status != CERTIFIED and len(not_found) > self.config.f:
            outcome = RowOutcome(placeholder, REJECTED, f"no certificate for {client_id}/{request_id}: {len(not_found)} replicas do not know it", invalid_certificates=row.invalid)
        return outcome

    async def status(self, *, timeout_s: float = 2.0) -> list[ReplicaHealth]:
        """Every replica's Status, concurrently (an unreachable one says why)."""
        payload = api.StatusRequest().SerializeToString()

        async def one(rid: int) -> ReplicaHealth:
            address = self.addresses[rid]
            started = time.perf_counter()
            try:
                raw = await self._unary(rid, "Status", payload, timeout_s)
            except grpc.aio.AioRpcError as exc:
                return ReplicaHealth(rid, address, False, f"{exc.code().name}: {exc.details()}")
            latency_s = time.perf_counter() - started
            status = api.StatusReply()
            try:
                status.ParseFromString(raw)
            except (ProtobufDecodeError, RuntimeError, ValueError) as exc:
                return ReplicaHealth(rid, address, False, f"malformed status: {exc}", latency_s=latency_s)
            return ReplicaHealth(rid, address, True, "", status, latency_s)

        return list(await asyncio.gather(*(one(rid) for rid in self.replica_ids)))

    def stream(self) -> FanoutStream:
        """The shared streaming connection to every replica (opened on first use)."""
        if self._stream is None:
            self._stream = FanoutStream(self)
        return self._stream


_BACKGROUND: set[asyncio.Task[Any]] = set()  # fire-and-forget tasks, kept referenced until done


async def _close_streams(streams: Sequence[_ReplicaStream]) -> None:
    await asyncio.gather(*(s.close() for s in streams), return_exceptions=True)


async def _cancel(tasks: Iterable[asyncio.Task[Any]]) -> None:
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)


class _ReplicaStream:
    """One SubmitBatchStream call to one replica, with a writer queue: each write takes every
    request queued by then (one gRPC message for a burst of rows), and each reply message
    carries every certificate the replica had ready."""

    def __init__(self, fanout: ReplicaFanout, owner: FanoutStream, replica_id: int) -> None:
        self.fanout = fanout
        self.owner = owner
        self.replica_id = replica_id
        self.call: Any = None
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.tasks: list[asyncio.Task[None]] = []
        self.broken_at_s: float | None = None

    @property
    def open(self) -> bool:
        return self.call is not None and self.broken_at_s is None

    def ensure_open(self) -> bool:
        """Open the stream unless it broke less than a second ago; True if it can take rows."""
        if self.open:
            return True
        loop = asyncio.get_running_loop()
        if self.broken_at_s is not None and loop.time() - self.broken_at_s < STREAM_REOPEN_INTERVAL_S:
            return False
        stream_stream = self.fanout.channel(self.replica_id).stream_stream(f"/{REPLICA_SERVICE}/SubmitBatchStream")
        self.call = stream_stream()
        self.queue = asyncio.Queue()
        self.broken_at_s = None
        self.tasks = [loop.create_task(self._write(self.call, self.queue)), loop.create_task(self._read(self.call))]
        return True

    def send(self, payload: bytes) -> bool:
        """Queue a request for this replica; False when it has stopped reading (a stalled
        replica must not make the gateway buffer without bound)."""
        if self.queue.qsize() >= STREAM_QUEUE_MAX:
            call = self.call
            self._broken(call, f"more than {STREAM_QUEUE_MAX} requests waiting to be written")
            if call is not None:
                call.cancel()
            return False
        self.queue.put_nowait(payload)
        return True

    async def _write(self, call: Any, queue: asyncio.Queue[bytes | None]) -> None:
        fanout = self.fanout
        try:
            while True:
                payload = await queue.get()
                closing = payload is None
                if not closing and queue.empty() and fanout.stream_coalesce_s > 0 and len(self.owner.pending) > 1:
                    # Other rows are in flight, so the replica is busy with them and a row written
                    # now would wait there for company anyway (replica/node.py). Rows that come
                    # within the wait go in one message, which costs the gateway and the replica
                    # one gRPC message instead of one each, and reach every replica together, so
                    # they share its Triton calls, vote batches and ordered batches. A lone call
                    # (nothing else in flight) is written at once.
                    self.owner.coalesce_waits += 1
                    await asyncio.sleep(fanout.stream_coalesce_s)
                batch: list[bytes] = []
                size = 0
                while payload is not None:
                    batch.append(payload)
                    size += len(payload)
                    if queue.empty() or len(batch) >= STREAM_MESSAGE_ROWS_MAX or size >= STREAM_MESSAGE_TARGET_BYTES:
                        break
                    payload = queue.get_nowait()
                    closing = payload is None
                if batch:
                    await call.write(repeated_field(1, batch))  # a SubmitBatchRequest
                    if fanout.on_stream_write is not None:
                        fanout.on_stream_write(len(batch))
                if closing:
                    await call.done_writing()
                    return
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
            self._broken(call, f"write failed: {exc}")

    async def _read(self, call: Any) -> None:
        error = "stream closed"
        try:
            while True:
                raw = await call.read()
                if raw is grpc.aio.EOF:
                    break
                message = api.SubmitBatchReply()
                try:
                    message.ParseFromString(raw)
                except (ProtobufDecodeError, RuntimeError, ValueError) as exc:
                    self.fanout._invalid(self.replica_id, None, f"malformed SubmitBatchReply: {exc}")
                    continue
                for reply in message.replies:
                    self.owner._dispatch(self.replica_id, reply)
        except grpc.aio.AioRpcError as exc:
            error = f"{exc.code().name}: {exc.details()}"
        self._broken(call, error)

    def _broken(self, call: Any, error: str) -> None:
        if call is not self.call or self.broken_at_s is not None:
            return
        self.broken_at_s = asyncio.get_running_loop().time()
        self.fanout._failed(self.replica_id, "unavailable")
        self.owner._replica_gone(self.replica_id, error)

    async def close(self) -> None:
        if self.call is not None and self.broken_at_s is None:
            self.queue.put_nowait(None)
        if self.call is not None:
            self.call.cancel()
        await _cancel(self.tasks)
        self.call = None


class FanoutStream:
    """Requests in, certified outcomes out as they commit: one SubmitBatchStream per replica, shared
    by every caller (rows are matched to replies by client and request id)."""

    def __init__(self, fanout: ReplicaFanout) -> None:
        self.fanout = fanout
        self.replicas = {rid: _ReplicaStream(fanout, self, rid) for rid in fanout.replica_ids}
        self.pending: dict[tuple[str, str], list[_Row]] = {}
        self.coalesce_waits = 0  # times a stream's writer waited for company (see _ReplicaStream._write)

    async def submit(self, request: InferenceRequest, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> RowOutcome:
        fanout = self.fanout
        row = _Row(request, fanout.replica_ids, fanout.config.f)
        row.waiter = asyncio.get_running_loop().create_future()
        rows = self.pending.setdefault(request.key, [])
        rows.append(row)
        timeout_ms = max(1, int((timeout_s - REPLY_MARGIN_S) * 1000))
        payload = api.SubmitRequest(request=request_to_proto(request), fanout=1, timeout_ms=timeout_ms).SerializeToString()
        try:
            for rid, replica in self.replicas.items():
                if not (replica.ensure_open() and replica.send(payload)):
                    row.fail(rid, "stream to this replica is down")
            deadline = asyncio.get_running_loop().time() + timeout_s + REPLY_MARGIN_S
            if not row.done:
                try:
                    await asyncio.wait_for(asyncio.shield(row.waiter), timeout_s + REPLY_MARGIN_S)
                except asyncio.TimeoutError:
                    pass
            await fanout._resolve_deferred([row], deadline)
            return row.outcome()
        finally:
            rows.remove(row)
            if not rows:
                self.pending.pop(request.key, None)

    def sync_replicas(self) -> None:
        """The group's members changed: open streams to new members, close those to leavers."""
        ids = set(self.fanout.replica_ids)
        gone = [self.replicas.pop(rid) for rid in list(self.replicas) if rid not in ids]
        for rid in sorted(ids - set(self.replicas)):
            self.replicas[rid] = _ReplicaStream(self.fanout, self, rid)
        for stream in gone:
            self._replica_gone(stream.replica_id, "the replica left the group")  # its rows need not wait for it
        if gone:
            task = asyncio.get_running_loop().create_task(_close_streams(gone))
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)

    def _dispatch(self, replica_id: int, reply: api.SubmitReply) -> None:
        for row in list(self.pending.get((reply.client_id, reply.request_id), ())):
            if replica_id not in row.answered:
                self.fanout._absorb_reply(replica_id, row, reply)

    def _replica_gone(self, replica_id: int, error: str) -> None:
        for rows in list(self.pending.values()):
            for row in rows:
                if replica_id not in row.answered:
                    row.fail(replica_id, error)

    async def close(self) -> None:
        await asyncio.gather(*(r.close() for r in self.replicas.values()), return_exceptions=True)


# =========================================================================================
# talking to replicas directly
# =========================================================================================


def _outcome_result(outcome: RowOutcome, configs: PinnedConfigs) -> InferenceResult:
    if outcome.status != CERTIFIED or outcome.certificate is None or outcome.verified is None:
        raise outcome.error_object()
    config = configs.for_epoch(outcome.verified.epoch)
    return make_result(outcome.request, outcome.certificate, outcome.certificate_bytes, outcome.verified, config, outcome.replica_id)


class AsyncReplicaClient:
    """Certified inference straight from the replicas (no gateway), for asyncio code. Rows that
    more than f replicas refused for now (overloaded) are asked for again, with the same ids,
    after the wait they named, while the call's timeout allows (`retry_overloaded=False`:
    GroupOverloadedError at once)."""

    def __init__(
        self,
        addresses: Mapping[int, str] | Sequence[str] | None,
        group_config: GroupConfig | Sequence[GroupConfig] | str | os.PathLike[str],
        *,
        client_id: str = DEFAULT_CLIENT_ID,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        label_mapping: Mapping[str, str] | None = None,
        retry_overloaded: bool = True,
    ) -> None:
        self.configs = _load_config(group_config)
        self.fanout = ReplicaFanout(self.configs, addresses, on_invalid=self._log_invalid)
        self.client_id = client_id
        self.timeout_s = timeout_s
        self.label_mapping = label_mapping
        self.retry_overloaded = retry_overloaded
        self._requests: collections.OrderedDict[tuple[str, str], InferenceRequest] = collections.OrderedDict()

    @property
    def config(self) -> GroupConfig:
        return self.configs.current

    @staticmethod
    def _log_invalid(replica_id: int, request: InferenceRequest | None, reason: str) -> None:
        what = f" for {request.client_id}/{request.request_id}" if request is not None else ""
        log.warning("replica %d sent an invalid answer%s: %s", replica_id, what, reason)

    def _remember(self, request: InferenceRequest) -> None:
        self._requests[request.key] = request
        while len(self._requests) > REQUEST_CACHE_SIZE:
            self._requests.popitem(last=False)

    async def infer(
        self,
        array: Any,
        *,
        request_id: str | None = None,
        label_mapping: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> InferenceResult:
        results = await self.infer_batch(
            [array], request_ids=None if request_id is None else [request_id], label_mapping=label_mapping, timeout_s=timeout_s
        )
        return results[0]

    async def infer_batch(
        self,
        arrays: Iterable[Any],
        *,
        request_ids: Sequence[str] | None = None,
        label_mapping: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> list[InferenceResult]:
        """One certified result per row; raises the first row's error if any row fails (rows
        certified meanwhile come back on a retry with the same request ids)."""
        requests = _build_requests(self.config, arrays, self.client_id, request_ids, label_mapping or self.label_mapping)
        for request in requests:
            self._remember(request)
        timeout = timeout_s or self.timeout_s
        deadline_s = time.monotonic() + timeout
        outcomes = await self.fanout.submit(requests, timeout_s=timeout)
        while self.retry_overloaded:
            refused = [i for i, o in enumerate(outcomes) if o.status == OVERLOADED]
            wait_s = max((outcomes[i].retry_after_ms for i in refused), default=0) / 1000
            if not refused or time.monotonic() + wait_s >= deadline_s:
                break
            log.info("the group is overloaded: asking again for %d rows in %.2f s", len(refused), wait_s)
            await asyncio.sleep(wait_s)
            again = await self.fanout.submit([requests[i] for i in refused], timeout_s=max(0.05, deadline_s - time.monotonic()))
            for i, outcome in zip(refused, again):
                outcomes[i] = outcome
        return [_outcome_result(o, self.configs) for o in outcomes]

    async def get_certificate(self, request_id: str, *, client_id: str | None = None, timeout_s: float = 10.0) -> InferenceResult:
        """The full certificate of an earlier request (checked against the request itself when
        this client sent it)."""
        cid = client_id or self.client_id
        request = self._requests.get((cid, request_id))
        outcome = await self.fanout.get_certificate(cid, request_id, request=request, timeout_s=timeout_s)
        if outcome.status == CERTIFIED and request is None and outcome.certificate is not None:
            outcome.request = InferenceRequest(self.config.group_id, cid, request_id, ())
        return _outcome_result(outcome, self.configs)

    async def status(self, *, timeout_s: float = 2.0) -> list[ReplicaHealth]:
        return await self.fanout.status(timeout_s=timeout_s)

    async def follow_chain(self, *, timeout_s: float = CHAIN_TIMEOUT_S) -> list[GroupConfig]:
        """Learn the configs of later epochs from the replicas (each link verified from the
        pinned config); returns those gained. Certificates from a later epoch trigger this
        by themselves."""
        return await self.fanout.follow_chain(timeout_s=timeout_s, force=True)

    async def ledger(self, *, timeout_s: float = CHAIN_TIMEOUT_S) -> Ledger:
        """The fee ledger (each client's spend, each owner's earnings) at the newest stable
        checkpoint, verified against that checkpoint's quorum of signatures."""
        return await self.fanout.ledger(timeout_s=timeout_s)

    async def close(self) -> None:
        await self.fanout.close()

    async def __aenter__(self) -> AsyncReplicaClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _build_requests(
    config: GroupConfig,
    arrays: Iterable[Any],
    client_id: str,
    request_ids: Sequence[str] | None,
    label_mapping: Mapping[str, str] | None,
) -> list[InferenceRequest]:
    rows = list(arrays)
    if request_ids is not None and len(request_ids) != len(rows):
        raise ValueError(f"{len(request_ids)} request ids for {len(rows)} inputs")
    ids: Sequence[str | None] = request_ids if request_ids is not None else [None] * len(rows)
    return [
        build_request(config, row, client_id=client_id, request_id=rid, label_mapping=label_mapping)
        for row, rid in zip(rows, ids)
    ]


class _LoopThread:
    """A private event loop on a daemon thread: the sync clients run their asyncio code there."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class ReplicaClient:
    """Certified inference straight from the replicas (no gateway): the same calls as `Client`."""

    def __init__(
        self,
        addresses: Mapping[int, str] | Sequence[str] | None,
        group_config: GroupConfig | Sequence[GroupConfig] | str | os.PathLike[str],
        *,
        client_id: str = DEFAULT_CLIENT_ID,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        label_mapping: Mapping[str, str] | None = None,
        retry_overloaded: bool = True,
    ) -> None:
        self._thread = _LoopThread("quorumserve-replica-client")
        self._client = AsyncReplicaClient(
            addresses, group_config, client_id=client_id, timeout_s=timeout_s, label_mapping=label_mapping, retry_overloaded=retry_overloaded
        )

    @property
    def config(self) -> GroupConfig:
        return self._client.config

    def infer(self, array: Any, *, request_id: str | None = None, label_mapping: Mapping[str, str] | None = None, timeout_s: float | None = None) -> InferenceResult:
        return self._thread.run(self._client.infer(array, request_id=request_id, label_mapping=label_mapping, timeout_s=timeout_s))

    def infer_batch(
        self,
        arrays: Iterable[Any],
        *,
        request_ids: Sequence[str] | None = None,
        label_mapping: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> list[InferenceResult]:
        return self._thread.run(self._client.infer_batch(arrays, request_ids=request_ids, label_mapping=label_mapping, timeout_s=timeout_s))

    def get_certificate(self, request_id: str, *, client_id: str | None = None, timeout_s: float = 10.0) -> InferenceResult:
        return self._thread.run(self._client.get_certificate(request_id, client_id=client_id, timeout_s=timeout_s))

    def status(self, *, timeout_s: float = 2.0) -> list[ReplicaHealth]:
        return self._thread.run(self._client.status(timeout_s=timeout_s))

    def follow_chain(self, *, timeout_s: float = CHAIN_TIMEOUT_S) -> list[GroupConfig]:
        return self._thread.run(self._client.follow_chain(timeout_s=timeout_s))

    def ledger(self, *, timeout_s: float = CHAIN_TIMEOUT_S) -> Ledger:
        """The verified fee ledger (see AsyncReplicaClient.ledger)."""
        return self._thread.run(self._client.ledger(timeout_s=timeout_s))

    @property
    def configs(self) -> PinnedConfigs:
        return self._client.configs

    def close(self) -> None:
        if not self._thread.loop.is_closed():
            self._thread.run(self._client.close())
        self._thread.close()

    def __enter__(self) -> ReplicaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# =========================================================================================
# talking to a gateway
# =========================================================================================


@dataclass(frozen=True)
class GroupInfo:
    """What a gateway says about a group (a client still trusts only its pinned config)."""

    group_id: str
    epoch: int
    f: int
    n: int
    config_digest: bytes
    price_per_request: int
    config: GroupConfig
    chain: tuple[GroupConfig, ...]
    addresses: dict[int, str] = field(default_factory=dict)
    # the quorum-signed links of the later epochs (unverified here: PinnedConfigs.extend checks them)
    links: tuple[ConfigLink, ...] = ()


def _group_info(reply: mpb.GroupReply) -> GroupInfo:
    chain = tuple(GroupConfig.from_json(json.loads(text)) for text in reply.config_chain_json)
    config = GroupConfig.from_json(json.loads(reply.config_json))
    try:
        links = tuple(links_from_group_reply(reply.config_chain_json))
    except DecodeError as exc:
        raise InvalidCertificateError(f"gateway: malformed config chain: {exc}") from exc
    s = reply.summary
    return GroupInfo(
        s.group_id, s.epoch, s.f, s.n, bytes(s.config_digest), s.price_per_request, config, chain or (config,),
        dict(reply.addresses), links,
    )


class _GatewayCalls:
    """What Client and AsyncClient share: building requests, checking replies."""

    def __init__(
        self,
        group_config: GroupConfig | Sequence[GroupConfig] | str | os.PathLike[str],
        client_id: str,
        timeout_s: float,
        label_mapping: Mapping[str, str] | None,
        retry_overloaded: bool = True,
    ) -> None:
        self.configs = _load_config(group_config)
        self.client_id = client_id
        self.timeout_s = timeout_s
        self.label_mapping = label_mapping
        self.retry_overloaded = retry_overloaded
        self._requests: collections.OrderedDict[tuple[str, str], InferenceRequest] = collections.OrderedDict()

    @property
    def config(self) -> GroupConfig:
        return self.configs.current

    @staticmethod
    def remaining_s(deadline_s: float) -> float:
        """The gRPC deadline of one try of a call due by `deadline_s` (monotonic)."""
        return max(0.05, deadline_s - time.monotonic()) + 2 * REPLY_MARGIN_S

    def retry_wait_s(self, refused: GroupOverloadedError, deadline_s: float) -> float:
        """How long to wait before asking again, with the same ids, for a batch the group
        refused for now; re-raises `refused` when retrying is off or the wait would pass the
        call's deadline (the caller then decides)."""
        wait_s = refused.retry_after_s
        if not self.retry_overloaded or time.monotonic() + wait_s >= deadline_s:
            raise refused
        log.info("the group is overloaded: asking again in %.2f s (%s)", wait_s, refused)
        return wait_s

    def batch_request(
        self,
        arrays: Iterable[Any],
        request_ids: Sequence[str] | None,
        label_mapping: Mapping[str, str] | None,
        timeout_s: float,
    ) -> tuple[list[InferenceRequest], mpb.InferBatchRequest]:
        requests = _build_requests(self.config, arrays, self.client_id, request_ids, label_mapping or self.label_mapping)
        for request in requests:
            self._requests[request.key] = request
            while len(self._requests) > REQUEST_CACHE_SIZE:
                self._requests.popitem(last=False)
        timeout_ms = max(1, int((timeout_s - REPLY_MARGIN_S) * 1000))
        message = mpb.InferBatchRequest(
            requests=[mpb.InferRequest(request=request_to_proto(r), timeout_ms=timeout_ms) for r in requests]
        )
        return requests, message

    def result(self, request: InferenceRequest, reply: mpb.InferReply) -> InferenceResult:
        """Check one gateway reply against our own request: a certificate or the error it names."""
        if reply.status == mpb.INFER_OVERLOADED:
            wait_ms = min(RETRY_AFTER_MAX_MS, max(1, reply.retry_after_ms))
            raise GroupOverloadedError(reply.error or "the group is overloaded", request_id=request.request_id, retry_after_s=wait_ms / 1000)
        if reply.status != mpb.INFER_CERTIFIED:
            raise error_for_code(status_code(reply.error_code), reply.error or "no certificate", request.request_id)
        certificate, verified = self.configs.check(reply.certificate, request)
        config = self.configs.for_epoch(verified.epoch)
        return make_result(request, certificate, bytes(reply.certificate), verified, config, reply.replica_id)

    def results(self, requests: Sequence[InferenceRequest], reply: mpb.InferBatchReply) -> list[InferenceResult]:
        if len(reply.replies) != len(requests):
            raise InvalidCertificateError(f"the gateway answered {len(reply.replies)} rows for {len(requests)}")
        return [self.result(request, one) for request, one in zip(requests, reply.replies)]

    def certificate_result(self, client_id: str, request_id: str, reply: mpb.InferReply) -> InferenceResult:
        request = self._requests.get((client_id, request_id))
        if reply.status != mpb.INFER_CERTIFIED:
            raise error_for_code(status_code(reply.error_code), reply.error or "no certificate", request_id)
        certificate, verified = self.configs.check(reply.certificate, request, ids=(client_id, request_id))
        config = self.configs.for_epoch(verified.epoch)
        known = request or InferenceRequest(self.config.group_id, client_id, request_id, ())
        return make_result(known, certificate, bytes(reply.certificate), verified, config, reply.replica_id)


def _fetch_ledger(configs: PinnedConfigs, addresses: Mapping[int, str], timeout_s: float) -> Ledger:
    from marketplace.membership import fetch_ledger

    try:
        return fetch_ledger(configs.trusted, addresses=list(addresses.values()) or None, timeout_s=timeout_s)
    except LedgerError as exc:
        raise UnavailableError(str(exc)) from exc


def _rpc_error(exc: grpc.RpcError) -> ClientError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    # a wait named with RESOURCE_EXHAUSTED means "not now"; without one the refusal is about
    # the request itself (too large, too many rows), and asking again will not help
    wait_ms = pushback_ms(exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and wait_ms is not None:
        return GroupOverloadedError(f"gateway: {details}", retry_after_s=min(max(wait_ms, 1), RETRY_AFTER_MAX_MS) / 1000)
    return error_for_code(code, f"gateway: {details}")


def _method(service: str, name: str) -> str:
    return f"/{service}/{name}"


class Client:
    """Certified inference through a gateway (synchronous). Every certificate is verified here
    against `group_config` (a GroupConfig or the path of its JSON) before a result is returned.
    A batch the group refuses for now (overloaded) is asked for again, with the same ids, after
    the wait the refusal names, while the call's timeout allows (`retry_overloaded=False`: raise
    GroupOverloadedError at once)."""

    def __init__(
        self,
        address: str,
        group_config: GroupConfig | Sequence[GroupConfig] | str | os.PathLike[str],
        *,
        client_id: str = DEFAULT_CLIENT_ID,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        label_mapping: Mapping[str, str] | None = None,
        retry_overloaded: bool = True,
    ) -> None:
        self.address = address
        self._calls = _GatewayCalls(group_config, client_id, timeout_s, label_mapping, retry_overloaded)
        self._channel = grpc.insecure_channel(address, options=list(CHANNEL_OPTIONS))

    @property
    def config(self) -> GroupConfig:
        return self._calls.config

    @property
    def client_id(self) -> str:
        return self._calls.client_id

    def _unary(self, name: str, message: Any, reply_type: type[T], timeout_s: float) -> T:
        call = self._channel.unary_unary(
            _method(GATEWAY_SERVICE, name), request_serializer=type(message).SerializeToString, response_deserializer=reply_type.FromString  # type: ignore[attr-defined]
        )
        try:
            return call(message, timeout=timeout_s)  # type: ignore[no-any-return]
        except grpc.RpcError as exc:
            raise _rpc_error(exc) from None

    def infer(self, array: Any, *, request_id: str | None = None, label_mapping: Mapping[str, str] | None = None, timeout_s: float | None = None) -> InferenceResult:
        return self.infer_batch([array], request_ids=None if request_id is None else [request_id], label_mapping=label_mapping, timeout_s=timeout_s)[0]

    def infer_batch(
        self,
        arrays: Iterable[Any],
        *,
        request_ids: Sequence[str] | None = None,
        label_mapping: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> list[InferenceResult]:
        timeout = timeout_s or self._calls.timeout_s
        requests, message = self._calls.batch_request(arrays, request_ids, label_mapping, timeout)
        if not requests:
            return []
        deadline_s = time.monotonic() + timeout
        while True:
            try:
                reply = self._unary("InferBatch", message, mpb.InferBatchReply, self._calls.remaining_s(deadline_s))
                try:
                    return self._calls.results(requests, reply)
                except LaterEpochError:
                    self.follow_chain()  # the group moved to a later epoch: learn its config, check again
                    return self._calls.results(requests, reply)
            except GroupOverloadedError as exc:
                time.sleep(self._calls.retry_wait_s(exc, deadline_s))

    def get_certificate(self, request_id: str, *, client_id: str | None = None, timeout_s: float = 10.0) -> InferenceResult:
        cid = client_id or self.client_id
        message = mpb.CertificateRequest(group_id=self.config.group_id, client_id=cid, request_id=request_id)
        reply = self._unary("GetCertificate", message, mpb.InferReply, timeout_s)
        try:
            return self._calls.certificate_result(cid, request_id, reply)
        except LaterEpochError:
            self.follow_chain()
            return self._calls.certificate_result(cid, request_id, reply)

    def group(self, *, timeout_s: float = 5.0) -> GroupInfo:
        return _group_info(self._unary("GetGroup", mpb.GroupRequest(group_id=self.config.group_id), mpb.GroupReply, timeout_s))

    def follow_chain(self, *, timeout_s: float = 5.0) -> list[GroupConfig]:
        """Learn later epochs' configs from the gateway's GetGroup; each link is verified from
        the pinned config (the gateway is not trusted). Returns the configs gained."""
        return self._calls.configs.extend(self.group(timeout_s=timeout_s).links)

    def ledger(self, *, timeout_s: float = 5.0) -> Ledger:
        """The fee ledger at the newest stable checkpoint, fetched from the replicas the gateway
        names and verified against that checkpoint's quorum of signatures."""
        info = self.group(timeout_s=timeout_s)
        self._calls.configs.extend(info.links)
        return _fetch_ledger(self._calls.configs, info.addresses, timeout_s)

    def status(self, *, timeout_s: float = 5.0) -> mpb.GroupStatusReply:
        return self._unary("GroupStatus", mpb.GroupRequest(group_id=self.config.group_id), mpb.GroupStatusReply, timeout_s)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """Certified inference through a gateway, for asyncio code; `infer_stream` pipelines many
    requests over the gateway's streaming Infer and yields results as they commit (a row the
    group refused for now comes back as GroupOverloadedError; infer and infer_batch ask again
    as Client does)."""

    def __init__(
        self,
        address: str,
        group_config: GroupConfig | Sequence[GroupConfig] | str | os.PathLike[str],
        *,
        client_id: str = DEFAULT_CLIENT_ID,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        label_mapping: Mapping[str, str] | None = None,
        retry_overloaded: bool = True,
    ) -> None:
        self.address = address
        self._calls = _GatewayCalls(group_config, client_id, timeout_s, label_mapping, retry_overloaded)
        self._channel: grpc.aio.Channel | None = None

    @property
    def config(self) -> GroupConfig:
        return self._calls.config

    @property
    def client_id(self) -> str:
        return self._calls.client_id

    def _open(self) -> grpc.aio.Channel:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.address, options=list(CHANNEL_OPTIONS))
        return self._channel

    async def _unary(self, name: str, message: Any, reply_type: type[T], timeout_s: float) -> T:
        call = self._open().unary_unary(
            _method(GATEWAY_SERVICE, name), request_serializer=type(message).SerializeToString, response_deserializer=reply_type.FromString  # type: ignore[attr-defined]
        )
        try:
            return await call(message, timeout=timeout_s)  # type: ignore[no-any-return]
        except grpc.RpcError as exc:
            raise _rpc_error(exc) from None

    async def infer(self, array: Any, *, request_id: str | None = None, label_mapping: Mapping[str, str] | None = None, timeout_s: float | None = None) -> InferenceResult:
        results = await self.infer_batch([array], request_ids=None if request_id is None else [request_id], label_mapping=label_mapping, timeout_s=timeout_s)
        return results[0]

    async def infer_batch(
        self,
        arrays: Iterable[Any],
        *,
        request_ids: Sequence[str] | None = None,
        label_mapping: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> list[InferenceResult]:
        timeout = timeout_s or self._calls.timeout_s
        requests, message = self._calls.batch_request(arrays, request_ids, label_mapping, timeout)
        if not requests:
            return []
        deadline_s = time.monotonic() + timeout
        while True:
            try:
                reply = await self._unary("InferBatch", message, mpb.InferBatchReply, self._calls.remaining_s(deadline_s))
                try:
                    return self._calls.results(requests, reply)
                except LaterEpochError:
                    await self.follow_chain()  # the group moved to a later epoch: learn its config, check again
                    return self._calls.results(requests, reply)
            except GroupOverloadedError as exc:
                await asyncio.sleep(self._calls.retry_wait_s(exc, deadline_s))

    async def infer_stream(
        self,
        arrays: Iterable[Any] | AsyncIterable[Any],
        *,
        label_mapping: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> AsyncIterator[InferenceResult | ClientError]:
        """Send every row over one stream; yield each row's verified result (or its error) in
        the order they are certified. Match them to inputs by `result.request_id`."""
        timeout = timeout_s or self._calls.timeout_s
        timeout_ms = max(1, int((timeout - REPLY_MARGIN_S) * 1000))
        sent: dict[tuple[str, str], InferenceRequest] = {}
        call = self._open().stream_stream(
            _method(GATEWAY_SERVICE, "Infer"),
            request_serializer=mpb.InferRequest.SerializeToString,
            response_deserializer=mpb.InferReply.FromString,
        )()
        mapping = label_mapping or self._calls.label_mapping

        async def write() -> None:
            async for array in _aiter(arrays):
                request = build_request(self.config, array, client_id=self.client_id, label_mapping=mapping)
                sent[request.key] = request
                await call.write(mpb.InferRequest(request=request_to_proto(request), timeout_ms=timeout_ms))
            await call.done_writing()

        writer = asyncio.get_running_loop().create_task(write())
        try:
            async for reply in call:
                request = sent.pop((reply.client_id, reply.request_id), None)
                if request is None:
                    yield InvalidCertificateError(f"the gateway answered a request we did not send: {reply.client_id}/{reply.request_id}")
                    continue
                try:
                    try:
                        result = self._calls.result(request, reply)
                    except LaterEpochError:
                        await self.follow_chain()
                        result = self._calls.result(request, reply)
                    yield result
                except ClientError as exc:
                    yield exc
            await writer  # surfaces an error building a request
        except grpc.RpcError as exc:
            raise _rpc_error(exc) from None
        finally:
            await _cancel([writer])
        for request in sent.values():
            yield UnavailableError("the gateway ended the stream without answering", request_id=request.request_id)

    async def get_certificate(self, request_id: str, *, client_id: str | None = None, timeout_s: float = 10.0) -> InferenceResult:
        cid = client_id or self.client_id
        message = mpb.CertificateRequest(group_id=self.config.group_id, client_id=cid, request_id=request_id)
        reply = await self._unary("GetCertificate", message, mpb.InferReply, timeout_s)
        try:
            return self._calls.certificate_result(cid, request_id, reply)
        except LaterEpochError:
            await self.follow_chain()
            return self._calls.certificate_result(cid, request_id, reply)

    async def group(self, *, timeout_s: float = 5.0) -> GroupInfo:
        return _group_info(await self._unary("GetGroup", mpb.GroupRequest(group_id=self.config.group_id), mpb.GroupReply, timeout_s))

    async def follow_chain(self, *, timeout_s: float = 5.0) -> list[GroupConfig]:
        """Learn later epochs' configs from the gateway's GetGroup, each link verified from the
        pinned config. Returns the configs gained."""
        return self._calls.configs.extend((await self.group(timeout_s=timeout_s)).links)

    async def ledger(self, *, timeout_s: float = 5.0) -> Ledger:
        """The verified fee ledger (see Client.ledger)."""
        info = await self.group(timeout_s=timeout_s)
        self._calls.configs.extend(info.links)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, _fetch_ledger, self._calls.configs, info.addresses, timeout_s)

    async def status(self, *, timeout_s: float = 5.0) -> mpb.GroupStatusReply:
        return await self._unary("GroupStatus", mpb.GroupRequest(group_id=self.config.group_id), mpb.GroupStatusReply, timeout_s)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _aiter(items: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item

