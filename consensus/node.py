"""The consensus node: execute-then-order PBFT as a pure, deterministic state machine.

Driven like etcd's raft: `submit`, `submit_control`, `executed`, `step` and `tick` change state;
`ready()` hands back what to persist, send, run and deliver (see consensus/ready.py). No I/O, no
clock, no randomness: time is `tick()`, signing and verification are injected.

Request path (DESIGN.md): every replica runs its model on every request it knows (inference
first) and broadcasts one signed VoteBatch per inference batch; the primary proposes requests
that have votes from a quorum of distinct replicas (waiting for the rest: `_waiting_for_votes`)
with the policy's decision for each; backups re-check every vote and recompute every decision;
PRE-PREPARE / PREPARE / COMMIT then order the batch (Castro and Liskov, OSDI '99, section 4.2),
checkpoints truncate the log (4.3), view changes replace a faulty primary (4.4).

Quorums are `config.quorum_size` (2f+1 for n = 3f+1). Section references are to that paper.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Callable

from certs.batch import BatchHeader, Leaf, VoteEntry, ops_digest
from certs.config import GroupConfig
from certs.encoding import Domain, digest
from certs.errors import CertificateError
from certs.evidence import Equivocation, decode_evidence, find_invalid_proposal, find_invalid_vote_batch, verify_evidence
from certs.membership import (
    ConfigLink,
    MembershipError,
    QuorumSigned,
    check_join,
    check_leave,
    link_message,
    next_config,
    verify_link,
)
from certs.keys import SignatureVerifier, Signer
from certs.merkle import root_of_hashes
from certs.outputs import ModelOutput, decision_space
from certs.policy import Vote, decide
from certs.request import InferenceRequest
from certs.statements import SignedStatement, Statement, StatementKind

from consensus.errors import ByzantineMessageError, LocalProtocolError, RequestRejectedError
from consensus.log import Slot
from consensus.messages import (
    Checkpoint,
    Commit,
    CommittedProof,
    ConfigSignature,
    ControlMessage,
    ControlOp,
    EvictOp,
    JoinOp,
    LeaveOp,
    FetchState,
    FetchVotes,
    ModelUpdate,
    NewView,
    PeerMessage,
    PrePrepare,
    Prepare,
    PreparedProof,
    Proposal,
    ProposalEntry,
    RequestMessage,
    StateReply,
    StateSnapshot,
    ViewChange,
    VoteBatch,
    VoteRef,
)
from consensus.ready import (
    Activation,
    ConfigLinkRecord,
    CommittedBatch,
    CommittedRecord,
    Event,
    InferenceBatch,
    Outbound,
    PersistRecord,
    PreparedRecord,
    Ready,
    SignedRecord,
    StableCheckpointRecord,
    ViewRecord,
    VoteReservationRecord,
)
from consensus.state import ZERO_DIGEST, CheckpointSummary, ReplicatedState, snapshot_digest
from consensus.viewchange import (
    check_checkpoint_proof,
    check_pre_prepare_signature,
    check_view_change,
    null_header,
    plan_new_view,
    proposal_matches_header,
)
from consensus.votes import PendingRequest, StoredVoteBatch, VoteKey, vote_key

# Bounds that protect memory against faulty peers; generous for correct ones.
VOTE_BATCHES_PER_VOTER_MAX = 4096
FETCH_BATCHES_MAX = 64
FUTURE_VIEWS_MAX = 8
VOTE_BATCH_VARIANTS_MAX = 8
VOTE_NUMBERS_RESERVED = 10_000  # vote batch numbers reserved per durable write
RELAY_WAIT_TIMEOUTS_MAX = 5  # a request this many relay timeouts old is relayed to every peer missing its vote
RELAY_DOUBLINGS_MAX = 3  # each wait between relays of a request doubles, up to 8 relay timeouts


@dataclass(frozen=True, slots=True)
class SubmitOutcome:
    """What happened to a submitted request: accepted now, already pending, or executed before."""

    status: str  # "accepted" | "pending" | "executed"
    seq: int = 0


# ByzantineMessageError kinds whose message proves, by itself and offline, that its signer broke
# the protocol (certs/evidence.py); the others depend on this replica's state or timing
PROPOSAL_EVIDENCE_KINDS = frozenset({"bad-decision", "too-few-votes", "duplicate-voter", "non-member-vote", "duplicate-request"})
VOTE_BATCH_EVIDENCE_KINDS = frozenset({"empty", "oversized", "duplicate-entry", "bad-vote"})


class ConsensusNode:
    def __init__(
        self,
        config: GroupConfig,
        replica_id: int,
        signer: Signer,
        verifier: SignatureVerifier,
        records: Sequence[PersistRecord] = (),
        *,
        joined_at: tuple[GroupConfig, int] | None = None,
    ) -> None:
        """`config` is the genesis config (or, for a replica that joined later, the config of
        the epoch it joined, with `joined_at` = (the previous epoch's config, the seq that epoch
        ended at)); later configs come back from `records`."""
        member = config.member(replica_id)
        if member is None:
            raise LocalProtocolError(f"replica {replica_id} is not a member of group {config.group_id}")
        if signer.public_key != member.public_key:
            raise LocalProtocolError(f"the signing key does not match replica {replica_id}'s key in the config")
        self.config = config
        self.params = config.params
        self.id = replica_id
        self._signer = signer
        self._verifier = verifier
        self.q = config.quorum_size
        self.n = config.n
        self.now = 0  # ticks

        self.view = 0
        self.view_active = True
        self.state = ReplicatedState(config)
        self.low = 0  # stable checkpoint = low watermark
        self.stable_digest = ZERO_DIGEST
        self.stable_proof: tuple[Checkpoint, ...] = ()
        self.summaries: dict[int, CheckpointSummary] = {0: self.state.summary()}
        self.log: dict[int, Slot] = {}
        self.next_seq = 1  # the next sequence number this replica proposes as primary
        self.last_proposal_tick = 0
        self.checkpoints: dict[int, dict[bytes, dict[int, Checkpoint]]] = {}

        self.pending: dict[VoteKey, PendingRequest] = {}
        self.by_request_key: dict[tuple[str, str], VoteKey] = {}
        # the requests (inputs included) this replica holds until they execute: what the
        # runtime's admission limits count (replica/node.py)
        self.held_requests = 0
        self.held_request_bytes = 0
        self.eligible: dict[VoteKey, None] = {}  # insertion order = order of reaching a quorum
        self.proposed: dict[tuple[str, str], int] = {}  # request key -> seq of an accepted pre-prepare
        self.inference_queue: deque[VoteKey] = deque()
        self.inference_queue_since: int | None = None
        self.inference_inflight: dict[int, tuple[int, list[VoteKey]]] = {}
        self._next_inference_id = 1
        self.last_inference_keys: list[VoteKey] = []  # the requests of the latest Triton call started
        self.vote_batches: dict[tuple[int, int], StoredVoteBatch] = {}
        # other batches a voter signed under one number (equivocation), newest last, bounded
        self.vote_batch_variants: dict[tuple[int, int], list[StoredVoteBatch]] = {}
        self.vote_batch_count: dict[int, int] = {}
        self.vote_batch_no = 0  # the last vote batch number this replica signed
        self.vote_batch_ceiling = 0  # numbers up to here are reserved on disk
        self.waiting: dict[tuple[int, int], tuple[PrePrepare, int]] = {}  # (view, seq) -> (pp, deadline)
        self.pending_ops: dict[tuple[object, ...], ControlOp] = {}
        # pending op key -> (tick of its last relay to the primary, relays so far): _relay_pending_ops
        self.op_relays: dict[tuple[object, ...], tuple[int, int]] = {}

        self.signed: dict[tuple[StatementKind, tuple[int, ...]], PeerMessage] = {}
        self.view_changes: dict[int, dict[int, ViewChange]] = {}
        self.new_views: dict[int, NewView] = {}
        self.view_change_attempts = 0
        self.view_change_deadline: int | None = None  # waiting for a NEW-VIEW until then
        self.retransmit_deadline = self.params.relay_timeout_ticks
        # peer -> the latest arrival tick here of a request that peer has voted for: a peer
        # whose votes have moved past a request without it most likely never got it, whereas
        # under load a peer that has not voted yet is usually just busy
        self.vote_progress: dict[int, int] = {}
        self.fetching_state_since: int | None = None
        self.fetch_targets: list[int] = []

        # every config this replica knows, by epoch, and the seq after which each epoch began
        self.configs: dict[int, GroupConfig] = {config.epoch: config}
        self.epoch_starts: dict[int, int] = {config.epoch: 0}
        self.config_signatures: dict[int, dict[int, bytes]] = {}  # epoch -> signer -> signature
        # the next epoch's config as peers showed it with too few signatures each: the valid
        # ones are pooled until a quorum vouches for it ((epoch, config digest) -> config and
        # signatures; each signer counts for the first config it was seen signing, so at most
        # one entry per signer). Where the epoch starts is taken from the peer whose link
        # completes the quorum, as from one that shows a whole link
        self.pooled_links: dict[tuple[int, bytes], tuple[GroupConfig, dict[int, bytes]]] = {}
        self.retired = False  # left the group (or was evicted): serves what it has, orders nothing
        self._ready = Ready()
        self.restored = False
        # waiting proposal -> how many rounds of fetching found its votes still disagreeing
        self.mismatch_rounds: dict[tuple[int, int], int] = {}
        self.helped: dict[int, int] = {}  # peer -> tick we last sent it our stable checkpoint
        # (low, messages that arrived after their seq was stable here): the slowest replicas'
        # CHECKPOINT at low, and their PREPAREs and COMMITs for the batches just below it, come
        # late in the normal case; a second copy of one is a retransmission, so its sender is
        # stuck there (keys: ("checkpoint", peer) and (kind, seq, peer))
        self.late_copies: tuple[int, set[tuple[object, ...]]] = (0, set())
        self._via: int | None = None  # the peer that handed over the message being stepped, if known
        self.shown_config_signatures: dict[int, int] = {}  # peer -> tick we last sent it our config signatures
        self.answered_view_change: dict[int, tuple[int, int]] = {}  # peer -> (view, tick) of our last answer to its old VIEW-CHANGE
        self.later_views: dict[int, set[int]] = {}  # view above ours -> replicas seen working in it
        self.asked_before_accusing: VoteKey | None = None  # the stalled request we fetched state for
        self.accuse_deadline = 0
        self.stable_ahead: tuple[int, list[int]] | None = None  # a quorum's checkpoint above our state
        self.last_execute_tick = 0
        self.reported_equivocations: set[tuple[int, StatementKind, tuple[int, ...]]] = set()
        self.reported_invalid: set[tuple[int, StatementKind, tuple[int, ...]]] = set()  # invalid proposals, vote batches
        self._handlers: dict[type, Callable[[PeerMessage], None]] = {
            RequestMessage: self._on_request,  # type: ignore[dict-item]
            ConfigSignature: self._on_config_signature,  # type: ignore[dict-item]
            ControlMessage: self._on_control,  # type: ignore[dict-item]
            VoteBatch: self._on_vote_batch,  # type: ignore[dict-item]
            PrePrepare: self._on_pre_prepare,  # type: ignore[dict-item]
            Prepare: self._on_prepare,  # type: ignore[dict-item]
            Commit: self._on_commit,  # type: ignore[dict-item]
            Checkpoint: self._on_checkpoint,  # type: ignore[dict-item]
            ViewChange: self._on_view_change,  # type: ignore[dict-item]
            NewView: self._on_new_view,  # type: ignore[dict-item]
            FetchVotes: self._on_fetch_votes,  # type: ignore[dict-item]
            FetchState: self._on_fetch_state,  # type: ignore[dict-item]
            StateReply: self._on_state_reply,  # type: ignore[dict-item]
        }
        if joined_at is not None:
            previous, start_seq = joined_at
            self.configs[previous.epoch] = previous
            self.epoch_starts[config.epoch] = start_seq
            # everything up to start_seq happened before this replica existed: fetch the
            # snapshot the previous epoch's replicas checkpointed there
            self.stable_ahead = (start_seq, list(previous.replica_ids))
            self.restored = True
        if records:
            self._restore(records)

    # =====================================================================================
    # public interface
    # =====================================================================================

    @property
    def primary(self) -> int:
        return self.config.primary(self.view)

    @property
    def is_primary(self) -> bool:
        return self.primary == self.id

    @property
    def executed_seq(self) -> int:
        return self.state.seq

    @property
    def model_version(self) -> int:
        return self.state.versions[self.id][0]

    def ready(self) -> Ready:
        """Drain what the runtime must do now (persist first, then send, run, deliver)."""
        ready, self._ready = self._ready, Ready()
        return ready

    def has_ready(self) -> bool:
        return bool(self._ready)

    def submit(self, request: InferenceRequest, *, disseminate: bool = False) -> SubmitOutcome:
        """A client request reached this replica. `disseminate`: relay it to the other replicas
        now (a client talking to this replica alone); a gateway that sends every request to all
        replicas passes False, and relaying happens only if votes fail to arrive in time."""
        if self.retired:
            raise RequestRejectedError(f"replica {self.id} left group {self.config.group_id} at epoch {self.config.epoch}")
        self._check_request(request)
        executed = self.state.executed.get(request.key)
        if executed is not None:
            seq, digest = executed
            if digest != request.digest:
                raise RequestRejectedError(
                    f"request id {request.request_id!r} of client {request.client_id!r} was used at seq {seq} "
                    f"for a different request"
                )
            return SubmitOutcome("executed", seq)
        known = self.by_request_key.get(request.key)
        if known is not None and known[0] != request.digest:
            raise RequestRejectedError(
                f"request id {request.request_id!r} of client {request.client_id!r} is already in use "
                f"by a different request"
            )
        pending = self._learn_request(request)
        if disseminate:
            self._send(None, RequestMessage(self.id, request))
            pending.last_relay_tick = self.now
        self._maybe_batch_inference()
        return SubmitOutcome("pending" if known is not None else "accepted")

    def knows_request(self, request: InferenceRequest) -> bool:
        """Whether this replica holds these ids already (waiting or executed): a client asking
        again adds nothing to hold, so admission limits let it through."""
        return request.key in self.by_request_key or request.key in self.state.executed

    def check_control(self, op: ControlOp) -> None:
        """Raise RequestRejectedError unless the group would order `op` now."""
        self._check_control(op)

    def submit_control(self, op: ControlOp) -> None:
        """An owner's model update, or a membership change, reached this replica: check it and
        have it ordered."""
        self._check_control(op)
        key = _op_key(op)
        if key not in self.pending_ops:
            self.pending_ops[key] = op
            self._send(None, ControlMessage(self.id, op))
        self._try_propose()

    def executed(self, batch_id: int, outputs: Sequence[ModelOutput]) -> None:
        """The runtime ran inference batch `batch_id`; `outputs` are in request order."""
        inflight = self.inference_inflight.get(batch_id)
        if inflight is None:
            raise LocalProtocolError(f"unknown inference batch {batch_id}")
        version, keys = inflight
        if len(outputs) != len(keys):
            raise LocalProtocolError(f"inference batch {batch_id}: {len(outputs)} outputs for {len(keys)} requests")
        del self.inference_inflight[batch_id]
        entries: list[VoteEntry] = []
        for key, output in zip(keys, outputs):
            pending = self.pending.get(key)
            if pending is None or pending.request_key in self.state.executed:
                continue  # executed meanwhile: nobody needs this vote
            pending.queued_version = None
            pending.voted_versions.add(version)
            entries.append(VoteEntry(key[1], key[2], key[0], key[3], output))
        if entries:
            self.vote_batch_no += 1
            if self.vote_batch_no > self.vote_batch_ceiling:
                self.vote_batch_ceiling = self.vote_batch_no + VOTE_NUMBERS_RESERVED
                self._persist(VoteReservationRecord(self.vote_batch_ceiling))
            batch = VoteBatch(self.id, self.config.epoch, self.vote_batch_no, version, tuple(entries), b"")
            signature = self._sign(batch.statement(self.config.group_id))
            batch = VoteBatch(self.id, self.config.epoch, self.vote_batch_no, version, tuple(entries), signature)
            self.signed[(StatementKind.VOTE_BATCH, (batch.batch_no,))] = batch
            self._send(None, batch)
            self._store_vote_batch(batch)
        # anything still needing a vote with the current version goes back in the queue
        for key in keys:
            self._queue_for_inference(key)
        self._maybe_batch_inference()
        self._try_propose()

    def inference_failed(self, batch_id: int) -> None:
        """The model could not answer batch `batch_id`; its requests will be tried again."""
        inflight = self.inference_inflight.pop(batch_id, None)
        if inflight is None:
            raise LocalProtocolError(f"unknown inference batch {batch_id}")
        for key in inflight[1]:
            pending = self.pending.get(key)
            if pending is not None:
                pending.queued_version = None
                self._queue_for_inference(key)
        self._maybe_batch_inference()

    def step(self, message: PeerMessage, via: int | None = None) -> None:
        """Handle a message from a peer. Raises ByzantineMessageError (naming the sender) for a
        message a correct peer would not send; the node's state is unaffected by it.

        `via` is the peer that transmitted the message when the runtime knows it. Signed
        messages are relayed (vote batches on request, proofs inside other messages), so an
        invalid signature is blamed on whoever handed it over, not on the replica it names."""
        self._via = via
        try:
            self._step(message)
        except ByzantineMessageError as exc:
            if via is not None and via != exc.sender and exc.kind == "bad-signature":
                raise ByzantineMessageError(via, exc.kind, f"relayed {exc.reason}") from exc
            raise
        finally:
            self._via = None

    def _step(self, message: PeerMessage) -> None:
        handler = self._handlers.get(type(message))
        if handler is None:
            raise LocalProtocolError(f"not a peer message: {type(message).__name__}")
        sender = message.sender
        if not self.config.is_member(sender) and not self._member_nearby(sender):
            epoch = getattr(message, "epoch", None)
            if isinstance(epoch, int) and epoch > self.config.epoch:
                self._check_epoch(sender, epoch, type(message).__name__)  # a member of an epoch we have not reached
            if epoch is None:
                # unsigned: perhaps a replica that joined in an epoch we have not reached yet
                raise ByzantineMessageError(sender, "unknown-sender", f"{type(message).__name__} from replica {sender}, not a member we know")
            raise ByzantineMessageError(sender, "non-member", f"{type(message).__name__} from a non-member")
        if self.retired and not isinstance(message, (FetchState, FetchVotes, ConfigSignature)):
            return  # out of the group: it only helps others catch up
        if sender == self.id:
            # peers relay signed messages (vote batches on request, proofs): ours may come back
            if isinstance(message, VoteBatch) and (sender, message.batch_no) not in self.vote_batches:
                handler(message)  # lost in a crash; the signature says it is ours
            # anything else claiming to be ours is a replay by someone else: nothing to learn
            return
        handler(message)

    def tick(self, elapsed_ticks: int = 1) -> None:
        """Advance the clock by `elapsed_ticks` (more than one when the runtime slept while the
        node was quiet; every timer compares `now` with a deadline, so one check after the jump
        fires what a check at each tick would have) and do what is due."""
        if elapsed_ticks < 1:
            raise ValueError(f"a tick advances the clock by at least 1, not {elapsed_ticks}")
        if self.retired:
            self.now += elapsed_ticks
            return
        if self.restored:
            # after a restart the group may have moved on: ask a peer straight away
            self.restored = False
            self._start_state_transfer(self._peers_rotated(self.id))
        self.now += elapsed_ticks
        self._maybe_batch_inference()
        self._try_propose()
        self._check_waiting()
        self._check_timers()

    def quiet(self) -> bool:
        """Nothing is under way that a timer must move along soon: no request pending, no
        inference queued or in flight, no proposal waiting for votes, no control operation to
        order, nothing in the log above what was executed, this replica's last checkpoint
        stable, and no view change or state transfer in progress. A quiet node only needs its
        periodic work (retransmission, garbage collection) now and then, so the runtime may tick
        it rarely, waking at once for anything that reaches it; any other state needs ticks at
        the protocol's resolution (batching delays and vote timeouts are a few ticks)."""
        # the runtime asks before every tick: stop at the first reason, unformatted beyond it
        return next(self._busy(), None) is None

    def busy_reasons(self) -> tuple[str, ...]:
        """What keeps this node from being quiet, one phrase each (empty when quiet)."""
        return tuple(self._busy())

    def _busy(self) -> Iterator[str]:
        if self.pending:
            yield f"{len(self.pending)} requests pending"
        if self.inference_queue or self.inference_inflight:
            yield "inference queued or in flight"
        if self.waiting:
            yield f"{len(self.waiting)} proposals waiting for votes"
        if self.pending_ops:
            yield f"{len(self.pending_ops)} control operations pending"
        if self.restored:
            yield "restored log not yet settled"
        if not self.view_active:
            yield f"view change to view {self.view} in progress"
        if self.fetching_state_since is not None:
            yield "state transfer in progress"
        if self.stable_ahead is not None and self.stable_ahead[0] > self.state.seq:
            yield f"behind a stable checkpoint at seq {self.stable_ahead[0]}"
        top = max((seq for seq, slot in self.log.items() if seq > self.state.seq and self._slot_in_play(slot)), default=0)
        if top:
            yield f"log holds seq {top} above executed seq {self.state.seq}"
        # ticking resends this replica's own checkpoint until it is stable. A replica that left
        # is no longer in the quorum that would make it stable, and one that replayed the
        # batch as a non-member (it joined later) signed none: resending can never help
        last = self._last_checkpoint_seq()
        if not self.retired and last > self.low and (StatementKind.CHECKPOINT, (last,)) in self.signed:
            yield f"checkpoint at seq {last} not stable (stable: {self.low})"

    def _slot_in_play(self, slot: Slot) -> bool:
        """Can timers move this unexecuted slot along? Yes if it was accepted in this view,
        committed, or voted on in this view (commits of any view certify). Not if all it holds
        is an earlier view's proposal and prepares that the new view did not propose again:
        such a slot waits for the next proposal at its seq, which only new traffic brings (its
        prepared proof, if any, still goes into this replica's next VIEW-CHANGE)."""
        return slot.pre_prepare is not None or slot.committed is not None or bool(slot.commits) or any(
            view >= self.view for view, _ in slot.prepares
        )

    # =====================================================================================
    # requests, inference and votes
    # =====================================================================================

    def _check_request(self, request: InferenceRequest) -> None:
        task = self.config.task
        if request.group_id != self.config.group_id:
            raise RequestRejectedError(f"request is for group {request.group_id!r}, this is {self.config.group_id!r}")
        if not request.client_id or not request.request_id:
            raise RequestRejectedError("client_id and request_id must not be empty")
        # size first: an oversized request is refused as such, whatever else is wrong with it
        if request.size_bytes > self.params.request_size_max_bytes:
            raise RequestRejectedError(f"request of {request.size_bytes} bytes exceeds {self.params.request_size_max_bytes}")
        if len(request.inputs) != 1:
            raise RequestRejectedError(f"expected exactly one input, {task.input_name!r}; got {len(request.inputs)}")
        tensor = request.inputs[0]
        if tensor.name != task.input_name:
            raise RequestRejectedError(f"unknown input {tensor.name!r}; expected {task.input_name!r}")
        if tensor.datatype != task.input_datatype:
            raise RequestRejectedError(f"input {tensor.name!r} has datatype {tensor.datatype}, expected {task.input_datatype}")
        if tuple(tensor.shape) != task.input_shape:
            raise RequestRejectedError(f"input {tensor.name!r} has shape {list(tensor.shape)}, expected {list(task.input_shape)}")
        if len(tensor.data) != task.input_size_bytes:
            raise RequestRejectedError(f"input {tensor.name!r} has {len(tensor.data)} bytes, expected {task.input_size_bytes}")
        if request.label_mapping:
            try:
                decision_space(task.class_labels, dict(request.label_mapping))
            except ValueError as exc:
                raise RequestRejectedError(str(exc)) from exc

    def _label_space(self, request: InferenceRequest) -> tuple[str, ...]:
        if not request.label_mapping:
            return ()
        return decision_space(self.config.task.class_labels, dict(request.label_mapping))

    def _learn_request(self, request: InferenceRequest) -> PendingRequest:
        key: VoteKey = (request.digest, request.client_id, request.request_id, self._label_space(request))
        pending = self.pending.get(key)
        if pending is None:
            pending = PendingRequest(key, self.now)
            self.pending[key] = pending
        if pending.request is None:
            pending.request = request
            self.held_requests += 1
            self.held_request_bytes += request.size_bytes
            self.by_request_key.setdefault(request.key, key)
            self._queue_for_inference(key)
        return pending

    def _queue_for_inference(self, key: VoteKey) -> None:
        """Queue a request for this replica's model unless it has a vote with the version in effect."""
        pending = self.pending.get(key)
        if pending is None or pending.request is None or pending.request_key in self.state.executed:
            return
        version = self.model_version
        if version in pending.voted_versions or pending.queued_version == version:
            return
        if pending.queued_version is not None:
            return  # in flight with an older version; re-queued when it comes back
        pending.queued_version = version
        if not self.inference_queue:
            self.inference_queue_since = self.now
        self.inference_queue.append(key)

    def _maybe_batch_inference(self) -> None:
        params = self.params
        while self.inference_queue and len(self.inference_inflight) < params.inference_inflight_max:
            since = self.inference_queue_since
            waited = self.now - (self.now if since is None else since)
            if len(self.inference_queue) < params.inference_batch_max and waited < params.inference_batch_delay_ticks:
                # A lone request waits for company while the model is busy, or while the last
                # Triton call's requests are still being ordered (Nagle's rule, "acknowledged"
                # meaning executed): under load the model is often idle while ordering keeps the
                # cores busy, and starting at once made every Triton call, vote batch and ordered
                # batch a few rows. At concurrency 1 the last call has executed: no wait.
                if self.inference_inflight or self._last_inference_unexecuted():
                    return
            version = self.model_version
            keys: list[VoteKey] = []
            requests: list[InferenceRequest] = []
            while self.inference_queue and len(keys) < params.inference_batch_max:
                key = self.inference_queue.popleft()
                pending = self.pending.get(key)
                if pending is None or pending.request is None or pending.request_key in self.state.executed:
                    continue
                pending.queued_version = version
                keys.append(key)
                requests.append(pending.request)
            self.inference_queue_since = self.now if self.inference_queue else None
            if not keys:
                continue
            batch_id = self._next_inference_id
            self._next_inference_id += 1
            self.inference_inflight[batch_id] = (version, keys)
            self.last_inference_keys = keys
            self._ready.inference.append(
                InferenceBatch(batch_id, version, tuple(requests), tuple(key[3] for key in keys))
            )

    def _last_inference_unexecuted(self) -> bool:
        """Whether a request of this replica's last Triton call has its vote and is not yet
        executed (one queued again, after a failed call or a model update, does not count)."""
        executed = self.state.executed
        for key in self.last_inference_keys:
            pending = self.pending.get(key)
            if pending is not None and pending.queued_version is None and pending.request_key not in executed:
                return True
        return False

    def _on_request(self, message: RequestMessage) -> None:
        try:
            self._check_request(message.request)
        except RequestRejectedError as exc:
            raise ByzantineMessageError(message.sender, "bad-request", str(exc)) from exc
        if message.request.key in self.state.executed:
            return
        known = self.by_request_key.get(message.request.key)
        if known is not None and known[0] != message.request.digest:
            return  # a conflicting request id: the first one this replica saw wins
        self._learn_request(message.request)
        self._maybe_batch_inference()

    def _on_vote_batch(self, batch: VoteBatch) -> None:
        try:
            self._take_vote_batch(batch)
        except ByzantineMessageError as exc:
            if exc.kind in VOTE_BATCH_EVIDENCE_KINDS and exc.sender == batch.sender:
                self._invalid_vote_batch(batch)
            raise

    def _take_vote_batch(self, batch: VoteBatch) -> None:
        sender = batch.sender
        self._check_epoch(sender, batch.epoch, "vote batch")
        if not batch.entries:
            raise ByzantineMessageError(sender, "empty", "empty vote batch")
        if len(batch.entries) > self.params.inference_batch_max:
            raise ByzantineMessageError(sender, "oversized", f"vote batch of {len(batch.entries)} entries")
        if len({entry.request_digest for entry in batch.entries}) != len(batch.entries):
            raise ByzantineMessageError(sender, "duplicate-entry", "vote batch votes twice on one request")
        ref = (sender, batch.batch_no)
        existing = self.vote_batches.get(ref)
        if existing is not None and self._same_batch(existing.batch, batch):
            return  # a retransmission
        variants = self.vote_batch_variants.get(ref, [])
        if any(self._same_batch(v.batch, batch) for v in variants):
            return
        statement = batch.statement(self.config.group_id)
        self._verify(sender, statement, batch.signature, "vote batch")
        for entry in batch.entries:
            self._check_output(sender, entry)
        if existing is not None:
            # the voter signed two batches under one number. Keep this one too (a primary may
            # have built its proposal on it); the pair is evidence against the voter.
            by_digest = {entry.request_digest: entry for entry in batch.entries}
            variants.append(StoredVoteBatch(batch, by_digest, self.now))
            self.vote_batch_variants[ref] = variants[-VOTE_BATCH_VARIANTS_MAX:]
            self._recheck_waiting()
            self._equivocation(existing.batch.statement(self.config.group_id), existing.batch.signature, statement, batch.signature)
            raise ByzantineMessageError(sender, "equivocation", f"two different vote batches numbered {batch.batch_no}")
        self._store_vote_batch(batch)
        self._recheck_waiting()
        self._try_propose()

    @staticmethod
    def _same_batch(a: VoteBatch, b: VoteBatch) -> bool:
        return a.entries_root == b.entries_root and a.model_version == b.model_version and len(a.entries) == len(b.entries)

    def _check_output(self, sender: int, entry: VoteEntry) -> None:
        classes = len(entry.label_space) if entry.label_space else len(self.config.task.class_labels)
        try:
            entry.output.check(classes, min(self.config.task.top_k, classes))
        except ValueError as exc:
            raise ByzantineMessageError(sender, "bad-vote", f"request {entry.request_id!r}: {exc}") from exc

    def _store_vote_batch(self, batch: VoteBatch) -> None:
        count = self.vote_batch_count.get(batch.sender, 0)
        if count >= VOTE_BATCHES_PER_VOTER_MAX:
            self._gc_votes(force_voter=batch.sender)
        self.vote_batch_count[batch.sender] = self.vote_batch_count.get(batch.sender, 0) + 1
        by_digest = {entry.request_digest: entry for entry in batch.entries}
        self.vote_batches[(batch.sender, batch.batch_no)] = StoredVoteBatch(batch, by_digest, self.now)
        progress = self.vote_progress.get(batch.sender, -1)
        for entry in batch.entries:
            key = vote_key(entry)
            if (entry.client_id, entry.request_id) in self.state.executed:
                continue
            pending = self.pending.get(key)
            if pending is None:
                pending = PendingRequest(key, self.now)
                self.pending[key] = pending
            elif pending.request is not None and pending.first_tick > progress:
                progress = pending.first_tick
            pending.add_vote(batch.sender, batch.model_version, batch.batch_no)
            if pending.quorum_tick is None and len(pending.votes) >= self.q:
                pending.quorum_tick = self.now
                self.eligible[key] = None
        self.vote_progress[batch.sender] = progress

    def _gc_votes(self, force_voter: int | None = None) -> None:
        """Forget vote batches nobody can still use: all their requests executed, or (when a voter
        floods us) its oldest batches."""
        executed = self.state.executed
        retention_ticks = self._vote_retention_ticks()
        referenced = {
            (ref.voter, ref.batch_no)
            for pp, _ in self.waiting.values()
            for entry in pp.proposal.entries
            for ref in entry.refs
        }
        for slot in self.log.values():
            if not slot.executed:
                for pp in slot.contents.values():
                    referenced.update((r.voter, r.batch_no) for e in pp.proposal.entries for r in e.refs)
        for ref, stored in list(self.vote_batches.items()):
            if ref in referenced:
                continue
            done = all((e.client_id, e.request_id) in executed for e in stored.batch.entries)
            stale = self.now - stored.arrival_tick > retention_ticks
            if done or stale:
                del self.vote_batches[ref]
                self.vote_batch_variants.pop(ref, None)
                self.vote_batch_count[ref[0]] -= 1
        if force_voter is not None and self.vote_batch_count.get(force_voter, 0) >= VOTE_BATCHES_PER_VOTER_MAX:
            oldest = sorted(ref for ref in self.vote_batches if ref[0] == force_voter and ref not in referenced)
            for ref in oldest[: len(oldest) // 2]:
                del self.vote_batches[ref]
                self.vote_batch_variants.pop(ref, None)
                self.vote_batch_count[force_voter] -= 1
        for key, pending in list(self.pending.items()):
            if pending.request_key in executed:
                self._forget_pending(key)
                continue
            if pending.request is not None:
                continue
            # known only through votes: keep it only while some stored batch still votes for it
            for voter in list(pending.votes):
                kept = {v: b for v, b in pending.votes[voter].items() if (voter, b) in self.vote_batches}
                if kept:
                    pending.votes[voter] = kept
                else:
                    del pending.votes[voter]
            if not pending.votes or self.now - pending.first_tick > retention_ticks:
                self._forget_pending(key)

    def _vote_retention_ticks(self) -> int:
        return 20 * self.params.view_change_timeout_ticks

    def _forget_pending(self, key: VoteKey) -> None:
        pending = self.pending.pop(key, None)
        self.eligible.pop(key, None)
        if pending is None:
            return
        if pending.request is not None:
            self.held_requests -= 1
            self.held_request_bytes -= pending.request.size_bytes
        if self.by_request_key.get(pending.request_key) == key:
            del self.by_request_key[pending.request_key]

    # =====================================================================================
    # control operations
    # =====================================================================================

    def _check_control(self, op: ControlOp) -> None:
        if not isinstance(op, ModelUpdate):
            self._check_membership(op)
            return
        member = self.config.member(op.replica_id)
        if op.group_id != self.config.group_id:
            raise RequestRejectedError(f"model update is for group {op.group_id!r}")
        if member is None:
            raise RequestRejectedError(f"model update for replica {op.replica_id}, which is not a member")
        if len(op.weights_digest) != 32:
            raise RequestRejectedError("weights digest must be 32 bytes")
        if not self._verifier.verify(member.owner_public_key, op.signed_bytes(), op.owner_signature):
            raise RequestRejectedError(
                f"model update for replica {op.replica_id} is not signed by that replica's owner"
            )
        latest = self.state.latest_version(op.replica_id)
        if op.new_version <= latest:
            raise RequestRejectedError(
                f"model update to version {op.new_version} for replica {op.replica_id}: "
                f"version {latest} is already ordered (replayed or older update)"
            )

    def _check_membership(self, op: ControlOp) -> None:
        """Raise RequestRejectedError unless a join, leave or eviction may be ordered now."""
        config = self.config
        try:
            if isinstance(op, JoinOp):
                check_join(config, op.join, op.approvals, self._verifier)
                next_config(config, [op.join], [])
            elif isinstance(op, LeaveOp):
                check_leave(config, op.leave, self._verifier)
            elif isinstance(op, EvictOp):
                if (op.group_id, op.epoch) != (config.group_id, config.epoch):
                    raise MembershipError(f"eviction is for group {op.group_id!r} epoch {op.epoch}")
                if not config.is_member(op.replica_id):
                    raise MembershipError(f"replica {op.replica_id} is not a member")
                accused = verify_evidence(decode_evidence(op.evidence), config, verifier=self._verifier)
                if op.replica_id not in accused:
                    raise MembershipError(f"the evidence does not accuse replica {op.replica_id} (it accuses {list(accused)})")
                next_config(config, [], [op.replica_id])
            else:
                raise MembershipError(f"unsupported control operation {type(op).__name__}")
        except CertificateError as exc:  # MembershipError and evidence that does not verify
            raise RequestRejectedError(str(exc)) from exc
        if self.state.epoch_change is not None:
            raise RequestRejectedError(
                f"a membership change already takes effect at seq {self.state.epoch_change.seq}; submit again after it"
            )

    def _on_control(self, message: ControlMessage) -> None:
        op = message.op
        if isinstance(op, ModelUpdate) and self.config.is_member(op.replica_id) and op.new_version <= self.state.latest_version(op.replica_id):
            # ordered already: a late copy or a replay, harmless either way
            raise ByzantineMessageError(message.sender, "stale", f"model update to version {op.new_version} is already ordered")
        if isinstance(op, ModelUpdate) and not self.config.is_member(op.replica_id) and any(c.is_member(op.replica_id) for c in self.configs.values()):
            # relayed by a replica still in the epoch that removed op's replica: late, not faulty
            raise ByzantineMessageError(message.sender, "stale", f"model update for replica {op.replica_id}, which has left the group")
        op_epoch = _membership_epoch(op)
        if (op_epoch is not None and op_epoch < self.config.epoch) or (not isinstance(op, ModelUpdate) and self.state.epoch_change is not None):
            raise ByzantineMessageError(message.sender, "stale", "membership change for an epoch already closing or closed")
        try:
            self._check_control(message.op)
        except RequestRejectedError as exc:
            raise ByzantineMessageError(message.sender, "bad-control", str(exc)) from exc
        self.pending_ops.setdefault(_op_key(message.op), message.op)
        self._try_propose()

    # =====================================================================================
    # proposing (primary)
    # =====================================================================================

    def _in_window(self, seq: int) -> bool:
        change = self.state.epoch_change
        if change is not None and seq > change.seq:
            return False  # the epoch ends at change.seq: later batches belong to the next one
        return self.low < seq <= self.low + self.params.log_window_batches

    def _choose_votes(self, pending: PendingRequest, table: dict[int, tuple[int, bytes]]) -> list[tuple[int, int, int]]:
        """(voter, version, batch_no) of the votes usable at a seq with version table `table`."""
        chosen: list[tuple[int, int, int]] = []
        for voter in sorted(pending.votes):
            version = table.get(voter, (0, b""))[0]
            batch_no = pending.votes[voter].get(version)
            if batch_no is not None and (voter, batch_no) in self.vote_batches:
                chosen.append((voter, version, batch_no))
        return chosen

    def _build_entry(self, pending: PendingRequest, chosen: list[tuple[int, int, int]]) -> ProposalEntry:
        votes: list[Vote] = []
        refs: list[VoteRef] = []
        for voter, version, batch_no in chosen:
            entry = self.vote_batches[(voter, batch_no)].by_digest[pending.digest]
            votes.append(Vote(voter, version, entry.output))
            refs.append(VoteRef(voter, batch_no))
        classes = len(pending.label_space) or len(self.config.task.class_labels)
        decision = decide(self.config.policy, self.config.f, self.q, votes, min(self.config.task.top_k, classes))
        client_id, request_id = pending.request_key
        leaf = Leaf(
            pending.digest,
            client_id,
            request_id,
            pending.label_space,
            self.config.policy.describe(self.config.f),
            tuple(votes),
            decision,
        )
        return ProposalEntry(leaf, tuple(refs))

    def _waiting_for_votes(self, pending: PendingRequest, chosen: list[tuple[int, int, int]]) -> bool:
        """Whether the primary holds a request that has a quorum of votes for the rest: for
        `vote_timeout_ticks` after the quorum, then up to `vote_wait_max_ticks` while a missing
        voter is only a little behind (the newest request it voted on came less than
        `vote_wait_max_ticks` before this one, by when this replica learned each, and none
        after). Under load an honest replica's vote often comes 50-150 ms after the quorum's
        (its busy event loop, then its Triton call), and a vote left out costs its owner the
        fee and auditors the evidence. Not waited for: a voter that voted past this request
        (it never got it), one that crashed or stalled, and one working off a backlog after a
        stall (its votes on long-executed requests do not move it on). A Byzantine voter holds
        a request no longer than the cap."""
        params = self.params
        waited = self.now - (pending.quorum_tick or 0)
        if waited < params.vote_timeout_ticks:
            return True
        if waited >= params.vote_wait_max_ticks:
            return False
        voted = {voter for voter, _, _ in chosen}
        for voter in self.config.replica_ids:
            if voter not in voted:
                progress = self.vote_progress.get(voter, -1)
                if progress >= 0 and 0 <= pending.first_tick - progress < params.vote_wait_max_ticks:
                    return True
        return False

    def _try_propose(self) -> None:
        if not (self.view_active and self.is_primary):
            return
        params = self.params
        while True:
            seq = self.next_seq
            if not self._in_window(seq) or seq - self.state.seq > params.pipeline_depth:
                return
            if self.state.seq < seq - params.log_window_batches or not self._knows_batches_before(seq):
                return  # the version table or the batches before seq are not known yet
            table = self.state.versions_at(seq)
            ready: list[tuple[PendingRequest, list[tuple[int, int, int]]]] = []
            taken: set[tuple[str, str]] = set()
            waiting_for_more = False
            oldest_tick: int | None = None
            for key in list(self.eligible):
                pending = self.pending.get(key)
                if pending is None:
                    self.eligible.pop(key, None)
                    continue
                request_key = pending.request_key
                if request_key in self.state.executed:
                    self._forget_pending(key)
                    continue
                if request_key in self.proposed or request_key in taken:
                    continue
                chosen = self._choose_votes(pending, table)
                if len(chosen) < self.q:
                    continue
                if len(chosen) < self.n and self._waiting_for_votes(pending, chosen):
                    waiting_for_more = True
                    continue
                ready.append((pending, chosen))
                taken.add(request_key)
                if oldest_tick is None:
                    oldest_tick = pending.quorum_tick or 0  # eligible is in quorum order
                if len(ready) >= params.proposal_size_max:
                    break
            ops = self._ops_to_propose()
            # keep ordering (empty) batches while an activation or epoch change is due and
            # nothing else is: they take effect at a sequence number, not at a time. While
            # requests are about, their batches carry it there; an empty one goes only after
            # the longest a request may wait for its votes (vote_wait_max_ticks) without a
            # proposal. Every empty batch is a full round for nothing on the cores that serve:
            # after a vote timeout (30 ms) instead, the gaps of a closed loop of 8 calls got one
            # for every two or three real batches, and the group certified 10-20 % less while
            # an update was due (tests/bench/bench_update.py)
            due = bool(self.state.scheduled) or self.state.epoch_change is not None
            idle_with_activation = (
                not ready and not ops and not waiting_for_more and due and seq == self.state.seq + 1
                and (not self.pending or self.now - self.last_proposal_tick >= params.vote_wait_max_ticks)
            )
            if not ready and not ops and not idle_with_activation:
                return
            inflight = seq - 1 - self.state.seq
            if ready and not ops and inflight > 0 and len(ready) < params.proposal_size_max // 4:
                if self.now - (oldest_tick or 0) < 1:
                    return  # let a few more join; the pipeline is busy anyway
            # only now build the leaves (decisions, hashes): the costly part
            entries = [self._build_entry(pending, chosen) for pending, chosen in ready]
            self._propose(seq, Proposal(tuple(entries), ops), table)

    def _rebuild_proposed(self) -> None:
        self.proposed.clear()
        for seq, slot in self.log.items():
            if slot.executed:
                continue
            for pp in (slot.pre_prepare, slot.committed[0] if slot.committed else None):
                if pp is not None:
                    for entry in pp.proposal.entries:
                        self.proposed[(entry.leaf.client_id, entry.leaf.request_id)] = seq

    def _knows_batches_before(self, seq: int) -> bool:
        """A primary must know every batch between what it executed and `seq`, or it could
        propose a request a quorum already ordered there."""
        for s in range(self.state.seq + 1, seq):
            slot = self.log.get(s)
            if slot is None or (slot.pre_prepare is None and slot.committed is None):
                return False
        return True

    def _ops_to_propose(self) -> tuple[ControlOp, ...]:
        ops: list[ControlOp] = []
        membership = self.state.epoch_change is not None or any(
            not isinstance(op, ModelUpdate) for op in self._ops_in_flight()
        )
        for key, op in sorted(self.pending_ops.items(), key=lambda item: repr(item[0])):
            if self._op_in_flight(op):
                continue
            if isinstance(op, ModelUpdate):
                # checked again as every backup will check it: an update taken while its replica
                # was a member can outlive that membership (an epoch change removed the replica)
                try:
                    self._check_control(op)
                except RequestRejectedError:
                    del self.pending_ops[key]  # it can never become valid again
                    continue
                ops.append(op)
            elif not membership:
                try:
                    self._check_membership(op)
                except RequestRejectedError:
                    continue
                ops.append(op)
                membership = True  # one membership change at a time
        return tuple(ops)

    def _drop_overtaken_updates(self) -> None:
        """A pending update to a version at or below one already ordered for its replica (a
        later update went first) can never be ordered: the primary drops it when it would
        propose it, and every other replica drops it here, as soon as it learns the version it
        lost to. Kept, it would hold this node out of quiet() for good."""
        for key, op in list(self.pending_ops.items()):
            if isinstance(op, ModelUpdate) and op.new_version <= self.state.latest_version(op.replica_id):
                del self.pending_ops[key]

    def _ops_in_flight(self) -> list[ControlOp]:
        return [
            op for slot in self.log.values() if not slot.executed for pp in slot.contents.values() for op in pp.proposal.ops
        ]

    def _op_in_flight(self, op: ControlOp) -> bool:
        for slot in self.log.values():
            if slot.executed:
                continue
            for pp in slot.contents.values():
                if op in pp.proposal.ops:
                    return True
        return False

    def _propose(self, seq: int, proposal: Proposal, table: dict[int, tuple[int, bytes]]) -> None:
        from certs.batch import model_versions_digest

        self.last_proposal_tick = self.now

        mv_digest = (
            model_versions_digest([(rid, v, wd) for rid, (v, wd) in table.items()]) if proposal.entries else ZERO_DIGEST
        )
        header = BatchHeader(
            self.config.group_id,
            self.config.epoch,
            self.config.digest,
            self.view,
            seq,
            root_of_hashes([e.leaf.hash for e in proposal.entries]),
            ops_digest([op.canonical() for op in proposal.ops]),
            mv_digest,
            len(proposal.entries),
        )
        pp = self._signed_pre_prepare(header, proposal)
        if pp is None:
            return
        self.next_seq = seq + 1
        self._send(None, pp)
        self._accept_pre_prepare(pp)

    def _signed_pre_prepare(self, header: BatchHeader, proposal: Proposal) -> PrePrepare | None:
        statement = header.statement(StatementKind.PRE_PREPARE, self.id)
        previous = self.signed.get((StatementKind.PRE_PREPARE, statement.slot))
        if previous is not None:
            if isinstance(previous, PrePrepare) and previous.header.batch_digest == header.batch_digest:
                return previous
            return None  # never sign two batches for one slot, even after a restart
        pp = PrePrepare(self.id, self.config.epoch, header, proposal, self._sign(statement))
        self._record_signed(StatementKind.PRE_PREPARE, statement.slot, pp)
        return pp

    # =====================================================================================
    # normal case: pre-prepare, prepare, commit (section 4.2)
    # =====================================================================================

    def _slot(self, seq: int) -> Slot:
        slot = self.log.get(seq)
        if slot is None:
            slot = Slot(seq, self.now)
            self.log[seq] = slot
        return slot

    def _on_pre_prepare(self, pp: PrePrepare) -> None:
        sender = pp.sender
        header = pp.header
        self._check_epoch(sender, pp.epoch, "pre-prepare")
        if header.epoch != pp.epoch:
            raise ByzantineMessageError(sender, "wrong-epoch", f"pre-prepare for epoch {pp.epoch} carries a header of epoch {header.epoch}")
        if (header.group_id, header.config_digest) != (self.config.group_id, self.config.digest):
            raise ByzantineMessageError(sender, "wrong-config", "pre-prepare names another group or config")
        if sender != self.config.primary(pp.view):
            raise ByzantineMessageError(sender, "not-primary", f"pre-prepare for view {pp.view} from a backup")
        if pp.view < self.view:
            raise ByzantineMessageError(sender, "stale", f"pre-prepare for old view {pp.view}")
        if pp.view > self.view or not self.view_active:
            if pp.view > self.view and self._verifier.verify(self.config.public_key(sender) or b"", pp.statement().message(), pp.signature):
                self._note_later_view(sender, pp.view)
            return  # a view this replica has not entered: the NEW-VIEW will carry what matters
        if not self._in_window(pp.seq):
            if pp.seq <= self.low:
                self._help_behind(sender)
                raise ByzantineMessageError(sender, "stale", f"pre-prepare for seq {pp.seq} below the watermark")
            self._start_state_transfer([sender])
            raise ByzantineMessageError(sender, "outside-window", f"pre-prepare for seq {pp.seq} above the watermark")
        if not self._verifier.verify(self.config.public_key(sender) or b"", pp.statement().message(), pp.signature):
            raise ByzantineMessageError(sender, "bad-signature", f"pre-prepare for seq {pp.seq}")
        slot = self.log.get(pp.seq)
        if pp.seq <= self.state.seq:
            # already executed here (perhaps through state transfer): take part only if it is
            # the batch this replica executed, so slower peers can still gather a quorum
            if slot is None:
                return
            accepted = slot.pre_prepare
            if accepted is not None and accepted.view == pp.view and accepted.header.batch_digest != header.batch_digest:
                self._equivocation(accepted.statement(), accepted.signature, pp.statement(), pp.signature)
                raise ByzantineMessageError(sender, "equivocation", f"two pre-prepares for view {pp.view} seq {pp.seq}")
            if slot.committed is not None and slot.committed[0].header.batch_digest == header.batch_digest and accepted is None:
                self._accept_pre_prepare(pp)
            return
        if slot is not None and slot.pre_prepare is not None and slot.pre_prepare.view == pp.view:
            if slot.pre_prepare.header.batch_digest == header.batch_digest:
                return  # a retransmission
            self._equivocation(slot.pre_prepare.statement(), slot.pre_prepare.signature, pp.statement(), pp.signature)
            raise ByzantineMessageError(sender, "equivocation", f"two pre-prepares for view {pp.view} seq {pp.seq}")
        waiting = self.waiting.get((pp.view, pp.seq))
        if waiting is not None and waiting[0].header.batch_digest != header.batch_digest:
            self._equivocation(waiting[0].statement(), waiting[0].signature, pp.statement(), pp.signature)
            raise ByzantineMessageError(sender, "equivocation", f"two pre-prepares for view {pp.view} seq {pp.seq}")
        if self.state.seq < pp.seq - self.params.log_window_batches:
            # the version table for this seq depends on batches this replica has not executed
            self.waiting[(pp.view, pp.seq)] = (pp, self.now + self.params.relay_timeout_ticks)
            self._start_state_transfer(r for r in self.config.replica_ids if r != self.id)
            return
        missing = self._validate_proposal(pp)
        if missing:
            self.waiting[(pp.view, pp.seq)] = (pp, self.now + self.params.relay_timeout_ticks)
            self._send(sender, FetchVotes(self.id, tuple(sorted(missing, key=lambda r: (r.voter, r.batch_no)))))
            return
        self.waiting.pop((pp.view, pp.seq), None)
        self.mismatch_rounds.pop((pp.view, pp.seq), None)
        self._accept_pre_prepare(pp)

    def _validate_proposal(self, pp: PrePrepare) -> set[VoteRef]:
        try:
            return self._check_proposal(pp)
        except ByzantineMessageError as exc:
            if exc.kind in PROPOSAL_EVIDENCE_KINDS and exc.sender == pp.sender:
                self._invalid_proposal(pp)
            raise

    def _check_proposal(self, pp: PrePrepare) -> set[VoteRef]:
        """Check a pre-prepare's content. Returns vote batches this replica still lacks (the
        proposal is re-checked when they arrive); raises ByzantineMessageError if it is invalid."""
        sender = pp.sender
        header = pp.header
        proposal = pp.proposal
        params = self.params
        seq = pp.seq
        if len(proposal.entries) > params.proposal_size_max or len(proposal.ops) > self.n * 4:
            raise ByzantineMessageError(sender, "oversized", f"proposal of {len(proposal.entries)} requests")
        if self.state.seq < seq - params.log_window_batches:
            raise LocalProtocolError(f"seq {seq} cannot be checked before executing seq {seq - params.log_window_batches}")
        if not proposal_matches_header(header, proposal):
            raise ByzantineMessageError(sender, "bad-proposal", f"seq {seq}: leaves or ops do not match the header")
        for op in proposal.ops:
            try:
                self._check_control(op)
            except RequestRejectedError as exc:
                raise ByzantineMessageError(sender, "bad-control", f"seq {seq}: {exc}") from exc
        if not proposal.entries:
            return set()
        table = self.state.versions_at(seq)
        if header.model_versions_digest != self.state.versions_digest_at(seq):
            raise ByzantineMessageError(sender, "bad-versions", f"seq {seq}: wrong model version table")
        policy_name = self.config.policy.describe(self.config.f)
        seen: set[tuple[str, str]] = set()
        missing: set[VoteRef] = set()
        for entry in proposal.entries:
            leaf = entry.leaf
            request_key = (leaf.client_id, leaf.request_id)
            if request_key in seen:
                raise ByzantineMessageError(sender, "duplicate-request", f"seq {seq}: request {leaf.request_id!r} twice")
            seen.add(request_key)
            if request_key in self.state.executed:
                raise ByzantineMessageError(sender, "replayed-request", f"seq {seq}: request {leaf.request_id!r} already executed")
            other = self.proposed.get(request_key)
            if other is not None and other != seq:
                raise ByzantineMessageError(sender, "duplicate-request", f"seq {seq}: request {leaf.request_id!r} is in batch {other}")
            if leaf.policy != policy_name:
                raise ByzantineMessageError(sender, "bad-decision", f"seq {seq}: policy {leaf.policy!r}")
            if len(leaf.votes) < self.q or len(entry.refs) != len(leaf.votes):
                raise ByzantineMessageError(sender, "too-few-votes", f"seq {seq}: {len(leaf.votes)} votes")
            voters = [vote.replica_id for vote in leaf.votes]
            if voters != sorted(set(voters)):
                raise ByzantineMessageError(sender, "duplicate-voter", f"seq {seq}: voters {voters}")
            for vote, ref in zip(leaf.votes, entry.refs):
                if not self.config.is_member(vote.replica_id) or ref.voter != vote.replica_id:
                    raise ByzantineMessageError(sender, "non-member-vote", f"seq {seq}: vote from {vote.replica_id}")
                if vote.model_version != table[vote.replica_id][0]:
                    raise ByzantineMessageError(
                        sender, "wrong-version",
                        f"seq {seq}: replica {vote.replica_id} voted with version {vote.model_version}, "
                        f"version {table[vote.replica_id][0]} is in effect",
                    )
                stored = self.vote_batches.get((ref.voter, ref.batch_no))
                if stored is None:
                    missing.add(ref)
                    continue
                if not self._vote_matches(stored, leaf, vote) and not any(
                    self._vote_matches(v, leaf, vote) for v in self.vote_batch_variants.get((ref.voter, ref.batch_no), ())
                ):
                    # perhaps the voter signed another batch under this number and the primary
                    # holds that one: fetch the primary's copy before blaming the primary
                    missing.add(ref)
                    continue
            if missing:
                continue
            classes = len(leaf.label_space) or len(self.config.task.class_labels)
            expected = decide(self.config.policy, self.config.f, self.q, leaf.votes, min(self.config.task.top_k, classes))
            if expected != leaf.decision:
                raise ByzantineMessageError(sender, "bad-decision", f"seq {seq}: decision for {leaf.request_id!r} does not follow from its votes")
        return missing

    @staticmethod
    def _vote_matches(stored: StoredVoteBatch, leaf: Leaf, vote: Vote) -> bool:
        voted = stored.by_digest.get(leaf.request_digest)
        return (
            voted is not None
            and stored.batch.model_version == vote.model_version
            and voted.output == vote.output
            and (voted.client_id, voted.request_id, voted.label_space) == (leaf.client_id, leaf.request_id, leaf.label_space)
        )

    def _accept_pre_prepare(self, pp: PrePrepare) -> None:
        slot = self._slot(pp.seq)
        slot.pre_prepare = pp
        slot.contents.setdefault(pp.header.batch_digest, pp)
        slot.progress_tick = self.now
        if not slot.executed:
            for entry in pp.proposal.entries:
                self.proposed[(entry.leaf.client_id, entry.leaf.request_id)] = pp.seq
        if pp.sender != self.id:
            prepare = self._signed_vote(Prepare, StatementKind.PREPARE, pp.view, pp.seq, pp.header.batch_digest)
            if prepare is not None:
                slot.add_prepare(prepare)
                self._send(None, prepare)
        self._check_prepared(slot)
        self._check_committed(slot)

    def _signed_vote(self, cls: type, kind: StatementKind, view: int, seq: int, batch_digest: bytes) -> Prepare | Commit | None:
        """Sign a PREPARE or COMMIT, unless this replica already signed another digest there."""
        slot_key = (view, seq)
        previous = self.signed.get((kind, slot_key))
        if previous is not None:
            if isinstance(previous, (Prepare, Commit)) and previous.batch_digest == batch_digest:
                return previous
            return None
        statement = Statement(kind, self.config.group_id, self.config.epoch, self.id, slot_key, batch_digest)
        message = cls(self.id, self.config.epoch, view, seq, batch_digest, self._sign(statement))
        self._record_signed(kind, slot_key, message)
        return message  # type: ignore[no-any-return]

    def _check_vote_message(self, message: Prepare | Commit, kind: StatementKind, name: str) -> Slot | None:
        sender = message.sender
        self._check_epoch(sender, message.epoch, name)
        if message.view > self.view + FUTURE_VIEWS_MAX:
            raise ByzantineMessageError(sender, "outside-window", f"{name} for far future view {message.view}")
        if message.seq <= self.low:
            if message.seq > self.low - self.params.checkpoint_interval_batches and not self._late_copy_repeated((kind, message.seq, sender)):
                # the slowest replica's votes for the last batches before a checkpoint arrive
                # after the others made it stable: normal, so no warning and no reply (showing
                # it the checkpoint cost every replica 3-4 signed messages per checkpoint). If
                # it is stuck there, it retransmits, and the second copy gets the checkpoint
                return None
            self._help_behind(sender)
            raise ByzantineMessageError(sender, "stale", f"{name} for seq {message.seq} below the watermark")
        if message.seq > self.low + self.params.log_window_batches:
            # the group is ahead of our window: ask the sender for the state we lack
            self._start_state_transfer([sender])
            raise ByzantineMessageError(sender, "outside-window", f"{name} for seq {message.seq} above the watermark")
        statement = message.statement(self.config.group_id)
        self._verify(sender, statement, message.signature, name)
        if message.view > self.view:
            self._note_later_view(sender, message.view)
        slot = self._slot(message.seq)
        earlier = slot.prepare_from(message.view, sender) if kind is StatementKind.PREPARE else slot.commit_from(message.view, sender)
        if earlier is not None:
            if earlier.batch_digest == message.batch_digest:
                return None  # retransmission
            self._equivocation(earlier.statement(self.config.group_id), earlier.signature, statement, message.signature)
            raise ByzantineMessageError(sender, "equivocation", f"two {name}s for view {message.view} seq {message.seq}")
        return slot

    def _on_prepare(self, prepare: Prepare) -> None:
        # epoch and signature first: a PREPARE its sender signed as a backup of the previous
        # epoch (where another replica led that view) is stale, not a fault, and an unsigned
        # one blames no one
        slot = self._check_vote_message(prepare, StatementKind.PREPARE, "prepare")
        if prepare.sender == self.config.primary(prepare.view):
            raise ByzantineMessageError(prepare.sender, "not-backup", "the primary does not send prepares")
        if slot is None:
            return
        slot.add_prepare(prepare)
        self._check_prepared(slot)

    def _on_commit(self, commit: Commit) -> None:
        slot = self._check_vote_message(commit, StatementKind.COMMIT, "commit")
        if slot is None:
            return
        slot.add_commit(commit)
        self._check_committed(slot)
        self._maybe_fetch_committed()

    def _check_prepared(self, slot: Slot) -> None:
        pp = slot.pre_prepare
        if pp is None or not self.view_active or pp.view != self.view:
            return
        digest = pp.header.batch_digest
        if slot.prepared_proof is not None and slot.prepared_proof.pre_prepare.view == pp.view:
            return
        prepares = slot.prepares.get((pp.view, digest), {})
        backups = [p for s, p in sorted(prepares.items()) if s != pp.sender]
        if len(backups) < self.q - 1:
            return
        proof = PreparedProof(pp, tuple(backups[: self.q - 1]))
        slot.prepared_proof = proof
        slot.progress_tick = self.now
        self._persist(PreparedRecord(pp, proof.prepares))
        commit = self._signed_vote(Commit, StatementKind.COMMIT, pp.view, pp.seq, digest)
        if commit is not None:
            slot.add_commit(commit)  # type: ignore[arg-type]
            self._send(None, commit)
        self._check_committed(slot)

    def _check_committed(self, slot: Slot) -> None:
        if slot.committed is not None:
            return
        for (view, batch_digest), bucket in slot.commits.items():
            if len(bucket) >= self.q and batch_digest in slot.contents:
                # a quorum of COMMITs is a commit certificate on its own: at least f+1 correct
                # replicas prepared the batch in that view
                commits = tuple(c for _, c in sorted(bucket.items())[: self.q])
                pp = slot.contents[batch_digest]
                if pp.view != view:
                    pp = PrePrepare(pp.sender, pp.epoch, pp.header.with_view(view), pp.proposal, pp.signature)
                slot.committed = (pp, commits)
                slot.progress_tick = self.now
                self._execute_ready()
                return

    # =====================================================================================
    # execution and checkpoints (section 4.3)
    # =====================================================================================

    def _execute_ready(self, via_state_transfer: bool = False) -> None:
        executed_from = self.state.seq
        while True:
            slot = self.log.get(self.state.seq + 1)
            if slot is None or slot.committed is None:
                break
            pp, commits = slot.committed
            self._execute(slot, pp, commits, via_state_transfer)
        if self.state.seq > executed_from and self.inference_queue:
            self._maybe_batch_inference()  # a request waiting for these to be ordered goes now

    def _execute(self, slot: Slot, pp: PrePrepare, commits: tuple[Commit, ...], via_state_transfer: bool) -> None:
        header, proposal = pp.header, pp.proposal
        applied = self.state.apply(header, proposal)
        duplicates, activations = applied.duplicates, applied.activations
        slot.executed = True
        self.last_execute_tick = self.now
        refs = {(r.voter, r.batch_no) for e in proposal.entries for r in e.refs}
        vote_batches = tuple(self.vote_batches[ref].batch for ref in sorted(refs) if ref in self.vote_batches)
        batch = CommittedBatch(header, proposal, commits, vote_batches, tuple(duplicates), via_state_transfer)
        self._persist(CommittedRecord(batch))
        self._ready.committed.append(batch)
        self.view_change_attempts = 0
        # requests of other proposals for this seq (earlier views) were not ordered here: they
        # may be proposed again later, so they must not stay marked as proposed at this seq
        for other in [*slot.contents.values(), slot.pre_prepare]:
            if other is not None and other.header.batch_digest != header.batch_digest:
                for entry in other.proposal.entries:
                    request_key = (entry.leaf.client_id, entry.leaf.request_id)
                    if self.proposed.get(request_key) == header.seq:
                        del self.proposed[request_key]
        for entry in proposal.entries:
            request_key = (entry.leaf.client_id, entry.leaf.request_id)
            self.proposed.pop(request_key, None)
            key = self.by_request_key.get(request_key)
            if key is not None:
                self._forget_pending(key)
            self._forget_pending(
                (entry.leaf.request_digest, entry.leaf.client_id, entry.leaf.request_id, entry.leaf.label_space)
            )
        for op in proposal.ops:
            self.pending_ops.pop(_op_key(op), None)
        if any(isinstance(op, ModelUpdate) for op in proposal.ops):
            self._drop_overtaken_updates()
        for rid, version, wd, from_seq in activations:
            self._ready.activations.append(Activation(rid, version, wd, from_seq))
            self._ready.events.append(Event("model-activated", f"replica {rid} version {version} from seq {from_seq}"))
            if rid == self.id:
                # this replica's votes must now carry the new version: vote again where needed
                for key in list(self.pending):
                    self._queue_for_inference(key)
        if self.next_seq <= header.seq:
            self.next_seq = header.seq + 1
        if header.seq % self.params.checkpoint_interval_batches == 0:
            self._take_checkpoint()  # in the old epoch, when this batch closes it
        if applied.new_config is not None:
            self._switch_epoch(applied.new_config, header.seq)

    def _take_checkpoint(self) -> None:
        summary = self.state.summary()
        self.summaries[summary.seq] = summary
        if not self.config.is_member(self.id):
            # replaying an epoch this replica was not part of: it has nothing to sign, but the
            # members' checkpoints may all be here already, held until this summary existed
            for state_digest in list(self.checkpoints.get(summary.seq, {})):
                self._check_checkpoint_quorum(summary.seq, state_digest)
            return
        checkpoint = self._signed_checkpoint(summary.seq, self.config.epoch, summary.state_digest())
        self._send(None, checkpoint)
        self._add_checkpoint(checkpoint)

    def _signed_checkpoint(self, seq: int, epoch: int, state_digest: bytes) -> Checkpoint:
        """This replica's CHECKPOINT at `seq`: the one it signed before (it never signs two),
        else a new one, recorded like every signed statement."""
        previous = self.signed.get((StatementKind.CHECKPOINT, (seq,)))
        if isinstance(previous, Checkpoint):
            return previous
        statement = Statement(StatementKind.CHECKPOINT, self.config.group_id, epoch, self.id, (seq,), state_digest)
        checkpoint = Checkpoint(self.id, epoch, seq, state_digest, self._sign(statement))
        self._record_signed(StatementKind.CHECKPOINT, (seq,), checkpoint)
        return checkpoint

    def _on_checkpoint(self, checkpoint: Checkpoint) -> None:
        sender = checkpoint.sender
        config = self._config_at(checkpoint.seq)
        if checkpoint.epoch != config.epoch:
            if checkpoint.epoch < config.epoch:
                raise ByzantineMessageError(sender, "stale", f"checkpoint for old epoch {checkpoint.epoch}")
            self._start_state_transfer([sender])  # the group moved to a later epoch without us
            raise ByzantineMessageError(sender, "future-epoch", f"checkpoint for epoch {checkpoint.epoch}")
        if checkpoint.seq % self.params.checkpoint_interval_batches or checkpoint.seq <= 0:
            raise ByzantineMessageError(sender, "bad-checkpoint", f"checkpoint at seq {checkpoint.seq} is off the interval")
        if checkpoint.seq <= self.low:
            relayed = self._via is not None and self._via != sender
            if relayed:
                # a peer showing us a proof: if it is an old one, that peer is the one behind
                # (its signers are not, and a copy passed on is no resend by its signer)
                if checkpoint.seq < self.low:
                    self._help_behind(self._via)  # type: ignore[arg-type]
            elif checkpoint.seq < self.low or self._resends_stable_checkpoint(sender):
                self._help_behind(sender)
            return  # already stable here
        statement = checkpoint.statement(self.config.group_id)
        self._verify(sender, statement, checkpoint.signature, "checkpoint", config)
        for state_digest, bucket in self.checkpoints.get(checkpoint.seq, {}).items():
            earlier = bucket.get(sender)
            if earlier is not None and state_digest != checkpoint.state_digest:
                self._equivocation(earlier.statement(self.config.group_id), earlier.signature, statement, checkpoint.signature)
                raise ByzantineMessageError(sender, "equivocation", f"two checkpoints for seq {checkpoint.seq}")
        self._add_checkpoint(checkpoint)

    def _add_checkpoint(self, checkpoint: Checkpoint) -> None:
        horizon = self.low + self.params.log_window_batches
        if checkpoint.seq > horizon:
            # far ahead of us: keep only each sender's newest, so a flood cannot grow memory
            for seq in [s for s in self.checkpoints if s > horizon]:
                for state_digest, bucket in list(self.checkpoints[seq].items()):
                    earlier = bucket.get(checkpoint.sender)
                    if earlier is not None and earlier.seq < checkpoint.seq:
                        del bucket[checkpoint.sender]
                        if not bucket:
                            del self.checkpoints[seq][state_digest]
                if not self.checkpoints[seq]:
                    del self.checkpoints[seq]
            if any(
                checkpoint.sender in bucket and seq > checkpoint.seq
                for seq in self.checkpoints if seq > horizon
                for bucket in self.checkpoints[seq].values()
            ):
                return  # we already hold a newer one from this sender
        by_digest = self.checkpoints.setdefault(checkpoint.seq, {})
        by_digest.setdefault(checkpoint.state_digest, {}).setdefault(checkpoint.sender, checkpoint)
        self._check_checkpoint_quorum(checkpoint.seq, checkpoint.state_digest)

    def _check_checkpoint_quorum(self, seq: int, state_digest: bytes) -> None:
        """Act on a quorum of checkpoints at `seq` with `state_digest`, if one is here: make it
        stable when this replica's own summary agrees, or note that the group is ahead."""
        bucket = self.checkpoints.get(seq, {}).get(state_digest, {})
        quorum = self._config_at(seq).quorum_size
        if len(bucket) < quorum:
            return
        summary = self.summaries.get(seq)
        proof = tuple(c for _, c in sorted(bucket.items())[:quorum])
        if summary is not None:
            if summary.state_digest() != state_digest:
                self._ready.events.append(Event("state-divergence", f"checkpoint {seq} differs from a quorum"))
                return
            self._make_stable(seq, state_digest, proof)
        elif seq > self.state.seq:
            # a quorum is ahead of this replica. Usually the commits are on their way; if this
            # replica stops making progress, it fetches the state it missed (section 4.3)
            if self.stable_ahead is None or seq > self.stable_ahead[0]:
                self.stable_ahead = (seq, sorted(bucket))
            if seq > self.state.seq + self.params.pipeline_depth:
                self._start_state_transfer(sorted(bucket))

    def _make_stable(self, seq: int, state_digest: bytes, proof: tuple[Checkpoint, ...]) -> None:
        if seq <= self.low:
            return
        summary = self.summaries[seq]
        previous = self.low
        self.low, self.stable_digest, self.stable_proof = seq, state_digest, proof
        self._persist(StableCheckpointRecord(self.state.snapshot(summary, since_seq=previous), previous, proof))
        self._ready.events.append(Event("checkpoint-stable", f"seq {seq}"))
        self._truncate(seq)

    def _truncate(self, seq: int) -> None:
        for s in [s for s in self.log if s <= seq]:
            del self.log[s]
        for s in [s for s in self.checkpoints if s <= seq]:
            del self.checkpoints[s]
        for s in [s for s in self.summaries if s < seq]:
            del self.summaries[s]
        for key in [k for k in self.waiting if k[1] <= seq]:
            del self.waiting[key]
        self.mismatch_rounds = {k: v for k, v in self.mismatch_rounds.items() if k in self.waiting}
        for key in [
            k
            for k in self.signed
            if k[0] in (StatementKind.PRE_PREPARE, StatementKind.PREPARE, StatementKind.COMMIT) and k[1][1] <= seq
            or k[0] is StatementKind.CHECKPOINT and k[1][0] < seq
        ]:
            del self.signed[key]
        self._gc_votes()

    # =====================================================================================
    # state transfer
    # =====================================================================================

    def _start_state_transfer(self, targets: Iterable[int]) -> None:
        candidates = [t for t in targets if t != self.id]
        if not candidates or self.fetching_state_since is not None:
            return
        self.fetching_state_since = self.now
        self.fetch_targets = candidates
        self._send(candidates[0], FetchState(self.id, self.state.seq))
        self._ready.events.append(Event("state-transfer", f"fetching from replica {candidates[0]} after seq {self.state.seq}"))

    def _resends_stable_checkpoint(self, peer: int) -> bool:
        """`peer` sent its CHECKPOINT at our stable seq: is it sending it again? A replica
        resends its checkpoint only while it is not stable there, and it would wait for the next
        checkpoint (new traffic) to get past it if the replicas that have it stable stayed
        silent; a first, merely late copy (the slowest replicas' at every checkpoint) asks for
        nothing."""
        if any(c.sender == peer for c in self.stable_proof):
            return True
        return self._late_copy_repeated(("checkpoint", peer))

    def _late_copy_repeated(self, key: tuple[object, ...]) -> bool:
        """Has a message with this key already arrived late (after its seq was stable here)?
        Records it if not. Forgotten once the next checkpoint is stable."""
        low, seen = self.late_copies
        if low != self.low:
            seen = set()
            self.late_copies = (self.low, seen)
        if key in seen:
            return True
        seen.add(key)
        return False

    def _help_behind(self, peer: int) -> None:
        """`peer` still works below our stable checkpoint, or has not seen it become stable:
        show it the checkpoint (once in a while), so it fetches the state, or makes its own
        checkpoint stable, instead of waiting for messages that will not come."""
        if not self.stable_proof or not self._once_per_relay_timeout(self.helped, peer):
            return
        for checkpoint in self.stable_proof:
            self._send(peer, checkpoint)
        # and ours, when the proof lacks it: a faulty member in the proof may have shown the
        # peer another digest, and then the peer needs a checkpoint from one more correct replica
        if all(c.sender != self.id for c in self.stable_proof):
            own = self._own_stable_checkpoint()
            if own is not None:
                self._send(peer, own)

    def _once_per_relay_timeout(self, last_ticks: dict[int, int], peer: int) -> bool:
        """May `peer` be answered now (a relay timeout since the last answer in `last_ticks`)?
        Records the answer if so: answers to what a peer resends must not echo every copy."""
        if self.now - last_ticks.get(peer, -(10**9)) < self.params.relay_timeout_ticks:
            return False
        last_ticks[peer] = self.now
        return True

    def _own_stable_checkpoint(self) -> Checkpoint | None:
        """This replica's CHECKPOINT at its stable seq, signed now if it got there by state
        transfer: the state it installed has the digest a quorum signed, so it can say so."""
        epoch = self.stable_proof[0].epoch
        config = self.configs.get(epoch)
        unsigned = (StatementKind.CHECKPOINT, (self.low,)) not in self.signed
        if unsigned and (self.retired or config is None or not config.is_member(self.id)):
            return None
        own = self._signed_checkpoint(self.low, epoch, self.stable_digest)
        return own if own.state_digest == self.stable_digest else None

    def _maybe_fetch_committed(self) -> None:
        """Batches above ours are committed by a quorum but ours is stuck: fetch them."""
        if self.fetching_state_since is not None:
            return
        next_slot = self.log.get(self.state.seq + 1)
        if next_slot is not None and next_slot.committed is not None:
            return
        if next_slot is not None and self.now - next_slot.progress_tick < self.params.relay_timeout_ticks:
            return
        for seq in sorted(self.log):
            if seq <= self.state.seq:
                continue
            for (_, _), bucket in self.log[seq].commits.items():
                if len(bucket) >= self.q:
                    self._start_state_transfer(sorted(bucket))
                    return

    def _on_fetch_state(self, request: FetchState) -> None:
        if request.executed_seq >= self.state.seq:
            # nothing to offer, but say so: the requester moves on at once
            self._send(request.sender, StateReply(self.id, None, (), ()))
            return
        snapshot = None
        proof: tuple[Checkpoint, ...] = ()
        start = request.executed_seq + 1
        if request.executed_seq < self.low:
            summary = self.summaries.get(self.low)
            if summary is None:
                self._send(request.sender, StateReply(self.id, None, (), ()))
                return
            snapshot = self.state.snapshot(summary)
            proof = self.stable_proof
            start = self.low + 1
        batches: list[CommittedProof] = []
        for seq in range(start, self.state.seq + 1):
            slot = self.log.get(seq)
            if slot is None or slot.committed is None or len(batches) >= FETCH_BATCHES_MAX:
                break
            batches.append(CommittedProof(*slot.committed))
        self._send(request.sender, StateReply(self.id, snapshot, proof, tuple(batches), self._known_links()))

    def _known_links(self) -> tuple[tuple[ConfigLink, int], ...]:
        """Every later epoch's config with the signatures vouching for it so far."""
        links = []
        for epoch in sorted(self.config_signatures):
            signatures = self.config_signatures[epoch]
            if epoch in self.configs:
                link = ConfigLink(self.configs[epoch], tuple(QuorumSigned(r, s) for r, s in sorted(signatures.items())))
                links.append((link, self.epoch_starts[epoch]))
        return tuple(links)

    def _learn_links(self, sender: int, links: Sequence[tuple[ConfigLink, int]]) -> None:
        """Adopt later configs a peer vouches for, each checked against the one before it: a
        replica that skipped a membership change by state transfer learns the new members."""
        for link, start_seq in sorted(links, key=lambda item: item[0].config.epoch):
            config = link.config
            previous = self.configs.get(config.epoch - 1)
            if config.epoch in self.configs or previous is None:
                continue
            if len(link.signatures) < previous.quorum_size:
                # not yet vouched for by a quorum at that peer: each replica broadcasts its
                # signature once, so a peer may hold too few of them, yet several peers
                # together enough (a replica that crashed just before an epoch change, and
                # whose peers' snapshots are all of the new epoch, had no other way in)
                link = self._pool_link_signatures(sender, previous, link)
                if link is None:
                    continue
            try:
                verify_link(previous, link, self._verifier)
            except CertificateError as exc:
                raise ByzantineMessageError(sender, "bad-state", f"config link for epoch {config.epoch}: {exc}") from exc
            self.pooled_links = {key: value for key, value in self.pooled_links.items() if key[0] > config.epoch}
            self.configs[config.epoch] = config
            self.epoch_starts[config.epoch] = start_seq
            self.config_signatures[config.epoch] = {s.replica_id: s.signature for s in link.signatures}
            record = ConfigLinkRecord(link, start_seq)
            self._persist(record)
            self._ready.config_links.append(record)

    def _pool_link_signatures(self, sender: int, previous: GroupConfig, link: ConfigLink) -> ConfigLink | None:
        """Add a short link's valid signatures to the pool; the pooled link once a quorum of
        `previous` signed it, else None."""
        config = link.config
        if config.group_id != previous.group_id or config.previous_digest != previous.digest:
            raise ByzantineMessageError(sender, "bad-state", f"config link for epoch {config.epoch} does not follow epoch {previous.epoch}")
        key = (config.epoch, config.digest)
        counted = {signer for (epoch, _), (_, pooled) in self.pooled_links.items() if epoch == config.epoch for signer in pooled}
        for signature in link.signatures:
            public_key = previous.public_key(signature.replica_id)
            if signature.replica_id in counted or public_key is None:
                continue
            if not self._verifier.verify(public_key, link_message(config, signature.replica_id), signature.signature):
                raise ByzantineMessageError(sender, "bad-state", f"config link for epoch {config.epoch}: bad signature from replica {signature.replica_id}")
            self.pooled_links.setdefault(key, (config, {}))[1][signature.replica_id] = signature.signature
            counted.add(signature.replica_id)
        pooled = self.pooled_links.get(key)
        if pooled is None or len(pooled[1]) < previous.quorum_size:
            return None
        return ConfigLink(config, tuple(QuorumSigned(r, s) for r, s in sorted(pooled[1].items())))

    def _on_state_reply(self, reply: StateReply) -> None:
        sender = reply.sender
        self._learn_links(sender, reply.config_links)
        if reply.snapshot is not None and reply.snapshot.seq > self.state.seq:
            snapshot = reply.snapshot
            # the replicas that signed the checkpoint: those of the epoch its messages name
            signers = self.configs.get(reply.checkpoint_proof[0].epoch) if reply.checkpoint_proof else None
            if signers is None:
                return  # an epoch this replica cannot check yet: ask again once it knows its config
            if snapshot.seq % signers.params.checkpoint_interval_batches:
                raise ByzantineMessageError(sender, "bad-state", f"snapshot at seq {snapshot.seq} is off the interval")
            state_digest = snapshot_digest(snapshot)
            if not check_checkpoint_proof(signers, self._verifier, snapshot.seq, state_digest, reply.checkpoint_proof):
                raise ByzantineMessageError(sender, "bad-state", f"snapshot at seq {snapshot.seq} lacks a valid checkpoint quorum")
            if self._config_with_digest(snapshot.config_digest) is None:
                # the snapshot closed an epoch: the next config is certified through its digest,
                # which the checkpoint quorum signed as part of the state
                carried = [(link, start) for link, start in reply.config_links if link.config.digest == snapshot.config_digest]
                if not carried:
                    raise ByzantineMessageError(sender, "bad-state", f"snapshot at seq {snapshot.seq} names a config the reply does not carry")
                link, start_seq = carried[0]
                self.configs[link.config.epoch] = link.config
                self.epoch_starts[link.config.epoch] = start_seq
                # keep its signatures too: they are what _known_links hands on, and a replica
                # that serves this snapshot must carry the config it names (the simulator
                # found a correct replica blamed for leaving it out: seed 1860)
                self.config_signatures.setdefault(link.config.epoch, {}).update({s.replica_id: s.signature for s in link.signatures})
                record = ConfigLinkRecord(link, start_seq)
                self._persist(record)
                self._ready.config_links.append(record)
            self._install_snapshot(snapshot, state_digest, reply.checkpoint_proof)
        newest: CommittedProof | None = None
        for proof in reply.batches:
            seq = proof.pre_prepare.seq
            if seq <= self.state.seq:
                continue
            if seq != self.state.seq + 1:
                break
            self._check_committed_proof(sender, proof)
            slot = self._slot(seq)
            slot.contents.setdefault(proof.pre_prepare.header.batch_digest, proof.pre_prepare)
            slot.committed = (proof.pre_prepare, proof.commits)
            self._execute(slot, proof.pre_prepare, proof.commits, True)
            newest = proof
        self._execute_ready()
        if newest is not None and newest.commits[0].epoch == self.config.epoch and newest.pre_prepare.view > self.view:
            # a verified commit quorum in a later view: its signers work there (this replica
            # missed that view change while cut off); join them now rather than when new
            # traffic happens to reach it
            for commit in newest.commits:
                self._note_later_view(commit.sender, newest.pre_prepare.view)
        if self.fetching_state_since is not None and self.fetch_targets and self.fetch_targets[0] == sender:
            progressed = bool(reply.batches) or reply.snapshot is not None
            self.fetching_state_since = None
            if progressed:
                # there may be more by now (the group kept committing while we caught up):
                # ask again until the answer is empty
                self._start_state_transfer([sender])
            elif len(self.fetch_targets) > 1:
                self._start_state_transfer(self.fetch_targets[1:])  # ask the next one
        self._recheck_waiting()
        self._try_propose()

    def _check_committed_proof(self, sender: int, proof: CommittedProof) -> None:
        pp = proof.pre_prepare
        header = pp.header
        config = self._config_at(header.seq)
        if (header.group_id, header.epoch, header.config_digest) != (config.group_id, config.epoch, config.digest):
            raise ByzantineMessageError(sender, "bad-state", f"batch {header.seq} names another group or epoch")
        if not proposal_matches_header(header, pp.proposal):
            raise ByzantineMessageError(sender, "bad-state", f"batch {header.seq} does not match its header")
        signers: set[int] = set()
        for commit in proof.commits:
            key = config.public_key(commit.sender)
            if (
                key is None
                or commit.sender in signers
                or (commit.view, commit.seq, commit.batch_digest, commit.epoch) != (header.view, header.seq, header.batch_digest, config.epoch)
                or not self._verifier.verify(key, commit.statement(self.config.group_id).message(), commit.signature)
            ):
                raise ByzantineMessageError(sender, "bad-state", f"batch {header.seq} has an invalid commit")
            signers.add(commit.sender)
        if len(signers) < config.quorum_size:
            raise ByzantineMessageError(sender, "bad-state", f"batch {header.seq} has too few commits")

    def _install_snapshot(self, snapshot: StateSnapshot, state_digest: bytes, proof: tuple[Checkpoint, ...]) -> None:
        before = dict(self.state.versions)
        config = self._config_with_digest(snapshot.config_digest)
        if config is None:
            raise LocalProtocolError(f"snapshot at seq {snapshot.seq} is for a config this replica does not know")
        skipped_after = self.state.seq
        self.state = ReplicatedState.from_snapshot(config, snapshot)
        self._ready.skipped_batches.append((skipped_after, snapshot.seq))
        # before anything below forgets them: requests this replica holds that the snapshot
        # shows executed; it never sees their batches, so it can never certify them
        unseen = {p.request_key for p in self.pending.values() if p.request_key in self.state.executed}
        self._ready.executed_unseen.extend(sorted(unseen))
        if config.epoch != self.config.epoch:
            self._adopt_config(config, snapshot.seq)
        # versions that took effect in the batches skipped over: the runtime must hear of them
        # (it loads and unloads models, and its own votes must carry the new version)
        for rid, (version, wd) in sorted(self.state.versions.items()):
            if before.get(rid, (0, b""))[0] != version:
                self._ready.activations.append(Activation(rid, version, wd, snapshot.seq + 1))
                self._ready.events.append(Event("model-activated", f"replica {rid} version {version} (learned by state transfer)"))
        self._drop_overtaken_updates()
        self.summaries[snapshot.seq] = self.state.summary()
        self.low, self.stable_digest, self.stable_proof = snapshot.seq, state_digest, tuple(proof)
        self._persist(StableCheckpointRecord(snapshot, 0, tuple(proof)))
        self._ready.events.append(Event("state-installed", f"snapshot at seq {snapshot.seq}"))
        self._truncate(snapshot.seq)
        self._rebuild_proposed()  # what was proposed for the seqs the snapshot covers is settled
        if self.next_seq <= snapshot.seq:
            self.next_seq = snapshot.seq + 1
        for key in list(self.pending):
            if self.pending[key].request_key in self.state.executed:
                self._forget_pending(key)
        for key in list(self.pending):
            self._queue_for_inference(key)

    # =====================================================================================
    # fetching votes
    # =====================================================================================

    def _on_fetch_votes(self, request: FetchVotes) -> None:
        for ref in request.refs[: self.params.proposal_size_max]:
            stored = self.vote_batches.get((ref.voter, ref.batch_no))
            if stored is not None:
                self._send(request.sender, stored.batch)
            for variant in self.vote_batch_variants.get((ref.voter, ref.batch_no), ()):
                self._send(request.sender, variant.batch)

    def _recheck_waiting(self) -> None:
        for key, (pp, _) in sorted(self.waiting.items()):
            # executed meanwhile (state transfer brought the batch): nothing left to check, and
            # its requests now look replayed, which is no fault of the primary
            if pp.view != self.view or not self.view_active or not self._in_window(pp.seq) or pp.seq <= self.state.seq:
                del self.waiting[key]
                continue
            if self.state.seq < pp.seq - self.params.log_window_batches:
                continue
            try:
                missing = self._validate_proposal(pp)
            except ByzantineMessageError as exc:
                del self.waiting[key]
                self._ready.events.append(Event("rejected", str(exc)))
                continue
            if not missing:
                del self.waiting[key]
                self._accept_pre_prepare(pp)

    def _check_waiting(self) -> None:
        """Vote batches a proposal needs did not come from the primary: ask their voters."""
        for key, (pp, deadline) in list(self.waiting.items()):
            if pp.seq <= self.state.seq:
                del self.waiting[key]  # executed meanwhile, see _recheck_waiting
                continue
            if self.now < deadline:
                continue
            if pp.view != self.view or self.state.seq < pp.seq - self.params.log_window_batches:
                self.waiting[key] = (pp, self.now + self.params.relay_timeout_ticks)
                continue
            try:
                missing = self._validate_proposal(pp)
            except ByzantineMessageError as exc:
                del self.waiting[key]
                self._ready.events.append(Event("rejected", str(exc)))
                continue
            # refs we hold a batch for, yet the proposal's vote is in none of its signed versions
            disagreeing = [r for r in missing if (r.voter, r.batch_no) in self.vote_batches]
            if disagreeing:
                rounds = self.mismatch_rounds.get(key, 0) + 1
                self.mismatch_rounds[key] = rounds
                if rounds > 2:
                    # the primary and the voters had two relay timeouts to show a signed batch
                    # with these votes: the proposal claims votes nobody signed
                    del self.waiting[key]
                    del self.mismatch_rounds[key]
                    ref = disagreeing[0]
                    self._ready.events.append(Event(
                        "rejected",
                        f"replica {pp.sender}: forged-vote: seq {pp.seq}: the vote of replica {ref.voter} "
                        f"is in no signed batch {ref.batch_no} of that replica",
                    ))
                    continue
            by_voter: dict[int, list[VoteRef]] = {}
            for ref in missing:
                by_voter.setdefault(ref.voter, []).append(ref)
            for voter, refs in sorted(by_voter.items()):
                target = voter if voter != self.id else pp.sender
                self._send(target, FetchVotes(self.id, tuple(sorted(refs, key=lambda r: r.batch_no))))
            self.waiting[key] = (pp, self.now + self.params.relay_timeout_ticks)

    # =====================================================================================
    # timers: view change, relay, retransmission
    # =====================================================================================

    def _note_later_view(self, sender: int, view: int) -> None:
        """f+1 replicas working in a later view means a correct one is there: this replica missed
        that view change (it was cut off or restarted). Asking for the view makes that view's
        primary send its NEW-VIEW (see _on_view_change); one faulty replica cannot pull it away."""
        senders = self.later_views.setdefault(view, set())
        senders.add(sender)
        if len(senders) >= self.config.f + 1:
            self.later_views = {v: s for v, s in self.later_views.items() if v > view}
            self._start_view_change(view, f"{len(senders)} replicas are already working in view {view}")

    def _view_change_timeout(self) -> int:
        # timers back off exponentially so that correct replicas eventually overlap in a view
        # long enough to finish a view change (section 4.5.2)
        return self.params.view_change_timeout_ticks * (2 ** min(self.view_change_attempts, 6))

    def _check_timers(self) -> None:
        params = self.params
        if self.fetching_state_since is not None and self.now - self.fetching_state_since > params.relay_timeout_ticks:
            # the replica asked did not answer: ask the next one; after the last, give up until
            # something shows again that this replica is behind
            targets = self.fetch_targets[1:]
            self.fetching_state_since = None
            self._start_state_transfer(targets)
        if self.view_active:
            oldest = next(iter(self.eligible), None)
            if oldest is not None:
                pending = self.pending.get(oldest)
                if pending is None or pending.request_key in self.state.executed:
                    self._forget_pending(oldest)
                elif self.now - (pending.quorum_tick or 0) > self._view_change_timeout():
                    if self.asked_before_accusing != oldest:
                        # perhaps the group committed it and this replica fell behind: ask a peer
                        # before accusing the primary (one relay timeout)
                        self.asked_before_accusing = oldest
                        self.accuse_deadline = self.now + params.relay_timeout_ticks
                        self._start_state_transfer(self._peers_rotated(self.now))
                        self._push_stalled(pending)
                    elif self.now >= self.accuse_deadline:
                        self._start_view_change(self.view + 1, "a request with a quorum of votes was not committed in time")
        elif self.view_change_deadline is not None and self.now >= self.view_change_deadline:
            if len(self.view_changes.get(self.view, {})) >= self.q:
                self.view_change_attempts += 1
                self._start_view_change(self.view + 1, f"no NEW-VIEW for view {self.view} in time")
            else:
                # not enough replicas want this view yet: repeat the request rather than escalate
                own = self.signed.get((StatementKind.VIEW_CHANGE, (self.view,)))
                if own is not None:
                    self._send(None, own)
                self.view_change_deadline = self.now + self._view_change_timeout()
                # alone in this view change, this replica may only have missed the commits of
                # the group's last batches (lost, or sent while it was installing a snapshot):
                # with no traffic after them nothing else would bring them (no checkpoint, no
                # retransmission of an executed slot), and its clients would wait forever.
                # Ask a peer, as before accusing (the simulator found this: seed 976)
                self._start_state_transfer(self._peers_rotated(self.now))
        if (
            self.stable_ahead is not None
            and self.stable_ahead[0] > self.state.seq
            and self.now - self.last_execute_tick > params.relay_timeout_ticks
        ):
            # rotated: a voucher that answers, but too slowly or uselessly, must not be the
            # first asked every time (the simulator found this: seed 106, a slow replica)
            self._start_state_transfer(self._peers_rotated(self.now, self.stable_ahead[1]))
        if self.now >= self.retransmit_deadline:
            self.retransmit_deadline = self.now + params.relay_timeout_ticks
            self._retransmit()
            self._gossip_config_signatures()
            self._maybe_fetch_committed()
            # votes for requests nobody sent (a faulty voter's) are otherwise collected only at
            # a stable checkpoint: in a group gone idle they would keep this node busy for good
            retention_ticks = self._vote_retention_ticks()
            if any(p.request is None and self.now - p.first_tick > retention_ticks for p in self.pending.values()):
                self._gc_votes()

    def _push_stalled(self, pending: PendingRequest) -> None:
        """Perhaps the primary, or the replicas whose old votes make up this replica's quorum,
        restarted since and lost the request (requests waiting for order live in memory only):
        no relay would reach them, as they voted. Hand every peer the request, so each votes
        again, and the primary the vote batches this replica holds for it, before accusing."""
        if pending.request is not None:
            for peer in self.config.replica_ids:
                if peer != self.id:
                    self._send(peer, RequestMessage(self.id, pending.request))
        primary = self.primary
        if primary == self.id:
            return
        for voter, versions in sorted(pending.votes.items()):
            for batch_no in sorted(set(versions.values())):
                stored = self.vote_batches.get((voter, batch_no))
                if stored is not None:
                    self._send(primary, stored.batch)

    def _relay_pending_ops(self) -> None:
        """Control operations wait for order in memory only: a primary that restarted since
        they reached it has lost them, and nothing else would hand them to it again (the
        replicas holding them relayed them once, on arrival), so an owner's update or a
        membership change would never be ordered. Hand the primary each one it has not
        proposed, a relay timeout after it arrived here and then at doubling intervals (the
        simulator found this: seed 77)."""
        for key in [k for k in self.op_relays if k not in self.pending_ops]:
            del self.op_relays[key]
        primary = self.primary
        timeout = self.params.relay_timeout_ticks
        in_flight = self._ops_in_flight() if self.pending_ops else []
        for key, op in self.pending_ops.items():
            last_tick, relays = self.op_relays.setdefault(key, (self.now, 0))
            if op in in_flight or self.now - last_tick < timeout << min(relays, RELAY_DOUBLINGS_MAX):
                continue
            self.op_relays[key] = (self.now, relays + 1)
            if primary != self.id:
                self._send(primary, ControlMessage(self.id, op))

    def _peers_rotated(self, offset: int, peers: Sequence[int] | None = None) -> list[int]:
        """The other members (or `peers`), starting at the one `offset` selects: with the clock
        as offset, successive fetches do not all ask the same (perhaps faulty) peer first."""
        others = [r for r in (self.config.replica_ids if peers is None else peers) if r != self.id]
        start = offset % len(others) if others else 0
        return others[start:] + others[:start]

    def _retransmit(self) -> None:
        """Messages can be lost: resend what an old, unfinished piece of work depends on.

        A request is relayed only until it is proposed, only to the peers whose vote for it is
        missing, and at doubling intervals; to a given peer only once that peer has voted for
        requests that reached this replica a relay timeout later (it moved past this one), or
        once the request is RELAY_WAIT_TIMEOUTS_MAX relay timeouts old (a peer that votes for
        nothing). This replica's vote batches for it are resent on the same schedule (the
        primary may lack them, whoever else has them). Under load a request waits seconds for
        inference and ordering with nothing lost: relaying each one to every peer at every
        relay timeout multiplied the work of the whole group exactly when it had none to
        spare."""
        timeout = self.params.relay_timeout_ticks
        threshold = self.now - timeout
        resent_batches: set[int] = set()
        for pending in list(self.pending.values()):
            if pending.request is None or pending.request_key in self.state.executed or pending.request_key in self.proposed:
                continue
            if self.now - pending.last_relay_tick < timeout << min(pending.relays, RELAY_DOUBLINGS_MAX):
                continue
            overdue = self.now - pending.first_tick >= RELAY_WAIT_TIMEOUTS_MAX * timeout
            passed_by = pending.first_tick + timeout
            missing = [
                peer for peer in self.config.replica_ids
                if peer != self.id and peer not in pending.votes and (overdue or self.vote_progress.get(peer, -1) > passed_by)
            ]
            pending.last_relay_tick = self.now
            pending.relays += 1
            for peer in missing:
                # that peer most likely never saw the request: relay it so every model answers
                self._send(peer, RequestMessage(self.id, pending.request))
            for version, batch_no in pending.votes.get(self.id, {}).items():
                if batch_no not in resent_batches and (self.id, batch_no) in self.vote_batches:
                    resent_batches.add(batch_no)
                    self._send(None, self.vote_batches[(self.id, batch_no)].batch)
        self._relay_pending_ops()
        for seq, slot in sorted(self.log.items()):
            if slot.executed or slot.progress_tick > threshold:
                continue
            for kind in (StatementKind.PRE_PREPARE, StatementKind.PREPARE, StatementKind.COMMIT):
                message = self.signed.get((kind, (self.view, seq)))
                if message is not None:
                    self._send(None, message)
        own = self.signed.get((StatementKind.CHECKPOINT, (self._last_checkpoint_seq(),)))
        if own is not None and own.seq > self.low:  # type: ignore[union-attr]
            self._send(None, own)

    def _last_checkpoint_seq(self) -> int:
        interval = self.params.checkpoint_interval_batches
        return (self.state.seq // interval) * interval

    # =====================================================================================
    # view change (section 4.4)
    # =====================================================================================

    def _start_view_change(self, new_view: int, reason: str) -> None:
        if new_view <= self.view and not self.view_active:
            return
        if new_view < self.view:
            return
        self.view = new_view
        self.view_active = False
        self.waiting.clear()
        self._ready.events.append(Event("view-change", f"moving to view {new_view}: {reason}"))
        previous = self.signed.get((StatementKind.VIEW_CHANGE, (new_view,)))
        if isinstance(previous, ViewChange):
            vc = previous
        else:
            prepared = tuple(
                slot.prepared_proof
                for seq, slot in sorted(self.log.items())
                if seq > max(self.low, self._epoch_floor()) and slot.prepared_proof is not None
            )
            vc = ViewChange(self.id, self.config.epoch, new_view, self.low, self.stable_digest, self.stable_proof, prepared, b"")
            signature = self._sign(vc.statement(self.config.group_id))
            vc = ViewChange(self.id, self.config.epoch, new_view, self.low, self.stable_digest, self.stable_proof, prepared, signature)
            self._record_signed(StatementKind.VIEW_CHANGE, (new_view,), vc)
        self._send(None, vc)
        self.view_changes.setdefault(new_view, {})[self.id] = vc
        self.view_change_deadline = self.now + self._view_change_timeout()
        self._maybe_new_view(new_view)

    def _on_view_change(self, vc: ViewChange) -> None:
        self._check_epoch(vc.sender, vc.epoch, "view change")
        if vc.stable_seq < self.low:
            # the sender is behind our stable checkpoint, perhaps stuck asking for a view change
            # nobody else needs: show it the checkpoint so it fetches the state (section 4.3)
            self._help_behind(vc.sender)
        if vc.new_view <= self.view and (self.view_active or vc.new_view < self.view):
            # Once per relay timeout per sender and view: a correct peer past that view answers
            # our own old VIEW-CHANGE the same way, so answering every copy would bounce one late
            # or replayed VIEW-CHANGE between two correct replicas forever (the simulator found
            # such a storm: seed 516, a replaying replica, tens of thousands of messages a tick)
            last = self.answered_view_change.get(vc.sender)
            if last is not None and last[0] == vc.new_view and self.now - last[1] < self.params.relay_timeout_ticks:
                return
            self.answered_view_change[vc.sender] = (vc.new_view, self.now)
            # a replica behind us: hand it the NEW-VIEW of our view (signed by its primary, so any
            # replica holding it may relay it)
            if self.view_active and self.view in self.new_views and vc.new_view == self.view:
                self._send(vc.sender, self.new_views[self.view])
            # we moved past that view; our own view change for it may never have reached the
            # sender, which may be waiting for it to complete a quorum
            if vc.new_view < self.view:
                own = self.signed.get((StatementKind.VIEW_CHANGE, (vc.new_view,)))
                if own is not None:
                    self._send(vc.sender, own)
            return
        if vc.new_view > self.view + FUTURE_VIEWS_MAX * 4:
            raise ByzantineMessageError(vc.sender, "outside-window", f"view change to far view {vc.new_view}")
        existing = self.view_changes.get(vc.new_view, {}).get(vc.sender)
        if existing is not None:
            if existing.content() != vc.content():
                check_view_change(self.config, self._verifier, vc, self._config_at(vc.stable_seq), self._epoch_floor())
                self._equivocation(
                    existing.statement(self.config.group_id), existing.signature, vc.statement(self.config.group_id), vc.signature
                )
                raise ByzantineMessageError(vc.sender, "equivocation", f"two view changes to view {vc.new_view}")
            return
        check_view_change(self.config, self._verifier, vc, self._config_at(vc.stable_seq), self._epoch_floor())
        self.view_changes.setdefault(vc.new_view, {})[vc.sender] = vc
        # liveness (section 4.5.2): f+1 replicas want a later view, so at least one correct
        # replica timed out: join the smallest such view rather than wait for our own timer
        asking: dict[int, int] = {}  # sender -> the smallest view above ours it asked for
        for view, bucket in self.view_changes.items():
            if view > self.view:
                for s in bucket:
                    if s != self.id:
                        asking[s] = min(asking.get(s, view), view)
        if len(asking) >= self.config.f + 1:
            self._start_view_change(min(asking.values()), f"{len(asking)} replicas asked for a later view")
        self._maybe_new_view(vc.new_view)

    def _maybe_new_view(self, view: int) -> None:
        if view != self.view or self.view_active or self.config.primary(view) != self.id:
            return
        bucket = self.view_changes.get(view, {})
        if len(bucket) < self.q or view in self.new_views:
            return
        chosen = tuple(vc for _, vc in sorted(bucket.items())[: self.q])
        plan = plan_new_view(chosen, self._epoch_floor())
        pre_prepares: list[PrePrepare] = []
        for seq, prepared in plan.batches:
            if prepared is not None:
                header, proposal = prepared.header.with_view(view), prepared.proposal
            else:
                header, proposal = null_header(self.config, view, seq), Proposal((), ())
            pp = self._signed_pre_prepare(header, proposal)
            if pp is None:
                return
            pre_prepares.append(pp)
        nv = NewView(self.id, self.config.epoch, view, chosen, tuple(pre_prepares), b"")
        nv = NewView(self.id, self.config.epoch, view, chosen, tuple(pre_prepares), self._sign(nv.statement(self.config.group_id)))
        self._record_signed(StatementKind.NEW_VIEW, (view,), nv)
        self.new_views[view] = nv
        self._send(None, nv)
        self._enter_view(nv, plan.min_seq, plan.stable_digest, plan.checkpoint_proof)

    def _on_new_view(self, nv: NewView) -> None:
        sender = nv.sender
        if nv.view < self.view or (nv.view == self.view and self.view_active):
            return  # already there
        self._check_epoch(sender, nv.epoch, "new-view")
        if sender != self.config.primary(nv.view):
            raise ByzantineMessageError(sender, "not-primary", f"new-view for view {nv.view} from a non-primary")
        self._verify(sender, nv.statement(self.config.group_id), nv.signature, "new-view")
        senders = [vc.sender for vc in nv.view_changes]
        if len(set(senders)) != len(senders) or len(senders) < self.q:
            raise ByzantineMessageError(sender, "bad-new-view", "new-view without a quorum of distinct view changes")
        for vc in nv.view_changes:
            if vc.new_view != nv.view:
                raise ByzantineMessageError(sender, "bad-new-view", f"new-view carries a view change to view {vc.new_view}")
            try:
                check_view_change(self.config, self._verifier, vc, self._config_at(vc.stable_seq), self._epoch_floor())
            except ByzantineMessageError as exc:
                # the proofs inside a view change are not covered by its signature, so whoever
                # relayed a broken one answers for it: here, the new primary
                raise ByzantineMessageError(sender, "bad-new-view", f"relays a bad view change of replica {vc.sender}: {exc.reason}") from exc
        plan = plan_new_view(nv.view_changes, self._epoch_floor())
        if len(plan.batches) != len(nv.pre_prepares):
            raise ByzantineMessageError(sender, "bad-new-view", "new-view re-proposes the wrong sequence numbers")
        for (seq, prepared), pp in zip(plan.batches, nv.pre_prepares):
            expected = prepared.header.with_view(nv.view) if prepared is not None else null_header(self.config, nv.view, seq)
            if pp.header != expected or pp.sender != sender or pp.epoch != self.config.epoch:
                raise ByzantineMessageError(sender, "bad-new-view", f"new-view proposes the wrong batch for seq {seq}")
            if prepared is not None and pp.proposal != prepared.proposal:
                raise ByzantineMessageError(sender, "bad-new-view", f"new-view changes the content of seq {seq}")
            if not check_pre_prepare_signature(self.config, self._verifier, pp):
                raise ByzantineMessageError(sender, "bad-signature", f"new-view pre-prepare for seq {seq}")
        self.view_changes.setdefault(nv.view, {}).update({vc.sender: vc for vc in nv.view_changes})
        self.new_views[nv.view] = nv
        self._enter_view(nv, plan.min_seq, plan.stable_digest, plan.checkpoint_proof)

    def _enter_view(self, nv: NewView, min_seq: int, stable_digest: bytes, proof: tuple[Checkpoint, ...]) -> None:
        view = nv.view
        self.view = view
        self.view_active = True
        self.view_change_deadline = None
        # each view gives a stalled request one fetch before its primary is accused: what this
        # replica asked in the previous view says nothing about what it lacks now
        self.asked_before_accusing = None
        self._persist(ViewRecord(view))
        self._ready.events.append(Event("new-view", f"view {view} with primary {self.config.primary(view)}"))
        for v in [v for v in self.view_changes if v <= view]:
            del self.view_changes[v]
        self.later_views = {v: senders for v, senders in self.later_views.items() if v > view}
        for v in [v for v in self.new_views if v < view]:
            del self.new_views[v]
        for slot in self.log.values():
            slot.pre_prepare = None
            slot.drop_views_below(view)
        max_seq = max((pp.seq for pp in nv.pre_prepares), default=min_seq)
        self.next_seq = max(max_seq, self.state.seq, min_seq) + 1
        for pp in nv.pre_prepares:
            if pp.seq <= self.low:
                continue
            self._accept_pre_prepare(pp)
        # requests proposed in older views are free again unless the new view re-proposes them
        # or a quorum already committed them
        self._rebuild_proposed()
        # a stable checkpoint this replica lacks: fetch the state it stands for
        if min_seq > self.state.seq:
            signers = sorted({c.sender for c in proof})
            self._start_state_transfer(signers)
        for key in list(self.eligible):
            pending = self.pending.get(key)
            if pending is not None:
                pending.quorum_tick = self.now  # give the new primary a full timeout
        self._try_propose()

    # =====================================================================================
    # signing, verification, evidence, persistence
    # =====================================================================================

    def _sign(self, statement: Statement) -> bytes:
        return self._signer.sign(statement.message())

    def _verify(self, sender: int, statement: Statement, signature: bytes, what: str, config: GroupConfig | None = None) -> None:
        public_key = (config or self.config).public_key(sender)
        if public_key is None or not self._verifier.verify(public_key, statement.message(), signature):
            raise ByzantineMessageError(sender, "bad-signature", f"{what} with an invalid signature")

    def _equivocation(self, first: Statement, first_sig: bytes, second: Statement, second_sig: bytes) -> None:
        slot = (first.signer, first.kind, first.slot)
        if slot in self.reported_equivocations:
            return  # one proof per slot is enough
        if len(self.reported_equivocations) < 100_000:
            self.reported_equivocations.add(slot)
        self._ready.evidence.append(Equivocation(SignedStatement(first, first_sig), SignedStatement(second, second_sig)))

    def _invalid_proposal(self, pp: PrePrepare) -> None:
        key = (pp.sender, StatementKind.PRE_PREPARE, (pp.view, pp.seq))
        if key in self.reported_invalid:
            return  # one proof per slot is enough
        item = find_invalid_proposal(
            pp.header, pp.sender, pp.signature, [e.leaf for e in pp.proposal.entries], self.config, verifier=self._verifier
        )
        if item is not None:
            if len(self.reported_invalid) < 100_000:
                self.reported_invalid.add(key)
            self._ready.evidence.append(item)

    def _invalid_vote_batch(self, batch: VoteBatch) -> None:
        key = (batch.sender, StatementKind.VOTE_BATCH, (batch.batch_no,))
        if key in self.reported_invalid:
            return
        item = find_invalid_vote_batch(
            self.config.group_id, batch.epoch, batch.sender, batch.batch_no, batch.model_version,
            batch.entries, batch.signature, self.config, verifier=self._verifier,
        )
        if item is not None:
            if len(self.reported_invalid) < 100_000:
                self.reported_invalid.add(key)
            self._ready.evidence.append(item)

    def _record_signed(self, kind: StatementKind, slot: tuple[int, ...], message: PeerMessage) -> None:
        self.signed[(kind, slot)] = message
        self._persist(SignedRecord(message))

    def _persist(self, record: PersistRecord) -> None:
        self._ready.persist.append(record)

    def _send(self, to: int | None, message: PeerMessage) -> None:
        self._ready.messages.append(Outbound(to, message))

    # =====================================================================================
    # epochs (membership changes)
    # =====================================================================================

    def _check_epoch(self, sender: int, epoch: int, what: str) -> None:
        """Messages of an earlier epoch are stale; of a later one, a sign this replica fell
        behind a membership change: it fetches the state (and with it the new config)."""
        if epoch == self.config.epoch:
            return
        if epoch < self.config.epoch:
            raise ByzantineMessageError(sender, "stale", f"{what} for earlier epoch {epoch}")
        self._start_state_transfer([sender])
        raise ByzantineMessageError(sender, "future-epoch", f"{what} for epoch {epoch}, this replica is in epoch {self.config.epoch}")

    def _config_at(self, seq: int) -> GroupConfig:
        """The config whose replicas order and checkpoint batch `seq`."""
        config = self.config
        while seq <= self.epoch_starts.get(config.epoch, 0) and config.epoch - 1 in self.configs:
            config = self.configs[config.epoch - 1]
        return config

    def _epoch_floor(self) -> int:
        """The last batch of the previous epoch: never re-proposed in this one."""
        return self.epoch_starts.get(self.config.epoch, 0)

    def _config_with_digest(self, config_digest: bytes) -> GroupConfig | None:
        return next((c for c in self.configs.values() if c.digest == config_digest), None)

    def _member_nearby(self, replica_id: int) -> bool:
        """A member of the previous epoch (late messages about its last batches) or of a later
        epoch this replica already knows of."""
        return any(c.is_member(replica_id) for e, c in self.configs.items() if e >= self.config.epoch - 1)

    def _adopt_config(self, config: GroupConfig, start_seq: int) -> None:
        """Make `config` the one in effect (after executing or installing batch `start_seq`)."""
        self.configs[config.epoch] = config
        self.epoch_starts.setdefault(config.epoch, start_seq)
        self.config, self.params, self.q, self.n = config, config.params, config.quorum_size, config.n
        self.retired = not config.is_member(self.id)
        # a new epoch starts in view 0 with an empty pipeline: nothing was proposed past start_seq
        self.view, self.view_active = 0, True
        self.view_change_deadline, self.view_change_attempts = None, 0
        self.view_changes.clear()
        self.new_views.clear()
        for key in [k for k in self.signed if k[0] in (StatementKind.VIEW_CHANGE, StatementKind.NEW_VIEW)]:
            del self.signed[key]
        self.waiting.clear()
        self.mismatch_rounds.clear()
        self.next_seq = max(self.next_seq, start_seq + 1)
        # votes are signed for one epoch: vote again on everything still pending
        self.vote_batches.clear()
        self.vote_batch_variants.clear()
        self.vote_batch_count.clear()
        self.eligible.clear()
        if self.retired:
            self.pending.clear()
            self.by_request_key.clear()
            self.held_requests = self.held_request_bytes = 0
            self.inference_queue.clear()
        for key, pending in list(self.pending.items()):
            if pending.request is None:
                self._forget_pending(key)
                continue
            pending.votes.clear()
            pending.quorum_tick = None
            pending.voted_versions.clear()
            self._queue_for_inference(key)
        # model updates for replicas this epoch removed can never be ordered now, nor can
        # membership changes asked of an earlier epoch (one at a time: a second one asked of
        # the same epoch as the change just made lost the race); kept, either would hold every
        # replica out of quiet() for good. An owner whose change was dropped must ask again.
        for key, op in list(self.pending_ops.items()):
            if isinstance(op, ModelUpdate) and not config.is_member(op.replica_id):
                del self.pending_ops[key]
                continue
            op_epoch = _membership_epoch(op)
            if op_epoch is not None and op_epoch < config.epoch:
                del self.pending_ops[key]
                self._ready.events.append(Event(
                    "control-dropped", f"{_describe_membership(op)}, asked of epoch {op_epoch}, was not ordered; ask again of epoch {config.epoch}"
                ))
        self._ready.events.append(Event(
            "epoch-change",
            f"epoch {config.epoch} from seq {start_seq + 1}: replicas {list(config.replica_ids)} (f={config.f})"
            + ("; this replica is no longer a member" if self.retired else ""),
        ))

    def _switch_epoch(self, new: GroupConfig, at_seq: int) -> None:
        old = self.config
        self._adopt_config(new, at_seq)
        self._persist(ViewRecord(0))
        self._ready.config_links.append(ConfigLinkRecord(ConfigLink(new, ()), at_seq))
        if old.is_member(self.id):
            # vouch for the next config: clients follow these signatures from the genesis config
            message = ConfigSignature(self.id, new.epoch, new.digest, self._signer.sign(link_message(new, self.id)))
            self._send(None, message)
            self._add_config_signature(message)

    def _gossip_config_signatures(self) -> None:
        """Each replica broadcasts its signature on a new config once. One that was lost, or
        that arrived before its receiver reached the epoch, left replicas short of a quorum for
        good: they could not vouch for the config to clients, nor to a replica catching up by
        state transfer, which then could not check a snapshot of the new epoch (the simulator
        found one stuck for good that way: a replica that crashed just before an epoch change).
        Short of a quorum, a replica shows its peers the signatures it has; one that has them
        already answers with all of its own (see _on_config_signature)."""
        epoch = self.config.epoch
        previous = self.configs.get(epoch - 1)
        if previous is None or len(self.config_signatures.get(epoch, {})) >= previous.quorum_size:
            return
        for message in self._config_signature_messages(epoch):
            self._send(None, message)

    def _config_signature_messages(self, epoch: int) -> list[ConfigSignature]:
        """The signatures on the epoch's config this replica holds, as their signers sent them."""
        digest_of_config = self.configs[epoch].digest
        return [ConfigSignature(signer, epoch, digest_of_config, signature) for signer, signature in sorted(self.config_signatures.get(epoch, {}).items())]

    def _on_config_signature(self, message: ConfigSignature) -> None:
        config = self.configs.get(message.epoch)
        previous = self.configs.get(message.epoch - 1)
        if config is None or previous is None:
            return  # an epoch this replica has not reached: it will sign that config itself
        known = self.config_signatures.get(message.epoch, {})
        if known.get(message.sender) == message.signature:
            # a copy: its sender (or the peer passing it on) is short of a quorum of signatures
            peer = self._via if self._via is not None else message.sender
            if len(known) >= previous.quorum_size and self._once_per_relay_timeout(self.shown_config_signatures, peer):
                for signature in self._config_signature_messages(message.epoch):
                    self._send(peer, signature)
            return
        public_key = previous.public_key(message.sender)
        if public_key is None:
            raise ByzantineMessageError(message.sender, "non-member", f"signs the epoch {message.epoch} config without being in epoch {previous.epoch}")
        if message.config_digest != config.digest or not self._verifier.verify(public_key, link_message(config, message.sender), message.signature):
            raise ByzantineMessageError(message.sender, "bad-signature", f"signature on the epoch {message.epoch} config")
        self._add_config_signature(message)

    def _add_config_signature(self, message: ConfigSignature) -> None:
        signatures = self.config_signatures.setdefault(message.epoch, {})
        if message.sender in signatures:
            return
        signatures[message.sender] = message.signature
        needed = self.configs[message.epoch - 1].quorum_size
        # persisted with our own signature, and again once a quorum vouches for the config
        if message.sender == self.id or len(signatures) == needed:
            link = ConfigLink(self.configs[message.epoch], tuple(QuorumSigned(r, s) for r, s in sorted(signatures.items())))
            record = ConfigLinkRecord(link, self.epoch_starts[message.epoch])
            self._persist(record)
            if len(signatures) >= needed:
                self._ready.config_links.append(record)

    # =====================================================================================
    # restart
    # =====================================================================================

    def _restore(self, records: Sequence[PersistRecord]) -> None:
        """Rebuild from what was persisted: the configs of later epochs, the stable checkpoint,
        the batches committed after it, what this replica signed (so it never signs a different
        thing for the same slot) and the batches it prepared (so its view-change messages still
        report them)."""
        committed: list[CommittedRecord] = []
        active_view = 0
        for record in records:
            if isinstance(record, ConfigLinkRecord):
                config = record.link.config
                self.configs[config.epoch] = config
                self.epoch_starts[config.epoch] = record.start_seq
                self.config_signatures.setdefault(config.epoch, {}).update({s.replica_id: s.signature for s in record.link.signatures})
            elif isinstance(record, ViewRecord):
                active_view = record.view  # the last one written is the view in effect
            elif isinstance(record, VoteReservationRecord):
                # continue above everything that may have been used before the restart
                self.vote_batch_no = max(self.vote_batch_no, record.ceiling)
                self.vote_batch_ceiling = max(self.vote_batch_ceiling, record.ceiling)
        for record in records:
            if isinstance(record, StableCheckpointRecord) and record.snapshot.seq >= self.low:
                config = self._config_with_digest(record.snapshot.config_digest)
                if config is None:
                    raise LocalProtocolError(f"the stable checkpoint at seq {record.snapshot.seq} is for an unknown config")
                self.state = ReplicatedState.from_snapshot(config, record.snapshot)
                if config.epoch != self.config.epoch:
                    self._adopt_config(config, self.epoch_starts.get(config.epoch, record.snapshot.seq))
                self.low = record.snapshot.seq
                self.stable_proof = record.proof
                self.stable_digest = self.state.state_digest()
                self.summaries = {self.low: self.state.summary()}
            elif isinstance(record, CommittedRecord):
                committed.append(record)
        for record in sorted(committed, key=lambda r: r.batch.header.seq):
            batch = record.batch
            seq = batch.header.seq
            if seq != self.state.seq + 1:
                continue
            config = self._config_at(seq)
            pp = PrePrepare(config.primary(batch.header.view), config.epoch, batch.header, batch.proposal, b"")
            slot = self._slot(seq)
            slot.contents.setdefault(batch.header.batch_digest, pp)
            slot.committed = (pp, batch.commits)
            slot.executed = True
            applied = self.state.apply(batch.header, batch.proposal)
            if seq % config.params.checkpoint_interval_batches == 0:
                self.summaries[seq] = self.state.summary()
            if applied.new_config is not None:
                self._adopt_config(applied.new_config, seq)
        for record in records:
            if isinstance(record, SignedRecord):
                self._restore_signed(record.message)
            elif isinstance(record, PreparedRecord):
                if record.pre_prepare.seq > max(self.low, self._epoch_floor(), self.state.seq - self.params.log_window_batches):
                    slot = self._slot(record.pre_prepare.seq)
                    proof = PreparedProof(record.pre_prepare, record.prepares)
                    if slot.prepared_proof is None or slot.prepared_proof.pre_prepare.view <= record.pre_prepare.view:
                        slot.prepared_proof = proof
                    slot.contents.setdefault(record.pre_prepare.header.batch_digest, record.pre_prepare)
        self.view = active_view
        self.view_active = True
        own_changes = [v for (kind, slot_key) in self.signed if kind is StatementKind.VIEW_CHANGE for v in slot_key]
        if own_changes and max(own_changes) > active_view:
            self.view = max(own_changes)
            self.view_active = False
            self.view_change_deadline = self.now + self._view_change_timeout()
            vc = self.signed[(StatementKind.VIEW_CHANGE, (self.view,))]
            self.view_changes.setdefault(self.view, {})[self.id] = vc  # type: ignore[assignment]
        self.next_seq = self.state.seq + 1
        for (kind, slot_key), message in self.signed.items():
            if kind is StatementKind.PRE_PREPARE and slot_key[0] == self.view and isinstance(message, PrePrepare):
                if message.epoch == self.config.epoch and message.seq > self._epoch_floor():
                    self.next_seq = max(self.next_seq, slot_key[1] + 1)
                    if self.view_active and message.seq > self.state.seq:
                        self._slot(message.seq).pre_prepare = message
        self._rebuild_proposed()
        # checkpoint messages this replica sent before the crash still count
        for (kind, slot_key), message in self.signed.items():
            if kind is StatementKind.CHECKPOINT and isinstance(message, Checkpoint) and message.seq > self.low:
                self._add_checkpoint(message)
        self.retired = not self.config.is_member(self.id)
        self._ready = Ready()  # nothing restored needs persisting again
        self.restored = True

    def _restore_signed(self, message: PeerMessage) -> None:
        if isinstance(message, VoteBatch):
            self.vote_batch_no = max(self.vote_batch_no, message.batch_no)
            self.signed[(StatementKind.VOTE_BATCH, (message.batch_no,))] = message
        elif isinstance(message, PrePrepare):
            if message.seq > self.low:
                self.signed[(StatementKind.PRE_PREPARE, (message.view, message.seq))] = message
                self._slot(message.seq).contents.setdefault(message.header.batch_digest, message)
        elif isinstance(message, (Prepare, Commit)):
            if message.seq > self.low:
                kind = StatementKind.PREPARE if isinstance(message, Prepare) else StatementKind.COMMIT
                self.signed[(kind, (message.view, message.seq))] = message
        elif isinstance(message, Checkpoint):
            if message.seq >= self.low:
                self.signed[(StatementKind.CHECKPOINT, (message.seq,))] = message
        elif isinstance(message, ViewChange):
            if message.epoch == self.config.epoch:
                self.signed[(StatementKind.VIEW_CHANGE, (message.new_view,))] = message
        elif isinstance(message, NewView):
            if message.epoch == self.config.epoch:
                self.signed[(StatementKind.NEW_VIEW, (message.view,))] = message
                self.new_views[message.view] = message


def _membership_epoch(op: ControlOp) -> int | None:
    """The epoch a membership change was asked of; None for a model update (of no epoch)."""
    if isinstance(op, JoinOp):
        return op.join.epoch
    if isinstance(op, LeaveOp):
        return op.leave.epoch
    if isinstance(op, EvictOp):
        return op.epoch
    return None


def _describe_membership(op: ControlOp) -> str:
    if isinstance(op, JoinOp):
        return f"the join of owner {op.join.owner_id!r} at {op.join.address}"
    if isinstance(op, LeaveOp):
        return f"the leave of replica {op.leave.replica_id}"
    if isinstance(op, EvictOp):
        return f"the eviction of replica {op.replica_id}"
    return type(op).__name__


def _op_key(op: ControlOp) -> tuple[object, ...]:
    """How pending control operations are told apart (and deduplicated)."""
    if isinstance(op, ModelUpdate):
        return ("model", op.replica_id, op.new_version)
    return ("membership", digest(Domain.CONTROL_OPS, op.canonical()))
