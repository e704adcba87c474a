"""What a KServe client needs to check a gateway's answer: the rows' requests and certificates."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as triton

from certs.certificate import Certificate, decode_certificate
from certs.config import GroupConfig
from certs.request import InferenceRequest, TensorData
from certs.verify import VerifiedCertificate, verify


@dataclass(frozen=True)
class CertifiedRow:
    request: InferenceRequest
    certificate: Certificate
    certificate_bytes: bytes
    label: int
    probabilities: np.ndarray


def pixels_input(rows: np.ndarray, name: str = "pixels", datatype: str = "FP32") -> triton.InferInput:
    tensor = triton.InferInput(name, list(rows.shape), datatype)
    tensor.set_data_from_numpy(rows)
    return tensor


def row_request(
    config: GroupConfig, client_id: str, request_id: str, row: np.ndarray, mapping: tuple[tuple[str, str], ...] = ()
) -> InferenceRequest:
    """The request the gateway certified for one row, rebuilt by the client from its own data."""
    task = config.task
    data = np.ascontiguousarray(row, dtype=np.float32).tobytes()
    return InferenceRequest(config.group_id, client_id, request_id, (TensorData(task.input_name, task.input_datatype, task.input_shape, data),), mapping)


def certified_rows(
    result: Any, config: GroupConfig, rows: np.ndarray, *, client_id: str = "anonymous", mapping: tuple[tuple[str, str], ...] = ()
) -> list[CertifiedRow]:
    """Each row's certificate from the response parameters, with the request the client sent."""
    response = result.get_response()
    parameters = response.parameters
    labels = result.as_numpy("label")
    probabilities = result.as_numpy("probabilities")
    out = []
    for i, row in enumerate(rows):
        request_id = parameters[f"request_id_{i}"].string_param
        assert request_id == f"{response.id}/{i}"
        data = base64.b64decode(parameters[f"certificate_{i}"].string_param)
        out.append(
            CertifiedRow(row_request(config, client_id, request_id, row, mapping), decode_certificate(data), data, int(labels[i]), probabilities[i])
        )
    return out


def verify_row(row: CertifiedRow, config: GroupConfig) -> VerifiedCertificate:
    return verify(row.certificate, config, row.request)
