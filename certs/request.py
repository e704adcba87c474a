"""Inference requests and their digests.

A request is identified by (client_id, request_id) for exactly-once processing and by its digest
for everything signed: votes, decision leaves and certificates all name the digest, so a client
holding its request can check that a certificate is about exactly that request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from typing import Any

from certs.encoding import Domain, digest
from certs.errors import DecodeError

# KServe v2 datatypes we accept, with their item size in bytes.
DATATYPE_SIZES: dict[str, int] = {
    "BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "BF16": 2,
    "UINT32": 4, "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8,
}


@dataclass(frozen=True, slots=True)
class TensorData:
    """One named input tensor: KServe datatype, shape without the batch dimension, raw bytes."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: bytes

    def expected_size_bytes(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count * DATATYPE_SIZES[self.datatype]


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    group_id: str
    client_id: str
    request_id: str
    inputs: tuple[TensorData, ...]
    # application decision mapping (label -> decision name), sorted by label; () for none
    label_mapping: tuple[tuple[str, str], ...] = ()
    digest: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", request_digest(self))

    @property
    def key(self) -> tuple[str, str]:
        return (self.client_id, self.request_id)

    @property
    def size_bytes(self) -> int:
        return sum(len(t.data) for t in self.inputs)


def request_digest(request: InferenceRequest) -> bytes:
    tensors = tuple(
        (t.name, t.datatype, tuple(t.shape), hashlib.sha256(t.data).digest()) for t in request.inputs
    )
    return digest(
        Domain.REQUEST,
        request.group_id,
        request.client_id,
        request.request_id,
        tensors,
        tuple(request.label_mapping),
    )


# -- JSON (request files for `quorumserve verify --request`) -------------------------------

_REQUEST_KEYS = frozenset({"group_id", "client_id", "request_id", "inputs", "label_mapping", "digest"})
_TENSOR_KEYS = frozenset({"name", "datatype", "shape", "data"})


def request_to_json(request: InferenceRequest) -> dict[str, Any]:
    """The request as JSON: tensor bytes in base64, the mapping as an object, the digest in hex."""
    return {
        "group_id": request.group_id,
        "client_id": request.client_id,
        "request_id": request.request_id,
        "inputs": [
            {
                "name": t.name,
                "datatype": t.datatype,
                "shape": list(t.shape),
                "data": base64.b64encode(t.data).decode("ascii"),
            }
            for t in request.inputs
        ],
        "label_mapping": dict(request.label_mapping),
        "digest": request.digest.hex(),
    }


def _json_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise DecodeError(f"{where}: expected a string")
    try:
        value.encode("utf-8")  # the canonical encoding needs valid Unicode
    except UnicodeEncodeError as exc:
        raise DecodeError(f"{where}: not valid Unicode text") from exc
    return value


def _json_fields(value: Any, where: str, allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DecodeError(f"{where}: expected a JSON object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise DecodeError(f"{where}: unknown fields {unknown}")
    return value


def _tensor_from_json(value: Any, where: str) -> TensorData:
    t = _json_fields(value, where, _TENSOR_KEYS)
    try:
        name, datatype, shape, data = t["name"], t["datatype"], t["shape"], t["data"]
    except KeyError as exc:
        raise DecodeError(f"{where}: missing field {exc}") from exc
    if _json_str(datatype, f"{where}.datatype") not in DATATYPE_SIZES:
        raise DecodeError(f"{where}: unknown datatype {datatype!r}")
    if not isinstance(shape, list) or len(shape) > 16:
        raise DecodeError(f"{where}.shape: expected a list of at most 16 dimensions")
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int) or not 0 <= dim < 2**63:
            raise DecodeError(f"{where}.shape: dimensions must be non-negative integers")
    try:
        raw = base64.b64decode(_json_str(data, f"{where}.data"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DecodeError(f"{where}.data: not base64 ({exc})") from exc
    tensor = TensorData(_json_str(name, f"{where}.name"), datatype, tuple(shape), raw)
    if tensor.expected_size_bytes() != len(raw):
        raise DecodeError(
            f"{where}: {len(raw)} bytes of data for shape {list(tensor.shape)} of {datatype} "
            f"(expected {tensor.expected_size_bytes()})"
        )
    return tensor


def request_from_json(data: Any) -> InferenceRequest:
    """Read a request written by request_to_json; raises DecodeError on anything malformed.

    A "digest" field, when present, must match the request (so a file cannot claim one request
    and hold another).
    """
    d = _json_fields(data, "request", _REQUEST_KEYS)
    try:
        group_id, client_id, request_id, inputs = d["group_id"], d["client_id"], d["request_id"], d["inputs"]
    except KeyError as exc:
        raise DecodeError(f"request: missing field {exc}") from exc
    if not isinstance(inputs, list) or len(inputs) > 64:
        raise DecodeError("request.inputs: expected a list of at most 64 tensors")
    mapping = d.get("label_mapping", {})
    if not isinstance(mapping, dict):
        raise DecodeError("request.label_mapping: expected an object {label: decision}")
    request = InferenceRequest(
        group_id=_json_str(group_id, "request.group_id"),
        client_id=_json_str(client_id, "request.client_id"),
        request_id=_json_str(request_id, "request.request_id"),
        inputs=tuple(_tensor_from_json(t, f"request.inputs[{i}]") for i, t in enumerate(inputs)),
        label_mapping=tuple(
            sorted((_json_str(k, "request.label_mapping"), _json_str(v, "request.label_mapping")) for k, v in mapping.items())
        ),
    )
    if "digest" in d and d["digest"] != request.digest.hex():
        raise DecodeError("request: the digest field does not match the request's contents")
    return request
