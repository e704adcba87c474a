"""verify(): each way a certificate can be wrong is rejected with a message that says which."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certs.certificate import Certificate, QuorumSignature, VoteProof, encode_certificate
from certs.errors import CertificateError, DecodeError
from certs.outputs import ModelOutput
from certs.policy import NO_AGREEMENT, AgreementPolicy, Decision, PolicyKind, Vote
from certs.statements import StatementKind
from certs.verify import verify, verify_bytes
from tests.certs.helpers import (
    ANIMALS,
    SignedBatch,
    cached_batch,
    certify,
    make_batch,
    make_group,
    make_request,
    replica_key,
    sign_commit,
)


def with_quorum(cert: Certificate, quorum: tuple[QuorumSignature, ...]) -> Certificate:
    return dataclasses.replace(cert, quorum=quorum)


def test_a_valid_certificate_verifies_and_says_what_it_proves(batch: SignedBatch) -> None:
    cert, request, leaf = batch.certificates[3], batch.requests[3], batch.leaves[3]
    result = verify(cert, batch.config, request)
    assert result.label == leaf.decision.label
    assert result.label_name == batch.config.task.class_labels[leaf.decision.label]
    assert result.supporters == leaf.decision.support
    assert result.signers == (0, 1, 2)
    assert (result.seq, result.view, result.group_id, result.epoch) == (1, 0, "digits", 1)
    assert result.request_checked and not result.vote_proofs_checked
    assert result.probabilities[0] == (result.label_name, leaf.decision.probabilities[0][1] / 10_000)
    assert "supported by replicas" in result.describe()


def test_accountable_certificates_verify_every_vote(batch: SignedBatch) -> None:
    result = verify(batch.accountable[6], batch.config, batch.requests[6])
    assert result.vote_proofs_checked


def test_verify_bytes_decodes_then_verifies(batch: SignedBatch) -> None:
    assert verify_bytes(encode_certificate(batch.certificates[0]), batch.config).seq == 1
    with pytest.raises(DecodeError):
        verify_bytes(b"not a certificate", batch.config)


def test_only_a_certificate_is_accepted(batch: SignedBatch) -> None:
    with pytest.raises(CertificateError, match="expected a Certificate"):
        verify(encode_certificate(batch.certificates[0]), batch.config)  # type: ignore[arg-type]


# -- header and config -----------------------------------------------------------------------


def test_wrong_group_epoch_or_config_is_named(batch: SignedBatch) -> None:
    cert, config = batch.certificates[0], batch.config
    with pytest.raises(CertificateError, match="wrong group"):
        verify(cert, config.with_changes(group_id="other"))
    with pytest.raises(CertificateError, match="wrong epoch: certificate is from epoch 1, the config is epoch 2"):
        verify(cert, config.with_changes(epoch=2))
    with pytest.raises(CertificateError, match="wrong config digest"):
        verify(cert, config.with_changes(price_per_request=5))


def test_a_config_with_other_keys_is_another_config(batch: SignedBatch) -> None:
    other = make_group(1, salt="other keys").config
    with pytest.raises(CertificateError, match="wrong config digest"):
        verify(batch.certificates[0], other)


# -- the quorum, for f = 1, 2, 3 ---------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(f=st.sampled_from([1, 2, 3]), data=st.data())
def test_2f_signatures_are_not_enough(f: int, data: st.DataObject) -> None:
    b = cached_batch(f, 4)
    group = b.group
    signers = sorted(data.draw(st.sets(st.sampled_from(group.config.replica_ids), min_size=2 * f, max_size=2 * f)))
    quorum = tuple(sign_commit(group, b.header, r) for r in signers)
    with pytest.raises(CertificateError, match=f"^{2 * f} signatures, need {2 * f + 1}"):
        verify(with_quorum(b.certificates[0], quorum), b.config)


@settings(max_examples=30, deadline=None)
@given(f=st.sampled_from([1, 2, 3]), data=st.data())
def test_any_quorum_of_distinct_members_is_enough(f: int, data: st.DataObject) -> None:
    b = cached_batch(f, 4)
    ids = b.config.replica_ids
    signers = sorted(data.draw(st.sets(st.sampled_from(ids), min_size=2 * f + 1)))
    quorum = tuple(sign_commit(b.group, b.header, r) for r in signers)
    assert verify(with_quorum(b.certificates[1], quorum), b.config).signers == tuple(signers)


@settings(max_examples=30, deadline=None)
@given(f=st.sampled_from([1, 2, 3]), data=st.data())
def test_a_duplicate_signer_is_rejected(f: int, data: st.DataObject) -> None:
    b = cached_batch(f, 4)
    quorum = list(b.quorum)
    twice = data.draw(st.sampled_from(quorum))
    quorum.insert(quorum.index(twice), twice)  # still sorted, 2f+2 entries
    with pytest.raises(CertificateError, match=f"^duplicate signer {twice.replica_id}$"):
        verify(with_quorum(b.certificates[0], tuple(quorum)), b.config)


@settings(max_examples=30, deadline=None)
@given(f=st.sampled_from([1, 2, 3]), outsider=st.integers(10, 2**32 - 1), data=st.data())
def test_a_non_member_signer_is_rejected(f: int, outsider: int, data: st.DataObject) -> None:
    b = cached_batch(f, 4)
    # the outsider signs correctly with its own key; membership is what it lacks
    extra = sign_commit(b.group, b.header, outsider)
    quorum = tuple(sorted(b.quorum + (extra,), key=lambda q: q.replica_id))
    with pytest.raises(CertificateError, match=f"^unknown signer {outsider}: not a member"):
        verify(with_quorum(b.certificates[0], quorum), b.config)


@pytest.mark.parametrize("f", [1, 2, 3])
def test_a_signature_by_the_wrong_key_is_rejected(f: int) -> None:
    b = cached_batch(f, 4)
    message = b.header.statement(StatementKind.COMMIT, 2).message()
    forged = QuorumSignature(2, replica_key(2, "forger").signer().sign(message))
    quorum = tuple(forged if q.replica_id == 2 else q for q in b.quorum)
    with pytest.raises(CertificateError, match="^bad signature from replica 2$"):
        verify(with_quorum(b.certificates[0], quorum), b.config)


def test_a_signature_over_another_header_is_rejected(batch: SignedBatch) -> None:
    other = make_batch(batch.group, 2, seq=2)
    quorum = (batch.quorum[0], other.quorum[1], batch.quorum[2])
    with pytest.raises(CertificateError, match="^bad signature from replica 1$"):
        verify(with_quorum(batch.certificates[0], quorum), batch.config)


def test_an_unsorted_quorum_is_rejected(batch: SignedBatch) -> None:
    with pytest.raises(CertificateError, match="ascending"):
        verify(with_quorum(batch.certificates[0], tuple(reversed(batch.quorum))), batch.config)


def test_an_injected_verifier_is_used(batch: SignedBatch) -> None:
    class RejectAll:
        def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
            return False

    with pytest.raises(CertificateError, match="bad signature from replica 0"):
        verify(batch.certificates[0], batch.config, verifier=RejectAll())


# -- the leaf and the request ----------------------------------------------------------------


def test_a_leaf_from_another_batch_is_not_under_the_root(batch: SignedBatch) -> None:
    other = make_batch(batch.group, 8, seed=99)
    cert = dataclasses.replace(batch.certificates[2], leaf=other.leaves[2])
    with pytest.raises(CertificateError, match="leaf is not under the certified root"):
        verify(cert, batch.config)


@pytest.mark.parametrize("leaf_index", [3, 7, 99])
def test_a_wrong_position_is_not_under_the_root(batch: SignedBatch, leaf_index: int) -> None:
    cert = dataclasses.replace(batch.certificates[2], leaf_index=leaf_index)
    with pytest.raises(CertificateError, match="leaf is not under the certified root"):
        verify(cert, batch.config)


def test_a_truncated_proof_is_rejected(batch: SignedBatch) -> None:
    cert = batch.certificates[2]
    with pytest.raises(CertificateError, match="shorter than the tree is deep"):
        verify(dataclasses.replace(cert, proof=cert.proof[:-1]), batch.config)


def test_someone_elses_request_is_a_mismatch(batch: SignedBatch) -> None:
    cert = batch.certificates[2]
    with pytest.raises(CertificateError, match="request ids mismatch"):
        verify(cert, batch.config, batch.requests[3])
    mine = batch.requests[2]
    same_ids_other_inputs = dataclasses.replace(mine, inputs=batch.requests[3].inputs)
    with pytest.raises(CertificateError, match="^request digest mismatch"):
        verify(cert, batch.config, same_ids_other_inputs)
    with pytest.raises(CertificateError, match="your request is for group 'elsewhere'"):
        verify(cert, batch.config, dataclasses.replace(mine, group_id="elsewhere"))


def test_application_mapping_certificates_check_the_label_space() -> None:
    group = make_group(1, labels=ANIMALS)
    mapping = [("cat", "pet"), ("dog", "pet")]
    b = make_batch(group, 4, mapping=mapping)
    result = verify(b.certificates[1], group.config, b.requests[1])
    assert result.label_name in ("horse", "pet", "sparrow", "truck")
    # a leaf claiming the plain task labels for a request that asked for a mapping
    plain = make_batch(group, 4)
    request = make_request(group.config.group_id, 1, mapping)
    leaf = dataclasses.replace(plain.leaves[1], request_digest=request.digest)
    cert = certify(group, [leaf])[0]
    with pytest.raises(CertificateError, match="label space mismatch"):
        verify(cert, group.config, request)


# -- votes and decision ----------------------------------------------------------------------


def _recertify(batch: SignedBatch, index: int, **leaf_changes: object) -> Certificate:
    leaf = dataclasses.replace(batch.leaves[index], **leaf_changes)  # type: ignore[arg-type]
    return certify(batch.group, [leaf])[0]


def test_a_decision_that_does_not_follow_from_the_votes_is_rejected(batch: SignedBatch) -> None:
    leaf = batch.leaves[0]
    wrong = (leaf.decision.label + 1) % 10
    forged = Decision(wrong, ((wrong, 9000),), leaf.decision.support)
    with pytest.raises(
        CertificateError, match=r"^decision does not follow from the votes under plurality\(min_support=2\)"
    ):
        verify(_recertify(batch, 0, decision=forged), batch.config)


def test_changed_probabilities_alone_are_rejected(batch: SignedBatch) -> None:
    leaf = batch.leaves[0]
    probabilities = ((leaf.decision.label, leaf.decision.probabilities[0][1] + 1),) + leaf.decision.probabilities[1:]
    forged = dataclasses.replace(leaf.decision, probabilities=probabilities)
    with pytest.raises(CertificateError, match="probabilities"):
        verify(_recertify(batch, 0, decision=forged), batch.config)


def test_too_few_votes_are_rejected(batch: SignedBatch) -> None:
    with pytest.raises(CertificateError, match="^2 votes, need 3$"):
        verify(_recertify(batch, 0, votes=batch.leaves[0].votes[:2]), batch.config)


def test_votes_from_outsiders_or_twice_from_one_replica_are_rejected(batch: SignedBatch) -> None:
    votes = batch.leaves[0].votes
    outsider = votes[:3] + (dataclasses.replace(votes[3], replica_id=9),)
    with pytest.raises(CertificateError, match="vote from unknown replica 9"):
        verify(_recertify(batch, 0, votes=outsider), batch.config)
    twice = votes[:2] + (votes[1],) + votes[3:]
    with pytest.raises(CertificateError, match="distinct replicas in ascending order"):
        verify(_recertify(batch, 0, votes=twice), batch.config)


@pytest.mark.parametrize(
    "top, reason",
    [
        (((12, 9000),), "outside the label space"),
        (((1, 4000), (2, 5000)), "canonical order"),
        (((1, 9000), (2, 500), (3, 300), (4, 100)), "1..3 classes"),
        (((1, 20000),), "outside 1..10000"),
    ],
)
def test_malformed_votes_are_rejected(batch: SignedBatch, top: tuple[tuple[int, int], ...], reason: str) -> None:
    votes = batch.leaves[0].votes
    bad = (dataclasses.replace(votes[0], output=ModelOutput(top)),) + votes[1:]
    with pytest.raises(CertificateError, match=f"malformed vote from replica 0: .*{reason}"):
        verify(_recertify(batch, 0, votes=bad), batch.config)


def test_a_different_policy_is_rejected(batch: SignedBatch) -> None:
    with pytest.raises(CertificateError, match="wrong policy: certificate states 'trimmed_mean"):
        verify(_recertify(batch, 0, policy="trimmed_mean(trim=1)"), batch.config)


def test_no_agreement_is_certified_as_such() -> None:
    group = make_group(1)
    b = make_batch(group, 1)
    outputs = [ModelOutput(((i, 9000),)) for i in range(4)]  # four different labels
    votes = tuple(Vote(i, 1, outputs[i]) for i in range(4))
    leaf = dataclasses.replace(b.leaves[0], votes=votes, decision=Decision(NO_AGREEMENT, (), ()))
    result = verify(certify(group, [leaf])[0], group.config)
    assert not result.agreed and result.label == NO_AGREEMENT and result.label_name is None
    assert "NO_AGREEMENT" in result.describe()


def test_trimmed_mean_groups_verify() -> None:
    group = make_group(2, policy=AgreementPolicy(PolicyKind.TRIMMED_MEAN))
    b = make_batch(group, 5)
    for cert, request in zip(b.accountable, b.requests):
        assert verify(cert, group.config, request).policy == "trimmed_mean(trim=2)"


# -- vote proofs -----------------------------------------------------------------------------


def _with_proof(cert: Certificate, index: int, **changes: object) -> Certificate:
    proofs = list(cert.vote_proofs)
    proofs[index] = dataclasses.replace(proofs[index], **changes)  # type: ignore[arg-type]
    return dataclasses.replace(cert, vote_proofs=tuple(proofs))


def test_vote_proofs_are_checked(batch: SignedBatch) -> None:
    cert = batch.accountable[4]
    other: VoteProof = batch.accountable[5].vote_proofs[1]
    with pytest.raises(CertificateError, match="^bad vote batch signature from replica 1$"):
        verify(_with_proof(cert, 1, signature=bytes(64)), batch.config)
    with pytest.raises(CertificateError, match="model version 7, the leaf says 1"):
        verify(_with_proof(cert, 1, model_version=7), batch.config)
    with pytest.raises(CertificateError, match="replica 1's vote is not in its signed vote batch"):
        verify(_with_proof(cert, 1, entry_index=other.entry_index), batch.config)
    with pytest.raises(CertificateError, match="vote proof 1 is from replica 2"):
        verify(_with_proof(cert, 1, voter=2), batch.config)
    with pytest.raises(CertificateError, match="3 vote proofs for 4 votes"):
        verify(dataclasses.replace(cert, vote_proofs=cert.vote_proofs[:3]), batch.config)


def test_a_vote_batch_signature_of_another_epoch_is_rejected() -> None:
    group = make_group(1)
    b = make_batch(group, 3)
    # same signatures, presented to the next epoch's config: nothing carries over
    next_epoch = group.config.with_changes(epoch=2, previous_digest=group.config.digest)
    with pytest.raises(CertificateError, match="wrong epoch"):
        verify(b.accountable[0], next_epoch)


def test_hand_built_garbage_raises_only_certificate_error(batch: SignedBatch) -> None:
    cert = dataclasses.replace(batch.certificates[0], proof=("not bytes",))  # type: ignore[arg-type]
    with pytest.raises(CertificateError):
        verify(cert, batch.config)
