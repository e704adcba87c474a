"""What a committed batch is made of: vote entries, decision leaves, the batch header.

The header is what the quorum signs (as COMMIT statements) and what a certificate carries:

    group_id, epoch, config_digest, view, seq, decisions_root, leaf_count, ops_digest,
    model_versions_digest

Two fields are not in the first design sketch: `ops_digest`, because control operations (model
updates, membership changes) change what later certificates mean, so the signed header must
cover them; and `leaf_count`, the size of the decisions tree, as RFC 6962 signs tree heads, so
an inclusion proof cannot be replayed against a different tree size.
`batch_digest` leaves the view out: a batch re-proposed in a later view is the same batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from certs.encoding import Domain, Encodable, bytes_item, digest, list_head, str_item, strs_item
from certs.merkle import leaf_hash
from certs.outputs import ModelOutput
from certs.policy import Decision, Vote
from certs.statements import Statement, StatementKind


_VOTE_ENTRY_DOMAIN = Domain.VOTE_ENTRY.value
_LEAF_DOMAIN = Domain.LEAF.value


@dataclass(frozen=True, slots=True)
class VoteEntry:
    """One entry of a replica's signed VoteBatch: its model's output for one request."""

    client_id: str
    request_id: str
    request_digest: bytes
    label_space: tuple[str, ...]  # decision names under an application mapping; () = the task's labels
    output: ModelOutput
    hash: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hash", leaf_hash(self.canonical()))

    def canonical(self) -> bytes:
        """encode(Domain.VOTE_ENTRY, client_id, request_id, request_digest, tuple(label_space),
        output.canonical()), joined item by item (certs.encoding: hot path)."""
        return b"".join((
            _VOTE_ENTRY_DOMAIN,
            str_item(self.client_id),
            str_item(self.request_id),
            bytes_item(self.request_digest),
            strs_item(self.label_space),
            bytes_item(self.output.canonical()),
        ))


def vote_batch_content(model_version: int, entries_root: bytes, entry_count: int) -> bytes:
    """The content digest a replica signs for one VoteBatch (slot: its vote batch number)."""
    return digest(Domain.VOTE_BATCH, model_version, entries_root, entry_count)


@dataclass(frozen=True, slots=True)
class Leaf:
    """The certified record of one request: what each voter answered and what the group decided."""

    request_digest: bytes
    client_id: str
    request_id: str
    label_space: tuple[str, ...]  # decision names under an application mapping; () = the task's labels
    policy: str  # the agreement policy, as AgreementPolicy.describe() names it
    votes: tuple[Vote, ...]  # ascending replica ids
    decision: Decision
    hash: bytes = field(init=False, repr=False, compare=False)
    # its protobuf encoding (certs.wire), kept once made or read: a replica writes the same leaf
    # into its PRE-PREPARE, its log (twice) and a certificate, and a backup has the bytes it read
    wire: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hash", leaf_hash(self.canonical()))

    def canonical(self) -> bytes:
        """encode(Domain.LEAF, request_digest, client_id, request_id, tuple(label_space), policy,
        tuple(vote.canonical() for vote in votes), decision.canonical()), joined item by item."""
        return b"".join((
            _LEAF_DOMAIN,
            bytes_item(self.request_digest),
            str_item(self.client_id),
            str_item(self.request_id),
            strs_item(self.label_space),
            str_item(self.policy),
            list_head(len(self.votes)),
            *[vote.canonical_item() for vote in self.votes],
            self.decision.canonical_item(),
        ))


@dataclass(frozen=True, slots=True)
class BatchHeader:
    group_id: str
    epoch: int
    config_digest: bytes
    view: int
    seq: int
    decisions_root: bytes
    ops_digest: bytes
    model_versions_digest: bytes
    leaf_count: int  # leaves under decisions_root: signed, so a proof cannot claim another tree size
    # computed once on first use: every replica needs it for each PREPARE and COMMIT it signs or
    # checks, at execution and in its chain digest (a dozen times per batch), and each time
    # cost an encoding and a hash
    _batch_digest: bytes | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def batch_digest(self) -> bytes:
        cached = self._batch_digest
        if cached is None:
            cached = self._compute_batch_digest()
            object.__setattr__(self, "_batch_digest", cached)
        return cached

    def _compute_batch_digest(self) -> bytes:
        return digest(
            Domain.BATCH,
            self.group_id,
            self.epoch,
            self.config_digest,
            self.seq,
            self.decisions_root,
            self.leaf_count,
            self.ops_digest,
            self.model_versions_digest,
        )

    def statement(self, kind: StatementKind, signer: int) -> Statement:
        """The PRE-PREPARE, PREPARE or COMMIT statement about this header."""
        return Statement(kind, self.group_id, self.epoch, signer, (self.view, self.seq), self.batch_digest)

    def with_view(self, view: int) -> BatchHeader:
        header = BatchHeader(
            self.group_id, self.epoch, self.config_digest, view, self.seq,
            self.decisions_root, self.ops_digest, self.model_versions_digest, self.leaf_count,
        )
        object.__setattr__(header, "_batch_digest", self._batch_digest)  # the view is not in it
        return header


def model_versions_digest(versions: Sequence[tuple[int, int, bytes]]) -> bytes:
    """Digest of the model version table in effect: (replica_id, version, weights_digest)."""
    return digest(Domain.MODEL_VERSIONS, tuple(sorted(versions)))


def ops_digest(ops: Sequence[Encodable]) -> bytes:
    """Digest of the control operations a batch orders (their canonical forms, in order)."""
    return digest(Domain.CONTROL_OPS, tuple(ops))
