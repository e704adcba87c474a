"""Evidence: it convicts exactly when the signed messages really conflict."""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certs.encoding import sha256
from certs.errors import CertificateError, DecodeError
from certs.evidence import (
    ConflictingCertificates,
    Equivocation,
    decode_evidence,
    describe_evidence,
    encode_evidence,
    evidence_from_json,
    evidence_to_json,
    find_equivocation,
    verify_evidence,
)
from certs.statements import SLOT_ARITY, SignedStatement, Statement, StatementKind
from tests.certs.helpers import Group, cached_batch, make_batch, make_group, replica_key


def signed(group: Group, kind: StatementKind, signer: int, slot: tuple[int, ...], content: bytes) -> SignedStatement:
    config = group.config
    return Statement(kind, config.group_id, config.epoch, signer, slot, content).sign(group.keys[signer].signer())


def slot_for(kind: StatementKind, n: int) -> tuple[int, ...]:
    return (0, n) if SLOT_ARITY[kind] == 2 else (n,)


A, B = sha256(b"batch a"), sha256(b"batch b")


# -- equivocation ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(StatementKind))
def test_two_contents_for_one_slot_convict_the_signer(group: Group, kind: StatementKind) -> None:
    first = signed(group, kind, 2, slot_for(kind, 5), A)
    second = signed(group, kind, 2, slot_for(kind, 5), B)
    evidence = find_equivocation(first, second)
    assert evidence is not None
    assert verify_evidence(evidence, group.config) == (2,)
    assert "replica 2 equivocated" in describe_evidence(evidence, (2,))


def test_the_same_statement_twice_is_no_evidence(group: Group) -> None:
    s = signed(group, StatementKind.COMMIT, 1, (0, 5), A)
    assert find_equivocation(s, s) is None
    with pytest.raises(CertificateError, match="say the same thing"):
        verify_evidence(Equivocation(s, s), group.config)


def test_different_slots_are_no_evidence(group: Group) -> None:
    first = signed(group, StatementKind.COMMIT, 1, (0, 5), A)
    later_view = signed(group, StatementKind.COMMIT, 1, (1, 5), B)
    assert find_equivocation(first, later_view) is None
    with pytest.raises(CertificateError, match="different slots .view 0 seq 5; view 1 seq 5."):
        verify_evidence(Equivocation(first, later_view), group.config)


def test_a_forged_signature_is_no_evidence(group: Group) -> None:
    first = signed(group, StatementKind.PREPARE, 1, (0, 5), A)
    statement = Statement(StatementKind.PREPARE, "digits", 1, 1, (0, 5), B)
    forged = SignedStatement(statement, replica_key(1, "forger").signer().sign(statement.message()))
    with pytest.raises(CertificateError, match="bad signature on the second statement from replica 1"):
        verify_evidence(Equivocation(first, forged), group.config)


def test_different_kinds_or_signers_are_no_evidence(group: Group) -> None:
    prepare = signed(group, StatementKind.PREPARE, 1, (0, 5), A)
    commit = signed(group, StatementKind.COMMIT, 1, (0, 5), B)
    other_signer = signed(group, StatementKind.PREPARE, 2, (0, 5), B)
    with pytest.raises(CertificateError, match="different kinds"):
        verify_evidence(Equivocation(prepare, commit), group.config)
    with pytest.raises(CertificateError, match="different replicas"):
        verify_evidence(Equivocation(prepare, other_signer), group.config)


def test_domain_separation_a_vote_batch_signature_is_not_a_commit(group: Group) -> None:
    # the same numbers signed as a vote batch cannot be passed off as a second COMMIT
    vote = signed(group, StatementKind.VOTE_BATCH, 1, (5,), B)
    commit = signed(group, StatementKind.COMMIT, 1, (0, 5), A)
    relabelled = SignedStatement(Statement(StatementKind.COMMIT, "digits", 1, 1, (0, 5), B), vote.signature)
    with pytest.raises(CertificateError, match="bad signature on the second statement"):
        verify_evidence(Equivocation(commit, relabelled), group.config)


def test_evidence_is_checked_against_the_config(group: Group) -> None:
    first = signed(group, StatementKind.COMMIT, 1, (0, 5), A)
    second = signed(group, StatementKind.COMMIT, 1, (0, 5), B)
    with pytest.raises(CertificateError, match="wrong epoch"):
        verify_evidence(Equivocation(first, second), group.config.with_changes(epoch=3))
    with pytest.raises(CertificateError, match="wrong group"):
        verify_evidence(Equivocation(first, second), group.config.with_changes(group_id="other"))
    outsider_group = make_group(1, n=5, salt="")  # replica 4 exists only there
    x = signed(outsider_group, StatementKind.COMMIT, 4, (0, 5), A)
    y = signed(outsider_group, StatementKind.COMMIT, 4, (0, 5), B)
    with pytest.raises(CertificateError, match="unknown signer 4"):
        verify_evidence(Equivocation(x, y), group.config)


@settings(max_examples=120, deadline=None)
@given(
    kinds=st.tuples(st.sampled_from(list(StatementKind)), st.sampled_from(list(StatementKind))),
    signers=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    slots=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    contents=st.tuples(st.sampled_from([A, B]), st.sampled_from([A, B])),
    forged=st.tuples(st.booleans(), st.booleans()),
)
def test_evidence_verifies_only_when_the_messages_really_conflict(
    kinds: tuple[StatementKind, StatementKind],
    signers: tuple[int, int],
    slots: tuple[int, int],
    contents: tuple[bytes, bytes],
    forged: tuple[bool, bool],
) -> None:
    group = make_group(1)
    pair = []
    for kind, signer, slot, content, fake in zip(kinds, signers, slots, contents, forged):
        statement = Statement(kind, "digits", 1, signer, slot_for(kind, slot), content)
        key = replica_key(signer, "forger") if fake else group.keys[signer]
        pair.append(statement.sign(key.signer()))
    conflict = (
        kinds[0] == kinds[1] and signers[0] == signers[1] and slots[0] == slots[1]
        and contents[0] != contents[1] and not any(forged)
    )
    try:
        accused = verify_evidence(Equivocation(pair[0], pair[1]), group.config)
    except CertificateError:
        assert not conflict
    else:
        assert conflict and accused == (signers[0],)
    found = find_equivocation(pair[0], pair[1])
    assert (found is not None) == (
        kinds[0] == kinds[1] and signers[0] == signers[1] and slots[0] == slots[1] and contents[0] != contents[1]
    )


def test_find_equivocation_gives_the_same_evidence_in_either_order(group: Group) -> None:
    first = signed(group, StatementKind.CHECKPOINT, 3, (64,), A)
    second = signed(group, StatementKind.CHECKPOINT, 3, (64,), B)
    assert find_equivocation(first, second) == find_equivocation(second, first)


# -- conflicting certificates ----------------------------------------------------------------


@pytest.mark.parametrize("f", [1, 2, 3])
def test_conflicting_certificates_name_at_least_f_plus_1_double_signers(f: int) -> None:
    group = make_group(f)
    ids = group.config.replica_ids
    q = group.config.quorum_size
    a = make_batch(group, 2, seed=1, signers=ids[:q])
    b = make_batch(group, 2, seed=2, signers=ids[-q:])
    evidence = ConflictingCertificates(a.certificates[0], b.certificates[1])
    accused = verify_evidence(evidence, group.config)
    assert accused == evidence.double_signers == tuple(sorted(set(ids[:q]) & set(ids[-q:])))
    assert len(accused) >= f + 1
    assert "each signed COMMITs for two different batches" in describe_evidence(evidence, accused)


def test_certificates_of_the_same_batch_do_not_conflict() -> None:
    b = cached_batch(1, 8)
    with pytest.raises(CertificateError, match="same batch"):
        verify_evidence(ConflictingCertificates(b.certificates[0], b.certificates[5]), b.config)


def test_the_same_batch_re_proposed_in_a_later_view_does_not_conflict() -> None:
    group = make_group(1)
    a = make_batch(group, 3, view=0)
    b = make_batch(group, 3, view=1)
    with pytest.raises(CertificateError, match="same batch"):
        verify_evidence(ConflictingCertificates(a.certificates[0], b.certificates[0]), group.config)


def test_different_sequence_numbers_do_not_conflict() -> None:
    group = make_group(1)
    a = make_batch(group, 3, seq=1)
    b = make_batch(group, 3, seq=2, seed=4)
    with pytest.raises(CertificateError, match=r"different sequence numbers \(1, 2\)"):
        verify_evidence(ConflictingCertificates(a.certificates[0], b.certificates[0]), group.config)


def test_a_certificate_without_a_valid_quorum_proves_nothing() -> None:
    group = make_group(1)
    a = make_batch(group, 3)
    b = make_batch(group, 3, seed=9, signers=[1, 2])
    with pytest.raises(CertificateError, match="second certificate: 2 signatures, need 3"):
        verify_evidence(ConflictingCertificates(a.certificates[0], b.certificates[0]), group.config)
    bad = dataclasses.replace(
        a.certificates[0], quorum=(a.quorum[0], dataclasses.replace(a.quorum[1], signature=bytes(64)), a.quorum[2])
    )
    c = make_batch(group, 3, seed=9)
    with pytest.raises(CertificateError, match="first certificate: bad signature from replica 1"):
        verify_evidence(ConflictingCertificates(bad, c.certificates[0]), group.config)


def test_conflicting_commits_across_views_are_reported_as_a_safety_violation() -> None:
    group = make_group(1)
    a = make_batch(group, 3, view=0)
    b = make_batch(group, 3, view=1, seed=7)
    evidence = ConflictingCertificates(a.certificates[0], b.certificates[0])
    accused = verify_evidence(evidence, group.config)
    assert accused == (0, 1, 2)
    assert "more than f replicas misbehaved" in describe_evidence(evidence, accused)


# -- encodings -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _examples() -> list[Equivocation | ConflictingCertificates]:
    group = make_group(1)
    a = make_batch(group, 3)
    b = make_batch(group, 3, seed=5, signers=[1, 2, 3])
    commit_a = a.header.statement(StatementKind.COMMIT, 1).sign(group.keys[1].signer())
    commit_b = b.header.statement(StatementKind.COMMIT, 1).sign(group.keys[1].signer())
    return [
        Equivocation(commit_a, commit_b),
        ConflictingCertificates(a.certificates[0], b.certificates[2]),
        ConflictingCertificates(a.accountable[1], b.accountable[0]),
    ]


def test_evidence_round_trips_through_protobuf_and_json() -> None:
    config = make_group(1).config
    for item in _examples():
        data = encode_evidence(item)
        assert decode_evidence(data) == item
        for with_config in (None, config):
            text = json.dumps(evidence_to_json(item, with_config))
            assert evidence_from_json(json.loads(text)) == item
        assert verify_evidence(decode_evidence(data), config)


def test_evidence_json_may_not_misname_the_accused() -> None:
    document = json.loads(json.dumps(evidence_to_json(_examples()[0])))
    document["accused"] = [3]
    with pytest.raises(DecodeError, match="accused"):
        evidence_from_json(document)


def test_an_empty_evidence_message_is_refused() -> None:
    with pytest.raises(DecodeError, match="neither"):
        decode_evidence(b"")


def test_a_statement_with_an_unknown_kind_or_wrong_slot_is_refused() -> None:
    document = json.loads(json.dumps(evidence_to_json(_examples()[0])))
    document["first"]["kind"] = "promise"
    with pytest.raises(DecodeError, match="unknown statement kind"):
        evidence_from_json(document)
    document = json.loads(json.dumps(evidence_to_json(_examples()[0])))
    document["first"]["slot"] = [5]
    with pytest.raises(DecodeError, match="slot has 2 numbers"):
        evidence_from_json(document)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_raise_only_decode_error(data: bytes) -> None:
    try:
        decode_evidence(data)
    except DecodeError:
        pass


@settings(max_examples=100, deadline=None)
@given(position=st.integers(0, 1 << 16), mask=st.integers(1, 255))
def test_a_flipped_byte_never_convicts_anyone_else(position: int, mask: int) -> None:
    item = _examples()[0]
    config = make_group(1).config
    data = bytearray(encode_evidence(item))
    data[position % len(data)] ^= mask
    try:
        accused = verify_evidence(decode_evidence(bytes(data)), config)
    except CertificateError:
        return
    pytest.fail(f"a flipped byte still convicts {accused}")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_random_json_raises_only_decode_error(value: Any) -> None:
    try:
        evidence_from_json(value)
    except DecodeError:
        pass
