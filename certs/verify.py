"""Offline verification of an inference certificate against the group config a client pinned.

`verify` either returns a summary of what the certificate proves or raises `CertificateError`
whose message names the first thing that is wrong. Nothing is trusted beyond the config: the
signers must be members of the pinned epoch, the leaf must be under the signed root, the
decision must follow from the votes under the config's policy, and, with the client's request,
the certificate must be about exactly that request.

Cheap structural checks run before the signature checks, so a malformed certificate costs
little to reject.

Not checked offline: which model version each replica had in effect (the quorum vouches for
that through `model_versions_digest`; accountability-mode vote proofs add each voter's own
signature on its version).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from certs.batch import BatchHeader
from certs.certificate import Certificate, QuorumSignature, class_name, decode_certificate, vote_entry
from certs.config import GroupConfig
from certs.errors import CertificateError
from certs.keys import Ed25519Verifier, SignatureVerifier
from certs.merkle import verify_inclusion
from certs.outputs import PROB_SCALE, decision_space
from certs.policy import Decision, decide
from certs.request import InferenceRequest
from certs.statements import Statement, StatementKind

# Shared by default: certificates of one batch carry the same quorum signatures, and the
# verifier caches only successful checks, keyed by the full message.
_DEFAULT_VERIFIER = Ed25519Verifier()


@dataclass(frozen=True, slots=True)
class VerifiedCertificate:
    """What a valid certificate proves, for display and for callers that act on it."""

    group_id: str
    epoch: int
    view: int
    seq: int
    client_id: str
    request_id: str
    request_digest: bytes
    label: int  # NO_AGREEMENT (-1) when the policy certified no label
    label_name: str | None  # None when no agreement
    probabilities: tuple[tuple[str, float], ...]  # (label name, probability), most likely first
    supporters: tuple[int, ...]
    signers: tuple[int, ...]
    model_versions: tuple[tuple[int, int], ...]  # (replica id, model version) per vote
    policy: str
    vote_proofs_checked: bool  # accountability mode: every vote's own signature was checked
    request_checked: bool  # the caller's request was matched against the certificate

    @property
    def agreed(self) -> bool:
        return self.label_name is not None

    def describe(self) -> str:
        if self.agreed:
            top = ", ".join(f"{name} {p:.4f}" for name, p in self.probabilities)
            what = f"decision {self.label_name!r} ({top}), supported by replicas {list(self.supporters)}"
        else:
            what = "NO_AGREEMENT (the votes did not agree under the policy)"
        return (
            f"request {self.client_id}/{self.request_id}: {what} under {self.policy}; "
            f"group {self.group_id!r} epoch {self.epoch}, seq {self.seq} (view {self.view}), "
            f"committed by replicas {list(self.signers)}"
        )


def _short(digest: bytes) -> str:
    return digest.hex()[:16] + "..."


def check_header(header: BatchHeader, config: GroupConfig) -> None:
    """The header belongs to the pinned group, epoch and config."""
    if header.group_id != config.group_id:
        raise CertificateError(
            f"wrong group: certificate is for group {header.group_id!r}, the config is for {config.group_id!r}"
        )
    if header.epoch != config.epoch:
        raise CertificateError(f"wrong epoch: certificate is from epoch {header.epoch}, the config is epoch {config.epoch}")
    if header.config_digest != config.digest:
        raise CertificateError(
            f"wrong config digest: certificate names config {_short(header.config_digest)}, "
            f"the pinned config is {_short(config.digest)}"
        )


def check_quorum_members(quorum: Sequence[QuorumSignature], config: GroupConfig) -> tuple[int, ...]:
    """Signers are distinct members in ascending order, at least a quorum of them."""
    ids = [q.replica_id for q in quorum]
    for replica_id in ids:
        if not config.is_member(replica_id):
            raise CertificateError(
                f"unknown signer {replica_id}: not a member of group {config.group_id!r} epoch {config.epoch}"
            )
    seen: set[int] = set()
    for replica_id in ids:
        if replica_id in seen:
            raise CertificateError(f"duplicate signer {replica_id}")
        seen.add(replica_id)
    if ids != sorted(ids):
        raise CertificateError("quorum signatures are not in ascending replica order")
    if len(ids) < config.quorum_size:
        raise CertificateError(
            f"{len(ids)} signatures, need {config.quorum_size} (n={config.n}, f={config.f})"
        )
    return tuple(ids)


def check_quorum_signatures(
    header: BatchHeader, quorum: Sequence[QuorumSignature], config: GroupConfig, verifier: SignatureVerifier
) -> None:
    """Each signature is the signer's COMMIT over this header (members already checked)."""
    batch_digest = header.batch_digest
    for q in quorum:
        public_key = config.public_key(q.replica_id)
        statement = Statement(
            StatementKind.COMMIT, header.group_id, header.epoch, q.replica_id, (header.view, header.seq), batch_digest
        )
        if public_key is None or not verifier.verify(public_key, statement.message(), q.signature):
            raise CertificateError(f"bad signature from replica {q.replica_id}")


def verify_commit_quorum(
    header: BatchHeader,
    quorum: Sequence[QuorumSignature],
    config: GroupConfig,
    verifier: SignatureVerifier | None = None,
) -> tuple[int, ...]:
    """Header and quorum alone: a quorum of the pinned epoch committed this batch. Returns the signers."""
    try:
        check_header(header, config)
        signers = check_quorum_members(quorum, config)
        check_quorum_signatures(header, quorum, config, verifier or _DEFAULT_VERIFIER)
        return signers
    except CertificateError:
        raise
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        raise CertificateError(f"malformed batch header or quorum: {exc}") from exc


def _describe_decision(decision: Decision, names: Sequence[str]) -> str:
    if not decision.agreed:
        return "NO_AGREEMENT"
    name = class_name(names, decision.label) or f"class {decision.label}"
    return f"{name!r} with support {list(decision.support)}"


def _check_request(cert: Certificate, config: GroupConfig, request: InferenceRequest) -> tuple[str, ...]:
    leaf = cert.leaf
    if request.group_id != config.group_id:
        raise CertificateError(f"your request is for group {request.group_id!r}, the config is for {config.group_id!r}")
    if (leaf.client_id, leaf.request_id) != request.key:
        raise CertificateError(
            f"request ids mismatch: certificate is for client {leaf.client_id!r} request {leaf.request_id!r}, "
            f"yours is client {request.client_id!r} request {request.request_id!r}"
        )
    if leaf.request_digest != request.digest:
        raise CertificateError(
            f"request digest mismatch: certificate is about request {_short(leaf.request_digest)}, "
            f"yours hashes to {_short(request.digest)}"
        )
    if not request.label_mapping:
        return ()
    try:
        return decision_space(config.task.class_labels, dict(request.label_mapping))
    except ValueError as exc:
        raise CertificateError(f"your request's label mapping does not fit the task: {exc}") from exc


def _check_votes_and_decision(cert: Certificate, config: GroupConfig) -> tuple[str, ...]:
    """Votes are well formed and the decision recomputes from them; returns the label names."""
    leaf = cert.leaf
    names = leaf.label_space or config.task.class_labels
    num_classes = len(names)
    top_k = min(config.task.top_k, num_classes)

    if len(leaf.votes) < config.quorum_size:
        raise CertificateError(f"{len(leaf.votes)} votes, need {config.quorum_size}")
    voters = [vote.replica_id for vote in leaf.votes]
    for voter in voters:
        if not config.is_member(voter):
            raise CertificateError(f"vote from unknown replica {voter}")
    if voters != sorted(set(voters)):
        raise CertificateError("votes are not from distinct replicas in ascending order")
    for vote in leaf.votes:
        try:
            vote.output.check(num_classes, top_k)
        except ValueError as exc:
            raise CertificateError(f"malformed vote from replica {vote.replica_id}: {exc}") from exc

    expected_policy = config.policy.describe(config.f)
    if leaf.policy != expected_policy:
        raise CertificateError(
            f"wrong policy: certificate states {leaf.policy!r}, the config's policy is {expected_policy!r}"
        )
    expected = decide(config.policy, config.f, config.quorum_size, leaf.votes, top_k)
    if leaf.decision != expected:
        said, computed = _describe_decision(leaf.decision, names), _describe_decision(expected, names)
        if said == computed:  # same label and support: the probabilities differ
            said = f"{said}, probabilities {list(leaf.decision.probabilities)}"
            computed = f"{computed}, probabilities {list(expected.probabilities)}"
        raise CertificateError(
            f"decision does not follow from the votes under {expected_policy}: "
            f"the certificate says {said}, the votes give {computed}"
        )
    return names


def _check_vote_proofs(cert: Certificate, config: GroupConfig, verifier: SignatureVerifier) -> None:
    leaf, header = cert.leaf, cert.header
    if len(cert.vote_proofs) != len(leaf.votes):
        raise CertificateError(f"{len(cert.vote_proofs)} vote proofs for {len(leaf.votes)} votes")
    # all structural checks first, then the signatures
    for i, (vote, proof) in enumerate(zip(leaf.votes, cert.vote_proofs)):
        if proof.voter != vote.replica_id:
            raise CertificateError(f"vote proof {i} is from replica {proof.voter}, vote {i} is from replica {vote.replica_id}")
        if proof.model_version != vote.model_version:
            raise CertificateError(
                f"replica {vote.replica_id}'s signed vote batch {proof.batch_no} is for model version "
                f"{proof.model_version}, the leaf says {vote.model_version}"
            )
        try:
            verify_inclusion(
                vote_entry(leaf, vote).hash, proof.entry_index, proof.entry_count, proof.entry_path, proof.entries_root
            )
        except CertificateError as exc:
            raise CertificateError(
                f"replica {vote.replica_id}'s vote is not in its signed vote batch {proof.batch_no}: {exc}"
            ) from exc
    for proof in cert.vote_proofs:
        public_key = config.public_key(proof.voter)
        message = proof.statement(header.group_id, header.epoch).message()
        if public_key is None or not verifier.verify(public_key, message, proof.signature):
            raise CertificateError(f"bad vote batch signature from replica {proof.voter}")


def verify(
    certificate: Certificate,
    config: GroupConfig,
    request: InferenceRequest | None = None,
    *,
    verifier: SignatureVerifier | None = None,
) -> VerifiedCertificate:
    """Check a certificate against a pinned config (and the client's request, if given)."""
    if not isinstance(certificate, Certificate):
        raise CertificateError(f"expected a Certificate, got {type(certificate).__name__}")
    if request is not None and not isinstance(request, InferenceRequest):
        raise CertificateError(f"expected an InferenceRequest, got {type(request).__name__}")
    try:
        return _verify(certificate, config, request, verifier or _DEFAULT_VERIFIER)
    except CertificateError:
        raise
    except (ValueError, TypeError, AttributeError, OverflowError, IndexError) as exc:
        # a hand-built certificate with values of the wrong type or size
        raise CertificateError(f"malformed certificate: {exc}") from exc


def _verify(
    cert: Certificate, config: GroupConfig, request: InferenceRequest | None, verifier: SignatureVerifier
) -> VerifiedCertificate:
    header, leaf = cert.header, cert.leaf
    check_header(header, config)
    signers = check_quorum_members(cert.quorum, config)

    try:
        verify_inclusion(leaf.hash, cert.leaf_index, cert.tree_size, cert.proof, header.decisions_root)
    except CertificateError as exc:
        if str(exc).startswith("leaf is not under"):
            raise
        raise CertificateError(f"leaf is not under the certified root: {exc}") from exc

    if request is not None:
        expected_space = _check_request(cert, config, request)
        if leaf.label_space != expected_space:
            raise CertificateError(
                f"label space mismatch: the certificate decides among {list(leaf.label_space) or 'the task labels'}, "
                f"your request's mapping gives {list(expected_space) or 'the task labels'}"
            )
    elif list(leaf.label_space) != sorted(set(leaf.label_space)):
        raise CertificateError("label space is not a sorted list of distinct decision names")

    names = _check_votes_and_decision(cert, config)
    check_quorum_signatures(header, cert.quorum, config, verifier)
    if cert.vote_proofs:
        _check_vote_proofs(cert, config, verifier)

    decision = leaf.decision
    return VerifiedCertificate(
        group_id=header.group_id,
        epoch=header.epoch,
        view=header.view,
        seq=header.seq,
        client_id=leaf.client_id,
        request_id=leaf.request_id,
        request_digest=leaf.request_digest,
        label=decision.label,
        label_name=names[decision.label] if decision.agreed else None,
        probabilities=tuple((names[cls], q / PROB_SCALE) for cls, q in decision.probabilities),
        supporters=decision.support,
        signers=signers,
        model_versions=tuple((vote.replica_id, vote.model_version) for vote in leaf.votes),
        policy=leaf.policy,
        vote_proofs_checked=bool(cert.vote_proofs),
        request_checked=request is not None,
    )


def verify_bytes(
    data: bytes,
    config: GroupConfig,
    request: InferenceRequest | None = None,
    *,
    verifier: SignatureVerifier | None = None,
) -> VerifiedCertificate:
    """Decode a protobuf certificate and verify it; raises CertificateError (DecodeError if unreadable)."""
    return verify(decode_certificate(data), config, request, verifier=verifier)
