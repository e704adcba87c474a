"""Canonical encoding: one value, one byte string; each signed kind in its own domain."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certs.batch import vote_batch_content
from certs.encoding import Domain, digest, encode
from certs.keys import Ed25519Verifier
from certs.statements import SLOT_ARITY, SignedStatement, Statement, StatementKind
from tests.certs.helpers import replica_key

leaves = (
    st.integers(-(2**63), 2**63 - 1)
    | st.binary(max_size=12)
    | st.text(max_size=8)
    | st.none()
)
values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4).map(tuple), max_leaves=12)


def normalise(value: Any) -> Any:
    # lists and tuples encode alike; tag the type of every other item so 1 and b"\x01" stay apart
    if isinstance(value, (list, tuple)):
        return ("seq", tuple(normalise(v) for v in value))
    return (type(value).__name__, value)


@settings(max_examples=150, deadline=None)
@given(values, values)
def test_encoding_is_injective(a: Any, b: Any) -> None:
    assert (encode(Domain.LEAF, a) == encode(Domain.LEAF, b)) == (normalise(a) == normalise(b))


@settings(max_examples=100, deadline=None)
@given(st.lists(values, max_size=4), st.lists(values, max_size=4))
def test_field_sequences_are_prefix_free(a: list[Any], b: list[Any]) -> None:
    # encode(d, x, y) never equals encode(d, x') for a different split of the same bytes
    same = [normalise(v) for v in a] == [normalise(v) for v in b]
    assert (encode(Domain.BATCH, *a) == encode(Domain.BATCH, *b)) == same


@settings(max_examples=100, deadline=None)
@given(values)
def test_the_same_value_always_gives_the_same_bytes(value: Any) -> None:
    assert encode(Domain.STATE, value) == encode(Domain.STATE, value)
    listed = list(value) if isinstance(value, tuple) else value
    assert encode(Domain.STATE, listed) == encode(Domain.STATE, value)


def test_booleans_and_oversized_integers_have_no_encoding() -> None:
    with pytest.raises(TypeError):
        encode(Domain.LEAF, True)
    with pytest.raises(ValueError):
        encode(Domain.LEAF, 2**63)
    with pytest.raises(TypeError):
        encode(Domain.LEAF, 1.5)  # type: ignore[arg-type]


def test_no_domain_tag_is_a_prefix_of_another() -> None:
    for a, b in itertools.permutations(Domain, 2):
        assert not b.value.startswith(a.value), (a, b)


def test_digests_differ_across_domains() -> None:
    assert len({digest(d, 1, b"x") for d in Domain}) == len(Domain)


def _statement(kind: StatementKind) -> Statement:
    slot = (3, 7) if SLOT_ARITY[kind] == 2 else (7,)
    return Statement(kind, "digits", 1, 2, slot, digest(Domain.BATCH, "content"))


@pytest.mark.parametrize("signed_kind, presented_kind", list(itertools.permutations(StatementKind, 2)))
def test_a_signature_on_one_kind_never_verifies_as_another(
    signed_kind: StatementKind, presented_kind: StatementKind
) -> None:
    key = replica_key(2)
    signature = _statement(signed_kind).sign(key.signer()).signature
    assert not Ed25519Verifier(cache_size=0).verify(key.public_key, _statement(presented_kind).message(), signature)


def test_a_vote_batch_signature_does_not_verify_as_a_commit() -> None:
    key = replica_key(1)
    content = vote_batch_content(3, digest(Domain.VOTE_ENTRY, "root"), 16)
    vote = Statement(StatementKind.VOTE_BATCH, "digits", 1, 1, (5,), content).sign(key.signer())
    for kind, slot in [(StatementKind.COMMIT, (0, 5)), (StatementKind.PREPARE, (5, 0)), (StatementKind.CHECKPOINT, (5,))]:
        as_other = Statement(kind, "digits", 1, 1, slot, content)
        assert not SignedStatement(as_other, vote.signature).verify(Ed25519Verifier(cache_size=0), key.public_key)
