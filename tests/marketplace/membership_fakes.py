"""In-process stand-ins for a group's replicas in membership and ledger tests (no Triton, no
consensus): each serves GetConfigChain, SubmitControl and Ledger from scripted state, checks
control operations with the group's own rules (certs/membership.py), and records what it was
sent. Also: groups with several epochs, their quorum-signed links, and signed ledgers."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field, replace
from typing import Any

import grpc

from certs.config import GroupConfig, ProtocolParams
from certs.errors import CertificateError
from certs.keys import KeyPair
from certs.membership import ConfigLink, JoinRequest, QuorumSigned, check_join, check_leave, link_message, next_config
from consensus.messages import Checkpoint, ControlOp, JoinOp, LeaveOp, StateSnapshot
from consensus.state import CheckpointSummary
from marketplace.local import free_ports
from protos import replica_api_pb2 as api
from replica.codec import checkpoint_to_proto, config_link_to_proto, control_op_from_proto, snapshot_to_proto
from tests.certs.helpers import Group, make_group, owner_key, replica_key

REPLICA_SERVICE = "quorumserve.v1.Replica"
PARAMS = ProtocolParams(checkpoint_interval_batches=4, log_window_batches=8)


def listening_group(n: int = 4) -> Group:
    """A group at genesis whose members listen on free local ports (where fakes will serve)."""
    base = make_group(1, epoch=0, n=n)
    ports = free_ports(n)
    members = tuple(replace(m, address=f"127.0.0.1:{port}") for m, port in zip(base.config.members, ports))
    config = GroupConfig(
        group_id=base.config.group_id, epoch=0, f=(n - 1) // 3, members=members, task=base.config.task,
        params=PARAMS, price_per_request=10,
    )
    return Group(config, base.keys)


def newcomer_join(config: GroupConfig, n: int = 0, address: str | None = None) -> tuple[JoinRequest, KeyPair, KeyPair]:
    owner, replica = owner_key(200 + n, "joiner"), replica_key(200 + n, "joiner")
    join = JoinRequest(
        config.group_id, config.epoch, f"joiner-{n}", owner.public_key, replica.public_key,
        address or f"127.0.0.1:{free_ports(1)[0]}", 1, bytes(range(32)),
    )
    return join.signed(owner, replica), owner, replica


def sign_link(previous: GroupConfig, config: GroupConfig, keys: dict[int, KeyPair], signers: Sequence[int] | None = None) -> ConfigLink:
    chosen = list(previous.replica_ids[: previous.quorum_size]) if signers is None else list(signers)
    return ConfigLink(config, tuple(QuorumSigned(r, keys[r].signer().sign(link_message(config, r))) for r in chosen))


@dataclass
class Epochs:
    """A group that went through a join: genesis (0..3) -> epoch 1 (0..4)."""

    genesis: GroupConfig
    one: GroupConfig
    link: ConfigLink
    keys: dict[int, KeyPair]  # every replica's signing key

    @property
    def group_one(self) -> Group:
        return Group(self.one, self.keys)


def joined_epochs(group: Group) -> Epochs:
    join, _, new_key = newcomer_join(group.config)
    one = next_config(group.config, [join])
    keys = dict(group.keys)
    keys[max(one.replica_ids)] = new_key
    return Epochs(group.config, one, sign_link(group.config, one, keys), keys)


def signed_checkpoints(config: GroupConfig, keys: dict[int, KeyPair], seq: int, state_digest: bytes, signers: Sequence[int] | None = None) -> list[Checkpoint]:
    chosen = list(config.replica_ids[: config.quorum_size]) if signers is None else list(signers)
    out = []
    for rid in chosen:
        unsigned = Checkpoint(rid, config.epoch, seq, state_digest, b"")
        out.append(Checkpoint(rid, config.epoch, seq, state_digest, keys[rid].signer().sign(unsigned.statement(config.group_id).message())))
    return out


def ledger_reply(summary: CheckpointSummary, proof: Sequence[Checkpoint]) -> api.LedgerReply:
    """What a replica's Ledger RPC answers for a stable checkpoint (replica/service.py)."""
    reply = api.LedgerReply(executed_hash=summary.executed_hash.to_bytes(32, "big"))
    change = summary.epoch_change
    snapshot = StateSnapshot(
        summary.seq, summary.chain_digest, (), summary.versions, summary.scheduled, summary.epoch, summary.config_digest,
        0 if change is None else change.seq, () if change is None else change.ops, summary.ledger,
    )
    snapshot_to_proto(snapshot, reply.summary)
    for checkpoint in proof:
        checkpoint_to_proto(checkpoint, reply.proof.add())
    return reply


@dataclass
class FakeMember:
    """One replica's client API, scripted."""

    config: GroupConfig  # the epoch it checks control operations against
    links: list[tuple[ConfigLink, int]] = field(default_factory=list)
    ledger: api.LedgerReply | None = None
    refuse: tuple[grpc.StatusCode, str] | None = None  # refuse every control operation so
    received: list[ControlOp] = field(default_factory=list)
    chain_calls: int = 0

    def get_config_chain(self, raw: bytes, context: grpc.ServicerContext) -> bytes:
        self.chain_calls += 1
        reply = api.ConfigChainReply()
        for link, start in self.links:
            record = reply.links.add()
            config_link_to_proto(link, record.link)
            record.start_seq = start
        return reply.SerializeToString()

    def submit_control(self, raw: bytes, context: grpc.ServicerContext) -> bytes:
        message = api.ControlRequest.FromString(raw)
        try:
            op = control_op_from_proto(message.op)
        except CertificateError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed control operation: {exc}")
        if self.refuse is not None:
            context.abort(*self.refuse)
        try:
            if isinstance(op, JoinOp):
                check_join(self.config, op.join, op.approvals)
            elif isinstance(op, LeaveOp):
                check_leave(self.config, op.leave)
        except CertificateError as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        self.received.append(op)
        return api.ControlReply(status="submitted", epoch=self.config.epoch).SerializeToString()

    def get_ledger(self, raw: bytes, context: grpc.ServicerContext) -> bytes:
        if self.ledger is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "no stable checkpoint yet: the ledger is not certified")
        return self.ledger.SerializeToString()  # type: ignore[union-attr]


class FakeGroup:
    """A FakeMember listening at each address of `addresses` (replica id -> host:port)."""

    def __init__(self, config: GroupConfig, addresses: dict[int, str] | None = None) -> None:
        self.config = config
        self.addresses = addresses or {m.replica_id: m.address for m in config.members}
        self.members = {rid: FakeMember(config) for rid in self.addresses}
        self._servers: list[grpc.Server] = []

    def start(self) -> FakeGroup:
        for rid, address in self.addresses.items():
            member = self.members[rid]

            def unary(fn: Any) -> grpc.RpcMethodHandler:
                return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=None, response_serializer=None)

            handler = grpc.method_handlers_generic_handler(REPLICA_SERVICE, {
                "GetConfigChain": unary(member.get_config_chain),
                "SubmitControl": unary(member.submit_control),
                "Ledger": unary(member.get_ledger),
            })
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
            server.add_generic_rpc_handlers((handler,))
            server.add_insecure_port(address)
            server.start()
            self._servers.append(server)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.stop(None)
        self._servers = []

    def received(self) -> list[ControlOp]:
        return [op for member in self.members.values() for op in member.received]

    def serve_links(self, links: list[tuple[ConfigLink, int]]) -> None:
        for member in self.members.values():
            member.links = list(links)

    def serve_ledger(self, reply: api.LedgerReply | None, replica_ids: Sequence[int] | None = None) -> None:
        for rid, member in self.members.items():
            if replica_ids is None or rid in replica_ids:
                member.ledger = reply

    def __enter__(self) -> FakeGroup:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def running(config: GroupConfig, addresses: dict[int, str] | None = None) -> Iterator[FakeGroup]:
    fakes = FakeGroup(config, addresses).start()
    try:
        yield fakes
    finally:
        fakes.stop()
