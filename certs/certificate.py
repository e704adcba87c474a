"""The inference certificate: what a client keeps as proof of a certified result.

    header       the committed batch header (certs/batch.py)
    quorum       >= quorum_size COMMIT signatures over the header, ascending replica ids
    leaf         the request's decision leaf: votes, model versions, policy, decision
    proof        the leaf's Merkle audit path under header.decisions_root
    vote_proofs  optional (accountability mode): each voter's signed VoteBatch root and the
                 path of its vote under that root, so the vote is non-repudiable

Certificates travel as protobuf (protos/certificate.proto) and are shown to people as JSON.
Both decoders are strict: they either return a Certificate or raise `DecodeError`. Decoding
checks structure only; `certs.verify.verify` decides whether a certificate is valid.

The tree size of the inclusion proof is the header's signed `leaf_count` (as RFC 6962 signs
tree heads), so a proof cannot be replayed against another tree size.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from certs.batch import BatchHeader, Leaf, VoteEntry, vote_batch_content
from certs.config import GroupConfig
from certs.encoding import DIGEST_SIZE
from certs.errors import DecodeError
from certs.keys import SIGNATURE_SIZE, key_id
from certs.merkle import MerkleTree, root_of_hashes
from certs.outputs import PROB_SCALE, ModelOutput
from certs.policy import NO_AGREEMENT, Decision, Vote
from certs.statements import Statement, StatementKind
from certs.wire import (
    bytes_field,
    bytes_field_item,
    check_digest,
    check_int,
    check_list,
    header_from_proto,
    header_to_proto,
    leaf_from_proto,
    leaf_to_proto,
    leaf_wire,
    message_field,
    parse_canonical,
    serialize,
    uint_field,
)
from protos import certificate_pb2 as cpb

JSON_FORMAT = "quorumserve-certificate/v1"
# A batch holds at most a few thousand requests; 64 levels covers any tree that fits in memory.
PATH_MAX = 64
QUORUM_MAX = 1 << 10
NO_AGREEMENT_NAME = "NO_AGREEMENT"


# -- the certificate ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuorumSignature:
    """One replica's COMMIT signature over the batch header."""

    replica_id: int
    signature: bytes


@dataclass(frozen=True, slots=True)
class VoteProof:
    """A voter's signed VoteBatch (by root) and where its vote for this request sits in it."""

    voter: int
    batch_no: int
    model_version: int
    entries_root: bytes
    entry_count: int
    entry_index: int
    entry_path: tuple[bytes, ...]
    signature: bytes

    def statement(self, group_id: str, epoch: int) -> Statement:
        """The VOTE_BATCH statement the voter signed."""
        content = vote_batch_content(self.model_version, self.entries_root, self.entry_count)
        return Statement(StatementKind.VOTE_BATCH, group_id, epoch, self.voter, (self.batch_no,), content)


@dataclass(frozen=True, slots=True)
class Certificate:
    header: BatchHeader
    quorum: tuple[QuorumSignature, ...]  # ascending replica ids
    leaf: Leaf
    leaf_index: int
    proof: tuple[bytes, ...]  # audit path of leaf_index, bottom up
    vote_proofs: tuple[VoteProof, ...] = ()  # () = compact; else one per vote in leaf.votes

    @property
    def tree_size(self) -> int:
        """Leaves under decisions_root: the signed header says so, the certificate cannot."""
        return self.header.leaf_count

    @property
    def is_compact(self) -> bool:
        return not self.vote_proofs

    @property
    def signers(self) -> tuple[int, ...]:
        return tuple(q.replica_id for q in self.quorum)

    def compact(self) -> Certificate:
        """The same certificate without vote proofs."""
        return Certificate(self.header, self.quorum, self.leaf, self.leaf_index, self.proof)


def vote_entry(leaf: Leaf, vote: Vote) -> VoteEntry:
    """The VoteBatch entry a voter signed for this leaf's request."""
    return VoteEntry(leaf.client_id, leaf.request_id, leaf.request_digest, leaf.label_space, vote.output)


# -- building ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignedVoteBatch:
    """What the certificate builder needs of one signed VoteBatch (consensus.messages.VoteBatch:
    voter = sender, entry_hashes = tuple(e.hash for e in entries))."""

    voter: int
    batch_no: int
    model_version: int
    entry_hashes: tuple[bytes, ...]
    signature: bytes
    # the entries themselves, in order, when the builder has them: a vote is then found by its
    # content instead of by hashing its entry again (one SHA-256 per vote per certificate)
    entries: tuple[VoteEntry, ...] = field(default=(), repr=False, compare=False)
    # computed when first asked for: a replica certifying a batch proves votes from a tree of
    # the entry hashes it builds anyway, and never asks
    _entries_root: bytes | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def entries_root(self) -> bytes:
        root = self._entries_root
        if root is None:
            root = root_of_hashes(self.entry_hashes)
            object.__setattr__(self, "_entries_root", root)
        return root

    def statement(self, group_id: str, epoch: int) -> Statement:
        content = vote_batch_content(self.model_version, self.entries_root, len(self.entry_hashes))
        return Statement(StatementKind.VOTE_BATCH, group_id, epoch, self.voter, (self.batch_no,), content)


def build_certificates(
    header: BatchHeader,
    leaves: Sequence[Leaf],
    quorum: Iterable[QuorumSignature],
    vote_batches: Iterable[SignedVoteBatch] | None = None,
) -> list[Certificate]:
    """One certificate per leaf of a committed batch, in leaf order.

    The tree is built once and every proof read from it. With `vote_batches`, each certificate
    carries a vote proof per vote (accountability mode); a vote found in several of a voter's
    batches is proved from the lowest batch number. Raises ValueError when the inputs do not
    belong together (a root that does not match the leaves, a duplicate signer, a missing vote).
    """
    tree, signatures = _tree_and_quorum(header, leaves, quorum)
    locator = None if vote_batches is None else _VoteLocator(vote_batches)
    certificates = []
    for index, leaf in enumerate(leaves):
        vote_proofs: tuple[VoteProof, ...] = ()
        if locator is not None:
            vote_proofs = tuple(_vote_proof(leaf, vote, locator) for vote in leaf.votes)
        certificates.append(
            Certificate(header, signatures, leaf, index, tree.proof(index), vote_proofs)
        )
    return certificates


def _tree_and_quorum(
    header: BatchHeader, leaves: Sequence[Leaf], quorum: Iterable[QuorumSignature]
) -> tuple[MerkleTree, tuple[QuorumSignature, ...]]:
    """The decisions tree, checked against the header, and the quorum in ascending replica ids."""
    tree = MerkleTree([leaf.hash for leaf in leaves])
    if tree.root != header.decisions_root or tree.size != header.leaf_count:
        raise ValueError("the leaves do not hash to the header's decisions_root and leaf_count")
    signatures = tuple(sorted(quorum, key=lambda q: q.replica_id))
    ids = [q.replica_id for q in signatures]
    if len(set(ids)) != len(ids):
        raise ValueError("the quorum names a replica twice")
    return tree, signatures


class _VoteLocator:
    """Where each vote sits among its voter's signed vote batches: the lowest-numbered batch
    holding its entry, and the entry's first place in it. A vote is found by its content among
    the entries the builder was given (looked up by voter and request ids, whose hashes Python
    keeps, then compared field by field), else by hashing its entry again."""

    __slots__ = ("located", "by_request", "trees")

    def __init__(self, vote_batches: Iterable[SignedVoteBatch]) -> None:
        self.located: dict[tuple[int, bytes], tuple[SignedVoteBatch, int]] = {}
        self.by_request: dict[tuple[int, str, str], list[tuple[VoteEntry, bytes]]] = {}
        self.trees: dict[tuple[int, int], MerkleTree] = {}
        for batch in sorted(vote_batches, key=lambda b: (b.voter, b.batch_no)):
            voter = batch.voter
            for index, entry_hash in enumerate(batch.entry_hashes):
                self.located.setdefault((voter, entry_hash), (batch, index))
            if len(batch.entries) == len(batch.entry_hashes):
                for entry, entry_hash in zip(batch.entries, batch.entry_hashes):
                    self.by_request.setdefault((voter, entry.client_id, entry.request_id), []).append((entry, entry_hash))

    def find(self, leaf: Leaf, vote: Vote) -> tuple[SignedVoteBatch, int, MerkleTree]:
        """The vote's batch, its entry's index there and the batch's entry tree; ValueError
        when no batch of the voter holds it, or the batch is for another model version."""
        entry_hash = None
        for entry, candidate in self.by_request.get((vote.replica_id, leaf.client_id, leaf.request_id), ()):
            if entry.output == vote.output and entry.request_digest == leaf.request_digest and entry.label_space == leaf.label_space:
                entry_hash = candidate
                break
        if entry_hash is None:
            entry_hash = vote_entry(leaf, vote).hash
        found = self.located.get((vote.replica_id, entry_hash))
        if found is None:
            raise ValueError(
                f"no vote batch of replica {vote.replica_id} holds its vote for request "
                f"{leaf.client_id}/{leaf.request_id}"
            )
        batch, entry_index = found
        if batch.model_version != vote.model_version:
            raise ValueError(
                f"replica {vote.replica_id}'s vote batch {batch.batch_no} is for model version "
                f"{batch.model_version}, the leaf says {vote.model_version}"
            )
        tree = self.trees.get((batch.voter, batch.batch_no))
        if tree is None:
            tree = self.trees[(batch.voter, batch.batch_no)] = MerkleTree(batch.entry_hashes)
        return batch, entry_index, tree


def _vote_proof(leaf: Leaf, vote: Vote, locator: _VoteLocator) -> VoteProof:
    batch, entry_index, tree = locator.find(leaf, vote)
    return VoteProof(
        voter=batch.voter,
        batch_no=batch.batch_no,
        model_version=batch.model_version,
        entries_root=tree.root,
        entry_count=tree.size,
        entry_index=entry_index,
        entry_path=tree.proof(entry_index),
        signature=batch.signature,
    )


# -- building, straight to bytes ---------------------------------------------------------


# what precedes a 32-byte node of a path: Certificate.proof is field 6, VoteProof.entry_path 7
_PROOF_NODE = bytes_field_item(6, bytes(DIGEST_SIZE))[:-DIGEST_SIZE]
_ENTRY_PATH_NODE = bytes_field_item(7, bytes(DIGEST_SIZE))[:-DIGEST_SIZE]


@dataclass(frozen=True, slots=True)
class EncodedCertificate:
    """One request's certificate as a replica stores and serves it: `full`, with a vote proof
    per vote when the builder had the vote batches (else the compact form again), and
    `compact`, what a client is answered with."""

    full: bytes
    compact: bytes


def encode_batch_certificates(
    header: BatchHeader,
    leaves: Sequence[Leaf],
    quorum: Iterable[QuorumSignature],
    vote_batches: Iterable[SignedVoteBatch] | None = None,
) -> list[EncodedCertificate]:
    """`encode_certificate(c)` and `encode_certificate(c.compact())` for every certificate
    `build_certificates` would return, byte for byte (a property test holds it to that), and
    the same ValueErrors, without building them.

    A replica does this for every request it certifies, and serving needs only bytes. Composed
    from the protobuf encoding's parts, a batch's header and quorum are encoded once rather than
    once per request, and a vote batch's fixed fields once rather than once per vote: the
    messages are fixed (protos/certificate.proto) and the helpers write exactly what protobuf
    writes (certs.wire.uint_field and its siblings), as the PeerBatch framing does."""
    tree, signatures = _tree_and_quorum(header, leaves, quorum)
    head = message_field(1, serialize(header_to_proto(header))) + b"".join(
        [message_field(2, uint_field(1, q.replica_id) + bytes_field(2, q.signature)) for q in signatures]
    )
    locator = None if vote_batches is None else _VoteLocator(vote_batches)
    # a vote proof's fields before entry_index (voter .. entry_count) and after entry_path
    # (signature), per vote batch
    around: dict[tuple[int, int], tuple[bytes, bytes]] = {}
    encoded: list[EncodedCertificate] = []
    for index, leaf in enumerate(leaves):
        compact = b"".join([
            head,
            message_field(3, leaf_wire(leaf)),
            uint_field(4, index),
            *[_PROOF_NODE + node if len(node) == DIGEST_SIZE else bytes_field_item(6, node) for node in tree.proof(index)],
        ])
        if locator is None:
            encoded.append(EncodedCertificate(compact, compact))
            continue
        proofs = [compact]
        for vote in leaf.votes:
            batch, entry_index, entry_tree = locator.find(leaf, vote)
            key = (batch.voter, batch.batch_no)
            fixed = around.get(key)
            if fixed is None:
                fixed = around[key] = (
                    b"".join([
                        uint_field(1, batch.voter),
                        uint_field(2, batch.batch_no),
                        uint_field(3, batch.model_version),
                        bytes_field(4, entry_tree.root),
                        uint_field(5, entry_tree.size),
                    ]),
                    bytes_field(8, batch.signature),
                )
            proofs.append(message_field(7, b"".join([
                fixed[0],
                uint_field(6, entry_index),
                *[_ENTRY_PATH_NODE + node if len(node) == DIGEST_SIZE else bytes_field_item(7, node) for node in entry_tree.proof(entry_index)],
                fixed[1],
            ])))
        encoded.append(EncodedCertificate(b"".join(proofs), compact))
    return encoded


# -- protobuf ----------------------------------------------------------------------------


def _check_signature(value: bytes, what: str) -> bytes:
    if len(value) != SIGNATURE_SIZE:
        raise DecodeError(f"{what} must be {SIGNATURE_SIZE} bytes, is {len(value)}")
    return bytes(value)


def _check_path(values: Sequence[bytes], what: str) -> tuple[bytes, ...]:
    check_list(values, what, PATH_MAX)
    return tuple(check_digest(v, f"{what} node") for v in values)


def vote_proof_to_proto(proof: VoteProof, out: cpb.VoteProof | None = None) -> cpb.VoteProof:
    message = cpb.VoteProof() if out is None else out
    message.voter = proof.voter
    message.batch_no = proof.batch_no
    message.model_version = proof.model_version
    message.entries_root = proof.entries_root
    message.entry_count = proof.entry_count
    message.entry_index = proof.entry_index
    message.entry_path.extend(proof.entry_path)
    message.signature = proof.signature
    return message


def vote_proof_from_proto(message: cpb.VoteProof) -> VoteProof:
    return VoteProof(
        voter=int(message.voter),
        batch_no=check_int(message.batch_no, "vote batch number"),
        model_version=check_int(message.model_version, "model version"),
        entries_root=check_digest(message.entries_root, "vote batch root"),
        entry_count=check_int(message.entry_count, "vote batch entry count"),
        entry_index=check_int(message.entry_index, "vote entry index"),
        entry_path=_check_path(message.entry_path, "vote entry path"),
        signature=_check_signature(message.signature, "vote batch signature"),
    )


def certificate_to_proto(cert: Certificate, out: cpb.Certificate | None = None) -> cpb.Certificate:
    message = cpb.Certificate() if out is None else out
    header_to_proto(cert.header, message.header)
    for q in cert.quorum:
        message.quorum.add(replica_id=q.replica_id, signature=q.signature)
    leaf_to_proto(cert.leaf, message.leaf)
    message.leaf_index = cert.leaf_index
    message.proof.extend(cert.proof)
    for proof in cert.vote_proofs:
        vote_proof_to_proto(proof, message.vote_proofs.add())
    return message


def certificate_from_proto(message: cpb.Certificate) -> Certificate:
    """Convert a parsed message; raises DecodeError on anything malformed."""
    try:
        if not message.HasField("header"):
            raise DecodeError("certificate has no header")
        if not message.HasField("leaf"):
            raise DecodeError("certificate has no leaf")
        check_list(message.quorum, "quorum", QUORUM_MAX)
        return Certificate(
            header=header_from_proto(message.header),
            quorum=tuple(
                QuorumSignature(int(q.replica_id), _check_signature(q.signature, "quorum signature"))
                for q in message.quorum
            ),
            leaf=leaf_from_proto(message.leaf),
            leaf_index=check_int(message.leaf_index, "leaf index"),
            proof=_check_path(message.proof, "inclusion proof"),
            vote_proofs=tuple(
                vote_proof_from_proto(p) for p in check_list(message.vote_proofs, "vote proofs", QUORUM_MAX)
            ),
        )
    except DecodeError:
        raise
    except (ValueError, TypeError, OverflowError, IndexError, KeyError) as exc:
        # e.g. a value the canonical encoder refuses while hashing the leaf
        raise DecodeError(f"malformed certificate: {exc}") from exc


def encode_certificate(cert: Certificate) -> bytes:
    return serialize(certificate_to_proto(cert))


def decode_certificate(data: bytes) -> Certificate:
    return certificate_from_proto(parse_canonical(cpb.Certificate, data, "certificate"))


# -- JSON for people -----------------------------------------------------------------------
#
# Exact fields (ints, lowercase hex, [class, quantised probability] pairs) are what
# certificate_from_json reads. Display fields (floats, names, key ids, the summary) are
# derived; on reading, every display field that can be derived without a config must match
# the certificate, and the few that need a config (NAMED_KEYS) are ignored. So a JSON
# certificate never says something its exact fields do not.

NAMED_KEYS = frozenset({"label_name", "decision_label", "key_id", "probabilities_by_label", "signer_key_ids"})
_HEX = re.compile(r"[0-9a-f]*")


def label_names(leaf: Leaf, config: GroupConfig | None) -> tuple[str, ...] | None:
    """The names of the leaf's classes: its decision space, else the task's labels."""
    if leaf.label_space:
        return leaf.label_space
    return None if config is None else config.task.class_labels


def class_name(names: Sequence[str] | None, class_index: int) -> str | None:
    if class_index == NO_AGREEMENT:
        return NO_AGREEMENT_NAME
    if names is None or not 0 <= class_index < len(names):
        return None
    return names[class_index]


def _floats(top: Sequence[tuple[int, int]]) -> list[list[float | int]]:
    return [[cls, q / PROB_SCALE] for cls, q in top]


def _by_label(names: Sequence[str] | None, top: Sequence[tuple[int, int]]) -> dict[str, float] | None:
    if names is None or not all(0 <= cls < len(names) for cls, _ in top):
        return None
    return {names[cls]: q / PROB_SCALE for cls, q in top}


def certificate_to_json(cert: Certificate, config: GroupConfig | None = None) -> dict[str, Any]:
    """The certificate as a JSON-ready dict: exact fields plus readable, derived ones."""
    header, leaf = cert.header, cert.leaf
    names = label_names(leaf, config)
    named = config is not None or bool(leaf.label_space)

    votes = []
    for vote in leaf.votes:
        item: dict[str, Any] = {
            "replica_id": vote.replica_id,
            "model_version": vote.model_version,
            "output": [[cls, q] for cls, q in vote.output.top],
            "probabilities": _floats(vote.output.top),
        }
        label = class_name(names, vote.output.label) if vote.output.top else None
        if named and label is not None:
            item["label_name"] = label
        votes.append(item)

    decision = leaf.decision
    decision_json: dict[str, Any] = {
        "label": decision.label,
        "probabilities": [[cls, q] for cls, q in decision.probabilities],
        "support": list(decision.support),
    }
    summary: dict[str, Any] = {
        "group_id": header.group_id,
        "epoch": header.epoch,
        "seq": header.seq,
        "client_id": leaf.client_id,
        "request_id": leaf.request_id,
        "agreed": decision.agreed,
        "decision_class": decision.label,
        "probabilities": _floats(decision.probabilities),
        "policy": leaf.policy,
        "supporters": list(decision.support),
        "signers": list(cert.signers),
        "model_versions": [[vote.replica_id, vote.model_version] for vote in leaf.votes],
        "form": "compact" if cert.is_compact else "accountability",
    }
    decision_name = class_name(names, decision.label)
    if decision_name is not None and (named or not decision.agreed):
        summary["decision_label"] = decision_name
    by_label = _by_label(names, decision.probabilities) if named else None
    if by_label is not None:
        summary["probabilities_by_label"] = by_label
    quorum: list[dict[str, Any]] = []
    keys: dict[str, str] = {}
    for q in cert.quorum:
        entry: dict[str, Any] = {"replica_id": q.replica_id, "signature": q.signature.hex()}
        public_key = None if config is None else config.public_key(q.replica_id)
        if public_key is not None:
            entry["key_id"] = keys[str(q.replica_id)] = key_id(public_key)
        quorum.append(entry)
    if config is not None:
        summary["signer_key_ids"] = keys

    return {
        "format": JSON_FORMAT,
        "summary": summary,
        "header": {
            "group_id": header.group_id,
            "epoch": header.epoch,
            "config_digest": header.config_digest.hex(),
            "view": header.view,
            "seq": header.seq,
            "decisions_root": header.decisions_root.hex(),
            "leaf_count": header.leaf_count,
            "ops_digest": header.ops_digest.hex(),
            "model_versions_digest": header.model_versions_digest.hex(),
            "batch_digest": header.batch_digest.hex(),
        },
        "quorum": quorum,
        "leaf": {
            "request_digest": leaf.request_digest.hex(),
            "client_id": leaf.client_id,
            "request_id": leaf.request_id,
            "label_space": list(leaf.label_space),
            "policy": leaf.policy,
            "votes": votes,
            "decision": decision_json,
        },
        "leaf_index": cert.leaf_index,
        "tree_size": cert.tree_size,
        "proof": [node.hex() for node in cert.proof],
        "vote_proofs": [
            {
                "voter": p.voter,
                "batch_no": p.batch_no,
                "model_version": p.model_version,
                "entries_root": p.entries_root.hex(),
                "entry_count": p.entry_count,
                "entry_index": p.entry_index,
                "entry_path": [node.hex() for node in p.entry_path],
                "signature": p.signature.hex(),
            }
            for p in cert.vote_proofs
        ],
    }


# Strict readers for the exact fields; `where` names the field in error messages.


def json_object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise DecodeError(f"{where}: expected a JSON object")
    return value


def json_get(data: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise DecodeError(f"{where}: missing field {key!r}")
    return data[key]


def json_int(value: Any, where: str, minimum: int = 0, maximum: int = 2**63 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DecodeError(f"{where}: expected an integer, got {type(value).__name__}")
    if not minimum <= value <= maximum:
        raise DecodeError(f"{where}: {value} is out of range")
    return value


def json_str(value: Any, where: str, maximum: int = 1024) -> str:
    if not isinstance(value, str):
        raise DecodeError(f"{where}: expected a string, got {type(value).__name__}")
    if len(value) > maximum:
        raise DecodeError(f"{where}: longer than {maximum} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DecodeError(f"{where}: not valid Unicode text") from exc
    return value


def json_hex(value: Any, where: str, size: int | None = None) -> bytes:
    text = json_str(value, where, maximum=1 << 16)
    if len(text) % 2 or not _HEX.fullmatch(text):
        raise DecodeError(f"{where}: expected lowercase hex")
    raw = bytes.fromhex(text)
    if size is not None and len(raw) != size:
        raise DecodeError(f"{where}: expected {size} bytes, got {len(raw)}")
    return raw


def json_list(value: Any, where: str, maximum: int = 1 << 16) -> list[Any]:
    if not isinstance(value, list):
        raise DecodeError(f"{where}: expected a list")
    if len(value) > maximum:
        raise DecodeError(f"{where}: more than {maximum} items")
    return value


def _pairs(value: Any, where: str) -> tuple[tuple[int, int], ...]:
    pairs = []
    for i, item in enumerate(json_list(value, where)):
        pair = json_list(item, f"{where}[{i}]")
        if len(pair) != 2:
            raise DecodeError(f"{where}[{i}]: expected a [class, quantised probability] pair")
        pairs.append((json_int(pair[0], f"{where}[{i}][0]", maximum=2**32 - 1),
                      json_int(pair[1], f"{where}[{i}][1]", maximum=2**32 - 1)))
    return tuple(pairs)


def _path(value: Any, where: str) -> tuple[bytes, ...]:
    return tuple(json_hex(v, f"{where}[{i}]", DIGEST_SIZE) for i, v in enumerate(json_list(value, where, PATH_MAX)))


def _header_from_json(value: Any) -> BatchHeader:
    h = json_object(value, "header")
    return BatchHeader(
        group_id=json_str(json_get(h, "group_id", "header"), "header.group_id"),
        epoch=json_int(json_get(h, "epoch", "header"), "header.epoch"),
        config_digest=json_hex(json_get(h, "config_digest", "header"), "header.config_digest", DIGEST_SIZE),
        view=json_int(json_get(h, "view", "header"), "header.view"),
        seq=json_int(json_get(h, "seq", "header"), "header.seq"),
        decisions_root=json_hex(json_get(h, "decisions_root", "header"), "header.decisions_root", DIGEST_SIZE),
        ops_digest=json_hex(json_get(h, "ops_digest", "header"), "header.ops_digest", DIGEST_SIZE),
        model_versions_digest=json_hex(
            json_get(h, "model_versions_digest", "header"), "header.model_versions_digest", DIGEST_SIZE
        ),
        leaf_count=json_int(json_get(h, "leaf_count", "header"), "header.leaf_count"),
    )


def _leaf_from_json(value: Any) -> Leaf:
    d = json_object(value, "leaf")
    votes = []
    for i, raw in enumerate(json_list(json_get(d, "votes", "leaf"), "leaf.votes", QUORUM_MAX)):
        where = f"leaf.votes[{i}]"
        v = json_object(raw, where)
        top = _pairs(json_get(v, "output", where), f"{where}.output")
        if not top:
            raise DecodeError(f"{where}.output: lists no classes")
        votes.append(
            Vote(
                replica_id=json_int(json_get(v, "replica_id", where), f"{where}.replica_id", maximum=2**32 - 1),
                model_version=json_int(json_get(v, "model_version", where), f"{where}.model_version"),
                output=ModelOutput(top),
            )
        )
    dec = json_object(json_get(d, "decision", "leaf"), "leaf.decision")
    decision = Decision(
        label=json_int(json_get(dec, "label", "leaf.decision"), "leaf.decision.label", minimum=NO_AGREEMENT),
        probabilities=_pairs(json_get(dec, "probabilities", "leaf.decision"), "leaf.decision.probabilities"),
        support=tuple(
            json_int(s, f"leaf.decision.support[{i}]", maximum=2**32 - 1)
            for i, s in enumerate(json_list(json_get(dec, "support", "leaf.decision"), "leaf.decision.support"))
        ),
    )
    return Leaf(
        request_digest=json_hex(json_get(d, "request_digest", "leaf"), "leaf.request_digest", DIGEST_SIZE),
        client_id=json_str(json_get(d, "client_id", "leaf"), "leaf.client_id"),
        request_id=json_str(json_get(d, "request_id", "leaf"), "leaf.request_id"),
        label_space=tuple(
            json_str(s, f"leaf.label_space[{i}]")
            for i, s in enumerate(json_list(json_get(d, "label_space", "leaf"), "leaf.label_space"))
        ),
        policy=json_str(json_get(d, "policy", "leaf"), "leaf.policy"),
        votes=tuple(votes),
        decision=decision,
    )


def _vote_proof_from_json(value: Any, where: str) -> VoteProof:
    p = json_object(value, where)
    return VoteProof(
        voter=json_int(json_get(p, "voter", where), f"{where}.voter", maximum=2**32 - 1),
        batch_no=json_int(json_get(p, "batch_no", where), f"{where}.batch_no"),
        model_version=json_int(json_get(p, "model_version", where), f"{where}.model_version"),
        entries_root=json_hex(json_get(p, "entries_root", where), f"{where}.entries_root", DIGEST_SIZE),
        entry_count=json_int(json_get(p, "entry_count", where), f"{where}.entry_count"),
        entry_index=json_int(json_get(p, "entry_index", where), f"{where}.entry_index"),
        entry_path=_path(json_get(p, "entry_path", where), f"{where}.entry_path"),
        signature=json_hex(json_get(p, "signature", where), f"{where}.signature", SIGNATURE_SIZE),
    )


def check_display_fields(given: Any, expected: Any, where: str) -> None:
    """Every field of `given` must match `expected` (the JSON rebuilt from the exact fields),
    except config-dependent display fields, which are ignored; unknown fields are refused."""
    if isinstance(expected, dict):
        if not isinstance(given, dict):
            raise DecodeError(f"{where}: expected a JSON object")
        for key, value in given.items():
            if key in expected:
                check_display_fields(value, expected[key], f"{where}.{key}")
            elif key not in NAMED_KEYS:
                raise DecodeError(f"{where}: unknown field {key!r}")
    elif isinstance(expected, list):
        if not isinstance(given, list) or len(given) != len(expected):
            raise DecodeError(f"{where} does not match the certificate's exact fields")
        for i, (g, e) in enumerate(zip(given, expected)):
            check_display_fields(g, e, f"{where}[{i}]")
    elif isinstance(expected, float):
        if isinstance(given, bool) or not isinstance(given, (int, float)) or given != expected:
            raise DecodeError(f"{where} is {given!r}, the certificate's exact fields say {expected!r}")
    elif type(given) is not type(expected) or given != expected:
        raise DecodeError(f"{where} is {given!r}, the certificate's exact fields say {expected!r}")


def certificate_from_json(data: Any) -> Certificate:
    """Read the JSON form back; raises DecodeError on anything malformed or inconsistent."""
    try:
        d = json_object(data, "certificate")
        if d.get("format") != JSON_FORMAT:
            raise DecodeError(f"certificate: format must be {JSON_FORMAT!r}")
        cert = Certificate(
            header=_header_from_json(json_get(d, "header", "certificate")),
            quorum=tuple(
                QuorumSignature(
                    json_int(json_get(json_object(q, f"quorum[{i}]"), "replica_id", f"quorum[{i}]"),
                             f"quorum[{i}].replica_id", maximum=2**32 - 1),
                    json_hex(json_get(q, "signature", f"quorum[{i}]"), f"quorum[{i}].signature", SIGNATURE_SIZE),
                )
                for i, q in enumerate(json_list(json_get(d, "quorum", "certificate"), "quorum", QUORUM_MAX))
            ),
            leaf=_leaf_from_json(json_get(d, "leaf", "certificate")),
            leaf_index=json_int(json_get(d, "leaf_index", "certificate"), "leaf_index"),
            proof=_path(json_get(d, "proof", "certificate"), "proof"),
            vote_proofs=tuple(
                _vote_proof_from_json(p, f"vote_proofs[{i}]")
                for i, p in enumerate(json_list(json_get(d, "vote_proofs", "certificate"), "vote_proofs", QUORUM_MAX))
            ),
        )
        check_display_fields(d, certificate_to_json(cert), "certificate")
        return cert
    except DecodeError:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise DecodeError(f"malformed certificate JSON: {exc}") from exc
