"""Errors of the consensus core.

As in h11, remote faults and local misuse are different types: a message from a peer that breaks
the protocol raises `ByzantineMessageError` naming the sender (the replica logs it, counts it by
`kind`, keeps any evidence, and carries on); calling the core wrongly raises `LocalProtocolError`.
"""

from __future__ import annotations


class ConsensusError(Exception):
    pass


class ByzantineMessageError(ConsensusError):
    """A message that a correct peer would not have sent (or a stale replay of one).

    `kind` is a short stable code for metrics (bad-signature, wrong-epoch, stale, ...).
    """

    def __init__(self, sender: int, kind: str, reason: str) -> None:
        super().__init__(f"replica {sender}: {kind}: {reason}")
        self.sender = sender
        self.kind = kind
        self.reason = reason


class LocalProtocolError(ConsensusError):
    """The caller used the core wrongly (a bug in the runtime, not a peer's fault)."""


class RequestRejectedError(ConsensusError, ValueError):
    """A client request the group will not take (bad shape, wrong group, conflicting id)."""
