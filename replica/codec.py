"""Wire and disk codec for consensus messages and persisted records (protos/consensus.proto).

Every decoder takes untrusted bytes (a peer's stream, or a disk that may be corrupt) and either
returns well-typed dataclasses or raises `certs.errors.DecodeError`, nothing else: a replica must
never crash on what a peer sends. Decoding checks structure only: protobuf's own canonical
encoding with no unknown fields, digests of 32 bytes, signatures of 64, integers that fit the
canonical encoding (int64), bounded list lengths, required sub-messages present, exactly one arm
of each oneof. Whether a message is *valid* (signatures, quorums, views) is consensus' business.

Shared types (header, leaf, vote entry, request, outputs) go through certs/wire.py. Encoders fill
the protobuf message in place (`out=`), so a batch of thousands of vote entries is built once,
with no intermediate messages copied into their parents.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from google.protobuf.message import Message

from certs import wire
from certs.errors import DecodeError
from certs.keys import SIGNATURE_SIZE
from certs.wire import check_digest, check_int, check_list, check_str, decode_all, parse_canonical
from certs.config import GroupConfig
from certs.errors import ConfigError
from certs.membership import Approval, ConfigLink, JoinRequest, LeaveRequest, QuorumSigned
from consensus.messages import (
    Checkpoint,
    Commit,
    CommittedProof,
    ConfigSignature,
    ControlMessage,
    ControlOp,
    EvictOp,
    JoinOp,
    LeaveOp,
    FetchState,
    FetchVotes,
    ModelUpdate,
    NewView,
    PeerMessage,
    PrePrepare,
    Prepare,
    PreparedProof,
    Proposal,
    ProposalEntry,
    RequestMessage,
    StateReply,
    StateSnapshot,
    ViewChange,
    VoteBatch,
    VoteRef,
)
from consensus.ready import (
    CommittedBatch,
    ConfigLinkRecord,
    VoteReservationRecord,
    CommittedRecord,
    PersistRecord,
    PreparedRecord,
    SignedRecord,
    StableCheckpointRecord,
    ViewRecord,
)
from protos import consensus_pb2 as pb

M = TypeVar("M", bound=Message)
T = TypeVar("T")

# List bounds: far above what a correct replica sends, low enough that a hostile peer cannot make
# us build millions of objects from one frame (gRPC's message size limit bounds the bytes).
PEER_BATCH_MESSAGES_MAX = 1 << 16
VOTE_ENTRIES_MAX = 1 << 16
PROPOSAL_ENTRIES_MAX = 1 << 16
CONTROL_OPS_MAX = 1 << 10
QUORUM_MAX = 1 << 10  # prepares, commits, checkpoint proofs, view changes: one per member at most
VOTE_REFS_MAX = 1 << 10  # per leaf: one per voter
FETCH_REFS_MAX = 1 << 16
LOG_ENTRIES_MAX = 1 << 16  # prepared proofs of a view change, pre-prepares of a new view
STATE_BATCHES_MAX = 1 << 12
VOTE_BATCHES_MAX = 1 << 16  # vote batches a committed batch refers to
EXECUTED_MAX = wire.LIST_MAX
VERSIONS_MAX = 1 << 12


def _check_signature(value: bytes, what: str) -> bytes:
    if len(value) != SIGNATURE_SIZE:
        raise DecodeError(f"{what} signature must be {SIGNATURE_SIZE} bytes, is {len(value)}")
    return value


def _require(message: Message, field: str, what: str) -> None:
    if not message.HasField(field):
        raise DecodeError(f"{what}: {field} is missing")


def _parse(message_type: type[M], data: bytes, what: str) -> M:
    """parse_canonical, plus a refusal of unknown fields.

    protobuf keeps unknown fields and writes them back where they were, so a field appended by a
    newer or hostile peer survives the canonical re-encoding check; dropping them and comparing
    sizes catches it.
    """
    message = parse_canonical(message_type, data, what)
    message.DiscardUnknownFields()
    if message.ByteSize() != len(data):
        raise DecodeError(f"{what}: unknown fields")
    return message


# -- control operations ------------------------------------------------------------------------


def model_update_to_proto(update: ModelUpdate, out: pb.ModelUpdate) -> pb.ModelUpdate:
    out.group_id = update.group_id
    out.replica_id = update.replica_id
    out.new_version = update.new_version
    out.weights_digest = update.weights_digest
    out.owner_signature = update.owner_signature
    return out


def model_update_from_proto(message: pb.ModelUpdate) -> ModelUpdate:
    return ModelUpdate(
        group_id=check_str(message.group_id, "model update group id"),
        replica_id=message.replica_id,
        new_version=check_int(message.new_version, "model update version"),
        weights_digest=check_digest(message.weights_digest, "weights digest"),
        owner_signature=_check_signature(message.owner_signature, "model update owner"),
    )


def join_request_to_proto(join: JoinRequest, out: pb.JoinRequest) -> pb.JoinRequest:
    out.SetInParent()
    out.group_id = join.group_id
    out.epoch = join.epoch
    out.owner_id = join.owner_id
    out.owner_public_key = join.owner_public_key
    out.replica_public_key = join.replica_public_key
    out.address = join.address
    out.model_version = join.model_version
    out.weights_digest = join.weights_digest
    out.owner_signature = join.owner_signature
    out.replica_signature = join.replica_signature
    return out


def join_request_from_proto(message: pb.JoinRequest) -> JoinRequest:
    return JoinRequest(
        group_id=check_str(message.group_id, "join group id"),
        epoch=check_int(message.epoch, "join epoch"),
        owner_id=check_str(message.owner_id, "owner id"),
        owner_public_key=_check_key(message.owner_public_key, "owner public key"),
        replica_public_key=_check_key(message.replica_public_key, "replica public key"),
        address=check_str(message.address, "replica address"),
        model_version=check_int(message.model_version, "model version"),
        weights_digest=check_digest(message.weights_digest, "weights digest"),
        owner_signature=_check_signature(message.owner_signature, "join owner"),
        replica_signature=_check_signature(message.replica_signature, "join replica"),
    )


def _check_key(value: bytes, what: str) -> bytes:
    if len(value) != 32:
        raise DecodeError(f"{what} must be 32 bytes, is {len(value)}")
    return bytes(value)


def control_op_to_proto(op: ControlOp, out: pb.ControlOp) -> pb.ControlOp:
    if isinstance(op, ModelUpdate):
        out.model_update.SetInParent()
        model_update_to_proto(op, out.model_update)
    elif isinstance(op, JoinOp):
        out.join.SetInParent()
        join_request_to_proto(op.join, out.join.join)
        for a in op.approvals:
            out.join.approvals.add(group_id=a.group_id, epoch=a.epoch, join_digest=a.join_digest, approver=a.approver, signature=a.signature)
    elif isinstance(op, LeaveOp):
        out.leave.SetInParent()
        leave = op.leave
        out.leave.leave.SetInParent()
        out.leave.leave.group_id, out.leave.leave.epoch = leave.group_id, leave.epoch
        out.leave.leave.replica_id, out.leave.leave.owner_signature = leave.replica_id, leave.owner_signature
    elif isinstance(op, EvictOp):
        out.evict.SetInParent()
        out.evict.group_id, out.evict.epoch, out.evict.replica_id, out.evict.evidence = op.group_id, op.epoch, op.replica_id, op.evidence
    else:
        raise TypeError(f"no wire form for control operation {type(op).__name__}")
    return out


EVIDENCE_SIZE_MAX = 1 << 20


def control_op_from_proto(message: pb.ControlOp) -> ControlOp:
    kind = message.WhichOneof("op")
    if kind == "model_update":
        return model_update_from_proto(message.model_update)
    if kind == "join":
        _require(message.join, "join", "join operation")
        return JoinOp(
            join=join_request_from_proto(message.join.join),
            approvals=decode_all(
                message.join.approvals,
                lambda a: Approval(
                    check_str(a.group_id, "approval group id"), check_int(a.epoch, "approval epoch"),
                    check_digest(a.join_digest, "approved join digest"), a.approver, _check_signature(a.signature, "approval"),
                ),
                "approvals",
                QUORUM_MAX,
            ),
        )
    if kind == "leave":
        _require(message.leave, "leave", "leave operation")
        leave = message.leave.leave
        return LeaveOp(
            LeaveRequest(
                check_str(leave.group_id, "leave group id"), check_int(leave.epoch, "leave epoch"),
                leave.replica_id, _check_signature(leave.owner_signature, "leave owner"),
            )
        )
    if kind == "evict":
        evict = message.evict
        if len(evict.evidence) > EVIDENCE_SIZE_MAX:
            raise DecodeError("eviction evidence is too large")
        return EvictOp(check_str(evict.group_id, "evict group id"), check_int(evict.epoch, "evict epoch"), evict.replica_id, bytes(evict.evidence))
    raise DecodeError("control operation of no known kind")


def config_signature_to_proto(message: ConfigSignature, out: pb.ConfigSignature) -> pb.ConfigSignature:
    out.sender, out.epoch, out.config_digest, out.signature = message.sender, message.epoch, message.config_digest, message.signature
    return out


def config_signature_from_proto(message: pb.ConfigSignature) -> ConfigSignature:
    return ConfigSignature(
        message.sender, check_int(message.epoch, "config epoch"), check_digest(message.config_digest, "config digest"),
        _check_signature(message.signature, "config signature"),
    )


def config_link_to_proto(link: ConfigLink, out: pb.ConfigLink) -> pb.ConfigLink:
    import json

    out.SetInParent()
    out.config_json = json.dumps(link.config.to_json(), sort_keys=True).encode()
    for s in link.signatures:
        out.signatures.add(replica_id=s.replica_id, signature=s.signature)
    return out


def config_link_from_proto(message: pb.ConfigLink) -> ConfigLink:
    import json

    try:
        config = GroupConfig.from_json(json.loads(message.config_json.decode("utf-8")))
    except (ConfigError, ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise DecodeError(f"config link holds no valid group config: {exc}") from exc
    return ConfigLink(
        config,
        decode_all(message.signatures, lambda s: QuorumSigned(s.replica_id, _check_signature(s.signature, "config link")), "config link signatures", QUORUM_MAX),
    )


# -- requests and votes ----------------------------------------------------------------------


def request_message_to_proto(message: RequestMessage, out: pb.RequestMessage) -> pb.RequestMessage:
    out.sender = message.sender
    out.request.SetInParent()
    wire.request_to_proto(message.request, out.request)
    return out


def request_message_from_proto(message: pb.RequestMessage) -> RequestMessage:
    _require(message, "request", "request message")
    return RequestMessage(sender=message.sender, request=wire.request_from_proto(message.request))


def control_message_to_proto(message: ControlMessage, out: pb.ControlMessage) -> pb.ControlMessage:
    out.sender = message.sender
    control_op_to_proto(message.op, out.op)
    return out


def control_message_from_proto(message: pb.ControlMessage) -> ControlMessage:
    return ControlMessage(sender=message.sender, op=control_op_from_proto(message.op))


def vote_batch_to_proto(batch: VoteBatch, out: pb.VoteBatch) -> pb.VoteBatch:
    """The batch's message, merged into `out` (an empty message). Encoded field by field once,
    then from the bytes kept on it (`VoteBatch.wire`), which protobuf parses in C."""
    encoded = batch.wire
    if encoded is not None:
        out.MergeFromString(encoded)
        return out
    out.sender = batch.sender
    out.epoch = batch.epoch
    out.batch_no = batch.batch_no
    out.model_version = batch.model_version
    entries = out.entries
    to_proto = wire.vote_entry_to_proto
    for entry in batch.entries:
        to_proto(entry, entries.add())
    out.signature = batch.signature
    object.__setattr__(batch, "wire", wire.serialize(out))
    return out


def vote_batch_from_proto(message: pb.VoteBatch) -> VoteBatch:
    batch = VoteBatch(
        sender=message.sender,
        epoch=check_int(message.epoch, "vote batch epoch"),
        batch_no=check_int(message.batch_no, "vote batch number"),
        model_version=check_int(message.model_version, "vote batch model version"),
        entries=decode_all(message.entries, wire.vote_entry_from_proto, "vote batch entries", VOTE_ENTRIES_MAX),
        signature=_check_signature(message.signature, "vote batch"),
    )
    # every field of the message is a field of the batch (unknown fields were refused), so its
    # encoding is the batch's
    object.__setattr__(batch, "wire", wire.serialize(message))
    return batch


def _refs_to_proto(refs: Iterable[VoteRef], out: Any) -> None:
    for ref in refs:
        item = out.add()
        item.voter = ref.voter
        item.batch_no = ref.batch_no


def _refs_from_proto(refs: Sequence[pb.VoteRef], what: str, maximum: int) -> tuple[VoteRef, ...]:
    wire.check_list(refs, what, maximum)
    return tuple(VoteRef(voter=r.voter, batch_no=check_int(r.batch_no, "vote batch number")) for r in refs)


def proposal_to_proto(proposal: Proposal, out: pb.Proposal) -> pb.Proposal:
    out.SetInParent()  # a null proposal is present and empty, never absent
    entries = out.entries
    for entry in proposal.entries:
        item = entries.add()
        wire.leaf_to_proto(entry.leaf, item.leaf)
        _refs_to_proto(entry.refs, item.refs)
    ops = out.ops
    for op in proposal.ops:
        control_op_to_proto(op, ops.add())
    return out


def _proposal_entry_from_proto(message: pb.ProposalEntry) -> ProposalEntry:
    _require(message, "leaf", "proposal entry")
    leaf = wire.leaf_from_proto(message.leaf)
    refs = _refs_from_proto(message.refs, "proposal entry refs", VOTE_REFS_MAX)
    if len(refs) != len(leaf.votes):
        raise DecodeError(f"proposal entry has {len(refs)} vote refs for {len(leaf.votes)} votes")
    return ProposalEntry(leaf=leaf, refs=refs)


def proposal_from_proto(message: pb.Proposal) -> Proposal:
    return Proposal(
        entries=decode_all(message.entries, _proposal_entry_from_proto, "proposal entries", PROPOSAL_ENTRIES_MAX),
        ops=decode_all(message.ops, control_op_from_proto, "proposal operations", CONTROL_OPS_MAX),
    )


# -- normal case -----------------------------------------------------------------------------


def pre_prepare_to_proto(pre_prepare: PrePrepare, out: pb.PrePrepare) -> pb.PrePrepare:
    out.sender = pre_prepare.sender
    out.epoch = pre_prepare.epoch
    wire.header_to_proto(pre_prepare.header, out.header)
    proposal_to_proto(pre_prepare.proposal, out.proposal)
    out.signature = pre_prepare.signature
    return out


def pre_prepare_from_proto(message: pb.PrePrepare) -> PrePrepare:
    _require(message, "header", "pre-prepare")
    _require(message, "proposal", "pre-prepare")
    return PrePrepare(
        sender=message.sender,
        epoch=check_int(message.epoch, "pre-prepare epoch"),
        header=wire.header_from_proto(message.header),
        proposal=proposal_from_proto(message.proposal),
        signature=_check_signature(message.signature, "pre-prepare"),
    )


def prepare_to_proto(prepare: Prepare, out: pb.Prepare) -> pb.Prepare:
    out.sender = prepare.sender
    out.epoch = prepare.epoch
    out.view = prepare.view
    out.seq = prepare.seq
    out.batch_digest = prepare.batch_digest
    out.signature = prepare.signature
    return out


def prepare_from_proto(message: pb.Prepare) -> Prepare:
    return Prepare(
        sender=message.sender,
        epoch=check_int(message.epoch, "prepare epoch"),
        view=check_int(message.view, "prepare view"),
        seq=check_int(message.seq, "prepare sequence number"),
        batch_digest=check_digest(message.batch_digest, "prepare batch digest"),
        signature=_check_signature(message.signature, "prepare"),
    )


def commit_to_proto(commit: Commit, out: pb.Commit) -> pb.Commit:
    out.sender = commit.sender
    out.epoch = commit.epoch
    out.view = commit.view
    out.seq = commit.seq
    out.batch_digest = commit.batch_digest
    out.signature = commit.signature
    return out


def commit_from_proto(message: pb.Commit) -> Commit:
    return Commit(
        sender=message.sender,
        epoch=check_int(message.epoch, "commit epoch"),
        view=check_int(message.view, "commit view"),
        seq=check_int(message.seq, "commit sequence number"),
        batch_digest=check_digest(message.batch_digest, "commit batch digest"),
        signature=_check_signature(message.signature, "commit"),
    )


def checkpoint_to_proto(checkpoint: Checkpoint, out: pb.Checkpoint) -> pb.Checkpoint:
    out.sender = checkpoint.sender
    out.epoch = checkpoint.epoch
    out.seq = checkpoint.seq
    out.state_digest = checkpoint.state_digest
    out.signature = checkpoint.signature
    return out


def checkpoint_from_proto(message: pb.Checkpoint) -> Checkpoint:
    return Checkpoint(
        sender=message.sender,
        epoch=check_int(message.epoch, "checkpoint epoch"),
        seq=check_int(message.seq, "checkpoint sequence number"),
        state_digest=check_digest(message.state_digest, "checkpoint state digest"),
        signature=_check_signature(message.signature, "checkpoint"),
    )


def _all_to_proto(values: Iterable[T], convert: Callable[[T, M], M], out: Any) -> None:
    for value in values:
        convert(value, out.add())


# -- view change -------------------------------------------------------------------------------


def prepared_proof_to_proto(proof: PreparedProof, out: pb.PreparedProof) -> pb.PreparedProof:
    pre_prepare_to_proto(proof.pre_prepare, out.pre_prepare)
    _all_to_proto(proof.prepares, prepare_to_proto, out.prepares)
    return out


def prepared_proof_from_proto(message: pb.PreparedProof) -> PreparedProof:
    _require(message, "pre_prepare", "prepared proof")
    return PreparedProof(
        pre_prepare=pre_prepare_from_proto(message.pre_prepare),
        prepares=decode_all(message.prepares, prepare_from_proto, "prepared proof prepares", QUORUM_MAX),
    )


def view_change_to_proto(view_change: ViewChange, out: pb.ViewChange) -> pb.ViewChange:
    out.sender = view_change.sender
    out.epoch = view_change.epoch
    out.new_view = view_change.new_view
    out.stable_seq = view_change.stable_seq
    out.stable_digest = view_change.stable_digest
    _all_to_proto(view_change.checkpoint_proof, checkpoint_to_proto, out.checkpoint_proof)
    _all_to_proto(view_change.prepared, prepared_proof_to_proto, out.prepared)
    out.signature = view_change.signature
    return out


def view_change_from_proto(message: pb.ViewChange) -> ViewChange:
    return ViewChange(
        sender=message.sender,
        epoch=check_int(message.epoch, "view change epoch"),
        new_view=check_int(message.new_view, "view change view"),
        stable_seq=check_int(message.stable_seq, "view change stable sequence number"),
        stable_digest=check_digest(message.stable_digest, "view change stable digest"),
        checkpoint_proof=decode_all(
            message.checkpoint_proof, checkpoint_from_proto, "view change checkpoint proof", QUORUM_MAX
        ),
        prepared=decode_all(message.prepared, prepared_proof_from_proto, "view change prepared proofs", LOG_ENTRIES_MAX),
        signature=_check_signature(message.signature, "view change"),
    )


def new_view_to_proto(new_view: NewView, out: pb.NewView) -> pb.NewView:
    out.sender = new_view.sender
    out.epoch = new_view.epoch
    out.view = new_view.view
    _all_to_proto(new_view.view_changes, view_change_to_proto, out.view_changes)
    _all_to_proto(new_view.pre_prepares, pre_prepare_to_proto, out.pre_prepares)
    out.signature = new_view.signature
    return out


def new_view_from_proto(message: pb.NewView) -> NewView:
    return NewView(
        sender=message.sender,
        epoch=check_int(message.epoch, "new view epoch"),
        view=check_int(message.view, "new view view"),
        view_changes=decode_all(message.view_changes, view_change_from_proto, "new view view changes", QUORUM_MAX),
        pre_prepares=decode_all(message.pre_prepares, pre_prepare_from_proto, "new view pre-prepares", LOG_ENTRIES_MAX),
        signature=_check_signature(message.signature, "new view"),
    )


# -- fetching ----------------------------------------------------------------------------------


def fetch_votes_to_proto(fetch: FetchVotes, out: pb.FetchVotes) -> pb.FetchVotes:
    out.sender = fetch.sender
    _refs_to_proto(fetch.refs, out.refs)
    return out


def fetch_votes_from_proto(message: pb.FetchVotes) -> FetchVotes:
    return FetchVotes(sender=message.sender, refs=_refs_from_proto(message.refs, "fetched vote refs", FETCH_REFS_MAX))


def committed_proof_to_proto(proof: CommittedProof, out: pb.CommittedProof) -> pb.CommittedProof:
    pre_prepare_to_proto(proof.pre_prepare, out.pre_prepare)
    _all_to_proto(proof.commits, commit_to_proto, out.commits)
    return out


def committed_proof_from_proto(message: pb.CommittedProof) -> CommittedProof:
    _require(message, "pre_prepare", "committed proof")
    return CommittedProof(
        pre_prepare=pre_prepare_from_proto(message.pre_prepare),
        commits=decode_all(message.commits, commit_from_proto, "committed proof commits", QUORUM_MAX),
    )


def snapshot_to_proto(snapshot: StateSnapshot, out: pb.StateSnapshot) -> pb.StateSnapshot:
    out.SetInParent()
    out.seq = snapshot.seq
    out.chain_digest = snapshot.chain_digest
    executed = out.executed
    for client_id, request_id, seq, request_digest in snapshot.executed:
        item = executed.add()
        item.client_id = client_id
        item.request_id = request_id
        item.seq = seq
        item.request_digest = request_digest
    versions = out.versions
    for replica_id, version, weights_digest in snapshot.versions:
        v = versions.add()
        v.replica_id = replica_id
        v.version = version
        v.weights_digest = weights_digest
    scheduled = out.scheduled
    for activation_seq, replica_id, version, weights_digest in snapshot.scheduled:
        s = scheduled.add()
        s.activation_seq = activation_seq
        s.replica_id = replica_id
        s.version = version
        s.weights_digest = weights_digest
    out.epoch = snapshot.epoch
    out.config_digest = snapshot.config_digest
    out.epoch_change_seq = snapshot.epoch_change_seq
    for op in snapshot.epoch_change_ops:
        control_op_to_proto(op, out.epoch_change_ops.add())
    for kind, account, amount in snapshot.ledger:
        out.ledger.add(kind=kind, account=account, amount=amount)
    return out


def snapshot_from_proto(message: pb.StateSnapshot) -> StateSnapshot:
    wire.check_list(message.executed, "snapshot executed requests", EXECUTED_MAX)
    wire.check_list(message.versions, "snapshot model versions", VERSIONS_MAX)
    wire.check_list(message.scheduled, "snapshot scheduled versions", VERSIONS_MAX)
    return StateSnapshot(
        seq=check_int(message.seq, "snapshot sequence number"),
        chain_digest=check_digest(message.chain_digest, "snapshot chain digest"),
        executed=tuple(
            (
                check_str(e.client_id, "executed client id"),
                check_str(e.request_id, "executed request id"),
                check_int(e.seq, "executed sequence number"),
                check_digest(e.request_digest, "executed request digest"),
            )
            for e in message.executed
        ),
        versions=tuple(
            (v.replica_id, check_int(v.version, "model version"), check_digest(v.weights_digest, "weights digest"))
            for v in message.versions
        ),
        scheduled=tuple(
            (
                check_int(s.activation_seq, "activation sequence number"),
                s.replica_id,
                check_int(s.version, "model version"),
                check_digest(s.weights_digest, "weights digest"),
            )
            for s in message.scheduled
        ),
        epoch=check_int(message.epoch, "snapshot epoch"),
        config_digest=check_digest(message.config_digest, "snapshot config digest"),
        epoch_change_seq=check_int(message.epoch_change_seq, "epoch change seq"),
        epoch_change_ops=tuple(_membership_op(control_op_from_proto(op)) for op in check_list(message.epoch_change_ops, "epoch change ops", 16)),
        ledger=tuple(
            (_ledger_kind(e.kind), check_str(e.account, "ledger account"), check_int(e.amount, "ledger amount"))
            for e in check_list(message.ledger, "ledger", EXECUTED_MAX)
        ),
    )


def _membership_op(op: ControlOp) -> JoinOp | LeaveOp | EvictOp:
    if not isinstance(op, (JoinOp, LeaveOp, EvictOp)):
        raise DecodeError("a scheduled epoch change lists a non-membership operation")
    return op


def _ledger_kind(kind: str) -> str:
    if kind not in ("client", "owner"):
        raise DecodeError(f"ledger entry of unknown kind {kind!r}")
    return kind


def fetch_state_to_proto(fetch: FetchState, out: pb.FetchState) -> pb.FetchState:
    out.sender = fetch.sender
    out.executed_seq = fetch.executed_seq
    return out


def fetch_state_from_proto(message: pb.FetchState) -> FetchState:
    return FetchState(sender=message.sender, executed_seq=check_int(message.executed_seq, "fetched sequence number"))


def state_reply_to_proto(reply: StateReply, out: pb.StateReply) -> pb.StateReply:
    out.sender = reply.sender
    if reply.snapshot is not None:
        snapshot_to_proto(reply.snapshot, out.snapshot)
    _all_to_proto(reply.checkpoint_proof, checkpoint_to_proto, out.checkpoint_proof)
    _all_to_proto(reply.batches, committed_proof_to_proto, out.batches)
    for link, start_seq in reply.config_links:
        record = out.config_links.add()
        config_link_to_proto(link, record.link)
        record.start_seq = start_seq
    return out


def state_reply_from_proto(message: pb.StateReply) -> StateReply:
    return StateReply(
        sender=message.sender,
        snapshot=snapshot_from_proto(message.snapshot) if message.HasField("snapshot") else None,
        checkpoint_proof=decode_all(message.checkpoint_proof, checkpoint_from_proto, "state checkpoint proof", QUORUM_MAX),
        batches=decode_all(message.batches, committed_proof_from_proto, "state batches", STATE_BATCHES_MAX),
        config_links=decode_all(
            message.config_links,
            lambda r: (config_link_from_proto(r.link), check_int(r.start_seq, "epoch start")),
            "state config links",
            64,
        ),
    )


# -- PeerMessage and PeerBatch -------------------------------------------------------------------

# dataclass -> (oneof arm, encoder); oneof arm -> decoder
_ENCODERS: dict[type, tuple[str, Callable[[Any, Any], Any]]] = {
    RequestMessage: ("request", request_message_to_proto),
    ControlMessage: ("control", control_message_to_proto),
    VoteBatch: ("vote_batch", vote_batch_to_proto),
    PrePrepare: ("pre_prepare", pre_prepare_to_proto),
    Prepare: ("prepare", prepare_to_proto),
    Commit: ("commit", commit_to_proto),
    Checkpoint: ("checkpoint", checkpoint_to_proto),
    ViewChange: ("view_change", view_change_to_proto),
    NewView: ("new_view", new_view_to_proto),
    FetchVotes: ("fetch_votes", fetch_votes_to_proto),
    FetchState: ("fetch_state", fetch_state_to_proto),
    StateReply: ("state_reply", state_reply_to_proto),
    ConfigSignature: ("config_signature", config_signature_to_proto),
}
_DECODERS: dict[str, Callable[[Any], PeerMessage]] = {
    "request": request_message_from_proto,
    "control": control_message_from_proto,
    "vote_batch": vote_batch_from_proto,
    "pre_prepare": pre_prepare_from_proto,
    "prepare": prepare_from_proto,
    "commit": commit_from_proto,
    "checkpoint": checkpoint_from_proto,
    "view_change": view_change_from_proto,
    "new_view": new_view_from_proto,
    "fetch_votes": fetch_votes_from_proto,
    "fetch_state": fetch_state_from_proto,
    "state_reply": state_reply_from_proto,
    "config_signature": config_signature_from_proto,
}


def peer_message_to_proto(message: PeerMessage, out: pb.PeerMessage | None = None) -> pb.PeerMessage:
    result = pb.PeerMessage() if out is None else out
    try:
        arm, encoder = _ENCODERS[type(message)]
    except KeyError:
        raise TypeError(f"no wire form for {type(message).__name__}") from None
    body = getattr(result, arm)
    body.SetInParent()  # a message whose fields are all zero still selects its arm
    encoder(message, body)
    return result


def peer_message_from_proto(message: pb.PeerMessage) -> PeerMessage:
    arm = message.WhichOneof("body")
    if arm is None:
        raise DecodeError("peer message of no known kind")
    return _DECODERS[arm](getattr(message, arm))


def encode_peer_message(message: PeerMessage) -> bytes:
    return wire.serialize(peer_message_to_proto(message))


def decode_peer_message(data: bytes) -> PeerMessage:
    return peer_message_from_proto(_parse(pb.PeerMessage, data, "peer message"))


def peer_batch_to_proto(sender: int, messages: Iterable[PeerMessage]) -> pb.PeerBatch:
    batch = pb.PeerBatch()
    batch.sender = sender
    items = batch.messages
    for message in messages:
        peer_message_to_proto(message, items.add())
    return batch


def encode_peer_batch(sender: int, messages: Iterable[PeerMessage]) -> bytes:
    """One frame of the Peer.Send stream: `messages` from replica `sender`, in order."""
    return wire.serialize(peer_batch_to_proto(sender, messages))


def decode_peer_batch(data: bytes) -> tuple[int, list[PeerMessage]]:
    """(sender, messages) of one frame; DecodeError if any part of it is malformed.

    The claimed sender is not authenticated here: the transport knows which peer it talks to,
    and consensus checks each message's own sender and signature.
    """
    batch = _parse(pb.PeerBatch, data, "peer batch")
    wire.check_list(batch.messages, "peer batch", PEER_BATCH_MESSAGES_MAX)
    return batch.sender, [peer_message_from_proto(m) for m in batch.messages]


# -- persisted records -------------------------------------------------------------------------


def committed_batch_to_proto(batch: CommittedBatch, out: pb.CommittedBatch | None = None) -> pb.CommittedBatch:
    result = pb.CommittedBatch() if out is None else out
    result.SetInParent()
    wire.header_to_proto(batch.header, result.header)
    proposal_to_proto(batch.proposal, result.proposal)
    _all_to_proto(batch.commits, commit_to_proto, result.commits)
    _all_to_proto(batch.vote_batches, vote_batch_to_proto, result.vote_batches)
    result.duplicate_entries.extend(batch.duplicate_entries)
    result.origin = pb.BATCH_ORIGIN_STATE_TRANSFER if batch.via_state_transfer else pb.BATCH_ORIGIN_CONSENSUS
    return result


def committed_batch_from_proto(message: pb.CommittedBatch) -> CommittedBatch:
    _require(message, "header", "committed batch")
    _require(message, "proposal", "committed batch")
    if message.origin not in (pb.BATCH_ORIGIN_CONSENSUS, pb.BATCH_ORIGIN_STATE_TRANSFER):
        raise DecodeError(f"committed batch: unknown origin {message.origin}")
    # the vote batches before the leaves: each vote in a leaf is then the output its vote entry
    # was read as (certs.wire), not decoded a second time
    vote_batches = decode_all(message.vote_batches, vote_batch_from_proto, "committed batch votes", VOTE_BATCHES_MAX)
    proposal = proposal_from_proto(message.proposal)
    duplicates = tuple(wire.check_list(message.duplicate_entries, "duplicate entries", PROPOSAL_ENTRIES_MAX))
    for index in duplicates:
        if index >= len(proposal.entries):
            raise DecodeError(f"duplicate entry {index} is outside a batch of {len(proposal.entries)}")
    return CommittedBatch(
        header=wire.header_from_proto(message.header),
        proposal=proposal,
        commits=decode_all(message.commits, commit_from_proto, "committed batch commits", QUORUM_MAX),
        vote_batches=vote_batches,
        duplicate_entries=duplicates,
        via_state_transfer=message.origin == pb.BATCH_ORIGIN_STATE_TRANSFER,
    )


def encode_committed_batch(batch: CommittedBatch) -> bytes:
    return wire.serialize(committed_batch_to_proto(batch))


def decode_committed_batch(data: bytes) -> CommittedBatch:
    return committed_batch_from_proto(_parse(pb.CommittedBatch, data, "committed batch"))


def stable_checkpoint_to_proto(
    record: StableCheckpointRecord, out: pb.StableCheckpointRecord
) -> pb.StableCheckpointRecord:
    snapshot_to_proto(record.snapshot, out.snapshot)
    out.previous_seq = record.previous_seq
    _all_to_proto(record.proof, checkpoint_to_proto, out.proof)
    return out


def stable_checkpoint_from_proto(message: pb.StableCheckpointRecord) -> StableCheckpointRecord:
    _require(message, "snapshot", "stable checkpoint")
    return StableCheckpointRecord(
        snapshot=snapshot_from_proto(message.snapshot),
        previous_seq=check_int(message.previous_seq, "previous stable sequence number"),
        proof=decode_all(message.proof, checkpoint_from_proto, "stable checkpoint proof", QUORUM_MAX),
    )


def record_to_proto(record: PersistRecord) -> pb.PersistRecord:
    out = pb.PersistRecord()
    if isinstance(record, SignedRecord):
        out.signed.SetInParent()
        peer_message_to_proto(record.message, out.signed.message)
    elif isinstance(record, PreparedRecord):
        out.prepared.SetInParent()
        pre_prepare_to_proto(record.pre_prepare, out.prepared.pre_prepare)
        _all_to_proto(record.prepares, prepare_to_proto, out.prepared.prepares)
    elif isinstance(record, CommittedRecord):
        committed_batch_to_proto(record.batch, out.committed.batch)
    elif isinstance(record, StableCheckpointRecord):
        stable_checkpoint_to_proto(record, out.stable_checkpoint)
    elif isinstance(record, ViewRecord):
        out.view.SetInParent()
        out.view.view = record.view
    elif isinstance(record, VoteReservationRecord):
        out.vote_reservation.SetInParent()
        out.vote_reservation.ceiling = record.ceiling
    elif isinstance(record, ConfigLinkRecord):
        out.config_link.SetInParent()
        config_link_to_proto(record.link, out.config_link.link)
        out.config_link.start_seq = record.start_seq
    else:
        raise TypeError(f"no stored form for {type(record).__name__}")
    return out


def record_from_proto(message: pb.PersistRecord) -> PersistRecord:
    kind = message.WhichOneof("record")
    if kind == "signed":
        _require(message.signed, "message", "signed record")
        return SignedRecord(message=peer_message_from_proto(message.signed.message))
    if kind == "prepared":
        prepared = message.prepared
        _require(prepared, "pre_prepare", "prepared record")
        return PreparedRecord(
            pre_prepare=pre_prepare_from_proto(prepared.pre_prepare),
            prepares=decode_all(prepared.prepares, prepare_from_proto, "prepared record prepares", QUORUM_MAX),
        )
    if kind == "committed":
        _require(message.committed, "batch", "committed record")
        return CommittedRecord(batch=committed_batch_from_proto(message.committed.batch))
    if kind == "stable_checkpoint":
        return stable_checkpoint_from_proto(message.stable_checkpoint)
    if kind == "view":
        return ViewRecord(view=check_int(message.view.view, "view"))
    if kind == "vote_reservation":
        return VoteReservationRecord(check_int(message.vote_reservation.ceiling, "vote batch ceiling"))
    if kind == "config_link":
        _require(message.config_link, "link", "config link record")
        return ConfigLinkRecord(config_link_from_proto(message.config_link.link), check_int(message.config_link.start_seq, "epoch start"))
    raise DecodeError("persisted record of no known kind")


def encode_record(record: PersistRecord) -> bytes:
    return wire.serialize(record_to_proto(record))


def decode_record(data: bytes) -> PersistRecord:
    return record_from_proto(_parse(pb.PersistRecord, data, "persisted record"))

