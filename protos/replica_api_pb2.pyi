from protos import common_pb2 as _common_pb2
from protos import consensus_pb2 as _consensus_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubmitStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SUBMIT_STATUS_UNSPECIFIED: _ClassVar[SubmitStatus]
    CERTIFIED: _ClassVar[SubmitStatus]
    REJECTED: _ClassVar[SubmitStatus]
    TIMEOUT: _ClassVar[SubmitStatus]
    OVERLOADED: _ClassVar[SubmitStatus]
SUBMIT_STATUS_UNSPECIFIED: SubmitStatus
CERTIFIED: SubmitStatus
REJECTED: SubmitStatus
TIMEOUT: SubmitStatus
OVERLOADED: SubmitStatus

class SubmitRequest(_message.Message):
    __slots__ = ("request", "fanout", "timeout_ms")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    FANOUT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    request: _common_pb2.InferenceRequest
    fanout: int
    timeout_ms: int
    def __init__(self, request: _Optional[_Union[_common_pb2.InferenceRequest, _Mapping]] = ..., fanout: _Optional[int] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class SubmitReply(_message.Message):
    __slots__ = ("client_id", "request_id", "status", "error", "certificate", "seq", "replica_id", "retry_after_ms")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    request_id: str
    status: SubmitStatus
    error: str
    certificate: bytes
    seq: int
    replica_id: int
    retry_after_ms: int
    def __init__(self, client_id: _Optional[str] = ..., request_id: _Optional[str] = ..., status: _Optional[_Union[SubmitStatus, str]] = ..., error: _Optional[str] = ..., certificate: _Optional[bytes] = ..., seq: _Optional[int] = ..., replica_id: _Optional[int] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class SubmitBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[SubmitRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[SubmitRequest, _Mapping]]] = ...) -> None: ...

class SubmitBatchReply(_message.Message):
    __slots__ = ("replies",)
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    replies: _containers.RepeatedCompositeFieldContainer[SubmitReply]
    def __init__(self, replies: _Optional[_Iterable[_Union[SubmitReply, _Mapping]]] = ...) -> None: ...

class GetCertificateRequest(_message.Message):
    __slots__ = ("client_id", "request_id")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    request_id: str
    def __init__(self, client_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class CertificateRangeRequest(_message.Message):
    __slots__ = ("after_seq", "through_seq", "limit")
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    THROUGH_SEQ_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    through_seq: int
    limit: int
    def __init__(self, after_seq: _Optional[int] = ..., through_seq: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class CertificateRangeReply(_message.Message):
    __slots__ = ("certificates", "next_after_seq", "more")
    CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    certificates: _containers.RepeatedScalarFieldContainer[bytes]
    next_after_seq: int
    more: bool
    def __init__(self, certificates: _Optional[_Iterable[bytes]] = ..., next_after_seq: _Optional[int] = ..., more: _Optional[bool] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelVersionInfo(_message.Message):
    __slots__ = ("replica_id", "version", "weights_digest")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    replica_id: int
    version: int
    weights_digest: bytes
    def __init__(self, replica_id: _Optional[int] = ..., version: _Optional[int] = ..., weights_digest: _Optional[bytes] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("group_id", "epoch", "config_digest", "replica_id", "view", "primary", "state", "executed_seq", "stable_seq", "pending_requests", "versions", "loaded_versions", "activations", "triton_models", "connected_peers", "peers")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    CONFIG_DIGEST_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXECUTED_SEQ_FIELD_NUMBER: _ClassVar[int]
    STABLE_SEQ_FIELD_NUMBER: _ClassVar[int]
    PENDING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    LOADED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    TRITON_MODELS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_PEERS_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    epoch: int
    config_digest: bytes
    replica_id: int
    view: int
    primary: int
    state: str
    executed_seq: int
    stable_seq: int
    pending_requests: int
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersionInfo]
    loaded_versions: _containers.RepeatedScalarFieldContainer[int]
    activations: _containers.RepeatedCompositeFieldContainer[Activation]
    triton_models: _containers.RepeatedCompositeFieldContainer[TritonModel]
    connected_peers: _containers.RepeatedScalarFieldContainer[int]
    peers: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, group_id: _Optional[str] = ..., epoch: _Optional[int] = ..., config_digest: _Optional[bytes] = ..., replica_id: _Optional[int] = ..., view: _Optional[int] = ..., primary: _Optional[int] = ..., state: _Optional[str] = ..., executed_seq: _Optional[int] = ..., stable_seq: _Optional[int] = ..., pending_requests: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[ModelVersionInfo, _Mapping]]] = ..., loaded_versions: _Optional[_Iterable[int]] = ..., activations: _Optional[_Iterable[_Union[Activation, _Mapping]]] = ..., triton_models: _Optional[_Iterable[_Union[TritonModel, _Mapping]]] = ..., connected_peers: _Optional[_Iterable[int]] = ..., peers: _Optional[_Iterable[int]] = ...) -> None: ...

class TritonModel(_message.Message):
    __slots__ = ("version", "model_name", "model_version")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    model_name: str
    model_version: str
    def __init__(self, version: _Optional[int] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class Activation(_message.Message):
    __slots__ = ("replica_id", "version", "weights_digest", "from_seq")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    replica_id: int
    version: int
    weights_digest: bytes
    from_seq: int
    def __init__(self, replica_id: _Optional[int] = ..., version: _Optional[int] = ..., weights_digest: _Optional[bytes] = ..., from_seq: _Optional[int] = ...) -> None: ...

class ModelUpdateRequest(_message.Message):
    __slots__ = ("update", "package_path", "package_archive")
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_PATH_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_ARCHIVE_FIELD_NUMBER: _ClassVar[int]
    update: _consensus_pb2.ModelUpdate
    package_path: str
    package_archive: bytes
    def __init__(self, update: _Optional[_Union[_consensus_pb2.ModelUpdate, _Mapping]] = ..., package_path: _Optional[str] = ..., package_archive: _Optional[bytes] = ...) -> None: ...

class ModelUpdateReply(_message.Message):
    __slots__ = ("status", "error", "version", "weights_digest")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    status: str
    error: str
    version: int
    weights_digest: bytes
    def __init__(self, status: _Optional[str] = ..., error: _Optional[str] = ..., version: _Optional[int] = ..., weights_digest: _Optional[bytes] = ...) -> None: ...

class EvidenceRequest(_message.Message):
    __slots__ = ("after_id", "limit")
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    after_id: int
    limit: int
    def __init__(self, after_id: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class EvidenceItem(_message.Message):
    __slots__ = ("id", "evidence", "summary")
    ID_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    id: int
    evidence: bytes
    summary: str
    def __init__(self, id: _Optional[int] = ..., evidence: _Optional[bytes] = ..., summary: _Optional[str] = ...) -> None: ...

class EvidenceReply(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[EvidenceItem]
    def __init__(self, items: _Optional[_Iterable[_Union[EvidenceItem, _Mapping]]] = ...) -> None: ...

class ConfigChainRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ConfigChainReply(_message.Message):
    __slots__ = ("links",)
    LINKS_FIELD_NUMBER: _ClassVar[int]
    links: _containers.RepeatedCompositeFieldContainer[_consensus_pb2.ConfigLinkRecord]
    def __init__(self, links: _Optional[_Iterable[_Union[_consensus_pb2.ConfigLinkRecord, _Mapping]]] = ...) -> None: ...

class ControlRequest(_message.Message):
    __slots__ = ("op",)
    OP_FIELD_NUMBER: _ClassVar[int]
    op: _consensus_pb2.ControlOp
    def __init__(self, op: _Optional[_Union[_consensus_pb2.ControlOp, _Mapping]] = ...) -> None: ...

class ControlReply(_message.Message):
    __slots__ = ("status", "epoch")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    status: str
    epoch: int
    def __init__(self, status: _Optional[str] = ..., epoch: _Optional[int] = ...) -> None: ...

class LedgerRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LedgerReply(_message.Message):
    __slots__ = ("summary", "executed_hash", "proof")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    EXECUTED_HASH_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    summary: _consensus_pb2.StateSnapshot
    executed_hash: bytes
    proof: _containers.RepeatedCompositeFieldContainer[_consensus_pb2.Checkpoint]
    def __init__(self, summary: _Optional[_Union[_consensus_pb2.StateSnapshot, _Mapping]] = ..., executed_hash: _Optional[bytes] = ..., proof: _Optional[_Iterable[_Union[_consensus_pb2.Checkpoint, _Mapping]]] = ...) -> None: ...
