"""The quorumserve keygen / verify / verify-evidence commands, as an auditor uses them."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certs.certificate import certificate_from_json, certificate_to_json, decode_certificate, encode_certificate
from certs.cli import InputError, decode_document
from certs.config import save_group_config
from certs.evidence import (
    ConflictingCertificates,
    Equivocation,
    decode_evidence,
    encode_evidence,
    evidence_from_json,
    evidence_to_json,
)
from certs.keys import load_private_key
from certs.request import request_to_json
from certs.statements import StatementKind
from marketplace.cli import main
from tests.certs.helpers import SignedBatch, make_batch


@pytest.fixture
def files(tmp_path: Path, batch: SignedBatch) -> dict[str, Path]:
    paths = {
        "group": save_group_config(batch.config, tmp_path / "group.json"),
        "request": tmp_path / "request.json",
        "other_request": tmp_path / "other-request.json",
        "binary": tmp_path / "cert.bin",
        "accountable": tmp_path / "cert-votes.bin",
        "base64": tmp_path / "cert.b64",
        "json": tmp_path / "cert.json",
        "garbage": tmp_path / "garbage.bin",
    }
    cert = batch.certificates[2]
    paths["request"].write_text(json.dumps(request_to_json(batch.requests[2])))
    paths["other_request"].write_text(json.dumps(request_to_json(batch.requests[3])))
    paths["binary"].write_bytes(encode_certificate(cert))
    paths["accountable"].write_bytes(encode_certificate(batch.accountable[2]))
    paths["base64"].write_text(base64.b64encode(encode_certificate(cert)).decode() + "\n")
    paths["json"].write_text(json.dumps(certificate_to_json(cert, batch.config), indent=2))
    paths["garbage"].write_bytes(b"\x00\xffnot a certificate")
    return paths


# -- keygen ----------------------------------------------------------------------------------


def test_keygen_writes_a_private_key_and_a_public_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "owner.key"
    assert main(["keygen", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip()
    key = load_private_key(out)
    assert printed == key.key_id
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    public = json.loads((tmp_path / "owner.key.pub").read_text())
    assert public == {"key_id": key.key_id, "public_key": key.public_key.hex()}


def test_keygen_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "owner.key"
    assert main(["keygen", "--out", str(out)]) == 0
    before = out.read_bytes()
    assert main(["keygen", "--out", str(out)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before


# -- verify ----------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["binary", "accountable", "base64", "json"])
def test_a_valid_certificate_in_any_form_exits_0(
    files: dict[str, Path], batch: SignedBatch, form: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["verify", str(files[form]), "--config", str(files["group"]), "--request", str(files["request"])])
    out = capsys.readouterr().out
    assert status == 0
    assert out.startswith("VALID: certificate for request alice/req-2 in group 'digits' epoch 1")
    label = batch.config.task.class_labels[batch.leaves[2].decision.label]
    assert f"decision:  '{label}'" in out and "matches your request" in out


def test_without_a_request_the_verdict_says_it_was_not_checked(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(files["binary"]), "--config", str(files["group"])]) == 0
    assert "not checked" in capsys.readouterr().out


def test_someone_elses_request_exits_1(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["verify", str(files["binary"]), "--config", str(files["group"]), "--request", str(files["other_request"])])
    assert status == 1
    assert capsys.readouterr().out.startswith("INVALID: request ids mismatch")


def test_a_certificate_from_another_group_exits_1(
    tmp_path: Path, files: dict[str, Path], batch: SignedBatch, capsys: pytest.CaptureFixture[str]
) -> None:
    other = save_group_config(batch.config.with_changes(epoch=7), tmp_path / "other.json")
    assert main(["verify", str(files["binary"]), "--config", str(other)]) == 1
    assert "INVALID: wrong epoch" in capsys.readouterr().out


def test_a_tampered_certificate_exits_1(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads(files["json"].read_text())
    data["quorum"] = data["quorum"][:2]
    del data["summary"]
    files["json"].write_text(json.dumps(data))
    assert main(["verify", str(files["json"]), "--config", str(files["group"])]) == 1
    assert capsys.readouterr().out.strip() == "INVALID: 2 signatures, need 3 (n=4, f=1)"


@pytest.mark.parametrize("which", ["cert", "config", "request"])
def test_unreadable_inputs_exit_2(files: dict[str, Path], which: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = {"cert": str(files["binary"]), "config": str(files["group"]), "request": str(files["request"])}
    args[which] = str(files["garbage"])
    status = main(["verify", args["cert"], "--config", args["config"], "--request", args["request"]])
    assert status == 2
    assert capsys.readouterr().err.startswith("quorumserve verify: ")


def test_a_missing_file_exits_2(tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(tmp_path / "absent"), "--config", str(files["group"])]) == 2
    assert "cannot read certificate" in capsys.readouterr().err


def test_json_output_carries_the_verdict_and_the_certificate(
    files: dict[str, Path], batch: SignedBatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(files["binary"]), "--config", str(files["group"]), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"] == "valid"
    assert report["result"]["signers"] == [0, 1, 2]
    assert report["certificate"]["leaf"]["request_id"] == "req-2"
    assert main(["verify", str(files["binary"]), "--config", str(files["group"]), "--json",
                 "--request", str(files["other_request"])]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"] == "invalid" and "request ids mismatch" in report["error"]


# -- verify-evidence -------------------------------------------------------------------------


def _evidence(batch: SignedBatch) -> tuple[Equivocation, ConflictingCertificates]:
    other = make_batch(batch.group, 4, seed=11, signers=[1, 2, 3])
    first = batch.header.statement(StatementKind.COMMIT, 2).sign(batch.group.keys[2].signer())
    second = other.header.statement(StatementKind.COMMIT, 2).sign(batch.group.keys[2].signer())
    return Equivocation(first, second), ConflictingCertificates(batch.certificates[0], other.certificates[0])


def test_proven_evidence_exits_0_and_names_the_culprits(
    tmp_path: Path, files: dict[str, Path], batch: SignedBatch, capsys: pytest.CaptureFixture[str]
) -> None:
    equivocation, conflict = _evidence(batch)
    (tmp_path / "eq.bin").write_bytes(encode_evidence(equivocation))
    (tmp_path / "conflict.json").write_text(json.dumps(evidence_to_json(conflict, batch.config)))
    assert main(["verify-evidence", str(tmp_path / "eq.bin"), "--config", str(files["group"])]) == 0
    out = capsys.readouterr().out
    assert out.startswith("PROVEN: replica 2 equivocated") and "owner-2" in out
    assert main(["verify-evidence", str(tmp_path / "conflict.json"), "--config", str(files["group"])]) == 0
    assert "replicas [1, 2]" in capsys.readouterr().out


def test_evidence_that_proves_nothing_exits_1(
    tmp_path: Path, files: dict[str, Path], batch: SignedBatch, capsys: pytest.CaptureFixture[str]
) -> None:
    equivocation, _ = _evidence(batch)
    same = Equivocation(equivocation.first, equivocation.first)
    (tmp_path / "same.b64").write_text(base64.b64encode(encode_evidence(same)).decode())
    assert main(["verify-evidence", str(tmp_path / "same.b64"), "--config", str(files["group"])]) == 1
    assert capsys.readouterr().out.startswith("NOT PROVEN: no equivocation")


def test_unreadable_evidence_exits_2(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify-evidence", str(files["garbage"]), "--config", str(files["group"])]) == 2
    assert "evidence is not readable" in capsys.readouterr().err


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_any_file_content_is_either_read_or_reported_unreadable(data: bytes) -> None:
    for from_binary, from_json in ((decode_certificate, certificate_from_json), (decode_evidence, evidence_from_json)):
        try:
            decode_document(data, "input", from_binary, from_json)
        except InputError:
            pass


@pytest.mark.parametrize("junk", [b"{", b"{}", b"{" * 50_000, b"AAAA", b"\n\n", b""])
def test_near_misses_are_reported_unreadable(junk: bytes) -> None:
    with pytest.raises(InputError):
        decode_document(junk, "certificate", decode_certificate, certificate_from_json)
