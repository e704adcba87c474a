"""Signed statements: the one shape every replica signature takes.

A replica signs `encode(domain(kind), group_id, epoch, signer, slot, content_digest)`. The kind
selects the domain tag, so a signature on one kind never verifies as another; the slot says which
position the statement claims (view and sequence number, a checkpoint's sequence number, a vote
batch's number); the content digest says what it claims there. A correct replica signs at most
one content per (kind, slot), so two valid statements that differ only in content are proof of
equivocation: `certs/evidence.py` builds on exactly this.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from certs.encoding import DIGEST_SIZE, Domain, encode
from certs.keys import SIGNATURE_SIZE, SignatureVerifier, Signer


class StatementKind(enum.Enum):
    PRE_PREPARE = "pre-prepare"  # slot (view, seq)
    PREPARE = "prepare"  # slot (view, seq)
    COMMIT = "commit"  # slot (view, seq)
    CHECKPOINT = "checkpoint"  # slot (seq,)
    VOTE_BATCH = "vote-batch"  # slot (vote batch number,)
    VIEW_CHANGE = "view-change"  # slot (new view,)
    NEW_VIEW = "new-view"  # slot (view,)


SLOT_ARITY: dict[StatementKind, int] = {
    StatementKind.PRE_PREPARE: 2,
    StatementKind.PREPARE: 2,
    StatementKind.COMMIT: 2,
    StatementKind.CHECKPOINT: 1,
    StatementKind.VOTE_BATCH: 1,
    StatementKind.VIEW_CHANGE: 1,
    StatementKind.NEW_VIEW: 1,
}

_DOMAINS: dict[StatementKind, Domain] = {
    StatementKind.PRE_PREPARE: Domain.PRE_PREPARE,
    StatementKind.PREPARE: Domain.PREPARE,
    StatementKind.COMMIT: Domain.COMMIT,
    StatementKind.CHECKPOINT: Domain.CHECKPOINT,
    StatementKind.VOTE_BATCH: Domain.VOTE_BATCH,
    StatementKind.VIEW_CHANGE: Domain.VIEW_CHANGE,
    StatementKind.NEW_VIEW: Domain.NEW_VIEW,
}


@dataclass(frozen=True, slots=True)
class Statement:
    kind: StatementKind
    group_id: str
    epoch: int
    signer: int
    slot: tuple[int, ...]
    content: bytes

    def __post_init__(self) -> None:
        if len(self.slot) != SLOT_ARITY[self.kind]:
            raise ValueError(f"a {self.kind.value} slot has {SLOT_ARITY[self.kind]} numbers")
        if len(self.content) != DIGEST_SIZE:
            raise ValueError("statement content must be a 32-byte digest")

    def message(self) -> bytes:
        return encode(_DOMAINS[self.kind], self.group_id, self.epoch, self.signer, self.slot, self.content)

    def sign(self, signer: Signer) -> SignedStatement:
        return SignedStatement(self, signer.sign(self.message()))


@dataclass(frozen=True, slots=True)
class SignedStatement:
    statement: Statement
    signature: bytes

    def verify(self, verifier: SignatureVerifier, public_key: bytes) -> bool:
        return len(self.signature) == SIGNATURE_SIZE and verifier.verify(
            public_key, self.statement.message(), self.signature
        )
