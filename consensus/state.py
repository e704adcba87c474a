"""The replicated state: what executing the committed log in order produces.

- Executed requests: (client_id, request_id) -> sequence number, for exactly-once processing. A
  request key that shows up again in a later batch is a duplicate: it is skipped, not certified.
- Model versions in effect per replica, and scheduled activations.
- A hash chain over the committed batch digests, so two replicas with equal state digests have
  executed the same log.

Model version rule. A model update ordered in batch t takes effect for batches t + W onwards,
where W = log_window_batches. A primary may only propose seq s <= low + W (low = its stable
checkpoint), and a backup only accepts it under the same bound, so whoever checks the votes of
batch s >= t + W has t <= s - W <= low: batch t is executed and the new version is known to
every replica that validates s. The version a vote must carry in batch s is therefore a pure
function of the committed log, identical at every correct replica, with no pipeline stall.

The executed-request table only grows; its digest is an additive multiset hash (sum of entry
hashes mod 2**256, "AdHash") so a checkpoint digest costs O(1) instead of a pass over the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from certs.batch import BatchHeader, model_versions_digest
from certs.config import GroupConfig
from certs.encoding import Domain, digest, encode, sha256

from consensus.messages import ModelUpdate, Proposal, StateSnapshot

_ADHASH_MODULUS = 1 << 256
ZERO_DIGEST = bytes(32)


def _entry_hash(client_id: str, request_id: str, seq: int, request_digest: bytes) -> int:
    return int.from_bytes(sha256(encode(Domain.STATE, client_id, request_id, seq, request_digest)), "big")


@dataclass(frozen=True, slots=True)
class CheckpointSummary:
    """Everything of a snapshot but the executed-request table (which is kept live)."""

    seq: int
    chain_digest: bytes
    executed_hash: int
    versions: tuple[tuple[int, int, bytes], ...]
    scheduled: tuple[tuple[int, int, int, bytes], ...]

    def state_digest(self) -> bytes:
        return digest(
            Domain.STATE,
            self.seq,
            self.chain_digest,
            self.executed_hash.to_bytes(32, "big"),
            self.versions,
            self.scheduled,
        )


class ReplicatedState:
    def __init__(self, config: GroupConfig) -> None:
        self.config = config
        self.seq = 0  # executed through this sequence number
        self.chain_digest = ZERO_DIGEST
        # (client_id, request_id) -> (seq, request digest): the digest tells a retry (same request)
        # from a reuse of the id for a different request
        self.executed: dict[tuple[str, str], tuple[int, bytes]] = {}
        self._executed_hash = 0
        self.versions: dict[int, tuple[int, bytes]] = {
            rid: (version, wd) for rid, version, wd in config.genesis_versions()
        }
        self.scheduled: list[tuple[int, int, int, bytes]] = []  # sorted (activation_seq, rid, version, digest)

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

    def summary(self) -> CheckpointSummary:
        return CheckpointSummary(
            seq=self.seq,
            chain_digest=self.chain_digest,
            executed_hash=self._executed_hash,
            versions=tuple(sorted((rid, v, wd) for rid, (v, wd) in self.versions.items())),
            scheduled=tuple(self.scheduled),
        )

    def state_digest(self) -> bytes:
        return self.summary().state_digest()

    # -- execution ----------------------------------------------------------------------------
    def apply(self, header: BatchHeader, proposal: Proposal) -> tuple[list[int], list[tuple[int, int, bytes, int]]]:
        """Execute the next batch. Returns (indexes of duplicate leaves, activations made) where an
        activation is (replica_id, version, weights_digest, from_seq)."""
        seq = header.seq
        if seq != self.seq + 1:
            raise ValueError(f"batch {seq} executed out of order after {self.seq}")
        duplicates: list[int] = []
        for index, entry in enumerate(proposal.entries):
            key = (entry.leaf.client_id, entry.leaf.request_id)
            if key in self.executed:
                duplicates.append(index)
                continue
            digest_ = entry.leaf.request_digest
            self.executed[key] = (seq, digest_)
            self._executed_hash = (self._executed_hash + _entry_hash(key[0], key[1], seq, digest_)) % _ADHASH_MODULUS
        window = self.config.params.log_window_batches
        for op in proposal.ops:
            if isinstance(op, ModelUpdate) and op.new_version > self.latest_version(op.replica_id):
                self.scheduled.append((seq + window, op.replica_id, op.new_version, op.weights_digest))
        self.scheduled.sort()
        self.seq = seq
        self.chain_digest = sha256(self.chain_digest + header.batch_digest)
        activations: list[tuple[int, int, bytes, int]] = []
        while self.scheduled and self.scheduled[0][0] <= seq + 1:
            activation_seq, rid, version, wd = self.scheduled.pop(0)
            self.versions[rid] = (version, wd)
            activations.append((rid, version, wd, activation_seq))
        return duplicates, activations

    # -- snapshots --------------------------------------------------------------------------
    def snapshot(self, summary: CheckpointSummary, since_seq: int = 0) -> StateSnapshot:
        """The snapshot at `summary.seq`, listing executed requests with since_seq < seq <= it."""
        executed = tuple(
            sorted((c, r, s, d) for (c, r), (s, d) in self.executed.items() if since_seq < s <= summary.seq)
        )
        return StateSnapshot(summary.seq, summary.chain_digest, executed, summary.versions, summary.scheduled)

    @classmethod
    def from_snapshot(cls, config: GroupConfig, snapshot: StateSnapshot) -> ReplicatedState:
        state = cls(config)
        state.seq = snapshot.seq
        state.chain_digest = snapshot.chain_digest
        for client_id, request_id, seq, request_digest in snapshot.executed:
            state.executed[(client_id, request_id)] = (seq, request_digest)
            state._executed_hash = (
                state._executed_hash + _entry_hash(client_id, request_id, seq, request_digest)
            ) % _ADHASH_MODULUS
        state.versions = {rid: (v, wd) for rid, v, wd in snapshot.versions}
        state.scheduled = sorted(snapshot.scheduled)
        return state


def snapshot_digest(snapshot: StateSnapshot) -> bytes:
    """The state digest a full snapshot claims (recomputed, never taken from a peer)."""
    executed_hash = 0
    for client_id, request_id, seq, request_digest in snapshot.executed:
        executed_hash = (executed_hash + _entry_hash(client_id, request_id, seq, request_digest)) % _ADHASH_MODULUS
    return CheckpointSummary(
        snapshot.seq, snapshot.chain_digest, executed_hash, tuple(snapshot.versions), tuple(snapshot.scheduled)
    ).state_digest()


def merge_snapshots(parts: Sequence[StateSnapshot]) -> StateSnapshot:
    """Fold incremental snapshots (each listing only new executed requests) into a full one."""
    if not parts:
        raise ValueError("no snapshots to merge")
    executed = tuple(sorted(entry for part in parts for entry in part.executed))
    last = parts[-1]
    return StateSnapshot(last.seq, last.chain_digest, executed, last.versions, last.scheduled)
