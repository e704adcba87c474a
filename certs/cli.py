"""`quorumserve keygen`, `quorumserve verify` and `quorumserve verify-evidence`.

Exit status of the verify commands: 0 only when the certificate is valid (or the evidence proves
misbehaviour), 1 when it was read but is invalid, 2 when an input cannot be read at all. A
certificate or evidence file may be binary protobuf, base64 text of it, or the JSON form.

A certificate from a later epoch than the pinned config verifies only with `--chain CHAIN.json`:
the configs of the later epochs, each signed by a quorum of the epoch before it, checked link by
link from the pinned config (certs.membership.verify_chain). `verify` never fetches anything;
`quorumserve chain GROUP --config GENESIS.json --out CHAIN.json` writes such a file. Its format:

    {
      "format": "quorumserve-config-chain/1",
      "group_id": "digits",
      "links": [                       # oldest first; epochs at or below the pinned one are skipped
        {"config": {...group config JSON of epoch e...},
         "signatures": [{"replica_id": 0, "signature": "<hex Ed25519 over link_message>"}, ...]}
      ]
    }

A bare JSON list of links is accepted too.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from certs.certificate import Certificate, certificate_from_json, certificate_to_json, decode_certificate
from certs.config import GroupConfig, load_group_config
from certs.errors import CertificateError, DecodeError, KeyFileError
from certs.evidence import (
    Evidence,
    decode_evidence,
    describe_evidence,
    evidence_from_json,
    evidence_to_json,
    verify_evidence,
)
from certs.keys import KeyPair, save_private_key, save_public_key
from certs.membership import ConfigLink, QuorumSigned, verify_chain
from certs.request import InferenceRequest, request_from_json
from certs.verify import VerifiedCertificate, verify

EXIT_VALID = 0
EXIT_INVALID = 1
EXIT_UNREADABLE = 2
INPUT_MAX_BYTES = 16 * 1024 * 1024  # certificates are kilobytes; refuse to slurp anything huge
CHAIN_FORMAT = "quorumserve-config-chain/1"

T = TypeVar("T")


class InputError(Exception):
    """An input file that cannot be read or parsed (exit status 2)."""


def register(subparsers: Any) -> None:
    keygen = subparsers.add_parser(
        "keygen",
        help="generate an Ed25519 key pair",
        description="Generate an Ed25519 key pair: PATH (private, mode 0600) and PATH.pub. Prints the key id.",
    )
    keygen.add_argument("--out", required=True, metavar="PATH", help="private key file to create (never overwritten)")
    keygen.set_defaults(handler=run_keygen)

    verify_parser = subparsers.add_parser(
        "verify",
        help="verify an inference certificate offline",
        description="Verify an inference certificate against a pinned group config. Exit status: 0 valid, "
        "1 invalid, 2 unreadable input.",
    )
    verify_parser.add_argument("cert", metavar="CERT", help="certificate: binary protobuf, base64 or JSON; - for stdin")
    verify_parser.add_argument("--config", required=True, metavar="GROUP", help="the group config (JSON) you pinned")
    verify_parser.add_argument("--request", metavar="FILE", help="your request (JSON): check the certificate is about it")
    verify_parser.add_argument(
        "--chain", metavar="CHAIN.json",
        help="the signed configs of later epochs (quorumserve chain writes one): needed for a certificate "
        "from an epoch after the pinned config's; each link is checked from the pinned config",
    )
    verify_parser.add_argument("--json", action="store_true", help="print the verdict and certificate as JSON")
    verify_parser.set_defaults(handler=run_verify)

    evidence = subparsers.add_parser(
        "verify-evidence",
        help="check evidence of replica misbehaviour",
        description="Check evidence against a group config: equivocation (two conflicting signed messages for one "
        "slot), conflicting certificates, an invalid proposal (a primary's signed batch header with a leaf that "
        "is invalid by itself, such as a decision that does not follow from its votes, or two leaves for one request) "
        "or an invalid vote batch (a replica's signed votes with a malformed entry, two entries for one request, or "
        "an entry count out of bounds). Exit status: 0 misbehaviour proven, 1 not proven, 2 unreadable input.",
    )
    evidence.add_argument("evidence", metavar="FILE", help="evidence: binary protobuf, base64 or JSON; - for stdin")
    evidence.add_argument("--config", required=True, metavar="GROUP", help="the group config (JSON)")
    evidence.add_argument("--json", action="store_true", help="print the verdict as JSON")
    evidence.set_defaults(handler=run_verify_evidence)


# -- keygen ----------------------------------------------------------------------------------


def run_keygen(args: argparse.Namespace) -> int:
    private_path = Path(args.out)
    public_path = private_path.with_name(private_path.name + ".pub")
    for path in (private_path, public_path):
        if path.exists():
            print(f"quorumserve keygen: {path} already exists; refusing to overwrite a key", file=sys.stderr)
            return 1
    key = KeyPair.generate()
    try:
        save_private_key(key, private_path)
        save_public_key(key.public_key, public_path)
    except (KeyFileError, OSError) as exc:
        print(f"quorumserve keygen: {exc}", file=sys.stderr)
        return 1
    print(key.key_id)
    print(f"wrote {private_path} (private, mode 0600) and {public_path}", file=sys.stderr)
    return 0


# -- reading inputs ------------------------------------------------------------------------


def read_input(path: str, what: str) -> bytes:
    try:
        if path == "-":
            data = sys.stdin.buffer.read(INPUT_MAX_BYTES + 1)
        else:
            with open(path, "rb") as handle:
                data = handle.read(INPUT_MAX_BYTES + 1)
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    if len(data) > INPUT_MAX_BYTES:
        raise InputError(f"{what} {path} is larger than {INPUT_MAX_BYTES} bytes")
    return data


def parse_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InputError(f"{what} is not valid JSON: {exc}") from exc


def decode_document(data: bytes, what: str, from_binary: Callable[[bytes], T], from_json: Callable[[Any], T]) -> T:
    """Binary protobuf, JSON, or base64 text of the protobuf, tried in that order."""
    try:
        return from_binary(data)
    except DecodeError as binary_error:
        stripped = data.strip()
        try:
            if stripped.startswith(b"{"):
                return from_json(parse_json(stripped, what))
            try:
                raw = base64.b64decode(b"".join(stripped.split()), validate=True)
            except (binascii.Error, ValueError):
                raise InputError(f"{what} is not readable as protobuf, base64 or JSON: {binary_error}") from None
            return from_binary(raw)
        except DecodeError as exc:
            raise InputError(f"{what} is not readable: {exc}") from exc


def load_config(path: str) -> GroupConfig:
    try:
        return load_group_config(path)
    except CertificateError as exc:
        raise InputError(f"group config: {exc}") from exc
    except OSError as exc:
        raise InputError(f"cannot read group config {path}: {exc.strerror or exc}") from exc


def link_to_json(link: ConfigLink) -> dict[str, Any]:
    return {
        "config": link.config.to_json(),
        "signatures": [{"replica_id": s.replica_id, "signature": s.signature.hex()} for s in link.signatures],
    }


def link_from_json(data: Any) -> ConfigLink:
    """One link of a chain file; raises DecodeError on anything malformed (nothing is verified)."""
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict) or not isinstance(data.get("signatures"), list):
        raise DecodeError("a config link is an object with a config and a list of signatures")
    try:
        config = GroupConfig.from_json(data["config"])
        signatures = []
        for item in data["signatures"]:
            replica_id, signature = item["replica_id"], bytes.fromhex(item["signature"])
            if isinstance(replica_id, bool) or not isinstance(replica_id, int) or len(signature) != 64:
                raise DecodeError("a link signature is a replica id and 64 bytes of hex")
            signatures.append(QuorumSigned(replica_id, signature))
    except CertificateError as exc:
        raise DecodeError(f"config link: {exc}") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise DecodeError(f"config link: malformed signature ({exc!r})") from exc
    return ConfigLink(config, tuple(signatures))


def chain_to_json(links: Sequence[ConfigLink]) -> dict[str, Any]:
    """The chain file form of `links` (oldest first)."""
    group_id = links[0].config.group_id if links else ""
    return {"format": CHAIN_FORMAT, "group_id": group_id, "links": [link_to_json(link) for link in links]}


def chain_from_json(data: Any) -> list[ConfigLink]:
    """The links of a chain file (an object with "links", or a bare list); raises DecodeError."""
    items = data.get("links") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise DecodeError('a config chain is a JSON list of links, or an object with "links"')
    if isinstance(data, dict) and data.get("format", CHAIN_FORMAT) != CHAIN_FORMAT:
        raise DecodeError(f"unknown config chain format {data.get('format')!r}")
    return [link_from_json(item) for item in items]


def load_chain(path: str) -> list[ConfigLink]:
    try:
        return chain_from_json(parse_json(read_input(path, "config chain"), "config chain"))
    except DecodeError as exc:
        raise InputError(f"config chain {path}: {exc}") from exc


def config_for_epoch(pinned: GroupConfig, links: Sequence[ConfigLink], epoch: int) -> GroupConfig:
    """The config of `epoch`, reached from the pinned config through `links` (each link checked
    against the one before it). Raises CertificateError when the chain does not hold or stops
    short of `epoch`."""
    if epoch == pinned.epoch:
        return pinned
    try:
        configs = verify_chain(pinned, links)
    except CertificateError as exc:
        raise CertificateError(f"config chain does not verify from the pinned config: {exc}") from exc
    for config in configs:
        if config.epoch == epoch:
            return config
    reach = configs[-1].epoch
    hint = "" if links else "; pass --chain CHAIN.json (quorumserve chain writes one)"
    raise CertificateError(
        f"certificate is from epoch {epoch} of group {pinned.group_id!r}; the pinned config is epoch {pinned.epoch} "
        f"and the chain reaches epoch {reach}{hint}"
    )


def load_request(path: str) -> InferenceRequest:
    try:
        return request_from_json(parse_json(read_input(path, "request"), "request"))
    except DecodeError as exc:
        raise InputError(f"request {path}: {exc}") from exc


def dumps_readable(value: Any, indent: int = 0) -> str:
    """JSON for people: one field per line, short lists of numbers or pairs kept on one line."""
    pad, end = "  " * (indent + 1), "  " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        fields = [f"{pad}{json.dumps(k)}: {dumps_readable(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(fields) + "\n" + end + "}"
    if isinstance(value, list) and value:
        inline = json.dumps(value, separators=(", ", ": "))
        if len(inline) <= 96 and not any(isinstance(v, dict) for v in value):
            return inline
        return "[\n" + ",\n".join(pad + dumps_readable(v, indent + 1) for v in value) + "\n" + end + "]"
    return json.dumps(value)


def _unreadable(command: str, message: str, as_json: bool) -> int:
    if as_json:
        print(dumps_readable({"verdict": "unreadable", "error": message}))
    print(f"quorumserve {command}: {message}", file=sys.stderr)
    return EXIT_UNREADABLE


# -- verify ----------------------------------------------------------------------------------


def describe_verified(result: VerifiedCertificate, config: GroupConfig, cert: Certificate) -> str:
    if result.agreed:
        top = ", ".join(f"{name}: {p:.4f}" for name, p in result.probabilities)
        decision = f"{result.label_name!r}  ({top})"
        support = f"replicas {', '.join(map(str, result.supporters))} under {result.policy}"
    else:
        decision = "NO_AGREEMENT (the votes did not agree enough to certify a label)"
        support = f"no label had enough support under {result.policy}"
    if result.request_checked:
        request = f"matches your request (digest {result.request_digest.hex()[:16]}...)"
    else:
        request = f"not checked (digest {result.request_digest.hex()[:16]}...; pass --request FILE to check it)"
    votes = (
        "each voter's own signed vote checked (accountability form)"
        if result.vote_proofs_checked
        else "compact form: the votes are vouched for by the commit quorum"
    )
    lines = [
        f"VALID: certificate for request {result.client_id}/{result.request_id} "
        f"in group {result.group_id!r} epoch {result.epoch}",
        f"  decision:  {decision}",
        f"  support:   {support}",
        f"  committed: seq {result.seq} (view {result.view}) by replicas {', '.join(map(str, result.signers))} "
        f"({len(result.signers)} of {config.n}, quorum {config.quorum_size})",
        f"  models:    {', '.join(f'replica {r} v{v}' for r, v in result.model_versions)}",
        f"  request:   {request}",
        f"  votes:     {votes}",
        f"  leaf:      {cert.leaf_index + 1} of {cert.tree_size} in the batch",
    ]
    return "\n".join(lines)


def _result_json(result: VerifiedCertificate) -> dict[str, Any]:
    return {
        "group_id": result.group_id,
        "epoch": result.epoch,
        "view": result.view,
        "seq": result.seq,
        "client_id": result.client_id,
        "request_id": result.request_id,
        "request_digest": result.request_digest.hex(),
        "decision": result.label_name if result.agreed else "NO_AGREEMENT",
        "decision_class": result.label,
        "probabilities": {name: p for name, p in result.probabilities},
        "supporters": list(result.supporters),
        "signers": list(result.signers),
        "model_versions": {str(r): v for r, v in result.model_versions},
        "policy": result.policy,
        "request_checked": result.request_checked,
        "vote_proofs_checked": result.vote_proofs_checked,
    }


def run_verify(args: argparse.Namespace) -> int:
    try:
        pinned = load_config(args.config)
        links = load_chain(args.chain) if args.chain else []
        request = load_request(args.request) if args.request else None
        cert = decode_document(
            read_input(args.cert, "certificate"), "certificate", decode_certificate, certificate_from_json
        )
    except InputError as exc:
        return _unreadable("verify", str(exc), args.json)
    config = pinned
    try:
        if cert.header.epoch > pinned.epoch and cert.header.group_id == pinned.group_id:
            config = config_for_epoch(pinned, links, cert.header.epoch)
        result = verify(cert, config, request)
    except CertificateError as exc:
        if args.json:
            print(dumps_readable(
                {"verdict": "invalid", "error": str(exc), "certificate": certificate_to_json(cert, config)}
            ))
        else:
            print(f"INVALID: {exc}")
        return EXIT_INVALID
    if args.json:
        print(dumps_readable(
            {"verdict": "valid", "result": _result_json(result), "certificate": certificate_to_json(cert, config)}
        ))
    else:
        print(describe_verified(result, config, cert))
    return EXIT_VALID


# -- verify-evidence -------------------------------------------------------------------------


def run_verify_evidence(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        item: Evidence = decode_document(
            read_input(args.evidence, "evidence"), "evidence", decode_evidence, evidence_from_json
        )
    except InputError as exc:
        return _unreadable("verify-evidence", str(exc), args.json)
    try:
        accused = verify_evidence(item, config)
    except CertificateError as exc:
        if args.json:
            print(dumps_readable({"verdict": "not proven", "error": str(exc), "evidence": evidence_to_json(item, config)}))
        else:
            print(f"NOT PROVEN: {exc}")
        return EXIT_INVALID
    sentence = describe_evidence(item, accused, config)
    if args.json:
        print(dumps_readable(
            {"verdict": "proven", "accused": list(accused), "description": sentence,
             "evidence": evidence_to_json(item, config)}
        ))
    else:
        owners = ", ".join(f"replica {r} (owner {m.owner_id})" for r in accused if (m := config.member(r)) is not None)
        print(f"PROVEN: {sentence}")
        print(f"  accused: {owners}")
    return EXIT_VALID
