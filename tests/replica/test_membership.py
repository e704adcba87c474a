"""Owners join and leave a running group (real processes, real Triton), and the group's fees.

Under continuous client load, straight to the replicas and through a gateway, a fifth owner
joins: it signs a request, three owners approve it, anyone submits it (all through the
`quorumserve owner` CLI); at the next epoch its replica starts, catches up by state transfer and
votes. Then another owner leaves. No client request fails, every certificate verifies against
the config of its own epoch reached from the genesis config through the signed chain (with the
SDK and with `quorumserve verify --chain`), and the certified ledger agrees with the
certificates. Changes the group must refuse change nothing.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from certs.certificate import encode_certificate
from certs.cli import chain_to_json, config_for_epoch
from certs.config import GroupConfig, ProtocolParams
from certs.keys import KeyPair, save_private_key
from certs.membership import Approval, JoinRequest, LeaveRequest
from certs.verify import verify
from consensus.messages import JoinOp, LeaveOp
from marketplace.cli import main
from marketplace.gateway import Gateway
from marketplace.local import JoiningMember, LocalGroup
from marketplace.membership import (
    ConfigChain,
    ControlRefusedError,
    Ledger,
    approval_to_json,
    fetch_ledger,
    join_request_to_json,
    submit_control,
    write_json,
)
from marketplace.models import held_out_digits
from marketplace.registry import GroupEntry, Registry
from marketplace.sdk import AsyncClient, AsyncReplicaClient, ClientError, InferenceResult, ReplicaClient
from tests.replica.cluster_helpers import status, wait_until

pytestmark = pytest.mark.processes

PRICE = 12  # credits per certified request: shared among 3 or 4 supporters, with remainders
# epochs change at checkpoints: small windows make a change take effect after fewer batches
PARAMS = ProtocolParams(checkpoint_interval_batches=8, log_window_batches=16)
LEAVER = 1
REQUEST_TIMEOUT_S = 120.0  # generous: this test counts failures, it does not time anything


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory, digits_packages: list[Path]) -> Iterator[LocalGroup]:
    g = LocalGroup(tmp_path_factory.mktemp("membership"), model_packages=digits_packages, price_per_request=PRICE, params=PARAMS)
    try:
        g.start()
        yield g
    finally:
        g.stop()


@dataclass
class Traffic:
    """What the clients got: every result (they verify each certificate against the config of
    its epoch, following the chain from genesis) and every failure."""

    results: dict[tuple[str, str], InferenceResult] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def add(self, other: Traffic) -> None:
        self.results.update(other.results)
        self.failures += other.failures


async def _load(client: AsyncReplicaClient | AsyncClient, name: str, inputs: np.ndarray, stop: asyncio.Event, concurrency: int) -> Traffic:
    traffic = Traffic()
    counter = iter(range(10**9))

    async def worker() -> None:
        while not stop.is_set():
            index = next(counter)
            try:
                result = await client.infer(inputs[index % len(inputs)], request_id=f"{name}-{index}", timeout_s=REQUEST_TIMEOUT_S)
            except ClientError as exc:
                traffic.failures.append(f"{name}-{index}: {type(exc).__name__}: {exc}")
                continue
            traffic.results[(result.client_id, result.request_id)] = result

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return traffic


@dataclass
class Scenario:
    genesis: GroupConfig
    joined_id: int
    configs: list[GroupConfig]  # every epoch, genesis first, as the chain from genesis proves them
    chain: ConfigChain
    traffic: Traffic
    member: JoiningMember
    request_file: Path
    approval_files: list[Path]


def _cli(*argv: str) -> None:
    code = main(list(argv))
    assert code == 0, f"quorumserve {' '.join(argv)} exited with {code}"


@pytest.fixture(scope="module")
def scenario(group: LocalGroup, tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    assert group.config is not None
    genesis = group.config
    files = tmp_path_factory.mktemp("membership-files")
    config_path = str(group.group_config_path)
    inputs, _ = held_out_digits(0)
    member = group.join_member(owner_id="newcomer")
    request_file = files / "join.json"
    approval_files = [files / f"approval-{rid}.json" for rid in (0, 2, 3)]
    joined: dict[str, int] = {}

    def join_then_leave() -> None:
        # the new owner signs its request; three current owners approve it; anyone submits it
        _cli(
            "owner", "join", genesis.group_id, "--config", config_path, "--key", str(member.owner_key_path),
            "--replica-key", str(member.replica_key_path), "--replica-address", member.address,
            "--model", str(member.config.model_package), "--owner-id", member.owner_id, "--out", str(request_file),
        )
        for rid, path in zip((0, 2, 3), approval_files):
            _cli("owner", "approve", str(request_file), "--config", config_path, "--replica", str(rid),
                 "--key", str(group.owner_key_path(rid)), "--out", str(path))
        _cli("owner", "submit-join", str(request_file), "--approvals", *map(str, approval_files), "--config", config_path, "--wait")
        joined["id"] = group.start_member(member)
        # the new replica caught up by state transfer before the next change
        assert wait_until(lambda: _caught_up(group, joined["id"]), 300), group.log_tail(joined["id"])
        time.sleep(3.0)  # let it vote for a while under load
        _cli("owner", "leave", "--config", config_path, "--replica", str(LEAVER), "--key", str(group.owner_key_path(LEAVER)), "--wait")
        group.stop_replica(LEAVER)
        time.sleep(3.0)

    async def run() -> Traffic:
        gateway = Gateway(Registry([GroupEntry.of(genesis)]))
        port = await gateway.start("127.0.0.1:0")
        direct = AsyncReplicaClient(None, genesis, client_id="direct")
        via_gateway = AsyncClient(f"127.0.0.1:{port}", genesis, client_id="via-gateway")
        stop = asyncio.Event()
        try:
            loads = [
                asyncio.ensure_future(_load(direct, "direct", inputs, stop, 4)),
                asyncio.ensure_future(_load(via_gateway, "gateway", inputs, stop, 2)),
            ]
            await asyncio.sleep(2.0)
            try:
                await asyncio.get_running_loop().run_in_executor(None, join_then_leave)
            finally:
                stop.set()
            traffic = Traffic()
            for load in loads:
                traffic.add(await load)
            return traffic
        finally:
            await direct.close()
            await via_gateway.close()
            await gateway.stop()

    traffic = asyncio.run(run())
    chain = group.chain()
    return Scenario(genesis, joined["id"], chain.configs, chain, traffic, member, request_file, approval_files)


def _caught_up(group: LocalGroup, replica_id: int) -> bool:
    mine = status(group.replicas[replica_id].address)
    others = [status(group.replicas[r].address) for r in (0, 2, 3)]
    if mine is None or mine.state != "normal" or any(o is None for o in others):
        return False
    return mine.executed_seq + PARAMS.checkpoint_interval_batches >= max(o.executed_seq for o in others if o is not None)


# -- joining and leaving under load ---------------------------------------------------------


def test_no_client_request_failed_while_an_owner_joined_and_another_left(scenario: Scenario) -> None:
    assert scenario.traffic.failures == []
    by_client = {client for client, _ in scenario.traffic.results}
    assert by_client == {"direct", "via-gateway"}
    epochs = {r.epoch for r in scenario.traffic.results.values()}
    assert epochs == {0, 1, 2}, f"certificates from epochs {sorted(epochs)}"


def test_the_chain_from_genesis_has_one_epoch_per_change(scenario: Scenario) -> None:
    first, joined, left = scenario.configs
    assert (first.epoch, joined.epoch, left.epoch) == (0, 1, 2)
    assert joined.replica_ids == (0, 1, 2, 3, scenario.joined_id) and joined.f == 1
    assert left.replica_ids == (0, 2, 3, scenario.joined_id) and left.f == 1
    new = joined.member(scenario.joined_id)
    assert new is not None and new.owner_id == "newcomer" and new.address == scenario.member.address
    # each link is signed by a quorum of the epoch before it
    for epoch, config in ((1, joined), (2, left)):
        link = scenario.chain.links[epoch]
        previous = scenario.configs[epoch - 1]
        assert {s.replica_id for s in link.signatures} <= set(previous.replica_ids)
        assert len(link.signatures) >= previous.quorum_size


def test_every_certificate_verifies_against_its_epoch_reached_from_genesis(scenario: Scenario) -> None:
    links = scenario.chain.signed_links()
    for result in scenario.traffic.results.values():
        config = config_for_epoch(scenario.genesis, links, result.epoch)
        verify(result.certificate, config, result.request)


def test_the_new_member_catches_up_and_votes_in_the_new_epoch(scenario: Scenario, group: LocalGroup) -> None:
    new = scenario.joined_id
    voted = [r for r in scenario.traffic.results.values() if any(v.replica_id == new for v in r.votes)]
    assert voted, "no certificate carries a vote of the new member"
    assert {r.epoch for r in voted} <= {1, 2}
    # its votes are real answers of its own model, and they count towards decisions
    assert any(new in r.supporters for r in voted)

    def serving_epoch_2() -> bool:
        reply = status(group.replicas[new].address, timeout_s=10.0)
        return reply is not None and reply.epoch == 2 and reply.state == "normal"

    assert wait_until(serving_epoch_2, 120), group.log_tail(new)


def test_the_member_that_left_votes_no_more(scenario: Scenario) -> None:
    for result in scenario.traffic.results.values():
        if result.epoch == 2:
            assert all(v.replica_id != LEAVER for v in result.votes)
            assert LEAVER not in result.verified.signers


def test_verify_cli_checks_later_epochs_through_the_chain_file(scenario: Scenario, group: LocalGroup, tmp_path: Path) -> None:
    chain_file = tmp_path / "chain.json"
    _cli("chain", scenario.genesis.group_id, "--config", str(group.group_config_path), "--out", str(chain_file))
    assert json.loads(chain_file.read_text()) == chain_to_json(scenario.chain.signed_links())
    latest = max(scenario.traffic.results.values(), key=lambda r: r.seq)
    assert latest.epoch == 2
    cert = tmp_path / "cert.bin"
    cert.write_bytes(encode_certificate(latest.certificate))
    assert main(["verify", str(cert), "--config", str(group.group_config_path), "--chain", str(chain_file)]) == 0
    # without the chain the pinned genesis cannot vouch for epoch 2's signers
    assert main(["verify", str(cert), "--config", str(group.group_config_path)]) == 1
    # a chain whose second link lost signatures below a quorum is refused
    data = json.loads(chain_file.read_text())
    data["links"][1]["signatures"] = data["links"][1]["signatures"][:1]
    chain_file.write_text(json.dumps(data))
    assert main(["verify", str(cert), "--config", str(group.group_config_path), "--chain", str(chain_file)]) == 1


# -- fees -----------------------------------------------------------------------------------


def _ledger_covering(group: LocalGroup, scenario: Scenario) -> tuple[Ledger, Traffic]:
    """The certified ledger at a checkpoint past every certificate seen so far (a little more
    traffic moves the group to the next stable checkpoint), and that extra traffic."""
    assert group.config is not None
    last_seq = max(r.seq for r in scenario.traffic.results.values())
    inputs, _ = held_out_digits(1)
    filler = Traffic()
    with ReplicaClient(None, group.config, client_id="filler") as client:
        for index in range(10_000):
            ledger = client.ledger()
            if ledger.seq >= last_seq:
                return ledger, filler
            result = client.infer(inputs[index % len(inputs)], request_id=f"filler-{index}", timeout_s=REQUEST_TIMEOUT_S)
            filler.results[(result.client_id, result.request_id)] = result
    raise AssertionError("the ledger never reached the last certificate's seq")


def test_the_ledger_agrees_with_the_certificates(scenario: Scenario, group: LocalGroup) -> None:
    ledger, filler = _ledger_covering(group, scenario)
    results = [r for r in [*scenario.traffic.results.values(), *filler.results.values()] if r.seq <= ledger.seq]
    agreed = [r for r in results if r.agreed]
    assert 0 < len(agreed) <= len(results)
    spend: dict[str, int] = {}
    earnings: dict[int, int] = {}
    for result in agreed:
        spend[result.client_id] = spend.get(result.client_id, 0) + PRICE
        share, remainder = divmod(PRICE, len(result.supporters))
        for index, rid in enumerate(sorted(result.supporters)):
            earnings[rid] = earnings.get(rid, 0) + share + (1 if index < remainder else 0)
    assert ledger.client_spend == spend
    assert ledger.total_spend == PRICE * len(agreed)
    assert ledger.owner_earnings == earnings
    assert ledger.total_earnings == ledger.total_spend
    # the newcomer earned from its agreeing votes; the owner that left keeps what it earned before
    assert ledger.owner_earnings.get(scenario.joined_id, 0) > 0
    assert ledger.owner_earnings.get(LEAVER, 0) > 0
    assert ledger.owner_ids[scenario.joined_id] == "newcomer"


def test_ledger_cli_prints_verified_spend_and_earnings(scenario: Scenario, group: LocalGroup, capsys: pytest.CaptureFixture[str]) -> None:
    chain = ConfigChain(scenario.genesis)
    chain.extend(scenario.chain.signed_links())
    expected = fetch_ledger(chain)
    capsys.readouterr()
    assert main(["ledger", scenario.genesis.group_id, "--config", str(group.group_config_path), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["seq"] >= expected.seq
    assert printed["total_spend"] == printed["total_earnings"] > 0
    assert printed["owners"][str(scenario.joined_id)]["owner_id"] == "newcomer"
    assert main(["ledger", scenario.genesis.group_id, "--config", str(group.group_config_path)]) == 0
    out = capsys.readouterr().out
    shown = re.search(r"at seq (\d+)", out)
    assert shown is not None and int(shown.group(1)) >= printed["seq"]  # the group may have moved on
    assert "direct" in out and "newcomer" in out and "verified" in out


def test_the_audit_report_shows_the_verified_ledger(scenario: Scenario, group: LocalGroup, tmp_path: Path) -> None:
    """An auditor pinning only the genesis config: the report follows the chain, checks the
    ledger's checkpoint signatures and shows each owner's earnings and each client's spend."""
    from marketplace.audit import AuditLog, AuditSettings
    from marketplace.report import collect_live, render_report

    live = collect_live(scenario.genesis, timeout_s=5.0)
    assert live.ledger is not None, live.ledger_error
    assert live.ledger.epoch >= 2 and live.ledger.total_spend == live.ledger.total_earnings > 0
    audit_log = AuditLog(tmp_path / "audit.db")  # no canaries sent: the ledger needs none
    audit_log.bind(scenario.genesis, AuditSettings(), "-")
    page = render_report(audit_log, tmp_path / "report", live=live).read_text()
    assert "<h2>Fee ledger</h2>" in page
    assert f"<td>{scenario.joined_id}</td><td>newcomer</td><td>{live.ledger.owner_earnings[scenario.joined_id]}</td>" in page
    assert f"<tr><td>direct</td><td>{live.ledger.client_spend['direct']}</td></tr>" in page


# -- refusals -------------------------------------------------------------------------------


def _snapshot(group: LocalGroup) -> tuple[int, bytes, tuple[int, ...]]:
    config = group.current_config()
    return config.epoch, config.digest, config.replica_ids


REFUSALS = [
    "unsigned-join",
    "badly-signed-join",
    "duplicate-key",
    "duplicate-address",
    "approval-from-non-member",
    "too-few-approvals",
    "leave-below-four",
    "leave-signed-by-another-owner",
]


@pytest.mark.parametrize("case", REFUSALS)
def test_refused_changes_change_nothing(scenario: Scenario, group: LocalGroup, tmp_path: Path, case: str) -> None:
    config = group.current_config()
    assert config.n == 4  # after the leave: one more leave would break the minimum
    before = _snapshot(group)
    owner, replica = KeyPair.generate(), KeyPair.generate()
    address = "127.0.0.1:1"
    if case == "duplicate-key":
        replica_key = group.replicas[0].config.key_file
        from certs.keys import load_private_key

        replica = load_private_key(replica_key)
    if case == "duplicate-address":
        address = group.replicas[0].address
    join = JoinRequest(config.group_id, config.epoch, "mallory", owner.public_key, replica.public_key, address, 1, bytes(range(32)))
    join = join.signed(owner, replica)
    if case == "unsigned-join":
        join = JoinRequest(config.group_id, config.epoch, "mallory", owner.public_key, replica.public_key, address, 1, bytes(range(32)))
    if case == "badly-signed-join":
        join = JoinRequest(
            join.group_id, join.epoch, join.owner_id, join.owner_public_key, join.replica_public_key, join.address,
            join.model_version, join.weights_digest, join.owner_signature, KeyPair.generate().signer().sign(join.signed_bytes()),
        )
    approvers = list(config.replica_ids[: config.quorum_size])
    approvals = [Approval(config.group_id, config.epoch, join.digest, rid).signed(group.owner_key(rid)) for rid in approvers]
    if case == "approval-from-non-member":
        approvals[-1] = Approval(config.group_id, config.epoch, join.digest, LEAVER).signed(group.owner_key(LEAVER))
    if case == "too-few-approvals":
        approvals = approvals[:-1]
    op: JoinOp | LeaveOp = JoinOp(join, tuple(approvals))
    if case == "leave-below-four":
        op = LeaveOp(LeaveRequest(config.group_id, config.epoch, 0).signed(group.owner_key(0)))
    if case == "leave-signed-by-another-owner":
        op = LeaveOp(LeaveRequest(config.group_id, config.epoch, 2).signed(group.owner_key(3)))

    # the replicas refuse it with a reason (sent as is, past the CLI's own checks)
    with pytest.raises(ControlRefusedError) as refused:
        submit_control(config, op)
    assert refused.value.reason
    # and so does the CLI, before sending anything
    if isinstance(op, JoinOp):
        request_file = write_json(join_request_to_json(join), tmp_path / "join.json")
        approval_paths = [write_json(approval_to_json(a), tmp_path / f"a-{i}.json") for i, a in enumerate(approvals)]
        code = main(["owner", "submit-join", str(request_file), "--approvals", *map(str, approval_paths), "--config", str(group.group_config_path)])
    else:
        key_file = tmp_path / "owner.key"
        signer = 0 if case == "leave-below-four" else 3
        save_private_key(group.owner_key(signer), key_file)
        code = main(["owner", "leave", "--config", str(group.group_config_path), "--replica", str(op.leave.replica_id), "--key", str(key_file)])
    assert code == 1
    # nothing changed, even after a few checkpoints' worth of traffic
    with ReplicaClient(None, group.config, client_id=f"after-{case}") as client:  # type: ignore[arg-type]
        inputs, _ = held_out_digits(2)
        for index in range(PARAMS.log_window_batches + 2 * PARAMS.checkpoint_interval_batches):
            client.infer(inputs[index % len(inputs)], request_id=f"r-{index}", timeout_s=REQUEST_TIMEOUT_S)
    assert _snapshot(group) == before
