"""The replicated state: what executing the committed log in order produces.

- Executed requests: (client_id, request_id) -> (sequence number, request digest), for
  exactly-once processing. A request key that shows up again in a later batch is a duplicate:
  it is skipped, not certified. The digest tells a retry from a reuse of the id.
- Model versions in effect per replica, and scheduled activations.
- The group config in effect, and a scheduled epoch change (membership).
- The fee ledger: what each client spent and each owner earned.
- A hash chain over the committed batch digests, so two replicas with equal state digests have
  executed the same log.

Model version rule. A model update ordered in batch t takes effect for batches t + W onwards,
where W = log_window_batches. A primary may only propose seq s <= low + W (low = its stable
checkpoint), and a backup only accepts it under the same bound, so whoever checks the votes of
batch s >= t + W has t <= s - W <= low: batch t is executed and the new version is known to
every replica that validates s. The version a vote must carry in batch s is therefore a pure
function of the committed log, identical at every correct replica, with no pipeline stall.

Membership rule. A join, leave or eviction ordered in batch t takes effect after the first
checkpoint boundary E >= t + W (same argument: every replica that could propose or validate a
batch after E has executed t). Batches up to E belong to the old epoch; right after executing E
the state switches to the next config (epoch + 1) and the checkpoint at E, signed by the old
epoch's replicas, is where new members start. One change is scheduled at a time; a membership
operation ordered while one is pending is ignored (its owner submits it again afterwards).

Fees. For every certified request whose decision names a label, the client is charged the
config's `price_per_request` and the price is shared among the owners whose votes supported the
decision (integer credits; the remainder goes one credit each to the lowest replica ids).
Absent and dissenting voters earn nothing; a NO_AGREEMENT answer costs nothing.

Both the executed-request table and the ledger are digested with an additive multiset hash (sum
of entry hashes mod 2**256, "AdHash"), so a checkpoint digest costs O(1), not a pass over them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from certs.batch import BatchHeader, model_versions_digest
from certs.config import GroupConfig
from certs.encoding import Domain, Encodable, digest, encode, sha256
from certs.membership import JoinRequest, MembershipError, next_config
from certs.policy import NO_AGREEMENT

from consensus.messages import EvictOp, JoinOp, LeaveOp, MembershipOp, ModelUpdate, Proposal, StateSnapshot

_ADHASH_MODULUS = 1 << 256
ZERO_DIGEST = bytes(32)


def _entry_hash(client_id: str, request_id: str, seq: int, request_digest: bytes) -> int:
    return int.from_bytes(sha256(encode(Domain.STATE, client_id, request_id, seq, request_digest)), "big")


def _ledger_hash(kind: str, account: str, amount: int) -> int:
    return int.from_bytes(sha256(encode(Domain.LEDGER, kind, account, amount)), "big")


def ops_canonical(ops: Sequence[MembershipOp]) -> Encodable:
    return tuple(op.canonical() for op in ops)


@dataclass(frozen=True, slots=True)
class EpochChange:
    """What the log says about the next config: at `seq`, apply `ops` to the current config."""

    seq: int
    ops: tuple[MembershipOp, ...]


@dataclass(frozen=True, slots=True)
class CheckpointSummary:
    """Everything of a snapshot but the executed-request table (which is kept live)."""

    seq: int
    chain_digest: bytes
    executed_hash: int
    versions: tuple[tuple[int, int, bytes], ...]
    scheduled: tuple[tuple[int, int, int, bytes], ...]
    epoch: int
    config_digest: bytes
    epoch_change: EpochChange | None
    ledger: tuple[tuple[str, str, int], ...]  # (kind "client"|"owner", account, credits), sorted

    def state_digest(self) -> bytes:
        ledger_hash = 0
        for kind, account, amount in self.ledger:
            ledger_hash = (ledger_hash + _ledger_hash(kind, account, amount)) % _ADHASH_MODULUS
        change = (0, ()) if self.epoch_change is None else (self.epoch_change.seq, ops_canonical(self.epoch_change.ops))
        return digest(
            Domain.STATE,
            self.seq,
            self.chain_digest,
            self.executed_hash.to_bytes(32, "big"),
            self.versions,
            self.scheduled,
            self.epoch,
            self.config_digest,
            change,
            ledger_hash.to_bytes(32, "big"),
        )


@dataclass(frozen=True, slots=True)
class Applied:
    """What executing one batch did besides recording its requests."""

    duplicates: list[int]  # leaf indexes already executed in an earlier batch
    activations: list[tuple[int, int, bytes, int]]  # (replica_id, version, weights_digest, from_seq)
    new_config: GroupConfig | None  # the next epoch's config, when this batch closed the epoch


class ReplicatedState:
    def __init__(self, config: GroupConfig) -> None:
        self.config = config
        self.seq = 0  # executed through this sequence number
        self.chain_digest = ZERO_DIGEST
        # (client_id, request_id) -> (seq, request digest): the digest tells a retry (same request)
        # from a reuse of the id for a different request. Kept in execution order (dicts keep
        # insertion order; apply() only adds new keys, in seq order, and from_snapshot() inserts
        # by seq), so the requests executed after a given seq are the table's tail: see snapshot()
        self.executed: dict[tuple[str, str], tuple[int, bytes]] = {}
        self._executed_hash = 0
        self.versions: dict[int, tuple[int, bytes]] = {
            rid: (version, wd) for rid, version, wd in config.genesis_versions()
        }
        self.scheduled: list[tuple[int, int, int, bytes]] = []  # sorted (activation_seq, rid, version, digest)
        self.epoch_change: EpochChange | None = None
        self.client_spend: dict[str, int] = {}
        self.owner_earnings: dict[int, int] = {}

    # -- queries ---------------------------------------------------------------------------
    def versions_at(self, seq: int) -> dict[int, tuple[int, bytes]]:
        """The version table in effect for batch `seq` (seq > self.seq)."""
        table = dict(self.versions)
        for activation_seq, rid, version, wd in self.scheduled:
            if activation_seq <= seq:
                table[rid] = (version, wd)
        return table

    def versions_digest_at(self, seq: int) -> bytes:
        return model_versions_digest([(rid, v, wd) for rid, (v, wd) in self.versions_at(seq).items()])

    def latest_version(self, replica_id: int) -> int:
        """The newest version known for a replica, scheduled or in effect."""
        latest = self.versions.get(replica_id, (0, ZERO_DIGEST))[0]
        for _, rid, version, _ in self.scheduled:
            if rid == replica_id:
                latest = max(latest, version)
        return latest

    def ledger(self) -> tuple[tuple[str, str, int], ...]:
        entries = [("client", c, a) for c, a in self.client_spend.items()]
        entries += [("owner", str(r), a) for r, a in self.owner_earnings.items()]
        return tuple(sorted(entries))

    def summary(self) -> CheckpointSummary:
        return CheckpointSummary(
            seq=self.seq,
            chain_digest=self.chain_digest,
            executed_hash=self._executed_hash,
            versions=tuple(sorted((rid, v, wd) for rid, (v, wd) in self.versions.items())),
            scheduled=tuple(self.scheduled),
            epoch=self.config.epoch,
            config_digest=self.config.digest,
            epoch_change=self.epoch_change,
            ledger=self.ledger(),
        )

    def state_digest(self) -> bytes:
        return self.summary().state_digest()

    # -- execution ----------------------------------------------------------------------------
    def apply(self, header: BatchHeader, proposal: Proposal) -> Applied:
        """Execute the next batch."""
        seq = header.seq
        if seq != self.seq + 1:
            raise ValueError(f"batch {seq} executed out of order after {self.seq}")
        duplicates: list[int] = []
        price = self.config.price_per_request
        for index, entry in enumerate(proposal.entries):
            leaf = entry.leaf
            key = (leaf.client_id, leaf.request_id)
            if key in self.executed:
                duplicates.append(index)
                continue
            self.executed[key] = (seq, leaf.request_digest)
            self._executed_hash = (self._executed_hash + _entry_hash(key[0], key[1], seq, leaf.request_digest)) % _ADHASH_MODULUS
            if price and leaf.decision.label != NO_AGREEMENT and leaf.decision.support:
                self._charge(leaf.client_id, leaf.decision.support, price)
        window = self.config.params.log_window_batches
        interval = self.config.params.checkpoint_interval_batches
        for op in proposal.ops:
            if isinstance(op, ModelUpdate):
                if op.new_version > self.latest_version(op.replica_id) and self.config.is_member(op.replica_id):
                    self.scheduled.append((seq + window, op.replica_id, op.new_version, op.weights_digest))
            elif self.epoch_change is None and self._membership_applies(op):
                boundary = -(-(seq + window) // interval) * interval  # first checkpoint >= seq + W
                self.epoch_change = EpochChange(boundary, (op,))
        self.scheduled.sort()
        self.seq = seq
        self.chain_digest = sha256(self.chain_digest + header.batch_digest)
        activations: list[tuple[int, int, bytes, int]] = []
        while self.scheduled and self.scheduled[0][0] <= seq + 1:
            activation_seq, rid, version, wd = self.scheduled.pop(0)
            self.versions[rid] = (version, wd)
            activations.append((rid, version, wd, activation_seq))
        new_config = None
        if self.epoch_change is not None and self.epoch_change.seq == seq:
            new_config = self._switch_epoch(self.epoch_change.ops)
        return Applied(duplicates, activations, new_config)

    def _charge(self, client_id: str, supporters: Sequence[int], price: int) -> None:
        self.client_spend[client_id] = self.client_spend.get(client_id, 0) + price
        share, remainder = divmod(price, len(supporters))
        for index, rid in enumerate(sorted(supporters)):
            self.owner_earnings[rid] = self.owner_earnings.get(rid, 0) + share + (1 if index < remainder else 0)

    def _membership_applies(self, op: MembershipOp) -> bool:
        """Whether the op still makes a valid next config (checked again at execution, since
        several ops may have been proposed against the same config)."""
        try:
            next_config(self.config, *_joins_and_removals((op,)))
        except MembershipError:
            return False
        if isinstance(op, LeaveOp) and not self.config.is_member(op.leave.replica_id):
            return False
        return True

    def _switch_epoch(self, ops: Sequence[MembershipOp]) -> GroupConfig:
        joins, removed = _joins_and_removals(ops)
        new = next_config(self.config, joins, removed)
        self.config = new
        for rid in removed:
            self.versions.pop(rid, None)
        self.scheduled = [s for s in self.scheduled if s[1] not in set(removed)]
        for member in new.members:
            self.versions.setdefault(member.replica_id, (member.model_version, member.weights_digest))
        self.epoch_change = None
        return new

    # -- snapshots --------------------------------------------------------------------------
    def snapshot(self, summary: CheckpointSummary, since_seq: int = 0) -> StateSnapshot:
        """The snapshot at `summary.seq`, listing executed requests with since_seq < seq <= it.

        Walks the table back from its newest entry and stops at since_seq, so the incremental
        snapshot taken at every stable checkpoint costs what was executed since the previous one,
        not a pass over every request the group ever executed (which grows without bound)."""
        found: list[tuple[str, str, int, bytes]] = []
        for (c, r), (s, d) in reversed(self.executed.items()):
            if s <= since_seq:
                break
            if s <= summary.seq:
                found.append((c, r, s, d))
        executed = tuple(sorted(found))
        change = summary.epoch_change
        return StateSnapshot(
            summary.seq, summary.chain_digest, executed, summary.versions, summary.scheduled,
            summary.epoch, summary.config_digest,
            0 if change is None else change.seq, () if change is None else change.ops,
            summary.ledger,
        )

    @classmethod
    def from_snapshot(cls, config: GroupConfig, snapshot: StateSnapshot) -> ReplicatedState:
        """`config` is the config in effect after `snapshot.seq` (its digest must match)."""
        if (config.epoch, config.digest) != (snapshot.epoch, snapshot.config_digest):
            raise ValueError(f"snapshot at seq {snapshot.seq} is for epoch {snapshot.epoch}, not the given config's")
        state = cls(config)
        state.seq = snapshot.seq
        state.chain_digest = snapshot.chain_digest
        # by seq: the table is kept in execution order (see __init__)
        for client_id, request_id, seq, request_digest in sorted(snapshot.executed, key=lambda entry: entry[2]):
            state.executed[(client_id, request_id)] = (seq, request_digest)
            state._executed_hash = (
                state._executed_hash + _entry_hash(client_id, request_id, seq, request_digest)
            ) % _ADHASH_MODULUS
        state.versions = {rid: (v, wd) for rid, v, wd in snapshot.versions}
        state.scheduled = sorted(snapshot.scheduled)
        state.epoch_change = EpochChange(snapshot.epoch_change_seq, tuple(snapshot.epoch_change_ops)) if snapshot.epoch_change_seq else None
        for kind, account, amount in snapshot.ledger:
            if kind == "client":
                state.client_spend[account] = amount
            else:
                state.owner_earnings[int(account)] = amount
        return state


def _joins_and_removals(ops: Sequence[MembershipOp]) -> tuple[list[JoinRequest], list[int]]:
    joins = [op.join for op in ops if isinstance(op, JoinOp)]
    removed = [op.leave.replica_id for op in ops if isinstance(op, LeaveOp)]
    removed += [op.replica_id for op in ops if isinstance(op, EvictOp)]
    return joins, removed


def snapshot_digest(snapshot: StateSnapshot) -> bytes:
    """The state digest a full snapshot claims (recomputed, never taken from a peer)."""
    executed_hash = 0
    for client_id, request_id, seq, request_digest in snapshot.executed:
        executed_hash = (executed_hash + _entry_hash(client_id, request_id, seq, request_digest)) % _ADHASH_MODULUS
    change = EpochChange(snapshot.epoch_change_seq, tuple(snapshot.epoch_change_ops)) if snapshot.epoch_change_seq else None
    return CheckpointSummary(
        snapshot.seq, snapshot.chain_digest, executed_hash, tuple(snapshot.versions), tuple(snapshot.scheduled),
        snapshot.epoch, snapshot.config_digest, change, tuple(snapshot.ledger),
    ).state_digest()


def merge_snapshots(parts: Sequence[StateSnapshot]) -> StateSnapshot:
    """Fold incremental snapshots (each listing only new executed requests) into a full one."""
    if not parts:
        raise ValueError("no snapshots to merge")
    executed = tuple(sorted(entry for part in parts for entry in part.executed))
    last = parts[-1]
    return StateSnapshot(
        last.seq, last.chain_digest, executed, last.versions, last.scheduled, last.epoch, last.config_digest,
        last.epoch_change_seq, last.epoch_change_ops, last.ledger,
    )

