"""A hand-driven group of real consensus nodes for unit tests.

Unlike the seeded simulator in tests/sim, nothing happens here unless a test asks for it:
messages wait in one FIFO queue until delivered, inference runs only when the test lets it, and
time moves only on `tick()`. Rules decide for every message whether it is delivered, dropped or
held back (and released later), so a test can stage exactly the interleaving a claim is about.

The nodes are the product's `ConsensusNode` with real Ed25519 keys (the simulator's fixed keys).
The runtime contract of consensus/ready.py is followed after every call: persist the records to a
per-node list, then send, then queue inference, then collect committed batches.

The module also builds signed messages by hand, as a faulty replica holding its own key could.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from certs.batch import BatchHeader, VoteEntry, ops_digest
from certs.config import GroupConfig, ProtocolParams
from certs.keys import Ed25519Verifier
from certs.membership import LeaveRequest
from certs.merkle import root_of_hashes
from certs.outputs import ModelOutput, quantise
from certs.policy import AgreementPolicy
from certs.request import InferenceRequest, TensorData
from certs.statements import Statement, StatementKind

from consensus.errors import ByzantineMessageError
from consensus.messages import (
    Checkpoint,
    Commit,
    LeaveOp,
    ModelUpdate,
    NewView,
    PeerMessage,
    PrePrepare,
    Prepare,
    PreparedProof,
    Proposal,
    ViewChange,
    VoteBatch,
)
from consensus.node import ConsensusNode, SubmitOutcome
from certs.evidence import Equivocation
from consensus.ready import (
    Activation,
    CommittedBatch,
    Event,
    InferenceBatch,
    PersistRecord,
)
from consensus.state import ZERO_DIGEST, EpochChange
from tests.sim.world import _KEYS, _OWNER_KEYS, FEATURES, honest_output, load_like_store, make_config

M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message on its way from `via` (the replica that transmitted it) to `to`."""

    via: int
    to: int
    message: PeerMessage


Rule = Callable[[Envelope], bool]
Model = Callable[[int, InferenceRequest, int, tuple[str, ...]], ModelOutput]


def matching(kind: type, **fields: object) -> Rule:
    """A network rule: messages of one type whose envelope (`via`, `to`) or message fields
    have the given values."""

    def rule(e: Envelope) -> bool:
        if not isinstance(e.message, kind):
            return False
        for name, value in fields.items():
            actual = getattr(e, name) if name in ("via", "to") else getattr(e.message, name)
            if actual != value:
                return False
        return True

    return rule


def unit_params(**changes: int) -> ProtocolParams:
    """Small limits so that checkpoints, watermarks and timeouts are reached in a few steps."""
    values: dict[str, int] = dict(
        inference_batch_max=4,
        inference_batch_delay_ticks=3,
        inference_inflight_max=2,
        proposal_size_max=8,
        vote_timeout_ticks=5,
        pipeline_depth=4,
        checkpoint_interval_batches=4,
        log_window_batches=8,
        view_change_timeout_ticks=40,
        relay_timeout_ticks=10,
    )
    values.update(changes)
    return ProtocolParams(**values)


def honest_model(replica_id: int, request: InferenceRequest, version: int, label_space: tuple[str, ...]) -> ModelOutput:
    """Deterministic, mostly right, slightly different per replica and version."""
    if not label_space:
        return honest_output(request.digest, replica_id, version)
    size = len(label_space)
    weights = [1.0] * size
    weights[request.digest[0] % size] += 20.0
    total = sum(weights)
    return quantise([w / total for w in weights], size)


def make_request(index: int, client_id: str = "client", *, mapping: Sequence[tuple[str, str]] = (), tag: str = "") -> InferenceRequest:
    data = hashlib.sha256(f"unit-{index}-{tag}".encode()).digest()[: FEATURES * 4]
    return InferenceRequest("unit", client_id, f"req-{index}", (TensorData("x", "FP32", (FEATURES,), data),), tuple(mapping))


@dataclass
class Cluster:
    """n real nodes, one message queue, a fake model; see the module docstring."""

    n: int = 4
    params: ProtocolParams = field(default_factory=unit_params)
    policy: AgreementPolicy = field(default_factory=AgreementPolicy)
    model: Model = honest_model
    auto_inference: bool = True  # settle() runs queued inference batches too

    def __post_init__(self) -> None:
        self.config: GroupConfig = make_config(self.n, self.policy, self.params, group_id="unit")
        self.verifier = Ed25519Verifier()
        self.nodes: dict[int, ConsensusNode] = {
            r: ConsensusNode(self.config, r, _KEYS[r].signer(), self.verifier) for r in range(self.n)
        }
        self.down: set[int] = set()
        self.now = 0  # ticks
        self.disks: dict[int, list[PersistRecord]] = {r: [] for r in range(self.n)}
        self.queue: deque[Envelope] = deque()
        self._released: set[int] = set()  # ids of queued envelopes that bypass the hold rules
        self.held: list[Envelope] = []
        self.dropped: list[Envelope] = []
        self.drop_rules: list[Rule] = []
        self.hold_rules: list[Rule] = []
        self.sent: dict[int, list[PeerMessage]] = {r: [] for r in range(self.n)}
        self.inference: dict[int, list[InferenceBatch]] = {r: [] for r in range(self.n)}
        self.committed: dict[int, list[CommittedBatch]] = {r: [] for r in range(self.n)}
        self.activations: dict[int, list[Activation]] = {r: [] for r in range(self.n)}
        self.events: dict[int, list[Event]] = {r: [] for r in range(self.n)}
        self.evidence: dict[int, list[Equivocation]] = {r: [] for r in range(self.n)}
        self.executed_unseen: dict[int, list[tuple[str, str]]] = {r: [] for r in range(self.n)}
        self.skipped_batches: dict[int, list[tuple[int, int]]] = {r: [] for r in range(self.n)}
        self.rejections: list[tuple[int, ByzantineMessageError]] = []  # (receiver, error)
        self._next_index = 0

    # -- the runtime contract ----------------------------------------------------------------
    def drain(self, r: int) -> None:
        """Do what ready() asks, in the documented order: persist, send, infer, deliver."""
        ready = self.nodes[r].ready()
        self.disks[r].extend(ready.persist)
        for out in ready.messages:
            self.sent[r].append(out.message)
            targets = [out.to] if out.to is not None else [t for t in range(self.n) if t != r]
            for to in targets:
                self.queue.append(Envelope(r, to, out.message))
        self.inference[r].extend(ready.inference)
        self.committed[r].extend(ready.committed)
        self.activations[r].extend(ready.activations)
        self.events[r].extend(ready.events)
        self.evidence[r].extend(ready.evidence)
        self.executed_unseen[r].extend(ready.executed_unseen)
        self.skipped_batches[r].extend(ready.skipped_batches)

    def step(self, r: int, message: PeerMessage, via: int | None = None) -> None:
        """Hand `r` one message directly; a ByzantineMessageError reaches the caller."""
        try:
            self.nodes[r].step(message, via=via)
        finally:
            self.drain(r)

    def deliver(self, envelope: Envelope) -> None:
        if envelope.to in self.down:
            self.dropped.append(envelope)
            return
        try:
            self.step(envelope.to, envelope.message, via=envelope.via)
        except ByzantineMessageError as exc:
            self.rejections.append((envelope.to, exc))

    def deliver_next(self) -> bool:
        """Deliver, drop or hold the oldest queued message; False when the queue is empty."""
        if not self.queue:
            return False
        envelope = self.queue.popleft()
        released = id(envelope) in self._released
        self._released.discard(id(envelope))
        if any(rule(envelope) for rule in self.drop_rules):
            self.dropped.append(envelope)
        elif not released and any(rule(envelope) for rule in self.hold_rules):
            self.held.append(envelope)
        else:
            self.deliver(envelope)
        return True

    def run_one_inference(self, r: int) -> InferenceBatch:
        """Run the oldest queued inference batch of replica r."""
        batch = self.inference[r].pop(0)
        outputs = [self.model(r, req, batch.model_version, space) for req, space in zip(batch.requests, batch.label_spaces)]
        self.nodes[r].executed(batch.batch_id, outputs)
        self.drain(r)
        return batch

    def run_inference(self, r: int | None = None) -> int:
        """Run every queued inference batch (of one replica or all); returns how many ran."""
        ran = 0
        for rid in [r] if r is not None else list(range(self.n)):
            while self.inference[rid] and rid not in self.down:
                self.run_one_inference(rid)
                ran += 1
        return ran

    def settle(self, steps_max: int = 200_000) -> None:
        """Deliver every message and (with auto_inference) run inference until nothing moves."""
        for _ in range(steps_max):
            if self.deliver_next():
                continue
            if self.auto_inference and self.run_inference():
                continue
            return
        raise AssertionError("the cluster did not settle: messages keep flowing")

    def tick(self, count: int = 1) -> None:
        for _ in range(count):
            self.now += 1
            for r in range(self.n):
                if r not in self.down:
                    self.nodes[r].tick()
                    self.drain(r)
            self.settle()

    def tick_until(self, done: Callable[[], bool], ticks_max: int = 2000) -> int:
        """Tick until `done()`; returns the ticks it took. Fails the test past ticks_max."""
        for used in range(ticks_max + 1):
            if done():
                return used
            self.tick()
        raise AssertionError(f"condition not reached within {ticks_max} ticks")

    # -- network rules -------------------------------------------------------------------------
    def drop(self, rule: Rule) -> Rule:
        self.drop_rules.append(rule)
        return rule

    def hold(self, rule: Rule) -> Rule:
        self.hold_rules.append(rule)
        return rule

    def isolate(self, r: int) -> Rule:
        """Cut every link to and from `r` (a partition of one)."""
        return self.drop(lambda e: e.via == r or e.to == r)

    def heal(self) -> None:
        self.drop_rules.clear()

    def release(self, rule: Rule | None = None) -> list[Envelope]:
        """Put held messages (those matching `rule`, or all) back at the end of the queue, in
        the order they were held. They are delivered even if a hold rule matches them; a rule
        given here that is itself a hold rule stops holding (release() alone stops them all)."""
        if rule is None:
            self.hold_rules.clear()
            chosen, self.held = self.held, []
        else:
            if rule in self.hold_rules:
                self.hold_rules.remove(rule)
            chosen = [e for e in self.held if rule(e)]
            self.held = [e for e in self.held if not rule(e)]
        self.queue.extend(chosen)
        self._released.update(id(e) for e in chosen)
        return chosen

    # -- clients, crashes ------------------------------------------------------------------------
    def new_request(self, client_id: str = "client", *, mapping: Sequence[tuple[str, str]] = ()) -> InferenceRequest:
        self._next_index += 1
        return make_request(self._next_index, client_id, mapping=mapping)

    def submit(self, request: InferenceRequest, to: Iterable[int] | None = None, disseminate: bool = False) -> dict[int, SubmitOutcome]:
        outcomes: dict[int, SubmitOutcome] = {}
        for r in range(self.n) if to is None else to:
            if r in self.down:
                continue
            outcomes[r] = self.nodes[r].submit(request, disseminate=disseminate)
            self.drain(r)
        return outcomes

    def submit_update(self, replica_id: int, version: int, *, to: int | None = None, export: int = 0) -> ModelUpdate:
        op = model_update(self.config, replica_id, version, export=export)
        target = replica_id if to is None else to
        self.nodes[target].submit_control(op)
        self.drain(target)
        return op

    def submit_leave(self, replica_id: int, to: Iterable[int]) -> EpochChange:
        """Replica `replica_id`'s owner asks to leave (signed), through each replica in `to`;
        returns the epoch change once it is ordered (the group settles meanwhile)."""
        self.ask_leave(replica_id, to)
        self.settle()
        change = min((node.state.epoch_change for node in self.nodes.values() if node.state.epoch_change is not None), key=lambda c: c.seq, default=None)
        assert change is not None, "the leave was not ordered"
        return change

    def ask_leave(self, replica_id: int, to: Iterable[int]) -> LeaveOp:
        """Replica `replica_id`'s owner asks to leave, of the genesis epoch, through each replica
        in `to` (nothing is delivered yet)."""
        leave = LeaveOp(LeaveRequest(self.config.group_id, self.config.epoch, replica_id).signed(_OWNER_KEYS[replica_id]))
        for r in to:
            self.nodes[r].submit_control(leave)
            self.drain(r)
        return leave

    def crash(self, r: int) -> None:
        """The replica stops; what it had not persisted is lost, messages to it are dropped."""
        self.down.add(r)
        self.inference[r].clear()

    def restart(self, r: int) -> ConsensusNode:
        """Rebuild the replica from its persisted records (as replica/storage.py hands them back)."""
        node = ConsensusNode(self.config, r, _KEYS[r].signer(), self.verifier, records=load_like_store(self.disks[r]))
        node.now = self.now
        self.nodes[r] = node
        self.down.discard(r)
        self.inference[r].clear()
        return node

    # -- observations ------------------------------------------------------------------------------
    def committed_requests(self, r: int) -> list[tuple[str, str]]:
        """Request keys in commit order, duplicates excluded."""
        keys: list[tuple[str, str]] = []
        for batch in self.committed[r]:
            for index, entry in enumerate(batch.proposal.entries):
                if index not in batch.duplicate_entries:
                    keys.append((entry.leaf.client_id, entry.leaf.request_id))
        return keys

    def leaf_of(self, r: int, request: InferenceRequest) -> tuple[CommittedBatch, int]:
        for batch in self.committed[r]:
            for index, entry in enumerate(batch.proposal.entries):
                if (entry.leaf.client_id, entry.leaf.request_id) == request.key:
                    return batch, index
        raise AssertionError(f"replica {r} never committed {request.key}")

    def sent_of(self, r: int, kind: type[M]) -> list[M]:
        return [m for m in self.sent[r] if isinstance(m, kind)]

    def rejected_kinds(self) -> list[tuple[int, int, str]]:
        """(receiver, blamed sender, kind) of every rejection seen during delivery."""
        return [(to, exc.sender, exc.kind) for to, exc in self.rejections]

    def serve_one(self, to: Iterable[int] | None = None, ticks_max: int = 400) -> InferenceRequest:
        """Submit a fresh request and tick until every live replica it reached executed it."""
        request = self.new_request()
        targets = [r for r in (range(self.n) if to is None else to) if r not in self.down]
        self.submit(request, targets)
        self.settle()
        self.tick_until(lambda: all(request.key in self.nodes[r].state.executed for r in targets), ticks_max)
        return request


# -- hand-built signed messages (a faulty replica holds its own key) -------------------------


def sign(replica_id: int, statement: Statement) -> bytes:
    return _KEYS[replica_id].signer().sign(statement.message())


def model_update(
    config: GroupConfig, replica_id: int, version: int, *, signed_by: int | None = None, replica_key: bool = False,
    export: int = 0,
) -> ModelUpdate:
    """An owner's model update; `signed_by` another owner, or `replica_key` the replica's own key
    instead of its owner's, to forge one; another `export` gives other weights (the same model
    exported again)."""
    weights = hashlib.sha256(b"weights-%d-%d-%d" % (replica_id, version, export)).digest()
    op = ModelUpdate(config.group_id, replica_id, version, weights, b"")
    owner = replica_id if signed_by is None else signed_by
    key = _KEYS[owner] if replica_key else _OWNER_KEYS[owner]
    return replace(op, owner_signature=key.signer().sign(op.signed_bytes()))


def prepare(config: GroupConfig, sender: int, view: int, seq: int, batch_digest: bytes, *, epoch: int | None = None) -> Prepare:
    e = config.epoch if epoch is None else epoch
    message = Prepare(sender, e, view, seq, batch_digest, b"")
    return replace(message, signature=sign(sender, message.statement(config.group_id)))


def commit(config: GroupConfig, sender: int, view: int, seq: int, batch_digest: bytes, *, epoch: int | None = None) -> Commit:
    e = config.epoch if epoch is None else epoch
    message = Commit(sender, e, view, seq, batch_digest, b"")
    return replace(message, signature=sign(sender, message.statement(config.group_id)))


def checkpoint(config: GroupConfig, sender: int, seq: int, state_digest: bytes) -> Checkpoint:
    message = Checkpoint(sender, config.epoch, seq, state_digest, b"")
    return replace(message, signature=sign(sender, message.statement(config.group_id)))


def vote_batch(config: GroupConfig, sender: int, batch_no: int, version: int, entries: Sequence[VoteEntry], *, epoch: int | None = None) -> VoteBatch:
    e = config.epoch if epoch is None else epoch
    unsigned = VoteBatch(sender, e, batch_no, version, tuple(entries), b"")
    return VoteBatch(sender, e, batch_no, version, tuple(entries), sign(sender, unsigned.statement(config.group_id)))


def header_for(config: GroupConfig, view: int, seq: int, proposal: Proposal, versions_digest: bytes = ZERO_DIGEST, *, epoch: int | None = None) -> BatchHeader:
    e = config.epoch if epoch is None else epoch
    return BatchHeader(
        config.group_id, e, config.digest, view, seq,
        root_of_hashes([entry.leaf.hash for entry in proposal.entries]),
        ops_digest([op.canonical() for op in proposal.ops]),
        versions_digest,
        len(proposal.entries),
    )


def pre_prepare(config: GroupConfig, sender: int, header: BatchHeader, proposal: Proposal, *, epoch: int | None = None) -> PrePrepare:
    e = config.epoch if epoch is None else epoch
    return PrePrepare(sender, e, header, proposal, sign(sender, header.statement(StatementKind.PRE_PREPARE, sender)))


def null_pre_prepare(config: GroupConfig, sender: int, view: int, seq: int) -> PrePrepare:
    """A valid, empty batch: the cheapest different content a primary can sign for a slot."""
    proposal = Proposal((), ())
    return pre_prepare(config, sender, header_for(config, view, seq, proposal), proposal)


def resigned(config: GroupConfig, pp: PrePrepare, proposal: Proposal) -> PrePrepare:
    """The same slot and version table with other content, signed by the same primary."""
    header = header_for(config, pp.view, pp.seq, proposal, pp.header.model_versions_digest)
    return pre_prepare(config, pp.sender, header, proposal)


def view_change(config: GroupConfig, sender: int, new_view: int, prepared: Sequence[PreparedProof] = ()) -> ViewChange:
    unsigned = ViewChange(sender, config.epoch, new_view, 0, ZERO_DIGEST, (), tuple(prepared), b"")
    return replace(unsigned, signature=sign(sender, unsigned.statement(config.group_id)))


def new_view(config: GroupConfig, sender: int, view: int, changes: Sequence[ViewChange], pre_prepares: Sequence[PrePrepare]) -> NewView:
    unsigned = NewView(sender, config.epoch, view, tuple(changes), tuple(pre_prepares), b"")
    return replace(unsigned, signature=sign(sender, unsigned.statement(config.group_id)))


def flip_signature(message: M) -> M:
    signature = bytearray(getattr(message, "signature"))
    signature[0] ^= 0x01
    return replace(message, signature=bytes(signature))  # type: ignore[type-var]


def fingerprint(node: ConsensusNode) -> tuple[object, ...]:
    """Everything a rejected message must leave untouched: view, watermarks, executed state,
    the log (pre-prepares, prepare and commit senders), known vote batches, waiting proposals,
    pending control operations and checkpoint messages."""
    slots = tuple(
        (
            seq,
            None if slot.pre_prepare is None else slot.pre_prepare.header.batch_digest,
            tuple(sorted(slot.contents)),
            tuple(sorted((key, tuple(sorted(bucket))) for key, bucket in slot.prepares.items())),
            tuple(sorted((key, tuple(sorted(bucket))) for key, bucket in slot.commits.items())),
            slot.committed is not None,
            slot.executed,
        )
        for seq, slot in sorted(node.log.items())
    )
    checkpoints = tuple(
        (seq, digest, tuple(sorted(bucket)))
        for seq, by_digest in sorted(node.checkpoints.items())
        for digest, bucket in sorted(by_digest.items())
    )
    return (
        node.view,
        node.view_active,
        node.executed_seq,
        node.low,
        node.state.state_digest(),
        slots,
        tuple(sorted(node.vote_batches)),
        tuple(sorted(node.waiting)),
        tuple(sorted(node.pending_ops)),
        checkpoints,
        tuple(sorted(node.view_changes.get(node.view + 1, {}))),
        node.model_version,
    )
