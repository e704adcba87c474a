"""The batch header's digest (what every PREPARE and COMMIT signs) and the hashed forms of vote
entries and leaves."""

from __future__ import annotations

import dataclasses
import enum

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certs.batch import BatchHeader, Leaf, VoteEntry
from certs.encoding import Domain, digest, encode
from certs.merkle import leaf_hash
from certs.outputs import ModelOutput, pack_pairs
from certs.policy import Decision, Vote


def _header(**changes: object) -> BatchHeader:
    values: dict[str, object] = dict(
        group_id="g", epoch=1, config_digest=b"\x01" * 32, view=0, seq=7, decisions_root=b"\x02" * 32,
        ops_digest=b"\x03" * 32, model_versions_digest=b"\x04" * 32, leaf_count=3,
    )
    values.update(changes)
    return BatchHeader(**values)  # type: ignore[arg-type]


def test_the_digest_covers_every_field_but_the_view() -> None:
    header = _header()
    expected = digest(Domain.BATCH, "g", 1, b"\x01" * 32, 7, b"\x02" * 32, 3, b"\x03" * 32, b"\x04" * 32)
    assert header.batch_digest == expected
    assert header.batch_digest == expected  # computed once, the same the second time
    assert _header(view=5).batch_digest == expected
    assert header.with_view(9).batch_digest == expected and header.with_view(9).view == 9


def test_a_header_changed_by_replace_gets_its_own_digest_not_a_copy() -> None:
    header = _header()
    original = header.batch_digest
    for field, value in (("seq", 8), ("leaf_count", 4), ("decisions_root", b"\x09" * 32), ("epoch", 2)):
        changed = dataclasses.replace(header, **{field: value})
        assert changed.batch_digest != original
        assert changed.batch_digest == _header(**{field: value}).batch_digest
    assert _header() == header  # the cached digest is not part of equality


# -- the hashed forms of vote entries and leaves, joined item by item ------------------------
# VoteEntry.canonical and Leaf.canonical build their bytes directly (a hot path); these pin them
# to what the general encoder gives for the same fields, so every hash and signature is unchanged.

_texts = st.text(max_size=12)
_ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_pairs = st.lists(st.tuples(st.integers(0, 2**40), st.integers(-5, 10_000)), min_size=1, max_size=6).map(tuple)
_votes = st.builds(Vote, _ints, _ints, _pairs.map(ModelOutput))
_decisions = st.builds(Decision, _ints, _pairs, st.lists(_ints, max_size=5).map(tuple))


@settings(max_examples=200, deadline=None)
@given(_texts, _texts, st.binary(max_size=40), st.lists(_texts, max_size=4).map(tuple), _pairs)
def test_a_vote_entry_hashes_what_the_general_encoder_writes(
    client_id: str, request_id: str, request_digest: bytes, label_space: tuple[str, ...], top: tuple[tuple[int, int], ...]
) -> None:
    entry = VoteEntry(client_id, request_id, request_digest, label_space, ModelOutput(top))
    expected = encode(Domain.VOTE_ENTRY, client_id, request_id, request_digest, label_space, pack_pairs(top))
    assert entry.canonical() == expected
    assert entry.hash == leaf_hash(expected)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40), _texts, _texts, st.lists(_texts, max_size=4).map(tuple), _texts, st.lists(_votes, max_size=5).map(tuple), _decisions)
def test_a_leaf_hashes_what_the_general_encoder_writes(
    request_digest: bytes, client_id: str, request_id: str, label_space: tuple[str, ...], policy: str,
    votes: tuple[Vote, ...], decision: Decision,
) -> None:
    leaf = Leaf(request_digest, client_id, request_id, label_space, policy, votes, decision)
    expected = encode(
        Domain.LEAF, request_digest, client_id, request_id, label_space, policy,
        tuple((v.replica_id, v.model_version, pack_pairs(v.output.top)) for v in votes),
        (decision.label, pack_pairs(decision.probabilities), decision.support),
    )
    assert leaf.canonical() == expected
    assert leaf.hash == leaf_hash(expected)


def test_odd_field_types_hash_as_the_general_encoder_has_them_or_fail_as_it_does() -> None:
    """Fields of a subclass of the expected type (a str subclass, an IntEnum) go through the general
    encoder; a boolean or an integer beyond 64 bits has no encoding at all."""

    class Name(str):
        pass

    class Replica(enum.IntEnum):
        TWO = 2

    entry = VoteEntry(Name("alice"), "r1", b"\x01" * 32, (Name("cat"), "dog"), ModelOutput(((3, 9000),)))
    assert entry.canonical() == encode(Domain.VOTE_ENTRY, "alice", "r1", b"\x01" * 32, ("cat", "dog"), pack_pairs(((3, 9000),)))
    vote = Vote(Replica.TWO, 1, ModelOutput(((3, 9000),)))
    assert vote.canonical_item() == encode(Domain.LEAF, vote.canonical())[len(Domain.LEAF.value):]
    decision = Decision(1, ((1, 5000),), (0, 1))
    for bad in (Vote(True, 1, ModelOutput(((3, 9000),))), Vote(2, 2**63, ModelOutput(((3, 9000),)))):
        with pytest.raises((TypeError, ValueError)):
            Leaf(b"\x01" * 32, "alice", "r1", (), "plurality", (bad,), decision)
    with pytest.raises(ValueError):
        ModelOutput(((1, 2**64),)).canonical()


def test_an_output_packs_once_and_its_cache_is_not_part_of_equality() -> None:
    output = ModelOutput(((3, 9000), (1, 1000)))
    first = output.canonical()
    assert first == pack_pairs(((3, 9000), (1, 1000))) and output.canonical() is first
    assert output == ModelOutput(((3, 9000), (1, 1000))) and hash(output) == hash(ModelOutput(((3, 9000), (1, 1000))))
