"""Consensus messages: frozen, slotted dataclasses; the wire codec lives in replica/.

Every signed message is a `certs.statements.Statement` about a (kind, slot) plus the fields that
let a receiver rebuild the statement's content digest. Receivers always rebuild statements from
the fields they use, never trust a digest they were handed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from certs.batch import BatchHeader, Leaf, VoteEntry, vote_batch_content
from certs.membership import Approval, ConfigLink, JoinRequest, LeaveRequest
from certs.encoding import Domain, Encodable, digest, encode
from certs.merkle import root_of_hashes
from certs.request import InferenceRequest
from certs.statements import Statement, StatementKind

# -- control operations --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelUpdate:
    """An owner's signed order to switch its replica to a new model version.

    Ordered in the log at some sequence number t; takes effect for batches t + log_window_batches
    onwards (see consensus/state.py for why that delay).
    """

    group_id: str
    replica_id: int
    new_version: int
    weights_digest: bytes
    owner_signature: bytes

    def signed_bytes(self) -> bytes:
        return encode(Domain.MODEL_UPDATE, self.group_id, self.replica_id, self.new_version, self.weights_digest)

    def canonical(self) -> Encodable:
        return ("model-update", self.replica_id, self.new_version, self.weights_digest, self.owner_signature)


@dataclass(frozen=True, slots=True)
class JoinOp:
    """A new owner's signed join request with the approvals the admission rule asks for."""

    join: JoinRequest
    approvals: tuple[Approval, ...]

    def canonical(self) -> Encodable:
        return ("join", self.join.canonical(), tuple((a.approver, a.signature) for a in self.approvals))


@dataclass(frozen=True, slots=True)
class LeaveOp:
    """An owner takes its replica out of the group (signed by that owner)."""

    leave: LeaveRequest

    def canonical(self) -> Encodable:
        return ("leave", self.leave.group_id, self.leave.epoch, self.leave.replica_id, self.leave.owner_signature)


@dataclass(frozen=True, slots=True)
class EvictOp:
    """Remove a replica that provably equivocated: `evidence` is an encoded certs.evidence item
    that verifies against the current config and accuses `replica_id`."""

    group_id: str
    epoch: int
    replica_id: int
    evidence: bytes

    def canonical(self) -> Encodable:
        return ("evict", self.group_id, self.epoch, self.replica_id, self.evidence)


MembershipOp = Union[JoinOp, LeaveOp, EvictOp]
ControlOp = Union[ModelUpdate, JoinOp, LeaveOp, EvictOp]


# -- requests and votes -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestMessage:
    """A client request relayed between replicas (so every replica can run its model on it)."""

    sender: int
    request: InferenceRequest


@dataclass(frozen=True, slots=True)
class ConfigSignature:
    """A replica of epoch e-1 vouches for the config of epoch e (certs.membership.link_message)."""

    sender: int
    epoch: int  # the NEW epoch
    config_digest: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class ControlMessage:
    """A control operation relayed to every replica, so whichever is primary orders it."""

    sender: int
    op: ControlOp


@dataclass(frozen=True, slots=True)
class VoteBatch:
    """One replica's signed outputs for one inference batch: one signature per batch."""

    sender: int
    epoch: int
    batch_no: int  # per voter, increasing; (sender, batch_no) is the slot
    model_version: int
    entries: tuple[VoteEntry, ...]
    signature: bytes
    entries_root: bytes = field(init=False, repr=False, compare=False)
    # its protobuf encoding (replica.codec), kept once made or read, as Leaf.wire is: every
    # replica writes each vote batch again inside the committed batch it persists, and
    # re-encoding its entries field by field cost more than parsing these bytes back
    wire: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries_root", root_of_hashes([e.hash for e in self.entries]))

    def statement(self, group_id: str) -> Statement:
        content = vote_batch_content(self.model_version, self.entries_root, len(self.entries))
        return Statement(StatementKind.VOTE_BATCH, group_id, self.epoch, self.sender, (self.batch_no,), content)


@dataclass(frozen=True, slots=True)
class VoteRef:
    """Where a vote in a proposal comes from: the voter's vote batch number."""

    voter: int
    batch_no: int


@dataclass(frozen=True, slots=True)
class ProposalEntry:
    leaf: Leaf
    refs: tuple[VoteRef, ...]  # one per vote in leaf.votes, same order


@dataclass(frozen=True, slots=True)
class Proposal:
    entries: tuple[ProposalEntry, ...]
    ops: tuple[ControlOp, ...] = ()

    @property
    def is_null(self) -> bool:
        return not self.entries and not self.ops


NULL_PROPOSAL = Proposal((), ())


# -- normal case (PBFT section 4.2) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PrePrepare:
    sender: int
    epoch: int
    header: BatchHeader
    proposal: Proposal
    signature: bytes

    @property
    def view(self) -> int:
        return self.header.view

    @property
    def seq(self) -> int:
        return self.header.seq

    def statement(self) -> Statement:
        return self.header.statement(StatementKind.PRE_PREPARE, self.sender)


@dataclass(frozen=True, slots=True)
class Prepare:
    sender: int
    epoch: int
    view: int
    seq: int
    batch_digest: bytes
    signature: bytes

    def statement(self, group_id: str) -> Statement:
        return Statement(StatementKind.PREPARE, group_id, self.epoch, self.sender, (self.view, self.seq), self.batch_digest)


@dataclass(frozen=True, slots=True)
class Commit:
    sender: int
    epoch: int
    view: int
    seq: int
    batch_digest: bytes
    signature: bytes

    def statement(self, group_id: str) -> Statement:
        return Statement(StatementKind.COMMIT, group_id, self.epoch, self.sender, (self.view, self.seq), self.batch_digest)


# -- checkpoints (section 4.3) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    sender: int
    epoch: int
    seq: int
    state_digest: bytes
    signature: bytes

    def statement(self, group_id: str) -> Statement:
        return Statement(StatementKind.CHECKPOINT, group_id, self.epoch, self.sender, (self.seq,), self.state_digest)


# -- view change (section 4.4) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PreparedProof:
    """A pre-prepare and quorum-1 matching prepares from other replicas: the batch prepared."""

    pre_prepare: PrePrepare
    prepares: tuple[Prepare, ...]


@dataclass(frozen=True, slots=True)
class ViewChange:
    sender: int
    epoch: int
    new_view: int
    stable_seq: int
    stable_digest: bytes
    checkpoint_proof: tuple[Checkpoint, ...]  # quorum for (stable_seq, stable_digest); () at seq 0
    prepared: tuple[PreparedProof, ...]  # ascending seq, above stable_seq
    signature: bytes

    def content(self) -> bytes:
        summary = tuple(
            (p.pre_prepare.seq, p.pre_prepare.view, p.pre_prepare.header.batch_digest) for p in self.prepared
        )
        return digest(Domain.VIEW_CHANGE, self.stable_seq, self.stable_digest, summary)

    def statement(self, group_id: str) -> Statement:
        return Statement(StatementKind.VIEW_CHANGE, group_id, self.epoch, self.sender, (self.new_view,), self.content())


@dataclass(frozen=True, slots=True)
class NewView:
    sender: int
    epoch: int
    view: int
    view_changes: tuple[ViewChange, ...]
    pre_prepares: tuple[PrePrepare, ...]  # ascending seq, each signed by the new primary
    signature: bytes

    def content(self) -> bytes:
        return digest(
            Domain.NEW_VIEW,
            tuple((vc.sender, vc.content()) for vc in self.view_changes),
            tuple((pp.seq, pp.header.batch_digest) for pp in self.pre_prepares),
        )

    def statement(self, group_id: str) -> Statement:
        return Statement(StatementKind.NEW_VIEW, group_id, self.epoch, self.sender, (self.view,), self.content())


# -- fetching what a replica lacks ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FetchVotes:
    sender: int
    refs: tuple[VoteRef, ...]


@dataclass(frozen=True, slots=True)
class CommittedProof:
    """A batch and a quorum of COMMITs on its header: anyone can check it was committed."""

    pre_prepare: PrePrepare
    commits: tuple[Commit, ...]


@dataclass(frozen=True, slots=True)
class StateSnapshot:
    """The replicated state after executing batch `seq` (see consensus/state.py)."""

    seq: int
    chain_digest: bytes
    executed: tuple[tuple[str, str, int, bytes], ...]  # (client_id, request_id, seq, request digest), sorted
    versions: tuple[tuple[int, int, bytes], ...]  # (replica_id, version, weights_digest) in effect
    scheduled: tuple[tuple[int, int, int, bytes], ...]  # (activation_seq, replica_id, version, digest)
    epoch: int = 0  # the epoch in effect after `seq`
    config_digest: bytes = bytes(32)  # ... and its config
    epoch_change_seq: int = 0  # 0: no membership change scheduled
    epoch_change_ops: tuple[JoinOp | LeaveOp | EvictOp, ...] = ()
    ledger: tuple[tuple[str, str, int], ...] = ()  # (kind "client"|"owner", account, credits), sorted


@dataclass(frozen=True, slots=True)
class FetchState:
    sender: int
    executed_seq: int  # the requester has executed everything up to here


@dataclass(frozen=True, slots=True)
class StateReply:
    sender: int
    snapshot: StateSnapshot | None  # present when the requester is below the sender's checkpoint
    checkpoint_proof: tuple[Checkpoint, ...]
    batches: tuple[CommittedProof, ...]  # consecutive, right after the snapshot or executed_seq
    # configs of later epochs with their quorum links (a replica catching up by snapshot may have
    # skipped the membership change that made them)
    config_links: tuple[tuple[ConfigLink, int], ...] = ()  # (link, epoch start seq)


PeerMessage = Union[
    RequestMessage,
    ControlMessage,
    ConfigSignature,
    VoteBatch,
    PrePrepare,
    Prepare,
    Commit,
    Checkpoint,
    ViewChange,
    NewView,
    FetchVotes,
    FetchState,
    StateReply,
]
