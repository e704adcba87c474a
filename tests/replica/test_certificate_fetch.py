"""replica/certificate_fetch.py: a certificate fetched from peers over real gRPC is used only
when it verifies and is for exactly the request asked about; lying, silent and empty-handed
peers are passed over."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable

import grpc
import grpc.aio
import pytest
from google.protobuf.message import Message

from certs.certificate import Certificate, QuorumSignature, encode_certificate
from protos import replica_api_pb2 as api
from replica import certificate_fetch
from replica.certificate_fetch import PeerCertificates
from tests.certs.helpers import cached_batch, make_batch

BATCH = cached_batch()
WANTED = BATCH.accountable[2]
OWN_ID = 3

Answer = Callable[[api.GetCertificateRequest, grpc.aio.ServicerContext], Awaitable[api.SubmitReply]]


def _certified(certificate: Certificate | bytes) -> api.SubmitReply:
    raw = certificate if isinstance(certificate, bytes) else encode_certificate(certificate)
    return api.SubmitReply(status=api.CERTIFIED, certificate=raw)


def _forged(certificate: Certificate) -> Certificate:
    first = certificate.quorum[0]
    flipped = QuorumSignature(first.replica_id, bytes([first.signature[0] ^ 1]) + first.signature[1:])
    return dataclasses.replace(certificate, quorum=(flipped,) + certificate.quorum[1:])


async def _not_found(request: api.GetCertificateRequest, context: grpc.aio.ServicerContext) -> api.SubmitReply:
    await context.abort(grpc.StatusCode.NOT_FOUND, "no certificate")
    raise AssertionError("unreachable")


async def _garbage(request: api.GetCertificateRequest, context: grpc.aio.ServicerContext) -> api.SubmitReply:
    return _certified(b"\xff\x00not a certificate")


async def _someone_elses(request: api.GetCertificateRequest, context: grpc.aio.ServicerContext) -> api.SubmitReply:
    return _certified(BATCH.accountable[0])  # valid, but for another request


async def _forgery(request: api.GetCertificateRequest, context: grpc.aio.ServicerContext) -> api.SubmitReply:
    return _certified(_forged(WANTED))


async def _silent(request: api.GetCertificateRequest, context: grpc.aio.ServicerContext) -> api.SubmitReply:
    await asyncio.sleep(5)
    return _certified(WANTED)


async def _honest(request: api.GetCertificateRequest, context: grpc.aio.ServicerContext) -> api.SubmitReply:
    assert (request.client_id, request.request_id) == (WANTED.leaf.client_id, WANTED.leaf.request_id)
    return _certified(WANTED)


class _Peers:
    """One real gRPC server per peer, each answering one Replica method its own way."""

    def __init__(
        self,
        answers: dict[int, Callable[..., Awaitable[Message]]],
        method: str = "GetCertificate",
        request_type: type[Message] = api.GetCertificateRequest,
    ) -> None:
        self.answers = answers
        self.method = method
        self.request_type = request_type
        self.calls: dict[int, int] = {replica_id: 0 for replica_id in answers}
        self.addresses: dict[int, str] = {}
        self._servers: list[grpc.aio.Server] = []

    async def start(self) -> None:
        for replica_id, answer in self.answers.items():
            server = grpc.aio.server()
            server.add_generic_rpc_handlers((self._handler(replica_id, answer),))
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            self._servers.append(server)
            self.addresses[replica_id] = f"127.0.0.1:{port}"

    def _handler(self, replica_id: int, answer: Callable[..., Awaitable[Message]]) -> grpc.GenericRpcHandler:
        async def counted(request: Message, context: grpc.aio.ServicerContext) -> Message:
            self.calls[replica_id] += 1
            return await answer(request, context)

        return grpc.method_handlers_generic_handler(
            "quorumserve.v1.Replica",
            {
                self.method: grpc.unary_unary_rpc_method_handler(
                    counted, request_deserializer=self.request_type.FromString, response_serializer=lambda m: m.SerializeToString()
                )
            },
        )

    async def stop(self) -> None:
        for server in self._servers:
            await server.stop(None)


def _fetch(answers: dict[int, Answer]) -> tuple[certificate_fetch.FetchedCertificate | None, dict[int, int]]:
    async def scenario() -> tuple[certificate_fetch.FetchedCertificate | None, dict[int, int]]:
        peers = _Peers(answers)
        await peers.start()
        fetcher = PeerCertificates(OWN_ID, lambda: peers.addresses, {BATCH.config.epoch: BATCH.config}.get)
        try:
            leaf = WANTED.leaf
            return await fetcher.fetch(leaf.client_id, leaf.request_id, (WANTED.header.seq, leaf.request_digest)), peers.calls
        finally:
            await fetcher.close()
            await peers.stop()

    return asyncio.run(scenario())


@pytest.fixture(autouse=True)
def _quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(certificate_fetch, "FETCH_TIMEOUT_S", 0.5)
    monkeypatch.setattr(certificate_fetch, "FETCH_RETRY_PAUSE_S", 0.01)


def test_the_first_certificate_that_verifies_for_the_request_is_used_and_liars_are_passed_over() -> None:
    fetched, calls = _fetch({0: _not_found, 1: _garbage, 2: _someone_elses, OWN_ID: _honest, 4: _forgery, 5: _silent, 6: _honest})
    assert fetched is not None
    assert fetched.replica_id == 6 and fetched.certificate == WANTED
    assert fetched.encoded == encode_certificate(WANTED)
    assert calls[OWN_ID] == 0  # never asks itself
    assert all(calls[r] == 1 for r in (0, 1, 2, 4, 5, 6))


def test_a_peer_still_building_the_certificate_is_asked_again() -> None:
    answered: list[int] = []

    async def late(request: api.GetCertificateRequest, context: grpc.aio.ServicerContext) -> api.SubmitReply:
        answered.append(1)
        if len(answered) == 1:
            return await _not_found(request, context)
        return await _honest(request, context)

    fetched, calls = _fetch({0: late, 1: _not_found})
    assert fetched is not None and fetched.replica_id == 0
    assert calls == {0: 2, 1: 1}


def test_nothing_usable_anywhere_gives_none_after_every_round() -> None:
    fetched, calls = _fetch({0: _not_found, 1: _forgery, 2: _someone_elses})
    assert fetched is None
    assert calls == {r: certificate_fetch.FETCH_ROUNDS for r in (0, 1, 2)}


# -- a range of batches (ListCertificates) -----------------------------------------------------

SECOND = make_batch(BATCH.group, 4, seq=2, request_offset=len(BATCH.leaves))
RANGE = list(BATCH.accountable) + list(SECOND.accountable)  # seqs 1 and 2
EXPECTED = {(c.leaf.client_id, c.leaf.request_id): (c.header.seq, c.leaf.request_digest) for c in RANGE}


def _lister(certificates: list[Certificate]) -> Callable[[api.CertificateRangeRequest, grpc.aio.ServicerContext], Awaitable[api.CertificateRangeReply]]:
    """A peer's ListCertificates over `certificates`, one batch (seq) per reply."""

    async def list_certificates(request: api.CertificateRangeRequest, context: grpc.aio.ServicerContext) -> api.CertificateRangeReply:
        seqs = sorted({c.header.seq for c in certificates if request.after_seq < c.header.seq <= request.through_seq})
        if not seqs:
            return api.CertificateRangeReply(next_after_seq=request.through_seq, more=False)
        page = [encode_certificate(c) for c in certificates if c.header.seq == seqs[0]]
        return api.CertificateRangeReply(certificates=page, next_after_seq=seqs[0], more=len(seqs) > 1)

    return list_certificates


def _fetch_range(
    listers: dict[int, Callable[..., Awaitable[api.CertificateRangeReply]]],
    expected: dict[tuple[str, str], tuple[int, bytes]] = EXPECTED,
) -> tuple[list[tuple[int, Certificate]], dict[int, int]]:
    async def scenario() -> tuple[list[tuple[int, Certificate]], dict[int, int]]:
        peers = _Peers(listers, "ListCertificates", api.CertificateRangeRequest)  # type: ignore[arg-type]
        await peers.start()
        fetcher = PeerCertificates(OWN_ID, lambda: peers.addresses, {BATCH.config.epoch: BATCH.config}.get)
        kept: list[tuple[int, Certificate]] = []

        async def keep(page: list[certificate_fetch.FetchedCertificate]) -> None:
            kept.extend((f.replica_id, f.certificate) for f in page)

        try:
            count = await fetcher.fetch_range(0, 2, expected, keep)
            assert count == len(kept)
            return kept, peers.calls
        finally:
            await fetcher.close()
            await peers.stop()

    return asyncio.run(scenario())


def test_a_range_is_paged_through_and_every_certificate_checked() -> None:
    kept, calls = _fetch_range({0: _lister(RANGE)})
    assert [c for _, c in kept] == RANGE
    assert calls == {0: 2}  # a page per batch here


def test_certificates_in_the_range_that_are_held_already_are_passed_over_and_the_peer_kept() -> None:
    """A replica that lacks only some of a range's certificates (the rest it stored before a
    restart) takes those from the first peer; the others on the peer's pages cost nothing and
    do not make it leave that peer."""
    lacking = {key: value for i, (key, value) in enumerate(EXPECTED.items()) if i % 3 == 0}
    kept, calls = _fetch_range({0: _lister(RANGE), 1: _lister(RANGE)}, lacking)
    assert sorted(c.leaf.request_id for _, c in kept) == sorted(request_id for _, request_id in lacking)
    assert {peer for peer, _ in kept} == {0}
    assert calls == {0: 2, 1: 0}


def test_a_peer_sending_anything_unusable_is_left_and_the_next_one_fills_the_gaps() -> None:
    """Peer 0 sends a forgery inside its first page, peer 1 lacks batch 2, peer 2 someone's
    certificate from outside the range, peer 4 everything: each certificate is kept once, only
    checked ones, and every expected one arrives in the end."""
    forged = _forged(RANGE[1])
    outside = make_batch(BATCH.group, 1, seq=9, request_offset=50).accountable[0]
    kept, calls = _fetch_range({
        0: _lister([RANGE[0], forged] + RANGE[2:]),
        1: _lister(list(BATCH.accountable)),
        2: _lister([outside]),
        OWN_ID: _lister(RANGE),
        4: _lister(RANGE),
    })
    assert sorted((c.header.seq, c.leaf.request_id) for _, c in kept) == sorted((c.header.seq, c.leaf.request_id) for c in RANGE)
    assert all(c.quorum == next(r for r in RANGE if r.leaf == c.leaf).quorum for _, c in kept)  # no forgery kept
    by_peer = {r: sum(1 for p, _ in kept if p == r) for r in (0, 1, 4)}
    assert by_peer == {0: 7, 1: 1, 4: 4}  # 0: batch 1 less the forgery; 1: the forged one's genuine copy; 4: batch 2
    assert calls[0] == 1 and calls[2] == 1 and calls[OWN_ID] == 0


def test_a_peer_pacing_its_archive_is_asked_again_after_the_pushback_it_names_not_left() -> None:
    """A peer over its archive rate (replica/archive.py) answers RESOURCE_EXHAUSTED with a
    pushback; the filler waits that long and asks the same peer for the same page, instead of
    starting the whole range again at the next peer."""
    serve = _lister(RANGE)
    asked: list[int] = []

    async def pacing(request: api.CertificateRangeRequest, context: grpc.aio.ServicerContext) -> api.CertificateRangeReply:
        asked.append(request.after_seq)
        if len(asked) in (1, 3):  # the first page, then the second, each refused once
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", trailing_metadata=(("grpc-retry-pushback-ms", "20"),))
        return await serve(request, context)

    kept, calls = _fetch_range({0: pacing, 1: _lister(RANGE)})
    assert [c for _, c in kept] == RANGE and {peer for peer, _ in kept} == {0}
    assert asked == [0, 0, 1, 1]
    assert calls == {0: 4, 1: 0}


def test_a_resource_exhausted_reply_naming_no_wait_is_not_asked_again() -> None:
    """gRPC itself answers RESOURCE_EXHAUSTED for a message over its size limit, with no
    pushback: asking that peer again cannot help, so the next peer is asked."""

    async def oversized(request: api.CertificateRangeRequest, context: grpc.aio.ServicerContext) -> api.CertificateRangeReply:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "message larger than max")
        raise AssertionError("unreachable")

    kept, calls = _fetch_range({0: oversized, 1: _lister(RANGE)})
    assert [c for _, c in kept] == RANGE and {peer for peer, _ in kept} == {1}
    assert calls[0] == 1
