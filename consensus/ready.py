"""What the core hands back to its runtime, etcd-raft style.

After any call (`submit`, `executed`, `step`, `tick`) the runtime drains `Replica.ready()` and must
handle its parts in this order:

1. `persist`: write every record durably (fsync) before anything else. A record is written before
   the message it protects leaves the replica, so a restarted replica never signs two different
   contents for one slot, never forgets it prepared a batch, and never re-uses a vote batch number.
2. `messages`: send. `to=None` means every other replica.
3. `inference`: run each batch through the model (one Triton call per batch), then call
   `executed(batch_id, outputs)`.
4. `committed`: batches executed in sequence order, each with its commit quorum: build and store
   certificates, answer clients.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from certs.batch import BatchHeader
from certs.request import InferenceRequest
from certs.evidence import Evidence
from certs.membership import ConfigLink

from consensus.messages import (
    Checkpoint,
    Commit,
    PeerMessage,
    PrePrepare,
    Prepare,
    Proposal,
    StateSnapshot,
    VoteBatch,
)


@dataclass(frozen=True, slots=True)
class Outbound:
    to: int | None  # None: broadcast to all other replicas
    message: PeerMessage


@dataclass(frozen=True, slots=True)
class InferenceBatch:
    batch_id: int
    model_version: int
    requests: tuple[InferenceRequest, ...]
    label_spaces: tuple[tuple[str, ...], ...]  # per request: () or the mapped decision names


@dataclass(frozen=True, slots=True)
class CommittedBatch:
    header: BatchHeader
    proposal: Proposal
    commits: tuple[Commit, ...]  # a quorum of COMMITs on `header`, ascending sender
    vote_batches: tuple[VoteBatch, ...]  # every vote batch the leaves refer to (accountability)
    duplicate_entries: tuple[int, ...]  # indexes of leaves already executed in an earlier batch
    via_state_transfer: bool = False


@dataclass(frozen=True, slots=True)
class Activation:
    """A model version takes effect for batches from `from_seq` on."""

    replica_id: int
    version: int
    weights_digest: bytes
    from_seq: int


@dataclass(frozen=True, slots=True)
class Event:
    """Something an operator wants in the log: view changes, stable checkpoints, state transfer."""

    kind: str
    detail: str


# -- persisted records ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignedRecord:
    """A message this replica signed (its own pre-prepares, prepares, commits, checkpoints,
    vote batches, view changes and new views)."""

    message: Union[VoteBatch, PrePrepare, Prepare, Commit, Checkpoint, PeerMessage]


@dataclass(frozen=True, slots=True)
class PreparedRecord:
    """This replica prepared a batch; the proof goes into its view-change messages."""

    pre_prepare: PrePrepare
    prepares: tuple[Prepare, ...]


@dataclass(frozen=True, slots=True)
class CommittedRecord:
    batch: CommittedBatch


@dataclass(frozen=True, slots=True)
class StableCheckpointRecord:
    """A checkpoint became stable: records at or below `snapshot.seq` may be pruned.

    `snapshot.executed` lists only the requests executed after `previous_seq` (the previous
    stable checkpoint), so each checkpoint writes O(new requests), not the whole table; a store
    folds them back together with `consensus.state.merge_snapshots`. On restore, previous_seq=0.
    """

    snapshot: StateSnapshot
    previous_seq: int
    proof: tuple[Checkpoint, ...]


@dataclass(frozen=True, slots=True)
class ViewRecord:
    view: int


@dataclass(frozen=True, slots=True)
class ConfigLinkRecord:
    """An epoch began after batch `start_seq` with `link.config`; `link.signatures` are the
    previous epoch's replicas vouching for it (a quorum once complete). Kept forever: clients
    follow these links from the genesis config."""

    link: ConfigLink
    start_seq: int


@dataclass(frozen=True, slots=True)
class VoteReservationRecord:
    """Vote batch numbers up to `ceiling` may be used. Reserved in blocks so that a vote batch
    needs no write of its own before it is sent: a restarted replica continues above the last
    ceiling, so it never signs two batches under one number."""

    ceiling: int


PersistRecord = Union[
    SignedRecord, PreparedRecord, CommittedRecord, StableCheckpointRecord, ViewRecord, ConfigLinkRecord, VoteReservationRecord
]


@dataclass
class Ready:
    persist: list[PersistRecord] = field(default_factory=list)
    messages: list[Outbound] = field(default_factory=list)
    inference: list[InferenceBatch] = field(default_factory=list)
    committed: list[CommittedBatch] = field(default_factory=list)
    activations: list[Activation] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)  # proofs that a peer misbehaved (certs/evidence.py)
    config_links: list[ConfigLinkRecord] = field(default_factory=list)  # epochs begun or newly vouched for
    # (client id, request id) of requests this replica was holding that an installed snapshot
    # shows executed: it has no batch, so no certificate, for them; their clients must ask a peer
    executed_unseen: list[tuple[str, str]] = field(default_factory=list)
    # (after_seq, through_seq) of batches an installed snapshot skipped: this replica holds no
    # certificates for their requests (the runtime may fetch them from peers)
    skipped_batches: list[tuple[int, int]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.persist or self.messages or self.inference or self.committed or self.activations or self.events
            or self.evidence or self.config_links or self.executed_unseen or self.skipped_batches
        )
