from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelOutput(_message.Message):
    __slots__ = ("classes", "probabilities")
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    classes: _containers.RepeatedScalarFieldContainer[int]
    probabilities: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, classes: _Optional[_Iterable[int]] = ..., probabilities: _Optional[_Iterable[int]] = ...) -> None: ...

class Vote(_message.Message):
    __slots__ = ("replica_id", "model_version", "output")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    replica_id: int
    model_version: int
    output: ModelOutput
    def __init__(self, replica_id: _Optional[int] = ..., model_version: _Optional[int] = ..., output: _Optional[_Union[ModelOutput, _Mapping]] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("label", "probabilities", "support")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    SUPPORT_FIELD_NUMBER: _ClassVar[int]
    label: int
    probabilities: ModelOutput
    support: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, label: _Optional[int] = ..., probabilities: _Optional[_Union[ModelOutput, _Mapping]] = ..., support: _Optional[_Iterable[int]] = ...) -> None: ...

class Leaf(_message.Message):
    __slots__ = ("request_digest", "client_id", "request_id", "label_space", "policy", "votes", "decision")
    REQUEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_SPACE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    VOTES_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    request_digest: bytes
    client_id: str
    request_id: str
    label_space: _containers.RepeatedScalarFieldContainer[str]
    policy: str
    votes: _containers.RepeatedCompositeFieldContainer[Vote]
    decision: Decision
    def __init__(self, request_digest: _Optional[bytes] = ..., client_id: _Optional[str] = ..., request_id: _Optional[str] = ..., label_space: _Optional[_Iterable[str]] = ..., policy: _Optional[str] = ..., votes: _Optional[_Iterable[_Union[Vote, _Mapping]]] = ..., decision: _Optional[_Union[Decision, _Mapping]] = ...) -> None: ...

class BatchHeader(_message.Message):
    __slots__ = ("group_id", "epoch", "config_digest", "view", "seq", "decisions_root", "ops_digest", "model_versions_digest", "leaf_count")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    CONFIG_DIGEST_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_ROOT_FIELD_NUMBER: _ClassVar[int]
    OPS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSIONS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    LEAF_COUNT_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    epoch: int
    config_digest: bytes
    view: int
    seq: int
    decisions_root: bytes
    ops_digest: bytes
    model_versions_digest: bytes
    leaf_count: int
    def __init__(self, group_id: _Optional[str] = ..., epoch: _Optional[int] = ..., config_digest: _Optional[bytes] = ..., view: _Optional[int] = ..., seq: _Optional[int] = ..., decisions_root: _Optional[bytes] = ..., ops_digest: _Optional[bytes] = ..., model_versions_digest: _Optional[bytes] = ..., leaf_count: _Optional[int] = ...) -> None: ...

class VoteEntry(_message.Message):
    __slots__ = ("client_id", "request_id", "request_digest", "label_space", "output")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    LABEL_SPACE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    request_id: str
    request_digest: bytes
    label_space: _containers.RepeatedScalarFieldContainer[str]
    output: ModelOutput
    def __init__(self, client_id: _Optional[str] = ..., request_id: _Optional[str] = ..., request_digest: _Optional[bytes] = ..., label_space: _Optional[_Iterable[str]] = ..., output: _Optional[_Union[ModelOutput, _Mapping]] = ...) -> None: ...

class TensorData(_message.Message):
    __slots__ = ("name", "datatype", "shape", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class LabelMapping(_message.Message):
    __slots__ = ("label", "decision")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    label: str
    decision: str
    def __init__(self, label: _Optional[str] = ..., decision: _Optional[str] = ...) -> None: ...

class InferenceRequest(_message.Message):
    __slots__ = ("group_id", "client_id", "request_id", "inputs", "label_mapping")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    LABEL_MAPPING_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    client_id: str
    request_id: str
    inputs: _containers.RepeatedCompositeFieldContainer[TensorData]
    label_mapping: _containers.RepeatedCompositeFieldContainer[LabelMapping]
    def __init__(self, group_id: _Optional[str] = ..., client_id: _Optional[str] = ..., request_id: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[TensorData, _Mapping]]] = ..., label_mapping: _Optional[_Iterable[_Union[LabelMapping, _Mapping]]] = ...) -> None: ...
