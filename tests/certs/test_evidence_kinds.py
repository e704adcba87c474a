"""Invalid proposals and invalid vote batches: evidence anyone can check offline.

A primary signs only a header; the leaves count against it only when they are under the signed
root. A voter signs only its batch root; the entries count against it only when they are under
that root. Each test builds real Ed25519-signed messages and checks the verdict, both encodings
and what tampering does.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from certs.batch import BatchHeader, Leaf, VoteEntry, vote_batch_content
from certs.config import GroupConfig, ProtocolParams, save_group_config
from certs.encoding import sha256
from certs.errors import CertificateError, DecodeError
from certs.evidence import (
    Evidence,
    InvalidProposal,
    InvalidVoteBatch,
    ProvenLeaf,
    decode_evidence,
    describe_evidence,
    encode_evidence,
    evidence_from_json,
    evidence_to_json,
    find_invalid_proposal,
    find_invalid_vote_batch,
    verify_evidence,
)
from certs.merkle import MerkleTree, root_of_hashes
from certs.outputs import ModelOutput
from certs.policy import NO_AGREEMENT, Decision
from certs.statements import Statement, StatementKind
from marketplace.cli import main
from tests.certs.helpers import Group, SignedBatch, header_for, make_batch, make_group, replica_key

PRIMARY = 0
VOTER = 2


@functools.lru_cache(maxsize=None)
def _batch() -> SignedBatch:
    return make_batch(make_group(1), 6, seed=3)


def _group() -> Group:
    return _batch().group


def _sign_pre_prepare(group: Group, header: BatchHeader, signer: int = PRIMARY) -> bytes:
    return group.keys[signer].signer().sign(header.statement(StatementKind.PRE_PREPARE, signer).message())


def _proposal_evidence(leaves: Sequence[Leaf], signer: int = PRIMARY) -> InvalidProposal:
    group = _group()
    header = header_for(group, leaves, seq=7)
    item = find_invalid_proposal(header, signer, _sign_pre_prepare(group, header, signer), leaves, group.config)
    assert item is not None, "the proposal should have been found invalid"
    return item


# -- bad leaves: each one a way a primary can sign content that cannot be valid ----------------


def _with_decision(leaf: Leaf, decision: Decision) -> Leaf:
    return dataclasses.replace(leaf, decision=decision)


def _wrong_decision(leaf: Leaf) -> Leaf:
    other = (leaf.decision.label + 1) % 10 if leaf.decision.agreed else 0
    return _with_decision(leaf, Decision(other, ((other, 9000),), leaf.decision.support))


def _no_agreement_instead(leaf: Leaf) -> Leaf:
    return _with_decision(leaf, Decision(NO_AGREEMENT, (), ()))


def _too_few_votes(leaf: Leaf) -> Leaf:
    return dataclasses.replace(leaf, votes=leaf.votes[:2])


def _duplicate_voter(leaf: Leaf) -> Leaf:
    return dataclasses.replace(leaf, votes=(leaf.votes[0], leaf.votes[0], *leaf.votes[1:]))


def _non_member_voter(leaf: Leaf) -> Leaf:
    outsider = dataclasses.replace(leaf.votes[-1], replica_id=9)
    return dataclasses.replace(leaf, votes=(*leaf.votes[:-1], outsider))


def _malformed_vote(leaf: Leaf) -> Leaf:
    bad = dataclasses.replace(leaf.votes[1], output=ModelOutput(((42, 9000),)))  # class 42 of 10
    return dataclasses.replace(leaf, votes=(leaf.votes[0], bad, *leaf.votes[2:]))


def _wrong_policy(leaf: Leaf) -> Leaf:
    return dataclasses.replace(leaf, policy="trimmed_mean(trim=1)")


def _unsorted_label_space(leaf: Leaf) -> Leaf:
    return dataclasses.replace(leaf, label_space=("pet", "bird"))


BAD_LEAVES: dict[str, tuple[Callable[[Leaf], Leaf], str]] = {
    "wrong decision": (_wrong_decision, "does not follow from its votes"),
    "no agreement claimed": (_no_agreement_instead, "does not follow from its votes"),
    "too few votes": (_too_few_votes, "fewer than the quorum of 3"),
    "duplicate voter": (_duplicate_voter, "not distinct replicas"),
    "non-member voter": (_non_member_voter, "non-members [9]"),
    "malformed vote": (_malformed_vote, "class 42 is outside the label space"),
    "wrong policy": (_wrong_policy, "the config's policy is 'plurality(min_support=2)'"),
    "unsorted label space": (_unsorted_label_space, "label space is not a sorted list"),
}


@pytest.mark.parametrize("name", list(BAD_LEAVES))
def test_a_signed_proposal_with_an_invalid_leaf_convicts_the_primary(name: str) -> None:
    spoil, reason = BAD_LEAVES[name]
    leaves = list(_batch().leaves)
    leaves[3] = spoil(leaves[3])
    item = _proposal_evidence(leaves)
    assert [p.index for p in item.leaves] == [3]
    assert verify_evidence(item, _group().config) == (PRIMARY,)
    sentence = describe_evidence(item, item.accused, _group().config)
    assert sentence.startswith(f"replica {PRIMARY} signed an invalid PRE-PREPARE for view 0 seq 7")
    assert reason in sentence


def test_two_leaves_for_one_request_convict_the_primary() -> None:
    leaves = list(_batch().leaves)
    twin = dataclasses.replace(leaves[1], request_digest=sha256(b"another request under the same ids"))
    leaves.append(twin)
    item = _proposal_evidence(leaves)
    assert [p.index for p in item.leaves] == [1, 6]
    assert verify_evidence(item, _group().config) == (PRIMARY,)
    assert "both for request alice/req-1" in describe_evidence(item, item.accused, _group().config)


def test_a_valid_proposal_yields_no_evidence_and_a_valid_leaf_proves_nothing() -> None:
    group, leaves = _group(), list(_batch().leaves)
    header = header_for(group, leaves, seq=7)
    signature = _sign_pre_prepare(group, header)
    assert find_invalid_proposal(header, PRIMARY, signature, leaves, group.config) is None
    tree = MerkleTree([leaf.hash for leaf in leaves])
    innocent = InvalidProposal(header, PRIMARY, signature, (ProvenLeaf(leaves[2], 2, tree.proof(2)),))
    with pytest.raises(CertificateError, match="leaf 2 is a valid leaf"):
        verify_evidence(innocent, group.config)


def test_leaves_that_are_not_under_the_signed_root_prove_nothing_about_the_signer() -> None:
    """The signature covers the header only: anyone could pair a signed header with bad leaves."""
    group, leaves = _group(), list(_batch().leaves)
    header = header_for(group, leaves, seq=7)
    signature = _sign_pre_prepare(group, header)
    swapped = [*leaves[:3], _wrong_decision(leaves[3]), *leaves[4:]]
    assert find_invalid_proposal(header, PRIMARY, signature, swapped, group.config) is None
    tree = MerkleTree([leaf.hash for leaf in leaves])
    attached = InvalidProposal(header, PRIMARY, signature, (ProvenLeaf(swapped[3], 3, tree.proof(3)),))
    with pytest.raises(CertificateError, match="leaf 3 is not under the signed decisions root"):
        verify_evidence(attached, group.config)


def test_a_proposal_signed_by_someone_else_convicts_nobody() -> None:
    group = _group()
    leaves = [*_batch().leaves[:2], _too_few_votes(_batch().leaves[2])]
    header = header_for(group, leaves, seq=7)
    forged = replica_key(PRIMARY, "forger").signer().sign(header.statement(StatementKind.PRE_PREPARE, PRIMARY).message())
    assert find_invalid_proposal(header, PRIMARY, forged, leaves, group.config) is None
    item = _proposal_evidence(leaves)
    with pytest.raises(CertificateError, match="bad PRE-PREPARE signature from replica 0"):
        verify_evidence(dataclasses.replace(item, signature=forged), group.config)
    with pytest.raises(CertificateError, match="bad PRE-PREPARE signature from replica 1"):
        verify_evidence(dataclasses.replace(item, signer=1), group.config)


def test_invalid_proposal_evidence_is_judged_under_the_pinned_config_only() -> None:
    item = _proposal_evidence([_wrong_decision(_batch().leaves[0])])
    other = make_group(1, salt="elsewhere").config
    with pytest.raises(CertificateError, match="wrong config digest"):
        verify_evidence(item, other)
    later_epoch = make_group(1, epoch=2).config
    with pytest.raises(CertificateError, match="wrong epoch"):
        verify_evidence(item, later_epoch)


# -- invalid vote batches --------------------------------------------------------------------


def _entries(count: int, offset: int = 0) -> list[VoteEntry]:
    """Well-formed entries as replica VOTER would sign them."""
    batch = make_batch(_group(), count, seed=5, request_offset=offset)
    voter_index = batch.config.replica_ids.index(VOTER)
    return [
        VoteEntry(leaf.client_id, leaf.request_id, leaf.request_digest, leaf.label_space, leaf.votes[voter_index].output)
        for leaf in batch.leaves
    ]


def _vote_batch_evidence(entries: Sequence[VoteEntry], config: GroupConfig | None = None, signer: int = VOTER) -> InvalidVoteBatch | None:
    group = _group()
    config = config or group.config
    root = root_of_hashes([e.hash for e in entries])
    statement = Statement(
        StatementKind.VOTE_BATCH, config.group_id, config.epoch, VOTER, (12,), vote_batch_content(1, root, len(entries))
    )
    signature = group.keys[signer].signer().sign(statement.message())
    return find_invalid_vote_batch(config.group_id, config.epoch, VOTER, 12, 1, entries, signature, config)


def _malformed(entry: VoteEntry, output: ModelOutput) -> VoteEntry:
    return dataclasses.replace(entry, output=output)


BAD_OUTPUTS: dict[str, tuple[ModelOutput, str]] = {
    "class outside the labels": (ModelOutput(((10, 9000),)), "class 10 is outside the label space"),
    "not canonical order": (ModelOutput(((1, 100), (2, 9000))), "not in canonical order"),
    "probabilities sum past one": (ModelOutput(((1, 9000), (2, 8000))), "sum to 17000"),
    "more classes than top_k": (ModelOutput(((1, 4000), (2, 3000), (3, 2000), (4, 1000))), "must list 1..3 classes"),
    "zero probability": (ModelOutput(((1, 0),)), "outside 1..10000"),
}


@pytest.mark.parametrize("name", list(BAD_OUTPUTS))
def test_a_signed_vote_batch_with_a_malformed_output_convicts_the_voter(name: str) -> None:
    output, reason = BAD_OUTPUTS[name]
    entries = _entries(5)
    entries[2] = _malformed(entries[2], output)
    item = _vote_batch_evidence(entries)
    assert item is not None and [p.index for p in item.entries] == [2]
    assert verify_evidence(item, _group().config) == (VOTER,)
    sentence = describe_evidence(item, item.accused, _group().config)
    assert sentence.startswith(f"replica {VOTER} signed an invalid vote batch 12")
    assert reason in sentence


def test_two_entries_for_one_request_convict_the_voter() -> None:
    entries = _entries(4)
    entries.append(dataclasses.replace(entries[0], output=ModelOutput(((7, 9999),))))
    item = _vote_batch_evidence(entries)
    assert item is not None and [p.index for p in item.entries] == [0, 4]
    assert verify_evidence(item, _group().config) == (VOTER,)
    assert "both vote on request alice/req-0" in describe_evidence(item, item.accused, _group().config)


def test_an_empty_or_oversized_vote_batch_convicts_from_its_signed_count_alone() -> None:
    empty = _vote_batch_evidence([])
    assert empty is not None and empty.entries == () and empty.entry_count == 0
    assert verify_evidence(empty, _group().config) == (VOTER,)
    assert "it is empty" in describe_evidence(empty, empty.accused, _group().config)

    config = dataclasses.replace(_group().config, params=ProtocolParams(inference_batch_max=4))
    entries = _entries(5)
    item = _vote_batch_evidence(entries, config)
    assert item is not None and item.entries == () and item.entry_count == 5
    assert verify_evidence(item, config) == (VOTER,)
    assert "more than inference_batch_max = 4" in describe_evidence(item, item.accused, config)
    with pytest.raises(CertificateError, match="allowed size"):
        verify_evidence(item, _group().config)  # the default limit allows 5


def test_a_well_formed_vote_batch_yields_no_evidence() -> None:
    assert _vote_batch_evidence(_entries(6)) is None


def test_a_vote_batch_signed_by_another_key_convicts_nobody() -> None:
    entries = _entries(3)
    entries[0] = _malformed(entries[0], ModelOutput(((11, 10),)))
    assert _vote_batch_evidence(entries, signer=1) is None
    item = _vote_batch_evidence(entries)
    assert item is not None
    with pytest.raises(CertificateError, match="bad vote batch signature from replica 1"):
        verify_evidence(dataclasses.replace(item, voter=1), _group().config)
    with pytest.raises(CertificateError, match="unknown signer 9"):
        verify_evidence(dataclasses.replace(item, voter=9), _group().config)


def test_a_well_formed_entry_under_a_signed_root_proves_nothing() -> None:
    entries = _entries(3)
    entries[1] = _malformed(entries[1], ModelOutput(((11, 10),)))
    item = _vote_batch_evidence(entries)
    assert item is not None
    good = _entries(3)
    swapped = dataclasses.replace(item, entries=(dataclasses.replace(item.entries[0], entry=good[1]),))
    with pytest.raises(CertificateError, match="entry 1 is a well-formed vote"):
        verify_evidence(swapped, _group().config)


# -- encodings and tampering, for every new kind --------------------------------------------


@functools.lru_cache(maxsize=None)
def _examples() -> dict[str, Evidence]:
    leaves = list(_batch().leaves)
    twin = dataclasses.replace(leaves[1], request_digest=sha256(b"twin"))
    bad_entries = _entries(4)
    bad_entries[3] = _malformed(bad_entries[3], ModelOutput(((10, 9000),)))  # class 10 of 10
    twin_entries = [*_entries(3), _entries(3)[1]]
    examples: dict[str, Evidence | None] = {
        "invalid leaf": _proposal_evidence([*leaves[:4], _wrong_decision(leaves[4]), leaves[5]]),
        "two leaves for one request": _proposal_evidence([*leaves, twin]),
        "malformed entry": _vote_batch_evidence(bad_entries),
        "two entries for one request": _vote_batch_evidence(twin_entries),
        "empty vote batch": _vote_batch_evidence([]),
    }
    found = {name: item for name, item in examples.items() if item is not None}
    assert len(found) == len(examples)
    return found


@pytest.mark.parametrize("name", ["invalid leaf", "two leaves for one request", "malformed entry", "two entries for one request", "empty vote batch"])
def test_new_kinds_round_trip_through_protobuf_and_json(name: str) -> None:
    item = _examples()[name]
    config = _group().config
    assert decode_evidence(encode_evidence(item)) == item
    text = json.dumps(evidence_to_json(item, config))
    assert evidence_from_json(json.loads(text)) == item
    assert verify_evidence(decode_evidence(encode_evidence(item)), config) == item.accused


@pytest.mark.parametrize("name", ["invalid leaf", "two leaves for one request", "malformed entry", "two entries for one request", "empty vote batch"])
def test_every_flipped_bit_of_new_evidence_is_refused_or_fails_verification(name: str) -> None:
    """Exhaustive over the encoding: one flipped bit anywhere never yields evidence that verifies."""
    item = _examples()[name]
    config = _group().config
    data = encode_evidence(item)
    for position in range(len(data)):
        for mask in (0x01, 0x80):
            tampered = bytearray(data)
            tampered[position] ^= mask
            try:
                accused = verify_evidence(decode_evidence(bytes(tampered)), config)
            except CertificateError:  # DecodeError is one too
                continue
            pytest.fail(f"bit {mask:#x} of byte {position} flipped and the evidence still convicts {accused}")


def test_json_evidence_may_not_misname_the_accused_or_carry_unknown_fields() -> None:
    for name, item in _examples().items():
        data = evidence_to_json(item)
        with pytest.raises(DecodeError, match="accused"):
            evidence_from_json({**data, "accused": [1]})
        with pytest.raises(DecodeError, match="unknown field"):
            evidence_from_json({**data, "verdict": "guilty"})


def test_json_with_a_changed_vote_fails_verification() -> None:
    config = _group().config
    data = evidence_to_json(_examples()["invalid leaf"])
    data["leaves"][0]["leaf"]["votes"][0]["output"] = [[0, 10000]]
    with pytest.raises(CertificateError, match="not under the signed decisions root"):
        verify_evidence(evidence_from_json(data), config)
    data = evidence_to_json(_examples()["malformed entry"])
    data["entries"][0]["entry"]["output"] = [[3, 9000]]
    with pytest.raises(CertificateError):
        verify_evidence(evidence_from_json(data), config)


def test_decoders_refuse_evidence_with_too_many_or_no_items() -> None:
    item = _examples()["two leaves for one request"]
    assert isinstance(item, InvalidProposal)
    three = dataclasses.replace(item, leaves=(*item.leaves, item.leaves[0]))
    with pytest.raises(DecodeError, match="more than 2"):
        decode_evidence(encode_evidence(three))
    with pytest.raises(DecodeError, match="holds no leaf"):
        decode_evidence(encode_evidence(dataclasses.replace(item, leaves=())))
    data = evidence_to_json(item)
    data["leaves"] = []
    with pytest.raises(DecodeError, match="at least one leaf"):
        evidence_from_json(data)


# -- the CLI ---------------------------------------------------------------------------------


def test_verify_evidence_cli_proves_new_kinds_and_refuses_tampered_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = tmp_path / "group.json"
    save_group_config(_group().config, config_path)
    proposal, vote_batch = _examples()["invalid leaf"], _examples()["malformed entry"]
    (tmp_path / "proposal.bin").write_bytes(encode_evidence(proposal))
    (tmp_path / "votes.json").write_text(json.dumps(evidence_to_json(vote_batch)))
    assert main(["verify-evidence", str(tmp_path / "proposal.bin"), "--config", str(config_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"PROVEN: replica {PRIMARY} signed an invalid PRE-PREPARE") and f"owner-{PRIMARY}" in out
    assert main(["verify-evidence", str(tmp_path / "votes.json"), "--config", str(config_path), "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["verdict"] == "proven" and verdict["accused"] == [VOTER]

    data = evidence_to_json(vote_batch)
    data["signature"] = data["signature"][:-2] + ("00" if data["signature"][-2:] != "00" else "01")
    (tmp_path / "tampered.json").write_text(json.dumps(data))
    assert main(["verify-evidence", str(tmp_path / "tampered.json"), "--config", str(config_path)]) == 1
    assert capsys.readouterr().out.startswith("NOT PROVEN: bad vote batch signature")
