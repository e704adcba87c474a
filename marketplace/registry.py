"""The groups on offer: group id -> chain of configs, replica addresses, price.

A registry is what a gateway serves and what `quorumserve groups` lists. It is loaded from a
directory of JSON files (or built in code), one group per file, in either form:

- a group config, exactly as `certs.config.save_group_config` writes it (a group at genesis);
- a registry entry: `{"configs": [genesis, ..., current], "addresses": {"0": "host:port", ...}}`,
  where `configs` is the chain of configs (each the JSON of one epoch), and `addresses`
  (optional) overrides where the gateway reaches some replicas (a replica's address in the
  config is the default).

The chain is checked for its links here (same group, consecutive epochs, each config naming the
digest of the one before it, genesis first). The quorum signatures of the old epoch on each new
config are checked where a chain is learned from the replicas (a gateway follows the group's
chain and `Registry.update`s the entry with the configs whose links verify); clients never trust
a registry anyway: they verify certificates against the config they pinned, and later configs
only through quorum-signed links.

The price per certified request is the current config's `price_per_request`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from certs.config import GENESIS_PREVIOUS_DIGEST, GroupConfig
from certs.errors import ConfigError

REGISTRY_ENV = "QUORUMSERVE_REGISTRY"
DEFAULT_REGISTRY_DIR = Path("~/.quorumserve/groups")
REGISTRY_FILE_MAX_BYTES = 16 * 1024 * 1024


class RegistryError(ValueError):
    """A registry file or entry is malformed or inconsistent."""


class UnknownGroupError(RegistryError, KeyError):
    """No group with this id is on offer."""

    def __init__(self, group_id: str) -> None:
        super().__init__(f"unknown group {group_id!r}")
        self.group_id = group_id

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def check_config_chain(chain: Sequence[GroupConfig]) -> None:
    """The configs form one chain from genesis: raise RegistryError naming the broken link."""
    if not chain:
        raise RegistryError("a group needs at least one config")
    genesis = chain[0]
    if genesis.previous_digest != GENESIS_PREVIOUS_DIGEST:
        raise RegistryError(
            f"group {genesis.group_id!r}: the first config (epoch {genesis.epoch}) names a previous config; "
            "the chain must start at genesis"
        )
    for previous, config in zip(chain, chain[1:]):
        if config.group_id != previous.group_id:
            raise RegistryError(f"config chain mixes groups {previous.group_id!r} and {config.group_id!r}")
        if config.epoch != previous.epoch + 1:
            raise RegistryError(
                f"group {config.group_id!r}: epoch {config.epoch} follows epoch {previous.epoch}; epochs must be consecutive"
            )
        if config.previous_digest != previous.digest:
            raise RegistryError(
                f"group {config.group_id!r}: epoch {config.epoch} does not name epoch {previous.epoch}'s digest"
            )


@dataclass(frozen=True)
class GroupEntry:
    """One group on offer."""

    chain: tuple[GroupConfig, ...]  # genesis first, current last
    address_overrides: Mapping[int, str] = field(default_factory=dict)
    source: Path | None = None  # the file it was loaded from

    def __post_init__(self) -> None:
        check_config_chain(self.chain)
        unknown = sorted(set(self.address_overrides) - set(self.config.replica_ids))
        if unknown:
            raise RegistryError(f"group {self.group_id!r}: addresses for replicas {unknown}, which are not members")

    @classmethod
    def of(cls, config: GroupConfig, addresses: Mapping[int, str] | None = None) -> GroupEntry:
        """A group at its first known epoch (no chain)."""
        return cls(_genesis_chain(config), dict(addresses or {}))

    @property
    def config(self) -> GroupConfig:
        return self.chain[-1]

    @property
    def group_id(self) -> str:
        return self.config.group_id

    @property
    def price_per_request(self) -> int:
        return self.config.price_per_request

    @property
    def addresses(self) -> dict[int, str]:
        """replica id -> where to reach it."""
        return {m.replica_id: self.address_overrides.get(m.replica_id, m.address) for m in self.config.members}

    def extended(self, chain: Sequence[GroupConfig]) -> GroupEntry:
        """This group with a longer chain (this entry's chain must be a prefix of it); address
        overrides of replicas that are no longer members are dropped."""
        if len(chain) < len(self.chain) or tuple(c.digest for c in chain[: len(self.chain)]) != tuple(c.digest for c in self.chain):
            raise RegistryError(f"group {self.group_id!r}: the new chain does not extend the registered one")
        members = set(chain[-1].replica_ids)
        overrides = {rid: a for rid, a in self.address_overrides.items() if rid in members}
        return GroupEntry(tuple(chain), overrides, self.source)

    def config_for_epoch(self, epoch: int) -> GroupConfig | None:
        for config in self.chain:
            if config.epoch == epoch:
                return config
        return None

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"configs": [c.to_json() for c in self.chain]}
        if self.address_overrides:
            entry["addresses"] = {str(k): v for k, v in sorted(self.address_overrides.items())}
        return entry


def _genesis_chain(config: GroupConfig) -> tuple[GroupConfig, ...]:
    if config.previous_digest != GENESIS_PREVIOUS_DIGEST:
        raise RegistryError(
            f"group {config.group_id!r} epoch {config.epoch} follows an earlier config: "
            "register it with its chain of configs from genesis"
        )
    return (config,)


def entry_from_json(data: Any, source: Path | None = None) -> GroupEntry:
    """A registry entry or a plain group config, as read from JSON."""
    where = str(source) if source is not None else "registry entry"
    if not isinstance(data, dict):
        raise RegistryError(f"{where}: expected a JSON object")
    try:
        if "configs" not in data:
            return GroupEntry(_genesis_chain(GroupConfig.from_json(data)), {}, source)
        unknown = sorted(set(data) - {"configs", "addresses"})
        if unknown:
            raise RegistryError(f"{where}: unknown fields {unknown}")
        configs = data["configs"]
        if not isinstance(configs, list):
            raise RegistryError(f"{where}: configs must be a list of group configs, genesis first")
        chain = tuple(GroupConfig.from_json(c) if isinstance(c, dict) else _not_object(where) for c in configs)
        raw_addresses = data.get("addresses", {})
        if not isinstance(raw_addresses, dict):
            raise RegistryError(f"{where}: addresses must map replica ids to host:port")
        addresses: dict[int, str] = {}
        for key, value in raw_addresses.items():
            if not (isinstance(key, str) and key.isdigit() and isinstance(value, str) and value):
                raise RegistryError(f"{where}: addresses must map replica ids to host:port, got {key!r}: {value!r}")
            addresses[int(key)] = value
        return GroupEntry(chain, addresses, source)
    except ConfigError as exc:
        raise RegistryError(f"{where}: {exc}") from exc
    except RegistryError as exc:
        if str(exc).startswith(where):
            raise
        raise RegistryError(f"{where}: {exc}") from exc


def _not_object(where: str) -> GroupConfig:
    raise RegistryError(f"{where}: each config of the chain must be a JSON object")


def load_entry(path: str | os.PathLike[str]) -> GroupEntry:
    source = Path(path)
    try:
        if source.stat().st_size > REGISTRY_FILE_MAX_BYTES:
            raise RegistryError(f"{source}: larger than {REGISTRY_FILE_MAX_BYTES} bytes")
        data = json.loads(source.read_text())
    except FileNotFoundError as exc:
        raise RegistryError(f"{source}: no such file") from exc
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise RegistryError(f"{source}: not valid JSON ({exc})") from exc
    return entry_from_json(data, source)


class Registry:
    """The groups on offer, by id."""

    def __init__(self, entries: Iterable[GroupEntry] = ()) -> None:
        self._entries: dict[str, GroupEntry] = {}
        for entry in entries:
            self.add(entry)

    @classmethod
    def from_directory(cls, directory: str | os.PathLike[str]) -> Registry:
        """Every `*.json` file of `directory` (sorted by name); a missing directory is empty."""
        root = Path(directory).expanduser()
        if not root.exists():
            return cls()
        if not root.is_dir():
            raise RegistryError(f"{root}: not a directory")
        return cls(load_entry(path) for path in sorted(root.glob("*.json")))

    @classmethod
    def from_configs(cls, paths: Iterable[str | os.PathLike[str]]) -> Registry:
        """Group config files (or registry entry files), one group each."""
        return cls(load_entry(path) for path in paths)

    def add(self, entry: GroupEntry) -> None:
        existing = self._entries.get(entry.group_id)
        if existing is not None and existing.config.digest != entry.config.digest:
            where = f" ({existing.source} and {entry.source})" if existing.source and entry.source else ""
            raise RegistryError(f"group {entry.group_id!r} is registered twice with different configs{where}")
        self._entries[entry.group_id] = entry

    def update(self, entry: GroupEntry) -> None:
        """Replace a group's entry with one whose chain extends it (a later epoch)."""
        existing = self._entries.get(entry.group_id)
        if existing is not None:
            prefix = entry.chain[: len(existing.chain)]
            if len(entry.chain) < len(existing.chain) or tuple(c.digest for c in prefix) != tuple(c.digest for c in existing.chain):
                raise RegistryError(f"group {entry.group_id!r}: the new chain does not extend the registered one")
        self._entries[entry.group_id] = entry

    def get(self, group_id: str) -> GroupEntry:
        entry = self._entries.get(group_id)
        if entry is None:
            raise UnknownGroupError(group_id)
        return entry

    def __contains__(self, group_id: object) -> bool:
        return group_id in self._entries

    def __iter__(self) -> Iterator[GroupEntry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.group_id))

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def group_ids(self) -> list[str]:
        return sorted(self._entries)


def default_registry_dir() -> Path:
    """$QUORUMSERVE_REGISTRY, else ~/.quorumserve/groups."""
    return Path(os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY_DIR).expanduser()


def register_group(directory: str | os.PathLike[str], entry: GroupEntry) -> Path:
    """Write `entry` into a registry directory as `<group_id>.json` (atomically)."""
    root = Path(directory).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{_file_name(entry.group_id)}.json"
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(entry.to_json(), indent=2) + "\n")
    tmp.replace(target)
    return target


def _file_name(group_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in group_id).lstrip(".") or "group"

