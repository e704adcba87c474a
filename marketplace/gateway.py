"""The gateway: a stateless, untrusted front door to the groups of a registry.

It serves two gRPC APIs on one port:

- KServe v2 / Triton (`inference.GRPCInferenceService`, the definitions `tritonclient` ships), so
  the stock `tritonclient.grpc` client, sync or asyncio, works unchanged. The model name is the
  group id; the model version is empty or the group's current epoch.
- the native API (`quorumserve.v1.Gateway`, protos/marketplace.proto): a bidirectional streaming
  Infer (rows in, certified replies out as they commit), InferBatch, GetCertificate,
  ListGroups, GetGroup (the config and the chain of configs, genesis first) and GroupStatus
  (each replica's own Status).

Membership changes: the gateway follows each group's chain of configs from the registry's
(GetConfigChain on the replicas, every link checked against the quorum of the epoch before it):
when a certificate from a later epoch arrives, when GetGroup is asked, and every
CHAIN_POLL_INTERVAL_S. From then on it sends to the new epoch's members, and GetGroup lists the
new configs, each carrying under "link_signatures" the previous epoch's quorum signatures on it,
so a client follows the chain from its pinned genesis without trusting the gateway.

A ModelInfer with B rows is B certified requests. The gateway sends ONE SubmitBatch (fanout=1)
with all B rows to every replica of the group (a single row goes over the gateway's long-lived
SubmitBatchStream to each replica instead, where the rows of concurrent calls share messages:
while other rows are in flight a lone row waits up to `stream_coalesce_s`, 5 ms, for company) and keeps, per row, the first certificate that
verifies (certs.verify against the registry's config for the group and the row's own request).
Up to f replicas that are slow, dead or lying change nothing: an invalid certificate is counted
(metric `quorumserve_gateway_invalid_certificates_total`), logged and ignored. The gateway keeps
no state but the registry, so any number of gateways can serve one group, and clients need not
trust any of them: they can check each certificate against the config they pinned.

KServe request (ModelInferRequest)
    inputs              exactly one: the group's input (name, datatype as in the group config),
                        shape [B, *input_shape], data in raw_input_contents (or typed contents)
    id                  request id; each row's certified request id is "<id>/<row>". Empty: the
                        gateway picks a random one (returned in the response's `id`)
    parameters
      client_id         string: the client id certified with each row (default "anonymous")
      label_mapping     string: a JSON object {label: decision}, an application decision
                        mapping applied before voting (certs/outputs.py decision_space)
      timeout           int64 microseconds (Triton's own parameter): how long to wait

KServe response (ModelInferResponse), one row per input row
    outputs             label          INT64 [B]: certified class index, -1 for NO_AGREEMENT
                        probabilities  FP32 [B, C]: the decision's probabilities over the whole
                                       label space (C = number of labels, or of decisions
                                       under a label_mapping); zeros for NO_AGREEMENT
                        (raw_output_contents, the only form tritonclient decodes)
    parameters
      group_id          string
      epoch             int64: the group epoch whose members certified the rows
      config_digest     string: hex digest of that epoch's group config
      client_id         string
      rows              int64: B
      certificate_<i>   string: base64 of row i's certificate (protobuf quorumserve.v1.Certificate)
      seq_<i>           int64: the sequence number of the batch that certified row i
      request_id_<i>    string: row i's request id ("<id>/<i>")
      label_name_<i>    string: row i's certified label name, or "NO_AGREEMENT"
      invalid_certificates  int64: certificates from replicas that failed verification (ignored)

A retry with the same client id and ModelInferRequest id certifies nothing twice: the replicas
return the certificates of the first execution. If any row cannot be certified the whole call
fails (rows certified meanwhile come back on a retry with the same id).

Status codes: unknown group -> NOT_FOUND; wrong input name, shape, datatype or data size ->
INVALID_ARGUMENT naming the input; too many rows or a message over the size limit ->
RESOURCE_EXHAUSTED; the group overloaded (the gateway's admission rules, replica/admission.py,
or more than f replicas refusing by theirs) -> RESOURCE_EXHAUSTED with the
`grpc-retry-pushback-ms` trailer saying when to retry (with the same id: rows taken meanwhile
are certified once); replicas unreachable ->
UNAVAILABLE; not certified in time -> DEADLINE_EXCEEDED; request ids reused for a different
request -> ALREADY_EXISTS. Requests are parsed from raw bytes, so garbage gets INVALID_ARGUMENT
and nothing escapes into gRPC.

Prometheus metrics are served on their own port (`--metrics-port`); every call is logged with
its group, client id and request id.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
import numpy as np
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from tritonclient.grpc import model_config_pb2 as kconfig
from tritonclient.grpc import service_pb2 as kserve

from certs.certificate import NO_AGREEMENT_NAME
from certs.config import GroupConfig
from certs.errors import CertificateError
from certs.request import DATATYPE_SIZES, InferenceRequest, TensorData
from certs.wire import STRING_MAX, request_from_proto
from marketplace.membership import config_json_with_link
from marketplace.registry import GroupEntry, Registry, RegistryError, UnknownGroupError
from marketplace.sdk import (
    CERTIFIED,
    DEFAULT_CLIENT_ID,
    NUMPY_DTYPES,
    OVERLOADED,
    REJECTED,
    REPLY_MARGIN_S,
    TIMEOUT,
    UNAVAILABLE,
    ReplicaFanout,
    RowOutcome,
    check_mapping,
    expand_probabilities,
    new_request_id,
    normalise_mapping,
)
from protos import marketplace_pb2 as mpb
from protos import replica_api_pb2 as api
from replica import trace
from replica.admission import DrainRate, refusal
from replica.archive import pushback_trailer
from replica.config import STREAM_COALESCE_S, AdmissionLimits

log = logging.getLogger("quorumserve.gateway")

KSERVE_SERVICE = "inference.GRPCInferenceService"
NATIVE_SERVICE = "quorumserve.v1.Gateway"
GATEWAY_NAME = "quorumserve-gateway"
GATEWAY_VERSION = "0.1.0"
PLATFORM = "quorumserve"
ROWS_MAX = 1024  # rows per call (ModelInfer, InferBatch); the group orders them in one or more batches
REQUEST_TIMEOUT_S = 30.0
STREAM_INFLIGHT_MAX = 4096  # rows of one stream awaiting their certificate
MESSAGE_SIZE_MIN_BYTES = 4 * 1024 * 1024
SEND_SIZE_MAX_BYTES = 64 * 1024 * 1024
INVALID_LOG_INTERVAL_S = 5.0
CHAIN_POLL_INTERVAL_S = 10.0  # how often the gateway asks its groups' replicas for new epochs
_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_STREAM_ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024)

# which typed-contents field carries each datatype (when raw_input_contents is not used)
_TYPED_CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
}


class GatewayError(RuntimeError):
    pass


class _Abort(Exception):
    """End the call with this status (raised inside handlers, turned into context.abort)."""

    def __init__(self, code: grpc.StatusCode, message: str, *, retry_after_ms: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms  # > 0: sent as the pushback trailer (come back then)

    def trailers(self) -> tuple[tuple[str, str], ...]:
        return pushback_trailer(self.retry_after_ms / 1000) if self.retry_after_ms > 0 else ()


# =========================================================================================
# metrics
# =========================================================================================


class GatewayMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.calls = Counter("quorumserve_gateway_calls_total", "RPCs answered, by API, method and status code", ("method", "code"), registry=r)
        self.rows = Counter("quorumserve_gateway_requests_total", "certified-request rows, by outcome", ("group", "outcome"), registry=r)
        self.latency = Histogram(
            "quorumserve_gateway_latency_seconds", "call received to answer", ("method",), buckets=_LATENCY_BUCKETS_S, registry=r
        )
        self.invalid = Counter(
            "quorumserve_gateway_invalid_certificates_total", "replies from replicas that failed verification (ignored)",
            ("group", "replica"), registry=r,
        )
        self.replica_errors = Counter(
            "quorumserve_gateway_replica_errors_total", "calls to replicas that failed, by kind", ("group", "replica", "kind"), registry=r
        )
        self.stream_rows = Histogram(
            "quorumserve_gateway_stream_rows_per_message", "rows in each message written to a replica's stream (lone rows coalesced)",
            ("group",), buckets=_STREAM_ROWS_BUCKETS, registry=r,
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        if port:
            start_http_server(port, addr=host, registry=self.registry)


# =========================================================================================
# checking requests against the group's task
# =========================================================================================


def check_request(config: GroupConfig, request: InferenceRequest) -> None:
    """The checks every correct replica makes (consensus/node.py), done here to fail fast."""
    task = config.task
    if request.group_id != config.group_id:
        raise _Abort(grpc.StatusCode.NOT_FOUND, f"request is for group {request.group_id!r}, not {config.group_id!r}")
    for what, value in (("client id", request.client_id), ("request id", request.request_id)):
        if not value or len(value) > STRING_MAX:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"the {what} must be 1 to {STRING_MAX} characters")
    if len(request.inputs) != 1:
        names = [t.name for t in request.inputs]
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"expected exactly one input, {task.input_name!r}; got {names}")
    tensor = request.inputs[0]
    if tensor.name != task.input_name:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown input {tensor.name!r}; group {config.group_id!r} takes {task.input_name!r}")
    if tensor.datatype != task.input_datatype:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"input {tensor.name!r} has datatype {tensor.datatype}, expected {task.input_datatype}")
    if tuple(tensor.shape) != tuple(task.input_shape):
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"input {tensor.name!r} has shape {list(tensor.shape)}, expected {list(task.input_shape)}")
    if len(tensor.data) != task.input_size_bytes:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"input {tensor.name!r} has {len(tensor.data)} bytes, expected {task.input_size_bytes}")
    if request.size_bytes > config.params.request_size_max_bytes:
        raise _Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"request of {request.size_bytes} bytes exceeds {config.params.request_size_max_bytes}")
    if request.label_mapping:
        try:
            check_mapping(config, request.label_mapping)
        except ValueError as exc:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc


def _kserve_rows(config: GroupConfig, request: Any, rows_max: int) -> list[bytes]:
    """The rows of a ModelInferRequest's input as raw bytes, each one request's input."""
    task = config.task
    name = task.input_name
    if len(request.inputs) != 1:
        names = [t.name for t in request.inputs]
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"group {config.group_id!r} takes exactly one input, {name!r}; got {names}")
    tensor = request.inputs[0]
    if tensor.name != name:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown input {tensor.name!r}; group {config.group_id!r} takes {name!r}")
    if tensor.datatype != task.input_datatype:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"input {name!r} has datatype {tensor.datatype or '(none)'}, expected {task.input_datatype}")
    shape = list(tensor.shape)
    expected_shape = ["B", *task.input_shape]
    if len(shape) != len(expected_shape) or shape[1:] != list(task.input_shape) or shape[0] < 1:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"input {name!r} has shape {shape}, expected {expected_shape} with B >= 1 rows")
    rows = shape[0]
    if rows > rows_max:
        raise _Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"input {name!r} has {rows} rows; at most {rows_max} per request")
    row_size = task.input_size_bytes
    if len(request.raw_input_contents) > 1:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"{len(request.raw_input_contents)} raw input contents for one input {name!r}")
    if request.raw_input_contents:
        data = bytes(request.raw_input_contents[0])
    else:
        data = _typed_contents(tensor, rows * row_size // DATATYPE_SIZES[task.input_datatype])
    if len(data) != rows * row_size:
        raise _Abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input {name!r} has {len(data)} bytes of data, expected {rows * row_size} for shape {shape} of {task.input_datatype}",
        )
    return [data[i * row_size : (i + 1) * row_size] for i in range(rows)]


def _typed_contents(tensor: Any, count: int) -> bytes:
    field_name = _TYPED_CONTENTS.get(tensor.datatype)
    if field_name is None:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"input {tensor.name!r}: {tensor.datatype} data must come as raw_input_contents")
    values = getattr(tensor.contents, field_name)
    if len(values) != count:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"input {tensor.name!r} has {len(values)} values, expected {count}")
    try:
        return np.asarray(values, dtype=np.dtype(NUMPY_DTYPES[tensor.datatype])).tobytes()
    except (OverflowError, ValueError) as exc:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"input {tensor.name!r}: {exc}") from exc


def _string_parameter(request: Any, name: str) -> str | None:
    if name not in request.parameters:
        return None
    parameter = request.parameters[name]
    if parameter.WhichOneof("parameter_choice") != "string_param":
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"parameter {name!r} must be a string")
    return str(parameter.string_param)


def _mapping_parameter(config: GroupConfig, request: Any) -> tuple[tuple[str, str], ...]:
    text = _string_parameter(request, "label_mapping")
    if not text:
        return ()
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"parameter 'label_mapping' is not JSON: {exc}") from exc
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "parameter 'label_mapping' must be a JSON object {label: decision}")
    try:
        mapping = normalise_mapping(value)
        check_mapping(config, mapping)
    except ValueError as exc:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
    return mapping


def _kserve_datatype(datatype: str) -> int:
    return int(kconfig.DataType.Value("TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"))


# =========================================================================================
# the gateway
# =========================================================================================


@dataclass
class _Group:
    entry: GroupEntry
    fanout: ReplicaFanout


@dataclass
class _GroupLoad:
    """The rows this gateway has in flight to one group and the rate the group certifies them:
    what its admission decision reads (replica/admission.py). Kept per group id, across the
    group's epochs."""

    rows: int = 0
    input_bytes: int = 0
    certified: DrainRate = field(default_factory=DrainRate)
    by_client: dict[str, int] = field(default_factory=dict)  # rows in flight per client id

    def fair(self, client_rows: collections.Counter[str]) -> bool:
        """Whether, with other clients' rows in flight, every client of a call stays within an
        equal share of the rows in flight with the call's rows added: such a call is let in
        past the wait rule, so a client sending little is not refused because another floods
        the group. A client alone is never within it: the wait rule is what holds it back."""
        active = len(self.by_client.keys() | client_rows.keys())
        if active < 2:
            return False
        share = (self.rows + sum(client_rows.values())) / active
        return all(self.by_client.get(client, 0) + rows <= share for client, rows in client_rows.items())

    def take(self, client_rows: collections.Counter[str], size: int, sign: int) -> None:
        self.rows += sign * sum(client_rows.values())
        self.input_bytes += sign * size
        for client, rows in client_rows.items():
            left = self.by_client.get(client, 0) + sign * rows
            if left > 0:
                self.by_client[client] = left
            else:
                self.by_client.pop(client, None)


class Gateway:
    """A gateway for the groups of `registry`; `start()` it inside a running event loop."""

    def __init__(
        self,
        registry: Registry,
        *,
        rows_max: int = ROWS_MAX,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        metrics: GatewayMetrics | None = None,
        admission: AdmissionLimits = AdmissionLimits(),
        stream_coalesce_s: float = STREAM_COALESCE_S,
    ) -> None:
        if rows_max < 1:
            raise ValueError("rows_max must be at least 1")
        if not stream_coalesce_s >= 0:
            raise ValueError(f"stream_coalesce_s must be 0 or more, not {stream_coalesce_s}")
        self.stream_coalesce_s = stream_coalesce_s
        self.registry = registry
        self.rows_max = rows_max
        self.admission = admission
        self._loads: dict[str, _GroupLoad] = {}
        self.request_timeout_s = request_timeout_s
        self.metrics = metrics or GatewayMetrics()
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self._groups: dict[str, _Group] = {}
        self._invalid_logged_s: dict[tuple[str, int], float] = {}
        self._poll_task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def message_size_max_bytes(self) -> int:
        """Large enough for rows_max rows of the largest task on offer (plus framing)."""
        largest = max((e.config.task.input_size_bytes for e in self.registry), default=0)
        return max(MESSAGE_SIZE_MIN_BYTES, self.rows_max * largest * 2 + 1024 * 1024)

    async def start(self, listen: str = "127.0.0.1:0") -> int:
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.message_size_max_bytes),
                ("grpc.max_send_message_length", SEND_SIZE_MAX_BYTES),
                ("grpc.so_reuseport", 0),
            ]
        )
        server.add_generic_rpc_handlers((self._kserve_handler(), self._native_handler()))
        port = server.add_insecure_port(listen)
        if port == 0:
            raise GatewayError(f"cannot listen on {listen}")
        await server.start()
        self.server, self.port = server, port
        self._poll_task = asyncio.get_running_loop().create_task(self._poll_chains())
        log.info("gateway serving %d group(s) %s on port %d", len(self.registry), self.registry.group_ids, port)
        return port

    async def stop(self, grace_s: float = 1.0) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
            await asyncio.gather(self._poll_task, return_exceptions=True)
            self._poll_task = None
        if self.server is not None:
            await self.server.stop(grace_s)
            self.server = None
        groups, self._groups = list(self._groups.values()), {}
        await asyncio.gather(*(g.fanout.close() for g in groups), return_exceptions=True)

    async def wait_for_termination(self) -> None:
        if self.server is not None:
            await self.server.wait_for_termination()

    # -- groups ----------------------------------------------------------------------------
    def group(self, group_id: str) -> _Group:
        try:
            entry = self.registry.get(group_id)
        except UnknownGroupError as exc:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"{exc}; groups on offer: {self.registry.group_ids}") from exc
        known = self._groups.get(group_id)
        if known is not None and known.entry is entry:
            return known
        stream_rows = self.metrics.stream_rows.labels(group_id)  # bound once: observed at every stream write
        fanout = ReplicaFanout(
            entry.chain,
            entry.addresses,
            on_invalid=lambda rid, request, reason: self._on_invalid(group_id, rid, request, reason),
            on_failure=lambda rid, kind: self.metrics.replica_errors.labels(group_id, str(rid), kind).inc(),
            on_new_configs=lambda chain: self._on_new_configs(group_id, chain),
            on_stream_write=stream_rows.observe,
            stream_coalesce_s=self.stream_coalesce_s,
        )
        group = self._groups[group_id] = _Group(entry, fanout)
        return group

    async def _submit_rows(
        self, group: _Group, requests: Sequence[InferenceRequest], timeout_s: float, *, stream: bool = False
    ) -> list[RowOutcome]:
        """Send rows to the group (a lone row over the shared stream when `stream`), after the admission
        rules (replica/admission.py) let them in: this gateway refuses, with _Abort
        RESOURCE_EXHAUSTED and a retry hint, rows that its rows in flight to the group would
        keep waiting too long of `timeout_s` at the rate the group certified lately, or past
        the hard limits. One decision for the whole call, before any replica sees it: replicas
        deciding each for itself near their limits take some rows and refuse others, and a
        row only some took is still certified, later, perhaps for nobody. Past the wait rule
        (not the hard limits) a call whose clients each keep within an equal share of the rows
        in flight is still let in: one client flooding the group does not shut out the others
        (shares are by client id, the account that pays for the requests)."""
        group_id = group.entry.group_id
        load = self._loads.setdefault(group_id, _GroupLoad())
        client_rows = collections.Counter(r.client_id for r in requests)
        refused = refusal(self.admission, load.rows, load.input_bytes, load.certified.per_s(time.monotonic()), timeout_s, what="rows")
        if refused is not None and not refused.hard_limit and load.fair(client_rows):
            refused = None
        if refused is not None:
            self.metrics.rows.labels(group_id, OVERLOADED).inc(len(requests))
            raise _Abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"group {group_id} is overloaded (at this gateway: {refused.reason}); retry with the same id in about "
                f"{refused.retry_after_ms} ms",
                retry_after_ms=refused.retry_after_ms,
            )
        size = sum(r.size_bytes for r in requests)
        load.take(client_rows, size, +1)
        try:
            if stream and len(requests) == 1:
                outcomes = [await group.fanout.stream().submit(requests[0], timeout_s=timeout_s)]
            else:
                outcomes = await group.fanout.submit(requests, timeout_s=timeout_s)
        finally:
            load.take(client_rows, size, -1)
        load.certified.add(sum(1 for o in outcomes if o.status == CERTIFIED), time.monotonic())
        return outcomes

    def _on_new_configs(self, group_id: str, chain: list[GroupConfig]) -> None:
        """The group moved to a later epoch (its link verified): serve that epoch from now on."""
        group = self._groups.get(group_id)
        if group is None:
            return
        try:
            entry = group.entry.extended(chain)
            self.registry.update(entry)
        except RegistryError as exc:
            log.warning("group %s: cannot take the new configs: %s", group_id, exc)
            return
        group.entry = entry
        config = entry.config
        log.info("group %s: epoch %d, replicas %s (f=%d)", group_id, config.epoch, list(config.replica_ids), config.f)

    async def _poll_chains(self) -> None:
        """Ask the groups in use for new epochs now and then, so GetGroup shows a membership
        change even when no certificate of the new epoch has passed through here yet."""
        while True:
            await asyncio.sleep(CHAIN_POLL_INTERVAL_S)
            for group in list(self._groups.values()):
                try:
                    await group.fanout.follow_chain()
                except Exception:  # a failing refresh must not end polling for every group
                    log.exception("group %s: following the config chain failed", group.entry.group_id)

    def _on_invalid(self, group_id: str, replica_id: int, request: InferenceRequest | None, reason: str) -> None:
        self.metrics.invalid.labels(group_id, str(replica_id)).inc()
        now = time.monotonic()
        key = (group_id, replica_id)
        if now - self._invalid_logged_s.get(key, 0.0) >= INVALID_LOG_INTERVAL_S:  # one line per replica every 5 s
            self._invalid_logged_s[key] = now
            what = f" for {request.client_id}/{request.request_id}" if request is not None else ""
            log.warning("group %s replica %d sent an invalid certificate%s (ignored): %s", group_id, replica_id, what, reason)

    def _timeout_s(self, context: grpc.aio.ServicerContext, requested_s: float | None = None) -> float:
        timeout_s = requested_s or self.request_timeout_s
        remaining = context.time_remaining()
        if remaining is not None:
            # answer before the caller's own deadline, so it sees our status and not its timeout
            timeout_s = min(timeout_s, max(0.05, remaining - REPLY_MARGIN_S))
        return timeout_s

    # -- plumbing ----------------------------------------------------------------------------
    def _unary(self, method: str, message_type: type[Message], handler: Callable[..., Any]) -> grpc.RpcMethodHandler:
        async def run(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            started = time.monotonic()
            code = grpc.StatusCode.OK
            try:
                return await handler(_parse(message_type, raw), context)
            except _Abort as exc:
                code = exc.code
                await context.abort(exc.code, exc.message, trailing_metadata=exc.trailers())
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("%s failed", method)
                await context.abort(grpc.StatusCode.INTERNAL, f"{method}: internal error")
            finally:
                self.metrics.calls.labels(method, code.name).inc()
                self.metrics.latency.labels(method).observe(time.monotonic() - started)

        return grpc.unary_unary_rpc_method_handler(run, request_deserializer=None, response_serializer=_serialize)

    def _kserve_handler(self) -> grpc.GenericRpcHandler:
        methods = {
            "ServerLive": self._unary("ServerLive", kserve.ServerLiveRequest, self.server_live),
            "ServerReady": self._unary("ServerReady", kserve.ServerReadyRequest, self.server_ready),
            "ModelReady": self._unary("ModelReady", kserve.ModelReadyRequest, self.model_ready),
            "ServerMetadata": self._unary("ServerMetadata", kserve.ServerMetadataRequest, self.server_metadata),
            "ModelMetadata": self._unary("ModelMetadata", kserve.ModelMetadataRequest, self.model_metadata),
            "ModelConfig": self._unary("ModelConfig", kserve.ModelConfigRequest, self.model_config),
            "ModelInfer": self._unary("ModelInfer", kserve.ModelInferRequest, self.model_infer),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
                self.model_stream_infer, request_deserializer=None, response_serializer=_serialize
            ),
        }
        return grpc.method_handlers_generic_handler(KSERVE_SERVICE, methods)

    def _native_handler(self) -> grpc.GenericRpcHandler:
        methods = {
            "Infer": grpc.stream_stream_rpc_method_handler(self.infer_stream, request_deserializer=None, response_serializer=_serialize),
            "InferBatch": self._unary("InferBatch", mpb.InferBatchRequest, self.infer_batch),
            "GetCertificate": self._unary("GetCertificate", mpb.CertificateRequest, self.get_certificate),
            "ListGroups": self._unary("ListGroups", mpb.ListGroupsRequest, self.list_groups),
            "GetGroup": self._unary("GetGroup", mpb.GroupRequest, self.get_group),
            "GroupStatus": self._unary("GroupStatus", mpb.GroupRequest, self.group_status),
        }
        return grpc.method_handlers_generic_handler(NATIVE_SERVICE, methods)

    # =====================================================================================
    # KServe v2
    # =====================================================================================

    async def server_live(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return kserve.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return kserve.ServerReadyResponse(ready=self.server is not None)

    async def model_ready(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Ready when a quorum of the group's replicas answers Status (unknown group: not ready)."""
        if request.name not in self.registry or request.version not in ("", str(self.registry.get(request.name).config.epoch)):
            return kserve.ModelReadyResponse(ready=False)
        group = self.group(request.name)
        health = await group.fanout.status(timeout_s=min(2.0, self._timeout_s(context)))
        reachable = sum(1 for h in health if h.reachable)
        return kserve.ModelReadyResponse(ready=reachable >= group.entry.config.quorum_size)

    async def server_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return kserve.ServerMetadataResponse(name=GATEWAY_NAME, version=GATEWAY_VERSION, extensions=["quorumserve_certificates"])

    def _kserve_group(self, name: str, version: str) -> _Group:
        group = self.group(name)
        epoch = group.entry.config.epoch
        if version not in ("", str(epoch)):
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"group {name!r} has no version {version!r}; its current epoch is {epoch}")
        return group

    async def model_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        config = self._kserve_group(request.name, request.version).entry.config
        task = config.task
        return kserve.ModelMetadataResponse(
            name=config.group_id,
            versions=[str(config.epoch)],
            platform=PLATFORM,
            inputs=[kserve.ModelMetadataResponse.TensorMetadata(name=task.input_name, datatype=task.input_datatype, shape=[-1, *task.input_shape])],
            outputs=[
                kserve.ModelMetadataResponse.TensorMetadata(name="label", datatype="INT64", shape=[-1]),
                kserve.ModelMetadataResponse.TensorMetadata(name="probabilities", datatype="FP32", shape=[-1, len(task.class_labels)]),
            ],
        )

    async def model_config(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        config = self._kserve_group(request.name, request.version).entry.config
        task = config.task
        model = kconfig.ModelConfig(
            name=config.group_id,
            platform=PLATFORM,
            max_batch_size=self.rows_max,
            input=[kconfig.ModelInput(name=task.input_name, data_type=_kserve_datatype(task.input_datatype), dims=list(task.input_shape))],
            output=[
                kconfig.ModelOutput(name="label", data_type=kconfig.TYPE_INT64, dims=[1], reshape=kconfig.ModelTensorReshape(shape=[])),
                kconfig.ModelOutput(name="probabilities", data_type=kconfig.TYPE_FP32, dims=[len(task.class_labels)]),
            ],
        )
        for key, value in (
            ("epoch", str(config.epoch)),
            ("config_digest", config.digest.hex()),
            ("f", str(config.f)),
            ("policy", config.policy.describe(config.f)),
            ("class_labels", json.dumps(list(task.class_labels))),
            ("price_per_request", str(config.price_per_request)),
        ):
            model.parameters[key].string_value = value
        return kserve.ModelConfigResponse(config=model)

    async def _kserve_infer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """One ModelInferRequest -> one ModelInferResponse (or _Abort)."""
        started = time.monotonic()
        group = self._kserve_group(request.model_name, request.model_version)
        config = group.entry.config
        rows = _kserve_rows(config, request, self.rows_max)
        client_id = _string_parameter(request, "client_id") or DEFAULT_CLIENT_ID
        mapping = _mapping_parameter(config, request)
        infer_id = request.id or new_request_id()
        requested_s: float | None = None
        if "timeout" in request.parameters and request.parameters["timeout"].int64_param > 0:
            requested_s = request.parameters["timeout"].int64_param / 1e6
        wanted = [o.name for o in request.outputs] or ["label", "probabilities"]
        unknown = sorted(set(wanted) - {"label", "probabilities"})
        if unknown:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown output(s) {unknown}; outputs are 'label' and 'probabilities'")
        task = config.task
        requests = [
            InferenceRequest(
                group_id=config.group_id,
                client_id=client_id,
                request_id=f"{infer_id}/{i}",
                inputs=(TensorData(task.input_name, task.input_datatype, tuple(task.input_shape), row),),
                label_mapping=mapping,
            )
            for i, row in enumerate(rows)
        ]
        for r in requests:
            check_request(config, r)
        traced = [key for r in requests if (key := trace.request_key(r.client_id, r.request_id)) is not None]
        for key in traced:
            trace.event("in", key, at_s=started)
        timeout_s = self._timeout_s(context, requested_s)
        # One row: over the long-lived SubmitBatchStream to each replica rather than one unary
        # SubmitBatch per replica per call, which costs every replica a whole RPC per request.
        outcomes = await self._submit_rows(group, requests, timeout_s, stream=len(requests) == 1)
        invalid = sum(o.invalid_certificates for o in outcomes)
        self._count_rows(config.group_id, outcomes)
        failed = [(i, o) for i, o in enumerate(outcomes) if o.status != CERTIFIED]
        elapsed_ms = (time.monotonic() - started) * 1000
        if failed:
            i, first = failed[0]
            log.info(
                "ModelInfer group=%s client=%s id=%s rows=%d: %d not certified (first: row %d %s) in %.1f ms, invalid certificates %d",
                config.group_id, client_id, infer_id, len(rows), len(failed), i, first.status, elapsed_ms, invalid,
            )
            raise _Abort(
                first.code,
                f"row {i} ({client_id}/{first.request.request_id}): {first.error}; {len(rows) - len(failed)} of {len(rows)} rows "
                f"certified (a retry with the same id {infer_id!r} returns them)",
                retry_after_ms=max((o.retry_after_ms for _, o in failed if o.status == OVERLOADED), default=0),
            )
        log.info(
            "ModelInfer group=%s client=%s id=%s rows=%d certified at seq %s in %.1f ms, invalid certificates %d",
            config.group_id, client_id, infer_id, len(rows), _seqs(outcomes), elapsed_ms, invalid,
        )
        response = _kserve_response(config, infer_id, client_id, outcomes, wanted, invalid)
        for key in traced:
            trace.event("out", key)
        return response

    def _count_rows(self, group_id: str, outcomes: Iterable[RowOutcome]) -> None:
        for outcome in outcomes:
            self.metrics.rows.labels(group_id, outcome.status).inc()

    async def model_infer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._kserve_infer(request, context)

    async def model_stream_infer(self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        """The stock client's streaming API: each request answered when certified (any order)."""

        async def one(raw: bytes) -> Any:
            try:
                request = _parse(kserve.ModelInferRequest, raw)
                return kserve.ModelStreamInferResponse(infer_response=await self._kserve_infer(request, context))
            except _Abort as exc:
                self.metrics.calls.labels("ModelStreamInfer", exc.code.name).inc()
                return kserve.ModelStreamInferResponse(error_message=f"{exc.code.name}: {exc.message}")

        async for reply in _concurrent_replies(request_iterator, one, "ModelStreamInfer"):
            yield reply

    # =====================================================================================
    # native API
    # =====================================================================================

    def _native_request(self, message: Any) -> tuple[_Group, InferenceRequest, float | None]:
        """The checked InferenceRequest of one native InferRequest (ids filled in when empty)."""
        try:
            request = request_from_proto(message.request)
        except CertificateError as exc:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
        group = self.group(request.group_id)
        if not request.client_id or not request.request_id:
            request = InferenceRequest(
                request.group_id, request.client_id or DEFAULT_CLIENT_ID, request.request_id or new_request_id(),
                request.inputs, request.label_mapping,
            )
        check_request(group.entry.config, request)
        return group, request, (message.timeout_ms / 1000 if message.timeout_ms else None)

    async def infer_batch(self, message: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.monotonic()
        if len(message.requests) > self.rows_max:
            raise _Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{len(message.requests)} requests; at most {self.rows_max} per call")
        replies: list[Any] = [None] * len(message.requests)
        by_group: dict[str, tuple[_Group, list[int], list[InferenceRequest]]] = {}
        requested: list[float] = []
        for i, one in enumerate(message.requests):
            try:
                group, request, timeout_s = self._native_request(one)
            except _Abort as exc:
                replies[i] = _failed_reply(one.request, exc.code, exc.message)
                continue
            if timeout_s:
                requested.append(timeout_s)
            _, indexes, requests = by_group.setdefault(group.entry.group_id, (group, [], []))
            indexes.append(i)
            requests.append(request)
        timeout_s = self._timeout_s(context, max(requested) if requested else None)
        results = await asyncio.gather(
            *(self._submit_rows(g, reqs, timeout_s) for g, _, reqs in by_group.values()), return_exceptions=True
        )
        for (group, indexes, requests), outcomes in zip(by_group.values(), results):
            if isinstance(outcomes, _Abort):  # this group's rows were refused as a whole
                for i, request in zip(indexes, requests):
                    replies[i] = _failed_reply(request, outcomes.code, outcomes.message, outcomes.retry_after_ms)
                continue
            if isinstance(outcomes, BaseException):
                raise outcomes
            self._count_rows(group.entry.group_id, outcomes)
            for i, outcome in zip(indexes, outcomes):
                replies[i] = _native_reply(outcome)
        certified = sum(1 for r in replies if r.status == mpb.INFER_CERTIFIED)
        log.info(
            "InferBatch groups=%s rows=%d certified=%d first=%s in %.1f ms",
            sorted(by_group), len(replies), certified,
            f"{replies[0].client_id}/{replies[0].request_id}" if replies else "-", (time.monotonic() - started) * 1000,
        )
        return mpb.InferBatchReply(replies=replies)

    async def infer_stream(self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        """Rows in, replies out as each row is certified (over one SubmitBatchStream per replica)."""

        async def one(raw: bytes) -> Any:
            message = mpb.InferRequest()
            try:
                message.ParseFromString(raw)
            except (ProtobufDecodeError, RuntimeError, ValueError) as exc:
                return _failed_reply(None, grpc.StatusCode.INVALID_ARGUMENT, f"malformed InferRequest: {exc}")
            try:
                group, request, timeout_s = self._native_request(message)
                outcome = (await self._submit_rows(group, [request], self._timeout_s(context, timeout_s), stream=True))[0]
            except _Abort as exc:
                return _failed_reply(message.request, exc.code, exc.message, exc.retry_after_ms)
            self._count_rows(group.entry.group_id, [outcome])
            if outcome.status != CERTIFIED:
                log.info("Infer group=%s %s/%s: %s", request.group_id, request.client_id, request.request_id, outcome.error)
            return _native_reply(outcome)

        async for reply in _concurrent_replies(request_iterator, one, "Infer"):
            yield reply

    async def get_certificate(self, message: Any, context: grpc.aio.ServicerContext) -> Any:
        group = self.group(message.group_id)
        if not message.client_id or not message.request_id:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "client_id and request_id are both needed")
        outcome = await group.fanout.get_certificate(message.client_id, message.request_id, timeout_s=self._timeout_s(context, 10.0))
        log.info("GetCertificate group=%s %s/%s: %s", message.group_id, message.client_id, message.request_id, outcome.status)
        reply = _native_reply(outcome)
        if outcome.status == REJECTED:  # f+1 replicas do not know it
            reply.error_code = grpc.StatusCode.NOT_FOUND.value[0]
        return reply

    async def list_groups(self, message: Any, context: grpc.aio.ServicerContext) -> Any:
        return mpb.ListGroupsReply(groups=[_summary(entry) for entry in self.registry])

    async def get_group(self, message: Any, context: grpc.aio.ServicerContext) -> Any:
        group = self.group(message.group_id)
        group.fanout.start_following()  # answers with what is known; a new epoch shows up next time
        entry = group.entry
        links = group.fanout.configs.links
        return mpb.GroupReply(
            summary=_summary(entry),
            config_json=json.dumps(entry.config.to_json()),
            config_chain_json=[config_json_with_link(c, links.get(c.epoch)) for c in entry.chain],
            addresses=entry.addresses,
        )

    async def group_status(self, message: Any, context: grpc.aio.ServicerContext) -> Any:
        group = self.group(message.group_id)
        config = group.entry.config
        health = await group.fanout.status(timeout_s=min(2.0, self._timeout_s(context)))
        reachable = sum(1 for h in health if h.reachable)
        return mpb.GroupStatusReply(
            group_id=config.group_id,
            epoch=config.epoch,
            quorum_size=config.quorum_size,
            reachable=reachable,
            can_certify=reachable >= config.quorum_size,
            replicas=[
                mpb.ReplicaHealth(
                    replica_id=h.replica_id, address=h.address, reachable=h.reachable, error=h.error,
                    status=h.status if h.status is not None else api.StatusReply(), latency_us=int(h.latency_s * 1e6),
                )
                for h in health
            ],
        )


# =========================================================================================
# helpers
# =========================================================================================


def _parse(message_type: type[Message], raw: bytes) -> Any:
    message = message_type()
    try:
        message.ParseFromString(raw)
    except (ProtobufDecodeError, RuntimeError, ValueError, TypeError) as exc:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed {message_type.__name__}: {exc}") from exc
    return message


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


async def _concurrent_replies(
    request_iterator: AsyncIterator[bytes], one: Callable[[bytes], Any], method: str
) -> AsyncIterator[Any]:
    """Handle each incoming message concurrently (at most STREAM_INFLIGHT_MAX at once) and yield
    the replies as they complete."""
    loop = asyncio.get_running_loop()
    replies: asyncio.Queue[Any] = asyncio.Queue()
    slots = asyncio.Semaphore(STREAM_INFLIGHT_MAX)
    tasks: set[asyncio.Task[None]] = set()
    end = object()

    async def handle(raw: bytes) -> None:
        try:
            await replies.put(await one(raw))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: a streamed request failed", method)
            await replies.put(_failed_reply(None, grpc.StatusCode.INTERNAL, f"{method}: internal error"))
        finally:
            slots.release()

    async def read() -> None:
        try:
            async for raw in request_iterator:
                await slots.acquire()
                task = loop.create_task(handle(raw))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*list(tasks), return_exceptions=True)
        finally:
            await replies.put(end)

    reader = loop.create_task(read())
    try:
        while True:
            reply = await replies.get()
            if reply is end:
                break
            if isinstance(reply, mpb.InferReply) and method == "ModelStreamInfer":
                reply = kserve.ModelStreamInferResponse(error_message=reply.error)
            yield reply
    finally:
        reader.cancel()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(reader, *list(tasks), return_exceptions=True)


def _seqs(outcomes: Iterable[RowOutcome]) -> str:
    seqs = sorted({o.verified.seq for o in outcomes if o.verified is not None})
    return ",".join(str(s) for s in seqs) or "-"


def _label_names(config: GroupConfig, outcome: RowOutcome) -> tuple[str, ...]:
    if outcome.certificate is not None and outcome.certificate.leaf.label_space:
        return tuple(outcome.certificate.leaf.label_space)
    return tuple(config.task.class_labels)


def _kserve_response(
    config: GroupConfig, infer_id: str, client_id: str, outcomes: list[RowOutcome], wanted: list[str], invalid: int
) -> Any:
    names = _label_names(config, outcomes[0])
    labels = np.empty(len(outcomes), dtype=np.int64)
    probabilities = np.zeros((len(outcomes), len(names)), dtype=np.float32)
    epoch = config.epoch
    response = kserve.ModelInferResponse(model_name=config.group_id, model_version=str(epoch), id=infer_id)
    for i, outcome in enumerate(outcomes):
        certificate, verified = outcome.certificate, outcome.verified
        if certificate is None or verified is None:
            raise GatewayError("a row without a verified certificate reached the response")
        decision = certificate.leaf.decision
        labels[i] = decision.label
        probabilities[i] = expand_probabilities(decision.probabilities, len(names))
        epoch = verified.epoch
        parameters = response.parameters
        parameters[f"certificate_{i}"].string_param = base64.b64encode(outcome.certificate_bytes).decode("ascii")
        parameters[f"seq_{i}"].int64_param = verified.seq
        parameters[f"request_id_{i}"].string_param = outcome.request.request_id
        parameters[f"label_name_{i}"].string_param = verified.label_name or NO_AGREEMENT_NAME
    response.model_version = str(epoch)
    response.parameters["group_id"].string_param = config.group_id
    response.parameters["epoch"].int64_param = epoch
    response.parameters["config_digest"].string_param = outcomes[0].certificate.header.config_digest.hex()  # type: ignore[union-attr]
    response.parameters["client_id"].string_param = client_id
    response.parameters["rows"].int64_param = len(outcomes)
    response.parameters["invalid_certificates"].int64_param = invalid
    tensors = {
        "label": ("INT64", [len(outcomes)], labels.astype("<i8").tobytes()),
        "probabilities": ("FP32", [len(outcomes), len(names)], probabilities.astype("<f4").tobytes()),
    }
    for name in wanted:
        datatype, shape, data = tensors[name]
        response.outputs.add(name=name, datatype=datatype, shape=shape)
        response.raw_output_contents.append(data)
    return response


_STATUS = {
    CERTIFIED: mpb.INFER_CERTIFIED, REJECTED: mpb.INFER_REJECTED, UNAVAILABLE: mpb.INFER_UNAVAILABLE,
    TIMEOUT: mpb.INFER_TIMEOUT, OVERLOADED: mpb.INFER_OVERLOADED,
}


def _native_reply(outcome: RowOutcome) -> Any:
    request = outcome.request
    reply = mpb.InferReply(
        group_id=request.group_id,
        client_id=request.client_id,
        request_id=request.request_id,
        status=_STATUS[outcome.status],
        error=outcome.error,
        error_code=outcome.code.value[0],
        invalid_certificates=outcome.invalid_certificates,
        retry_after_ms=outcome.retry_after_ms,
    )
    if outcome.verified is not None:
        reply.certificate = outcome.certificate_bytes
        reply.epoch = outcome.verified.epoch
        reply.seq = outcome.verified.seq
        reply.replica_id = outcome.replica_id
    return reply


def _failed_reply(request: Any, code: grpc.StatusCode, error: str, retry_after_ms: int = 0) -> Any:
    """A row the gateway answers itself; `retry_after_ms` > 0: refused for now (overloaded)."""
    status = {
        grpc.StatusCode.UNAVAILABLE: mpb.INFER_UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED: mpb.INFER_TIMEOUT,
    }.get(code, mpb.INFER_OVERLOADED if retry_after_ms > 0 else mpb.INFER_REJECTED)
    reply = mpb.InferReply(status=status, error=error, error_code=code.value[0], retry_after_ms=retry_after_ms)
    if request is not None:
        reply.group_id, reply.client_id, reply.request_id = request.group_id, request.client_id, request.request_id
    return reply


def _summary(entry: GroupEntry) -> Any:
    config = entry.config
    task = config.task
    return mpb.GroupSummary(
        group_id=config.group_id,
        epoch=config.epoch,
        f=config.f,
        n=config.n,
        config_digest=config.digest,
        price_per_request=config.price_per_request,
        input_name=task.input_name,
        input_shape=list(task.input_shape),
        input_datatype=task.input_datatype,
        class_labels=list(task.class_labels),
        policy=config.policy.describe(config.f),
    )


# =========================================================================================
# running one
# =========================================================================================


async def serve(
    registry: Registry,
    listen: str = "127.0.0.1:0",
    *,
    metrics_port: int = 0,
    rows_max: int = ROWS_MAX,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
    on_started: Callable[[Gateway], None] | None = None,
    admission: AdmissionLimits = AdmissionLimits(),
    stream_coalesce_s: float = STREAM_COALESCE_S,
) -> None:
    """Run a gateway until SIGINT or SIGTERM, then stop it cleanly."""
    metrics = GatewayMetrics()
    metrics.serve(metrics_port)
    gateway = Gateway(
        registry, rows_max=rows_max, request_timeout_s=request_timeout_s, metrics=metrics, admission=admission,
        stream_coalesce_s=stream_coalesce_s,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await gateway.start(listen)
        if on_started is not None:
            on_started(gateway)
        await stop.wait()
        log.info("gateway stopping")
    finally:
        await gateway.stop()

