"""Replicas that misbehave on purpose (the test-only `misbehave` switch), as real processes.

A replica whose model lies is outvoted, and its signed wrong votes stay in the certificates as
non-repudiable proof of what it answered. A replica that signs two different vote batches under
one number leaves equivocation evidence that anyone can verify offline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from certs.certificate import decode_certificate
from certs.errors import CertificateError
from certs.evidence import decode_evidence, verify_evidence
from certs.verify import verify
from marketplace.local import LocalGroup
from marketplace.models import held_out_digits
from protos import replica_api_pb2 as api
from protos import replica_api_pb2_grpc as api_grpc
from tests.conftest import ALL_VOTES_PARAMS
from tests.replica.cluster_helpers import metric_sum, scrape, wait_until
from tests.replica.load import Load, digits_request

pytestmark = pytest.mark.processes
LIAR = 3


def _certify_many(group: LocalGroup, client_id: str, count: int) -> list:  # type: ignore[type-arg]
    assert group.config is not None
    X, _ = held_out_digits(0)
    load = Load(group.config, group.addresses, X, client_id=client_id)

    async def run() -> list:  # type: ignore[type-arg]
        channels = [grpc.aio.insecure_channel(a) for a in group.addresses]
        stubs = [api_grpc.ReplicaStub(c) for c in channels]
        try:
            requests = [digits_request(group.config, client_id, f"{client_id}-{i}", X[i]) for i in range(count)]
            return await asyncio.gather(*(load.certify(r, stubs) for r in requests))
        finally:
            for c in channels:
                await c.close()

    return asyncio.run(run())


@pytest.fixture(scope="module")
def lying_group(tmp_path_factory: pytest.TempPathFactory, digits_packages: list[Path]) -> Iterator[LocalGroup]:
    g = LocalGroup(
        tmp_path_factory.mktemp("lying"), model_packages=digits_packages, misbehave={LIAR: "wrong-labels"}, params=ALL_VOTES_PARAMS
    )
    try:
        g.start()
        yield g
    finally:
        g.stop()


def test_a_lying_replica_is_outvoted_and_its_signed_votes_are_kept(lying_group: LocalGroup) -> None:
    config = lying_group.config
    assert config is not None
    _, y = held_out_digits(0)
    # a first burst right after start-up can be ordered before a busy replica's votes arrive
    # (the primary waits 300 ms for them): serve one before counting
    _certify_many(lying_group, "warm-up", 8)
    certified = _certify_many(lying_group, "outvote", 30)
    correct = sum(int(verify(c.certificate, config, c.request).label == y[i]) for i, c in enumerate(certified))
    assert correct >= 27, f"{correct}/30 right: the liar changed results"
    liar_votes = [v for c in certified for v in c.certificate.leaf.votes if v.replica_id == LIAR]
    assert liar_votes, "the liar's votes never made it into a certificate"
    # its answers are shifted by one class: it disagrees with the certified label nearly always
    # (it can coincide when the honest models themselves disagree)
    disagreeing = [v for c in certified for v in c.certificate.leaf.votes if v.replica_id == LIAR and v.output.label != c.certificate.leaf.decision.label]
    assert len(disagreeing) >= 0.8 * len(liar_votes)

    # the accountable form served for audit carries each voter's own signature on its vote
    with grpc.insecure_channel(lying_group.addresses[0]) as channel:
        reply = api_grpc.ReplicaStub(channel).GetCertificate(
            api.GetCertificateRequest(client_id="outvote", request_id="outvote-0"), timeout=10
        )
    full = decode_certificate(reply.certificate)
    voters = [v.replica_id for v in full.leaf.votes]
    assert [p.voter for p in full.vote_proofs] == voters
    verified = verify(full, config, certified[0].request)
    assert verified.label == certified[0].certificate.leaf.decision.label
    if LIAR in voters:
        proof = full.vote_proofs[voters.index(LIAR)]
        assert proof.signature  # the liar's own signature on its wrong answer

    # operators see it too: the disagreeing-votes metric names the liar
    metrics_port = lying_group.replicas[0].config.metrics_port
    assert metric_sum(scrape(metrics_port), "quorumserve_disagreeing_votes_total", voter=str(LIAR)) >= len(liar_votes) // 2
    # and each owner its votes in the certificates (its share of the fees): at least those of
    # the 30 requests here, once replica 0 has built their certificates
    def counted(voter: int) -> float:
        return metric_sum(scrape(metrics_port), "quorumserve_certified_votes_total", voter=str(voter))

    for voter in config.replica_ids:
        in_certificates = sum(v.replica_id == voter for c in certified for v in c.certificate.leaf.votes)
        assert wait_until(lambda v=voter, want=in_certificates: counted(v) >= want, 30), (
            f"replica 0 counts {counted(voter)} votes of replica {voter}, the certificates hold {in_certificates}"
        )


@pytest.fixture(scope="module")
def equivocating_group(tmp_path_factory: pytest.TempPathFactory, digits_packages: list[Path]) -> Iterator[LocalGroup]:
    g = LocalGroup(tmp_path_factory.mktemp("equivocating"), model_packages=digits_packages, misbehave={LIAR: "equivocate"})
    try:
        g.start()
        yield g
    finally:
        g.stop()


def test_an_equivocating_replica_leaves_evidence_anyone_can_verify(equivocating_group: LocalGroup) -> None:
    config = equivocating_group.config
    assert config is not None
    certified = _certify_many(equivocating_group, "equivocation", 20)
    for c in certified:
        verify(c.certificate, config, c.request)

    def evidence_items() -> list[api.EvidenceItem]:
        items = []
        for address in equivocating_group.addresses[:LIAR]:
            with grpc.insecure_channel(address) as channel:
                items += list(api_grpc.ReplicaStub(channel).ListEvidence(api.EvidenceRequest(limit=100), timeout=10).items)
        return items

    # peers got different halves; a replica notices when a proposal or a fetch shows it the
    # other batch. Certify more until some replica holds a proof.
    rounds = 0
    while not evidence_items() and rounds < 20:
        _certify_many(equivocating_group, f"more-{rounds}", 5)
        rounds += 1
    assert wait_until(lambda: bool(evidence_items()), 30), "no replica kept evidence of the equivocation"
    item = evidence_items()[0]
    accused = verify_evidence(decode_evidence(item.evidence), config)
    assert accused == (LIAR,)
    assert f"replica {LIAR}" in item.summary

    # tampered evidence does not verify
    tampered = bytearray(item.evidence)
    tampered[-5] ^= 0x40
    with pytest.raises(CertificateError):
        verify_evidence(decode_evidence(bytes(tampered)), config)


def test_misbehaving_replica_counts_against_nothing_but_itself(lying_group: LocalGroup) -> None:
    """Honest replicas never reject each other's messages, only the liar's evidence shows."""
    for replica in lying_group.replicas[:LIAR]:
        text = scrape(replica.config.metrics_port)
        assert metric_sum(text, "quorumserve_rejected_messages_total", reason="bad-signature") == 0
        assert metric_sum(text, "quorumserve_evidence_total") == 0  # lying is not equivocating
    assert np.isfinite(metric_sum(scrape(lying_group.replicas[0].config.metrics_port), "quorumserve_view"))
