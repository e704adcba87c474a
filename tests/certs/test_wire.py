"""certs/wire.py: the encoding a leaf keeps once made is the encoding it would be made afresh, and
fields composed from bytes are exactly what protobuf writes."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certs.batch import Leaf, VoteEntry
from certs.errors import DecodeError
from certs.outputs import ModelOutput
from certs.wire import (
    VOTED_OUTPUT_BYTES_MAX,
    VOTED_OUTPUTS_MAX,
    bytes_field,
    bytes_field_item,
    leaf_from_proto,
    leaf_to_proto,
    leaf_wire,
    message_field,
    parse_canonical,
    serialize,
    voted_outputs,
    uint_field,
    varint,
    vote_entry_from_proto,
    vote_entry_to_proto,
)
from protos import certificate_pb2 as cpb
from protos import common_pb2 as pb
from tests.certs.helpers import SignedBatch


def fresh(leaf: Leaf) -> Leaf:
    """The same leaf with no encoding kept (dataclasses.replace builds a new object)."""
    copy = dataclasses.replace(leaf)
    assert copy.wire is None
    return copy


def test_a_leaf_encodes_the_same_whether_its_encoding_was_made_kept_or_read(batch: SignedBatch) -> None:
    for leaf in batch.leaves:
        made = serialize(leaf_to_proto(fresh(leaf)))
        twice = fresh(leaf)
        assert serialize(leaf_to_proto(twice)) == made
        assert twice.wire == made
        assert serialize(leaf_to_proto(twice)) == made  # from the kept bytes
        assert leaf_wire(fresh(leaf)) == made and leaf_wire(twice) is twice.wire
        read = leaf_from_proto(parse_canonical(pb.Leaf, made, "leaf"))
        assert read == leaf and read.hash == leaf.hash
        assert read.wire == made
        assert serialize(leaf_to_proto(read)) == made


def test_a_kept_encoding_merges_into_a_containing_message_like_a_fresh_one(batch: SignedBatch) -> None:
    leaf = batch.leaves[0]
    kept, made = cpb.Certificate(leaf_index=3), cpb.Certificate(leaf_index=3)
    leaf_to_proto(leaf, kept.leaf)
    leaf_to_proto(fresh(leaf), made.leaf)
    assert serialize(kept) == serialize(made)
    assert leaf_from_proto(kept.leaf) == leaf


def test_a_changed_leaf_never_carries_the_old_encoding(batch: SignedBatch) -> None:
    leaf = batch.leaves[0]
    leaf_to_proto(leaf)
    assert leaf.wire is not None
    changed = dataclasses.replace(leaf, request_id="another-request")
    decoded = leaf_from_proto(parse_canonical(pb.Leaf, serialize(leaf_to_proto(changed)), "leaf"))
    assert decoded.request_id == "another-request"
    assert decoded == changed and decoded.hash != leaf.hash


# -- fields composed from bytes (uint_field and its siblings) -------------------------------

UINT64 = st.integers(min_value=0, max_value=2**64 - 1)


@given(voter=st.integers(min_value=0, max_value=2**32 - 1), batch_no=UINT64, entry_index=UINT64,
       root=st.binary(max_size=40), path=st.lists(st.binary(max_size=40), max_size=4), signature=st.binary(max_size=70))
@settings(max_examples=200, deadline=None)
def test_composed_fields_are_what_protobuf_writes(voter: int, batch_no: int, entry_index: int, root: bytes, path: list[bytes], signature: bytes) -> None:
    """Zero and empty values left out, repeated items and sub-messages always written: a
    message composed from the helpers parses back and is byte for byte protobuf's own."""
    composed = b"".join([
        uint_field(1, voter), uint_field(2, batch_no), bytes_field(4, root), uint_field(6, entry_index),
        *[bytes_field_item(7, node) for node in path], bytes_field(8, signature),
    ])
    expected = cpb.VoteProof(voter=voter, batch_no=batch_no, entries_root=root, entry_index=entry_index, entry_path=path, signature=signature)
    assert composed == serialize(expected)
    assert message_field(7, composed) == serialize(cpb.Certificate(vote_proofs=[expected]))


def test_a_set_but_empty_sub_message_is_written_as_protobuf_writes_it() -> None:
    message = cpb.Certificate()
    message.header.SetInParent()
    assert message_field(1, b"") == serialize(message)


@pytest.mark.parametrize("value", [-1, 2**64])
def test_an_integer_a_uint64_cannot_hold_is_refused(value: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        uint_field(2, value)
    with pytest.raises(ValueError):
        cpb.VoteProof(batch_no=value)  # as protobuf refuses it


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_varint_is_protobufs(value: int) -> None:
    assert uint_field(5, value) == serialize(cpb.VoteProof(entry_count=value))
    assert varint(value) == (uint_field(5, value)[1:] if value else b"\x00")


# -- voted outputs decoded once ---------------------------------------------------------------


@pytest.fixture(name="memo")
def empty_memo() -> Iterator[dict[bytes, ModelOutput]]:
    """An empty memo of voted outputs for the test, the process's own put back afterwards."""
    with voted_outputs() as memo:
        yield memo


def read_entry(leaf: Leaf, output: ModelOutput) -> VoteEntry:
    """A vote entry for `leaf`'s request as a peer's vote batch carries it, decoded from bytes."""
    entry = VoteEntry(leaf.client_id, leaf.request_id, leaf.request_digest, leaf.label_space, output)
    encoded = serialize(vote_entry_to_proto(entry))
    return vote_entry_from_proto(parse_canonical(pb.VoteEntry, encoded, "vote entry"))


def read_leaf(leaf: Leaf) -> Leaf:
    return leaf_from_proto(parse_canonical(pb.Leaf, leaf_wire(fresh(leaf)), "leaf"))


def test_a_vote_read_again_in_a_leaf_is_the_output_its_vote_entry_was_read_as(
    batch: SignedBatch, memo: dict[bytes, ModelOutput]
) -> None:
    """A backup reads each peer's vote in its vote batch and again in the PRE-PREPARE's leaf: the
    second reading is the same object (nothing decoded twice, an identity check to compare), and
    the leaf is the leaf, hash included. Votes whose batch was not read decode afresh."""
    for leaf in batch.leaves:
        entries = [read_entry(leaf, vote.output) for vote in leaf.votes[:-1]]  # the last voter's batch never came
        read = read_leaf(leaf)
        assert read == leaf and read.hash == leaf.hash
        for entry, vote in zip(entries, read.votes):
            assert vote.output is entry.output
        assert read.votes[-1].output == leaf.votes[-1].output
        assert all(read.votes[-1].output is not entry.output for entry in entries)


def test_reading_leaves_alone_remembers_nothing(batch: SignedBatch, memo: dict[bytes, ModelOutput]) -> None:
    """A client checking certificates reads leaves, never vote batches: it keeps no memo."""
    for leaf in batch.leaves:
        assert read_leaf(leaf) == leaf
    assert memo == {}


pairs = st.lists(st.tuples(st.integers(0, 999), st.integers(1, 10_000)), min_size=1, max_size=10).map(tuple)


@settings(max_examples=60, deadline=None)
@given(remembered=pairs, other=pairs)
def test_a_vote_never_takes_another_outputs_reading(batch: SignedBatch, remembered: tuple[tuple[int, int], ...], other: tuple[tuple[int, int], ...]) -> None:
    with voted_outputs():
        leaf = batch.leaves[0]
        kept = read_entry(leaf, ModelOutput(remembered)).output
        vote = dataclasses.replace(leaf.votes[0], output=ModelOutput(other))
        changed = dataclasses.replace(leaf, votes=(vote, *leaf.votes[1:]))
        read = read_leaf(changed)
        assert read.votes[0].output.top == other
        assert (read.votes[0].output is kept) == (other == remembered)


def test_the_memo_of_voted_outputs_stays_bounded(batch: SignedBatch, memo: dict[bytes, ModelOutput]) -> None:
    leaf = batch.leaves[0]
    for i in range(VOTED_OUTPUTS_MAX + 10):
        read_entry(leaf, ModelOutput(((i % 1000, 1 + i // 1000),)))
        assert len(memo) <= VOTED_OUTPUTS_MAX
    assert memo  # still remembering the latest


def test_an_oversized_output_is_read_but_not_remembered(batch: SignedBatch, memo: dict[bytes, ModelOutput]) -> None:
    """A peer's vote batch is read before consensus checks it: outputs longer than any top_k a
    task uses are not kept, so a peer cannot fill the replica's memory with them."""
    leaf = batch.leaves[0]
    small = ModelOutput(tuple((c, 100 - c) for c in range(10)))
    large = ModelOutput(tuple((c, 10_000 - c) for c in range(1000)))
    assert read_entry(leaf, small).output == small
    assert read_entry(leaf, large).output == large
    assert len(memo) == 1 and all(len(key) <= VOTED_OUTPUT_BYTES_MAX for key in memo)


def test_a_vote_entry_with_an_empty_output_is_refused_and_not_remembered(
    batch: SignedBatch, memo: dict[bytes, ModelOutput]
) -> None:
    leaf = batch.leaves[0]
    with pytest.raises(DecodeError, match="lists no classes"):
        read_entry(leaf, ModelOutput(()))
    assert memo == {}
