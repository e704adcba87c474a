"""A deterministic world for the real consensus code: seeded network, clock, models and adversary.

Everything random comes from one `random.Random(seed)`: the group size, which replicas are
Byzantine and how, message delays, loss, duplication, reordering, partitions, crashes and
restarts, inference latency and when clients send requests. The same seed replays exactly.

The nodes are the product's `consensus.ConsensusNode` with real Ed25519 signatures; only the
network, the disk (a list of persisted records per replica), the models and the clock are
simulated. A Byzantine replica runs the real node too and tampers with what it sends.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from certs.batch import BatchHeader, ops_digest
from certs.config import GroupConfig, Member, ProtocolParams, TaskSchema
from certs.encoding import sha256
from certs.keys import Ed25519Verifier, KeyPair
from certs.merkle import root_of_hashes
from certs.outputs import ModelOutput, quantise
from certs.policy import AgreementPolicy, PolicyKind
from certs.request import InferenceRequest, TensorData

from certs.membership import Approval, JoinRequest, LeaveRequest
from consensus.errors import ByzantineMessageError, RequestRejectedError
from consensus.messages import (
    Checkpoint,
    Commit,
    JoinOp,
    LeaveOp,
    ModelUpdate,
    PeerMessage,
    PrePrepare,
    Prepare,
    Proposal,
    VoteBatch,
)
from consensus.node import ConsensusNode
from consensus.ready import (
    CommittedBatch,
    ConfigLinkRecord,
    VoteReservationRecord,
    CommittedRecord,
    PersistRecord,
    PreparedRecord,
    SignedRecord,
    StableCheckpointRecord,
    ViewRecord,
)
from consensus.state import merge_snapshots

NUM_CLASSES = 10
LABELS = tuple(str(i) for i in range(NUM_CLASSES))
FEATURES = 4

BYZANTINE_BEHAVIOURS = (
    "equivocate",  # as primary: different pre-prepares to different backups; conflicting votes too
    "wrong-votes",  # validly signed votes with wrong labels
    "random-votes",  # validly signed votes with random outputs
    "silent",  # sends nothing at all
    "forge",  # corrupts signatures on what it sends
    "replay",  # re-sends old messages, its own and others'
    "phantom-votes",  # votes for requests nobody sent
    "slow",  # everything it sends arrives very late
)

# Keys are the slow part of building a world; the same keys serve every seed.
# The busiest tick of seeds 0-59 delivered 383 messages; a storm grows without bound
STORM_EVENTS_PER_TICK = 20_000
# replica/node.py's QUIET_TICK_INTERVAL_S over the shipped tick_interval_ms
QUIET_TICKS = 20


class MessageStorm(AssertionError):
    pass


_KEYS = [KeyPair(hashlib.sha256(b"sim-key-%d" % i).digest()) for i in range(16)]
_OWNER_KEYS = [KeyPair(hashlib.sha256(b"sim-owner-%d" % i).digest()) for i in range(16)]


def sim_task() -> TaskSchema:
    return TaskSchema("x", (FEATURES,), "FP32", LABELS, NUM_CLASSES)


def make_config(n: int, policy: AgreementPolicy, params: ProtocolParams, group_id: str = "sim") -> GroupConfig:
    members = tuple(
        Member(i, f"owner-{i}", _KEYS[i].public_key, _OWNER_KEYS[i].public_key, f"sim:{i}", 1, sha256(b"weights-%d-1" % i))
        for i in range(n)
    )
    return GroupConfig(group_id, 0, (n - 1) // 3, members, sim_task(), policy, params)


def true_label(digest: bytes) -> int:
    return digest[0] % NUM_CLASSES


def honest_output(digest: bytes, replica_id: int, version: int) -> ModelOutput:
    """A heterogeneous but mostly right model: each replica and version errs on its own ~15 %
    of requests, and the probabilities differ between models."""
    h = hashlib.sha256(digest + bytes([replica_id, version % 256])).digest()
    label = true_label(digest)
    if h[0] < 38:
        label = h[1] % NUM_CLASSES
    weights = [1 + h[2 + i] % 7 for i in range(NUM_CLASSES)]
    weights[label] += 40 + h[15] % 30
    total = sum(weights)
    return quantise([w / total for w in weights], NUM_CLASSES)


@dataclass(order=True)
class _Event:
    time: int
    order: int
    action: Callable[[], None] = field(compare=False)


@dataclass
class SimStats:
    delivered: int = 0
    dropped: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    crashes: int = 0
    view_changes: int = 0


class World:
    def __init__(self, seed: int, *, n: int | None = None, faults: bool = True, byzantine: bool = True) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        rng = self.rng
        self.n = n or rng.choice((4, 4, 7))
        f = (self.n - 1) // 3
        policy = rng.choice(
            (AgreementPolicy(PolicyKind.PLURALITY), AgreementPolicy(PolicyKind.PLURALITY, 2 * f + 1), AgreementPolicy(PolicyKind.TRIMMED_MEAN))
        )
        params = ProtocolParams(
            inference_batch_max=rng.choice((4, 16)),
            proposal_size_max=rng.choice((8, 64)),
            vote_timeout_ticks=rng.choice((2, 5)),
            pipeline_depth=rng.choice((2, 4)),
            checkpoint_interval_batches=rng.choice((4, 8)),
            log_window_batches=rng.choice((8, 16)),
            view_change_timeout_ticks=rng.choice((60, 100)),
            relay_timeout_ticks=20,
        )
        if params.log_window_batches < params.checkpoint_interval_batches * 2:
            params = replace(params, log_window_batches=params.checkpoint_interval_batches * 2)
        self.config = make_config(self.n, policy, params)
        self.f = f
        self.verifier = Ed25519Verifier()
        self.byzantine: dict[int, str] = {}
        if byzantine:
            count = rng.randint(0, f)
            for rid in rng.sample(range(self.n), count):
                self.byzantine[rid] = rng.choice(BYZANTINE_BEHAVIOURS)
        self.correct = [r for r in range(self.n) if r not in self.byzantine]
        # network faults of the safety phase
        self.faults = faults
        self.loss = rng.choice((0.0, 0.01, 0.05)) if faults else 0.0
        self.duplication = rng.choice((0.0, 0.02)) if faults else 0.0
        self.delay_max_ticks = rng.choice((1, 3, 8)) if faults else 1
        self.crashes_enabled = faults and rng.random() < 0.5
        self.partitions_enabled = faults and rng.random() < 0.5
        self.cut: set[tuple[int, int]] = set()
        self.fault_summary = (
            f"loss={self.loss} dup={self.duplication} delay<={self.delay_max_ticks} "
            f"crashes={self.crashes_enabled} partitions={self.partitions_enabled}"
        )

        self.now = 0
        self._events: list[_Event] = []
        self._order = itertools.count()
        self.disks: dict[int, list[PersistRecord]] = {r: [] for r in range(self.n)}
        self.nodes: dict[int, ConsensusNode | None] = {}
        for r in range(self.n):
            self.nodes[r] = ConsensusNode(self.config, r, _KEYS[r].signer(), self.verifier)
        self.sent_log: dict[int, list[PeerMessage]] = {r: [] for r in range(self.n)}
        self.received_log: list[PeerMessage] = []
        self.committed: dict[int, dict[int, CommittedBatch]] = {r: {} for r in range(self.n)}
        self.requests: dict[tuple[str, str], InferenceRequest] = {}
        self.submitted_to_correct: dict[tuple[str, str], int] = {}  # key -> tick first sent to a correct replica
        self.recipients: dict[tuple[str, str], list[tuple[int, int]]] = {}  # key -> (replica, tick)
        # what a runtime's clients still wait on at each replica: submitted there since its last
        # start, neither in a batch it committed (certified there) nor reported executed_unseen
        self.waiting: dict[int, set[tuple[str, str]]] = {r: set() for r in range(self.n)}
        self.crash_ticks: dict[int, list[int]] = {r: [] for r in range(self.n)}
        self.stats = SimStats()
        self.evidence: list[object] = []
        self.model_versions: dict[int, int] = {r: 1 for r in range(self.n)}
        self.configs: dict[int, GroupConfig] = {0: self.config}  # every epoch's config
        self.join_points: dict[int, tuple[GroupConfig, GroupConfig, int]] = {}  # joined replica -> (config, previous, start)
        # replicas whose model version >= 2 always answers one class (to watch votes switch)
        self.constant_after_update: dict[int, int] = {}
        self.trace: list[str] = []
        self.touched: set[int] = set()  # replicas something reached since their last tick

    # -- scheduling ---------------------------------------------------------------------------
    def at(self, time: int, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, _Event(time, next(self._order), action))

    def run_until(self, end: int) -> None:
        while True:
            events = 0
            while self._events and self._events[0].time <= self.now:
                heapq.heappop(self._events).action()
                events += 1
                if events > STORM_EVENTS_PER_TICK:
                    # replicas answering each other without end: fail with the seed rather than run forever
                    raise MessageStorm(f"more than {STORM_EVENTS_PER_TICK} deliveries in tick {self.now}")
            if self.now >= end:
                return
            self.now += 1
            for r, node in self.nodes.items():
                if node is None:
                    continue
                # as the runtime does (replica/node.py, _tick_loop): a quiet node that nothing
                # reached since its last tick is ticked only every QUIET_TICKS, by the ticks passed
                elapsed_ticks = self.now - node.now
                if node.quiet() and r not in self.touched and elapsed_ticks < QUIET_TICKS:
                    continue
                node.tick(elapsed_ticks)
                self._drain(r)
                self.touched.discard(r)

    def _catch_up(self, r: int) -> None:
        """As the runtime does before handing anything to a core it left unticked while quiet:
        bring its clock up to now, so what it stamps on arrival is fresh."""
        node = self.nodes[r]
        if node is not None and node.now < self.now:
            node.tick(self.now - node.now)
            self._drain(r)

    # -- the runtime contract: persist, then send, run inference, deliver ----------------------
    def _drain(self, r: int) -> None:
        node = self.nodes[r]
        if node is None:
            return
        self.touched.add(r)
        ready = node.ready()
        self.disks[r].extend(ready.persist)
        for event in ready.events:
            if event.kind == "view-change":
                self.stats.view_changes += 1
            self.trace.append(f"t={self.now} r{r} {event.kind}: {event.detail}")
        self.evidence.extend(ready.evidence)
        for out in ready.messages:
            for message, targets in self._tamper(r, out.to, out.message):
                self.sent_log[r].append(message)
                for to in targets:
                    self._transmit(r, to, message)
        for batch in ready.inference:
            latency = 1 + self.rng.randint(0, 3)
            self.at(self.now + latency, lambda r=r, batch=batch: self._inference_done(r, batch))
        for batch in ready.committed:
            self.committed[r][batch.header.seq] = batch
            self.waiting[r].difference_update((e.leaf.client_id, e.leaf.request_id) for e in batch.proposal.entries)
        self.waiting[r].difference_update(ready.executed_unseen)
        for record in ready.config_links:
            config = record.link.config
            self.configs[config.epoch] = config
            for member in config.members:
                if member.replica_id not in self.nodes:
                    self._add_replica(member.replica_id, config, node.configs[config.epoch - 1], record.start_seq)

    def _targets(self, sender: int, to: int | None) -> list[int]:
        return [to] if to is not None else [r for r in self.nodes if r != sender]

    def _transmit(self, sender: int, to: int, message: PeerMessage, extra_delay: int = 0) -> None:
        if (sender, to) in self.cut:
            self.stats.dropped += 1
            return
        if self.rng.random() < self.loss:
            self.stats.dropped += 1
            return
        copies = 2 if self.rng.random() < self.duplication else 1
        for _ in range(copies):
            delay = 1 + self.rng.randint(0, self.delay_max_ticks - 1) + extra_delay
            if self.byzantine.get(sender) == "slow":
                delay += self.rng.randint(30, 200)
            self.at(self.now + delay, lambda to=to, message=message: self._deliver(sender, to, message))

    def _deliver(self, via: int, to: int, message: PeerMessage) -> None:
        node = self.nodes[to]
        if node is None:
            return
        self.stats.delivered += 1
        if self.byzantine.get(to) == "replay" and len(self.received_log) < 5000:
            self.received_log.append(message)
        try:
            self._catch_up(to)
            node.step(message, via=via)
        except ByzantineMessageError as exc:
            self.stats.rejected[exc.kind] = self.stats.rejected.get(exc.kind, 0) + 1
            if exc.sender in self.correct and to in self.correct and exc.kind not in ("stale", "outside-window", "future-epoch", "unknown-sender"):
                raise AssertionError(f"correct replica {to} rejected correct replica {exc.sender}: {exc}") from exc
        self._drain(to)

    def _inference_done(self, r: int, batch: object) -> None:
        node = self.nodes[r]
        from consensus.ready import InferenceBatch

        if node is None or not isinstance(batch, InferenceBatch):
            return
        if batch.batch_id not in node.inference_inflight:
            return  # the node restarted since
        outputs = [self.model_output(r, req, batch.model_version, space) for req, space in zip(batch.requests, batch.label_spaces)]
        node.executed(batch.batch_id, outputs)
        self._drain(r)

    def model_output(self, r: int, request: InferenceRequest, version: int, label_space: tuple[str, ...]) -> ModelOutput:
        if version >= 2 and r in self.constant_after_update:
            return ModelOutput(((self.constant_after_update[r], 10_000),))
        return honest_output(request.digest, r, version)

    # -- clients ------------------------------------------------------------------------------
    def make_request(self, index: int) -> InferenceRequest:
        data = hashlib.sha256(b"%d-%d" % (self.seed, index)).digest()[: FEATURES * 4]
        client = f"client-{index % 3}"
        return InferenceRequest(self.config.group_id, client, f"req-{index}", (TensorData("x", "FP32", (FEATURES,), data),))

    def submit(self, request: InferenceRequest, to: list[int], disseminate: bool) -> None:
        self.requests.setdefault(request.key, request)
        for r in to:
            node = self.nodes[r]
            if node is None:
                continue
            try:
                self._catch_up(r)
                outcome = node.submit(request, disseminate=disseminate)
            except RequestRejectedError:
                continue  # a replica that left the group refuses new requests
            if outcome.status != "executed":  # executed: answered from the store at once
                self.waiting[r].add(request.key)
            self.recipients.setdefault(request.key, []).append((r, self.now))
            if r in self.correct:
                self.submitted_to_correct.setdefault(request.key, self.now)
            self._drain(r)

    def submit_update(self, replica_id: int, version: int) -> None:
        op = ModelUpdate(self.config.group_id, replica_id, version, sha256(b"weights-%d-%d" % (replica_id, version)), b"")
        op = replace(op, owner_signature=_OWNER_KEYS[replica_id].signer().sign(op.signed_bytes()))
        node = self.nodes[replica_id]
        if node is not None:
            self._catch_up(replica_id)
            node.submit_control(op)
            self._drain(replica_id)

    # -- crashes --------------------------------------------------------------------------------
    def crash(self, r: int) -> None:
        if self.nodes[r] is None:
            return
        self.nodes[r] = None
        self.waiting[r].clear()  # its clients' calls failed with it
        self.crash_ticks[r].append(self.now)
        self.stats.crashes += 1
        self.trace.append(f"t={self.now} r{r} crashed")

    def restart(self, r: int) -> None:
        if self.nodes[r] is not None:
            return
        records = load_like_store(self.disks[r])
        if r in self.join_points:
            config, previous, start = self.join_points[r]
            self.nodes[r] = ConsensusNode(config, r, _KEYS[r].signer(), self.verifier, records=records, joined_at=(previous, start))
        else:
            self.nodes[r] = ConsensusNode(self.config, r, _KEYS[r].signer(), self.verifier, records=records)
        self.nodes[r].now = self.now
        self.trace.append(f"t={self.now} r{r} restarted at seq {self.nodes[r].executed_seq} view {self.nodes[r].view}")

    # -- membership --------------------------------------------------------------------------------
    def current_config(self) -> GroupConfig:
        return max(self.configs.values(), key=lambda c: c.epoch)

    def submit_join(self) -> None:
        """A new owner asks to join, approved by a quorum of current owners."""
        config = self.current_config()
        new_id = max(config.replica_ids) + 1
        if new_id >= len(_KEYS):
            return
        join = JoinRequest(
            config.group_id, config.epoch, f"owner-{new_id}", b"", b"", f"sim:{new_id}", 1, sha256(b"weights-%d-1" % new_id)
        ).signed(_OWNER_KEYS[new_id], _KEYS[new_id])
        approvals = tuple(
            Approval(config.group_id, config.epoch, join.digest, rid).signed(_OWNER_KEYS[rid])
            for rid in config.replica_ids[: config.quorum_size]
        )
        self._submit_op(JoinOp(join, approvals), f"join of replica {new_id}")

    def submit_leave(self, replica_id: int) -> None:
        config = self.current_config()
        if not config.is_member(replica_id):
            return
        leave = LeaveRequest(config.group_id, config.epoch, replica_id).signed(_OWNER_KEYS[replica_id])
        self._submit_op(LeaveOp(leave), f"leave of replica {replica_id}")

    def _submit_op(self, op: object, what: str) -> None:
        for r in self.correct:
            node = self.nodes.get(r)
            if node is None or node.retired:
                continue
            try:
                self._catch_up(r)
                node.submit_control(op)  # type: ignore[arg-type]
            except RequestRejectedError as exc:
                self.trace.append(f"t={self.now} {what} refused: {exc}")
                return
            self.trace.append(f"t={self.now} {what} submitted to r{r}")
            self._drain(r)
            return

    def _add_replica(self, rid: int, config: GroupConfig, previous: GroupConfig, start_seq: int) -> None:
        self.join_points[rid] = (config, previous, start_seq)
        self.disks[rid] = []
        self.sent_log[rid] = []
        self.committed[rid] = {}
        self.waiting[rid] = set()
        self.crash_ticks[rid] = []
        node = ConsensusNode(config, rid, _KEYS[rid].signer(), self.verifier, joined_at=(previous, start_seq))
        node.now = self.now
        self.nodes[rid] = node
        self.correct.append(rid)
        self.trace.append(f"t={self.now} r{rid} joined for epoch {config.epoch} from seq {start_seq + 1}")

    # -- Byzantine behaviour ------------------------------------------------------------------------
    def _tamper(self, r: int, to: int | None, message: PeerMessage) -> list[tuple[PeerMessage, list[int]]]:
        behaviour = self.byzantine.get(r)
        targets = self._targets(r, to)
        if behaviour is None or behaviour == "slow":
            return [(message, targets)]
        rng = self.rng
        signer = _KEYS[r].signer()
        if behaviour == "silent":
            return []
        if behaviour == "forge":
            if rng.random() < 0.5 and hasattr(message, "signature"):
                sig = bytearray(getattr(message, "signature"))
                if sig:
                    sig[rng.randrange(len(sig))] ^= 1 << rng.randrange(8)
                    return [(replace(message, signature=bytes(sig)), targets)]  # type: ignore[type-var]
            return [(message, targets)]
        if behaviour == "replay":
            out = [(message, targets)]
            history = self.sent_log[r] + self.received_log
            if history and rng.random() < 0.3:
                old = history[rng.randrange(len(history))]
                out.append((old, targets))
            return out
        if behaviour in ("wrong-votes", "random-votes") and isinstance(message, VoteBatch):
            entries = []
            for e in message.entries:
                if behaviour == "wrong-votes":
                    wrong = (true_label(e.request_digest) + 1 + rng.randrange(NUM_CLASSES - 1)) % NUM_CLASSES
                    output = ModelOutput(((wrong, 9_000), (true_label(e.request_digest), 1_000)))
                    if wrong > true_label(e.request_digest):
                        output = ModelOutput(((wrong, 9_000), (true_label(e.request_digest), 1_000)))
                else:
                    probs = [rng.random() for _ in range(NUM_CLASSES)]
                    total = sum(probs)
                    output = quantise([p / total for p in probs], NUM_CLASSES)
                entries.append(replace(e, output=output))
            forged = VoteBatch(r, message.epoch, message.batch_no, message.model_version, tuple(entries), b"")
            forged = replace(forged, signature=signer.sign(forged.statement(self.config.group_id).message()))
            return [(forged, targets)]
        if behaviour == "phantom-votes" and isinstance(message, VoteBatch):
            fake = [
                replace(message.entries[0], request_digest=hashlib.sha256(rng.randbytes(8)).digest(), request_id=f"phantom-{rng.randrange(10**6)}")
                for _ in range(min(3, self.config.params.inference_batch_max))
            ]
            phantom = VoteBatch(r, message.epoch, message.batch_no + 10**6 + rng.randrange(10**6), message.model_version, tuple(fake), b"")
            phantom = replace(phantom, signature=signer.sign(phantom.statement(self.config.group_id).message()))
            return [(message, targets), (phantom, targets)]
        if behaviour == "equivocate":
            if isinstance(message, PrePrepare) and len(targets) > 1:
                variant = self._variant_pre_prepare(r, message)
                if variant is not None:
                    half = rng.sample(targets, len(targets) // 2)
                    rest = [t for t in targets if t not in half]
                    return [(message, rest), (variant, half)]
            if isinstance(message, (Prepare, Commit)) and len(targets) > 1 and rng.random() < 0.5:
                other = replace(message, batch_digest=hashlib.sha256(message.batch_digest).digest(), signature=b"")
                other = replace(other, signature=signer.sign(other.statement(self.config.group_id).message()))
                half = rng.sample(targets, len(targets) // 2)
                return [(message, [t for t in targets if t not in half]), (other, half)]
            if isinstance(message, Checkpoint) and rng.random() < 0.5:
                other = replace(message, state_digest=hashlib.sha256(message.state_digest).digest())
                other = replace(other, signature=signer.sign(other.statement(self.config.group_id).message()))
                return [(message, targets[:1]), (other, targets[1:])]
        return [(message, targets)]

    def _variant_pre_prepare(self, r: int, pp: PrePrepare) -> PrePrepare | None:
        """The same slot, different content: drop the last request (still a valid proposal)."""
        entries = pp.proposal.entries[:-1]
        proposal = Proposal(entries, pp.proposal.ops)
        h = pp.header
        mv = h.model_versions_digest if entries else bytes(32)
        header = BatchHeader(h.group_id, h.epoch, h.config_digest, h.view, h.seq, root_of_hashes([e.leaf.hash for e in entries]), ops_digest([op.canonical() for op in proposal.ops]), mv, len(entries))
        if header.batch_digest == h.batch_digest:
            return None
        variant = PrePrepare(r, pp.epoch, header, proposal, b"")
        return replace(variant, signature=_KEYS[r].signer().sign(variant.statement().message()))


def load_like_store(records: list[PersistRecord]) -> list[PersistRecord]:
    """What replica/storage.py hands back after a restart: the latest stable checkpoint as one
    full snapshot, then everything else in the order it was written."""
    checkpoints = [r for r in records if isinstance(r, StableCheckpointRecord)]
    out: list[PersistRecord] = []
    if checkpoints:
        parts = []
        for record in checkpoints:
            if record.previous_seq == 0:
                parts = [record.snapshot]
            else:
                parts.append(record.snapshot)
        out.append(StableCheckpointRecord(merge_snapshots(parts), 0, checkpoints[-1].proof))
    links: dict[int, ConfigLinkRecord] = {}
    for record in records:
        if isinstance(record, ConfigLinkRecord):
            links[record.link.config.epoch] = record  # a later record for an epoch has more signatures
    out = [links[e] for e in sorted(links)] + out
    out.extend(r for r in records if isinstance(r, (SignedRecord, PreparedRecord, CommittedRecord, ViewRecord, VoteReservationRecord)))
    return out


def lost_with_crashes(world: World) -> list[InferenceRequest]:
    """Requests whose every recipient crashed after receiving them: nothing in the system need
    hold them any more, so their clients retry (with the same ids: exactly-once)."""
    lost = []
    for key, recipients in world.recipients.items():
        if all(any(t >= tick for t in world.crash_ticks[r]) for r, tick in recipients):
            lost.append(world.requests[key])
    return lost
