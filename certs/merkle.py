"""Merkle trees with inclusion proofs, as in RFC 6962 / RFC 9162 (Certificate Transparency).

Leaf hashes are SHA-256(0x00 || leaf) and interior nodes SHA-256(0x01 || left || right), so a leaf
can never be passed off as an interior node. The tree over n leaves splits at the largest power
of two below n; building it level by level and carrying an unpaired last node up unchanged gives
the same tree, which lets us compute every leaf's proof in one pass (a batch certifies all its
leaves at once).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from certs.errors import CertificateError

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(_LEAF_PREFIX + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _levels(leaf_hashes: Sequence[bytes]) -> list[list[bytes]]:
    levels = [list(leaf_hashes)]
    while len(levels[-1]) > 1:
        below = levels[-1]
        above = [node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
        if len(below) % 2:
            above.append(below[-1])
        levels.append(above)
    return levels


def root_of_hashes(leaf_hashes: Sequence[bytes]) -> bytes:
    if not leaf_hashes:
        return EMPTY_ROOT
    return _levels(leaf_hashes)[-1][0]


def root(leaves: Sequence[bytes]) -> bytes:
    """Merkle tree hash of the given leaf bytes (RFC 6962 section 2.1)."""
    return root_of_hashes([leaf_hash(leaf) for leaf in leaves])


class MerkleTree:
    """All levels of a tree over pre-hashed leaves, for root and proofs in one pass."""

    __slots__ = ("_levels", "size")

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        self.size = len(leaf_hashes)
        self._levels = _levels(leaf_hashes) if leaf_hashes else [[]]

    @classmethod
    def from_leaves(cls, leaves: Sequence[bytes]) -> MerkleTree:
        return cls([leaf_hash(leaf) for leaf in leaves])

    @property
    def root(self) -> bytes:
        return self._levels[-1][0] if self.size else EMPTY_ROOT

    def proof(self, index: int) -> tuple[bytes, ...]:
        """The audit path of leaf `index`, bottom up (RFC 6962 section 2.1.1)."""
        if not 0 <= index < self.size:
            raise IndexError(f"leaf {index} is outside a tree of {self.size}")
        path: list[bytes] = []
        for level in self._levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                path.append(level[sibling])
            index //= 2
        return tuple(path)


def verify_inclusion(leaf_digest: bytes, index: int, tree_size: int, path: Sequence[bytes], expected_root: bytes) -> None:
    """Check an audit path (RFC 9162 section 2.1.3.2); raise CertificateError if it fails.

    `leaf_digest` is the leaf hash (already prefixed with 0x00), as `leaf_hash` returns.
    """
    if not 0 <= index < tree_size:
        raise CertificateError(f"leaf index {index} is outside a tree of size {tree_size}")
    fn, sn = index, tree_size - 1
    node = leaf_digest
    for sibling in path:
        if len(sibling) != 32:
            raise CertificateError("inclusion proof holds a node that is not 32 bytes")
        if sn == 0:
            raise CertificateError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            node = node_hash(sibling, node)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            node = node_hash(node, sibling)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise CertificateError("inclusion proof is shorter than the tree is deep")
    if node != expected_root:
        raise CertificateError("leaf is not under the certified root (inclusion proof does not match)")
