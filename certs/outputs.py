"""Canonical model outputs: probabilities quantised to fixed point, top-k only.

Floating-point outputs differ between models, hardware and batch sizes, so a vote carries a
deterministic integer form: each probability rounded to units of 1/PROB_SCALE, keeping the
top_k classes with a non-zero quantised probability, ordered by probability (descending) then
class index. The label of an output is its first class. Ten thousand steps (0.01 %) are plenty to
vote with and keep a vote to a few bytes per class, so certificates stay small.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import starmap

import numpy as np


PROB_SCALE = 10_000


@dataclass(frozen=True, slots=True)
class ModelOutput:
    """One model's answer to one request: (class index, quantised probability) pairs."""

    top: tuple[tuple[int, int], ...]
    # its canonical bytes, made on first use: one output is hashed in its vote entry, again as a
    # vote in the leaf the primary builds, and in the certificates' vote proofs
    _packed: bytes | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def label(self) -> int:
        return self.top[0][0]

    def probability_of(self, class_index: int) -> int:
        for cls, q in self.top:
            if cls == class_index:
                return q
        return 0

    def canonical(self) -> bytes:
        packed = self._packed
        if packed is None:
            packed = pack_pairs(self.top)
            object.__setattr__(self, "_packed", packed)
        return packed

    def check(self, num_classes: int, top_k: int) -> None:
        """Raise ValueError unless this is a well-formed output for the label space."""
        top = self.top
        if not 1 <= len(top) <= top_k:
            raise ValueError(f"output must list 1..{top_k} classes, lists {len(top)}")
        total = 0
        previous_q = PROB_SCALE + 1
        previous_cls = -1
        seen: set[int] = set()
        for entry in top:
            if type(entry) is not tuple or len(entry) != 2:
                raise ValueError("output entries must be (class, probability) pairs")
            cls, q = entry
            if type(cls) is not int or type(q) is not int:
                raise ValueError("output classes and probabilities must be integers")
            if not 0 <= cls < num_classes:
                raise ValueError(f"class {cls} is outside the label space of {num_classes}")
            if not 0 < q <= PROB_SCALE:
                raise ValueError(f"quantised probability {q} is outside 1..{PROB_SCALE}")
            if q > previous_q or (q == previous_q and cls <= previous_cls):
                raise ValueError("output classes are not in canonical order")
            if cls in seen:
                raise ValueError(f"class {cls} appears twice")
            seen.add(cls)
            total += q
            previous_q, previous_cls = q, cls
        # each rounding adds at most half a step
        if total > PROB_SCALE + len(self.top):
            raise ValueError(f"quantised probabilities sum to {total}, more than {PROB_SCALE}")


_PAIR = struct.Struct(">qq")


def pack_pairs(pairs: tuple[tuple[int, int], ...]) -> bytes:
    """(class, quantised probability) pairs as fixed-width bytes (two signed 64-bit integers, any value
    the wire can carry, so a malformed vote can still be hashed and shown as evidence). Fixed
    width makes the packing injective; one bytes item hashes far faster than nested tuples, and
    every vote and decision is hashed several times on its way to a certificate. Only hashed,
    never sent: certificate sizes are unaffected."""
    try:
        return b"".join(starmap(_PAIR.pack, pairs))
    except struct.error as exc:
        raise ValueError(f"class or probability out of range: {exc}") from exc


def quantise(probabilities: Sequence[float] | np.ndarray, top_k: int) -> ModelOutput:
    """The canonical output for one probability vector."""
    probs = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if probs.size == 0:
        raise ValueError("empty probability vector")
    if not np.all(np.isfinite(probs)):
        raise ValueError("probabilities must be finite")
    q = np.floor(np.clip(probs, 0.0, 1.0) * PROB_SCALE + 0.5).astype(np.int64)
    # lexsort sorts by the last key first: descending q, then ascending class index
    order = np.lexsort((np.arange(q.size), -q))
    top = tuple((int(cls), int(q[cls])) for cls in order[:top_k] if q[cls] > 0)
    if not top:
        # every probability rounded to zero (a flat distribution over a huge label space):
        # keep the argmax with the smallest positive weight so the output stays well-formed
        top = ((int(order[0]), 1),)
    return ModelOutput(top)


def decision_space(class_labels: Sequence[str], mapping: Mapping[str, str]) -> tuple[str, ...]:
    """The label space after an application mapping: sorted decision names.

    Labels the mapping does not mention keep their own name, so nothing is silently dropped.
    """
    unknown = sorted(set(mapping) - set(class_labels))
    if unknown:
        raise ValueError(f"mapping names labels the task does not have: {', '.join(unknown)}")
    return tuple(sorted({mapping.get(label, label) for label in class_labels}))


def map_probabilities(
    probabilities: np.ndarray, class_labels: Sequence[str], mapping: Mapping[str, str]
) -> tuple[tuple[str, ...], np.ndarray]:
    """Apply an application mapping to a [batch, classes] probability array.

    The probability of a decision is the sum over the labels mapped to it, so models that
    disagree on cat versus dog still agree on "pet".
    """
    space = decision_space(class_labels, mapping)
    index = {name: i for i, name in enumerate(space)}
    projection = np.zeros((len(class_labels), len(space)), dtype=np.float64)
    for i, label in enumerate(class_labels):
        projection[i, index[mapping.get(label, label)]] = 1.0
    return space, np.asarray(probabilities, dtype=np.float64) @ projection
