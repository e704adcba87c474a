"""Bad input to a real gateway gets a precise status code naming what is wrong, and nothing
(garbage included) takes the gateway down."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc

from certs.config import GroupConfig
from certs.wire import request_to_proto
from marketplace.commands import GatewayProcess
from marketplace.sdk import build_request
from protos import marketplace_pb2 as mpb
from tests.marketplace.kserve import pixels_input

pytestmark = pytest.mark.processes


@pytest.fixture(scope="module")
def channel(gateway: GatewayProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gateway.address, options=[("grpc.max_send_message_length", 64 << 20)]) as c:
        yield c


def refused(call: Any, *args: Any, **kwargs: Any) -> tuple[str, str]:
    with pytest.raises(triton.InferenceServerException) as error:
        call(*args, **kwargs)
    return error.value.status(), error.value.message()


def raw_infer(channel: grpc.Channel, request: Any) -> grpc.RpcError:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(request, timeout=30)
    return error.value


def test_an_unknown_group_is_not_found(client: Any) -> None:
    status, message = refused(client.infer, "no-such-group", [pixels_input(np.zeros((1, 64), np.float32))])
    assert status == "StatusCode.NOT_FOUND" and "no-such-group" in message
    assert refused(client.get_model_metadata, "no-such-group")[0] == "StatusCode.NOT_FOUND"
    assert refused(client.get_model_config, "no-such-group")[0] == "StatusCode.NOT_FOUND"
    assert refused(client.get_model_metadata, "digits", model_version="7")[0] == "StatusCode.NOT_FOUND"


@pytest.mark.parametrize(
    ("rows", "name", "datatype", "words"),
    [
        (np.zeros((2, 64), np.float32), "image", "FP32", "unknown input 'image'"),
        (np.zeros((2, 8, 8), np.float32), "pixels", "FP32", "shape [2, 8, 8]"),
        (np.zeros((64,), np.float32), "pixels", "FP32", "shape [64]"),
        (np.zeros((2, 63), np.float32), "pixels", "FP32", "shape [2, 63]"),
        (np.zeros((0, 64), np.float32), "pixels", "FP32", "B >= 1"),
        (np.zeros((2, 64), np.float64), "pixels", "FP64", "datatype FP64"),
        (np.zeros((2, 64), np.int32), "pixels", "INT32", "datatype INT32"),
    ],
)
def test_a_wrong_input_is_an_invalid_argument_naming_it(
    client: Any, config: GroupConfig, rows: np.ndarray, name: str, datatype: str, words: str
) -> None:
    status, message = refused(client.infer, config.group_id, [pixels_input(rows, name=name, datatype=datatype)])
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert words in message
    assert name in message


def test_data_that_does_not_fill_the_shape_is_an_invalid_argument(channel: grpc.Channel, config: GroupConfig) -> None:
    request = service_pb2.ModelInferRequest(model_name=config.group_id)
    request.inputs.add(name="pixels", datatype="FP32", shape=[2, 64])
    request.raw_input_contents.append(bytes(2 * 64 * 4 - 4))
    error = raw_infer(channel, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "'pixels'" in (error.details() or "")


def test_too_many_rows_or_bytes_are_resource_exhausted(client: Any, channel: grpc.Channel, config: GroupConfig) -> None:
    rows_max = client.get_model_config(config.group_id).config.max_batch_size
    status, message = refused(client.infer, config.group_id, [pixels_input(np.zeros((rows_max + 1, 64), np.float32))])
    assert status == "StatusCode.RESOURCE_EXHAUSTED" and "'pixels'" in message
    huge = service_pb2.ModelInferRequest(model_name=config.group_id)
    huge.inputs.add(name="pixels", datatype="FP32", shape=[32768, 64])
    huge.raw_input_contents.append(bytes(32768 * 64 * 4))  # 8 MiB, over the gateway's receive limit
    assert raw_infer(channel, huge).code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_bad_parameters_and_outputs_are_invalid_arguments(client: Any, config: GroupConfig) -> None:
    rows = [pixels_input(np.zeros((1, 64), np.float32))]
    status, message = refused(client.infer, config.group_id, rows, parameters={"label_mapping": "{not json"})
    assert status == "StatusCode.INVALID_ARGUMENT" and "label_mapping" in message
    status, message = refused(client.infer, config.group_id, rows, parameters={"label_mapping": json.dumps({"cat": "pet"})})
    assert status == "StatusCode.INVALID_ARGUMENT" and "cat" in message
    status, message = refused(client.infer, config.group_id, rows, parameters={"client_id": 7})
    assert status == "StatusCode.INVALID_ARGUMENT" and "client_id" in message
    status, message = refused(client.infer, config.group_id, rows, outputs=[triton.InferRequestedOutput("logits")])
    assert status == "StatusCode.INVALID_ARGUMENT" and "logits" in message


def test_garbage_never_takes_the_gateway_down(gateway: GatewayProcess, channel: grpc.Channel, client: Any) -> None:
    for method in ("ModelInfer", "ModelMetadata", "ModelConfig", "ModelReady"):
        call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
        with pytest.raises(grpc.RpcError) as error:
            call(b"\xff\xff\xff\xff\x0f garbage", timeout=10)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
    for method in ("InferBatch", "GetGroup", "GroupStatus", "GetCertificate"):
        call = channel.unary_unary(f"/quorumserve.v1.Gateway/{method}")
        with pytest.raises(grpc.RpcError) as error:
            call(b"\xff\xff\xff\xff\x0f garbage", timeout=10)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
    host, port = gateway.address.rsplit(":", 1)
    for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)) * 64, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00" * 100):
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            raw.sendall(junk)
            raw.settimeout(2)
            try:
                raw.recv(1024)
            except OSError:
                pass
    assert gateway.running
    assert client.is_server_live() and client.is_model_ready("digits")


def test_a_native_batch_answers_each_row_on_its_own(channel: grpc.Channel, config: GroupConfig, digits: tuple[np.ndarray, np.ndarray]) -> None:
    features, _ = digits
    good = build_request(config, features[0])
    bad = build_request(config, features[1])
    message = mpb.InferBatchRequest(requests=[mpb.InferRequest(request=request_to_proto(good)), mpb.InferRequest(request=request_to_proto(bad))])
    message.requests[1].request.inputs[0].name = "image"
    message.requests[1].request.inputs[0].datatype = "FP99"
    call = channel.unary_unary(
        "/quorumserve.v1.Gateway/InferBatch", request_serializer=mpb.InferBatchRequest.SerializeToString, response_deserializer=mpb.InferBatchReply.FromString
    )
    reply = call(message, timeout=60)
    assert [r.status for r in reply.replies] == [mpb.INFER_CERTIFIED, mpb.INFER_REJECTED]
    assert "FP99" in reply.replies[1].error and reply.replies[1].error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
