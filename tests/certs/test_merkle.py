"""Merkle trees: every leaf proves its inclusion, nothing else does (RFC 6962 / RFC 9162)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certs.errors import CertificateError
from certs.merkle import EMPTY_ROOT, MerkleTree, leaf_hash, node_hash, root, root_of_hashes, verify_inclusion


def rfc6962_root(leaves: list[bytes]) -> bytes:
    """The recursive definition of RFC 6962 section 2.1, as an oracle."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaf_hash(leaves[0])
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node_hash(rfc6962_root(leaves[:k]), rfc6962_root(leaves[k:]))


def leaves_of(size: int, salt: int = 0) -> list[bytes]:
    return [f"leaf {salt}/{i}".encode() for i in range(size)]


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 7, 8, 9, 31, 64, 100])
def test_root_matches_the_rfc_definition(size: int) -> None:
    leaves = leaves_of(size)
    assert root(leaves) == MerkleTree.from_leaves(leaves).root == rfc6962_root(leaves)


def test_empty_tree_root() -> None:
    assert root([]) == root_of_hashes([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()


def _fails(leaf_digest: bytes, index: int, size: int, path: tuple[bytes, ...], expected_root: bytes) -> bool:
    try:
        verify_inclusion(leaf_digest, index, size, path, expected_root)
    except CertificateError:
        return True
    return False


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 1000), data=st.data())
def test_every_leaf_proves_inclusion_and_no_other_leaf_or_index_does(size: int, data: st.DataObject) -> None:
    hashes = [leaf_hash(x) for x in leaves_of(size)]
    tree = MerkleTree(hashes)
    for index in range(size):
        verify_inclusion(hashes[index], index, size, tree.proof(index), tree.root)
    index = data.draw(st.integers(0, size - 1))
    proof = tree.proof(index)
    if size > 1:
        other = data.draw(st.integers(0, size - 1).filter(lambda j: j != index))
        assert _fails(hashes[other], index, size, proof, tree.root)  # another leaf at this position
        assert _fails(hashes[index], other, size, proof, tree.root)  # this leaf at another position
        assert _fails(hashes[index], index, size, tree.proof(other), tree.root)  # another leaf's path
    assert _fails(leaf_hash(b"not in the tree"), index, size, proof, tree.root)
    assert _fails(hashes[index], index, size, proof, MerkleTree(hashes + [hashes[0]]).root)


@pytest.mark.parametrize("size", [1, 2, 5, 16])
def test_out_of_range_indexes_and_wrong_path_lengths_are_rejected(size: int) -> None:
    hashes = [leaf_hash(x) for x in leaves_of(size)]
    tree = MerkleTree(hashes)
    with pytest.raises(CertificateError, match="outside a tree"):
        verify_inclusion(hashes[0], size, size, tree.proof(0), tree.root)
    with pytest.raises(CertificateError, match="longer than the tree is deep"):
        verify_inclusion(hashes[0], 0, size, tree.proof(0) + (hashes[0],), tree.root)
    with pytest.raises(IndexError):
        tree.proof(size)


def test_leaves_and_interior_nodes_are_domain_separated() -> None:
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    # a leaf whose bytes are two child hashes does not hash to their parent (second preimage)
    assert leaf_hash(a + b) != node_hash(a, b)
    assert leaf_hash(b"") != EMPTY_ROOT
