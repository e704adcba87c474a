"""`quorumserve report`: an HTML page with real PNG plots, rendered from a recorded audit log.

The log comes from an audit of `FakeGroup` (real certificates, coin-flip models; see
test_audit.py), so no replica process is needed. What the replicas would add (evidence, model
version history) comes from a small in-process gRPC server speaking the replica API.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from PIL import Image

from certs.evidence import Equivocation, encode_evidence
from certs.statements import Statement, StatementKind
from marketplace.audit import AuditLog, write_proof
from marketplace.cli import main
from marketplace.membership import Ledger
from marketplace.report import EvidenceRow, LiveInfo, collect_live, render_report
from protos import replica_api_pb2 as api
from protos import replica_api_pb2_grpc as api_grpc
from tests.marketplace.test_audit import SMALL_WINDOWS, SWAPPER, digits_config_and_keys, run_audit, swap_after


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AuditLog, Path]]:
    directory = tmp_path_factory.mktemp("recorded-audit")
    _, audit_log, _, _ = run_audit(directory, swap_after(600), SMALL_WINDOWS, 1000)
    proofs = directory / "audit-proofs"
    for flag in audit_log.flags():
        write_proof(audit_log, flag, proofs)
    try:
        yield audit_log, proofs
    finally:
        audit_log.close()


def _images(page: str) -> list[str]:
    return re.findall(r"<img src='([^']+)'", page)


def test_the_report_renders_html_with_valid_png_plots(recorded: tuple[AuditLog, Path], tmp_path: Path) -> None:
    audit_log, proofs = recorded
    index = render_report(audit_log, tmp_path / "report", proofs_dir=proofs)
    page = index.read_text()
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    images = _images(page)
    assert set(images) == {"accuracy.png", "agreement.png", "versions.png"}
    for name in images:
        path = index.parent / name
        with Image.open(path) as image:
            image.verify()  # a real, complete PNG
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= 600 and image.height >= 200
    # the findings a reader looks for
    assert "Audit of group <code>digits</code>" in page
    assert "with 99.9 % confidence, owner-3 (replica 3)&#x27;s accuracy in window 4" in page
    assert "at most 0.001 per owner, window and test" in page
    # each flag links its proof file, and the link resolves
    links = re.findall(r"<a href='([^']+)'>", page)
    assert links and all((index.parent / link).resolve().exists() for link in links)
    assert len(links) == len(audit_log.flags())
    # offline: evidence not collected, and no fee section without a fee ledger
    assert "Not collected (offline report)" in page
    assert "Fee" not in page


def test_the_report_shows_verified_evidence_and_version_history(recorded: tuple[AuditLog, Path], tmp_path: Path) -> None:
    audit_log, _ = recorded
    live = LiveInfo(
        collected_at=0.0,
        evidence=[
            EvidenceRow((0, 1), "Equivocation", True, (SWAPPER,), "replica 3 equivocated: it signed two different vote-batch statements"),
            EvidenceRow((2,), "InvalidVoteBatch", False, (), "proves nothing: bad vote batch signature from replica 1"),
        ],
        current_versions={0: 1, 1: 1, 2: 1, 3: 1},
        unreachable={},
    )
    page = render_report(audit_log, tmp_path / "live", live=live).read_text()
    assert "replica 3 equivocated" in page and "<span class='flag'>proven</span>" in page
    assert "proves nothing: bad vote batch signature" in page
    assert "none since genesis; v1 in effect" in page
    assert "Fee ledger" not in page  # this group keeps none
    live.ledger = Ledger(
        "digits", 64, 0, 0, (0, 1, 2), bytes(32),
        client_spend={f"client-{i:03d}": 100 + i for i in range(60)},
        owner_earnings={0: 3000, 1: 3000, 2: 3000, 3: 1000},
        owner_ids={0: "owner-0", 1: "owner-1", 2: "owner-2", 3: "owner-3"},
    )
    page = render_report(audit_log, tmp_path / "live", live=live).read_text()
    assert "<h2>Fee ledger</h2><p>At the stable checkpoint of seq 64 (epoch 0), signed by replicas 0, 1, 2" in page
    assert "<tr><td>3</td><td>owner-3</td><td>1000</td><td>10.0 %</td></tr>" in page
    assert "<tr><th colspan='2'>total</th><th>10000</th>" in page
    # the biggest spenders first; the rest summed on one line
    assert page.index("client-059") < page.index("client-058")
    assert "client-009" not in page and "10 more clients</td><td>" + str(sum(100 + i for i in range(10))) in page
    live.ledger, live.ledger_error = None, "no replica returned a ledger that verifies: bad signature"
    page = render_report(audit_log, tmp_path / "live", live=live).read_text()
    assert "No ledger could be verified: no replica returned a ledger that verifies: bad signature" in page


def test_extra_sections_appear_only_when_the_caller_provides_them(recorded: tuple[AuditLog, Path], tmp_path: Path) -> None:
    audit_log, _ = recorded

    def ledger(config: Any, out: Path) -> tuple[str, str]:
        return "Fee ledger", f"<p>{config.group_id}: 1000 credits</p>"

    page = render_report(audit_log, tmp_path / "fees", sections=[ledger, lambda config, out: None]).read_text()
    assert "<h2>Fee ledger</h2><p>digits: 1000 credits</p>" in page


class _Replica(api_grpc.ReplicaServicer):
    """Just enough of the replica API for the report: Status and ListEvidence."""

    def __init__(self, replica_id: int, evidence: list[bytes]) -> None:
        self.replica_id = replica_id
        self.evidence = evidence

    def Status(self, request: api.StatusRequest, context: Any) -> api.StatusReply:
        return api.StatusReply(
            replica_id=self.replica_id,
            versions=[api.ModelVersionInfo(replica_id=r, version=2 if r == 1 else 1) for r in range(4)],
            activations=[api.Activation(replica_id=1, version=2, from_seq=70, weights_digest=bytes(32))],
        )

    def ListEvidence(self, request: api.EvidenceRequest, context: Any) -> api.EvidenceReply:
        items = [
            api.EvidenceItem(id=i + 1, evidence=e, summary="stored")
            for i, e in enumerate(self.evidence)
            if i + 1 > request.after_id
        ][: request.limit]
        return api.EvidenceReply(items=items)


def test_collect_live_verifies_each_replicas_evidence_and_names_the_unreachable(tmp_path: Path) -> None:
    config, keys = digits_config_and_keys()

    def statement(content: bytes) -> Any:
        s = Statement(StatementKind.VOTE_BATCH, config.group_id, config.epoch, SWAPPER, (4,), content)
        return s.sign(keys[SWAPPER].signer())

    proof = encode_evidence(Equivocation(statement(bytes(32)), statement(b"\x01" * 32)))
    forged = encode_evidence(Equivocation(statement(bytes(32)), statement(bytes(32))))
    servers, members = [], []
    for member in config.members[:3]:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        api_grpc.add_ReplicaServicer_to_server(_Replica(member.replica_id, [proof, forged]), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        members.append(type(member)(**{**{f: getattr(member, f) for f in member.__slots__}, "address": f"127.0.0.1:{port}"}))
    unused = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    dead_port = unused.add_insecure_port("127.0.0.1:0")  # bound, never started: nobody answers
    members.append(type(config.members[3])(**{**{f: getattr(config.members[3], f) for f in config.members[3].__slots__},
                                              "address": f"127.0.0.1:{dead_port}"}))
    live_config = type(config)(config.group_id, config.epoch, config.f, tuple(members), config.task)
    try:
        live = collect_live(live_config, timeout_s=1.0, page_size=1)
    finally:
        for server in servers:
            server.stop(None)
        unused.stop(None)
    assert set(live.unreachable) == {3}
    by_verdict = {row.proven: row for row in live.evidence}
    assert len(live.evidence) == 2  # the same items from three replicas, listed once each
    assert by_verdict[True].accused == (SWAPPER,) and by_verdict[True].holders == (0, 1, 2)
    assert "say the same thing" in by_verdict[False].description
    assert [(a.replica_id, a.version, a.from_seq) for a in live.activations] == [(1, 2, 70)]
    assert live.current_versions == {0: 1, 1: 2, 2: 1}


def test_report_cli_renders_from_the_log(recorded: tuple[AuditLog, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    audit_log, _ = recorded
    out = tmp_path / "cli-report"
    assert main(["report", "digits", "--log", str(audit_log.path), "--out", str(out), "--offline"]) == 0
    assert capsys.readouterr().out.strip() == str(out / "index.html")
    assert (out / "accuracy.png").stat().st_size > 0
    assert main(["report", "other-group", "--log", str(audit_log.path), "--out", str(out), "--offline"]) == 1
    assert "audits group 'digits', not 'other-group'" in capsys.readouterr().err
    assert main(["report", "digits", "--log", str(tmp_path / "missing.sqlite"), "--offline"]) == 1
