"""Request files: the JSON a client keeps to check that a certificate is about its request."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certs.errors import DecodeError
from certs.request import request_from_json, request_to_json
from tests.certs.helpers import make_request


def test_round_trip_keeps_the_digest() -> None:
    request = make_request("digits", 3, [("cat", "pet"), ("dog", "pet")])
    data = json.loads(json.dumps(request_to_json(request)))
    loaded = request_from_json(data)
    assert loaded == request and loaded.digest == request.digest


def test_a_digest_field_must_match() -> None:
    data = request_to_json(make_request("digits", 3))
    data["request_id"] = "req-4"
    with pytest.raises(DecodeError, match="digest"):
        request_from_json(data)
    del data["digest"]
    assert request_from_json(data).request_id == "req-4"


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": "AAAA"}]}, "expected 8"),
        ({"inputs": [{"name": "x", "datatype": "FP99", "shape": [1], "data": "AAAAAA=="}]}, "unknown datatype"),
        ({"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1], "data": "!!"}]}, "not base64"),
        ({"inputs": [{"name": "x", "datatype": "UINT8", "shape": [-1], "data": ""}]}, "non-negative"),
        ({"label_mapping": [["cat", "pet"]]}, "label_mapping"),
        ({"client_id": 7}, "expected a string"),
        ({"colour": "blue"}, "unknown fields"),
    ],
)
def test_malformed_requests_are_refused(change: dict[str, Any], reason: str) -> None:
    data = request_to_json(make_request("digits", 1))
    del data["digest"]
    data.update(change)
    with pytest.raises(DecodeError, match=reason):
        request_from_json(data)


def test_base64_data_is_the_exact_tensor_bytes() -> None:
    request = make_request("digits", 2)
    data = request_to_json(request)
    assert base64.b64decode(data["inputs"][0]["data"]) == request.inputs[0].data


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=12,
)


@settings(max_examples=100, deadline=None)
@given(json_values)
def test_random_json_raises_only_decode_error(value: Any) -> None:
    try:
        request_from_json(value)
    except DecodeError:
        pass


@settings(max_examples=100, deadline=None)
@given(key=st.sampled_from(["group_id", "client_id", "request_id", "inputs", "label_mapping"]), value=json_values)
def test_random_field_values_raise_only_decode_error(key: str, value: Any) -> None:
    data = request_to_json(make_request("digits", 1))
    data[key] = value
    try:
        request_from_json(data)
    except DecodeError:
        pass
