"""The registry: groups from a directory of config files, chains of configs, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from certs.config import save_group_config
from marketplace.registry import (
    GroupEntry,
    Registry,
    RegistryError,
    UnknownGroupError,
    entry_from_json,
    register_group,
)
from tests.certs.helpers import make_group


def test_a_directory_of_group_configs_is_the_offer(tmp_path: Path) -> None:
    digits = make_group(1, group_id="digits").config
    animals = make_group(1, group_id="animals", salt="animals").config
    save_group_config(digits, tmp_path / "digits.json")
    register_group(tmp_path, GroupEntry.of(animals, {2: "10.0.0.2:7000"}))
    (tmp_path / "notes.txt").write_text("not a group")
    registry = Registry.from_directory(tmp_path)
    assert registry.group_ids == ["animals", "digits"]
    assert registry.get("digits").config == digits
    assert registry.get("digits").price_per_request == digits.price_per_request
    assert registry.get("animals").addresses[2] == "10.0.0.2:7000"
    assert registry.get("animals").addresses[0] == animals.member(0).address  # type: ignore[union-attr]
    with pytest.raises(UnknownGroupError, match="unknown group 'cats'"):
        registry.get("cats")


def test_a_missing_directory_offers_nothing(tmp_path: Path) -> None:
    assert len(Registry.from_directory(tmp_path / "nowhere")) == 0


def test_a_chain_of_configs_links_every_epoch_to_the_one_before(tmp_path: Path) -> None:
    genesis = make_group(1, epoch=0).config
    next_epoch = genesis.with_changes(epoch=1, previous_digest=genesis.digest)
    entry = entry_from_json({"configs": [genesis.to_json(), next_epoch.to_json()]})
    assert entry.config == next_epoch
    assert entry.config_for_epoch(0) == genesis
    with pytest.raises(RegistryError, match="does not name epoch 0's digest"):
        GroupEntry((genesis, genesis.with_changes(epoch=1)))
    with pytest.raises(RegistryError, match="consecutive"):
        GroupEntry((genesis, next_epoch.with_changes(epoch=2)))
    with pytest.raises(RegistryError, match="start at genesis"):
        GroupEntry((next_epoch,))
    with pytest.raises(RegistryError, match="chain of configs"):
        GroupEntry.of(next_epoch)


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[1, 2]",
        json.dumps({"configs": "nope"}),
        json.dumps({"configs": [1]}),
        json.dumps({"group_id": "x"}),
        "[" * 100_000,
    ],
)
def test_a_malformed_file_is_a_registry_error_naming_the_file(tmp_path: Path, content: str) -> None:
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(RegistryError, match="bad.json"):
        Registry.from_directory(tmp_path)


def test_one_group_id_with_two_different_configs_is_refused(tmp_path: Path) -> None:
    save_group_config(make_group(1).config, tmp_path / "a.json")
    save_group_config(make_group(1, salt="other").config, tmp_path / "b.json")
    with pytest.raises(RegistryError, match="registered twice"):
        Registry.from_directory(tmp_path)


def test_addresses_may_only_name_members() -> None:
    config = make_group(1).config
    with pytest.raises(RegistryError, match="not members"):
        GroupEntry.of(config, {9: "127.0.0.1:1"})
