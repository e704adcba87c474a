"""Certificates: building, protobuf and JSON forms, and tamper evidence of the encoding."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certs.certificate import (
    Certificate,
    QuorumSignature,
    build_certificates,
    certificate_from_json,
    certificate_to_json,
    decode_certificate,
    encode_batch_certificates,
    encode_certificate,
    vote_entry,
)
from certs.errors import CertificateError, DecodeError
from certs.merkle import MerkleTree, verify_inclusion
from certs.verify import verify
from protos import certificate_pb2 as cpb
from tests.certs.helpers import ANIMALS, SignedBatch, cached_batch, make_batch, make_group

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def json_round_trip(value: Any) -> Any:
    return json.loads(json.dumps(value))


# -- building ----------------------------------------------------------------------------


def test_every_certificate_of_a_batch_proves_its_leaf(batch: SignedBatch) -> None:
    assert [c.leaf for c in batch.certificates] == list(batch.leaves)
    for index, cert in enumerate(batch.certificates):
        assert (cert.leaf_index, cert.tree_size) == (index, len(batch.leaves))
        verify_inclusion(cert.leaf.hash, index, cert.tree_size, cert.proof, batch.header.decisions_root)
        assert cert.is_compact and cert.signers == (0, 1, 2)


def test_accountable_certificates_carry_one_vote_proof_per_vote(batch: SignedBatch) -> None:
    for cert in batch.accountable:
        assert [p.voter for p in cert.vote_proofs] == [v.replica_id for v in cert.leaf.votes]
        assert cert.compact() == batch.certificates[cert.leaf_index]


def test_builder_sorts_the_quorum_and_refuses_a_duplicate_signer(batch: SignedBatch) -> None:
    shuffled = tuple(reversed(batch.quorum))
    certs = build_certificates(batch.header, batch.leaves, shuffled)
    assert certs[0].signers == (0, 1, 2)
    with pytest.raises(ValueError, match="twice"):
        build_certificates(batch.header, batch.leaves, batch.quorum + batch.quorum[:1])


def test_builder_refuses_leaves_that_do_not_match_the_root(batch: SignedBatch) -> None:
    with pytest.raises(ValueError, match="decisions_root"):
        build_certificates(batch.header, batch.leaves[:-1], batch.quorum)


def test_builder_needs_every_vote_in_a_signed_vote_batch(batch: SignedBatch) -> None:
    with pytest.raises(ValueError, match="no vote batch of replica 3"):
        build_certificates(batch.header, batch.leaves, batch.quorum, batch.vote_batches[:3])


def test_a_builder_given_the_vote_entries_proves_the_same_votes_as_one_given_their_hashes(batch: SignedBatch) -> None:
    """A replica hands the builder the entries it received, so a vote is found by content rather
    than by hashing its entry again; the certificates must not change."""
    with_entries = []
    for vote_batch in batch.vote_batches:
        entries = tuple(vote_entry(leaf, vote) for leaf in batch.leaves for vote in leaf.votes if vote.replica_id == vote_batch.voter)
        assert tuple(e.hash for e in entries) == vote_batch.entry_hashes
        with_entries.append(dataclasses.replace(vote_batch, entries=entries))
    certificates = build_certificates(batch.header, batch.leaves, batch.quorum, with_entries)
    assert certificates == list(batch.accountable)
    assert [encode_certificate(c) for c in certificates] == [encode_certificate(c) for c in batch.accountable]
    # a vote batch without the first request's entry still cannot prove that vote
    short = dataclasses.replace(with_entries[3], entry_hashes=with_entries[3].entry_hashes[1:], entries=with_entries[3].entries[1:])
    with pytest.raises(ValueError, match="no vote batch of replica 3"):
        build_certificates(batch.header, batch.leaves, batch.quorum, with_entries[:3] + [short])


# -- protobuf ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 8, 13])
def test_protobuf_round_trip(size: int) -> None:
    b = cached_batch(1, size)
    for cert in b.certificates + b.accountable:
        data = encode_certificate(cert)
        assert decode_certificate(data) == cert
        assert encode_certificate(decode_certificate(data)) == data


def test_decoder_rejects_a_missing_header_or_leaf(batch: SignedBatch) -> None:
    from certs.certificate import certificate_to_proto

    for field in ("header", "leaf"):
        message = certificate_to_proto(batch.certificates[0])
        message.ClearField(field)
        with pytest.raises(DecodeError, match=f"no {field}"):
            decode_certificate(message.SerializeToString(deterministic=True))


def test_decoder_rejects_trailing_bytes_and_unknown_fields(batch: SignedBatch) -> None:
    data = encode_certificate(batch.certificates[0])
    for bad in (data + b"\x00", data + b"\x40\x01", b"\x40\x01" + data):
        with pytest.raises(DecodeError):
            decode_certificate(bad)


def _assert_flip_rejected(b: SignedBatch, cert: Certificate, position: int, mask: int) -> None:
    data = bytearray(encode_certificate(cert))
    position %= len(data)
    data[position] ^= mask
    try:
        decoded = decode_certificate(bytes(data))
        verify(decoded, b.config, b.requests[cert.leaf_index])
    except CertificateError:
        return
    raise AssertionError(f"flipping byte {position} with {mask:#04x} still verifies")


@FAST
@given(index=st.integers(0, 12), position=st.integers(0, 1 << 16), mask=st.integers(1, 255))
def test_flipping_any_byte_of_a_compact_certificate_is_detected(index: int, position: int, mask: int) -> None:
    b = cached_batch(1, 13)
    _assert_flip_rejected(b, b.certificates[index], position, mask)


@FAST
@given(index=st.integers(0, 12), position=st.integers(0, 1 << 16), mask=st.integers(1, 255))
def test_flipping_any_byte_of_an_accountable_certificate_is_detected(index: int, position: int, mask: int) -> None:
    b = cached_batch(1, 13)
    _assert_flip_rejected(b, b.accountable[index], position, mask)


def test_flipping_each_byte_in_turn_is_detected() -> None:
    # exhaustive over positions for one certificate of each form (one mask per byte)
    b = cached_batch(1, 5)
    for cert in (b.certificates[4], b.accountable[1]):
        for position in range(len(encode_certificate(cert))):
            _assert_flip_rejected(b, cert, position, 0x01 << (position % 8))


def test_the_tree_size_is_signed() -> None:
    # leaf 0 of 4 has the same path shape as leaf 0 of 3: the signed leaf count tells them apart
    b = cached_batch(1, 4)
    cert = b.certificates[0]
    assert cert.tree_size == 4
    for size in (3, 5):
        header = dataclasses.replace(cert.header, leaf_count=size)
        with pytest.raises(CertificateError):
            verify(dataclasses.replace(cert, header=header), b.config)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_decode_to_anything_but_decode_error(data: bytes) -> None:
    try:
        decode_certificate(data)
    except DecodeError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=40), st.integers(0, 1 << 16))
def test_spliced_bytes_raise_only_decode_error(junk: bytes, position: int) -> None:
    data = encode_certificate(cached_batch(1, 8).accountable[3])
    position %= len(data)
    try:
        decode_certificate(data[:position] + junk + data[position + len(junk) // 2 :])
    except DecodeError:
        pass


# -- JSON ------------------------------------------------------------------------------------


def test_json_round_trips_exactly_with_and_without_config(batch: SignedBatch) -> None:
    for cert in (batch.certificates[5], batch.accountable[5]):
        for config in (None, batch.config):
            data = json_round_trip(certificate_to_json(cert, config))
            assert certificate_from_json(data) == cert


def test_json_is_readable(batch: SignedBatch) -> None:
    cert = batch.certificates[2]
    data = certificate_to_json(cert, batch.config)
    summary = data["summary"]
    assert summary["decision_label"] == batch.config.task.class_labels[cert.leaf.decision.label]
    assert summary["policy"] == "plurality(min_support=2)"
    assert summary["signer_key_ids"]["0"].startswith("ed25519:")
    assert data["header"]["config_digest"] == batch.config.digest.hex()
    assert all(0.0 < p <= 1.0 for _, p in summary["probabilities"])
    assert summary["model_versions"] == [[r, 1] for r in range(4)]
    assert "decision_label" not in certificate_to_json(cert)["summary"]  # no names without a config


def test_json_names_decisions_of_an_application_mapping() -> None:
    group = make_group(1, labels=ANIMALS)
    b = make_batch(group, 3, mapping=[("cat", "pet"), ("dog", "pet")])
    data = certificate_to_json(b.certificates[0])
    assert data["leaf"]["label_space"] == ["horse", "pet", "sparrow", "truck"]
    assert data["summary"]["decision_label"] in data["leaf"]["label_space"]
    assert set(data["summary"]["probabilities_by_label"]) <= set(data["leaf"]["label_space"])
    assert certificate_from_json(json_round_trip(data)) == b.certificates[0]


def test_json_display_fields_must_agree_with_the_exact_fields(batch: SignedBatch) -> None:
    data = json_round_trip(certificate_to_json(batch.certificates[2], batch.config))
    tampered = json_round_trip(data)
    tampered["summary"]["supporters"] = [0, 1, 2, 3, 4]
    with pytest.raises(DecodeError, match="supporters"):
        certificate_from_json(tampered)
    tampered = json_round_trip(data)
    tampered["leaf"]["votes"][0]["probabilities"][0][1] = 0.99
    with pytest.raises(DecodeError, match="probabilities"):
        certificate_from_json(tampered)
    tampered = json_round_trip(data)
    tampered["header"]["batch_digest"] = "00" * 32
    with pytest.raises(DecodeError, match="batch_digest"):
        certificate_from_json(tampered)


@pytest.mark.parametrize(
    "path, value",
    [
        (("header", "config_digest"), "AB" * 32),  # upper-case hex
        (("header", "epoch"), True),
        (("header", "epoch"), 1.0),
        (("header", "seq"), -1),
        (("quorum", 0, "signature"), "00" * 63),
        (("leaf", "votes"), "all of them"),
        (("leaf", "decision", "label"), -2),
        (("proof",), ["zz" * 32]),
        (("format",), "something-else"),
        (("header", "leaf_count"), 2**64),
        (("leaf", "client_id"), "\ud800"),  # lone surrogate: no canonical encoding
    ],
)
def test_malformed_json_fields_raise_decode_error(batch: SignedBatch, path: tuple[Any, ...], value: Any) -> None:
    data = json_round_trip(certificate_to_json(batch.certificates[1]))
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(DecodeError):
        certificate_from_json(data)


def test_unknown_and_missing_json_fields_are_refused(batch: SignedBatch) -> None:
    data = json_round_trip(certificate_to_json(batch.certificates[1]))
    data["leaf"]["extra"] = 1
    with pytest.raises(DecodeError, match="unknown field 'extra'"):
        certificate_from_json(data)
    data = json_round_trip(certificate_to_json(batch.certificates[1]))
    del data["leaf"]["policy"]
    with pytest.raises(DecodeError, match="missing field 'policy'"):
        certificate_from_json(data)


def _scalar_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _scalar_paths(v, path + (k,))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _scalar_paths(v, path + (i,))]
    return [path]


def _changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.5
    if isinstance(value, str) and len(value) in (64, 128):
        return ("1" if value[0] == "0" else "0") + value[1:]  # hex digest or signature
    return value + "x"


def test_changing_any_json_field_is_detected() -> None:
    b = cached_batch(1, 5)
    for cert in (b.certificates[3], b.accountable[3]):
        original = json_round_trip(certificate_to_json(cert))
        for path in _scalar_paths(original):
            data = json_round_trip(original)
            target = data
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = _changed(target[path[-1]])
            try:
                decoded = certificate_from_json(data)
                verify(decoded, b.config, b.requests[3])
            except CertificateError:
                continue
            raise AssertionError(f"changing {path} went unnoticed")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_random_json_raises_only_decode_error(value: Any) -> None:
    try:
        certificate_from_json(value)
    except DecodeError:
        pass


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_values_in_valid_json_raise_only_decode_error(data: st.DataObject) -> None:
    document = json_round_trip(certificate_to_json(cached_batch(1, 5).accountable[2]))
    path = data.draw(st.sampled_from(_scalar_paths(document)))
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = data.draw(json_values)
    try:
        certificate_from_json(document)
    except DecodeError:
        pass


def test_quorum_signature_objects_are_plain_values() -> None:
    assert QuorumSignature(1, b"x" * 64) == QuorumSignature(1, b"x" * 64)
    with pytest.raises(dataclasses.FrozenInstanceError):
        QuorumSignature(1, b"").replica_id = 2  # type: ignore[misc]


# -- building straight to bytes --------------------------------------------------------------


def encoded_as_built(header: Any, leaves: Any, quorum: Any, vote_batches: Any = None) -> list[tuple[bytes, bytes]]:
    """What a replica stored and served before it composed certificates from bytes."""
    return [(encode_certificate(c), encode_certificate(c.compact())) for c in build_certificates(header, leaves, quorum, vote_batches)]


def encoded(header: Any, leaves: Any, quorum: Any, vote_batches: Any = None) -> list[tuple[bytes, bytes]]:
    return [(e.full, e.compact) for e in encode_batch_certificates(header, leaves, quorum, vote_batches)]


@given(f=st.sampled_from([1, 2]), size=st.integers(min_value=1, max_value=17), seed=st.integers(min_value=0, max_value=3))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_certificates_composed_from_bytes_are_the_built_ones_encoded(f: int, size: int, seed: int) -> None:
    b = cached_batch(f, size, seed)
    with_entries = [dataclasses.replace(vb, entries=entries_of(b, vb.voter)) for vb in b.vote_batches]
    for vote_batches in (b.vote_batches, with_entries):
        made = encoded(b.header, b.leaves, b.quorum, vote_batches)
        assert made == encoded_as_built(b.header, b.leaves, b.quorum, vote_batches)
        for (full, compact), certificate in zip(made, b.accountable):
            assert decode_certificate(full) == certificate and decode_certificate(compact) == certificate.compact()
    assert encoded(b.header, b.leaves, b.quorum) == [(c, c) for c in (encode_certificate(x) for x in b.certificates)]


def entries_of(b: SignedBatch, voter: int) -> tuple[Any, ...]:
    return tuple(vote_entry(leaf, vote) for leaf in b.leaves for vote in leaf.votes if vote.replica_id == voter)


def test_composed_certificates_write_zero_and_odd_fields_as_protobuf_does(batch: SignedBatch) -> None:
    """Fields protobuf leaves out when zero or empty (voter 0, vote batch 0, model version 0, an
    empty signature), a path node that is not 32 bytes, and vote batches offered twice."""
    odd = []
    for vb in batch.vote_batches:
        if vb.voter == 1:
            # an entry (for no vote here) whose hash is another length: some path holds it
            vb = dataclasses.replace(vb, entry_hashes=vb.entry_hashes + (b"\x07" * 5,), signature=b"")
        odd.append(dataclasses.replace(vb, batch_no=0))
    leaves = [dataclasses.replace(leaf, votes=tuple(dataclasses.replace(v, model_version=0) if v.replica_id == 2 else v for v in leaf.votes)) for leaf in batch.leaves]
    odd = [dataclasses.replace(vb, model_version=0) if vb.voter == 2 else vb for vb in odd]
    odd += [dataclasses.replace(vb, batch_no=5) for vb in odd]  # proved from the lowest batch number
    header = dataclasses.replace(batch.header, decisions_root=MerkleTree([leaf.hash for leaf in leaves]).root)
    quorum = (QuorumSignature(0, b""),) + batch.quorum[1:]
    assert encoded(header, leaves, quorum, odd) == encoded_as_built(header, leaves, quorum, odd)
    # parsed by protobuf alone: the strict decoder refuses the empty signature and the odd node
    certificates = [cpb.Certificate.FromString(full) for full, _ in encoded(header, leaves, quorum, odd)]
    assert certificates[0].quorum[0].replica_id == 0 and certificates[0].quorum[0].signature == b""
    assert {p.batch_no for c in certificates for p in c.vote_proofs} == {0}
    assert any(len(node) == 5 for c in certificates for p in c.vote_proofs for node in p.entry_path)


def test_composing_from_bytes_refuses_what_the_builder_refuses(batch: SignedBatch) -> None:
    cases = [
        ((batch.header, batch.leaves[:-1], batch.quorum), "decisions_root"),
        ((batch.header, batch.leaves, batch.quorum + batch.quorum[:1]), "twice"),
        ((batch.header, batch.leaves, batch.quorum, batch.vote_batches[:3]), "no vote batch of replica 3"),
        ((batch.header, batch.leaves, batch.quorum, [dataclasses.replace(vb, model_version=9) for vb in batch.vote_batches]), "model version 9"),
    ]
    for arguments, message in cases:
        with pytest.raises(ValueError, match=message) as built:
            build_certificates(*arguments)
        with pytest.raises(ValueError, match=message) as composed:
            encode_batch_certificates(*arguments)
        assert str(composed.value) == str(built.value)
