"""The stock tritonclient, sync and asyncio, against a gateway in front of a real group.

Every answer is checked the way a careful client would: each row's certificate verifies against
the pinned config and the request the client itself sent, and the certified labels are the
digits' true labels for almost every held-out image, although replica 3 lies on every vote.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import queue
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio

from certs.certificate import NO_AGREEMENT_NAME, decode_certificate, encode_certificate
from certs.config import GroupConfig
from certs.errors import CertificateError
from certs.verify import verify
from marketplace.commands import GatewayProcess, start_gateway_process
from marketplace.local import LocalGroup
from tests.marketplace.conftest import LIAR
from tests.marketplace.kserve import certified_rows, pixels_input, verify_row

pytestmark = pytest.mark.processes


def test_the_group_is_a_ready_model_with_the_task_s_input_and_outputs(client: Any, config: GroupConfig) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(config.group_id)
    assert not client.is_model_ready("no-such-group")
    metadata = client.get_model_metadata(config.group_id)
    assert metadata.versions == [str(config.epoch)]
    assert [(i.name, i.datatype, list(i.shape)) for i in metadata.inputs] == [("pixels", "FP32", [-1, 64])]
    assert [(o.name, o.datatype, list(o.shape)) for o in metadata.outputs] == [("label", "INT64", [-1]), ("probabilities", "FP32", [-1, 10])]
    model = client.get_model_config(config.group_id).config
    assert model.max_batch_size >= 64
    assert model.parameters["config_digest"].string_value == config.digest.hex()


def test_certified_labels_match_the_digits_and_every_certificate_verifies(
    client: Any, config: GroupConfig, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    features, labels = digits
    rows, truth = features[:96], labels[:96]
    certified = []
    for start in range(0, len(rows), 32):  # B = 32 rows per ModelInfer: 32 certified requests each
        batch = rows[start : start + 32]
        result = client.infer(config.group_id, [pixels_input(batch)], request_id=f"digits-{uuid.uuid4().hex}")
        parameters = result.get_response().parameters
        assert parameters["group_id"].string_param == config.group_id
        assert parameters["epoch"].int64_param == config.epoch
        assert parameters["rows"].int64_param == len(batch)
        certified += certified_rows(result, config, batch)
    assert len(certified) == len(rows)
    for row in certified:
        verified = verify_row(row, config)
        assert row.label == verified.label
        assert row.probabilities.shape == (10,)
        if verified.agreed:
            assert int(np.argmax(row.probabilities)) == row.label
        else:
            # an honest model that errs alongside the liar ties the vote 2-2: the group certifies
            # that it did not agree, and the outputs say so (label -1, no probabilities)
            assert row.label == -1 and not row.probabilities.any()
    accuracy = float(np.mean([row.label == t for row, t in zip(certified, truth)]))
    assert accuracy >= 0.9, accuracy


def test_a_lying_replica_is_outvoted(client: Any, config: GroupConfig, digits: tuple[np.ndarray, np.ndarray]) -> None:
    """Replica 3 shifts every answer to the next class; its signed votes are in the certificates
    but the certified decisions stay right."""
    features, labels = digits
    rows, truth = features[100:164], labels[100:164]
    liar_votes: list[tuple[int, int]] = []
    certified: list[Any] = []
    # The primary certifies as soon as it has a quorum plus a short wait, so on a loaded machine
    # one request's certificates may all carry only the three faster votes: ask a few times.
    for _ in range(5):
        result = client.infer(config.group_id, [pixels_input(rows)], request_id=f"liar-{uuid.uuid4().hex}")
        certified = certified_rows(result, config, rows)
        liar_votes += [
            (vote.output.label, row.certificate.leaf.decision.label)
            for row in certified
            for vote in row.certificate.leaf.votes
            if vote.replica_id == LIAR
        ]
        if len(liar_votes) >= 16:
            break
    assert liar_votes, "the liar's votes should reach some certificates"
    agreeing = sum(1 for vote, decision in liar_votes if vote == decision)
    assert agreeing <= len(liar_votes) // 5
    accuracy = float(np.mean([row.label == t for row, t in zip(certified, truth)]))
    assert accuracy >= 0.9, accuracy


def test_a_tampered_certificate_does_not_verify(client: Any, config: GroupConfig, digits: tuple[np.ndarray, np.ndarray]) -> None:
    features, _ = digits
    result = client.infer(config.group_id, [pixels_input(features[:1])])
    row = certified_rows(result, config, features[:1])[0]
    verify_row(row, config)
    leaf = row.certificate.leaf
    other = (leaf.decision.label + 1) % 10
    forged_leaf = dataclasses.replace(leaf, decision=dataclasses.replace(leaf.decision, label=other))
    forged = dataclasses.replace(row.certificate, leaf=forged_leaf)
    with pytest.raises(CertificateError):
        verify(decode_certificate(encode_certificate(forged)), config, row.request)
    flipped = bytearray(row.certificate_bytes)
    flipped[len(flipped) // 2] ^= 0x01
    with pytest.raises(CertificateError):
        verify(decode_certificate(bytes(flipped)), config, row.request)
    # a valid certificate is no proof for another request
    other_row = features[1:2]
    with pytest.raises(CertificateError, match="digest"):
        verify(row.certificate, config, dataclasses.replace(row.request, inputs=(dataclasses.replace(row.request.inputs[0], data=other_row.tobytes()),)))


def test_a_retry_with_the_same_ids_returns_the_same_certificates(
    client: Any, config: GroupConfig, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    features, _ = digits
    rows = features[200:204]
    request_id = f"retry-{uuid.uuid4().hex}"
    parameters = {"client_id": "retrying-client"}
    first = certified_rows(client.infer(config.group_id, [pixels_input(rows)], request_id=request_id, parameters=parameters), config, rows, client_id="retrying-client")
    again = certified_rows(client.infer(config.group_id, [pixels_input(rows)], request_id=request_id, parameters=parameters), config, rows, client_id="retrying-client")
    for a, b in zip(first, again):
        verify_row(b, config)
        # certified once: the same batch, the same leaf (any replica's copy carries it)
        assert (a.certificate.header, a.certificate.leaf, a.certificate.proof) == (b.certificate.header, b.certificate.leaf, b.certificate.proof)
    # the same ids for a different input is refused, not certified twice
    with pytest.raises(triton.InferenceServerException) as refused:
        client.infer(config.group_id, [pixels_input(features[300:304])], request_id=request_id, parameters=parameters)
    assert refused.value.status() == "StatusCode.ALREADY_EXISTS"


def test_application_decisions_through_the_label_mapping_parameter(
    client: Any, config: GroupConfig, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    features, labels = digits
    mapping = {str(d): ("even" if d % 2 == 0 else "odd") for d in range(10)}
    rows, truth = features[:32], labels[:32]
    result = client.infer(config.group_id, [pixels_input(rows)], parameters={"label_mapping": json.dumps(mapping)})
    certified = certified_rows(result, config, rows, mapping=tuple(sorted(mapping.items())))
    assert result.as_numpy("probabilities").shape == (32, 2)  # the decision space: ["even", "odd"]
    names = [result.get_response().parameters[f"label_name_{i}"].string_param for i in range(len(rows))]
    for row, name in zip(certified, names):
        verified = verify_row(row, config)
        # the liar's every vote has the wrong parity, so one honest model erring on parity ties it
        assert verified.label_name in ("even", "odd") if verified.agreed else name == NO_AGREEMENT_NAME
        assert name == (verified.label_name or NO_AGREEMENT_NAME)
    expected = ["even" if t % 2 == 0 else "odd" for t in truth]
    assert np.mean([n == e for n, e in zip(names, expected)]) >= 0.9


def test_only_the_requested_outputs_come_back(client: Any, config: GroupConfig, digits: tuple[np.ndarray, np.ndarray]) -> None:
    features, _ = digits
    result = client.infer(config.group_id, [pixels_input(features[:2])], outputs=[triton.InferRequestedOutput("label")])
    assert result.as_numpy("label").shape == (2,)
    assert result.as_numpy("probabilities") is None


def test_the_stock_streaming_api_certifies_each_request(client: Any, config: GroupConfig, digits: tuple[np.ndarray, np.ndarray]) -> None:
    features, labels = digits
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i in range(8):
            client.async_stream_infer(config.group_id, [pixels_input(features[i : i + 1])], request_id=f"stream-{uuid.uuid4().hex}-{i}")
        results = [answers.get(timeout=120) for _ in range(8)]
    finally:
        client.stop_stream()
    for result, error in results:
        assert error is None, error
        request_id = result.get_response().id
        index = int(request_id.rsplit("-", 1)[1])
        row = certified_rows(result, config, features[index : index + 1])[0]
        assert verify_row(row, config).label == row.label


async def test_the_asyncio_client_gets_verified_results(gateway: GatewayProcess, config: GroupConfig, digits: tuple[np.ndarray, np.ndarray]) -> None:
    features, labels = digits
    async with triton_aio.InferenceServerClient(gateway.address) as client:
        assert await client.is_model_ready(config.group_id)
        rows, truth = features[300:332], labels[300:332]
        result = await client.infer(config.group_id, [pixels_input(rows)], parameters={"client_id": "aio-client"})
        certified = certified_rows(result, config, rows, client_id="aio-client")
        for row in certified:
            verify_row(row, config)
        assert np.mean([row.label == t for row, t in zip(certified, truth)]) >= 0.9
        assert base64.b64decode(result.get_response().parameters["certificate_0"].string_param) == certified[0].certificate_bytes


def test_any_gateway_serves_the_group_and_returns_the_same_certificates(
    local_group: LocalGroup, client: Any, config: GroupConfig, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """Gateways keep no state: a retry through another gateway gets the first certificates."""
    features, _ = digits
    rows = features[40:44]
    request_id = f"two-gateways-{uuid.uuid4().hex}"
    first = certified_rows(client.infer(config.group_id, [pixels_input(rows)], request_id=request_id), config, rows)
    second = start_gateway_process([local_group.group_config_path], log_path=tmp_path / "second-gateway.log")
    try:
        with triton.InferenceServerClient(second.address) as other:
            again = certified_rows(other.infer(config.group_id, [pixels_input(rows)], request_id=request_id), config, rows)
    finally:
        second.stop()
    for a, b in zip(first, again):
        verify_row(b, config)
        assert (a.certificate.header, a.certificate.leaf) == (b.certificate.header, b.certificate.leaf)


def test_prometheus_metrics_count_certified_requests(gateway: GatewayProcess, client: Any, config: GroupConfig, digits: tuple[np.ndarray, np.ndarray]) -> None:
    features, _ = digits
    client.infer(config.group_id, [pixels_input(features[:3])])
    client.infer(config.group_id, [pixels_input(features[3:4])])  # one row: over the replicas' shared streams
    with urllib.request.urlopen(f"http://127.0.0.1:{gateway.metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line and not line.startswith("#")
    }
    assert samples[f'quorumserve_gateway_requests_total{{group="{config.group_id}",outcome="certified"}}'] >= 3
    assert samples['quorumserve_gateway_calls_total{code="OK",method="ModelInfer"}'] >= 2
    # the one-row call went to each of the four replicas in a stream message
    assert samples[f'quorumserve_gateway_stream_rows_per_message_count{{group="{config.group_id}"}}'] >= 4
