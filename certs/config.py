"""The group configuration (one epoch) and its digest, which is what clients pin.

A config names the members (replica id, owner, replica key, owner key, address, genesis model),
f, the task schema, the agreement policy, the protocol parameters every replica must share (they
decide which proposals are valid), and the price per certified request. `previous_digest` links
an epoch's config to the one before it, so a client can follow the chain from genesis.

Quorums are `(n + f) // 2 + 1` replicas: 2f+1 when n = 3f+1, and still large enough for any two
quorums to share a correct replica when a membership change leaves n above 3f+1.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from certs.encoding import DIGEST_SIZE, Domain, Encodable, digest
from certs.errors import ConfigError
from certs.keys import PUBLIC_KEY_SIZE, key_id
from certs.policy import AgreementPolicy, PolicyKind
from certs.request import DATATYPE_SIZES

GENESIS_PREVIOUS_DIGEST = bytes(DIGEST_SIZE)


@dataclass(frozen=True, slots=True)
class Member:
    replica_id: int
    owner_id: str
    public_key: bytes  # the replica's signing key
    owner_public_key: bytes  # the owner's key: only it may sign model updates for this replica
    address: str  # host:port of the replica's gRPC endpoint
    model_version: int = 1  # the model this replica starts the epoch with
    weights_digest: bytes = bytes(DIGEST_SIZE)

    def canonical(self) -> Encodable:
        return (
            self.replica_id, self.owner_id, self.public_key, self.owner_public_key,
            self.address, self.model_version, self.weights_digest,
        )


@dataclass(frozen=True, slots=True)
class TaskSchema:
    input_name: str
    input_shape: tuple[int, ...]  # per request, without the batch dimension
    input_datatype: str  # KServe v2 datatype, e.g. "FP32"
    class_labels: tuple[str, ...]
    top_k: int  # classes kept per vote; the whole label space when it is small

    @property
    def input_size_bytes(self) -> int:
        count = 1
        for dim in self.input_shape:
            count *= dim
        return count * DATATYPE_SIZES[self.input_datatype]

    def canonical(self) -> Encodable:
        return (self.input_name, tuple(self.input_shape), self.input_datatype, tuple(self.class_labels), self.top_k)


@dataclass(frozen=True, slots=True)
class ProtocolParams:
    """Parameters all replicas must share. Time is in ticks of `tick_interval_ms`."""

    tick_interval_ms: int = 5
    inference_batch_max: int = 64  # requests per Triton call
    # How long queued requests wait for company before a Triton call starts while another is
    # in flight or the last one's requests are still being ordered (otherwise, as at
    # concurrency 1, a lone request starts at once: ConsensusNode._maybe_batch_inference).
    # 20 ms rather than 5: fewer, fuller Triton calls mean fewer vote batches and ordered
    # batches, each of which costs every replica far more than a row does; measured +20 %
    # certified req/s at 32 and 64 calls in flight on 2 cores, no change at 8 (tests/bench,
    # same-session A/B).
    inference_batch_delay_ticks: int = 4
    inference_inflight_max: int = 2  # Triton calls outstanding per replica
    proposal_size_max: int = 1024  # requests per ordered batch
    vote_timeout_ticks: int = 6  # after 2f+1 votes, how long to wait for the rest (30 ms)
    # ... and how long at most while a missing voter is only a little behind (150 ms:
    # ConsensusNode._waiting_for_votes). Under load that keeps every honest owner's vote in the
    # certificates (64 calls in flight: 98-100 % of certificates with all four votes instead of
    # 53-57 %, for 0-15 % of certified req/s) and costs nothing when a voter has crashed. Set it
    # to vote_timeout_ticks to favour throughput over owners' fees and auditors' evidence.
    vote_wait_max_ticks: int = 30
    pipeline_depth: int = 8  # proposals in flight (uncommitted) at once
    checkpoint_interval_batches: int = 32  # K
    log_window_batches: int = 64  # high watermark = low watermark + this; also the activation delay
    view_change_timeout_ticks: int = 200
    relay_timeout_ticks: int = 40  # a request without a quorum of votes by then is relayed to peers
    request_size_max_bytes: int = 4 * 1024 * 1024

    def canonical(self) -> Encodable:
        return tuple(getattr(self, f.name) for f in fields(self))


@dataclass(frozen=True, slots=True)
class GroupConfig:
    group_id: str
    epoch: int
    f: int
    members: tuple[Member, ...]  # ascending replica ids
    task: TaskSchema
    policy: AgreementPolicy = AgreementPolicy()
    params: ProtocolParams = ProtocolParams()
    price_per_request: int = 0  # credits per certified request
    admission_rule: str = "quorum-approval"
    previous_digest: bytes = GENESIS_PREVIOUS_DIGEST
    # The id the next joining replica gets. Ids are never reused: votes, evidence and the fee
    # ledger are keyed by replica id, so a newcomer must not inherit a departed member's id.
    # None (genesis) means one past the highest member id.
    next_replica_id: int | None = None
    digest: bytes = field(init=False, repr=False, compare=False)
    _by_id: dict[int, Member] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.next_replica_id is None and self.members:
            object.__setattr__(self, "next_replica_id", max(m.replica_id for m in self.members) + 1)
        _validate(self)
        object.__setattr__(self, "_by_id", {m.replica_id: m for m in self.members})
        object.__setattr__(self, "digest", digest(Domain.CONFIG, self.canonical()))

    # -- derived figures ------------------------------------------------------------------
    @property
    def n(self) -> int:
        return len(self.members)

    @property
    def quorum_size(self) -> int:
        return (self.n + self.f) // 2 + 1

    @property
    def replica_ids(self) -> tuple[int, ...]:
        return tuple(m.replica_id for m in self.members)

    def member(self, replica_id: int) -> Member | None:
        return self._by_id.get(replica_id)

    def is_member(self, replica_id: int) -> bool:
        return replica_id in self._by_id

    def public_key(self, replica_id: int) -> bytes | None:
        member = self._by_id.get(replica_id)
        return None if member is None else member.public_key

    def primary(self, view: int) -> int:
        """The primary of a view, round robin over the members (PBFT section 4.1)."""
        return self.members[view % self.n].replica_id

    def genesis_versions(self) -> tuple[tuple[int, int, bytes], ...]:
        return tuple((m.replica_id, m.model_version, m.weights_digest) for m in self.members)

    def canonical(self) -> Encodable:
        return (
            self.group_id, self.epoch, self.f,
            tuple(m.canonical() for m in self.members),
            self.task.canonical(), self.policy.canonical(), self.params.canonical(),
            self.price_per_request, self.admission_rule, self.previous_digest, self.next_replica_id,
        )

    # -- JSON for people and files -------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "group_id": self.group_id,
            "epoch": self.epoch,
            "f": self.f,
            "digest": self.digest.hex(),
            "previous_digest": self.previous_digest.hex(),
            "members": [
                {
                    "replica_id": m.replica_id,
                    "owner_id": m.owner_id,
                    "public_key": m.public_key.hex(),
                    "key_id": key_id(m.public_key),
                    "owner_public_key": m.owner_public_key.hex(),
                    "address": m.address,
                    "model_version": m.model_version,
                    "weights_digest": m.weights_digest.hex(),
                }
                for m in self.members
            ],
            "task": {
                "input_name": self.task.input_name,
                "input_shape": list(self.task.input_shape),
                "input_datatype": self.task.input_datatype,
                "class_labels": list(self.task.class_labels),
                "top_k": self.task.top_k,
            },
            "policy": {"kind": self.policy.kind.value, "min_support": self.policy.min_support},
            "params": {f.name: getattr(self.params, f.name) for f in fields(self.params)},
            "price_per_request": self.price_per_request,
            "admission_rule": self.admission_rule,
            "next_replica_id": self.next_replica_id,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GroupConfig:
        try:
            members = tuple(
                Member(
                    replica_id=_int(m["replica_id"]),
                    owner_id=_str(m["owner_id"]),
                    public_key=_hex(m["public_key"], PUBLIC_KEY_SIZE),
                    owner_public_key=_hex(m["owner_public_key"], PUBLIC_KEY_SIZE),
                    address=_str(m["address"]),
                    model_version=_int(m.get("model_version", 1)),
                    weights_digest=_hex(m.get("weights_digest", "00" * DIGEST_SIZE), DIGEST_SIZE),
                )
                for m in data["members"]
            )
            task_data = data["task"]
            task = TaskSchema(
                input_name=_str(task_data["input_name"]),
                input_shape=tuple(_int(d) for d in task_data["input_shape"]),
                input_datatype=_str(task_data["input_datatype"]),
                class_labels=tuple(_str(label) for label in task_data["class_labels"]),
                top_k=_int(task_data["top_k"]),
            )
            policy_data = data.get("policy", {})
            min_support = policy_data.get("min_support")
            policy = AgreementPolicy(
                PolicyKind(policy_data.get("kind", "plurality")),
                None if min_support is None else _int(min_support),
            )
            param_names = {f.name for f in fields(ProtocolParams)}
            param_data = dict(data.get("params", {}))
            unknown = set(param_data) - param_names
            if unknown:
                raise ConfigError(f"unknown protocol parameters: {', '.join(sorted(unknown))}")
            params = ProtocolParams(**{k: _int(v) for k, v in param_data.items()})
            config = cls(
                group_id=_str(data["group_id"]),
                epoch=_int(data["epoch"]),
                f=_int(data["f"]),
                members=members,
                task=task,
                policy=policy,
                params=params,
                price_per_request=_int(data.get("price_per_request", 0)),
                admission_rule=_str(data.get("admission_rule", "quorum-approval")),
                previous_digest=_hex(data.get("previous_digest", "00" * DIGEST_SIZE), DIGEST_SIZE),
                next_replica_id=None if data.get("next_replica_id") is None else _int(data["next_replica_id"]),
            )
        except ConfigError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"malformed group config: {exc!r}") from exc
        if "digest" in data and data["digest"] != config.digest.hex():
            raise ConfigError("group config digest does not match its contents")
        return config

    def with_changes(self, **changes: Any) -> GroupConfig:
        return replace(self, **changes)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"expected an integer, got {value!r}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"expected a string, got {value!r}")
    return value


def _hex(value: Any, size: int) -> bytes:
    raw = bytes.fromhex(_str(value))
    if len(raw) != size:
        raise ConfigError(f"expected {size} bytes of hex, got {len(raw)}")
    return raw


def _validate(config: GroupConfig) -> None:
    if not config.group_id or len(config.group_id) > 128:
        raise ConfigError("group_id must be 1..128 characters")
    if config.epoch < 0:
        raise ConfigError("epoch must be >= 0")
    n = len(config.members)
    if n < 4:
        raise ConfigError(f"a group needs at least 4 replicas to tolerate a fault, has {n}")
    if config.f != (n - 1) // 3:
        raise ConfigError(f"f must be floor((n-1)/3) = {(n - 1) // 3} for n = {n}, is {config.f}")
    ids = [m.replica_id for m in config.members]
    if ids != sorted(set(ids)):
        raise ConfigError("members must have distinct replica ids in ascending order")
    if ids and (config.next_replica_id is None or config.next_replica_id <= ids[-1]):
        raise ConfigError(f"next_replica_id must be above every member id (highest is {ids[-1]})")
    for attribute in ("public_key", "address"):
        values = [getattr(m, attribute) for m in config.members]
        if len(set(values)) != len(values):
            raise ConfigError(f"two members share a {attribute.replace('_', ' ')}")
    for m in config.members:
        if m.replica_id < 0:
            raise ConfigError("replica ids must be >= 0")
        if len(m.public_key) != PUBLIC_KEY_SIZE or len(m.owner_public_key) != PUBLIC_KEY_SIZE:
            raise ConfigError(f"replica {m.replica_id}: keys must be {PUBLIC_KEY_SIZE} bytes")
        if len(m.weights_digest) != DIGEST_SIZE:
            raise ConfigError(f"replica {m.replica_id}: weights digest must be {DIGEST_SIZE} bytes")
    task = config.task
    if task.input_datatype not in DATATYPE_SIZES:
        raise ConfigError(f"unknown input datatype {task.input_datatype!r}")
    if any(d <= 0 for d in task.input_shape):
        raise ConfigError("input dimensions must be positive")
    if len(task.class_labels) < 2 or len(set(task.class_labels)) != len(task.class_labels):
        raise ConfigError("the task needs at least two distinct class labels")
    if not 1 <= task.top_k <= len(task.class_labels):
        raise ConfigError("top_k must be between 1 and the number of classes")
    policy = config.policy
    if policy.min_support is not None and not 1 <= policy.min_support <= n:
        raise ConfigError(f"min_support must be between 1 and n = {n}")
    params = config.params
    for f_ in fields(params):
        if getattr(params, f_.name) <= 0:
            raise ConfigError(f"protocol parameter {f_.name} must be positive")
    if params.log_window_batches < params.checkpoint_interval_batches:
        raise ConfigError("log_window_batches must be at least checkpoint_interval_batches")
    if config.price_per_request < 0:
        raise ConfigError("price_per_request must be >= 0")
    if len(config.previous_digest) != DIGEST_SIZE:
        raise ConfigError("previous_digest must be 32 bytes")


def load_group_config(path: str | os.PathLike[str]) -> GroupConfig:
    source = Path(path)
    try:
        data = json.loads(source.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{source}: no such group config") from exc
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise ConfigError(f"{source}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a group config is a JSON object")
    return GroupConfig.from_json(data)


def save_group_config(config: GroupConfig, path: str | os.PathLike[str]) -> Path:
    target = Path(path)
    target.write_text(json.dumps(config.to_json(), indent=2) + "\n")
    return target
