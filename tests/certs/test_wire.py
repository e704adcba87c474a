"""certs/wire.py: the encoding a leaf keeps once made is the encoding it would be made afresh."""

from __future__ import annotations

import dataclasses

from certs.batch import Leaf
from certs.wire import leaf_from_proto, leaf_to_proto, parse_canonical, serialize
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
