"""Agreement policies: what a group may certify from the votes of heterogeneous models."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certs.errors import CertificateError
from certs.outputs import PROB_SCALE, ModelOutput, decision_space, map_probabilities, quantise
from certs.policy import NO_AGREEMENT, AgreementPolicy, PolicyKind, Vote, decide

PLURALITY = AgreementPolicy()
TRIMMED = AgreementPolicy(PolicyKind.TRIMMED_MEAN)


def votes_for(labels: list[int], confidence: int = 8000) -> tuple[Vote, ...]:
    return tuple(Vote(i, 1, ModelOutput(((label, confidence),))) for i, label in enumerate(labels))


def test_plurality_certifies_the_label_most_votes_name() -> None:
    decision = decide(PLURALITY, 1, 3, votes_for([4, 4, 7, 4]), top_k=3)
    assert decision.label == 4 and decision.support == (0, 1, 3)
    assert decision.probabilities == ((4, 8000),)


def test_plurality_tie_is_no_agreement() -> None:
    decision = decide(PLURALITY, 1, 3, votes_for([4, 4, 7, 7]), top_k=3)
    assert decision.label == NO_AGREEMENT and not decision.agreed
    assert decision.probabilities == () and decision.support == ()


def test_plurality_below_min_support_is_no_agreement() -> None:
    # f = 1: min_support defaults to f+1 = 2, so a label one model names is never certified
    assert decide(PLURALITY, 1, 3, votes_for([1, 2, 3, 4]), top_k=3).label == NO_AGREEMENT
    strict = AgreementPolicy(PolicyKind.PLURALITY, min_support=4)
    assert decide(strict, 1, 3, votes_for([5, 5, 5, 6]), top_k=3).label == NO_AGREEMENT
    assert decide(strict, 1, 3, votes_for([5, 5, 5, 5]), top_k=3).label == 5


def test_plurality_averages_the_supporters_probabilities() -> None:
    votes = (
        Vote(0, 1, ModelOutput(((2, 9000), (1, 1000)))),
        Vote(1, 1, ModelOutput(((2, 7000), (3, 3000)))),
        Vote(2, 1, ModelOutput(((5, 9999),))),
    )
    decision = decide(PLURALITY, 1, 3, votes, top_k=2)
    assert decision.label == 2 and decision.support == (0, 1)
    assert decision.probabilities == ((2, 8000), (3, 1500))  # top 2 of {2: 8000, 1: 500, 3: 1500}


def test_policies_need_a_quorum_of_distinct_ascending_voters() -> None:
    with pytest.raises(CertificateError, match="fewer than the quorum"):
        decide(PLURALITY, 1, 3, votes_for([1, 1]), top_k=3)
    out_of_order = tuple(reversed(votes_for([1, 1, 1])))
    with pytest.raises(CertificateError, match="ascending"):
        decide(PLURALITY, 1, 3, out_of_order, top_k=3)


def test_policy_names() -> None:
    assert PLURALITY.describe(1) == "plurality(min_support=2)"
    assert AgreementPolicy(min_support=3).describe(1) == "plurality(min_support=3)"
    assert TRIMMED.describe(2) == "trimmed_mean(trim=2)"


outputs = st.lists(st.integers(0, 4), min_size=1, max_size=5, unique=True).flatmap(
    lambda classes: st.lists(st.integers(1, PROB_SCALE // len(classes)), min_size=len(classes), max_size=len(classes)).map(
        lambda qs: ModelOutput(tuple(sorted(zip(classes, qs), key=lambda cq: (-cq[1], cq[0]))))
    )
)


@settings(max_examples=80, deadline=None)
@given(f=st.integers(1, 3), data=st.data())
def test_trimmed_mean_stays_within_the_honest_range_whatever_f_votes_say(f: int, data: st.DataObject) -> None:
    n = 3 * f + 1
    honest = data.draw(st.lists(outputs, min_size=2 * f + 1, max_size=2 * f + 1))
    byzantine = data.draw(st.lists(outputs, min_size=f, max_size=f))
    order = data.draw(st.permutations(range(n)))
    everything = honest + byzantine
    votes = tuple(Vote(i, 1, everything[order[i]]) for i in range(n))
    decision = decide(TRIMMED, f, 2 * f + 1, votes, top_k=5)
    for cls, q in decision.probabilities:
        column = [o.probability_of(cls) for o in honest]
        assert min(column) <= q <= max(column)


@settings(max_examples=100, deadline=None)
@given(f=st.integers(1, 3), label=st.integers(0, 4), data=st.data())
def test_trimmed_mean_keeps_a_clear_honest_answer_against_f_extreme_votes(
    f: int, label: int, data: st.DataObject
) -> None:
    honest = [
        ModelOutput(((label, data.draw(st.integers(6000, PROB_SCALE))),)) for _ in range(2 * f + 1)
    ]
    rival = (label + 1) % 5
    extreme = [ModelOutput(((rival, PROB_SCALE),))] * f  # all-in on another label
    votes = tuple(Vote(i, 1, o) for i, o in enumerate(honest + extreme))
    assert decide(TRIMMED, f, 2 * f + 1, votes, top_k=5).label == label


def test_application_mapping_sums_probabilities() -> None:
    labels = ("cat", "dog", "horse", "truck")
    mapping = {"cat": "pet", "dog": "pet"}
    space, mapped = map_probabilities(np.array([[0.3, 0.3, 0.1, 0.3], [0.5, 0.0, 0.4, 0.1]]), labels, mapping)
    assert space == ("horse", "pet", "truck")
    np.testing.assert_allclose(mapped, [[0.1, 0.6, 0.3], [0.4, 0.5, 0.1]])
    # models that disagree on cat versus dog agree on "pet"
    a = quantise(map_probabilities(np.array([0.7, 0.1, 0.1, 0.1]), labels, mapping)[1], 3)
    b = quantise(map_probabilities(np.array([0.1, 0.7, 0.1, 0.1]), labels, mapping)[1], 3)
    votes = (Vote(0, 1, a), Vote(1, 1, b), Vote(2, 1, a))
    assert decide(PLURALITY, 1, 3, votes, top_k=3).label == space.index("pet")


def test_decision_space_refuses_labels_the_task_lacks() -> None:
    with pytest.raises(ValueError, match="zebra"):
        decision_space(("cat", "dog"), {"zebra": "animal"})


def test_quantise_is_canonical() -> None:
    out = quantise([0.1, 0.6, 0.3], top_k=2)
    assert out.top == ((1, 6000), (2, 3000))
    out.check(num_classes=3, top_k=2)
    assert quantise([0.0] * 5, top_k=2).top == ((0, 1),)  # all rounded to zero: still well formed
