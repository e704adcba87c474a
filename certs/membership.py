"""Membership: owners joining and leaving a group, and the chain of configs clients follow.

A new owner signs a `JoinRequest` (with its owner key, and with its replica key to prove it
holds it). Under the group's admission rule "quorum-approval", a quorum of current members'
owners each sign an `Approval` of it. The join, a signed `LeaveRequest`, or an eviction backed
by verified equivocation evidence, is a control operation ordered in the log; it takes effect at
a checkpoint boundary as a new epoch, whose config a quorum of the OLD epoch's replicas sign
(`ConfigLink`). A client that pinned the genesis config follows the links to any later epoch:
each link is checked against the config before it, so trust never widens beyond the pin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from certs.config import GroupConfig, Member
from certs.encoding import DIGEST_SIZE, Domain, digest, encode
from certs.errors import CertificateError
from certs.keys import PUBLIC_KEY_SIZE, Ed25519Verifier, KeyPair, SignatureVerifier

MIN_GROUP_SIZE = 4


class MembershipError(CertificateError):
    """A membership change the group must refuse; the message says why."""


@dataclass(frozen=True, slots=True)
class JoinRequest:
    group_id: str
    epoch: int  # the epoch the owner asks to join from (replays into later epochs fail)
    owner_id: str
    owner_public_key: bytes
    replica_public_key: bytes
    address: str
    model_version: int
    weights_digest: bytes
    owner_signature: bytes = b""
    replica_signature: bytes = b""  # proof that the owner holds the replica's key

    def signed_bytes(self) -> bytes:
        return encode(
            Domain.JOIN_REQUEST, self.group_id, self.epoch, self.owner_id, self.owner_public_key,
            self.replica_public_key, self.address, self.model_version, self.weights_digest,
        )

    @property
    def digest(self) -> bytes:
        return digest(Domain.JOIN_REQUEST, self.signed_bytes())

    def signed(self, owner_key: KeyPair, replica_key: KeyPair) -> JoinRequest:
        body = replace(self, owner_public_key=owner_key.public_key, replica_public_key=replica_key.public_key)
        message = body.signed_bytes()
        return replace(body, owner_signature=owner_key.signer().sign(message), replica_signature=replica_key.signer().sign(message))

    def canonical(self) -> tuple[object, ...]:
        return (
            "join", self.group_id, self.epoch, self.owner_id, self.owner_public_key, self.replica_public_key,
            self.address, self.model_version, self.weights_digest, self.owner_signature, self.replica_signature,
        )


@dataclass(frozen=True, slots=True)
class Approval:
    """A current member's owner approves a join request."""

    group_id: str
    epoch: int
    join_digest: bytes
    approver: int  # replica id of the approving member
    signature: bytes = b""  # by the approver's OWNER key

    def signed_bytes(self) -> bytes:
        return encode(Domain.JOIN_APPROVAL, self.group_id, self.epoch, self.join_digest, self.approver)

    def signed(self, owner_key: KeyPair) -> Approval:
        return replace(self, signature=owner_key.signer().sign(self.signed_bytes()))


@dataclass(frozen=True, slots=True)
class LeaveRequest:
    group_id: str
    epoch: int
    replica_id: int
    owner_signature: bytes = b""

    def signed_bytes(self) -> bytes:
        return encode(Domain.LEAVE_REQUEST, self.group_id, self.epoch, self.replica_id)

    def signed(self, owner_key: KeyPair) -> LeaveRequest:
        return replace(self, owner_signature=owner_key.signer().sign(self.signed_bytes()))


@dataclass(frozen=True, slots=True)
class QuorumSigned:
    replica_id: int
    signature: bytes


@dataclass(frozen=True, slots=True)
class ConfigLink:
    """An epoch's config, signed by a quorum of the previous epoch's replicas."""

    config: GroupConfig
    signatures: tuple[QuorumSigned, ...]


def link_message(config: GroupConfig, signer: int) -> bytes:
    """What a replica of epoch e-1 signs to vouch for the config of epoch e."""
    return encode(Domain.CONFIG_APPROVAL, config.group_id, config.epoch, config.previous_digest, config.digest, signer)


def _check_signature(verifier: SignatureVerifier, public_key: bytes, message: bytes, signature: bytes, what: str) -> None:
    if not verifier.verify(public_key, message, signature):
        raise MembershipError(f"{what}: bad signature")


def check_join(config: GroupConfig, join: JoinRequest, approvals: Sequence[Approval], verifier: SignatureVerifier | None = None) -> None:
    """Raise MembershipError unless `join` may be admitted to `config`'s epoch."""
    v = verifier or Ed25519Verifier()
    if join.group_id != config.group_id or join.epoch != config.epoch:
        raise MembershipError(f"join request is for group {join.group_id!r} epoch {join.epoch}, this is {config.group_id!r} epoch {config.epoch}")
    if len(join.owner_public_key) != PUBLIC_KEY_SIZE or len(join.replica_public_key) != PUBLIC_KEY_SIZE:
        raise MembershipError("join request keys must be 32 bytes")
    if len(join.weights_digest) != DIGEST_SIZE or join.model_version < 1:
        raise MembershipError("join request names no valid model (version >= 1, 32-byte weights digest)")
    if not join.address or not join.owner_id:
        raise MembershipError("join request needs an owner id and a replica address")
    message = join.signed_bytes()
    _check_signature(v, join.owner_public_key, message, join.owner_signature, "join request (owner)")
    _check_signature(v, join.replica_public_key, message, join.replica_signature, "join request (replica key)")
    for member in config.members:
        if join.replica_public_key == member.public_key or join.replica_public_key == member.owner_public_key:
            raise MembershipError(f"the new replica's key is already in use by replica {member.replica_id}")
        if join.address == member.address:
            raise MembershipError(f"address {join.address} is already replica {member.replica_id}'s")
    if config.admission_rule != "quorum-approval":
        raise MembershipError(f"unknown admission rule {config.admission_rule!r}")
    approvers: set[int] = set()
    for approval in approvals:
        member = config.member(approval.approver)
        if member is None:
            raise MembershipError(f"approval from replica {approval.approver}, which is not a member")
        if approval.approver in approvers:
            raise MembershipError(f"two approvals from replica {approval.approver}")
        if (approval.group_id, approval.epoch, approval.join_digest) != (config.group_id, config.epoch, join.digest):
            raise MembershipError(f"approval from replica {approval.approver} is for another request or epoch")
        _check_signature(v, member.owner_public_key, approval.signed_bytes(), approval.signature, f"approval from replica {approval.approver}")
        approvers.add(approval.approver)
    if len(approvers) < config.quorum_size:
        raise MembershipError(f"{len(approvers)} approvals, the admission rule needs {config.quorum_size} members' owners")


def check_leave(config: GroupConfig, leave: LeaveRequest, verifier: SignatureVerifier | None = None) -> None:
    v = verifier or Ed25519Verifier()
    member = config.member(leave.replica_id)
    if leave.group_id != config.group_id or leave.epoch != config.epoch:
        raise MembershipError(f"leave request is for group {leave.group_id!r} epoch {leave.epoch}")
    if member is None:
        raise MembershipError(f"replica {leave.replica_id} is not a member")
    _check_signature(v, member.owner_public_key, leave.signed_bytes(), leave.owner_signature, "leave request (owner)")
    if config.n - 1 < MIN_GROUP_SIZE:
        raise MembershipError(f"leaving would leave {config.n - 1} replicas; a group needs at least {MIN_GROUP_SIZE}")


def next_config(config: GroupConfig, joins: Sequence[JoinRequest] = (), removed: Sequence[int] = ()) -> GroupConfig:
    """The next epoch's config: members minus `removed` plus `joins` (new ids after the highest
    ever used), f recomputed, linked to this one by digest. Raises MembershipError if the result
    is not a valid group."""
    members = [m for m in config.members if m.replica_id not in set(removed)]
    next_id = config.next_replica_id
    assert next_id is not None  # set by GroupConfig for any non-empty group
    for join in joins:
        members.append(
            Member(next_id, join.owner_id, join.replica_public_key, join.owner_public_key, join.address, join.model_version, join.weights_digest)
        )
        next_id += 1
    if len(members) < MIN_GROUP_SIZE:
        raise MembershipError(f"the change would leave {len(members)} replicas; a group needs at least {MIN_GROUP_SIZE}")
    try:
        return replace(
            config, epoch=config.epoch + 1, f=(len(members) - 1) // 3, members=tuple(members),
            previous_digest=config.digest, next_replica_id=next_id,
        )
    except CertificateError as exc:
        raise MembershipError(f"the next config would be invalid: {exc}") from exc


def verify_link(previous: GroupConfig, link: ConfigLink, verifier: SignatureVerifier | None = None) -> GroupConfig:
    """Check one link of the chain against the config before it; returns the new config."""
    v = verifier or Ed25519Verifier()
    config = link.config
    if config.group_id != previous.group_id or config.epoch != previous.epoch + 1 or config.previous_digest != previous.digest:
        raise CertificateError(f"config of epoch {config.epoch} does not follow epoch {previous.epoch} of group {previous.group_id!r}")
    signers: set[int] = set()
    for signature in link.signatures:
        public_key = previous.public_key(signature.replica_id)
        if public_key is None:
            raise CertificateError(f"epoch {config.epoch} config signed by replica {signature.replica_id}, not a member of epoch {previous.epoch}")
        if signature.replica_id in signers:
            raise CertificateError(f"epoch {config.epoch} config signed twice by replica {signature.replica_id}")
        if not v.verify(public_key, link_message(config, signature.replica_id), signature.signature):
            raise CertificateError(f"epoch {config.epoch} config: bad signature from replica {signature.replica_id}")
        signers.add(signature.replica_id)
    if len(signers) < previous.quorum_size:
        raise CertificateError(f"epoch {config.epoch} config has {len(signers)} signatures from epoch {previous.epoch}, needs {previous.quorum_size}")
    return config


def verify_chain(genesis: GroupConfig, links: Sequence[ConfigLink], verifier: SignatureVerifier | None = None) -> list[GroupConfig]:
    """Every config from the pinned genesis through the links, each checked against the one
    before it. Raises CertificateError at the first link that does not hold."""
    configs = [genesis]
    for link in links:
        if link.config.epoch <= configs[-1].epoch:
            continue  # already known (a chain that starts at genesis repeats it)
        configs.append(verify_link(configs[-1], link, verifier))
    return configs
