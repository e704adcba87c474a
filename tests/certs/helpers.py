"""Test fixtures for certs/: a group with real keys and a committed, signed batch of requests.

Keys come from fixed seeds so runs are reproducible; everything is signed with real Ed25519.
Also used by tests/bench/bench_certs.py.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from certs.batch import BatchHeader, Leaf, VoteEntry, model_versions_digest, ops_digest
from certs.certificate import Certificate, QuorumSignature, SignedVoteBatch, build_certificates
from certs.config import GroupConfig, Member, TaskSchema
from certs.keys import KeyPair
from certs.merkle import root_of_hashes
from certs.outputs import decision_space, quantise
from certs.policy import AgreementPolicy, Vote, decide
from certs.request import InferenceRequest, TensorData
from certs.statements import StatementKind

DIGITS = tuple(str(d) for d in range(10))
ANIMALS = ("cat", "dog", "horse", "sparrow", "truck")


def replica_key(replica_id: int, salt: str = "") -> KeyPair:
    return KeyPair(hashlib.sha256(f"replica-key/{salt}/{replica_id}".encode()).digest())


def owner_key(replica_id: int, salt: str = "") -> KeyPair:
    return KeyPair(hashlib.sha256(f"owner-key/{salt}/{replica_id}".encode()).digest())


@dataclass(frozen=True)
class Group:
    config: GroupConfig
    keys: dict[int, KeyPair]  # replica id -> replica signing key


def make_group(
    f: int = 1,
    *,
    group_id: str = "digits",
    epoch: int = 1,
    labels: Sequence[str] = DIGITS,
    top_k: int = 3,
    policy: AgreementPolicy = AgreementPolicy(),
    salt: str = "",
    n: int | None = None,
) -> Group:
    size = 3 * f + 1 if n is None else n
    members = tuple(
        Member(
            replica_id=i,
            owner_id=f"owner-{i}",
            public_key=replica_key(i, salt).public_key,
            owner_public_key=owner_key(i, salt).public_key,
            address=f"127.0.0.1:{7000 + i}",
            model_version=1,
        )
        for i in range(size)
    )
    task = TaskSchema("image", (8, 8), "FP32", tuple(labels), top_k)
    config = GroupConfig(group_id=group_id, epoch=epoch, f=f, members=members, task=task, policy=policy)
    return Group(config, {i: replica_key(i, salt) for i in range(size)})


def make_request(
    group_id: str, index: int, mapping: Sequence[tuple[str, str]] = (), client_id: str = "alice"
) -> InferenceRequest:
    pixels = hashlib.sha256(f"pixels/{index}".encode()).digest() * 8  # 256 bytes = 8x8 FP32
    return InferenceRequest(
        group_id=group_id,
        client_id=client_id,
        request_id=f"req-{index}",
        inputs=(TensorData("image", "FP32", (8, 8), pixels),),
        label_mapping=tuple(sorted(mapping)),
    )


def model_probabilities(rng: random.Random, num_classes: int, favourite: int, confidence: float) -> list[float]:
    """A softmax-like vector that puts `confidence` on `favourite` and spreads the rest."""
    rest = [rng.random() for _ in range(num_classes)]
    rest[favourite] = 0.0
    total = sum(rest) or 1.0
    probs = [(1.0 - confidence) * r / total for r in rest]
    probs[favourite] = confidence
    return probs


@dataclass(frozen=True)
class SignedBatch:
    group: Group
    requests: tuple[InferenceRequest, ...]
    header: BatchHeader
    leaves: tuple[Leaf, ...]
    quorum: tuple[QuorumSignature, ...]
    vote_batches: tuple[SignedVoteBatch, ...]
    certificates: tuple[Certificate, ...]  # compact
    accountable: tuple[Certificate, ...]  # with vote proofs

    @property
    def config(self) -> GroupConfig:
        return self.group.config


def sign_commit(group: Group, header: BatchHeader, replica_id: int) -> QuorumSignature:
    statement = header.statement(StatementKind.COMMIT, replica_id)
    key = group.keys.get(replica_id) or replica_key(replica_id, "outsider")
    return QuorumSignature(replica_id, key.signer().sign(statement.message()))


def make_batch(
    group: Group,
    size: int,
    *,
    seq: int = 1,
    view: int = 0,
    seed: int = 0,
    signers: Sequence[int] | None = None,
    voters: Sequence[int] | None = None,
    mapping: Sequence[tuple[str, str]] = (),
    agreement: float = 0.9,
    batch_no: int = 1,
    request_offset: int = 0,
) -> SignedBatch:
    """A committed batch of `size` requests: votes, vote batches, header, quorum, certificates.

    Each voter answers a request's true label with probability `agreement`, else a random one.
    """
    config = group.config
    rng = random.Random(seed)
    voter_ids = tuple(config.replica_ids if voters is None else voters)
    requests = tuple(make_request(config.group_id, request_offset + i, mapping) for i in range(size))
    space = decision_space(config.task.class_labels, dict(mapping)) if mapping else ()
    num_classes = len(space) or len(config.task.class_labels)
    top_k = min(config.task.top_k, num_classes)

    entries: dict[int, list[VoteEntry]] = {v: [] for v in voter_ids}
    leaves = []
    for request in requests:
        truth = rng.randrange(num_classes)
        votes = []
        for voter in voter_ids:
            favourite = truth if rng.random() < agreement else rng.randrange(num_classes)
            output = quantise(model_probabilities(rng, num_classes, favourite, rng.uniform(0.5, 0.99)), top_k)
            member = config.member(voter)
            votes.append(Vote(voter, 1 if member is None else member.model_version, output))
            entries[voter].append(
                VoteEntry(request.client_id, request.request_id, request.digest, space, output)
            )
        decision = decide(config.policy, config.f, config.quorum_size, votes, top_k)
        leaves.append(
            Leaf(
                request_digest=request.digest,
                client_id=request.client_id,
                request_id=request.request_id,
                label_space=space,
                policy=config.policy.describe(config.f),
                votes=tuple(votes),
                decision=decision,
            )
        )

    vote_batches = []
    for voter in voter_ids:
        hashes = tuple(e.hash for e in entries[voter])
        version = leaves[0].votes[voter_ids.index(voter)].model_version if leaves else 1
        unsigned = SignedVoteBatch(voter, batch_no, version, hashes, bytes(64))
        statement = unsigned.statement(config.group_id, config.epoch)
        key = group.keys.get(voter) or replica_key(voter, "outsider")
        vote_batches.append(SignedVoteBatch(voter, batch_no, version, hashes, key.signer().sign(statement.message())))

    header = BatchHeader(
        group_id=config.group_id,
        epoch=config.epoch,
        config_digest=config.digest,
        view=view,
        seq=seq,
        decisions_root=root_of_hashes([leaf.hash for leaf in leaves]),
        ops_digest=ops_digest(()),
        model_versions_digest=model_versions_digest(config.genesis_versions()),
        leaf_count=len(leaves),
    )
    signer_ids = tuple(config.replica_ids[: config.quorum_size] if signers is None else signers)
    quorum = tuple(sign_commit(group, header, r) for r in signer_ids)
    return SignedBatch(
        group=group,
        requests=requests,
        header=header,
        leaves=tuple(leaves),
        quorum=quorum,
        vote_batches=tuple(vote_batches),
        certificates=tuple(build_certificates(header, leaves, quorum)),
        accountable=tuple(build_certificates(header, leaves, quorum, vote_batches)),
    )


def header_for(group: Group, leaves: Sequence[Leaf], *, seq: int = 1, view: int = 0) -> BatchHeader:
    config = group.config
    return BatchHeader(
        group_id=config.group_id,
        epoch=config.epoch,
        config_digest=config.digest,
        view=view,
        seq=seq,
        decisions_root=root_of_hashes([leaf.hash for leaf in leaves]),
        ops_digest=ops_digest(()),
        model_versions_digest=model_versions_digest(config.genesis_versions()),
        leaf_count=len(leaves),
    )


def certify(
    group: Group,
    leaves: Sequence[Leaf],
    *,
    seq: int = 1,
    view: int = 0,
    signers: Sequence[int] | None = None,
) -> list[Certificate]:
    """Certificates for hand-made leaves, properly committed by `signers` (default: a quorum)."""
    header = header_for(group, leaves, seq=seq, view=view)
    config = group.config
    ids = config.replica_ids[: config.quorum_size] if signers is None else signers
    return build_certificates(header, leaves, [sign_commit(group, header, r) for r in ids])


@functools.lru_cache(maxsize=None)
def cached_batch(f: int = 1, size: int = 8, seed: int = 0) -> SignedBatch:
    """Batches are immutable: share them between tests (and hypothesis examples)."""
    return make_batch(make_group(f), size, seed=seed)
