"""The gateway and the SDK against in-process fake replicas: one faulty replica of any kind
changes nothing, more than f faulty ones get the right error, and no lie gets through."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from certs.certificate import decode_certificate
from certs.config import GroupConfig
from certs.request import InferenceRequest, TensorData
from certs.verify import verify
from marketplace import gateway as gateway_module
from marketplace.gateway import Gateway
from marketplace.registry import GroupEntry, Registry
from replica.config import STREAM_COALESCE_S, AdmissionLimits
from marketplace.sdk import (
    AsyncClient,
    Client,
    AsyncReplicaClient,
    CertificationTimeoutError,
    OVERLOADED,
    GroupOverloadedError,
    InvalidCertificateError,
    RequestRejectedError,
    UnavailableError,
    retrying_channel_args,
)
from tests.certs.helpers import Group, make_group
from tests.marketplace.fakes import OVERLOADED_RETRY_MS, FakeReplica, true_label
from tests.marketplace.kserve import pixels_input

FAULTS = ("forge", "bad-signature", "other-request", "garbage", "silent", "reject", "timeout", "overloaded", "dead")


@dataclass
class FakeGroup:
    group: Group
    replicas: list[FakeReplica]
    gateway: Gateway

    @property
    def config(self) -> GroupConfig:
        return self.group.config

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gateway.port}"

    def invalid_count(self, replica_id: int) -> float:
        value = self.gateway.metrics.registry.get_sample_value(
            "quorumserve_gateway_invalid_certificates_total", {"group": self.config.group_id, "replica": str(replica_id)}
        )
        return value or 0.0


@pytest.fixture
async def make_fakes() -> AsyncIterator[object]:
    started: list[FakeGroup] = []

    async def make(
        behaviours: Sequence[str], *, honest_delay_s: float = 0.0, timeout_s: float = 5.0, admission: AdmissionLimits = AdmissionLimits(),
        stream_coalesce_s: float = STREAM_COALESCE_S,
    ) -> FakeGroup:
        group = make_group(1)
        replicas = [
            FakeReplica(group, i, b, delay_s=honest_delay_s if b == "honest" else 0.0) for i, b in enumerate(behaviours)
        ]
        for replica in replicas:
            await replica.start()
        entry = GroupEntry.of(group.config, {r.replica_id: r.address for r in replicas})
        gateway = Gateway(Registry([entry]), request_timeout_s=timeout_s, admission=admission, stream_coalesce_s=stream_coalesce_s)
        await gateway.start("127.0.0.1:0")
        fakes = FakeGroup(group, replicas, gateway)
        started.append(fakes)
        return fakes

    yield make
    for fakes in started:
        await fakes.gateway.stop(0)
        for replica in fakes.replicas:
            await replica.stop()


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 8, 8), dtype=np.float32)


def row_request(config: GroupConfig, client_id: str, request_id: str, row: np.ndarray) -> InferenceRequest:
    return InferenceRequest(config.group_id, client_id, request_id, (TensorData("image", "FP32", (8, 8), row.tobytes()),))


async def kserve_infer(address: str, config: GroupConfig, rows: np.ndarray, request_id: str = "") -> object:
    async with triton_aio.InferenceServerClient(address) as client:
        return await client.infer(config.group_id, [pixels_input(rows, name="image")], request_id=request_id)


@pytest.mark.parametrize("fault", FAULTS)
async def test_one_faulty_replica_changes_nothing(make_fakes: object, fault: str) -> None:
    # honest replicas answer late, so the faulty one is heard first
    fakes = await make_fakes(["honest", "honest", "honest", fault], honest_delay_s=0.05)  # type: ignore[operator]
    rows = images(4)
    request_id = uuid.uuid4().hex
    result = await kserve_infer(fakes.address, fakes.config, rows, request_id)
    response = result.get_response()  # type: ignore[attr-defined]
    labels = result.as_numpy("label")  # type: ignore[attr-defined]
    for i, row in enumerate(rows):
        request = row_request(fakes.config, "anonymous", f"{request_id}/{i}", row)
        certificate = decode_certificate(base64.b64decode(response.parameters[f"certificate_{i}"].string_param))
        verified = verify(certificate, fakes.config, request)
        assert verified.label == labels[i] == true_label(request, 10)
    if fault in ("forge", "bad-signature", "other-request", "garbage"):
        assert fakes.invalid_count(3) >= 1  # counted (and logged), then ignored


@pytest.mark.parametrize("fault", FAULTS)
async def test_the_sdk_over_the_gateway_and_straight_to_replicas_survives_one_fault(make_fakes: object, fault: str) -> None:
    fakes = await make_fakes([fault, "honest", "honest", "honest"], honest_delay_s=0.05)  # type: ignore[operator]
    rows = images(3, seed=1)
    async with AsyncClient(fakes.address, fakes.config) as client:
        results = await client.infer_batch(rows)
        streamed = [r async for r in client.infer_stream(rows)]
    async with AsyncReplicaClient({r.replica_id: r.address for r in fakes.replicas}, fakes.config) as direct:
        direct_results = await direct.infer_batch(rows)
    for got in (results, direct_results):
        assert [r.label for r in got] == [true_label(r.request, 10) for r in got]
        assert all(r.verified.request_checked for r in got)
    assert all(not isinstance(r, Exception) for r in streamed), streamed
    assert sorted(r.label for r in streamed) == sorted(r.label for r in results)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("behaviours", "code"),
    [
        (["forge"] * 4, grpc.StatusCode.UNAVAILABLE),
        (["dead"] * 4, grpc.StatusCode.UNAVAILABLE),
        (["garbage", "dead", "forge", "bad-signature"], grpc.StatusCode.UNAVAILABLE),
        (["timeout"] * 4, grpc.StatusCode.DEADLINE_EXCEEDED),
        (["silent"] * 4, grpc.StatusCode.DEADLINE_EXCEEDED),
        (["reject", "reject", "honest", "honest"], grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_too_many_faults_get_a_clear_status_and_never_a_wrong_result(
    make_fakes: object, behaviours: list[str], code: grpc.StatusCode
) -> None:
    # honest replicas are slow here, so f+1 rejections arrive first: one of them is correct
    fakes = await make_fakes(behaviours, honest_delay_s=0.5, timeout_s=1.0)  # type: ignore[operator]
    with pytest.raises(InferenceServerException) as failed:
        await kserve_infer(fakes.address, fakes.config, images(2))
    assert failed.value.status() == str(code)


async def test_sdk_errors_name_what_went_wrong(make_fakes: object) -> None:
    fakes = await make_fakes(["silent"] * 4, timeout_s=1.0)  # type: ignore[operator]
    async with AsyncClient(fakes.address, fakes.config, timeout_s=1.0) as client:
        with pytest.raises(CertificationTimeoutError):
            await client.infer(images(1)[0])
    dead = await make_fakes(["dead"] * 4)  # type: ignore[operator]
    async with AsyncReplicaClient([r.address for r in dead.replicas], dead.config, timeout_s=2.0) as direct:
        with pytest.raises(UnavailableError):
            await direct.infer(images(1)[0])
    rejecting = await make_fakes(["reject"] * 4)  # type: ignore[operator]
    async with AsyncClient(rejecting.address, rejecting.config) as client:
        with pytest.raises(RequestRejectedError, match="bogus"):
            await client.infer(images(1)[0])


async def test_more_than_f_overloaded_replicas_tell_every_client_when_to_come_back(make_fakes: object) -> None:
    """f+1 replicas at their admission limits (so at least one correct replica is): the stock
    client gets RESOURCE_EXHAUSTED with the grpc-retry-pushback-ms trailer, the SDK a
    GroupOverloadedError with the wait, through the gateway and straight to the replicas; one
    refusal is not enough (test_one_faulty_replica_changes_nothing)."""
    fakes = await make_fakes(["overloaded", "overloaded", "honest", "honest"], honest_delay_s=0.5)  # type: ignore[operator]
    request = service_pb2.ModelInferRequest(model_name=fakes.config.group_id, id="flood")
    request.inputs.add(name="image", datatype="FP32", shape=[1, 8, 8])
    request.raw_input_contents.append(images(1).tobytes())
    async with grpc.aio.insecure_channel(fakes.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "overloaded" in (refused.value.details() or "") and "retry with the same id" in (refused.value.details() or "")
    assert (("grpc-retry-pushback-ms", str(OVERLOADED_RETRY_MS)),) == tuple(
        (k, v) for k, v in refused.value.trailing_metadata() or () if k == "grpc-retry-pushback-ms"
    )
    async with AsyncClient(fakes.address, fakes.config, retry_overloaded=False) as client:
        with pytest.raises(GroupOverloadedError, match="2 of 4 replicas") as through_gateway:
            await client.infer(images(1)[0])
        with pytest.raises(GroupOverloadedError):
            await client.infer_batch(images(2))
    async with AsyncReplicaClient([r.address for r in fakes.replicas], fakes.config, retry_overloaded=False) as direct:
        with pytest.raises(GroupOverloadedError) as straight:
            await direct.infer(images(1)[0])
    assert through_gateway.value.retry_after_s == straight.value.retry_after_s == OVERLOADED_RETRY_MS / 1000
    assert through_gateway.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_the_gateway_refuses_calls_past_its_admission_limits_before_any_replica_sees_them(make_fakes: object) -> None:
    """With as many rows in flight to a group as its admission limits allow, the gateway
    refuses the next call itself (RESOURCE_EXHAUSTED, the pushback trailer, a message naming
    the limit; INFER_OVERLOADED rows on the native API): one decision for the whole call, so no
    replica is left holding rows the others refused. The calls let in are certified."""
    fakes = await make_fakes(["honest"] * 4, honest_delay_s=0.5, admission=AdmissionLimits(pending_requests_max=3))  # type: ignore[operator]
    async with grpc.aio.insecure_channel(fakes.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        async def call(i: int) -> object:
            request = service_pb2.ModelInferRequest(model_name=fakes.config.group_id, id=f"adm-{i}")
            request.inputs.add(name="image", datatype="FP32", shape=[1, 8, 8])
            request.raw_input_contents.append(images(1, seed=i).tobytes())
            try:
                return await stub.ModelInfer(request, timeout=10)
            except grpc.aio.AioRpcError as exc:
                return exc

        first = [asyncio.ensure_future(call(i)) for i in range(3)]
        await asyncio.sleep(0.2)  # the three are in flight
        refused = await call(3)
        answered = await asyncio.gather(*first)
    assert all(isinstance(a, service_pb2.ModelInferResponse) for a in answered), answered
    assert isinstance(refused, grpc.aio.AioRpcError) and refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "at this gateway: 3 rows (768 bytes) wait" in (refused.details() or "") and "limit is 3 requests" in (refused.details() or "")
    assert any(k == "grpc-retry-pushback-ms" and int(v) > 0 for k, v in refused.trailing_metadata() or ())
    assert [r.requests_seen for r in fakes.replicas] == [3] * 4  # the refused row reached no replica
    async with AsyncClient(fakes.address, fakes.config, retry_overloaded=False) as client:
        taken = [asyncio.ensure_future(client.infer(images(1, seed=10 + i)[0])) for i in range(3)]
        await asyncio.sleep(0.2)
        with pytest.raises(GroupOverloadedError, match="at this gateway") as over:
            await client.infer(images(1, seed=20)[0])
        assert over.value.retry_after_s > 0
        assert len(await asyncio.gather(*taken)) == 3


async def test_the_stock_client_with_the_retry_policy_comes_back_after_the_pushback_and_is_certified(make_fakes: object) -> None:
    """tritonclient with retrying_channel_args(): a call the gateway refuses for now is tried
    again by gRPC itself after the wait the refusal names, and certified; the caller sees no
    error. (Without the policy the same call fails: the test above.)"""
    fakes = await make_fakes(["honest"] * 4, honest_delay_s=0.3, admission=AdmissionLimits(pending_requests_max=1))  # type: ignore[operator]
    async with triton_aio.InferenceServerClient(fakes.address, channel_args=retrying_channel_args()) as client:
        calls = [
            asyncio.ensure_future(client.infer(fakes.config.group_id, [pixels_input(images(1, seed=i), name="image")], request_id=f"retry-{i}"))
            for i in range(2)
        ]
        results = await asyncio.gather(*calls)
    assert [r.get_response().parameters["rows"].int64_param for r in results] == [1, 1]
    refused = fakes.gateway.metrics.registry.get_sample_value(
        "quorumserve_gateway_requests_total", {"group": fakes.config.group_id, "outcome": OVERLOADED}
    )
    assert refused is not None and refused >= 1  # one of them was refused first, then let in


async def test_the_sdk_asks_again_after_the_wait_a_refusal_names_and_gives_up_at_its_timeout(make_fakes: object) -> None:
    """By default Client and AsyncClient ask again, with the same ids, for a batch the group
    refused for now, after the wait the refusal names: the caller gets its certified results.
    When the next wait would pass the call's timeout, GroupOverloadedError is raised."""
    fakes = await make_fakes(["honest"] * 4, honest_delay_s=0.3, admission=AdmissionLimits(pending_requests_max=1))  # type: ignore[operator]
    async with AsyncClient(fakes.address, fakes.config) as client:
        results = await asyncio.gather(*(client.infer(images(1, seed=30 + i)[0]) for i in range(2)))
    assert all(r.verified.request_checked for r in results)
    refused = fakes.gateway.metrics.registry.get_sample_value(
        "quorumserve_gateway_requests_total", {"group": fakes.config.group_id, "outcome": OVERLOADED}
    )
    assert refused is not None and refused >= 1

    def sync_calls() -> list[object]:
        with Client(fakes.address, fakes.config) as sync_client:
            return [sync_client.infer(images(1, seed=40)[0])]

    assert len(await asyncio.to_thread(sync_calls)) == 1
    overloaded = await make_fakes(["overloaded"] * 4)  # type: ignore[operator]
    async with AsyncClient(overloaded.address, overloaded.config, timeout_s=1.0) as client:
        with pytest.raises(GroupOverloadedError):
            await client.infer(images(1)[0])
    assert sum(r.requests_seen for r in overloaded.replicas) >= 8  # asked again (each try reaches all four)
    seen = sum(r.requests_seen for r in overloaded.replicas)
    async with AsyncReplicaClient([r.address for r in overloaded.replicas], overloaded.config, timeout_s=1.0) as direct:
        with pytest.raises(GroupOverloadedError):
            await direct.infer(images(1)[0])
    assert sum(r.requests_seen for r in overloaded.replicas) - seen >= 8  # straight to the replicas too


async def test_the_sdk_refuses_certificates_that_do_not_match_its_pinned_config(make_fakes: object) -> None:
    """The gateway serves a group whose keys differ from the config the client pinned (a gateway
    or registry that lies about the group): every certificate is refused."""
    fakes = await make_fakes(["honest"] * 4)  # type: ignore[operator]
    impostor = make_group(1, salt="impostor").config
    assert impostor.group_id == fakes.config.group_id and impostor.digest != fakes.config.digest
    async with AsyncClient(fakes.address, impostor) as client:
        with pytest.raises(InvalidCertificateError, match="config digest|signature"):
            await client.infer(images(1)[0])
    async with AsyncReplicaClient([r.address for r in fakes.replicas], impostor, timeout_s=2.0) as direct:
        with pytest.raises(UnavailableError, match="invalid certificate"):
            await direct.infer(images(1)[0])


async def test_bad_input_is_refused_before_any_replica_sees_it(make_fakes: object) -> None:
    fakes = await make_fakes(["honest"] * 4)  # type: ignore[operator]
    async with triton_aio.InferenceServerClient(fakes.address) as client:
        for inputs, code, words in [
            ([pixels_input(images(2), name="pixels")], grpc.StatusCode.INVALID_ARGUMENT, "'pixels'"),
            ([pixels_input(images(2).reshape(2, 64), name="image")], grpc.StatusCode.INVALID_ARGUMENT, "shape"),
            ([pixels_input(images(2).astype(np.float64), name="image", datatype="FP64")], grpc.StatusCode.INVALID_ARGUMENT, "datatype"),
        ]:
            with pytest.raises(InferenceServerException) as refused:
                await client.infer(fakes.config.group_id, inputs)
            assert refused.value.status() == str(code)
            assert words in refused.value.message()
    assert sum(r.requests_seen for r in fakes.replicas) == 0


async def test_typed_contents_are_accepted_like_raw_bytes(make_fakes: object) -> None:
    """KServe clients other than tritonclient may send typed contents instead of raw bytes."""
    fakes = await make_fakes(["honest"] * 4)  # type: ignore[operator]
    rows = images(2, seed=3)
    request = service_pb2.ModelInferRequest(model_name=fakes.config.group_id, id="typed")
    tensor = request.inputs.add(name="image", datatype="FP32", shape=[2, 8, 8])
    tensor.contents.fp32_contents.extend(rows.reshape(-1).tolist())
    async with grpc.aio.insecure_channel(fakes.address) as channel:
        response = await service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    labels = np.frombuffer(response.raw_output_contents[0], dtype="<i8")
    expected = [true_label(row_request(fakes.config, "anonymous", f"typed/{i}", row), 10) for i, row in enumerate(rows)]
    assert labels.tolist() == expected


def test_an_overloaded_row_waits_the_earliest_hint_of_the_refusals_so_a_faulty_replica_cannot_hold_it_back() -> None:
    """f+1 refusals decide a row as OVERLOADED; its retry hint is the earliest of theirs (no
    later than a correct replica's) and never above RETRY_AFTER_MAX_MS. One refusal decides
    nothing: the other replicas may still certify it."""
    from marketplace.sdk import _Row
    from replica.admission import RETRY_AFTER_MAX_MS

    group = make_group(1)
    request = row_request(group.config, "client", "r-1", images(1)[0])
    row = _Row(request, [0, 1, 2, 3], f=1)
    row.overload(0, "replica 0 is overloaded (lying)", 3_600_000)
    assert not row.done
    row.overload(2, "replica 2 is overloaded", 120)
    assert row.done
    outcome = row.outcome()
    assert outcome.status == OVERLOADED and outcome.retry_after_ms == 120 and outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "2 of 4 replicas refused it for now" in outcome.error and "retry with the same ids in about 120 ms" in outcome.error
    lying = _Row(request, [0, 1, 2, 3], f=1)
    lying.overload(0, "lie", 3_600_000)
    lying.overload(1, "lie", 3_600_000)  # f+1 = 2 liars cannot exist with f = 1, but the cap holds anyway
    assert lying.outcome().retry_after_ms == RETRY_AFTER_MAX_MS


async def test_past_the_wait_rule_a_client_sending_little_is_let_in_while_the_one_flooding_is_refused(
    make_fakes: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway's wait rule refuses calls once the rows in flight would keep a new one
    waiting too long; a client holding less than an equal share of those rows is still let in,
    so one client flooding the group does not shut the others out. A client alone is held
    back by the wait rule as before."""
    from replica import admission

    monkeypatch.setattr(admission, "WAIT_ESTIMATE_HELD_MIN", 2)
    fakes = await make_fakes(["honest"] * 4, honest_delay_s=0.5)  # type: ignore[operator]
    gateway = fakes.gateway
    now = time.monotonic()
    load = gateway._loads.setdefault(fakes.config.group_id, gateway_module._GroupLoad())
    load.certified.add(0, now - 1.0)
    load.certified.add(2, now)  # 2 rows/s lately: 2 rows in flight keep a new one 1 s, over half its 2 s timeout
    async with AsyncClient(fakes.address, fakes.config, client_id="flooder", timeout_s=2.0, retry_overloaded=False) as flooder, \
            AsyncClient(fakes.address, fakes.config, client_id="modest", timeout_s=2.0, retry_overloaded=False) as modest:
        flood = [asyncio.ensure_future(flooder.infer(images(1, seed=50 + i)[0])) for i in range(2)]
        await asyncio.sleep(0.2)
        with pytest.raises(GroupOverloadedError):
            await flooder.infer(images(1, seed=60)[0])  # alone past the wait rule: refused
        mine = await modest.infer(images(1, seed=61)[0])  # under an equal share: let in
        outcomes = await asyncio.gather(*flood, return_exceptions=True)
    assert mine.verified.request_checked
    assert all(not isinstance(o, BaseException) for o in outcomes), outcomes
    assert (load.rows, load.input_bytes, load.by_client) == (0, 0, {})  # nothing left counted in flight


async def _one_row_calls(fakes: FakeGroup, rows: np.ndarray, *, together: bool) -> None:
    """One-row ModelInfer calls (the stock client's usual call), all at once or one after another;
    each row's certificate must verify against the row the client sent."""
    async with triton_aio.InferenceServerClient(fakes.address) as client:

        async def call(i: int) -> None:
            request_id = f"row-{i}-{uuid.uuid4().hex}"
            result = await client.infer(fakes.config.group_id, [pixels_input(rows[i : i + 1], name="image")], request_id=request_id)
            certificate = decode_certificate(base64.b64decode(result.get_response().parameters["certificate_0"].string_param))
            request = row_request(fakes.config, "anonymous", f"{request_id}/0", rows[i])
            assert verify(certificate, fakes.config, request).label == result.as_numpy("label")[0] == true_label(request, 10)

        if together:
            await asyncio.gather(*(call(i) for i in range(len(rows))))
        else:
            for i in range(len(rows)):
                await call(i)


def _coalesce_waits(fakes: FakeGroup) -> int:
    """How often the gateway's stream writers waited for company."""
    return fakes.gateway._groups[fakes.config.group_id].fanout.stream().coalesce_waits


def _stream_rows_written(fakes: FakeGroup) -> tuple[float, float]:
    """(messages, rows) the gateway wrote to the replicas' streams, from its Prometheus histogram."""
    registry, labels = fakes.gateway.metrics.registry, {"group": fakes.config.group_id}
    count = registry.get_sample_value("quorumserve_gateway_stream_rows_per_message_count", labels) or 0.0
    rows = registry.get_sample_value("quorumserve_gateway_stream_rows_per_message_sum", labels) or 0.0
    return count, rows


async def test_one_row_calls_in_flight_together_reach_each_replica_in_shared_messages(make_fakes: object) -> None:
    # the replicas take 50 ms to answer, so the calls are in flight together, as under load; a
    # long wait for company keeps the test from depending on how fast this machine is
    fakes = await make_fakes(["honest"] * 4, honest_delay_s=0.05, stream_coalesce_s=0.1)  # type: ignore[operator]
    calls = 16
    await _one_row_calls(fakes, images(calls, seed=70), together=True)
    messages, rows = _stream_rows_written(fakes)
    assert rows == calls * 4  # every row to every replica, once
    # the first row goes alone (nothing else in flight), the rest wait for one another; written
    # as they came, they took 13-16 messages a replica here
    assert messages <= rows / 4
    for replica in fakes.replicas:
        assert replica.requests_seen == calls
        assert replica.stream_messages <= calls / 4
    assert _coalesce_waits(fakes) >= 1


async def test_a_lone_call_is_sent_at_once_and_coalescing_can_be_turned_off(make_fakes: object) -> None:
    # one call at a time: nothing else is in flight, so no row waits for company
    alone = await make_fakes(["honest"] * 4, stream_coalesce_s=0.1)  # type: ignore[operator]
    await _one_row_calls(alone, images(3, seed=71), together=False)
    assert _coalesce_waits(alone) == 0
    assert _stream_rows_written(alone) == (3 * 4, 3 * 4)  # a message per row per replica
    # calls together with the wait turned off: certified all the same, and no row waited
    off = await make_fakes(["honest"] * 4, honest_delay_s=0.05, stream_coalesce_s=0.0)  # type: ignore[operator]
    await _one_row_calls(off, images(16, seed=72), together=True)
    assert _coalesce_waits(off) == 0
    assert all(replica.requests_seen == 16 for replica in off.replicas)


def test_a_negative_wait_for_company_is_refused() -> None:
    group = make_group(1)
    entry = GroupEntry.of(group.config, {m.replica_id: m.address for m in group.config.members})
    with pytest.raises(ValueError, match="stream_coalesce_s"):
        Gateway(Registry([entry]), stream_coalesce_s=-0.001)
