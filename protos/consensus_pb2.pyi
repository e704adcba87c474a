from protos import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BatchOrigin(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BATCH_ORIGIN_CONSENSUS: _ClassVar[BatchOrigin]
    BATCH_ORIGIN_STATE_TRANSFER: _ClassVar[BatchOrigin]
BATCH_ORIGIN_CONSENSUS: BatchOrigin
BATCH_ORIGIN_STATE_TRANSFER: BatchOrigin

class ModelUpdate(_message.Message):
    __slots__ = ("group_id", "replica_id", "new_version", "weights_digest", "owner_signature")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    NEW_VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    OWNER_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    replica_id: int
    new_version: int
    weights_digest: bytes
    owner_signature: bytes
    def __init__(self, group_id: _Optional[str] = ..., replica_id: _Optional[int] = ..., new_version: _Optional[int] = ..., weights_digest: _Optional[bytes] = ..., owner_signature: _Optional[bytes] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("group_id", "epoch", "owner_id", "owner_public_key", "replica_public_key", "address", "model_version", "weights_digest", "owner_signature", "replica_signature")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    REPLICA_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    OWNER_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    REPLICA_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    epoch: int
    owner_id: str
    owner_public_key: bytes
    replica_public_key: bytes
    address: str
    model_version: int
    weights_digest: bytes
    owner_signature: bytes
    replica_signature: bytes
    def __init__(self, group_id: _Optional[str] = ..., epoch: _Optional[int] = ..., owner_id: _Optional[str] = ..., owner_public_key: _Optional[bytes] = ..., replica_public_key: _Optional[bytes] = ..., address: _Optional[str] = ..., model_version: _Optional[int] = ..., weights_digest: _Optional[bytes] = ..., owner_signature: _Optional[bytes] = ..., replica_signature: _Optional[bytes] = ...) -> None: ...

class Approval(_message.Message):
    __slots__ = ("group_id", "epoch", "join_digest", "approver", "signature")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    JOIN_DIGEST_FIELD_NUMBER: _ClassVar[int]
    APPROVER_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    epoch: int
    join_digest: bytes
    approver: int
    signature: bytes
    def __init__(self, group_id: _Optional[str] = ..., epoch: _Optional[int] = ..., join_digest: _Optional[bytes] = ..., approver: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("group_id", "epoch", "replica_id", "owner_signature")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    epoch: int
    replica_id: int
    owner_signature: bytes
    def __init__(self, group_id: _Optional[str] = ..., epoch: _Optional[int] = ..., replica_id: _Optional[int] = ..., owner_signature: _Optional[bytes] = ...) -> None: ...

class JoinOp(_message.Message):
    __slots__ = ("join", "approvals")
    JOIN_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    join: JoinRequest
    approvals: _containers.RepeatedCompositeFieldContainer[Approval]
    def __init__(self, join: _Optional[_Union[JoinRequest, _Mapping]] = ..., approvals: _Optional[_Iterable[_Union[Approval, _Mapping]]] = ...) -> None: ...

class LeaveOp(_message.Message):
    __slots__ = ("leave",)
    LEAVE_FIELD_NUMBER: _ClassVar[int]
    leave: LeaveRequest
    def __init__(self, leave: _Optional[_Union[LeaveRequest, _Mapping]] = ...) -> None: ...

class EvictOp(_message.Message):
    __slots__ = ("group_id", "epoch", "replica_id", "evidence")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    epoch: int
    replica_id: int
    evidence: bytes
    def __init__(self, group_id: _Optional[str] = ..., epoch: _Optional[int] = ..., replica_id: _Optional[int] = ..., evidence: _Optional[bytes] = ...) -> None: ...

class ControlOp(_message.Message):
    __slots__ = ("model_update", "join", "leave", "evict")
    MODEL_UPDATE_FIELD_NUMBER: _ClassVar[int]
    JOIN_FIELD_NUMBER: _ClassVar[int]
    LEAVE_FIELD_NUMBER: _ClassVar[int]
    EVICT_FIELD_NUMBER: _ClassVar[int]
    model_update: ModelUpdate
    join: JoinOp
    leave: LeaveOp
    evict: EvictOp
    def __init__(self, model_update: _Optional[_Union[ModelUpdate, _Mapping]] = ..., join: _Optional[_Union[JoinOp, _Mapping]] = ..., leave: _Optional[_Union[LeaveOp, _Mapping]] = ..., evict: _Optional[_Union[EvictOp, _Mapping]] = ...) -> None: ...

class ConfigSignature(_message.Message):
    __slots__ = ("sender", "epoch", "config_digest", "signature")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    CONFIG_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    sender: int
    epoch: int
    config_digest: bytes
    signature: bytes
    def __init__(self, sender: _Optional[int] = ..., epoch: _Optional[int] = ..., config_digest: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class QuorumSigned(_message.Message):
    __slots__ = ("replica_id", "signature")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    replica_id: int
    signature: bytes
    def __init__(self, replica_id: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ConfigLink(_message.Message):
    __slots__ = ("config_json", "signatures")
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    config_json: bytes
    signatures: _containers.RepeatedCompositeFieldContainer[QuorumSigned]
    def __init__(self, config_json: _Optional[bytes] = ..., signatures: _Optional[_Iterable[_Union[QuorumSigned, _Mapping]]] = ...) -> None: ...

class LedgerEntry(_message.Message):
    __slots__ = ("kind", "account", "amount")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    kind: str
    account: str
    amount: int
    def __init__(self, kind: _Optional[str] = ..., account: _Optional[str] = ..., amount: _Optional[int] = ...) -> None: ...

class RequestMessage(_message.Message):
    __slots__ = ("sender", "request")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    sender: int
    request: _common_pb2.InferenceRequest
    def __init__(self, sender: _Optional[int] = ..., request: _Optional[_Union[_common_pb2.InferenceRequest, _Mapping]] = ...) -> None: ...

class ControlMessage(_message.Message):
    __slots__ = ("sender", "op")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    sender: int
    op: ControlOp
    def __init__(self, sender: _Optional[int] = ..., op: _Optional[_Union[ControlOp, _Mapping]] = ...) -> None: ...

class VoteBatch(_message.Message):
    __slots__ = ("sender", "epoch", "batch_no", "model_version", "entries", "signature")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    BATCH_NO_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    sender: int
    epoch: int
    batch_no: int
    model_version: int
    entries: _containers.RepeatedCompositeFieldContainer[_common_pb2.VoteEntry]
    signature: bytes
    def __init__(self, sender: _Optional[int] = ..., epoch: _Optional[int] = ..., batch_no: _Optional[int] = ..., model_version: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[_common_pb2.VoteEntry, _Mapping]]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class VoteRef(_message.Message):
    __slots__ = ("voter", "batch_no")
    VOTER_FIELD_NUMBER: _ClassVar[int]
    BATCH_NO_FIELD_NUMBER: _ClassVar[int]
    voter: int
    batch_no: int
    def __init__(self, voter: _Optional[int] = ..., batch_no: _Optional[int] = ...) -> None: ...

class ProposalEntry(_message.Message):
    __slots__ = ("leaf", "refs")
    LEAF_FIELD_NUMBER: _ClassVar[int]
    REFS_FIELD_NUMBER: _ClassVar[int]
    leaf: _common_pb2.Leaf
    refs: _containers.RepeatedCompositeFieldContainer[VoteRef]
    def __init__(self, leaf: _Optional[_Union[_common_pb2.Leaf, _Mapping]] = ..., refs: _Optional[_Iterable[_Union[VoteRef, _Mapping]]] = ...) -> None: ...

class Proposal(_message.Message):
    __slots__ = ("entries", "ops")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[ProposalEntry]
    ops: _containers.RepeatedCompositeFieldContainer[ControlOp]
    def __init__(self, entries: _Optional[_Iterable[_Union[ProposalEntry, _Mapping]]] = ..., ops: _Optional[_Iterable[_Union[ControlOp, _Mapping]]] = ...) -> None: ...

class PrePrepare(_message.Message):
    __slots__ = ("sender", "epoch", "header", "proposal", "signature")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    sender: int
    epoch: int
    header: _common_pb2.BatchHeader
    proposal: Proposal
    signature: bytes
    def __init__(self, sender: _Optional[int] = ..., epoch: _Optional[int] = ..., header: _Optional[_Union[_common_pb2.BatchHeader, _Mapping]] = ..., proposal: _Optional[_Union[Proposal, _Mapping]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class Prepare(_message.Message):
    __slots__ = ("sender", "epoch", "view", "seq", "batch_digest", "signature")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    BATCH_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    sender: int
    epoch: int
    view: int
    seq: int
    batch_digest: bytes
    signature: bytes
    def __init__(self, sender: _Optional[int] = ..., epoch: _Optional[int] = ..., view: _Optional[int] = ..., seq: _Optional[int] = ..., batch_digest: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class Commit(_message.Message):
    __slots__ = ("sender", "epoch", "view", "seq", "batch_digest", "signature")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    BATCH_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    sender: int
    epoch: int
    view: int
    seq: int
    batch_digest: bytes
    signature: bytes
    def __init__(self, sender: _Optional[int] = ..., epoch: _Optional[int] = ..., view: _Optional[int] = ..., seq: _Optional[int] = ..., batch_digest: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("sender", "epoch", "seq", "state_digest", "signature")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STATE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    sender: int
    epoch: int
    seq: int
    state_digest: bytes
    signature: bytes
    def __init__(self, sender: _Optional[int] = ..., epoch: _Optional[int] = ..., seq: _Optional[int] = ..., state_digest: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class PreparedProof(_message.Message):
    __slots__ = ("pre_prepare", "prepares")
    PRE_PREPARE_FIELD_NUMBER: _ClassVar[int]
    PREPARES_FIELD_NUMBER: _ClassVar[int]
    pre_prepare: PrePrepare
    prepares: _containers.RepeatedCompositeFieldContainer[Prepare]
    def __init__(self, pre_prepare: _Optional[_Union[PrePrepare, _Mapping]] = ..., prepares: _Optional[_Iterable[_Union[Prepare, _Mapping]]] = ...) -> None: ...

class ViewChange(_message.Message):
    __slots__ = ("sender", "epoch", "new_view", "stable_seq", "stable_digest", "checkpoint_proof", "prepared", "signature")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    NEW_VIEW_FIELD_NUMBER: _ClassVar[int]
    STABLE_SEQ_FIELD_NUMBER: _ClassVar[int]
    STABLE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_PROOF_FIELD_NUMBER: _ClassVar[int]
    PREPARED_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    sender: int
    epoch: int
    new_view: int
    stable_seq: int
    stable_digest: bytes
    checkpoint_proof: _containers.RepeatedCompositeFieldContainer[Checkpoint]
    prepared: _containers.RepeatedCompositeFieldContainer[PreparedProof]
    signature: bytes
    def __init__(self, sender: _Optional[int] = ..., epoch: _Optional[int] = ..., new_view: _Optional[int] = ..., stable_seq: _Optional[int] = ..., stable_digest: _Optional[bytes] = ..., checkpoint_proof: _Optional[_Iterable[_Union[Checkpoint, _Mapping]]] = ..., prepared: _Optional[_Iterable[_Union[PreparedProof, _Mapping]]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class NewView(_message.Message):
    __slots__ = ("sender", "epoch", "view", "view_changes", "pre_prepares", "signature")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    VIEW_CHANGES_FIELD_NUMBER: _ClassVar[int]
    PRE_PREPARES_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    sender: int
    epoch: int
    view: int
    view_changes: _containers.RepeatedCompositeFieldContainer[ViewChange]
    pre_prepares: _containers.RepeatedCompositeFieldContainer[PrePrepare]
    signature: bytes
    def __init__(self, sender: _Optional[int] = ..., epoch: _Optional[int] = ..., view: _Optional[int] = ..., view_changes: _Optional[_Iterable[_Union[ViewChange, _Mapping]]] = ..., pre_prepares: _Optional[_Iterable[_Union[PrePrepare, _Mapping]]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class FetchVotes(_message.Message):
    __slots__ = ("sender", "refs")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    REFS_FIELD_NUMBER: _ClassVar[int]
    sender: int
    refs: _containers.RepeatedCompositeFieldContainer[VoteRef]
    def __init__(self, sender: _Optional[int] = ..., refs: _Optional[_Iterable[_Union[VoteRef, _Mapping]]] = ...) -> None: ...

class CommittedProof(_message.Message):
    __slots__ = ("pre_prepare", "commits")
    PRE_PREPARE_FIELD_NUMBER: _ClassVar[int]
    COMMITS_FIELD_NUMBER: _ClassVar[int]
    pre_prepare: PrePrepare
    commits: _containers.RepeatedCompositeFieldContainer[Commit]
    def __init__(self, pre_prepare: _Optional[_Union[PrePrepare, _Mapping]] = ..., commits: _Optional[_Iterable[_Union[Commit, _Mapping]]] = ...) -> None: ...

class ExecutedRequest(_message.Message):
    __slots__ = ("client_id", "request_id", "seq", "request_digest")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REQUEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    request_id: str
    seq: int
    request_digest: bytes
    def __init__(self, client_id: _Optional[str] = ..., request_id: _Optional[str] = ..., seq: _Optional[int] = ..., request_digest: _Optional[bytes] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("replica_id", "version", "weights_digest")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    replica_id: int
    version: int
    weights_digest: bytes
    def __init__(self, replica_id: _Optional[int] = ..., version: _Optional[int] = ..., weights_digest: _Optional[bytes] = ...) -> None: ...

class ScheduledVersion(_message.Message):
    __slots__ = ("activation_seq", "replica_id", "version", "weights_digest")
    ACTIVATION_SEQ_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    activation_seq: int
    replica_id: int
    version: int
    weights_digest: bytes
    def __init__(self, activation_seq: _Optional[int] = ..., replica_id: _Optional[int] = ..., version: _Optional[int] = ..., weights_digest: _Optional[bytes] = ...) -> None: ...

class StateSnapshot(_message.Message):
    __slots__ = ("seq", "chain_digest", "executed", "versions", "scheduled", "epoch", "config_digest", "epoch_change_seq", "epoch_change_ops", "ledger")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CHAIN_DIGEST_FIELD_NUMBER: _ClassVar[int]
    EXECUTED_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    CONFIG_DIGEST_FIELD_NUMBER: _ClassVar[int]
    EPOCH_CHANGE_SEQ_FIELD_NUMBER: _ClassVar[int]
    EPOCH_CHANGE_OPS_FIELD_NUMBER: _ClassVar[int]
    LEDGER_FIELD_NUMBER: _ClassVar[int]
    seq: int
    chain_digest: bytes
    executed: _containers.RepeatedCompositeFieldContainer[ExecutedRequest]
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    scheduled: _containers.RepeatedCompositeFieldContainer[ScheduledVersion]
    epoch: int
    config_digest: bytes
    epoch_change_seq: int
    epoch_change_ops: _containers.RepeatedCompositeFieldContainer[ControlOp]
    ledger: _containers.RepeatedCompositeFieldContainer[LedgerEntry]
    def __init__(self, seq: _Optional[int] = ..., chain_digest: _Optional[bytes] = ..., executed: _Optional[_Iterable[_Union[ExecutedRequest, _Mapping]]] = ..., versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., scheduled: _Optional[_Iterable[_Union[ScheduledVersion, _Mapping]]] = ..., epoch: _Optional[int] = ..., config_digest: _Optional[bytes] = ..., epoch_change_seq: _Optional[int] = ..., epoch_change_ops: _Optional[_Iterable[_Union[ControlOp, _Mapping]]] = ..., ledger: _Optional[_Iterable[_Union[LedgerEntry, _Mapping]]] = ...) -> None: ...

class FetchState(_message.Message):
    __slots__ = ("sender", "executed_seq")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    EXECUTED_SEQ_FIELD_NUMBER: _ClassVar[int]
    sender: int
    executed_seq: int
    def __init__(self, sender: _Optional[int] = ..., executed_seq: _Optional[int] = ...) -> None: ...

class StateReply(_message.Message):
    __slots__ = ("sender", "snapshot", "checkpoint_proof", "batches", "config_links")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_PROOF_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    CONFIG_LINKS_FIELD_NUMBER: _ClassVar[int]
    sender: int
    snapshot: StateSnapshot
    checkpoint_proof: _containers.RepeatedCompositeFieldContainer[Checkpoint]
    batches: _containers.RepeatedCompositeFieldContainer[CommittedProof]
    config_links: _containers.RepeatedCompositeFieldContainer[ConfigLinkRecord]
    def __init__(self, sender: _Optional[int] = ..., snapshot: _Optional[_Union[StateSnapshot, _Mapping]] = ..., checkpoint_proof: _Optional[_Iterable[_Union[Checkpoint, _Mapping]]] = ..., batches: _Optional[_Iterable[_Union[CommittedProof, _Mapping]]] = ..., config_links: _Optional[_Iterable[_Union[ConfigLinkRecord, _Mapping]]] = ...) -> None: ...

class PeerMessage(_message.Message):
    __slots__ = ("request", "control", "vote_batch", "pre_prepare", "prepare", "commit", "checkpoint", "view_change", "new_view", "fetch_votes", "fetch_state", "state_reply", "config_signature")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    VOTE_BATCH_FIELD_NUMBER: _ClassVar[int]
    PRE_PREPARE_FIELD_NUMBER: _ClassVar[int]
    PREPARE_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    VIEW_CHANGE_FIELD_NUMBER: _ClassVar[int]
    NEW_VIEW_FIELD_NUMBER: _ClassVar[int]
    FETCH_VOTES_FIELD_NUMBER: _ClassVar[int]
    FETCH_STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_REPLY_FIELD_NUMBER: _ClassVar[int]
    CONFIG_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    request: RequestMessage
    control: ControlMessage
    vote_batch: VoteBatch
    pre_prepare: PrePrepare
    prepare: Prepare
    commit: Commit
    checkpoint: Checkpoint
    view_change: ViewChange
    new_view: NewView
    fetch_votes: FetchVotes
    fetch_state: FetchState
    state_reply: StateReply
    config_signature: ConfigSignature
    def __init__(self, request: _Optional[_Union[RequestMessage, _Mapping]] = ..., control: _Optional[_Union[ControlMessage, _Mapping]] = ..., vote_batch: _Optional[_Union[VoteBatch, _Mapping]] = ..., pre_prepare: _Optional[_Union[PrePrepare, _Mapping]] = ..., prepare: _Optional[_Union[Prepare, _Mapping]] = ..., commit: _Optional[_Union[Commit, _Mapping]] = ..., checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ..., view_change: _Optional[_Union[ViewChange, _Mapping]] = ..., new_view: _Optional[_Union[NewView, _Mapping]] = ..., fetch_votes: _Optional[_Union[FetchVotes, _Mapping]] = ..., fetch_state: _Optional[_Union[FetchState, _Mapping]] = ..., state_reply: _Optional[_Union[StateReply, _Mapping]] = ..., config_signature: _Optional[_Union[ConfigSignature, _Mapping]] = ...) -> None: ...

class PeerBatch(_message.Message):
    __slots__ = ("sender", "messages")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    sender: int
    messages: _containers.RepeatedCompositeFieldContainer[PeerMessage]
    def __init__(self, sender: _Optional[int] = ..., messages: _Optional[_Iterable[_Union[PeerMessage, _Mapping]]] = ...) -> None: ...

class SendAck(_message.Message):
    __slots__ = ("batches_received",)
    BATCHES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    batches_received: int
    def __init__(self, batches_received: _Optional[int] = ...) -> None: ...

class CommittedBatch(_message.Message):
    __slots__ = ("header", "proposal", "commits", "vote_batches", "duplicate_entries", "origin")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_FIELD_NUMBER: _ClassVar[int]
    COMMITS_FIELD_NUMBER: _ClassVar[int]
    VOTE_BATCHES_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.BatchHeader
    proposal: Proposal
    commits: _containers.RepeatedCompositeFieldContainer[Commit]
    vote_batches: _containers.RepeatedCompositeFieldContainer[VoteBatch]
    duplicate_entries: _containers.RepeatedScalarFieldContainer[int]
    origin: BatchOrigin
    def __init__(self, header: _Optional[_Union[_common_pb2.BatchHeader, _Mapping]] = ..., proposal: _Optional[_Union[Proposal, _Mapping]] = ..., commits: _Optional[_Iterable[_Union[Commit, _Mapping]]] = ..., vote_batches: _Optional[_Iterable[_Union[VoteBatch, _Mapping]]] = ..., duplicate_entries: _Optional[_Iterable[int]] = ..., origin: _Optional[_Union[BatchOrigin, str]] = ...) -> None: ...

class SignedRecord(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: PeerMessage
    def __init__(self, message: _Optional[_Union[PeerMessage, _Mapping]] = ...) -> None: ...

class PreparedRecord(_message.Message):
    __slots__ = ("pre_prepare", "prepares")
    PRE_PREPARE_FIELD_NUMBER: _ClassVar[int]
    PREPARES_FIELD_NUMBER: _ClassVar[int]
    pre_prepare: PrePrepare
    prepares: _containers.RepeatedCompositeFieldContainer[Prepare]
    def __init__(self, pre_prepare: _Optional[_Union[PrePrepare, _Mapping]] = ..., prepares: _Optional[_Iterable[_Union[Prepare, _Mapping]]] = ...) -> None: ...

class CommittedRecord(_message.Message):
    __slots__ = ("batch",)
    BATCH_FIELD_NUMBER: _ClassVar[int]
    batch: CommittedBatch
    def __init__(self, batch: _Optional[_Union[CommittedBatch, _Mapping]] = ...) -> None: ...

class StableCheckpointRecord(_message.Message):
    __slots__ = ("snapshot", "previous_seq", "proof")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_SEQ_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    snapshot: StateSnapshot
    previous_seq: int
    proof: _containers.RepeatedCompositeFieldContainer[Checkpoint]
    def __init__(self, snapshot: _Optional[_Union[StateSnapshot, _Mapping]] = ..., previous_seq: _Optional[int] = ..., proof: _Optional[_Iterable[_Union[Checkpoint, _Mapping]]] = ...) -> None: ...

class ViewRecord(_message.Message):
    __slots__ = ("view",)
    VIEW_FIELD_NUMBER: _ClassVar[int]
    view: int
    def __init__(self, view: _Optional[int] = ...) -> None: ...

class PersistRecord(_message.Message):
    __slots__ = ("signed", "prepared", "committed", "stable_checkpoint", "view", "config_link", "vote_reservation")
    SIGNED_FIELD_NUMBER: _ClassVar[int]
    PREPARED_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    STABLE_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    CONFIG_LINK_FIELD_NUMBER: _ClassVar[int]
    VOTE_RESERVATION_FIELD_NUMBER: _ClassVar[int]
    signed: SignedRecord
    prepared: PreparedRecord
    committed: CommittedRecord
    stable_checkpoint: StableCheckpointRecord
    view: ViewRecord
    config_link: ConfigLinkRecord
    vote_reservation: VoteReservationRecord
    def __init__(self, signed: _Optional[_Union[SignedRecord, _Mapping]] = ..., prepared: _Optional[_Union[PreparedRecord, _Mapping]] = ..., committed: _Optional[_Union[CommittedRecord, _Mapping]] = ..., stable_checkpoint: _Optional[_Union[StableCheckpointRecord, _Mapping]] = ..., view: _Optional[_Union[ViewRecord, _Mapping]] = ..., config_link: _Optional[_Union[ConfigLinkRecord, _Mapping]] = ..., vote_reservation: _Optional[_Union[VoteReservationRecord, _Mapping]] = ...) -> None: ...

class VoteReservationRecord(_message.Message):
    __slots__ = ("ceiling",)
    CEILING_FIELD_NUMBER: _ClassVar[int]
    ceiling: int
    def __init__(self, ceiling: _Optional[int] = ...) -> None: ...

class ConfigLinkRecord(_message.Message):
    __slots__ = ("link", "start_seq")
    LINK_FIELD_NUMBER: _ClassVar[int]
    START_SEQ_FIELD_NUMBER: _ClassVar[int]
    link: ConfigLink
    start_seq: int
    def __init__(self, link: _Optional[_Union[ConfigLink, _Mapping]] = ..., start_seq: _Optional[int] = ...) -> None: ...
