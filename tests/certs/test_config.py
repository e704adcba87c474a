"""Group configs: the digest clients pin, and strict loading."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certs.config import GroupConfig, load_group_config, save_group_config
from certs.errors import CertificateError, ConfigError
from certs.policy import AgreementPolicy, PolicyKind
from tests.certs.helpers import make_group


@pytest.mark.parametrize("f", [1, 2, 3])
def test_quorums_are_2f_plus_1_of_3f_plus_1(f: int) -> None:
    config = make_group(f).config
    assert (config.n, config.quorum_size) == (3 * f + 1, 2 * f + 1)


def test_json_round_trip_keeps_the_digest(tmp_path: Path) -> None:
    config = make_group(2, policy=AgreementPolicy(PolicyKind.TRIMMED_MEAN)).config
    path = save_group_config(config, tmp_path / "group.json")
    loaded = load_group_config(path)
    assert loaded == config and loaded.digest == config.digest


@pytest.mark.parametrize(
    "change",
    [{"epoch": 2}, {"price_per_request": 1}, {"f": 1, "group_id": "x"}, {"policy": AgreementPolicy(min_support=3)}],
)
def test_the_digest_covers_every_field(change: dict[str, Any]) -> None:
    config = make_group(1).config
    assert config.with_changes(**change).digest != config.digest


def test_a_config_whose_digest_does_not_match_is_refused() -> None:
    data = make_group(1).config.to_json()
    data["price_per_request"] = 10
    with pytest.raises(ConfigError, match="digest does not match"):
        GroupConfig.from_json(data)


def test_inconsistent_configs_are_refused() -> None:
    config = make_group(1).config
    with pytest.raises(ConfigError, match="f must be"):
        config.with_changes(f=2)
    with pytest.raises(ConfigError, match="at least 4 replicas"):
        config.with_changes(members=config.members[:3])
    with pytest.raises(ConfigError, match="ascending"):
        config.with_changes(members=tuple(reversed(config.members)))


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_raise_only_config_errors(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "group.json"
        path.write_bytes(data)
        try:
            load_group_config(path)
        except CertificateError:
            pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(value, dict):
        found += [p for k, v in value.items() for p in _paths(v, path + (k,))]
    elif isinstance(value, list):
        found += [p for i, v in enumerate(value) for p in _paths(v, path + (i,))]
    return found


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_random_values_anywhere_in_a_config_raise_only_config_errors(data: st.DataObject) -> None:
    document = make_group(1).config.to_json()
    del document["digest"]
    path = data.draw(st.sampled_from(_paths(document)[1:]))
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = data.draw(json_values)
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "group.json"
        file.write_text(json.dumps(document))
        try:
            load_group_config(file)
        except CertificateError:
            pass


def test_deeply_nested_json_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError):
        load_group_config(path)
