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

`verify_evidence` raises CertificateError unless the item really proves misbehaviour, and
returns the accused replica ids. Evidence travels as protobuf (the Evidence message of
protos/certificate.proto) and as JSON, decoded as strictly as certificates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from certs.certificate import (
    Certificate,
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
from certs.statements import SLOT_ARITY, SignedStatement, Statement, StatementKind
from certs.verify import verify_commit_quorum
from certs.wire import check_digest, check_int, check_list, check_str, parse_canonical, serialize
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


Evidence = Union[Equivocation, ConflictingCertificates]


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


def verify_evidence(item: Evidence, config: GroupConfig, *, verifier: SignatureVerifier | None = None) -> tuple[int, ...]:
    """The replica ids the evidence convicts; raises CertificateError unless it proves misbehaviour."""
    checker = verifier or _DEFAULT_VERIFIER
    try:
        if isinstance(item, Equivocation):
            return _verify_equivocation(item, config, checker)
        if isinstance(item, ConflictingCertificates):
            return _verify_conflict(item, config, checker)
    except CertificateError:
        raise
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        raise CertificateError(f"malformed evidence: {exc}") from exc
    raise CertificateError(f"not evidence: {type(item).__name__}")


def describe_evidence(item: Evidence, accused: tuple[int, ...]) -> str:
    """One sentence for people about verified evidence."""
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
    else:
        certificate_to_proto(item.a, message.conflicting_certificates.a)
        certificate_to_proto(item.b, message.conflicting_certificates.b)
    return message


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
        raise DecodeError("evidence holds neither an equivocation nor conflicting certificates")
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


def evidence_to_json(item: Evidence, config: GroupConfig | None = None) -> dict[str, Any]:
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
        else:
            raise DecodeError("evidence: kind must be 'equivocation' or 'conflicting_certificates'")
        check_display_fields(d, evidence_to_json(item), "evidence")
        return item
    except DecodeError:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise DecodeError(f"malformed evidence JSON: {exc}") from exc
