from protos import common_pb2 as _common_pb2
from protos import replica_api_pb2 as _replica_api_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InferStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INFER_STATUS_UNSPECIFIED: _ClassVar[InferStatus]
    INFER_CERTIFIED: _ClassVar[InferStatus]
    INFER_REJECTED: _ClassVar[InferStatus]
    INFER_UNAVAILABLE: _ClassVar[InferStatus]
    INFER_TIMEOUT: _ClassVar[InferStatus]
    INFER_OVERLOADED: _ClassVar[InferStatus]
INFER_STATUS_UNSPECIFIED: InferStatus
INFER_CERTIFIED: InferStatus
INFER_REJECTED: InferStatus
INFER_UNAVAILABLE: InferStatus
INFER_TIMEOUT: InferStatus
INFER_OVERLOADED: InferStatus

class InferRequest(_message.Message):
    __slots__ = ("request", "timeout_ms")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    request: _common_pb2.InferenceRequest
    timeout_ms: int
    def __init__(self, request: _Optional[_Union[_common_pb2.InferenceRequest, _Mapping]] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class InferReply(_message.Message):
    __slots__ = ("group_id", "client_id", "request_id", "status", "error", "error_code", "certificate", "epoch", "seq", "replica_id", "invalid_certificates", "retry_after_ms")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    INVALID_CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    client_id: str
    request_id: str
    status: InferStatus
    error: str
    error_code: int
    certificate: bytes
    epoch: int
    seq: int
    replica_id: int
    invalid_certificates: int
    retry_after_ms: int
    def __init__(self, group_id: _Optional[str] = ..., client_id: _Optional[str] = ..., request_id: _Optional[str] = ..., status: _Optional[_Union[InferStatus, str]] = ..., error: _Optional[str] = ..., error_code: _Optional[int] = ..., certificate: _Optional[bytes] = ..., epoch: _Optional[int] = ..., seq: _Optional[int] = ..., replica_id: _Optional[int] = ..., invalid_certificates: _Optional[int] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class InferBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[InferRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[InferRequest, _Mapping]]] = ...) -> None: ...

class InferBatchReply(_message.Message):
    __slots__ = ("replies",)
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    replies: _containers.RepeatedCompositeFieldContainer[InferReply]
    def __init__(self, replies: _Optional[_Iterable[_Union[InferReply, _Mapping]]] = ...) -> None: ...

class CertificateRequest(_message.Message):
    __slots__ = ("group_id", "client_id", "request_id")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    client_id: str
    request_id: str
    def __init__(self, group_id: _Optional[str] = ..., client_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ListGroupsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GroupSummary(_message.Message):
    __slots__ = ("group_id", "epoch", "f", "n", "config_digest", "price_per_request", "input_name", "input_shape", "input_datatype", "class_labels", "policy")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    F_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    CONFIG_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PRICE_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    INPUT_NAME_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    INPUT_DATATYPE_FIELD_NUMBER: _ClassVar[int]
    CLASS_LABELS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    epoch: int
    f: int
    n: int
    config_digest: bytes
    price_per_request: int
    input_name: str
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    input_datatype: str
    class_labels: _containers.RepeatedScalarFieldContainer[str]
    policy: str
    def __init__(self, group_id: _Optional[str] = ..., epoch: _Optional[int] = ..., f: _Optional[int] = ..., n: _Optional[int] = ..., config_digest: _Optional[bytes] = ..., price_per_request: _Optional[int] = ..., input_name: _Optional[str] = ..., input_shape: _Optional[_Iterable[int]] = ..., input_datatype: _Optional[str] = ..., class_labels: _Optional[_Iterable[str]] = ..., policy: _Optional[str] = ...) -> None: ...

class ListGroupsReply(_message.Message):
    __slots__ = ("groups",)
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[GroupSummary]
    def __init__(self, groups: _Optional[_Iterable[_Union[GroupSummary, _Mapping]]] = ...) -> None: ...

class GroupRequest(_message.Message):
    __slots__ = ("group_id",)
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    def __init__(self, group_id: _Optional[str] = ...) -> None: ...

class GroupReply(_message.Message):
    __slots__ = ("summary", "config_json", "config_chain_json", "addresses")
    class AddressesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: str
        def __init__(self, key: _Optional[int] = ..., value: _Optional[str] = ...) -> None: ...
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    CONFIG_CHAIN_JSON_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    summary: GroupSummary
    config_json: str
    config_chain_json: _containers.RepeatedScalarFieldContainer[str]
    addresses: _containers.ScalarMap[int, str]
    def __init__(self, summary: _Optional[_Union[GroupSummary, _Mapping]] = ..., config_json: _Optional[str] = ..., config_chain_json: _Optional[_Iterable[str]] = ..., addresses: _Optional[_Mapping[int, str]] = ...) -> None: ...

class ReplicaHealth(_message.Message):
    __slots__ = ("replica_id", "address", "reachable", "error", "status", "latency_us")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_US_FIELD_NUMBER: _ClassVar[int]
    replica_id: int
    address: str
    reachable: bool
    error: str
    status: _replica_api_pb2.StatusReply
    latency_us: int
    def __init__(self, replica_id: _Optional[int] = ..., address: _Optional[str] = ..., reachable: _Optional[bool] = ..., error: _Optional[str] = ..., status: _Optional[_Union[_replica_api_pb2.StatusReply, _Mapping]] = ..., latency_us: _Optional[int] = ...) -> None: ...

class GroupStatusReply(_message.Message):
    __slots__ = ("group_id", "epoch", "quorum_size", "reachable", "can_certify", "replicas")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    QUORUM_SIZE_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    CAN_CERTIFY_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    epoch: int
    quorum_size: int
    reachable: int
    can_certify: bool
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaHealth]
    def __init__(self, group_id: _Optional[str] = ..., epoch: _Optional[int] = ..., quorum_size: _Optional[int] = ..., reachable: _Optional[int] = ..., can_certify: _Optional[bool] = ..., replicas: _Optional[_Iterable[_Union[ReplicaHealth, _Mapping]]] = ...) -> None: ...
