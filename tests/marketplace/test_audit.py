"""Canary audits: an owner that quietly swaps in a weaker model is flagged, honest owners are not.

Most tests run the real auditor against `FakeGroup`, a group of four owners inside this process
whose certificates are real (Ed25519 keys, Merkle proofs, commit quorums, vote proofs) but
whose models are coins of known accuracy: so the statistics can be checked against the truth,
quickly and without processes. One process test (marked `processes`) runs `quorumserve audit`
through a real gateway against a real group in which replica 3 swaps in a weak model.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import random
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from certs.batch import BatchHeader, Leaf, VoteEntry, model_versions_digest, ops_digest
from certs.certificate import Certificate, QuorumSignature, SignedVoteBatch, build_certificates, decode_certificate, encode_certificate
from certs.config import GroupConfig, Member, TaskSchema, save_group_config
from certs.errors import CertificateError
from certs.keys import KeyPair
from certs.merkle import root_of_hashes
from certs.outputs import quantise
from certs.policy import Vote, decide
from certs.request import InferenceRequest
from certs.statements import StatementKind
from marketplace.audit import (
    ACCURACY_DROP,
    AGREEMENT_DRIFT,
    AuditError,
    Auditor,
    AuditLog,
    AuditSettings,
    LabelledData,
    RequestRecord,
    VoteRecord,
    analyse,
    analyse_records,
    cp_lower,
    cp_upper,
    flag_proof,
    load_labelled,
    simulate_detection,
    simulate_false_alarms,
    verify_flag_proof,
)
from marketplace.cli import main
from marketplace.sdk import build_request

SWAPPER = 3
CLASS_LABELS = tuple(str(d) for d in range(10))


def digits_config_and_keys(salt: str = "audit") -> tuple[GroupConfig, dict[int, KeyPair]]:
    keys = {i: KeyPair(hashlib.sha256(f"{salt}/replica/{i}".encode()).digest()) for i in range(4)}
    owners = {i: KeyPair(hashlib.sha256(f"{salt}/owner/{i}".encode()).digest()) for i in range(4)}
    members = tuple(
        Member(i, f"owner-{i}", keys[i].public_key, owners[i].public_key, f"127.0.0.1:{7100 + i}") for i in range(4)
    )
    task = TaskSchema("pixels", (64,), "FP32", CLASS_LABELS, len(CLASS_LABELS))
    return GroupConfig(group_id="digits", epoch=0, f=1, members=members, task=task), keys


@dataclasses.dataclass(frozen=True)
class FakeResult:
    request: InferenceRequest
    certificate: Certificate


class FakeGroup:
    """Four owners whose models answer the true label with a known probability.

    `accuracy(replica_id, requests_so_far)` says how good each owner's model is right now, so an
    owner can swap to a weak model after N requests while still claiming version 1. Every
    request is its own committed batch; certificates and vote proofs are real and signed."""

    def __init__(
        self,
        truth: Mapping[bytes, int],
        accuracy: Callable[[int, int], float],
        *,
        client_id: str = "shop",
        seed: int = 0,
    ) -> None:
        self.config, self.keys = digits_config_and_keys()
        self.truth = truth
        self.accuracy = accuracy
        self.client_id = client_id
        self.rng = random.Random(seed)
        self.seq = 0
        self.accountable: dict[tuple[str, str], Certificate] = {}
        self.sent: list[InferenceRequest] = []
        self.fetched: list[tuple[str, str]] = []

    def _answer(self, replica_id: int, truth: int) -> int:
        if self.rng.random() < self.accuracy(replica_id, len(self.sent)):
            return truth
        return (truth + 1 + self.rng.randrange(9)) % 10

    async def infer(self, array: Any, *, request_id: str | None = None, label_mapping: Mapping[str, str] | None = None, timeout_s: float | None = None) -> FakeResult:
        await asyncio.sleep(0)  # let other requests interleave, as on a network
        config = self.config
        request = build_request(config, array, client_id=self.client_id, request_id=request_id, label_mapping=label_mapping)
        truth = self.truth.get(request.inputs[0].data, 0)
        self.sent.append(request)
        self.seq += 1
        votes, batches = [], []
        for rid in config.replica_ids:
            probabilities = np.full(10, 0.02)
            probabilities[self._answer(rid, truth)] = 0.82
            output = quantise(probabilities, 10)
            votes.append(Vote(rid, 1, output))
            entry = VoteEntry(request.client_id, request.request_id, request.digest, (), output)
            unsigned = SignedVoteBatch(rid, self.seq, 1, (entry.hash,), bytes(64))
            signature = self.keys[rid].signer().sign(unsigned.statement(config.group_id, config.epoch).message())
            batches.append(SignedVoteBatch(rid, self.seq, 1, (entry.hash,), signature))
        decision = decide(config.policy, config.f, config.quorum_size, votes, 10)
        leaf = Leaf(request.digest, request.client_id, request.request_id, (), config.policy.describe(config.f), tuple(votes), decision)
        header = BatchHeader(
            config.group_id, config.epoch, config.digest, 0, self.seq, root_of_hashes([leaf.hash]),
            ops_digest(()), model_versions_digest(config.genesis_versions()), 1,
        )
        quorum = [
            QuorumSignature(rid, self.keys[rid].signer().sign(header.statement(StatementKind.COMMIT, rid).message()))
            for rid in config.replica_ids[: config.quorum_size]
        ]
        compact = build_certificates(header, [leaf], quorum)[0]
        self.accountable[request.key] = build_certificates(header, [leaf], quorum, batches)[0]
        return FakeResult(request, compact)

    async def get_certificate(self, request_id: str, *, client_id: str | None = None, timeout_s: float = 10.0) -> FakeResult:
        key = (client_id or self.client_id, request_id)
        self.fetched.append(key)
        request = next(r for r in reversed(self.sent) if r.key == key)
        return FakeResult(request, self.accountable[key])


def synthetic_digits(count: int = 400, seed: int = 0) -> LabelledData:
    """Labelled 'images' (random pixels): the fake owners only need to know the labels."""
    rng = np.random.default_rng(seed)
    return LabelledData(rng.random((count, 64), dtype=np.float32), rng.integers(0, 10, count), "synthetic")


def truth_of(*sets: LabelledData) -> dict[bytes, int]:
    return {np.asarray(row, dtype=np.float32).tobytes(): int(y) for data in sets for row, y in zip(data.features, data.labels)}


HONEST = {0: 0.96, 1: 0.975, 2: 0.99, 3: 0.98}


def swap_after(requests: int, weak: float = 0.62) -> Callable[[int, int], float]:
    def accuracy(replica_id: int, sent: int) -> float:
        if replica_id == SWAPPER and sent >= requests:
            return weak
        return HONEST[replica_id]

    return accuracy


def run_audit(
    tmp_path: Path,
    accuracy: Callable[[int, int], float],
    settings: AuditSettings,
    requests: int,
    *,
    seed: int = 1,
) -> tuple[FakeGroup, AuditLog, LabelledData, np.ndarray]:
    canaries = synthetic_digits(400, seed=seed)
    traffic = synthetic_digits(600, seed=seed + 100)
    group = FakeGroup(truth_of(canaries, traffic), accuracy, seed=seed)
    audit_log = AuditLog(tmp_path / "audit.sqlite")
    auditor = Auditor(group, audit_log, canaries, settings, rng=random.Random(seed), concurrency=8)
    asyncio.run(auditor.run(traffic.features, requests, qps=0))
    return group, audit_log, canaries, traffic.features


@dataclasses.dataclass(frozen=True)
class SwapRun:
    group: FakeGroup
    log: AuditLog
    canaries: LabelledData
    directory: Path


SMALL_WINDOWS = AuditSettings(canary_rate=0.5, window_requests=200, baseline_windows=2)


@pytest.fixture(scope="module")
def swap_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwapRun]:
    """One audit of 1000 requests in windows of 200; owner 3 swaps after 600 requests."""
    directory = tmp_path_factory.mktemp("swap-audit")
    group, audit_log, canaries, _ = run_audit(directory, swap_after(600), SMALL_WINDOWS, 1000)
    try:
        yield SwapRun(group, audit_log, canaries, directory)
    finally:
        audit_log.close()


# -- the statistics ---------------------------------------------------------------------------


def _binomial_pmf(n: int, p: float) -> np.ndarray:
    from scipy.stats import binom

    return np.asarray(binom.pmf(np.arange(n + 1), n, p))


@pytest.mark.parametrize("n", [10, 50, 200])
def test_clopper_pearson_bounds_miss_no_more_often_than_stated(n: int) -> None:
    """Exact coverage, summed over every outcome: P(upper < p) and P(lower > p) <= 1 - confidence."""
    k = np.arange(n + 1)
    for confidence in (0.95, 0.9995):
        upper, lower = cp_upper(k, n, confidence), cp_lower(k, n, confidence)
        for p in np.linspace(0.01, 0.999, 60):
            pmf = _binomial_pmf(n, float(p))
            assert pmf[upper < p].sum() <= 1 - confidence + 1e-12
            assert pmf[lower > p].sum() <= 1 - confidence + 1e-12
    assert float(cp_upper(n, n, 0.99)) == 1.0 and float(cp_lower(0, n, 0.99)) == 0.0


def _honest_records(
    runs: int, windows: int, canaries: int, accuracies: Mapping[int, float], seed: int
) -> Iterator[tuple[list[tuple[int, float, float | None]], list[RequestRecord], list[VoteRecord]]]:
    """Many audit runs of honest owners whose accuracy never changes: what a log would hold."""
    rng = np.random.default_rng(seed)
    for _ in range(runs):
        window_rows: list[tuple[int, float, float | None]] = [(w, float(w), float(w) + 1) for w in range(1, windows + 1)]
        records, votes = [], []
        row = 0
        for w in range(1, windows + 1):
            truths = rng.integers(0, 10, canaries)
            for truth in truths:
                row += 1
                records.append(RequestRecord(row, w, float(w), "shop", f"{row:032x}", True, int(truth), "certified", row, int(truth), True))
                for rid, p in accuracies.items():
                    label = int(truth) if rng.random() < p else int((truth + 1 + rng.integers(0, 9)) % 10)
                    votes.append(VoteRecord(row, rid, 1, label))
        yield window_rows, records, votes


def test_honest_owners_raise_no_more_false_alarms_than_stated() -> None:
    """The stated rate: at most alpha = 0.1 % false alarms per (owner, window, test).

    Measured through the real analysis over 300 independent runs of 4 honest owners (96-99 %
    accurate, 10 windows of 50 canaries each; 8 windows tested after a 2-window baseline):
    9,600 accuracy tests and 9,600 agreement tests. A wider sweep of the accuracy test alone
    (simulate_false_alarms: 800,000 windows at 90-99 % accuracy, 30-100 canaries a window)
    also measures 0 false alarms. Even with no margin and alpha = 5 %, where the test is at
    its edge, it measures 0.15 % or less: the bound holds with room to spare."""
    config, _ = digits_config_and_keys()
    settings = AuditSettings()
    alarms = tests = 0
    for window_rows, records, votes in _honest_records(300, 10, 50, {0: 0.96, 1: 0.975, 2: 0.99, 3: 0.98}, seed=7):
        analysis = analyse_records(config, settings, window_rows, records, votes)
        tests += analysis.tests_made
        alarms += len(analysis.flagged())
    assert tests == 300 * 4 * 8 * 2
    assert alarms / tests <= settings.alpha, f"{alarms} false alarms in {tests} tests"

    sweep_alarms, sweep_tests = simulate_false_alarms(
        [0.90, 0.96, 0.98, 0.99], windows=50_000, canaries_per_window=60, settings=settings, seed=3
    )
    assert sweep_alarms / sweep_tests <= settings.alpha
    edge = AuditSettings(alpha=0.05, margin=0.0)
    edge_alarms, edge_tests = simulate_false_alarms(
        [0.90, 0.96, 0.98, 0.99], windows=50_000, canaries_per_window=100, settings=edge, seed=4
    )
    assert 0 < edge_alarms / edge_tests <= edge.alpha


def test_a_swapped_model_is_flagged_in_nearly_every_window_of_100_canaries() -> None:
    """The test's power, measured: a swap from 98 % to 62 % accuracy (the demo's CNN against its
    weak model) is flagged in 99 % of windows of 100 canaries, 59 % of windows of 50."""
    settings = AuditSettings()
    assert simulate_detection(0.98, 0.62, windows=20_000, canaries_per_window=100, settings=settings, seed=5) >= 0.98
    assert simulate_detection(0.98, 0.62, windows=20_000, canaries_per_window=50, settings=settings, seed=5) >= 0.5


# -- the auditor against a fake group -----------------------------------------------------------


def test_an_owner_that_swaps_in_a_weak_model_is_flagged_after_the_swap_and_not_before(swap_run: SwapRun) -> None:
    audit_log = swap_run.log
    analysis = analyse(audit_log)
    assert analysis.windows == [1, 2, 3, 4, 5]
    flagged = {(cell.window, cell.replica_id, test.kind) for cell, test in analysis.flagged()}
    assert {(4, SWAPPER, ACCURACY_DROP), (5, SWAPPER, ACCURACY_DROP)} <= flagged
    assert {(4, SWAPPER, AGREEMENT_DRIFT), (5, SWAPPER, AGREEMENT_DRIFT)} <= flagged
    assert all(window > 3 and replica == SWAPPER for window, replica, _ in flagged), flagged
    # what the swapper signed after the swap: about 62 % right
    after = analysis.cells[(5, SWAPPER)].accuracy
    assert 0.45 < after.rate < 0.8
    stored = audit_log.flags()
    assert {(f["window"], f["replica_id"], f["kind"]) for f in stored} == flagged
    statement = next(f["statement"] for f in stored if f["kind"] == ACCURACY_DROP)
    assert re.match(r"with 99\.9 % confidence, owner-3 \(replica 3\)'s accuracy in window \d", statement)


def test_the_flag_comes_with_the_owners_signed_votes_and_verifies_offline(swap_run: SwapRun) -> None:
    group, audit_log, canaries = swap_run.group, swap_run.log, swap_run.canaries
    flag = next(f for f in audit_log.flags() if f["kind"] == ACCURACY_DROP)
    bundle = json.loads(json.dumps(flag_proof(audit_log, flag)))
    config = group.config
    verdict = verify_flag_proof(bundle, config, canaries)
    assert verdict.replica_id == SWAPPER and verdict.outcome.flagged and verdict.labels_checked
    assert verdict.certificates == verdict.outcome.window.trials + verdict.outcome.baseline.trials  # type: ignore[union-attr]
    assert "owner's own signature" in verdict.describe(config)

    # every part of the proof matters
    wrong_label = json.loads(json.dumps(bundle))
    item = next(i for i in wrong_label["items"] if i["part"] == "window")
    item["true_label"] = (item["true_label"] + 1) % 10
    with pytest.raises(CertificateError):
        verify_flag_proof(wrong_label, config, canaries)
    fewer = json.loads(json.dumps(bundle))
    fewer["items"] = fewer["items"][:-1]
    with pytest.raises(CertificateError, match="give"):
        verify_flag_proof(fewer, config)
    twice = json.loads(json.dumps(bundle))
    twice["items"].append(twice["items"][0])
    with pytest.raises(CertificateError, match="counted twice"):
        verify_flag_proof(twice, config)
    other_group, _ = digits_config_and_keys("another group")
    with pytest.raises(CertificateError, match="not the pinned one"):
        verify_flag_proof(bundle, other_group)
    # a certificate with a vote altered: no longer the owner's signed vote
    forged = json.loads(json.dumps(bundle))
    victim = forged["items"][0]
    cert = decode_certificate(base64.b64decode(victim["certificate"]))
    votes = list(cert.leaf.votes)
    index = [v.replica_id for v in votes].index(SWAPPER)
    votes[index] = dataclasses.replace(votes[index], output=quantise(np.eye(10)[victim["true_label"]], 10))
    altered = dataclasses.replace(cert, leaf=dataclasses.replace(cert.leaf, votes=tuple(votes)))
    victim["certificate"] = base64.b64encode(encode_certificate(altered)).decode()
    with pytest.raises(CertificateError):
        verify_flag_proof(forged, config)


def test_honest_owners_of_a_fake_group_are_never_flagged(tmp_path: Path) -> None:
    _, audit_log, _, _ = run_audit(tmp_path, lambda rid, sent: HONEST[rid], SMALL_WINDOWS, 1000, seed=9)
    analysis = analyse(audit_log)
    assert analysis.tests_made == 4 * 3 * 2
    assert analysis.flagged() == [] and audit_log.flags() == []


def test_canaries_are_indistinguishable_from_normal_traffic_to_the_replicas(tmp_path: Path) -> None:
    group, audit_log, canaries, _ = run_audit(tmp_path, swap_after(10_000), SMALL_WINDOWS, 600, seed=4)
    records = audit_log.requests()
    canary_ids = {r.request_id for r in records if r.canary}
    assert {r.client_id for r in group.sent} == {"shop"}
    shapes = {(len(r.request_id), bool(re.fullmatch(r"[0-9a-f]{32}", r.request_id))) for r in group.sent}
    assert shapes == {(32, True)}
    # about canary_rate of the traffic, at no fixed positions
    positions = [i for i, r in enumerate(group.sent) if r.request_id in canary_ids]
    assert 0.4 < len(positions) / len(group.sent) < 0.6
    gaps = set(np.diff(positions).tolist())
    assert len(gaps) > 3
    # every request's accountable form is fetched, canary or not, and no canary input repeats
    assert set(group.fetched) == {r.key for r in group.sent}
    canary_inputs = [r.inputs[0].data for r in group.sent if r.request_id in canary_ids]
    assert len(set(canary_inputs)) == len(canary_inputs)


def test_a_log_refuses_a_second_group(tmp_path: Path) -> None:
    _, audit_log, canaries, _ = run_audit(tmp_path, swap_after(10_000), SMALL_WINDOWS, 50)
    other, _ = digits_config_and_keys("other")
    group = FakeGroup({}, lambda r, s: 1.0)
    group.config = other
    with pytest.raises(AuditError, match="use another log"):
        Auditor(group, audit_log, canaries, SMALL_WINDOWS)


def test_the_agreement_flag_verifies_offline_too(swap_run: SwapRun) -> None:
    flag = next(f for f in swap_run.log.flags() if f["kind"] == AGREEMENT_DRIFT)
    bundle = flag_proof(swap_run.log, flag)
    verdict = verify_flag_proof(bundle, swap_run.group.config)
    assert verdict.kind == AGREEMENT_DRIFT and verdict.replica_id == SWAPPER
    # normal traffic counts here too: no labels needed to compare with the certified decision
    baseline = verdict.outcome.baseline
    assert baseline is not None and verdict.certificates == verdict.outcome.window.trials + baseline.trials > 500
    assert any(item["true_label"] is None for item in bundle["items"])
    assert "agreement with the certified decision" in verdict.describe(swap_run.group.config)


def test_your_own_traffic_carries_canaries_in_time_windows(tmp_path: Path) -> None:
    """`Auditor.infer` for an application's own requests: results come back as usual, canaries
    ride along at about the stated rate, and windows close by time on the auditor's clock."""
    canaries = synthetic_digits(300)
    traffic = synthetic_digits(200, seed=5)
    group = FakeGroup(truth_of(canaries, traffic), lambda rid, sent: HONEST[rid])
    now = [1000.0]
    settings = AuditSettings(canary_rate=0.3, window_requests=0, window_seconds=60.0, min_canaries=5, min_compared=5)

    async def application() -> list[Any]:
        auditor = Auditor(group, AuditLog(tmp_path / "own.sqlite"), canaries, settings, rng=random.Random(3), clock=lambda: now[0])
        results = []
        for row in traffic.features:
            results.append(await auditor.infer(row))
            now[0] += 1.0  # one request a second: a window every 60
        await auditor.flush()
        return results

    results = asyncio.run(application())
    assert [r.request.inputs[0].data for r in results] == [np.asarray(row).tobytes() for row in traffic.features]
    with AuditLog(tmp_path / "own.sqlite") as audit_log:
        records = audit_log.requests()
        windows = audit_log.windows()
        analysis = analyse(audit_log)
    canary_count = sum(1 for r in records if r.canary)
    assert 0.2 < canary_count / len(records) < 0.4
    assert [w for w, _, _ in windows] == [1, 2, 3, 4] and all(closed is not None for _, _, closed in windows)
    assert analysis.flagged() == []


# -- labelled data ------------------------------------------------------------------------------


def test_labelled_data_from_npz_with_indexes_or_names(tmp_path: Path) -> None:
    config, _ = digits_config_and_keys()
    X = np.zeros((3, 64), dtype=np.float32)
    np.savez(tmp_path / "names.npz", X=X, y=np.array(["3", "7", "0"]))
    assert load_labelled(tmp_path / "names.npz", config).labels.tolist() == [3, 7, 0]
    np.savez(tmp_path / "ints.npz", X=X, y=np.array([1, 2, 3]))
    assert load_labelled(tmp_path / "ints.npz", config).labels.tolist() == [1, 2, 3]
    np.savez(tmp_path / "bad.npz", X=X, y=np.array([1, 2, 12]))
    with pytest.raises(AuditError, match="class indexes 0..9"):
        load_labelled(tmp_path / "bad.npz", config)
    np.savez(tmp_path / "short.npz", X=X, y=np.array([1, 2]))
    with pytest.raises(AuditError, match="3 rows"):
        load_labelled(tmp_path / "short.npz", config)
    np.savez(tmp_path / "narrow.npz", X=np.zeros((3, 8), dtype=np.float32), y=np.array([1, 2, 3]))
    with pytest.raises(AuditError, match="64 values"):
        load_labelled(tmp_path / "narrow.npz", config)
    np.savez(tmp_path / "nox.npz", y=np.array([1]))
    with pytest.raises(AuditError, match="arrays X"):
        load_labelled(tmp_path / "nox.npz", config)


# -- the CLI, offline ---------------------------------------------------------------------------


def test_verify_audit_cli_checks_a_proof_offline(swap_run: SwapRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    group, audit_log, canaries = swap_run.group, swap_run.log, swap_run.canaries
    config_path = tmp_path / "group.json"
    save_group_config(group.config, config_path)
    flag = next(f for f in audit_log.flags() if f["kind"] == ACCURACY_DROP)
    (tmp_path / "proof.json").write_text(json.dumps(flag_proof(audit_log, flag)))
    np.savez(tmp_path / "canaries.npz", X=canaries.features, y=canaries.labels)
    assert main(["verify-audit", str(tmp_path / "proof.json"), "--config", str(config_path), "--labelled", str(tmp_path / "canaries.npz")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("PROVEN: with 99.9 % confidence, owner-3 (replica 3)'s accuracy")
    assert "labels checked against the data set" in out

    bundle = json.loads((tmp_path / "proof.json").read_text())
    bundle["test"]["window"][0] += 5
    (tmp_path / "inflated.json").write_text(json.dumps(bundle))
    assert main(["verify-audit", str(tmp_path / "inflated.json"), "--config", str(config_path)]) == 1
    assert capsys.readouterr().out.startswith("NOT PROVEN: the proof's window votes give")
    (tmp_path / "junk.json").write_text("{")
    assert main(["verify-audit", str(tmp_path / "junk.json"), "--config", str(config_path)]) == 2


# -- a real group: replica 3 quietly swaps in a weak model -----------------------------------------

SWAP_AFTER_REQUESTS = 600  # three windows of 200: two form the baseline, one is tested before the swap


@pytest.fixture(scope="module")
def swapping_group(tmp_path_factory: pytest.TempPathFactory, digits_packages: list[Path]) -> Iterator[tuple[Any, Any]]:
    """Four replica processes with real Tritons and a gateway; after 600 requests replica 3
    answers with a weak model (about 62 % accurate) while still signing model version 1."""
    from marketplace.commands import start_gateway_process
    from marketplace.local import LocalGroup
    from tests.conftest import ALL_VOTES_PARAMS

    directory = tmp_path_factory.mktemp("swapping")
    group = LocalGroup(
        directory, model_packages=digits_packages, misbehave={SWAPPER: f"swap-weak:{SWAP_AFTER_REQUESTS}"},
        params=ALL_VOTES_PARAMS,  # the audit judges the swapper by its votes in the certificates
    )
    gateway = None
    try:
        group.start()
        gateway = start_gateway_process([group.group_config_path], log_path=directory / "gateway.log")
        yield group, gateway
    finally:
        if gateway is not None:
            gateway.stop()
        group.stop()


@pytest.mark.processes
def test_a_real_replica_that_quietly_swaps_models_is_flagged_with_proof(
    swapping_group: tuple[Any, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    group, gateway = swapping_group
    config_path = str(group.group_config_path)
    log_path = tmp_path / "audit.sqlite"
    status = main([
        "audit", "--gateway", gateway.address, "--config", config_path, "--rate", "0.5", "--requests", "1000",
        "--qps", "0", "--window-requests", "200", "--client-id", "shop", "--log", str(log_path), "--seed", "11", "--json",
    ])
    result = json.loads(capsys.readouterr().out)
    assert status == 3, result
    flags = {(f["window"], f["replica_id"], f["kind"]) for f in result["flags"]}
    # flagged after the swap, and nobody before it or besides it
    assert all(window > 3 and replica == SWAPPER for window, replica, _ in flags), flags
    assert {w for w, _, _ in flags} == {4, 5}
    assert any(kind == ACCURACY_DROP for _, _, kind in flags)
    owners = {o["replica_id"]: o["windows"] for o in result["analysis"]["owners"]}
    before = [w["accuracy"] for w in owners[SWAPPER][:3]]
    after = [w["accuracy"] for w in owners[SWAPPER][3:]]
    assert all(k / n > 0.9 for k, n in before) and all(k / n < 0.8 for k, n in after), (before, after)
    assert all(w["model_versions"] == [1] for w in owners[SWAPPER])  # quietly: it still claims version 1

    # the proof is the replica's own signed votes, and checks out offline with the labelled set
    flag = next(f for f in result["flags"] if f["kind"] == ACCURACY_DROP)
    assert "as in its baseline" in flag["statement"]
    assert main(["verify-audit", flag["proof"], "--config", config_path, "--labelled", "digits"]) == 0
    assert capsys.readouterr().out.startswith("PROVEN: with 99.9 % confidence, owner-3 (replica 3)'s accuracy")
    bundle = json.loads(Path(flag["proof"]).read_text())
    certificate = decode_certificate(base64.b64decode(bundle["items"][0]["certificate"]))
    assert [p.voter for p in certificate.vote_proofs] == [v.replica_id for v in certificate.leaf.votes]

    # the report, with what the live replicas say
    assert main(["report", "digits", "--log", str(log_path), "--out", str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert "No replica holds evidence of misbehaviour." in page and "Not reachable" not in page
    assert "none since genesis; v1 in effect" in page
