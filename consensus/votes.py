"""The vote pool: signed vote batches from every replica, indexed by request.

A vote names its request by (digest, client_id, request_id, label_space). The digest commits to
the ids and the label mapping, so correct voters always agree on the rest; a faulty voter that
pairs a digest with other ids just lands under a different key, which can never gather a quorum.
"""

from __future__ import annotations

from dataclasses import dataclass

from certs.batch import VoteEntry
from certs.request import InferenceRequest

from consensus.messages import VoteBatch

VoteKey = tuple[bytes, str, str, tuple[str, ...]]  # (request digest, client id, request id, label space)


def vote_key(entry: VoteEntry) -> VoteKey:
    return (entry.request_digest, entry.client_id, entry.request_id, entry.label_space)


@dataclass(slots=True)
class StoredVoteBatch:
    batch: VoteBatch
    by_digest: dict[bytes, VoteEntry]
    arrival_tick: int


class PendingRequest:
    """A request this replica knows of (from a client, a peer, or only through votes)."""

    __slots__ = (
        "key",
        "request",
        "first_tick",
        "votes",
        "quorum_tick",
        "queued_version",
        "voted_versions",
        "last_relay_tick",
        "relays",
    )

    def __init__(self, key: VoteKey, tick: int) -> None:
        self.key = key
        self.request: InferenceRequest | None = None
        self.first_tick = tick
        # voter -> model version -> vote batch number (the latest batch holding such a vote)
        self.votes: dict[int, dict[int, int]] = {}
        self.quorum_tick: int | None = None  # when it first had a quorum of voters
        self.queued_version: int | None = None  # version of this replica's queued/in-flight inference
        self.voted_versions: set[int] = set()  # versions this replica has voted with
        self.last_relay_tick = tick
        self.relays = 0  # retransmission rounds for it (relays, vote batch resends): each next wait doubles

    @property
    def digest(self) -> bytes:
        return self.key[0]

    @property
    def request_key(self) -> tuple[str, str]:
        return (self.key[1], self.key[2])

    @property
    def label_space(self) -> tuple[str, ...]:
        return self.key[3]

    def add_vote(self, voter: int, version: int, batch_no: int) -> None:
        by_version = self.votes.setdefault(voter, {})
        if batch_no >= by_version.get(version, -1):
            by_version[version] = batch_no
