"""Agreement policies: the deterministic decision a group certifies from its signed votes.

Honest models disagree, so replicas agree on a function of the votes rather than on identical
outputs. The primary computes the decision, every backup and every verifier recomputes it.

- plurality(min_support): the label most votes name, certified only with at least min_support
  supporters (default f+1: then at least one correct replica's model produced it). A tie for
  first place is NO_AGREEMENT too: no deterministic tie-break would be fair to either label.
- trimmed_mean: per class, drop the f highest and f lowest quantised probabilities and average
  the rest, then take the argmax (lowest class index on ties); f arbitrary votes can move each
  class's figure only within the range of correct votes.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from certs.encoding import Encodable, bytes_item, int_item, ints_item, list_head
from certs.errors import PolicyError
from certs.outputs import ModelOutput, pack_pairs

NO_AGREEMENT = -1
_THREE_ITEMS = list_head(3)


class PolicyKind(str, enum.Enum):
    PLURALITY = "plurality"
    TRIMMED_MEAN = "trimmed_mean"


@dataclass(frozen=True, slots=True)
class AgreementPolicy:
    kind: PolicyKind = PolicyKind.PLURALITY
    # plurality only; None means f+1
    min_support: int | None = None

    def effective_min_support(self, f: int) -> int:
        return f + 1 if self.min_support is None else self.min_support

    def describe(self, f: int) -> str:
        if self.kind is PolicyKind.PLURALITY:
            return f"plurality(min_support={self.effective_min_support(f)})"
        return f"trimmed_mean(trim={f})"

    def canonical(self) -> Encodable:
        return (self.kind.value, -1 if self.min_support is None else self.min_support)


@dataclass(frozen=True, slots=True)
class Vote:
    """One replica's answer to one request, as it appears in a decision leaf."""

    replica_id: int
    model_version: int
    output: ModelOutput

    def canonical(self) -> Encodable:
        return (self.replica_id, self.model_version, self.output.canonical())

    def canonical_item(self) -> bytes:
        """The bytes `encode` writes for canonical(), made directly (a leaf hashes every vote)."""
        return _THREE_ITEMS + int_item(self.replica_id) + int_item(self.model_version) + bytes_item(self.output.canonical())


@dataclass(frozen=True, slots=True)
class Decision:
    """What the group certifies for one request."""

    label: int  # NO_AGREEMENT (-1) when the policy cannot certify a label
    probabilities: tuple[tuple[int, int], ...]  # (class, quantised probability), canonical order
    support: tuple[int, ...]  # replica ids whose vote named `label`, ascending

    @property
    def agreed(self) -> bool:
        return self.label != NO_AGREEMENT

    def canonical(self) -> Encodable:
        return (self.label, pack_pairs(self.probabilities), tuple(self.support))

    def canonical_item(self) -> bytes:
        """The bytes `encode` writes for canonical(), made directly."""
        return _THREE_ITEMS + int_item(self.label) + bytes_item(pack_pairs(self.probabilities)) + ints_item(self.support)


def _canonical_top(weights: dict[int, int], top_k: int) -> tuple[tuple[int, int], ...]:
    ranked = sorted(((cls, q) for cls, q in weights.items() if q > 0), key=lambda item: (-item[1], item[0]))
    return tuple(ranked[:top_k])


def _plurality(policy: AgreementPolicy, f: int, votes: Sequence[Vote], top_k: int) -> Decision:
    supporters: dict[int, list[int]] = {}
    for vote in votes:
        supporters.setdefault(vote.output.label, []).append(vote.replica_id)
    ranked = sorted(supporters.items(), key=lambda item: (-len(item[1]), item[0]))
    best_label, best = ranked[0]
    tied = len(ranked) > 1 and len(ranked[1][1]) == len(best)
    if tied or len(best) < policy.effective_min_support(f):
        return Decision(NO_AGREEMENT, (), ())
    backing = [vote.output for vote in votes if vote.output.label == best_label]
    sums: dict[int, int] = {}
    for output in backing:
        for cls, q in output.top:
            sums[cls] = sums.get(cls, 0) + q
    means = {cls: total // len(backing) for cls, total in sums.items()}
    return Decision(best_label, _canonical_top(means, top_k), tuple(sorted(best)))


def _trimmed_mean(f: int, votes: Sequence[Vote], top_k: int) -> Decision:
    classes = sorted({cls for vote in votes for cls, _ in vote.output.top})
    kept = len(votes) - 2 * f
    means: dict[int, int] = {}
    for cls in classes:
        column = sorted(vote.output.probability_of(cls) for vote in votes)
        means[cls] = sum(column[f : len(column) - f]) // kept
    top = _canonical_top(means, top_k)
    if not top:
        return Decision(NO_AGREEMENT, (), ())
    label = top[0][0]
    support = tuple(sorted(vote.replica_id for vote in votes if vote.output.label == label))
    return Decision(label, top, support)


def decide(policy: AgreementPolicy, f: int, quorum_size: int, votes: Sequence[Vote], top_k: int) -> Decision:
    """The certified decision for one request. `votes` are distinct voters in ascending order."""
    if len(votes) < quorum_size:
        raise PolicyError(f"{len(votes)} votes, fewer than the quorum of {quorum_size}")
    ids = [vote.replica_id for vote in votes]
    if ids != sorted(set(ids)):
        raise PolicyError("votes must come from distinct replicas in ascending order")
    if policy.kind is PolicyKind.PLURALITY:
        return _plurality(policy, f, votes, top_k)
    if policy.kind is PolicyKind.TRIMMED_MEAN:
        return _trimmed_mean(f, votes, top_k)
    raise PolicyError(f"unknown agreement policy {policy.kind!r}")
