"""`quorumserve owner join / approve / submit-join / leave / evict` and `quorumserve chain`, as
owners use them, against in-process stand-ins for the replicas (tests/marketplace/
membership_fakes.py) that apply the group's own admission rules.

Whatever the group would refuse is refused here first, with the reason, and nothing is sent;
what the group refuses anyway is reported as refused; a certificate of a later epoch verifies
with `quorumserve verify --chain` from the pinned genesis.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from certs.certificate import encode_certificate
from certs.cli import chain_to_json
from certs.config import save_group_config
from certs.evidence import encode_evidence, evidence_to_json, find_equivocation
from certs.keys import KeyPair, save_private_key
from certs.membership import Approval, JoinRequest, next_config
from certs.statements import Statement, StatementKind
from consensus.messages import EvictOp, JoinOp, LeaveOp
from marketplace.cli import main
from marketplace.membership import approval_to_json, join_request_from_json, join_request_to_json, write_json
from tests.certs.helpers import Group, make_batch, owner_key
from tests.marketplace.membership_fakes import FakeGroup, joined_epochs, listening_group, sign_link


@dataclass
class Setup:
    group: Group
    fakes: FakeGroup
    dir: Path
    config: Path

    def owner_key_file(self, rid: int) -> Path:
        path = self.dir / f"owner-{rid}.key"
        if not path.exists():
            save_private_key(owner_key(rid), path)
        return path

    def key_file(self, name: str, key: KeyPair | None = None) -> Path:
        path = self.dir / f"{name}.key"
        if not path.exists():
            save_private_key(key or KeyPair.generate(), path)
        return path


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    group = listening_group()
    with FakeGroup(group.config) as fakes:
        yield Setup(group, fakes, tmp_path, save_group_config(group.config, tmp_path / "group.json"))


@pytest.fixture(scope="module")
def model_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from marketplace.models import constant_model_package

    return Path(constant_model_package(tmp_path_factory.mktemp("model") / "always-3", "3").directory)


def join_files(s: Setup, model: Path, *, address: str = "127.0.0.1:1", approvers: tuple[int, ...] = (0, 1, 2)) -> tuple[Path, list[Path]]:
    """The new owner's request and the approvals of `approvers`, all through the CLI."""
    request = s.dir / "join.json"
    assert main([
        "owner", "join", s.group.config.group_id, "--config", str(s.config), "--key", str(s.key_file("new-owner")),
        "--replica-key", str(s.key_file("new-replica")), "--replica-address", address, "--model", str(model),
        "--owner-id", "newcomer", "--out", str(request),
    ]) == 0
    approvals = []
    for rid in approvers:
        out = s.dir / f"approval-{rid}.json"
        assert main(["owner", "approve", str(request), "--config", str(s.config), "--replica", str(rid),
                     "--key", str(s.owner_key_file(rid)), "--out", str(out)]) == 0
        approvals.append(out)
    return request, approvals


def submit(s: Setup, request: Path, approvals: list[Path]) -> int:
    return main(["owner", "submit-join", str(request), "--approvals", *map(str, approvals), "--config", str(s.config)])


# -- joining --------------------------------------------------------------------------------------


def test_join_approve_submit_hands_the_group_a_checked_join(setup: Setup, model_package: Path, capsys: pytest.CaptureFixture[str]) -> None:
    request, approvals = join_files(setup, model_package)
    out = capsys.readouterr().out
    assert "quorumserve owner approve" in out and "submit-join" in out and "id 4" in out
    data = json.loads(request.read_text())  # readable: keys, address, model digest, signatures in hex
    assert data["owner_id"] == "newcomer" and data["address"] == "127.0.0.1:1" and data["epoch"] == 0
    assert len(bytes.fromhex(data["owner_signature"])) == 64 and data["digest"] == join_request_from_json(data).digest.hex()
    assert submit(setup, request, approvals) == 0
    received = setup.fakes.received()
    assert len(received) == setup.group.config.n  # every replica got it: none can sit on it alone
    op = received[0]
    assert isinstance(op, JoinOp) and op.join == join_request_from_json(data)
    assert sorted(a.approver for a in op.approvals) == [0, 1, 2]


def test_a_join_that_reuses_a_members_address_is_refused_before_signing(setup: Setup, model_package: Path, capsys: pytest.CaptureFixture[str]) -> None:
    taken = setup.group.config.members[1].address
    code = main([
        "owner", "join", setup.group.config.group_id, "--config", str(setup.config), "--key", str(setup.key_file("o")),
        "--replica-key", str(setup.key_file("r")), "--replica-address", taken, "--model", str(model_package),
        "--out", str(setup.dir / "join.json"),
    ])
    assert code == 1
    assert f"address {taken} is already replica 1's" in capsys.readouterr().err
    assert not (setup.dir / "join.json").exists()


def test_a_join_with_a_members_replica_key_is_refused(setup: Setup, model_package: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main([
        "owner", "join", setup.group.config.group_id, "--config", str(setup.config), "--key", str(setup.key_file("o")),
        "--replica-key", str(setup.key_file("member-2", setup.group.keys[2])), "--replica-address", "127.0.0.1:1",
        "--model", str(model_package), "--out", str(setup.dir / "join.json"),
    ])
    assert code == 1 and "already in use by replica 2" in capsys.readouterr().err


@pytest.mark.parametrize("tamper", ["unsigned", "badly-signed", "changed-after-signing"])
def test_owners_refuse_to_approve_a_request_without_valid_signatures(
    setup: Setup, model_package: Path, tamper: str, capsys: pytest.CaptureFixture[str]
) -> None:
    request, _ = join_files(setup, model_package, approvers=())
    data = json.loads(request.read_text())
    data.pop("digest")
    if tamper == "unsigned":
        data["owner_signature"] = data["replica_signature"] = ""
    elif tamper == "badly-signed":
        join = join_request_from_json(data)
        data["replica_signature"] = KeyPair.generate().signer().sign(join.signed_bytes()).hex()
    else:
        data["address"] = "127.0.0.1:2"
    request.write_text(json.dumps(data))
    capsys.readouterr()
    code = main(["owner", "approve", str(request), "--config", str(setup.config), "--replica", "0",
                 "--key", str(setup.owner_key_file(0)), "--out", str(setup.dir / "a.json")])
    assert code == 1 and "bad signature" in capsys.readouterr().err
    assert not (setup.dir / "a.json").exists()


def test_only_a_members_owner_approves(setup: Setup, model_package: Path, capsys: pytest.CaptureFixture[str]) -> None:
    request, _ = join_files(setup, model_package, approvers=())
    capsys.readouterr()
    # owner 1's key cannot approve as replica 0, nor can anyone approve as a non-member
    assert main(["owner", "approve", str(request), "--config", str(setup.config), "--replica", "0", "--key", str(setup.owner_key_file(1))]) == 1
    assert "not the owner key of replica 0" in capsys.readouterr().err
    assert main(["owner", "approve", str(request), "--config", str(setup.config), "--replica", "9", "--key", str(setup.owner_key_file(9))]) == 1
    assert "replica 9 is not a member" in capsys.readouterr().err


def test_submit_join_refuses_approvals_from_non_members_and_sends_nothing(setup: Setup, model_package: Path, capsys: pytest.CaptureFixture[str]) -> None:
    request, approvals = join_files(setup, model_package, approvers=(0, 1))
    join = join_request_from_json(json.loads(request.read_text()))
    config = setup.group.config
    stranger = write_json(approval_to_json(Approval(config.group_id, config.epoch, join.digest, 7).signed(owner_key(7))), setup.dir / "a7.json")
    capsys.readouterr()
    assert submit(setup, request, [*approvals, stranger]) == 1
    assert "approval from replica 7, which is not a member" in capsys.readouterr().err
    assert submit(setup, request, approvals) == 1  # two approvals: the rule needs three
    assert "2 approvals, the admission rule needs 3" in capsys.readouterr().err
    assert setup.fakes.received() == []


def test_a_refusal_by_the_group_is_reported_and_changes_nothing(setup: Setup, model_package: Path, capsys: pytest.CaptureFixture[str]) -> None:
    request, approvals = join_files(setup, model_package)
    for member in setup.fakes.members.values():
        member.refuse = (grpc.StatusCode.FAILED_PRECONDITION, "a membership change already takes effect at seq 64; submit again after it")
    capsys.readouterr()
    assert submit(setup, request, approvals) == 1
    err = capsys.readouterr().err
    assert "the group refused it, nothing changed" in err and "already takes effect at seq 64" in err


def test_an_unreachable_group_is_not_a_refusal(setup: Setup, model_package: Path, capsys: pytest.CaptureFixture[str]) -> None:
    request, approvals = join_files(setup, model_package)
    setup.fakes.stop()
    capsys.readouterr()
    assert submit(setup, request, approvals) == 3
    assert "no replica of group 'digits' took the change" in capsys.readouterr().err


def test_a_join_request_for_an_old_epoch_is_refused_once_the_group_moved_on(setup: Setup, model_package: Path, capsys: pytest.CaptureFixture[str]) -> None:
    request, approvals = join_files(setup, model_package)
    epochs = joined_epochs(setup.group)  # someone else's join took effect meanwhile
    setup.fakes.serve_links([(epochs.link, 8)])
    capsys.readouterr()
    assert submit(setup, request, approvals) == 1
    assert "epoch 0, this is 'digits' epoch 1" in capsys.readouterr().err
    assert setup.fakes.received() == []


# -- leaving and eviction --------------------------------------------------------------------------


def test_leaving_a_group_of_four_is_refused(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["owner", "leave", "--config", str(setup.config), "--replica", "2", "--key", str(setup.owner_key_file(2))])
    assert code == 1 and "a group needs at least 4" in capsys.readouterr().err
    assert setup.fakes.received() == []


def _five(setup: Setup) -> Group:
    """Make the fakes' group a five-member epoch 1 (served as a chain from genesis)."""
    epochs = joined_epochs(setup.group)
    setup.fakes.serve_links([(epochs.link, 8)])
    for member in setup.fakes.members.values():
        member.config = epochs.one
    return epochs.group_one


def test_an_owner_leaves_a_group_of_five(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    _five(setup)
    assert main(["owner", "leave", "--config", str(setup.config), "--replica", "2", "--key", str(setup.owner_key_file(2))]) == 0
    ops = setup.fakes.received()
    assert ops and all(isinstance(op, LeaveOp) and op.leave.replica_id == 2 and op.leave.epoch == 1 for op in ops)
    # another owner's key cannot take replica 3 out
    assert main(["owner", "leave", "--config", str(setup.config), "--replica", "3", "--key", str(setup.owner_key_file(2))]) == 1
    assert "bad signature" in capsys.readouterr().err


def test_waiting_on_a_leave_that_another_change_overtook_fails_at_once_with_the_reason(
    setup: Setup, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replica 2's owner asks to leave epoch 1 and waits; another owner's leave is ordered first
    and opens epoch 2 with replica 2 still in it. The group drops the late leave (asked of a
    closed epoch), so the wait ends as soon as epoch 2 shows, saying why, not at its timeout."""
    five = _five(setup)
    two = next_config(five.config, [], [4])
    links = [*next(iter(setup.fakes.members.values())).links, (sign_link(five.config, two, five.keys), 16)]
    import marketplace.membership as membership

    real_follow = membership.follow_chain

    def follow_after_the_other_leave(chain, **kwargs):  # type: ignore[no-untyped-def]
        if setup.fakes.received():  # once the leave is in, the group moves on
            setup.fakes.serve_links(links)
        return real_follow(chain, **kwargs)

    monkeypatch.setattr(membership, "follow_chain", follow_after_the_other_leave)
    # a wait that missed the reason would run out its timeout and say "did not take effect"
    code = main(["owner", "leave", "--config", str(setup.config), "--replica", "2", "--key", str(setup.owner_key_file(2)),
                 "--wait", "--wait-timeout", "5"])
    assert code == 1
    assert "epoch 2 began with another membership change, so the leave, asked of epoch 1, was dropped" in capsys.readouterr().err


def _equivocation(group: Group, accused: int, tmp_path: Path, as_json: bool = False) -> Path:
    config = group.config
    first, second = (
        Statement(StatementKind.PREPARE, config.group_id, config.epoch, accused, (0, 7), content).sign(group.keys[accused].signer())
        for content in (b"\x01" * 32, b"\x02" * 32)
    )
    evidence = find_equivocation(first, second)
    assert evidence is not None
    path = tmp_path / ("evidence.json" if as_json else "evidence.bin")
    if as_json:
        path.write_text(json.dumps(evidence_to_json(evidence, config)))
    else:
        path.write_bytes(encode_evidence(evidence))
    return path


def test_a_members_owner_evicts_a_replica_that_equivocated(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    five = _five(setup)
    evidence = _equivocation(five, 3, setup.dir, as_json=True)
    assert main(["owner", "evict", "--config", str(setup.config), "--replica", "3", "--evidence", str(evidence), "--key", str(setup.owner_key_file(0))]) == 0
    ops = setup.fakes.received()
    assert ops and all(isinstance(op, EvictOp) and op.replica_id == 3 and op.epoch == 1 for op in ops)


def test_evictions_without_proof_are_refused(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    five = _five(setup)
    evidence = _equivocation(five, 3, setup.dir)
    base = ["owner", "evict", "--config", str(setup.config), "--evidence", str(evidence)]
    # the evidence accuses replica 3, not replica 2
    assert main([*base, "--replica", "2", "--key", str(setup.owner_key_file(0))]) == 1
    assert "does not accuse replica 2" in capsys.readouterr().err
    # only an owner of a current member may ask
    assert main([*base, "--replica", "3", "--key", str(setup.key_file("stranger"))]) == 1
    assert "owner key of no member" in capsys.readouterr().err
    # evidence against a group of four would leave three
    setup.fakes.serve_links([])
    four = _equivocation(setup.group, 3, setup.dir)
    assert main(["owner", "evict", "--config", str(setup.config), "--evidence", str(four), "--replica", "3", "--key", str(setup.owner_key_file(0))]) == 1
    assert "at least 4" in capsys.readouterr().err
    assert setup.fakes.received() == []


# -- the chain and verifying later epochs ----------------------------------------------------------


def test_chain_and_verify_accept_a_later_epoch_certificate_only_through_the_chain(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    epochs = joined_epochs(setup.group)
    setup.fakes.serve_links([(epochs.link, 8)])
    chain_file = setup.dir / "chain.json"
    assert main(["chain", "digits", "--config", str(setup.config), "--out", str(chain_file)]) == 0
    assert json.loads(chain_file.read_text()) == chain_to_json([epochs.link])
    batch = make_batch(epochs.group_one, 3, signers=[0, 2, 3, 4])  # epoch 1's quorum, new member included
    cert = setup.dir / "cert.bin"
    cert.write_bytes(encode_certificate(batch.certificates[1]))
    capsys.readouterr()
    assert main(["verify", str(cert), "--config", str(setup.config), "--chain", str(chain_file)]) == 0
    assert "epoch 1" in capsys.readouterr().out
    assert main(["verify", str(cert), "--config", str(setup.config)]) == 1
    assert "pass --chain" in capsys.readouterr().out
    # a chain file whose link is signed by the new epoch's replicas instead of the old one's
    wrong = sign_link(epochs.genesis, epochs.one, epochs.keys, signers=[0, 1, 4])
    chain_file.write_text(json.dumps(chain_to_json([wrong])))
    assert main(["verify", str(cert), "--config", str(setup.config), "--chain", str(chain_file)]) == 1
    assert "not a member of epoch 0" in capsys.readouterr().out
    # unreadable chain file
    chain_file.write_text("{not json")
    assert main(["verify", str(cert), "--config", str(setup.config), "--chain", str(chain_file)]) == 2


def test_join_request_json_round_trips(setup: Setup) -> None:
    config = setup.group.config
    owner, replica = KeyPair.generate(), KeyPair.generate()
    join = JoinRequest(config.group_id, 0, "o", owner.public_key, replica.public_key, "h:1", 1, bytes(32)).signed(owner, replica)
    assert join_request_from_json(json.loads(json.dumps(join_request_to_json(join)))) == join
