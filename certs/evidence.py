"""Evidence of misbehaviour that anyone holding the group config can check offline.

- Equivocation: one replica signed two statements of the same kind for the same slot with
  different content. A correct replica signs at most one content per (kind, slot)
  (certs/statements.py), so the pair convicts the signer.
- Conflicting certificates: two certificates whose headers carry valid commit quorums for the
  same group, epoch and sequence number but different batches. Any two quorums share at least
  f+1 replicas, and those double signers committed both batches. Within one view each of them
  signed two COMMITs for the same slot, which is equivocation. Across views the pair proves that
  more than f replicas misbehaved (PBFT's safety argument, section 4.5); the double signers are
  the replicas the certificates name, though the view changes in between, not these two
  certificates, would show which of them lied.
- Invalid proposal: a PRE-PREPARE whose signed header commits (through decisions_root and
  leaf_count) to a leaf no correct primary would build: a policy other than the config's, fewer
  votes than a quorum, duplicate or non-member voters, a malformed vote, a decision that does not
  recompute from the votes; or to two leaves for one request. The leaves come with their audit
  paths, so only what the primary signed is judged. A proposal whose leaves do not hash to the
  signed root is NOT evidence: the signature does not cover them, so anyone relaying the header
  could have attached them.
- Invalid vote batch: a signed VoteBatch that no correct replica signs: an entry count the
  config forbids (none, or more than inference_batch_max), an entry whose output is malformed for
  its label space, or two entries for one request digest. The entries come with their audit
  paths under the signed entries_root.

`verify_evidence` raises CertificateError unless the item really proves misbehaviour, and
returns the accused replica ids. Evidence travels as protobuf (the Evidence message of
protos/certificate.proto) and as JSON, decoded as strictly as certificates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

from certs.batch import BatchHeader, Leaf, VoteEntry, vote_batch_content
from certs.certificate import (
    PATH_MAX,
    Certificate,
    _header_from_json,
    _leaf_from_json,
    _pairs,
    certificate_from_json,
    certificate_from_proto,
    certificate_to_json,
    certificate_to_proto,
    check_display_fields,
    json_get,
    json_hex,
    json_int,
    json_list,
    json_object,
    json_str,
)
from certs.config import GroupConfig
from certs.encoding import DIGEST_SIZE
from certs.errors import CertificateError, DecodeError
from certs.keys import SIGNATURE_SIZE, Ed25519Verifier, SignatureVerifier
from certs.merkle import MerkleTree, root_of_hashes, verify_inclusion
from certs.outputs import ModelOutput
from certs.policy import decide
from certs.statements import SLOT_ARITY, SignedStatement, Statement, StatementKind
from certs.verify import check_header, verify_commit_quorum
from certs.wire import (
    check_digest,
    check_int,
    check_list,
    check_str,
    header_from_proto,
    header_to_proto,
    leaf_from_proto,
    leaf_to_proto,
    parse_canonical,
    serialize,
    vote_entry_from_proto,
    vote_entry_to_proto,
)
from protos import certificate_pb2 as cpb

JSON_FORMAT = "quorumserve-evidence/v1"
_DEFAULT_VERIFIER = Ed25519Verifier()


@dataclass(frozen=True, slots=True)
class Equivocation:
    first: SignedStatement
    second: SignedStatement

    @property
    def accused(self) -> tuple[int, ...]:
        return (self.first.statement.signer,)


@dataclass(frozen=True, slots=True)
class ConflictingCertificates:
    a: Certificate
    b: Certificate

    @property
    def double_signers(self) -> tuple[int, ...]:
        """Replicas whose COMMIT signature is in both quorums."""
        return tuple(sorted(set(self.a.signers) & set(self.b.signers)))

    @property
    def same_view(self) -> bool:
        return self.a.header.view == self.b.header.view

    @property
    def accused(self) -> tuple[int, ...]:
        return self.double_signers


@dataclass(frozen=True, slots=True)
class ProvenLeaf:
    """A decision leaf and its audit path under a signed header's decisions_root."""

    leaf: Leaf
    index: int
    path: tuple[bytes, ...]  # bottom up


@dataclass(frozen=True, slots=True)
class InvalidProposal:
    """A signed PRE-PREPARE header and the leaves under its root that make it invalid: one leaf
    that is invalid by itself, or two leaves for the same request."""

    header: BatchHeader
    signer: int
    signature: bytes
    leaves: tuple[ProvenLeaf, ...]

    @property
    def accused(self) -> tuple[int, ...]:
        return (self.signer,)

    def statement(self) -> Statement:
        return self.header.statement(StatementKind.PRE_PREPARE, self.signer)


@dataclass(frozen=True, slots=True)
class ProvenVoteEntry:
    """A vote entry and its audit path under a signed VoteBatch's entries_root."""

    entry: VoteEntry
    index: int
    path: tuple[bytes, ...]  # bottom up


@dataclass(frozen=True, slots=True)
class InvalidVoteBatch:
    """A signed VoteBatch (by root) and the entries that make it invalid: none when its entry
    count alone is out of bounds, one malformed entry, or two entries for one request."""

    group_id: str
    epoch: int
    voter: int
    batch_no: int
    model_version: int
    entries_root: bytes
    entry_count: int
    signature: bytes
    entries: tuple[ProvenVoteEntry, ...]

    @property
    def accused(self) -> tuple[int, ...]:
        return (self.voter,)

    def statement(self) -> Statement:
        content = vote_batch_content(self.model_version, self.entries_root, self.entry_count)
        return Statement(StatementKind.VOTE_BATCH, self.group_id, self.epoch, self.voter, (self.batch_no,), content)


Evidence = Union[Equivocation, ConflictingCertificates, InvalidProposal, InvalidVoteBatch]
# One invalid leaf or entry, or a pair for one request: more would prove nothing more.
PROVEN_ITEMS_MAX = 2


def describe_slot(kind: StatementKind, slot: tuple[int, ...]) -> str:
    if SLOT_ARITY[kind] == 2 and len(slot) == 2:
        return f"view {slot[0]} seq {slot[1]}"
    names = {
        StatementKind.CHECKPOINT: "seq",
        StatementKind.VOTE_BATCH: "vote batch",
        StatementKind.VIEW_CHANGE: "new view",
        StatementKind.NEW_VIEW: "view",
    }
    return " ".join(f"{names.get(kind, 'slot')} {n}" for n in slot)


def find_equivocation(a: SignedStatement, b: SignedStatement) -> Equivocation | None:
    """The equivocation two statements show, or None. Signatures are not checked here:
    the runtime has verified them already, and `verify_evidence` checks them again. The pair is
    put in a fixed order, so the same two statements always give the same evidence."""
    x, y = a.statement, b.statement
    if (x.kind, x.group_id, x.epoch, x.signer, x.slot) != (y.kind, y.group_id, y.epoch, y.signer, y.slot):
        return None
    if x.content == y.content:
        return None
    first, second = (a, b) if (x.content, a.signature) <= (y.content, b.signature) else (b, a)
    return Equivocation(first, second)


def _verify_equivocation(item: Equivocation, config: GroupConfig, verifier: SignatureVerifier) -> tuple[int, ...]:
    x, y = item.first.statement, item.second.statement
    if x.kind != y.kind:
        raise CertificateError(f"no equivocation: the statements are of different kinds ({x.kind.value}, {y.kind.value})")
    if x.group_id != y.group_id:
        raise CertificateError(f"no equivocation: the statements are about different groups ({x.group_id!r}, {y.group_id!r})")
    if x.group_id != config.group_id:
        raise CertificateError(f"wrong group: evidence is about group {x.group_id!r}, the config is for {config.group_id!r}")
    if x.epoch != y.epoch:
        raise CertificateError(f"no equivocation: the statements are from different epochs ({x.epoch}, {y.epoch})")
    if x.epoch != config.epoch:
        raise CertificateError(f"wrong epoch: evidence is from epoch {x.epoch}, the config is epoch {config.epoch}")
    if x.signer != y.signer:
        raise CertificateError(f"no equivocation: the statements are signed by different replicas ({x.signer}, {y.signer})")
    public_key = config.public_key(x.signer)
    if public_key is None:
        raise CertificateError(f"unknown signer {x.signer}: not a member of group {config.group_id!r} epoch {config.epoch}")
    if x.slot != y.slot:
        raise CertificateError(
            f"no equivocation: the statements are for different slots "
            f"({describe_slot(x.kind, x.slot)}; {describe_slot(y.kind, y.slot)})"
        )
    if x.content == y.content:
        raise CertificateError("no equivocation: the two statements say the same thing")
    for which, signed in (("first", item.first), ("second", item.second)):
        if not signed.verify(verifier, public_key):
            raise CertificateError(f"bad signature on the {which} statement from replica {x.signer}")
    return (x.signer,)


def _verify_conflict(item: ConflictingCertificates, config: GroupConfig, verifier: SignatureVerifier) -> tuple[int, ...]:
    for which, cert in (("first", item.a), ("second", item.b)):
        try:
            verify_commit_quorum(cert.header, cert.quorum, config, verifier)
        except CertificateError as exc:
            raise CertificateError(f"{which} certificate: {exc}") from exc
    a, b = item.a.header, item.b.header
    if a.seq != b.seq:
        raise CertificateError(f"no conflict: the certificates are for different sequence numbers ({a.seq}, {b.seq})")
    if a.batch_digest == b.batch_digest:
        raise CertificateError("no conflict: both certificates certify the same batch")
    accused = item.double_signers
    # quorum intersection guarantees this for valid quorums; checked, not assumed
    if len(accused) < config.f + 1:
        raise CertificateError(f"the quorums share {len(accused)} replicas, fewer than f+1 = {config.f + 1}")
    return accused


# -- invalid proposals and vote batches ------------------------------------------------------


def _label_space_fault(label_space: Sequence[str]) -> str | None:
    # decision spaces are sorted, distinct names (certs.outputs.decision_space)
    if list(label_space) != sorted(set(label_space)):
        return "its label space is not a sorted list of distinct decision names"
    return None


def _output_fault(output: ModelOutput, label_space: Sequence[str], config: GroupConfig) -> str | None:
    classes = len(label_space) or len(config.task.class_labels)
    try:
        output.check(classes, min(config.task.top_k, classes))
    except ValueError as exc:
        return str(exc)
    return None


def leaf_fault(leaf: Leaf, config: GroupConfig) -> str | None:
    """Why no correct primary would propose this leaf under `config`, or None if it could.

    The same rules backups apply to a proposal's leaves (consensus/node.py) and verifiers apply to
    a certificate's leaf (certs/verify.py), minus everything that depends on replicated state."""
    fault = _label_space_fault(leaf.label_space)
    if fault is not None:
        return fault
    policy = config.policy.describe(config.f)
    if leaf.policy != policy:
        return f"it states policy {leaf.policy!r}, the config's policy is {policy!r}"
    if len(leaf.votes) < config.quorum_size:
        return f"it has {len(leaf.votes)} votes, fewer than the quorum of {config.quorum_size}"
    voters = [vote.replica_id for vote in leaf.votes]
    outsiders = [v for v in voters if not config.is_member(v)]
    if outsiders:
        return f"it counts votes of non-members {outsiders}"
    if voters != sorted(set(voters)):
        return f"its voters {voters} are not distinct replicas in ascending order"
    for vote in leaf.votes:
        fault = _output_fault(vote.output, leaf.label_space, config)
        if fault is not None:
            return f"the vote of replica {vote.replica_id} is malformed: {fault}"
    classes = len(leaf.label_space) or len(config.task.class_labels)
    expected = decide(config.policy, config.f, config.quorum_size, leaf.votes, min(config.task.top_k, classes))
    if leaf.decision != expected:
        return f"its decision (class {leaf.decision.label}) does not follow from its votes under {policy} (class {expected.label})"
    return None


def vote_entry_fault(entry: VoteEntry, config: GroupConfig) -> str | None:
    """Why no correct replica would sign this vote entry under `config`, or None if it could."""
    return _label_space_fault(entry.label_space) or _output_fault(entry.output, entry.label_space, config)


def _check_member(replica_id: int, config: GroupConfig) -> bytes:
    public_key = config.public_key(replica_id)
    if public_key is None:
        raise CertificateError(f"unknown signer {replica_id}: not a member of group {config.group_id!r} epoch {config.epoch}")
    return public_key


def _check_pair(keys: Sequence[Any], indexes: Sequence[int], what: str) -> None:
    if indexes[0] == indexes[1]:
        raise CertificateError(f"no misbehaviour: both {what}s are the same one (index {indexes[0]})")
    if keys[0] != keys[1]:
        raise CertificateError(f"no misbehaviour: the two {what}s are for different requests")


def proposal_fault(item: InvalidProposal, config: GroupConfig) -> str:
    """What is wrong with the proposal; raises CertificateError if the leaves show nothing wrong.
    Inclusion and signature are `verify_evidence`'s business."""
    leaves = item.leaves
    if not 1 <= len(leaves) <= PROVEN_ITEMS_MAX:
        raise CertificateError(f"invalid-proposal evidence holds {len(leaves)} leaves, not 1 or 2")
    if len(leaves) == 2:
        _check_pair([(p.leaf.client_id, p.leaf.request_id) for p in leaves], [p.index for p in leaves], "leave")
        a, b = leaves
        return f"leaves {a.index} and {b.index} are both for request {a.leaf.client_id}/{a.leaf.request_id}"
    proven = leaves[0]
    fault = leaf_fault(proven.leaf, config)
    if fault is None:
        raise CertificateError(f"no misbehaviour: leaf {proven.index} is a valid leaf under the config")
    return f"leaf {proven.index} (request {proven.leaf.client_id}/{proven.leaf.request_id}): {fault}"


def vote_batch_fault(item: InvalidVoteBatch, config: GroupConfig) -> str:
    """What is wrong with the vote batch; raises CertificateError if nothing shown is wrong."""
    entries = item.entries
    if len(entries) > PROVEN_ITEMS_MAX:
        raise CertificateError(f"invalid-vote-batch evidence holds {len(entries)} entries, not 0, 1 or 2")
    if not entries:
        limit = config.params.inference_batch_max
        if item.entry_count == 0:
            return "it is empty"
        if item.entry_count > limit:
            return f"it holds {item.entry_count} entries, more than inference_batch_max = {limit}"
        raise CertificateError(f"no misbehaviour shown: {item.entry_count} entries is an allowed size and no entry is given")
    if len(entries) == 2:
        _check_pair([p.entry.request_digest for p in entries], [p.index for p in entries], "entrie")
        a, b = entries
        return f"entries {a.index} and {b.index} both vote on request {a.entry.client_id}/{a.entry.request_id}"
    proven = entries[0]
    fault = vote_entry_fault(proven.entry, config)
    if fault is None:
        raise CertificateError(f"no misbehaviour: entry {proven.index} is a well-formed vote")
    return f"entry {proven.index} (request {proven.entry.client_id}/{proven.entry.request_id}) is malformed: {fault}"


def _verify_invalid_proposal(item: InvalidProposal, config: GroupConfig, verifier: SignatureVerifier) -> tuple[int, ...]:
    # the config's policy and members judge the leaves, so the header must be about this config
    check_header(item.header, config)
    public_key = _check_member(item.signer, config)
    proposal_fault(item, config)
    for proven in item.leaves:
        try:
            verify_inclusion(proven.leaf.hash, proven.index, item.header.leaf_count, proven.path, item.header.decisions_root)
        except CertificateError as exc:
            raise CertificateError(f"leaf {proven.index} is not under the signed decisions root: {exc}") from exc
    if len(item.signature) != SIGNATURE_SIZE or not verifier.verify(public_key, item.statement().message(), item.signature):
        raise CertificateError(f"bad PRE-PREPARE signature from replica {item.signer}")
    return (item.signer,)


def _verify_invalid_vote_batch(item: InvalidVoteBatch, config: GroupConfig, verifier: SignatureVerifier) -> tuple[int, ...]:
    if item.group_id != config.group_id:
        raise CertificateError(f"wrong group: evidence is about group {item.group_id!r}, the config is for {config.group_id!r}")
    if item.epoch != config.epoch:
        raise CertificateError(f"wrong epoch: evidence is from epoch {item.epoch}, the config is epoch {config.epoch}")
    public_key = _check_member(item.voter, config)
    vote_batch_fault(item, config)
    for proven in item.entries:
        try:
            verify_inclusion(proven.entry.hash, proven.index, item.entry_count, proven.path, item.entries_root)
        except CertificateError as exc:
            raise CertificateError(f"entry {proven.index} is not in the signed vote batch: {exc}") from exc
    if len(item.signature) != SIGNATURE_SIZE or not verifier.verify(public_key, item.statement().message(), item.signature):
        raise CertificateError(f"bad vote batch signature from replica {item.voter}")
    return (item.voter,)


def find_invalid_proposal(
    header: BatchHeader,
    signer: int,
    signature: bytes,
    leaves: Sequence[Leaf],
    config: GroupConfig,
    *,
    verifier: SignatureVerifier | None = None,
) -> InvalidProposal | None:
    """Evidence against a PRE-PREPARE's signer when its leaves prove it invalid, else None.

    None too when the leaves do not hash to the signed root and leaf count (the signature does
    not cover them) or the signature does not verify: such a message proves nothing about its
    claimed signer. The item returned always passes `verify_evidence`."""
    hashes = [leaf.hash for leaf in leaves]
    if header.leaf_count != len(leaves) or root_of_hashes(hashes) != header.decisions_root:
        return None
    tree = MerkleTree(hashes)
    first_index: dict[tuple[str, str], int] = {}
    for index, leaf in enumerate(leaves):
        key = (leaf.client_id, leaf.request_id)
        earlier = first_index.setdefault(key, index)
        chosen: tuple[int, ...]
        if earlier != index:
            chosen = (earlier, index)
        elif leaf_fault(leaf, config) is not None:
            chosen = (index,)
        else:
            continue
        item = InvalidProposal(
            header, signer, signature, tuple(ProvenLeaf(leaves[i], i, tree.proof(i)) for i in chosen)
        )
        return item if _proves(item, config, verifier) else None
    return None


def find_invalid_vote_batch(
    group_id: str,
    epoch: int,
    voter: int,
    batch_no: int,
    model_version: int,
    entries: Sequence[VoteEntry],
    signature: bytes,
    config: GroupConfig,
    *,
    verifier: SignatureVerifier | None = None,
) -> InvalidVoteBatch | None:
    """Evidence against a vote batch's signer when the batch is invalid, else None (also when
    its signature does not verify). The item returned always passes `verify_evidence`."""
    hashes = [entry.hash for entry in entries]
    tree = MerkleTree(hashes)

    def item_of(chosen: Sequence[int]) -> InvalidVoteBatch:
        proven = tuple(ProvenVoteEntry(entries[i], i, tree.proof(i)) for i in chosen)
        return InvalidVoteBatch(group_id, epoch, voter, batch_no, model_version, tree.root, len(entries), signature, proven)

    candidate: InvalidVoteBatch | None = None
    if not entries or len(entries) > config.params.inference_batch_max:
        candidate = item_of(())
    else:
        first_index: dict[bytes, int] = {}
        for index, entry in enumerate(entries):
            earlier = first_index.setdefault(entry.request_digest, index)
            if earlier != index:
                candidate = item_of((earlier, index))
                break
            if vote_entry_fault(entry, config) is not None:
                candidate = item_of((index,))
                break
    if candidate is None or not _proves(candidate, config, verifier):
        return None
    return candidate


def _proves(item: Evidence, config: GroupConfig, verifier: SignatureVerifier | None) -> bool:
    try:
        verify_evidence(item, config, verifier=verifier)
    except CertificateError:
        return False
    return True


def verify_evidence(item: Evidence, config: GroupConfig, *, verifier: SignatureVerifier | None = None) -> tuple[int, ...]:
    """The replica ids the evidence convicts; raises CertificateError unless it proves misbehaviour."""
    checker = verifier or _DEFAULT_VERIFIER
    try:
        if isinstance(item, Equivocation):
            return _verify_equivocation(item, config, checker)
        if isinstance(item, ConflictingCertificates):
            return _verify_conflict(item, config, checker)
        if isinstance(item, InvalidProposal):
            return _verify_invalid_proposal(item, config, checker)
        if isinstance(item, InvalidVoteBatch):
            return _verify_invalid_vote_batch(item, config, checker)
    except CertificateError:
        raise
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        raise CertificateError(f"malformed evidence: {exc}") from exc
    raise CertificateError(f"not evidence: {type(item).__name__}")


def describe_evidence(item: Evidence, accused: tuple[int, ...], config: GroupConfig | None = None) -> str:
    """One sentence for people about verified evidence; with the config, the invalid kinds also
    say exactly what is wrong."""
    if isinstance(item, InvalidProposal):
        h = item.header
        where = f"view {h.view} seq {h.seq} in group {h.group_id!r} epoch {h.epoch}"
        what = _fault_or(proposal_fault, item, config, f"{len(item.leaves)} of its leaves show it cannot be valid")
        return f"replica {item.signer} signed an invalid PRE-PREPARE for {where}: {what}"
    if isinstance(item, InvalidVoteBatch):
        where = f"vote batch {item.batch_no} in group {item.group_id!r} epoch {item.epoch}"
        what = _fault_or(vote_batch_fault, item, config, "no correct replica signs such a batch")
        return f"replica {item.voter} signed an invalid {where}: {what}"
    if isinstance(item, Equivocation):
        s = item.first.statement
        return (
            f"replica {s.signer} equivocated: it signed two different {s.kind.value} statements for "
            f"{describe_slot(s.kind, s.slot)} in group {s.group_id!r} epoch {s.epoch}"
        )
    h = item.a.header
    where = f"group {h.group_id!r} epoch {h.epoch} seq {h.seq}"
    if item.same_view:
        return f"replicas {list(accused)} each signed COMMITs for two different batches at {where} (view {h.view})"
    return (
        f"two different batches were committed at {where} (views {item.a.header.view} and "
        f"{item.b.header.view}): more than f replicas misbehaved; replicas {list(accused)} committed both"
    )


def _fault_or(fault: Any, item: Any, config: GroupConfig | None, fallback: str) -> str:
    if config is None:
        return fallback
    try:
        return str(fault(item, config))
    except CertificateError:
        return fallback


# -- protobuf ------------------------------------------------------------------------------


def statement_to_proto(signed: SignedStatement, out: cpb.EvidenceStatement | None = None) -> cpb.EvidenceStatement:
    message = cpb.EvidenceStatement() if out is None else out
    s = signed.statement
    message.kind = s.kind.value
    message.group_id = s.group_id
    message.epoch = s.epoch
    message.signer = s.signer
    message.slot.extend(s.slot)
    message.content = s.content
    message.signature = signed.signature
    return message


def _statement(kind: str, group_id: str, epoch: int, signer: int, slot: tuple[int, ...], content: bytes) -> Statement:
    try:
        statement_kind = StatementKind(kind)
    except ValueError as exc:
        raise DecodeError(f"unknown statement kind {kind!r}") from exc
    if len(slot) != SLOT_ARITY[statement_kind]:
        raise DecodeError(f"a {kind} statement's slot has {SLOT_ARITY[statement_kind]} numbers, not {len(slot)}")
    return Statement(statement_kind, group_id, epoch, signer, slot, content)


def statement_from_proto(message: cpb.EvidenceStatement) -> SignedStatement:
    if len(message.signature) != SIGNATURE_SIZE:
        raise DecodeError(f"statement signature must be {SIGNATURE_SIZE} bytes, is {len(message.signature)}")
    statement = _statement(
        check_str(message.kind, "statement kind"),
        check_str(message.group_id, "group id"),
        check_int(message.epoch, "epoch"),
        int(message.signer),
        tuple(check_int(n, "slot number") for n in check_list(message.slot, "slot", 2)),
        check_digest(message.content, "statement content"),
    )
    return SignedStatement(statement, bytes(message.signature))


def evidence_to_proto(item: Evidence) -> cpb.Evidence:
    message = cpb.Evidence()
    if isinstance(item, Equivocation):
        statement_to_proto(item.first, message.equivocation.first)
        statement_to_proto(item.second, message.equivocation.second)
    elif isinstance(item, ConflictingCertificates):
        certificate_to_proto(item.a, message.conflicting_certificates.a)
        certificate_to_proto(item.b, message.conflicting_certificates.b)
    elif isinstance(item, InvalidProposal):
        ip = message.invalid_proposal
        header_to_proto(item.header, ip.header)
        ip.signer = item.signer
        ip.signature = item.signature
        for proven in item.leaves:
            out = ip.leaves.add()
            leaf_to_proto(proven.leaf, out.leaf)
            out.index = proven.index
            out.path.extend(proven.path)
    else:
        iv = message.invalid_vote_batch
        iv.group_id = item.group_id
        iv.epoch = item.epoch
        iv.voter = item.voter
        iv.batch_no = item.batch_no
        iv.model_version = item.model_version
        iv.entries_root = item.entries_root
        iv.entry_count = item.entry_count
        iv.signature = item.signature
        for entry in item.entries:
            out_entry = iv.entries.add()
            vote_entry_to_proto(entry.entry, out_entry.entry)
            out_entry.index = entry.index
            out_entry.path.extend(entry.path)
    return message


def _signature(value: bytes, what: str) -> bytes:
    if len(value) != SIGNATURE_SIZE:
        raise DecodeError(f"{what} must be {SIGNATURE_SIZE} bytes, is {len(value)}")
    return bytes(value)


def _path_from_proto(values: Sequence[bytes], what: str) -> tuple[bytes, ...]:
    return tuple(check_digest(v, f"{what} node") for v in check_list(values, what, PATH_MAX))


def _invalid_proposal_from_proto(message: cpb.InvalidProposal) -> InvalidProposal:
    if not message.HasField("header"):
        raise DecodeError("invalid-proposal evidence has no header")
    leaves = []
    for i, proven in enumerate(check_list(message.leaves, "proven leaves", PROVEN_ITEMS_MAX)):
        if not proven.HasField("leaf"):
            raise DecodeError(f"proven leaf {i} has no leaf")
        leaves.append(ProvenLeaf(leaf_from_proto(proven.leaf), check_int(proven.index, "leaf index"),
                                 _path_from_proto(proven.path, "leaf audit path")))
    if not leaves:
        raise DecodeError("invalid-proposal evidence holds no leaf")
    return InvalidProposal(
        header_from_proto(message.header), int(message.signer), _signature(message.signature, "pre-prepare signature"),
        tuple(leaves),
    )


def _invalid_vote_batch_from_proto(message: cpb.InvalidVoteBatch) -> InvalidVoteBatch:
    entries = []
    for i, proven in enumerate(check_list(message.entries, "proven entries", PROVEN_ITEMS_MAX)):
        if not proven.HasField("entry"):
            raise DecodeError(f"proven entry {i} has no entry")
        entries.append(ProvenVoteEntry(vote_entry_from_proto(proven.entry), check_int(proven.index, "entry index"),
                                       _path_from_proto(proven.path, "entry audit path")))
    return InvalidVoteBatch(
        group_id=check_str(message.group_id, "group id"),
        epoch=check_int(message.epoch, "epoch"),
        voter=int(message.voter),
        batch_no=check_int(message.batch_no, "vote batch number"),
        model_version=check_int(message.model_version, "model version"),
        entries_root=check_digest(message.entries_root, "vote batch root"),
        entry_count=check_int(message.entry_count, "vote batch entry count"),
        signature=_signature(message.signature, "vote batch signature"),
        entries=tuple(entries),
    )


def evidence_from_proto(message: cpb.Evidence) -> Evidence:
    try:
        which = message.WhichOneof("kind")
        if which == "equivocation":
            eq = message.equivocation
            if not (eq.HasField("first") and eq.HasField("second")):
                raise DecodeError("equivocation evidence needs two statements")
            return Equivocation(statement_from_proto(eq.first), statement_from_proto(eq.second))
        if which == "conflicting_certificates":
            cc = message.conflicting_certificates
            if not (cc.HasField("a") and cc.HasField("b")):
                raise DecodeError("conflicting-certificates evidence needs two certificates")
            return ConflictingCertificates(certificate_from_proto(cc.a), certificate_from_proto(cc.b))
        if which == "invalid_proposal":
            return _invalid_proposal_from_proto(message.invalid_proposal)
        if which == "invalid_vote_batch":
            return _invalid_vote_batch_from_proto(message.invalid_vote_batch)
        raise DecodeError("evidence holds neither an equivocation nor any other known kind of evidence")
    except DecodeError:
        raise
    except (ValueError, TypeError, OverflowError, IndexError, KeyError) as exc:
        raise DecodeError(f"malformed evidence: {exc}") from exc


def encode_evidence(item: Evidence) -> bytes:
    return serialize(evidence_to_proto(item))


def decode_evidence(data: bytes) -> Evidence:
    return evidence_from_proto(parse_canonical(cpb.Evidence, data, "evidence"))


# -- JSON ------------------------------------------------------------------------------------


def statement_to_json(signed: SignedStatement) -> dict[str, Any]:
    s = signed.statement
    return {
        "kind": s.kind.value,
        "group_id": s.group_id,
        "epoch": s.epoch,
        "signer": s.signer,
        "slot": list(s.slot),
        "content": s.content.hex(),
        "signature": signed.signature.hex(),
    }


def statement_from_json(value: Any, where: str) -> SignedStatement:
    d = json_object(value, where)
    statement = _statement(
        json_str(json_get(d, "kind", where), f"{where}.kind"),
        json_str(json_get(d, "group_id", where), f"{where}.group_id"),
        json_int(json_get(d, "epoch", where), f"{where}.epoch"),
        json_int(json_get(d, "signer", where), f"{where}.signer", maximum=2**32 - 1),
        tuple(
            json_int(n, f"{where}.slot[{i}]")
            for i, n in enumerate(json_list(json_get(d, "slot", where), f"{where}.slot", 2))
        ),
        json_hex(json_get(d, "content", where), f"{where}.content", DIGEST_SIZE),
    )
    return SignedStatement(statement, json_hex(json_get(d, "signature", where), f"{where}.signature", SIGNATURE_SIZE))


def _header_json(header: BatchHeader) -> dict[str, Any]:
    """The header as certificate_to_json writes it (batch_digest is a derived, checked field)."""
    return {
        "group_id": header.group_id,
        "epoch": header.epoch,
        "config_digest": header.config_digest.hex(),
        "view": header.view,
        "seq": header.seq,
        "decisions_root": header.decisions_root.hex(),
        "leaf_count": header.leaf_count,
        "ops_digest": header.ops_digest.hex(),
        "model_versions_digest": header.model_versions_digest.hex(),
        "batch_digest": header.batch_digest.hex(),
    }


def _pairs_json(pairs: Sequence[tuple[int, int]]) -> list[list[int]]:
    return [[cls, q] for cls, q in pairs]


def _leaf_json(leaf: Leaf) -> dict[str, Any]:
    """The leaf's exact fields, as in certificate_to_json."""
    return {
        "request_digest": leaf.request_digest.hex(),
        "client_id": leaf.client_id,
        "request_id": leaf.request_id,
        "label_space": list(leaf.label_space),
        "policy": leaf.policy,
        "votes": [
            {"replica_id": v.replica_id, "model_version": v.model_version, "output": _pairs_json(v.output.top)}
            for v in leaf.votes
        ],
        "decision": {
            "label": leaf.decision.label,
            "probabilities": _pairs_json(leaf.decision.probabilities),
            "support": list(leaf.decision.support),
        },
    }


def _entry_json(entry: VoteEntry) -> dict[str, Any]:
    return {
        "client_id": entry.client_id,
        "request_id": entry.request_id,
        "request_digest": entry.request_digest.hex(),
        "label_space": list(entry.label_space),
        "output": _pairs_json(entry.output.top),
    }


def _entry_from_json(value: Any, where: str) -> VoteEntry:
    d = json_object(value, where)
    top = _pairs(json_get(d, "output", where), f"{where}.output")
    if not top:
        raise DecodeError(f"{where}.output: lists no classes")
    return VoteEntry(
        client_id=json_str(json_get(d, "client_id", where), f"{where}.client_id"),
        request_id=json_str(json_get(d, "request_id", where), f"{where}.request_id"),
        request_digest=json_hex(json_get(d, "request_digest", where), f"{where}.request_digest", DIGEST_SIZE),
        label_space=tuple(
            json_str(s, f"{where}.label_space[{i}]")
            for i, s in enumerate(json_list(json_get(d, "label_space", where), f"{where}.label_space"))
        ),
        output=ModelOutput(top),
    )


def _path_from_json(value: Any, where: str) -> tuple[bytes, ...]:
    return tuple(json_hex(v, f"{where}[{i}]", DIGEST_SIZE) for i, v in enumerate(json_list(value, where, PATH_MAX)))


def _proven_from_json(value: Any, where: str, item_key: str) -> tuple[Any, int, tuple[bytes, ...]]:
    d = json_object(value, where)
    return (
        json_get(d, item_key, where),
        json_int(json_get(d, "index", where), f"{where}.index"),
        _path_from_json(json_get(d, "path", where), f"{where}.path"),
    )


def evidence_to_json(item: Evidence, config: GroupConfig | None = None) -> dict[str, Any]:
    if isinstance(item, InvalidProposal):
        return {
            "format": JSON_FORMAT,
            "kind": "invalid_proposal",
            "accused": list(item.accused),
            "signer": item.signer,
            "signature": item.signature.hex(),
            "header": _header_json(item.header),
            "leaves": [
                {"index": p.index, "path": [node.hex() for node in p.path], "leaf": _leaf_json(p.leaf)}
                for p in item.leaves
            ],
        }
    if isinstance(item, InvalidVoteBatch):
        return {
            "format": JSON_FORMAT,
            "kind": "invalid_vote_batch",
            "accused": list(item.accused),
            "group_id": item.group_id,
            "epoch": item.epoch,
            "voter": item.voter,
            "batch_no": item.batch_no,
            "model_version": item.model_version,
            "entries_root": item.entries_root.hex(),
            "entry_count": item.entry_count,
            "signature": item.signature.hex(),
            "entries": [
                {"index": p.index, "path": [node.hex() for node in p.path], "entry": _entry_json(p.entry)}
                for p in item.entries
            ],
        }
    if isinstance(item, Equivocation):
        return {
            "format": JSON_FORMAT,
            "kind": "equivocation",
            "accused": list(item.accused),
            "first": statement_to_json(item.first),
            "second": statement_to_json(item.second),
        }
    return {
        "format": JSON_FORMAT,
        "kind": "conflicting_certificates",
        "double_signers": list(item.double_signers),
        "a": certificate_to_json(item.a, config),
        "b": certificate_to_json(item.b, config),
    }


def evidence_from_json(data: Any) -> Evidence:
    """Read the JSON form back; raises DecodeError on anything malformed or inconsistent."""
    try:
        d = json_object(data, "evidence")
        if d.get("format") != JSON_FORMAT:
            raise DecodeError(f"evidence: format must be {JSON_FORMAT!r}")
        kind = d.get("kind")
        item: Evidence
        if kind == "equivocation":
            item = Equivocation(
                statement_from_json(json_get(d, "first", "evidence"), "first"),
                statement_from_json(json_get(d, "second", "evidence"), "second"),
            )
        elif kind == "conflicting_certificates":
            item = ConflictingCertificates(
                certificate_from_json(json_get(d, "a", "evidence")),
                certificate_from_json(json_get(d, "b", "evidence")),
            )
        elif kind == "invalid_proposal":
            leaves = []
            for i, raw in enumerate(json_list(json_get(d, "leaves", "evidence"), "leaves", PROVEN_ITEMS_MAX)):
                leaf, index, path = _proven_from_json(raw, f"leaves[{i}]", "leaf")
                leaves.append(ProvenLeaf(_leaf_from_json(leaf), index, path))
            if not leaves:
                raise DecodeError("evidence: an invalid proposal needs at least one leaf")
            item = InvalidProposal(
                header=_header_from_json(json_get(d, "header", "evidence")),
                signer=json_int(json_get(d, "signer", "evidence"), "signer", maximum=2**32 - 1),
                signature=json_hex(json_get(d, "signature", "evidence"), "signature", SIGNATURE_SIZE),
                leaves=tuple(leaves),
            )
        elif kind == "invalid_vote_batch":
            entries = []
            for i, raw in enumerate(json_list(json_get(d, "entries", "evidence"), "entries", PROVEN_ITEMS_MAX)):
                entry, index, path = _proven_from_json(raw, f"entries[{i}]", "entry")
                entries.append(ProvenVoteEntry(_entry_from_json(entry, f"entries[{i}].entry"), index, path))
            item = InvalidVoteBatch(
                group_id=json_str(json_get(d, "group_id", "evidence"), "group_id"),
                epoch=json_int(json_get(d, "epoch", "evidence"), "epoch"),
                voter=json_int(json_get(d, "voter", "evidence"), "voter", maximum=2**32 - 1),
                batch_no=json_int(json_get(d, "batch_no", "evidence"), "batch_no"),
                model_version=json_int(json_get(d, "model_version", "evidence"), "model_version"),
                entries_root=json_hex(json_get(d, "entries_root", "evidence"), "entries_root", DIGEST_SIZE),
                entry_count=json_int(json_get(d, "entry_count", "evidence"), "entry_count"),
                signature=json_hex(json_get(d, "signature", "evidence"), "signature", SIGNATURE_SIZE),
                entries=tuple(entries),
            )
        else:
            raise DecodeError(
                "evidence: kind must be 'equivocation', 'conflicting_certificates', 'invalid_proposal' "
                "or 'invalid_vote_batch'"
            )
        check_display_fields(d, evidence_to_json(item), "evidence")
        return item
    except DecodeError:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise DecodeError(f"malformed evidence JSON: {exc}") from exc
