"""Inference requests and their digests.

A request is identified by (client_id, request_id) for exactly-once processing and by its digest
for everything signed: votes, decision leaves and certificates all name the digest, so a client
holding its request can check that a certificate is about exactly that request.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from certs.encoding import Domain, digest

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
