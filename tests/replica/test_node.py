"""replica/node.py in one process, without Triton or peers: how the runtime answers waiting
clients for what the consensus core reports."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import grpc.aio
import numpy as np
import pytest

from certs.batch import Leaf
from certs.certificate import QuorumSignature, decode_certificate, encode_certificate
from certs.config import GroupConfig
from certs.keys import load_private_key
from certs.outputs import quantise
from certs.policy import Vote, decide
from certs.request import InferenceRequest
from certs.verify import verify
from consensus.messages import Commit, Proposal, ProposalEntry, VoteRef
from consensus.ready import CommittedBatch, Ready, ViewRecord
from marketplace.local import LocalGroup
from marketplace.models import held_out_digits
from certs.wire import request_to_proto
from replica.config import AdmissionLimits, load_replica_config
from protos import replica_api_pb2 as api
from protos import replica_api_pb2_grpc as api_grpc
from replica import admission
from replica import node as node_module
from replica.archive import ArchiveBusyError
from replica.node import Certified, ReplicaError, ReplicaNode, ReplicaOverloadedError
from replica.service import ReplicaService
from replica.storage import CertificateRow
from tests.certs.helpers import Group, certify, header_for, sign_commit
from tests.replica.load import digits_request


def test_clients_waiting_on_requests_a_snapshot_executed_are_told_at_once_to_ask_another_replica(
    tmp_path: Path, digits_packages: list[Path]
) -> None:
    """A replica that catches up by a snapshot never sees the batches inside it, so it can never
    certify their requests. Its clients waiting on one of them hear so as soon as the core
    reports it (ready().executed_unseen), not at their 30 s timeout; other clients keep waiting."""
    group = LocalGroup(tmp_path / "group", model_packages=digits_packages)
    config = group.prepare()
    X, _ = held_out_digits(0)
    skipped = digits_request(config, "client", "skipped", X[0])
    other = digits_request(config, "client", "other", X[1])

    async def scenario() -> tuple[BaseException | None, BaseException | None, bool]:
        node = ReplicaNode(load_replica_config(group.data_dir / "replica-3.toml"))
        try:
            _, skipped_first = node.submit(skipped, fanout=True)
            _, skipped_again = node.submit(skipped, fanout=True)  # a retry waits on the same key
            _, waiting = node.submit(other, fanout=True)
            waiting.add_done_callback(lambda f: f.exception())  # failed by stop() below: expected
            node._handle(Ready(executed_unseen=[skipped.key, ("client", "never-submitted")]))
            done, _ = await asyncio.wait([skipped_first, skipped_again], timeout=10)
            assert done == {skipped_first, skipped_again}
            await asyncio.sleep(0.1)
            return skipped_first.exception(), skipped_again.exception(), waiting.done()
        finally:
            await node.stop()

    first, again, other_done = asyncio.run(scenario())
    for error in (first, again):
        assert isinstance(error, ReplicaError) and "ask another replica" in str(error)
    assert not other_done


def test_a_client_waiting_on_a_request_a_snapshot_executed_gets_its_certificate_from_a_peer(
    tmp_path: Path, digits_packages: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """The peer certificate path: a forged certificate from one peer is passed over, the
    genuine one from the next is handed to the waiting client and kept for later look-ups."""
    group, signing, request, leaf = _group_and_leaf(tmp_path, digits_packages, "in-snapshot", row=2, label=4)
    config = signing.config
    (genuine,) = certify(signing, [leaf], seq=40)
    first = genuine.quorum[0]
    forged = dataclasses.replace(genuine, quorum=(QuorumSignature(first.replica_id, bytes(64)),) + genuine.quorum[1:])
    answers = {0: encode_certificate(forged), 1: encode_certificate(genuine)}

    async def serve(replica_id: int) -> grpc.aio.Server:
        async def get_certificate(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return api.SubmitReply(status=api.CERTIFIED, certificate=answers[replica_id]).SerializeToString()

        return await _peer_server(config.member(replica_id).address, "GetCertificate", get_certificate)  # type: ignore[union-attr]

    async def scenario() -> tuple[Certified, Certified | None]:
        peers = [await serve(r) for r in answers]
        node = ReplicaNode(load_replica_config(group.data_dir / "replica-3.toml"))
        try:
            _, waiting = node.submit(request, fanout=True)
            node.core.state.executed[request.key] = (40, request.digest)  # as a snapshot would
            node._handle(Ready(executed_unseen=[request.key]))
            certified = await asyncio.wait_for(waiting, 20)
            return certified, await node.get_certificate(request.client_id, request.request_id)
        finally:
            await node.stop()
            for server in peers:
                await server.stop(None)

    with caplog.at_level(logging.INFO, logger="quorumserve.replica"):
        certified, stored = asyncio.run(scenario())
    assert any("replica 0 sent an unusable certificate" in r.getMessage() for r in caplog.records)
    assert any("fetched from replica 1" in r.getMessage() for r in caplog.records)
    assert certified.seq == 40
    assert decode_certificate(certified.certificate) == genuine
    verify(decode_certificate(certified.certificate), config, request)
    assert stored is not None and stored.certificate == certified.certificate


def test_a_request_arriving_after_its_batch_executed_here_gets_this_replicas_certificate_not_a_peers(
    tmp_path: Path, digits_packages: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """The group can order a request on the other replicas' votes before the client's copy
    reaches this replica. Arriving between the batch's execution in the core and the build of
    its certificates, it is answered with the certificate this replica builds (and stores), not
    one fetched from a peer: no peer runs here, so a fetch would fail the client instead."""
    group, signing, request, leaf = _group_and_leaf(tmp_path, digits_packages, "late", row=3, label=6)
    config = signing.config
    seq = 7
    header = header_for(signing, [leaf], seq=seq)
    commits = tuple(
        Commit(q.replica_id, config.epoch, 0, seq, header.batch_digest, q.signature)
        for q in (sign_commit(signing, header, r) for r in (0, 1, 2))
    )
    entry = ProposalEntry(leaf, tuple(VoteRef(v.replica_id, 1) for v in leaf.votes))
    batch = CommittedBatch(header, Proposal((entry,)), commits, (), ())

    async def scenario() -> tuple[Certified, Certified | None, str]:
        node = ReplicaNode(load_replica_config(group.data_dir / "replica-3.toml"))
        consumer = asyncio.get_running_loop().create_task(node._consume_ready())
        try:
            # the runtime is waiting on a durable write (a slow disk) when the core executes the
            # batch: its Ready is queued behind, and its certificates are built only after that
            node._io.submit(time.sleep, 0.3)
            pending = [Ready(committed=[batch]), Ready(persist=[ViewRecord(0)])]
            node.core.has_ready = lambda: bool(pending)  # type: ignore[method-assign]
            node.core.ready = pending.pop  # type: ignore[method-assign]
            node._drain()
            await asyncio.sleep(0.05)  # the write is under way
            node.core.state.executed[request.key] = (seq, request.digest)
            node._drain()
            outcome, answer = node.submit(request, fanout=True)
            certified = await asyncio.wait_for(answer, 20)
            return certified, await node.get_certificate(request.client_id, request.request_id), outcome.status
        finally:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
            await node.stop()

    with caplog.at_level(logging.INFO, logger="quorumserve.replica"):
        certified, stored, status = asyncio.run(scenario())
    assert status == "executed"
    assert certified.seq == seq
    verify(decode_certificate(certified.certificate), config, request)
    assert stored is not None and stored.certificate == certified.certificate
    assert not any("fetched from replica" in r.getMessage() or "no peer gave" in r.getMessage() for r in caplog.records)


def test_a_replica_fills_the_gaps_in_its_archive_from_peers_and_asks_again_for_what_none_had(
    tmp_path: Path, digits_packages: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Gaps are executed requests with no certificate here (batches a snapshot skipped), found
    in the store, so a restart in the middle loses nothing. Held certificates are not asked
    for, far-apart gaps are separate ranges, a peer sending a forgery is left for the next,
    and what no peer has is asked for again later until a peer has it."""
    monkeypatch.setattr(node_module, "ARCHIVE_RETRY_FIRST_S", 0.1)
    group = LocalGroup(tmp_path / "group", model_packages=digits_packages)
    config = group.prepare()
    X, _ = held_out_digits(0)
    keys = {i: load_private_key(group.data_dir / "keys" / f"replica-{i}.key") for i in range(config.n)}
    top_k = min(config.task.top_k, len(config.task.class_labels))
    votes = tuple(Vote(r, 1, quantise(np.eye(len(config.task.class_labels))[4] * 0.9 + 0.01, top_k)) for r in (0, 1, 2))

    def leaf(request_id: str, row: int) -> tuple[Leaf, bytes]:
        request = digits_request(config, "client", request_id, X[row])
        decision = decide(config.policy, config.f, config.quorum_size, votes, top_k)
        return Leaf(request.digest, "client", request_id, (), config.policy.describe(config.f), votes, decision), request.digest

    (held, held_digest), (lacking, lacking_digest), (far, far_digest) = leaf("held", 0), leaf("lacking", 1), leaf("far", 2)
    batch_40 = certify(Group(config, keys), [held, lacking], seq=40)
    (cert_far,) = certify(Group(config, keys), [far], seq=90)
    genuine_lacking = next(c for c in batch_40 if c.leaf.request_id == "lacking")
    forged = dataclasses.replace(genuine_lacking, quorum=(QuorumSignature(genuine_lacking.quorum[0].replica_id, bytes(64)),) + genuine_lacking.quorum[1:])
    archives = {0: [c for c in batch_40 if c is not genuine_lacking] + [forged], 1: list(batch_40)}  # nobody has "far" yet
    asked: dict[int, list[tuple[int, int]]] = {0: [], 1: []}

    async def serve(replica_id: int) -> grpc.aio.Server:
        async def list_certificates(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            request = api.CertificateRangeRequest.FromString(raw)
            asked[replica_id].append((request.after_seq, request.through_seq))
            page = [encode_certificate(c) for c in archives[replica_id] if request.after_seq < c.header.seq <= request.through_seq]
            return api.CertificateRangeReply(certificates=page, next_after_seq=request.through_seq, more=False).SerializeToString()

        return await _peer_server(config.member(replica_id).address, "ListCertificates", list_certificates)  # type: ignore[union-attr]

    def executed_without_certificate(node: ReplicaNode) -> None:
        # as a state-transfer snapshot leaves the store: executed, and only "held" certified
        node.store._db.executemany(
            "INSERT INTO executed (client_id, request_id, seq, request_digest) VALUES (?, ?, ?, ?)",
            [("client", "held", 40, held_digest), ("client", "lacking", 40, lacking_digest), ("client", "far", 90, far_digest)],
        )
        node.store.put_certificates(40, [CertificateRow("client", "held", held_digest, encode_certificate(batch_40[0]))])

    async def until(condition: Callable[[], Awaitable[bool]]) -> None:
        for _ in range(200):
            if await condition():
                return
            await asyncio.sleep(0.05)
        raise AssertionError("not within 10 s")

    async def scenario() -> None:
        peers = [await serve(r) for r in archives]
        node = ReplicaNode(load_replica_config(group.data_dir / "replica-3.toml"))
        executed_without_certificate(node)
        repair = asyncio.get_running_loop().create_task(node._repair_archive())
        try:
            await until(lambda: _has(node, "lacking"))
            stored = decode_certificate((await node.get_certificate("client", "lacking")).certificate)  # type: ignore[union-attr]
            assert stored == genuine_lacking  # the forgery from replica 0 was not kept
            assert not await _has(node, "far")
            assert asked[0][:2] == [(39, 40), (89, 90)] and (39, 40) in asked[1]  # two ranges; 0 left after the forgery
            archives[1].append(cert_far)  # a peer has it now: the next pass takes it
            await until(lambda: _has(node, "far"))
            assert node.store.certificate_gaps(0, 10) == []
            asked_before = {r: len(a) for r, a in asked.items()}
            node._archive_gaps.set()  # a later snapshot: nothing left to ask for
            await asyncio.sleep(0.3)
            assert {r: len(a) for r, a in asked.items()} == asked_before
        finally:
            repair.cancel()
            await asyncio.gather(repair, return_exceptions=True)
            await node.stop()
            for server in peers:
                await server.stop(None)

    asyncio.run(scenario())


def test_the_tick_loop_sleeps_while_the_core_is_quiet_and_ticks_every_interval_while_it_is_busy(
    tmp_path: Path, digits_packages: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quiet core (nothing pending, in flight or armed) is ticked at most every
    QUIET_TICK_INTERVAL_S, by the ticks that passed, so an idle replica stops waking 200 times a
    second while its clock still keeps time; anything reaching the core wakes the loop, and wakes
    closer together than a tick still add up to ticks, and its clock is brought up to date before
    anything is handed to it; a busy core is ticked one tick at a time."""
    group = LocalGroup(tmp_path / "group", model_packages=digits_packages)
    group.prepare()
    interval_s = 0.005  # the shipped tick_interval_ms

    async def scenario() -> None:
        node = ReplicaNode(load_replica_config(group.data_dir / "replica-1.toml"))
        assert node.group.params.tick_interval_ms / 1000 == interval_s
        calls: list[int] = []
        real_tick = node.core.tick

        def counting_tick(elapsed_ticks: int = 1) -> None:
            calls.append(elapsed_ticks)
            real_tick(elapsed_ticks)

        busy = False
        node.core.tick = counting_tick  # type: ignore[method-assign]
        node.core.quiet = lambda: not busy  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()
        ticker = loop.create_task(node._tick_loop())
        try:
            started, clock = loop.time(), node.core.now
            await asyncio.sleep(0.55)
            elapsed_s = loop.time() - started
            assert len(calls) <= 6  # one wake per 0.1 s at most; the busy loop makes ~100
            # the clock keeps time: only the wait still under way is not counted yet
            assert node.core.now - clock >= int((elapsed_s - node_module.QUIET_TICK_INTERVAL_S) / interval_s) - 1

            calls.clear()
            started, clock = loop.time(), node.core.now
            for _ in range(200):  # a chatty peer: something reaches the core every millisecond
                node._drain()
                await asyncio.sleep(0.001)
            elapsed_s = loop.time() - started
            assert node.core.now - clock >= int((elapsed_s - node_module.QUIET_TICK_INTERVAL_S) / interval_s) - 1
            assert sum(calls) == node.core.now - clock

            # from here a quiet core would sleep for good, so only the wake can make it tick
            monkeypatch.setattr(node_module, "QUIET_TICK_INTERVAL_S", 1e6)
            await asyncio.sleep(0.25)  # the wait under way (0.1 s at most) ends, the next is the long one
            # what reaches a sleeping core finds its clock brought up to date first, so the
            # core stamps its arrival with the time it came, not the time of the last tick
            clock = node.core.now
            await asyncio.sleep(0.1)
            node._on_peer_messages(2, [])
            assert node.core.now - clock >= int(0.1 / interval_s) - 1
            await asyncio.sleep(0.05)
            calls.clear()
            busy = True
            node._drain()  # as whatever made it busy does
            await asyncio.wait_for(_until(lambda: len(calls) >= 20), 30)
            assert calls[1:] == [1] * (len(calls) - 1)  # after the wake, one tick per interval
        finally:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
            await node.stop()

    asyncio.run(scenario())


def _group_and_leaf(
    tmp_path: Path, packages: list[Path], request_id: str, *, row: int, label: int
) -> tuple[LocalGroup, Group, InferenceRequest, Leaf]:
    """A prepared local group, its config with every replica's key (to sign as the group
    would), a client's digits request (held-out row `row`) and its leaf, on which replicas 0, 1
    and 2 all voted `label`."""
    group = LocalGroup(tmp_path / "group", model_packages=packages)
    config = group.prepare()
    X, _ = held_out_digits(0)
    request = digits_request(config, "client", request_id, X[row])
    keys = {i: load_private_key(group.data_dir / "keys" / f"replica-{i}.key") for i in range(config.n)}
    return group, Group(config, keys), request, _agreed_leaf(config, request, label=label)


def _agreed_leaf(config: GroupConfig, request: InferenceRequest, *, label: int) -> Leaf:
    """The leaf of `request` on which replicas 0, 1 and 2 all voted `label`."""
    top_k = min(config.task.top_k, len(config.task.class_labels))
    votes = tuple(Vote(r, 1, quantise(np.eye(len(config.task.class_labels))[label] * 0.9 + 0.01, top_k)) for r in (0, 1, 2))
    return Leaf(request.digest, request.client_id, request.request_id, (), config.policy.describe(config.f), votes,
                decide(config.policy, config.f, config.quorum_size, votes, top_k))


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.001)


async def _has(node: ReplicaNode, request_id: str) -> bool:
    return await node.get_certificate("client", request_id) is not None


async def _peer_server(address: str, method: str, handler: Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]) -> grpc.aio.Server:
    """A stand-in peer on a member's address answering one Replica method (raw bytes both ways)."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "quorumserve.v1.Replica", {method: grpc.unary_unary_rpc_method_handler(handler)}),))
    server.add_insecure_port(address)
    await server.start()
    return server


def test_past_its_admission_limits_a_replica_refuses_new_requests_at_once_with_a_retry_hint(
    tmp_path: Path, digits_packages: list[Path]
) -> None:
    """A replica holding [admission] pending_requests_max requests (or pending_bytes_max bytes
    of inputs) not yet executed refuses the next new one: ReplicaOverloadedError in the node,
    OVERLOADED on the submit streams and RESOURCE_EXHAUSTED with the pushback trailer on unary
    Submit. A client asking again for ids the replica holds is still answered (it adds nothing),
    and the refusals are counted."""
    group = LocalGroup(tmp_path / "group", model_packages=digits_packages)
    config = group.prepare()
    X, _ = held_out_digits(0)
    requests = [digits_request(config, "client", f"r-{i}", X[i]) for i in range(5)]
    base = load_replica_config(group.data_dir / "replica-2.toml")

    async def by_count() -> tuple[list[object], int]:
        node = ReplicaNode(dataclasses.replace(base, admission=AdmissionLimits(pending_requests_max=3)))
        outcomes: list[object] = []
        try:
            for request in requests[:4] + [requests[0]]:
                try:
                    outcome, future = node.submit(request, fanout=True)
                    future.add_done_callback(lambda f: f.cancelled() or f.exception())  # failed by stop()
                    outcomes.append(outcome.status)
                except ReplicaOverloadedError as exc:
                    outcomes.append(exc)
            return outcomes, int(node.metrics.labels(node.metrics.requests, outcome="overloaded")._value.get())
        finally:
            await node.stop()

    outcomes, counted = asyncio.run(by_count())
    assert outcomes[:3] == ["accepted"] * 3 and outcomes[4] == "pending"  # the retry of r-0 is let in
    refused = outcomes[3]
    assert isinstance(refused, ReplicaOverloadedError) and counted == 1
    assert "3 requests" in str(refused) and "wait to be executed; the limit is 3 requests" in str(refused)
    assert admission.RETRY_AFTER_MIN_MS <= refused.retry_after_ms <= admission.RETRY_AFTER_MAX_MS

    async def by_bytes_over_the_wire() -> tuple[list[api.SubmitReply], grpc.aio.AioRpcError]:
        size = requests[0].size_bytes
        node = ReplicaNode(dataclasses.replace(base, admission=AdmissionLimits(pending_bytes_max=2 * size)))
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((ReplicaService(node).handler(),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = api_grpc.ReplicaStub(channel)
                batch = api.SubmitBatchRequest(requests=[api.SubmitRequest(request=request_to_proto(r), fanout=1, timeout_ms=300) for r in requests[:3]])
                replies = (await stub.SubmitBatch(batch, timeout=10)).replies
                try:
                    await stub.Submit(api.SubmitRequest(request=request_to_proto(requests[3]), fanout=1), timeout=10)
                except grpc.aio.AioRpcError as exc:
                    return list(replies), exc
                raise AssertionError("a unary Submit past the limit was taken")
        finally:
            await server.stop(None)
            await node.stop()

    replies, error = asyncio.run(by_bytes_over_the_wire())
    assert [r.status for r in replies] == [api.TIMEOUT, api.TIMEOUT, api.OVERLOADED]  # two held (no peers: never certified)
    assert replies[2].retry_after_ms > 0 and "bytes" in replies[2].error and replies[2].request_id == "r-2"
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "overloaded" in (error.details() or "")
    assert any(key == "grpc-retry-pushback-ms" and int(value) > 0 for key, value in error.trailing_metadata() or ())


def test_a_request_that_would_outwait_its_timeout_behind_the_backlog_is_refused_one_that_would_not_is_taken(
    tmp_path: Path, digits_packages: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under the hard limits too, a replica refuses a new request when what it holds, at the
    rate it executed lately, would keep the request waiting more than half its client's
    timeout: the client hears at once rather than when it gives up. Without a recent rate it
    does not guess."""
    monkeypatch.setattr(admission, "WAIT_ESTIMATE_HELD_MIN", 4)
    group = LocalGroup(tmp_path / "group", model_packages=digits_packages)
    config = group.prepare()
    X, _ = held_out_digits(0)
    requests = [digits_request(config, "client", f"w-{i}", X[i]) for i in range(8)]

    async def scenario() -> list[object]:
        node = ReplicaNode(load_replica_config(group.data_dir / "replica-1.toml"))
        outcomes: list[object] = []

        def submit(request: InferenceRequest, timeout_s: float) -> None:
            try:
                outcome, future = node.submit(request, fanout=True, timeout_s=timeout_s)
                future.add_done_callback(lambda f: f.cancelled() or f.exception())  # failed by stop()
                outcomes.append(outcome.status)
            except ReplicaOverloadedError as exc:
                outcomes.append(exc)

        try:
            for request in requests[:5]:
                submit(request, 1.0)  # 4 held and no rate yet: taken
            now_s = time.monotonic()
            node._drain_rate.add(0, now_s - 1.0)
            node._drain_rate.add(2, now_s)  # 2 requests/s: the 5 held keep a new one 2.5 s
            submit(requests[5], 4.0)
            submit(requests[6], 6.0)
            submit(requests[0], 1.0)  # held already: answered, whatever the wait
            return outcomes
        finally:
            await node.stop()

    outcomes = asyncio.run(scenario())
    assert outcomes[:5] == ["accepted"] * 5 and outcomes[6:] == ["accepted", "pending"]
    refused = outcomes[5]
    assert isinstance(refused, ReplicaOverloadedError)
    assert "waiting about 2.5 s" in str(refused) and "more than 2.0 s of the request's 4.0 s timeout" in str(refused)
    assert refused.retry_after_ms >= 400  # until the backlog would fit half its timeout


def test_certificate_look_ups_beyond_the_cap_are_refused_at_once_and_the_rest_answered(
    tmp_path: Path, digits_packages: list[Path]
) -> None:
    """GetCertificate runs on the thread that builds every certificate: a caller flooding it
    is refused (ArchiveBusyError, RESOURCE_EXHAUSTED on the wire) beyond CERTIFICATE_LOOKUPS_MAX
    waiting look-ups, instead of queueing ahead of the builds; the look-ups let in are answered."""
    group = LocalGroup(tmp_path / "group", model_packages=digits_packages)
    group.prepare()
    extra = 5

    async def scenario() -> tuple[list[object], int]:
        node = ReplicaNode(load_replica_config(group.data_dir / "replica-1.toml"))
        gate = threading.Event()
        try:
            node._certificates.submit(gate.wait)  # the certificates thread is busy
            calls = [asyncio.ensure_future(node.get_certificate("flood", f"r-{i}")) for i in range(node_module.CERTIFICATE_LOOKUPS_MAX + extra)]
            await asyncio.sleep(0.2)
            refused_early = sum(1 for c in calls if c.done() and isinstance(c.exception(), ArchiveBusyError))
            gate.set()
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            return outcomes, refused_early
        finally:
            gate.set()
            await node.stop()

    outcomes, refused_early = asyncio.run(scenario())
    refused = [o for o in outcomes if isinstance(o, ArchiveBusyError)]
    assert len(refused) == refused_early == extra  # refused at once, not after the wait
    assert all("certificate look-ups waiting" in str(o) and o.retry_after_s > 0 for o in refused)
    assert [o for o in outcomes if not isinstance(o, ArchiveBusyError)] == [None] * node_module.CERTIFICATE_LOOKUPS_MAX  # none stored


def test_a_slow_disk_shows_in_the_durable_write_metric_apart_from_what_the_ordering_waited(
    tmp_path: Path, digits_packages: list[Path]
) -> None:
    """`quorumserve_persist_write_seconds` is the store's own time for each write of consensus
    records, fsync included, so an operator can tell a slow disk from a busy replica;
    `quorumserve_persist_latency_seconds` is what the ordering waited, that and the hop to the
    I/O thread. A disk taking 30 ms a write shows in both, and the write is on disk."""
    group = LocalGroup(tmp_path / "group", model_packages=digits_packages)
    group.prepare()
    write_s = 0.03

    async def scenario() -> tuple[float | None, ...]:
        node = ReplicaNode(load_replica_config(group.data_dir / "replica-1.toml"))
        real_persist = node.store.persist

        def slow_persist(records: list[object]) -> None:
            time.sleep(write_s)
            real_persist(records)  # type: ignore[arg-type]

        node.store.persist = slow_persist  # type: ignore[method-assign,assignment]
        labels = {"replica": "1", "group": node.group.group_id}
        sample = node.metrics.registry.get_sample_value
        consumer = asyncio.get_running_loop().create_task(node._consume_ready())
        try:
            node._ready_queue.put_nowait(Ready(persist=[ViewRecord(7)]))
            for _ in range(500):
                if sample("quorumserve_persist_latency_seconds_count", labels):
                    break
                await asyncio.sleep(0.01)
            stored = [r for r in node.store.load_records() if isinstance(r, ViewRecord)]
            assert stored == [ViewRecord(7)]
            return (
                sample("quorumserve_persist_write_seconds_count", labels),
                sample("quorumserve_persist_write_seconds_sum", labels),
                sample("quorumserve_persist_latency_seconds_count", labels),
                sample("quorumserve_persist_latency_seconds_sum", labels),
            )
        finally:
            consumer.cancel()
            await node.stop()

    writes, write_sum_s, waits, wait_sum_s = asyncio.run(scenario())
    assert writes == 1 and waits == 1
    assert write_sum_s is not None and wait_sum_s is not None
    assert write_s <= write_sum_s <= wait_sum_s
