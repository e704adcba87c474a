"""Invalid proposals and vote batches leave evidence anyone can verify offline (certs/evidence.py);
faults that depend on this replica's state or on unsigned content leave none."""

from __future__ import annotations

from dataclasses import replace

import pytest

from certs.evidence import InvalidProposal, InvalidVoteBatch, decode_evidence, encode_evidence, verify_evidence
from certs.outputs import ModelOutput
from consensus.errors import ByzantineMessageError
from consensus.messages import PrePrepare, Proposal, VoteBatch
from tests.consensus.cluster import Cluster, resigned, vote_batch
from tests.consensus.test_faulty_messages import (
    TARGET,
    _other_decision,
    _staged,
    _too_few,
    _with_entry,
    _with_leaf,
    _wrong_version,
)


@pytest.mark.parametrize(
    ("case", "proves"),
    [("decision", True), ("policy", True), ("too-few-votes", True), ("request-twice", True),
     ("wrong-version", False), ("leaves-not-under-the-signed-root", False)],
)
def test_an_invalid_proposal_leaves_evidence_against_the_primary(case: str, proves: bool) -> None:
    cluster = Cluster()
    config = cluster.config
    pp = _staged(cluster)
    forged: PrePrepare
    if case == "decision":
        forged = resigned(config, pp, _with_entry(pp, _other_decision))
    elif case == "policy":
        forged = resigned(config, pp, _with_entry(pp, _with_leaf(policy="trimmed_mean(trim=1)")))
    elif case == "too-few-votes":
        forged = resigned(config, pp, _with_entry(pp, _too_few))
    elif case == "request-twice":
        forged = resigned(config, pp, Proposal(pp.proposal.entries * 2, ()))
    elif case == "wrong-version":  # depends on the replicated version table: not offline evidence
        forged = resigned(config, pp, _with_entry(pp, _wrong_version))
    else:  # the primary's signature covers the header only: anyone could attach these leaves
        forged = PrePrepare(0, pp.epoch, pp.header, _with_entry(pp, _other_decision), pp.signature)
    before = len(cluster.evidence[TARGET])
    with pytest.raises(ByzantineMessageError):
        cluster.step(TARGET, forged, via=0)
    items = cluster.evidence[TARGET][before:]
    assert len(items) == int(proves), items
    for item in items:
        assert isinstance(item, InvalidProposal)
        assert verify_evidence(decode_evidence(encode_evidence(item)), config) == (0,)


def test_an_invalid_vote_batch_leaves_evidence_against_its_voter() -> None:
    cluster = Cluster()
    config = cluster.config
    cluster.submit(cluster.new_request())
    cluster.settle()
    original = cluster.sent_of(2, VoteBatch)[0]
    malformed = vote_batch(config, 2, original.batch_no + 1, 1, [replace(original.entries[0], output=ModelOutput(((99, 9000),)))])
    doubled = vote_batch(config, 2, original.batch_no + 2, 1, [original.entries[0], original.entries[0]])
    before = len(cluster.evidence[TARGET])
    for message, kind in ((malformed, "bad-vote"), (doubled, "duplicate-entry")):
        with pytest.raises(ByzantineMessageError) as info:
            cluster.step(TARGET, message, via=2)
        assert info.value.kind == kind
    items = cluster.evidence[TARGET][before:]
    assert [type(i) for i in items] == [InvalidVoteBatch, InvalidVoteBatch]
    assert all(verify_evidence(item, config) == (2,) for item in items)
