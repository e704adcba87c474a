"""Four real replica processes on loopback, each with its own Triton and its own digits model.

The tests share one group and run in file order; each leaves the group whole again. Under a
continuous client load they crash, kill, pause and restart replicas and check what a client
would notice: every request gets a certificate that verifies, nothing certified is lost, and a
replica that was down catches up and takes part again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from certs.certificate import decode_certificate
from certs.verify import verify
from certs.wire import request_to_proto
from marketplace.local import LocalGroup
from marketplace.models import held_out_digits
from protos import replica_api_pb2 as api
from protos import replica_api_pb2_grpc as api_grpc
from marketplace.sdk import CERTIFIED, OVERLOADED, GroupOverloadedError, ReplicaFanout
from replica.config import AdmissionLimits
from replica.server import EXIT_TRITON_DIED
from tests.replica.cluster_helpers import current_primary, metric_sum, scrape, status, statuses, wait_until
from tests.replica.load import Load, LoadResult, digits_request

pytestmark = pytest.mark.processes
ADMISSION_MAX = 64  # requests each replica of the shared group holds before it refuses more
log = logging.getLogger("tests.cluster")


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory, digits_packages: list[Path]) -> Iterator[LocalGroup]:
    # admission limits small enough for a test to go past (test_a_client_flooding_...)
    g = LocalGroup(tmp_path_factory.mktemp("cluster"), model_packages=digits_packages, admission=AdmissionLimits(pending_requests_max=ADMISSION_MAX))
    g.prepare()
    try:
        g.start()
        yield g
    finally:
        g.stop()


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    return held_out_digits(0)


def run_load_around(group: LocalGroup, digits: tuple[np.ndarray, np.ndarray], action, client_id: str, before_s: float = 3.0, after_s: float = 8.0):  # type: ignore[no-untyped-def]
    """Keep 8 clients busy; after `before_s` run `action()` (in a thread), then keep going."""
    X, _ = digits
    assert group.config is not None
    load = Load(group.config, group.addresses, X, client_id=client_id)

    async def scenario() -> tuple[LoadResult, float, object]:
        done = asyncio.Event()
        running = asyncio.ensure_future(load.run(8, until=done))
        await asyncio.sleep(before_s)
        at_s = time.monotonic() - load.started_s
        outcome = await asyncio.get_running_loop().run_in_executor(None, action)
        await asyncio.sleep(after_s)
        done.set()
        return await running, at_s, outcome

    return asyncio.run(scenario())


def assert_nothing_lost(group: LocalGroup, result: LoadResult) -> None:
    """Every certificate a client received is still served, unchanged, by the group."""
    assert group.config is not None
    live = [r.address for r in group.replicas if r.running]
    for (client_id, request_id), certified in list(result.certified.items())[:: max(1, len(result.certified) // 40)]:
        found = None
        for address in live:
            with grpc.insecure_channel(address) as channel:
                try:
                    reply = api_grpc.ReplicaStub(channel).GetCertificate(
                        api.GetCertificateRequest(client_id=client_id, request_id=request_id), timeout=5
                    )
                except grpc.RpcError:
                    continue
            found = decode_certificate(reply.certificate)
            break
        assert found is not None, f"{client_id}/{request_id} was certified but no replica serves it now"
        verify(found, group.config, certified.request)
        assert found.header.seq == certified.certificate.header.seq
        assert found.leaf == certified.certificate.leaf


def test_certified_results_verify_and_ran_in_every_replicas_triton(group: LocalGroup, digits: tuple[np.ndarray, np.ndarray]) -> None:
    assert group.config is not None
    X, y = digits
    before = {r.replica_id: metric_sum(scrape(r.config.triton.metrics_port), "nv_inference_count") for r in group.replicas}
    calls_before = {r.replica_id: metric_sum(scrape(r.config.triton.metrics_port), "nv_inference_request_success") for r in group.replicas}
    requests = [digits_request(group.config, "verify", f"v-{i}", X[i]) for i in range(40)]

    # every request to every replica, and every answer awaited: a client that stops at the first
    # certificate cancels its other calls, and a replica whose call was cancelled before it
    # arrived learns the request only from the group's votes, once it is ordered (too late to run)
    async def send_all() -> list[list[api.SubmitReply]]:
        channels = [grpc.aio.insecure_channel(a) for a in group.addresses]
        stubs = [api_grpc.ReplicaStub(c) for c in channels]
        try:
            return await asyncio.gather(*(
                asyncio.gather(*(
                    stub.Submit(api.SubmitRequest(request=request_to_proto(r), fanout=1, timeout_ms=30_000), timeout=35)
                    for stub in stubs
                ))
                for r in requests
            ))
        finally:
            for c in channels:
                await c.close()

    replies = asyncio.run(send_all())
    correct = 0
    for i, answers in enumerate(replies):
        assert [a.status for a in answers] == [api.CERTIFIED] * group.n, [a.error for a in answers]
        verified = [verify(decode_certificate(a.certificate), group.config, requests[i]) for a in answers]
        assert all(len(decode_certificate(a.certificate).quorum) >= group.config.quorum_size for a in answers)
        assert len({v.label for v in verified}) == 1, "replicas certified different decisions"
        correct += int(verified[0].label == y[i])
    assert correct >= 36, f"only {correct}/40 certified decisions are right"
    # the votes the certificates carry, by voter: every certificate holds at least a quorum
    votes = Counter(vote.replica_id for answers in replies for vote in decode_certificate(answers[0].certificate).leaf.votes)
    assert sum(votes.values()) >= 40 * group.config.quorum_size
    for replica in group.replicas:
        text = scrape(replica.config.triton.metrics_port)
        rows = metric_sum(text, "nv_inference_count") - before[replica.replica_id]
        calls = metric_sum(text, "nv_inference_request_success") - calls_before[replica.replica_id]
        # Triton itself counted every vote of this replica's that a certificate carries, in fewer
        # calls than rows (batching). Not necessarily all 40: a replica lagging behind the
        # primary's wait for votes (vote_wait_max_ticks) is left out of a batch, and once the
        # group has ordered a request it no longer runs it
        assert rows >= votes[replica.replica_id] >= 1, f"replica {replica.replica_id}'s Triton ran {rows} inferences for {votes[replica.replica_id]} certified votes"
        assert 1 <= calls <= rows
    # what each replica sent, by message type: every one voted, a primary proposed, and enough
    # replicas prepared and committed to make quorums (a replica that lagged may have learnt
    # the outcome from the others' commits without sending its own)
    sent = {
        r.replica_id: {kind: metric_sum(text, "quorumserve_peer_messages_sent_total", kind=kind) for kind in ("VoteBatch", "PrePrepare", "Prepare", "Commit")}
        for r, text in ((r, scrape(r.config.metrics_port)) for r in group.replicas)
    }
    quorum = group.config.quorum_size
    assert all(counts["VoteBatch"] >= 1 for counts in sent.values()), sent
    assert any(counts["PrePrepare"] >= 1 for counts in sent.values()), sent
    assert sum(counts["Prepare"] >= 1 for counts in sent.values()) >= quorum - 1, sent
    assert sum(counts["Commit"] >= 1 for counts in sent.values()) >= quorum, sent


def test_kill_9_a_backup_under_load_loses_nothing(group: LocalGroup, digits: tuple[np.ndarray, np.ndarray]) -> None:
    primary = current_primary(group)
    victim = next(r for r in range(group.n) if r != primary)
    result, killed_at_s, _ = run_load_around(group, digits, lambda: group.kill(victim), "kill-backup")
    after = [t for t, _ in result.timeline if t > killed_at_s + 1.0]
    assert len(after) > 20, "the group stopped certifying after a backup was killed"
    assert result.invalid == 0
    assert_nothing_lost(group, result)
    # the killed replica restarts, recovers from its disk, catches up and takes part again
    group.start_replica(victim)
    reference = max(s.executed_seq for s in statuses(group).values())
    assert wait_until(lambda: (s := status(group.replicas[victim].address)) is not None and s.executed_seq >= reference, 120)


def test_kill_9_the_primary_under_load_changes_view_and_resumes(group: LocalGroup, digits: tuple[np.ndarray, np.ndarray]) -> None:
    old_view = max(s.view for s in statuses(group).values())
    primary = current_primary(group)
    result, killed_at_s, _ = run_load_around(group, digits, lambda: group.kill(primary), "kill-primary", after_s=12.0)
    resumed = [t for t, _ in result.timeline if t > killed_at_s]
    assert resumed, "no request was certified after the primary died"
    survivors = statuses(group)
    assert all(s.view > old_view for s in survivors.values()), f"no view change: {survivors}"
    # recovery time: the longest stretch without a certificate after the kill
    gap_s = _longest_gap_after(result, killed_at_s)
    log.warning("primary %d killed: longest certification gap %.2f s (view %d -> %d)", primary, gap_s, old_view, max(s.view for s in survivors.values()))
    print(f"\nrecovery after killing primary {primary}: longest gap without certificates {gap_s:.2f} s")
    assert result.invalid == 0
    assert_nothing_lost(group, result)
    group.start_replica(primary)
    reference = max(s.executed_seq for s in statuses(group).values())
    assert wait_until(lambda: (s := status(group.replicas[primary].address)) is not None and s.executed_seq >= reference, 120)


def _longest_gap_after(result: LoadResult, from_s: float) -> float:
    times = [from_s] + [t for t, _ in result.timeline if t > from_s]
    return max((b - a for a, b in zip(times, times[1:])), default=0.0)


def test_sigstop_then_sigcont_a_replica(group: LocalGroup, digits: tuple[np.ndarray, np.ndarray]) -> None:
    primary = current_primary(group)
    victim = next(r for r in range(group.n) if r != primary)

    def pause_and_resume() -> None:
        group.pause(victim)
        time.sleep(5.0)
        group.resume(victim)

    result, paused_at_s, _ = run_load_around(group, digits, pause_and_resume, "pause", after_s=5.0)
    during = [t for t, _ in result.timeline if paused_at_s + 0.5 < t < paused_at_s + 5.0]
    assert len(during) > 10, "the group did not certify while one replica was paused"
    assert_nothing_lost(group, result)
    reference = max(s.executed_seq for s in statuses(group).values())
    assert wait_until(lambda: (s := status(group.replicas[victim].address)) is not None and s.executed_seq >= reference, 60)


def test_restarted_replica_serves_old_certificates_from_disk_and_votes_again(group: LocalGroup, digits: tuple[np.ndarray, np.ndarray]) -> None:
    assert group.config is not None
    X, _ = digits
    primary = current_primary(group)
    victim = next(r for r in range(group.n) if r != primary)
    before = status(group.replicas[victim].address)
    assert before is not None
    group.stop_replica(victim)
    group.start_replica(victim)
    after = status(group.replicas[victim].address)
    assert after is not None and after.executed_seq >= before.executed_seq  # recovered from SQLite
    with grpc.insecure_channel(group.replicas[victim].address) as channel:
        reply = api_grpc.ReplicaStub(channel).GetCertificate(api.GetCertificateRequest(client_id="verify", request_id="v-0"), timeout=5)
    verify(decode_certificate(reply.certificate), group.config)
    # it takes part again: new certificates carry its vote
    load = Load(group.config, group.addresses, X, client_id="rejoin")
    certified = _certify_in_turn(group, load, [digits_request(group.config, "rejoin", f"j-{i}", X[i]) for i in range(20)])
    assert any(victim in {v.replica_id for v in c.certificate.leaf.votes} for c in certified[-10:])


def _certify_in_turn(group: LocalGroup, load: Load, requests: list, until=None) -> list:  # type: ignore[no-untyped-def, type-arg]
    """Certify `requests` one after another straight at the replicas (stopping after the first
    certified one that `until` accepts)."""

    async def run() -> list:  # type: ignore[type-arg]
        channels = [grpc.aio.insecure_channel(a) for a in group.addresses]
        stubs = [api_grpc.ReplicaStub(c) for c in channels]
        out = []
        try:
            for request in requests:
                out.append(await load.certify(request, stubs))
                if until is not None and until(out[-1]):
                    break
            return out
        finally:
            for c in channels:
                await c.close()

    return asyncio.run(run())


def test_bad_client_input_gets_a_status_code_and_nothing_breaks(group: LocalGroup, digits: tuple[np.ndarray, np.ndarray]) -> None:
    assert group.config is not None
    X, _ = digits
    replica = group.replicas[1]
    good = digits_request(group.config, "bad-input", "ok-1", X[0])
    with grpc.insecure_channel(replica.address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        stub = api_grpc.ReplicaStub(channel)
        raw_submit = channel.unary_unary("/quorumserve.v1.Replica/Submit", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as garbage:
            raw_submit(b"\xff\x00garbage\x13\x37", timeout=5)
        assert garbage.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        def submit(request_proto: object) -> grpc.RpcError:
            with pytest.raises(grpc.RpcError) as error:
                stub.Submit(api.SubmitRequest(request=request_proto, fanout=0), timeout=10)
            return error.value

        wrong_shape = request_to_proto(good)
        wrong_shape.inputs[0].shape[:] = [32]
        wrong_shape.inputs[0].data = wrong_shape.inputs[0].data[:128]
        error = submit(wrong_shape)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "pixels" in error.details()

        wrong_dtype = request_to_proto(good)
        wrong_dtype.inputs[0].datatype = "INT32"
        error = submit(wrong_dtype)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "datatype" in error.details()

        wrong_group = request_to_proto(good)
        wrong_group.group_id = "no-such-group"
        assert submit(wrong_group).code() == grpc.StatusCode.NOT_FOUND

        huge = request_to_proto(good)
        huge.inputs[0].shape[:] = [5 * 1024 * 1024]
        huge.inputs[0].data = bytes(20 * 1024 * 1024)
        assert submit(huge).code() == grpc.StatusCode.RESOURCE_EXHAUSTED


    # garbage on the peer port: counted, and the replica keeps serving
    host, port = replica.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(range(256)) * 8)
    with grpc.insecure_channel(replica.address) as channel:
        peer_send = channel.stream_unary("/quorumserve.v1.Peer/Send", request_serializer=None, response_deserializer=None)
        peer_send(iter([b"\x08\x01\x12\x05junk!", bytes(64)]), timeout=5)
    assert wait_until(lambda: metric_sum(scrape(replica.config.metrics_port), "quorumserve_rejected_messages_total", reason="malformed") >= 1, 10)
    assert status(replica.address) is not None
    # a good request still gets certified
    load = Load(group.config, group.addresses, X, client_id="bad-input")

    async def one() -> object:
        channels = [grpc.aio.insecure_channel(a) for a in group.addresses]
        try:
            return await load.certify(good, [api_grpc.ReplicaStub(c) for c in channels])
        finally:
            for c in channels:
                await c.close()

    verify(asyncio.run(one()).certificate, group.config, good)  # type: ignore[attr-defined]

    # the archive by seq range: garbage and a backwards range are refused, a range is served
    with grpc.insecure_channel(replica.address) as channel:
        stub = api_grpc.ReplicaStub(channel)
        raw_list = channel.unary_unary("/quorumserve.v1.Replica/ListCertificates", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as garbage:
            raw_list(b"\xff\x00garbage\x13\x37", timeout=5)
        assert garbage.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as backwards:
            stub.ListCertificates(api.CertificateRangeRequest(after_seq=10, through_seq=5), timeout=5)
        assert backwards.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert wait_until(lambda: len(stub.ListCertificates(api.CertificateRangeRequest(after_seq=0, through_seq=2**40), timeout=10).certificates) > 0, 10)
        page = stub.ListCertificates(api.CertificateRangeRequest(after_seq=0, through_seq=2**40, limit=1), timeout=10)
        assert page.certificates and page.next_after_seq >= decode_certificate(page.certificates[0]).header.seq
        for raw in page.certificates:
            verify(decode_certificate(raw), group.config)


def test_submit_batch_stream_takes_bursts_answers_in_bursts_and_survives_garbage(group: LocalGroup, digits: tuple[np.ndarray, np.ndarray]) -> None:
    """The SDK's and gateway's path to the replicas: many requests per stream message each way.
    A garbage message or an oversized one is answered with rejections and the stream goes on."""
    assert group.config is not None
    config = group.config
    X, _ = digits
    requests = [digits_request(config, "burst", f"b-{i}", X[i]) for i in range(20)]
    burst = api.SubmitBatchRequest(requests=[api.SubmitRequest(request=request_to_proto(r), fanout=1) for r in requests])
    too_many = api.SubmitBatchRequest(
        requests=[api.SubmitRequest(request=request_to_proto(digits_request(config, "burst", f"big-{i}", X[0])), fanout=1) for i in range(4097)]
    )

    async def scenario() -> dict[int, list[api.SubmitBatchReply]]:
        channels = [grpc.aio.insecure_channel(a, options=[("grpc.max_send_message_length", 64 << 20)]) for a in group.addresses]
        try:
            calls = [c.stream_stream("/quorumserve.v1.Replica/SubmitBatchStream", request_serializer=None, response_deserializer=None)() for c in channels]
            for call in calls:
                await call.write(b"\xff\x00garbage\x13\x37")
                await call.write(too_many.SerializeToString())
                await call.write(burst.SerializeToString())
                await call.done_writing()
            out: dict[int, list[api.SubmitBatchReply]] = {}
            for replica_id, call in enumerate(calls):
                out[replica_id] = [api.SubmitBatchReply.FromString(raw) async for raw in call]
            return out
        finally:
            for c in channels:
                await c.close()

    messages = asyncio.run(asyncio.wait_for(scenario(), 120))
    for replica_id, replies_of in messages.items():
        replies = [reply for message in replies_of for reply in message.replies]
        rejected = [r for r in replies if r.status == api.REJECTED]
        assert any(not r.request_id and "malformed SubmitBatchRequest" in r.error for r in rejected)
        assert sum(1 for r in rejected if r.request_id.startswith("big-") and "at most 4096" in r.error) == 4097
        certified = {r.request_id: r for r in replies if r.status == api.CERTIFIED}
        assert set(certified) == {r.request_id for r in requests}, f"replica {replica_id}: {len(certified)} of 20 certified"
        for request in requests:
            verify(decode_certificate(certified[request.request_id].certificate), config, request)
        # the burst's certificates come back several to a message
        assert max(sum(1 for r in m.replies if r.status == api.CERTIFIED) for m in replies_of) > 1


def test_a_client_flooding_the_group_is_told_to_come_back_later_and_loses_nothing(group: LocalGroup, digits: tuple[np.ndarray, np.ndarray]) -> None:
    """A client sending more at once than the replicas' admission limits hold (ADMISSION_MAX
    requests each) gets the excess refused at once: RESOURCE_EXHAUSTED (OVERLOADED from the
    SDK, GroupOverloadedError to its caller) with a message naming the limit and a retry hint,
    rather than an ever longer wait. What was taken is certified; asking again with the same ids
    after the hint certifies the rest, each request once."""
    assert group.config is not None
    config = group.config
    X, _ = digits
    flood = [digits_request(config, "flood-in", f"f-{i}", X[i % len(X)]) for i in range(3 * ADMISSION_MAX)]

    async def scenario() -> tuple[list[object], dict[str, object], int]:
        fanout = ReplicaFanout(config, group.addresses)
        try:
            first = await fanout.submit(flood, timeout_s=60)
            final = {o.request.request_id: o for o in first if o.status == CERTIFIED}
            waiting = [o for o in first if o.status != CERTIFIED]
            rounds = 0
            while waiting and rounds < 50:
                rounds += 1
                await asyncio.sleep(max(o.retry_after_ms for o in waiting) / 1000)
                again = await fanout.submit([o.request for o in waiting], timeout_s=60)
                final.update({o.request.request_id: o for o in again if o.status == CERTIFIED})
                waiting = [o for o in again if o.status != CERTIFIED]
            return list(first), final, rounds
        finally:
            await fanout.close()

    first, final, rounds = asyncio.run(scenario())
    refused = [o for o in first if o.status == OVERLOADED]  # type: ignore[attr-defined]
    taken = [o for o in first if o.status == CERTIFIED]  # type: ignore[attr-defined]
    assert len(taken) >= ADMISSION_MAX and refused and len(taken) + len(refused) == len(flood), [o.status for o in first]  # type: ignore[attr-defined]
    for outcome in refused:
        assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert 0 < outcome.retry_after_ms <= 5000  # type: ignore[attr-defined]
        assert "overloaded" in outcome.error and f"limit is {ADMISSION_MAX} requests" in outcome.error  # type: ignore[attr-defined]
        error = outcome.error_object()  # type: ignore[attr-defined]
        assert isinstance(error, GroupOverloadedError) and error.retry_after_s > 0
    # every request certified in the end, each once: the certificates the replicas keep name
    # one seq per request, the one its client got
    assert sorted(final) == sorted(r.request_id for r in flood), f"{len(final)} of {len(flood)} certified after {rounds} rounds"
    for request in flood:
        verify(decode_certificate(final[request.request_id].certificate_bytes), config, request)  # type: ignore[attr-defined]
    seq_of = {rid: o.verified.seq for rid, o in final.items()}  # type: ignore[attr-defined]
    with grpc.insecure_channel(group.replicas[1].address) as channel:
        stub = api_grpc.ReplicaStub(channel)
        for request in flood[:: len(flood) // 12]:
            kept = stub.GetCertificate(api.GetCertificateRequest(client_id="flood-in", request_id=request.request_id), timeout=10)
            assert kept.seq == seq_of[request.request_id]
    overloaded = sum(metric_sum(scrape(r.config.metrics_port), "quorumserve_requests_total", outcome="overloaded") for r in group.replicas)
    assert overloaded >= len(refused) * (config.f + 1)


def test_a_flood_of_archive_reads_is_paced_with_a_pushback_and_the_replica_keeps_certifying(group: LocalGroup, digits: tuple[np.ndarray, np.ndarray]) -> None:
    """Anyone may page through a replica's archive (ListCertificates). A caller hammering it
    gets RESOURCE_EXHAUSTED, saying why and when to come back (replica/archive.py), once past
    the archive's burst; the pages it does get are whole; and the replica goes on certifying."""
    assert group.config is not None
    config = group.config
    X, _ = digits
    target = group.replicas[0]
    ask = api.CertificateRangeRequest(after_seq=0, through_seq=1 << 40, limit=1024)
    later = digits_request(config, "flood", "after", X[5])
    stored = [digits_request(config, "flood", f"before-{i}", X[i]) for i in range(3)]  # the archive is not empty

    async def scenario() -> tuple[list[api.CertificateRangeReply], list[grpc.aio.AioRpcError], api.SubmitReply]:
        async with grpc.aio.insecure_channel(target.address, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
            stub = api_grpc.ReplicaStub(channel)
            for request in stored:
                await stub.Submit(api.SubmitRequest(request=request_to_proto(request), fanout=1, timeout_ms=30_000), timeout=35)
            outcomes = await asyncio.gather(*(stub.ListCertificates(ask, timeout=60) for _ in range(120)), return_exceptions=True)
            reply = await stub.Submit(api.SubmitRequest(request=request_to_proto(later), fanout=1, timeout_ms=30_000), timeout=35)
        served = [o for o in outcomes if isinstance(o, api.CertificateRangeReply)]
        refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
        assert len(served) + len(refused) == len(outcomes), [o for o in outcomes if not isinstance(o, (api.CertificateRangeReply, grpc.aio.AioRpcError))]
        return served, refused, reply

    served, refused, reply = asyncio.run(scenario())
    assert served and refused, (len(served), len(refused))
    for error in refused:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "certificate archive" in (error.details() or "")
        assert any(key == "grpc-retry-pushback-ms" and int(value) > 0 for key, value in error.trailing_metadata() or ())
    first = served[0]
    assert first.certificates and all(r.certificates == first.certificates for r in served[1:] if r.next_after_seq == first.next_after_seq)
    verify(decode_certificate(first.certificates[0]), config)
    refusals = metric_sum(scrape(target.config.metrics_port), "quorumserve_archive_pages_total", outcome="refused")
    assert refusals >= len(refused)
    assert reply.status == api.CERTIFIED, reply.error
    verify(decode_certificate(reply.certificate), config, later)


def _tritonserver_of(replica_pid: int) -> int:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) == replica_pid and Path(f"/proc/{entry}/comm").read_text().strip() == "tritonserver":
                return int(entry)
        except (ProcessLookupError, FileNotFoundError):
            continue
    raise AssertionError(f"no tritonserver in replica {replica_pid}'s process group")


def test_a_replica_whose_triton_dies_stops_for_its_supervisor_and_serves_again_once_restarted(group: LocalGroup, digits: tuple[np.ndarray, np.ndarray]) -> None:
    """Without its Triton a replica cannot vote: instead of sitting in the group unpaid with a
    health check saying SERVING, it stops with exit status 3 and says why, and once restarted
    (by its supervisor; here by hand) it certifies again."""
    assert group.config is not None
    config = group.config
    X, _ = digits
    victim = next(r for r in range(group.n) if r != current_primary(group))
    process = group.replicas[victim].process
    assert process is not None
    os.kill(_tritonserver_of(process.pid), signal.SIGKILL)
    assert process.wait(timeout=120) == EXIT_TRITON_DIED  # the hang guard is generous; it takes about a second
    assert "its tritonserver exited" in group.log_tail(victim, lines=200)
    group.start_replica(victim)
    request = digits_request(config, "triton-died", "after", X[7])
    with grpc.insecure_channel(group.replicas[victim].address) as channel:
        reply = api_grpc.ReplicaStub(channel).Submit(api.SubmitRequest(request=request_to_proto(request), fanout=1, timeout_ms=60_000), timeout=90)
    assert reply.status == api.CERTIFIED and reply.replica_id == victim, reply.error
    verify(decode_certificate(reply.certificate), config, request)


def test_submit_stream_answers_one_request_per_message_and_survives_garbage(group: LocalGroup, digits: tuple[np.ndarray, np.ndarray]) -> None:
    """The one-request-per-message stream kept for existing clients: garbage gets a rejection,
    and the requests after it are certified."""
    assert group.config is not None
    config = group.config
    X, _ = digits
    requests = [digits_request(config, "single-stream", f"s-{i}", X[i]) for i in range(3)]

    async def scenario() -> list[api.SubmitReply]:
        channels = [grpc.aio.insecure_channel(a) for a in group.addresses]
        try:
            calls = [c.stream_stream("/quorumserve.v1.Replica/SubmitStream", request_serializer=None, response_deserializer=None)() for c in channels]
            for call in calls:
                await call.write(b"\xff\x00garbage\x13\x37")
                for request in requests:
                    await call.write(api.SubmitRequest(request=request_to_proto(request), fanout=1).SerializeToString())
                await call.done_writing()
            return [api.SubmitReply.FromString(raw) async for raw in calls[1]]
        finally:
            for c in channels:
                await c.close()

    replies = asyncio.run(asyncio.wait_for(scenario(), 120))
    assert any(r.status == api.REJECTED and "malformed SubmitRequest" in r.error for r in replies)
    certified = {r.request_id: r for r in replies if r.status == api.CERTIFIED}
    assert set(certified) == {r.request_id for r in requests}
    for request in requests:
        verify(decode_certificate(certified[request.request_id].certificate), config, request)


def test_a_replica_that_was_down_when_a_request_was_certified_answers_its_client_with_a_peers_certificate(group: LocalGroup, digits: tuple[np.ndarray, np.ndarray]) -> None:
    """While a replica is down the group certifies a request and three checkpoint intervals
    more. Back up, the replica catches up by a state-transfer snapshot and never sees that
    request's batch, yet a client submitting the request to it (a retry, or a client that
    talks to this replica only) gets a valid certificate from it, fetched from a peer, checked
    and kept; before, it got "ask another replica". The certificates of the other batches the
    snapshot skipped are filled in from a peer as well."""
    assert group.config is not None
    config = group.config
    X, _ = digits
    primary = current_primary(group)
    victim = next(r for r in range(group.n) if r != primary)
    live = [a for r, a in enumerate(group.addresses) if r != victim]
    waited = digits_request(config, "down", "waited", X[0])
    later = [digits_request(config, "down", f"later-{i}", X[i % len(X)]) for i in range(3 * config.params.checkpoint_interval_batches)]
    load = Load(config, group.addresses, X, client_id="down")
    group.stop_replica(victim)

    async def certify_without_victim() -> None:
        channels = [grpc.aio.insecure_channel(a) for a in live]
        try:
            stubs = [api_grpc.ReplicaStub(c) for c in channels]
            await load.certify(waited, stubs)
            for request in later:  # one batch each: the group's stable checkpoint moves past the request
                await load.certify(request, stubs)
        finally:
            for c in channels:
                await c.close()

    asyncio.run(asyncio.wait_for(certify_without_victim(), 180))
    group.start_replica(victim)
    with grpc.insecure_channel(group.replicas[victim].address) as channel:
        stub = api_grpc.ReplicaStub(channel)
        reply = stub.Submit(api.SubmitRequest(request=request_to_proto(waited), fanout=1, timeout_ms=60_000), timeout=90)
        assert reply.status == api.CERTIFIED, f"{api.SubmitStatus.Name(reply.status)}: {reply.error}"
        assert reply.replica_id == victim
        answered = decode_certificate(reply.certificate)
        verify(answered, config, waited)
        # the restarted process fetched it from a peer: on the client's call, or already in the
        # background fill-in of the batches its snapshot skipped (both count here)
        fetched = metric_sum(scrape(group.replicas[victim].config.metrics_port), "quorumserve_peer_certificates_total", outcome="fetched")
        assert fetched > 0, "the certificate did not come from a peer"
        # kept: asked again, the replica serves it from its own store (the full form)
        kept = decode_certificate(stub.GetCertificate(api.GetCertificateRequest(client_id="down", request_id="waited"), timeout=10).certificate)
    verify(kept, config, waited)
    assert (kept.header, kept.leaf) == (answered.header, answered.leaf)

    # the other skipped batches' certificates are filled in too, though nobody asked this
    # replica for them (ListCertificates from a peer): an auditor finds them here as well
    def served(request_id: str) -> api.SubmitReply | None:
        with grpc.insecure_channel(group.replicas[victim].address) as channel:
            try:
                return api_grpc.ReplicaStub(channel).GetCertificate(api.GetCertificateRequest(client_id="down", request_id=request_id), timeout=5)
            except grpc.RpcError:
                return None

    assert wait_until(lambda: served(later[3].request_id) is not None, 30), "a skipped batch's certificate was not filled in"
    filled = served(later[3].request_id)
    assert filled is not None
    verify(decode_certificate(filled.certificate), config, later[3])

    def voted(c) -> bool:  # type: ignore[no-untyped-def]
        return victim in {v.replica_id for v in c.certificate.leaf.votes}

    after = _certify_in_turn(group, load, [digits_request(config, "down", f"after-{i}", X[i]) for i in range(60)], until=voted)
    assert voted(after[-1]), f"replica {victim} did not take part again after its restart"


def test_certificates_a_crash_lost_are_rebuilt_when_the_replica_starts(group: LocalGroup, digits: tuple[np.ndarray, np.ndarray]) -> None:
    """A replica answers a client once a certificate is built and writes it afterwards without
    an fsync of its own; a crash can lose those writes. Simulated here by deleting the stored
    certificates of its last batches while it is down: it rebuilds them from the committed
    batches before it serves look-ups."""
    assert group.config is not None
    X, _ = digits
    load = Load(group.config, group.addresses, X, client_id="rebuild")
    certified = _certify_in_turn(group, load, [digits_request(group.config, "rebuild", f"b-{i}", X[i]) for i in range(6)])
    primary = current_primary(group)
    victim = next(r for r in range(group.n) if r != primary)
    seqs = sorted({c.certificate.header.seq for c in certified})
    assert wait_until(lambda: (status(group.replicas[victim].address) or api.StatusReply()).executed_seq >= seqs[-1], 20)
    group.stop_replica(victim)
    path = group.data_dir / f"replica-{victim}" / "replica.sqlite"
    with sqlite3.connect(path) as db:
        lost = db.execute("DELETE FROM certificates WHERE seq >= ?", (seqs[0],)).rowcount
    assert lost >= 6
    group.start_replica(victim)
    with grpc.insecure_channel(group.replicas[victim].address) as channel:
        stub = api_grpc.ReplicaStub(channel)
        for c in certified:
            reply = stub.GetCertificate(api.GetCertificateRequest(client_id="rebuild", request_id=c.certificate.leaf.request_id), timeout=10)
            rebuilt = decode_certificate(reply.certificate)
            verify(rebuilt, group.config)
            assert rebuilt.header == c.certificate.header and rebuilt.leaf == c.certificate.leaf

    # leave the group whole for the tests after this one: the restarted replica catches up and
    # its votes are in new certificates again
    def voted(c) -> bool:  # type: ignore[no-untyped-def]
        return victim in {v.replica_id for v in c.certificate.leaf.votes}

    after = _certify_in_turn(group, load, [digits_request(group.config, "rebuild", f"after-{i}", X[i]) for i in range(60)], until=voted)
    assert voted(after[-1]), f"replica {victim} did not take part again after its restart"
