"""What owners do about membership, and what anyone does to read the fee ledger.

Owners:

- a new owner signs a `JoinRequest` (owner key + the new replica's key) for the group's current
  epoch and hands the JSON file to the current members' owners;
- each approving owner checks it and signs an `Approval` with its owner key;
- anyone submits the request with a quorum of approvals (`JoinOp`) to the replicas, which order
  it; it takes effect at a checkpoint boundary as the next epoch (consensus/state.py);
- an owner takes its own replica out with a signed `LeaveRequest`; any member's owner can have a
  replica evicted with evidence that proves it misbehaved (certs/evidence.py).

Everything is checked here first with the same rules the replicas apply (certs/membership.py),
so a refused change is refused before it is sent, with the reason, and nothing changes.

Readers of the chain and the ledger trust only a pinned config: the configs of later epochs are
accepted link by link (each signed by a quorum of the epoch before it), and the ledger only with
a quorum of checkpoint signatures over the state digest it is part of.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from certs.config import GroupConfig
from certs.encoding import DIGEST_SIZE
from certs.errors import CertificateError, DecodeError
from certs.evidence import Evidence, encode_evidence, verify_evidence
from certs.keys import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, Ed25519Verifier, KeyPair, SignatureVerifier
from certs.membership import (
    Approval,
    ConfigLink,
    JoinRequest,
    LeaveRequest,
    MembershipError,
    check_join,
    check_leave,
    next_config,
    verify_link,
)
from consensus.messages import ControlOp, EvictOp, JoinOp, LeaveOp
from consensus.state import CheckpointSummary, EpochChange
from consensus.viewchange import check_checkpoint_proof
from protos import replica_api_pb2 as api
from protos import replica_api_pb2_grpc as api_grpc

JOIN_FORMAT = "quorumserve-join-request/1"
APPROVAL_FORMAT = "quorumserve-join-approval/1"
RPC_TIMEOUT_S = 5.0
MESSAGE_SIZE_MAX_BYTES = 64 * 1024 * 1024  # a ledger lists every client: allow large replies


class ControlRefusedError(Exception):
    """The group refused a membership change; nothing changed. `code` is the gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.reason = message


class GroupUnavailableError(ConnectionError):
    """Too few replicas of the group answered."""


class LedgerError(CertificateError):
    """A ledger reply that does not verify against the configs the reader trusts."""


class UnknownEpochError(LedgerError):
    """The ledger was signed by the replicas of an epoch the reader has no config for yet."""

    def __init__(self, epoch: int, message: str) -> None:
        super().__init__(message)
        self.epoch = epoch


# =========================================================================================
# JSON files owners pass around
# =========================================================================================


def join_request_to_json(join: JoinRequest) -> dict[str, Any]:
    return {
        "format": JOIN_FORMAT,
        "group_id": join.group_id,
        "epoch": join.epoch,
        "owner_id": join.owner_id,
        "owner_public_key": join.owner_public_key.hex(),
        "replica_public_key": join.replica_public_key.hex(),
        "address": join.address,
        "model_version": join.model_version,
        "weights_digest": join.weights_digest.hex(),
        "owner_signature": join.owner_signature.hex(),
        "replica_signature": join.replica_signature.hex(),
        "digest": join.digest.hex(),  # what approvals sign (informational: recomputed on reading)
    }


def join_request_from_json(data: Any) -> JoinRequest:
    """Raises DecodeError on anything malformed (signatures are checked by check_join)."""
    d = _object(data, JOIN_FORMAT, "join request")
    try:
        join = JoinRequest(
            group_id=_str(d, "group_id"),
            epoch=_int(d, "epoch"),
            owner_id=_str(d, "owner_id"),
            owner_public_key=_hex(d, "owner_public_key", PUBLIC_KEY_SIZE),
            replica_public_key=_hex(d, "replica_public_key", PUBLIC_KEY_SIZE),
            address=_str(d, "address"),
            model_version=_int(d, "model_version"),
            weights_digest=_hex(d, "weights_digest", DIGEST_SIZE),
            owner_signature=_signature(d, "owner_signature"),
            replica_signature=_signature(d, "replica_signature"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DecodeError(f"join request: {exc}") from exc
    if "digest" in d and d["digest"] != join.digest.hex():
        raise DecodeError("join request: its digest does not match its contents")
    return join


def approval_to_json(approval: Approval) -> dict[str, Any]:
    return {
        "format": APPROVAL_FORMAT,
        "group_id": approval.group_id,
        "epoch": approval.epoch,
        "join_digest": approval.join_digest.hex(),
        "approver": approval.approver,
        "signature": approval.signature.hex(),
    }


def approval_from_json(data: Any) -> Approval:
    d = _object(data, APPROVAL_FORMAT, "approval")
    try:
        return Approval(
            group_id=_str(d, "group_id"),
            epoch=_int(d, "epoch"),
            join_digest=_hex(d, "join_digest", DIGEST_SIZE),
            approver=_int(d, "approver"),
            signature=_signature(d, "signature"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DecodeError(f"approval: {exc}") from exc


def write_json(data: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    target = Path(path)
    target.write_text(json.dumps(data, indent=2) + "\n")
    return target


def read_json(path: str | os.PathLike[str], what: str) -> Any:
    source = Path(path)
    try:
        return json.loads(source.read_text())
    except FileNotFoundError as exc:
        raise DecodeError(f"{what} {source}: no such file") from exc
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise DecodeError(f"{what} {source}: not valid JSON ({exc})") from exc


def _object(data: Any, expected_format: str, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise DecodeError(f"a {what} is a JSON object")
    if data.get("format", expected_format) != expected_format:
        raise DecodeError(f"{what}: unknown format {data.get('format')!r}, expected {expected_format!r}")
    return data


def _str(d: Mapping[str, Any], name: str) -> str:
    value = d[name]
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string")
    return value


def _int(d: Mapping[str, Any], name: str) -> int:
    value = d[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"{name} must be a non-negative integer")
    return value


def _signature(d: Mapping[str, Any], name: str) -> bytes:
    """A signature, or none at all: an unsigned file is read, then refused by the checks (which
    say which signature is missing) rather than called unreadable."""
    if not d.get(name):
        return b""
    return _hex(d, name, SIGNATURE_SIZE)


def _hex(d: Mapping[str, Any], name: str, size: int) -> bytes:
    raw = bytes.fromhex(_str(d, name))
    if len(raw) != size:
        raise ValueError(f"{name} must be {size} bytes of hex, is {len(raw)}")
    return raw


# =========================================================================================
# signing and checking changes
# =========================================================================================


def sign_join(
    config: GroupConfig,
    *,
    owner_id: str,
    owner_key: KeyPair,
    replica_key: KeyPair,
    address: str,
    weights_digest: bytes,
    model_version: int = 1,
) -> JoinRequest:
    """A join request for `config`'s epoch, signed by the owner and by the new replica's key;
    checked as the replicas will check it (MembershipError if they would refuse it)."""
    unsigned = JoinRequest(
        config.group_id, config.epoch, owner_id, owner_key.public_key, replica_key.public_key, address,
        model_version, weights_digest,
    )
    join = unsigned.signed(owner_key, replica_key)
    check_join_request(config, join)
    return join


def check_join_request(config: GroupConfig, join: JoinRequest, verifier: SignatureVerifier | None = None) -> None:
    """Everything check_join checks except the approvals (which come later): raise
    MembershipError if the group would refuse this request whatever the approvals."""
    try:
        check_join(config, join, (), verifier)
    except MembershipError as exc:
        # check_join counts approvals last, after every check of the request itself: the count
        # is the only complaint a request that is otherwise fine can get with no approvals
        if str(exc) != f"0 approvals, the admission rule needs {config.quorum_size} members' owners":
            raise
    next_config(config, [join], [])


def approve_join(config: GroupConfig, join: JoinRequest, replica_id: int, owner_key: KeyPair) -> Approval:
    """The approval of `replica_id`'s owner: refused (MembershipError) if the request itself
    would be refused, or if `owner_key` is not that member's owner key."""
    member = config.member(replica_id)
    if member is None:
        raise MembershipError(f"replica {replica_id} is not a member of group {config.group_id!r} epoch {config.epoch}; only members' owners approve")
    if member.owner_public_key != owner_key.public_key:
        raise MembershipError(f"this key is not the owner key of replica {replica_id}")
    check_join_request(config, join)
    return Approval(config.group_id, config.epoch, join.digest, replica_id).signed(owner_key)


def join_op(config: GroupConfig, join: JoinRequest, approvals: Sequence[Approval]) -> JoinOp:
    """The operation the group orders; MembershipError unless the replicas would accept it."""
    check_join(config, join, approvals)
    next_config(config, [join], [])
    return JoinOp(join, tuple(approvals))


def leave_op(config: GroupConfig, replica_id: int, owner_key: KeyPair) -> LeaveOp:
    """An owner takes its replica out (MembershipError if the group would refuse it)."""
    leave = LeaveRequest(config.group_id, config.epoch, replica_id).signed(owner_key)
    check_leave(config, leave)
    return LeaveOp(leave)


def evict_op(config: GroupConfig, replica_id: int, evidence: Evidence, submitter_key: KeyPair) -> EvictOp:
    """Remove `replica_id` on the strength of `evidence`, which must verify against the current
    config and accuse it. Only an owner of a current member submits evictions."""
    if not any(m.owner_public_key == submitter_key.public_key for m in config.members):
        raise MembershipError(f"this key is the owner key of no member of group {config.group_id!r} epoch {config.epoch}")
    if not config.is_member(replica_id):
        raise MembershipError(f"replica {replica_id} is not a member of epoch {config.epoch}")
    accused = verify_evidence(evidence, config)
    if replica_id not in accused:
        raise MembershipError(f"the evidence does not accuse replica {replica_id} (it accuses {list(accused)})")
    next_config(config, [], [replica_id])
    return EvictOp(config.group_id, config.epoch, replica_id, encode_evidence(evidence))


def expected_replica_id(config: GroupConfig) -> int:
    """The id a join admitted to `config` gets (certs.membership.next_config numbers them)."""
    return max(config.replica_ids) + 1


# =========================================================================================
# the chain of configs
# =========================================================================================


@dataclass
class ConfigChain:
    """The configs a reader trusts: the pinned one, then each later epoch's config accepted only
    through a link signed by a quorum of the epoch before it."""

    pinned: GroupConfig
    links: dict[int, ConfigLink] = field(default_factory=dict)  # epoch -> the link that proved it
    start_seqs: dict[int, int] = field(default_factory=dict)  # epoch -> last seq of the epoch before
    _configs: dict[int, GroupConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._configs = {self.pinned.epoch: self.pinned}

    @property
    def current(self) -> GroupConfig:
        return self._configs[max(self._configs)]

    @property
    def configs(self) -> list[GroupConfig]:
        return [self._configs[e] for e in sorted(self._configs)]

    def for_epoch(self, epoch: int) -> GroupConfig | None:
        return self._configs.get(epoch)

    def extend(self, links: Iterable[ConfigLink], start_seqs: Mapping[int, int] | None = None, verifier: SignatureVerifier | None = None) -> list[GroupConfig]:
        """Accept the links that continue the chain, oldest first; returns the configs gained.
        Stops at the first link that does not verify (a link still short of a quorum of
        signatures is the usual reason, right after an epoch change) and raises
        CertificateError only if it gained nothing and the link was not merely early."""
        gained: list[GroupConfig] = []
        error: CertificateError | None = None
        for link in sorted(links, key=lambda item: item.config.epoch):
            epoch = link.config.epoch
            if epoch in self._configs:
                continue
            previous = self._configs.get(epoch - 1)
            if previous is None:
                break
            try:
                config = verify_link(previous, link, verifier)
            except CertificateError as exc:
                if len(link.signatures) >= previous.quorum_size:
                    error = exc  # enough signatures, yet they do not verify: a bad link
                break
            self._configs[epoch] = config
            self.links[epoch] = link
            if start_seqs is not None and epoch in start_seqs:
                self.start_seqs[epoch] = start_seqs[epoch]
            gained.append(config)
        if error is not None and not gained:
            raise error
        return gained

    def signed_links(self) -> list[ConfigLink]:
        return [self.links[e] for e in sorted(self.links)]

    def owner_ids(self) -> dict[int, str]:
        """replica id -> owner id, over every epoch (the latest epoch naming an id wins)."""
        owners: dict[int, str] = {}
        for config in self.configs:
            for member in config.members:
                owners[member.replica_id] = member.owner_id
        return owners


def links_from_chain_reply(reply: api.ConfigChainReply) -> tuple[list[ConfigLink], dict[int, int]]:
    """The links a replica's GetConfigChain returned (DecodeError if malformed)."""
    from replica.codec import config_link_from_proto

    links: list[ConfigLink] = []
    starts: dict[int, int] = {}
    for record in reply.links:
        link = config_link_from_proto(record.link)
        links.append(link)
        starts[link.config.epoch] = record.start_seq
    return links, starts


def links_from_group_reply(config_chain_json: Sequence[str]) -> list[ConfigLink]:
    """The signed links in a gateway's GetGroup reply: each config of the chain carries the
    previous epoch's signatures on it under "link_signatures" (see marketplace/gateway.py)."""
    from certs.cli import link_from_json

    links: list[ConfigLink] = []
    for text in config_chain_json:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise DecodeError(f"gateway chain entry is not JSON: {exc}") from exc
        if isinstance(data, dict) and "link_signatures" in data:
            links.append(link_from_json({"config": data, "signatures": data["link_signatures"]}))
    return links


def config_json_with_link(config: GroupConfig, link: ConfigLink | None) -> str:
    """A config as the gateway's GetGroup lists it: its JSON, plus the previous epoch's quorum
    signatures on it (so a client can check it from its pinned genesis)."""
    data = config.to_json()
    if link is not None:
        data["link_signatures"] = [{"replica_id": s.replica_id, "signature": s.signature.hex()} for s in link.signatures]
    return json.dumps(data)


def _channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(
        address, options=[("grpc.max_receive_message_length", MESSAGE_SIZE_MAX_BYTES)]
    )


def _each_replica(addresses: Sequence[str], call: Any) -> list[tuple[str, Any]]:
    """`call(stub)` on every address at once; (address, reply or the RpcError raised)."""

    def one(address: str) -> tuple[str, Any]:
        try:
            with _channel(address) as channel:
                return address, call(api_grpc.ReplicaStub(channel))
        except grpc.RpcError as exc:
            return address, exc

    if not addresses:
        return []
    with ThreadPoolExecutor(max_workers=len(addresses)) as pool:
        return list(pool.map(one, addresses))


def follow_chain(chain: ConfigChain, *, addresses: Sequence[str] | None = None, timeout_s: float = RPC_TIMEOUT_S) -> list[GroupConfig]:
    """Ask the replicas (of every epoch known, or `addresses`) for their config links and
    extend `chain` with those that verify; returns the configs gained. Replicas are untrusted:
    a link is accepted only with a quorum of the previous epoch's signatures."""
    targets = list(addresses) if addresses is not None else _all_addresses(chain)
    gained: list[GroupConfig] = []
    for _ in range(8):  # new members may know of yet later epochs: ask again until nothing new
        replies = _each_replica(targets, lambda stub: stub.GetConfigChain(api.ConfigChainRequest(), timeout=timeout_s))
        before = len(gained)
        for _, reply in replies:
            if isinstance(reply, grpc.RpcError):
                continue
            try:
                links, starts = links_from_chain_reply(reply)
                gained += chain.extend(links, starts)
            except CertificateError:
                continue  # a replica serving a bad link: the others may serve good ones
        if len(gained) == before or addresses is not None:
            break
        targets = _all_addresses(chain)
    return gained


def _all_addresses(chain: ConfigChain) -> list[str]:
    seen: dict[int, str] = {}
    for config in chain.configs:
        for member in config.members:
            seen[member.replica_id] = member.address
    return list(dict.fromkeys(seen.values()))


def current_addresses(config: GroupConfig, overrides: Mapping[int, str] | None = None) -> list[str]:
    return [(overrides or {}).get(m.replica_id, m.address) for m in config.members]


# =========================================================================================
# submitting a change
# =========================================================================================


@dataclass(frozen=True)
class SubmitReceipt:
    epoch: int  # the epoch the change was checked against
    accepted_by: tuple[str, ...]  # addresses of the replicas that took it


def submit_control(config: GroupConfig, op: ControlOp, *, addresses: Sequence[str] | None = None, timeout_s: float = RPC_TIMEOUT_S) -> SubmitReceipt:
    """Hand a membership change to every replica of `config` (any one suffices for it to be
    ordered; sending it to all means no single replica can sit on it). Raises
    ControlRefusedError when more than f replicas refuse it and none takes it."""
    from replica.codec import control_op_to_proto

    request = api.ControlRequest()
    control_op_to_proto(op, request.op)
    targets = list(addresses) if addresses is not None else current_addresses(config)
    replies = _each_replica(targets, lambda stub: stub.SubmitControl(request, timeout=timeout_s))
    accepted = tuple(address for address, reply in replies if not isinstance(reply, grpc.RpcError))
    if accepted:
        epochs = [reply.epoch for _, reply in replies if not isinstance(reply, grpc.RpcError)]
        return SubmitReceipt(max(epochs), accepted)
    refusals = [
        (reply.code(), reply.details() or "")
        for _, reply in replies
        if isinstance(reply, grpc.RpcError) and reply.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    ]
    if len(refusals) > config.f:
        (code, message), _ = collections.Counter(refusals).most_common(1)[0]
        raise ControlRefusedError(code, message)
    details = "; ".join(
        f"{address}: {reply.code().name} {reply.details()}" for address, reply in replies if isinstance(reply, grpc.RpcError)
    )
    raise GroupUnavailableError(f"no replica of group {config.group_id!r} took the change ({details})")


# =========================================================================================
# the fee ledger
# =========================================================================================


@dataclass(frozen=True)
class Ledger:
    """The fee ledger at a stable checkpoint, verified against a quorum of checkpoint signatures."""

    group_id: str
    seq: int  # the figures include every batch up to this sequence number
    epoch: int  # the epoch in effect after `seq`
    signed_epoch: int  # whose replicas signed the checkpoint (the old epoch at an epoch boundary)
    signers: tuple[int, ...]
    state_digest: bytes
    client_spend: dict[str, int]
    owner_earnings: dict[int, int]  # replica id -> credits
    owner_ids: dict[int, str] = field(default_factory=dict)  # replica id -> owner id

    @property
    def total_spend(self) -> int:
        return sum(self.client_spend.values())

    @property
    def total_earnings(self) -> int:
        return sum(self.owner_earnings.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "group_id": self.group_id,
            "seq": self.seq,
            "epoch": self.epoch,
            "signed_epoch": self.signed_epoch,
            "signers": list(self.signers),
            "state_digest": self.state_digest.hex(),
            "clients": {client: amount for client, amount in sorted(self.client_spend.items())},
            "owners": {
                str(rid): {"owner_id": self.owner_ids.get(rid, ""), "earned": amount}
                for rid, amount in sorted(self.owner_earnings.items())
            },
            "total_spend": self.total_spend,
            "total_earnings": self.total_earnings,
        }

    def describe(self) -> str:
        lines = [
            f"ledger of group {self.group_id!r} at seq {self.seq} (epoch {self.epoch}), certified by replicas "
            f"{', '.join(map(str, self.signers))} of epoch {self.signed_epoch} (state {self.state_digest.hex()[:16]}...)",
            f"  clients ({len(self.client_spend)}), total spend {self.total_spend}:",
        ]
        lines += [f"    {client:<24} {amount:>10}" for client, amount in sorted(self.client_spend.items())]
        lines.append(f"  owners ({len(self.owner_earnings)}), total earnings {self.total_earnings}:")
        lines += [
            f"    replica {rid:<3} {self.owner_ids.get(rid, '?'):<16} {amount:>10}"
            for rid, amount in sorted(self.owner_earnings.items())
        ]
        return "\n".join(lines)


def verify_ledger(reply: api.LedgerReply, chain: ConfigChain, verifier: SignatureVerifier | None = None) -> Ledger:
    """Rebuild the checkpointed state summary the reply describes, recompute its digest, and
    check a quorum of the signing epoch's replicas signed exactly that digest. Raises
    LedgerError (UnknownEpochError when the signing epoch is not in `chain` yet)."""
    from replica.codec import checkpoint_from_proto, snapshot_from_proto

    try:
        snapshot = snapshot_from_proto(reply.summary)
        proof = tuple(checkpoint_from_proto(c) for c in reply.proof)
    except DecodeError as exc:
        raise LedgerError(f"malformed ledger reply: {exc}") from exc
    if len(reply.executed_hash) != 32:
        raise LedgerError("malformed ledger reply: executed_hash must be 32 bytes")
    if not proof:
        raise LedgerError("the ledger comes with no checkpoint signatures")
    signed_epoch = proof[0].epoch
    if any(c.epoch != signed_epoch for c in proof):
        raise LedgerError("the checkpoint signatures name different epochs")
    signers_config = chain.for_epoch(signed_epoch)
    if signers_config is None:
        raise UnknownEpochError(signed_epoch, f"the ledger is signed by replicas of epoch {signed_epoch}; the known configs reach epoch {chain.current.epoch}")
    seq = snapshot.seq
    if seq <= 0 or seq % signers_config.params.checkpoint_interval_batches:
        raise LedgerError(f"seq {seq} is no checkpoint of group {signers_config.group_id!r}")
    if snapshot.epoch not in (signed_epoch, signed_epoch + 1):
        raise LedgerError(f"a checkpoint signed in epoch {signed_epoch} cannot leave the group in epoch {snapshot.epoch}")
    change = EpochChange(snapshot.epoch_change_seq, tuple(snapshot.epoch_change_ops)) if snapshot.epoch_change_seq else None
    summary = CheckpointSummary(
        seq, snapshot.chain_digest, int.from_bytes(reply.executed_hash, "big"), tuple(snapshot.versions),
        tuple(snapshot.scheduled), snapshot.epoch, snapshot.config_digest, change, tuple(snapshot.ledger),
    )
    state_digest = summary.state_digest()
    if not check_checkpoint_proof(signers_config, verifier or Ed25519Verifier(), seq, state_digest, proof):
        raise LedgerError(
            f"the ledger at seq {seq} lacks a quorum ({signers_config.quorum_size}) of valid checkpoint signatures "
            f"from epoch {signed_epoch} over its state"
        )
    state_config = chain.for_epoch(snapshot.epoch)
    if state_config is not None and state_config.digest != snapshot.config_digest:
        raise LedgerError(f"the ledger's state names another config for epoch {snapshot.epoch}")
    clients: dict[str, int] = {}
    owners: dict[int, int] = {}
    for kind, account, amount in snapshot.ledger:
        if kind == "client":
            clients[account] = amount
        elif account.isdigit():
            owners[int(account)] = amount
        else:
            raise LedgerError(f"ledger names owner account {account!r}, which is no replica id")
    return Ledger(
        signers_config.group_id, seq, snapshot.epoch, signed_epoch, tuple(sorted(c.sender for c in proof)),
        state_digest, clients, owners, chain.owner_ids(),
    )


def best_ledger(replies: Iterable[api.LedgerReply], chain: ConfigChain) -> tuple[Ledger | None, list[LedgerError]]:
    """The verified ledger at the highest seq among `replies`, and why the others failed."""
    best: Ledger | None = None
    errors: list[LedgerError] = []
    for reply in replies:
        try:
            ledger = verify_ledger(reply, chain)
        except LedgerError as exc:
            errors.append(exc)
            continue
        if best is None or ledger.seq > best.seq:
            best = ledger
    return best, errors


def fetch_ledger(chain: ConfigChain, *, addresses: Sequence[str] | None = None, timeout_s: float = RPC_TIMEOUT_S) -> Ledger:
    """Ask the current members for the ledger, follow the chain first if it was signed in an
    epoch not known yet, and return the newest one that verifies. Raises LedgerError when none
    does."""
    followed = False
    while True:
        targets = list(addresses) if addresses is not None else current_addresses(chain.current)
        replies = _each_replica(targets, lambda stub: stub.Ledger(api.LedgerRequest(), timeout=timeout_s))
        answers = [reply for _, reply in replies if not isinstance(reply, grpc.RpcError)]
        best, errors = best_ledger(answers, chain)
        later = any(isinstance(e, UnknownEpochError) for e in errors)
        if (later or best is None) and not followed:
            followed = True
            if follow_chain(chain, timeout_s=timeout_s):
                continue  # the group moved on: ask the new members, check with the new configs
        if best is not None:
            return best
        failures = [f"{address}: {reply.code().name} {reply.details()}" for address, reply in replies if isinstance(reply, grpc.RpcError)]
        reasons = [str(e) for e in errors] + failures
        raise LedgerError("no replica returned a ledger that verifies: " + ("; ".join(reasons) or "no replica answered"))
