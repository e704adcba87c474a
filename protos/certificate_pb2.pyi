from protos import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class QuorumSignature(_message.Message):
    __slots__ = ("replica_id", "signature")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    replica_id: int
    signature: bytes
    def __init__(self, replica_id: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class VoteProof(_message.Message):
    __slots__ = ("voter", "batch_no", "model_version", "entries_root", "entry_count", "entry_index", "entry_path", "signature")
    VOTER_FIELD_NUMBER: _ClassVar[int]
    BATCH_NO_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_ROOT_FIELD_NUMBER: _ClassVar[int]
    ENTRY_COUNT_FIELD_NUMBER: _ClassVar[int]
    ENTRY_INDEX_FIELD_NUMBER: _ClassVar[int]
    ENTRY_PATH_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    voter: int
    batch_no: int
    model_version: int
    entries_root: bytes
    entry_count: int
    entry_index: int
    entry_path: _containers.RepeatedScalarFieldContainer[bytes]
    signature: bytes
    def __init__(self, voter: _Optional[int] = ..., batch_no: _Optional[int] = ..., model_version: _Optional[int] = ..., entries_root: _Optional[bytes] = ..., entry_count: _Optional[int] = ..., entry_index: _Optional[int] = ..., entry_path: _Optional[_Iterable[bytes]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class Certificate(_message.Message):
    __slots__ = ("header", "quorum", "leaf", "leaf_index", "proof", "vote_proofs")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    LEAF_FIELD_NUMBER: _ClassVar[int]
    LEAF_INDEX_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    VOTE_PROOFS_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.BatchHeader
    quorum: _containers.RepeatedCompositeFieldContainer[QuorumSignature]
    leaf: _common_pb2.Leaf
    leaf_index: int
    proof: _containers.RepeatedScalarFieldContainer[bytes]
    vote_proofs: _containers.RepeatedCompositeFieldContainer[VoteProof]
    def __init__(self, header: _Optional[_Union[_common_pb2.BatchHeader, _Mapping]] = ..., quorum: _Optional[_Iterable[_Union[QuorumSignature, _Mapping]]] = ..., leaf: _Optional[_Union[_common_pb2.Leaf, _Mapping]] = ..., leaf_index: _Optional[int] = ..., proof: _Optional[_Iterable[bytes]] = ..., vote_proofs: _Optional[_Iterable[_Union[VoteProof, _Mapping]]] = ...) -> None: ...

class EvidenceStatement(_message.Message):
    __slots__ = ("kind", "group_id", "epoch", "signer", "slot", "content", "signature")
    KIND_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SIGNER_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    group_id: str
    epoch: int
    signer: int
    slot: _containers.RepeatedScalarFieldContainer[int]
    content: bytes
    signature: bytes
    def __init__(self, kind: _Optional[str] = ..., group_id: _Optional[str] = ..., epoch: _Optional[int] = ..., signer: _Optional[int] = ..., slot: _Optional[_Iterable[int]] = ..., content: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class Equivocation(_message.Message):
    __slots__ = ("first", "second")
    FIRST_FIELD_NUMBER: _ClassVar[int]
    SECOND_FIELD_NUMBER: _ClassVar[int]
    first: EvidenceStatement
    second: EvidenceStatement
    def __init__(self, first: _Optional[_Union[EvidenceStatement, _Mapping]] = ..., second: _Optional[_Union[EvidenceStatement, _Mapping]] = ...) -> None: ...

class ConflictingCertificates(_message.Message):
    __slots__ = ("a", "b")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    a: Certificate
    b: Certificate
    def __init__(self, a: _Optional[_Union[Certificate, _Mapping]] = ..., b: _Optional[_Union[Certificate, _Mapping]] = ...) -> None: ...

class ProvenLeaf(_message.Message):
    __slots__ = ("leaf", "index", "path")
    LEAF_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    leaf: _common_pb2.Leaf
    index: int
    path: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, leaf: _Optional[_Union[_common_pb2.Leaf, _Mapping]] = ..., index: _Optional[int] = ..., path: _Optional[_Iterable[bytes]] = ...) -> None: ...

class InvalidProposal(_message.Message):
    __slots__ = ("header", "signer", "signature", "leaves")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SIGNER_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    LEAVES_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.BatchHeader
    signer: int
    signature: bytes
    leaves: _containers.RepeatedCompositeFieldContainer[ProvenLeaf]
    def __init__(self, header: _Optional[_Union[_common_pb2.BatchHeader, _Mapping]] = ..., signer: _Optional[int] = ..., signature: _Optional[bytes] = ..., leaves: _Optional[_Iterable[_Union[ProvenLeaf, _Mapping]]] = ...) -> None: ...

class ProvenVoteEntry(_message.Message):
    __slots__ = ("entry", "index", "path")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    entry: _common_pb2.VoteEntry
    index: int
    path: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, entry: _Optional[_Union[_common_pb2.VoteEntry, _Mapping]] = ..., index: _Optional[int] = ..., path: _Optional[_Iterable[bytes]] = ...) -> None: ...

class InvalidVoteBatch(_message.Message):
    __slots__ = ("group_id", "epoch", "voter", "batch_no", "model_version", "entries_root", "entry_count", "signature", "entries")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    VOTER_FIELD_NUMBER: _ClassVar[int]
    BATCH_NO_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_ROOT_FIELD_NUMBER: _ClassVar[int]
    ENTRY_COUNT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    epoch: int
    voter: int
    batch_no: int
    model_version: int
    entries_root: bytes
    entry_count: int
    signature: bytes
    entries: _containers.RepeatedCompositeFieldContainer[ProvenVoteEntry]
    def __init__(self, group_id: _Optional[str] = ..., epoch: _Optional[int] = ..., voter: _Optional[int] = ..., batch_no: _Optional[int] = ..., model_version: _Optional[int] = ..., entries_root: _Optional[bytes] = ..., entry_count: _Optional[int] = ..., signature: _Optional[bytes] = ..., entries: _Optional[_Iterable[_Union[ProvenVoteEntry, _Mapping]]] = ...) -> None: ...

class Evidence(_message.Message):
    __slots__ = ("equivocation", "conflicting_certificates", "invalid_proposal", "invalid_vote_batch")
    EQUIVOCATION_FIELD_NUMBER: _ClassVar[int]
    CONFLICTING_CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    INVALID_PROPOSAL_FIELD_NUMBER: _ClassVar[int]
    INVALID_VOTE_BATCH_FIELD_NUMBER: _ClassVar[int]
    equivocation: Equivocation
    conflicting_certificates: ConflictingCertificates
    invalid_proposal: InvalidProposal
    invalid_vote_batch: InvalidVoteBatch
    def __init__(self, equivocation: _Optional[_Union[Equivocation, _Mapping]] = ..., conflicting_certificates: _Optional[_Union[ConflictingCertificates, _Mapping]] = ..., invalid_proposal: _Optional[_Union[InvalidProposal, _Mapping]] = ..., invalid_vote_batch: _Optional[_Union[InvalidVoteBatch, _Mapping]] = ...) -> None: ...
