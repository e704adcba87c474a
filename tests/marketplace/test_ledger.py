"""The fee ledger as a client or an auditor reads it: fetched from untrusted replicas and
accepted only with a quorum of checkpoint signatures over the state it is part of.

Each certified request whose decision names a label costs its client the price, shared among
the owners whose votes supported the decision; NO_AGREEMENT is free (consensus/state.py). These
tests run the real replicated state over signed batches, serve what a replica's Ledger RPC
answers from in-process fakes, and check what the SDK, `fetch_ledger` and `quorumserve ledger`
make of it, honest and tampered.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from certs.config import GroupConfig
from consensus.messages import Proposal, ProposalEntry
from consensus.state import CheckpointSummary, ReplicatedState
from marketplace.cli import main
from marketplace.membership import ConfigChain, LedgerError, UnknownEpochError, fetch_ledger, verify_ledger
from marketplace.sdk import ReplicaClient
from protos import replica_api_pb2 as api
from tests.certs.helpers import Group, make_batch
from tests.marketplace.membership_fakes import (
    Epochs,
    FakeGroup,
    joined_epochs,
    ledger_reply,
    signed_checkpoints,
    listening_group,
)

BATCHES = 8  # two checkpoints at the fakes' interval of 4


def run_batches(group: Group, state: ReplicatedState, count: int) -> list[object]:
    """Execute `count` signed batches of requests (some without agreement); their leaves."""
    leaves = []
    for _ in range(count):
        seq = state.seq + 1
        batch = make_batch(group, 6, seq=seq, seed=seq, request_offset=10 * seq, agreement=0.6)
        state.apply(batch.header, Proposal(tuple(ProposalEntry(leaf, ()) for leaf in batch.leaves)))
        leaves += batch.leaves
    return leaves


def expected_figures(config: GroupConfig, leaves: list) -> tuple[dict[str, int], dict[int, int]]:  # type: ignore[type-arg]
    """What the certificates say each client owes and each owner earned."""
    spend: dict[str, int] = {}
    earned: dict[int, int] = {}
    price = config.price_per_request
    for leaf in leaves:
        if not leaf.decision.agreed:
            continue
        spend[leaf.client_id] = spend.get(leaf.client_id, 0) + price
        share, remainder = divmod(price, len(leaf.decision.support))
        for index, rid in enumerate(sorted(leaf.decision.support)):
            earned[rid] = earned.get(rid, 0) + share + (1 if index < remainder else 0)
    return spend, earned


@pytest.fixture(scope="module")
def group() -> Group:
    return listening_group()


@pytest.fixture(scope="module")
def executed(group: Group) -> tuple[ReplicatedState, list]:  # type: ignore[type-arg]
    state = ReplicatedState(group.config)
    leaves = run_batches(group, state, BATCHES)
    return state, leaves


def honest_reply(group: Group, summary: CheckpointSummary) -> api.LedgerReply:
    return ledger_reply(summary, signed_checkpoints(group.config, group.keys, summary.seq, summary.state_digest()))


@pytest.fixture
def fakes(group: Group) -> Iterator[FakeGroup]:
    with FakeGroup(group.config) as running:
        yield running


# -- verifying one reply ------------------------------------------------------------------------


def test_a_quorum_signed_ledger_verifies_and_matches_the_certificates(group: Group, executed: tuple) -> None:  # type: ignore[type-arg]
    state, leaves = executed
    ledger = verify_ledger(honest_reply(group, state.summary()), ConfigChain(group.config))
    spend, earned = expected_figures(group.config, leaves)
    assert (ledger.seq, ledger.epoch, ledger.signed_epoch) == (BATCHES, 0, 0)
    assert ledger.client_spend == spend and ledger.owner_earnings == earned
    agreed = sum(1 for leaf in leaves if leaf.decision.agreed)
    assert 0 < agreed < len(leaves), "the batches should mix agreement and NO_AGREEMENT"
    assert ledger.total_spend == ledger.total_earnings == group.config.price_per_request * agreed
    assert ledger.owner_ids == {m.replica_id: m.owner_id for m in group.config.members}
    assert ledger.signers == group.config.replica_ids[: group.config.quorum_size]


def test_a_tampered_figure_is_refused(group: Group, executed: tuple) -> None:  # type: ignore[type-arg]
    state, _ = executed
    reply = honest_reply(group, state.summary())
    for entry in reply.summary.ledger:
        if entry.kind == "owner":
            entry.amount += 1  # an owner pays itself a credit more
            break
    with pytest.raises(LedgerError, match="lacks a quorum"):
        verify_ledger(reply, ConfigChain(group.config))


def test_too_few_checkpoint_signatures_are_refused(group: Group, executed: tuple) -> None:  # type: ignore[type-arg]
    state, _ = executed
    summary = state.summary()
    proof = signed_checkpoints(group.config, group.keys, summary.seq, summary.state_digest(), signers=[0, 1])
    with pytest.raises(LedgerError, match="lacks a quorum"):
        verify_ledger(ledger_reply(summary, proof), ConfigChain(group.config))
    with pytest.raises(LedgerError, match="no checkpoint signatures"):
        verify_ledger(ledger_reply(summary, []), ConfigChain(group.config))


def test_signatures_by_keys_that_are_not_the_members_are_refused(group: Group, executed: tuple) -> None:  # type: ignore[type-arg]
    state, _ = executed
    summary = state.summary()
    impostors = {rid: group.keys[(rid + 1) % 4] for rid in group.config.replica_ids}
    proof = signed_checkpoints(group.config, impostors, summary.seq, summary.state_digest())
    with pytest.raises(LedgerError, match="lacks a quorum"):
        verify_ledger(ledger_reply(summary, proof), ConfigChain(group.config))


def test_a_ledger_between_checkpoints_is_refused(group: Group) -> None:
    state = ReplicatedState(group.config)
    run_batches(group, state, 3)  # the interval is 4
    with pytest.raises(LedgerError, match="no checkpoint"):
        verify_ledger(honest_reply(group, state.summary()), ConfigChain(group.config))


def test_a_ledger_signed_in_a_later_epoch_needs_the_chain(group: Group) -> None:
    epochs: Epochs = joined_epochs(group)
    one = epochs.group_one
    state = ReplicatedState(epochs.one)
    run_batches(one, state, 4)
    summary = state.summary()
    reply = ledger_reply(summary, signed_checkpoints(epochs.one, epochs.keys, summary.seq, summary.state_digest()))
    chain = ConfigChain(group.config)
    with pytest.raises(UnknownEpochError) as unknown:
        verify_ledger(reply, chain)
    assert unknown.value.epoch == 1
    chain.extend([epochs.link])
    ledger = verify_ledger(reply, chain)
    assert ledger.signed_epoch == 1 and len(ledger.signers) == epochs.one.quorum_size
    assert ledger.owner_ids[4] == epochs.one.members[-1].owner_id
    # the new epoch's replicas cannot vouch for a state that says the group is still in epoch 0
    old = ReplicatedState(group.config)
    run_batches(group, old, 4)
    back = old.summary()
    forged = ledger_reply(back, signed_checkpoints(epochs.one, epochs.keys, back.seq, back.state_digest()))
    with pytest.raises(LedgerError, match="cannot leave the group in epoch 0"):
        verify_ledger(forged, chain)


# -- fetching from untrusted replicas ---------------------------------------------------------


def test_fetch_keeps_the_newest_ledger_that_verifies(group: Group, fakes: FakeGroup) -> None:
    state = ReplicatedState(group.config)
    run_batches(group, state, 4)
    older = honest_reply(group, state.summary())
    run_batches(group, state, 4)
    newer = honest_reply(group, state.summary())
    forged = api.LedgerReply()
    forged.CopyFrom(newer)
    forged.summary.seq = 12  # claims a later checkpoint with figures nobody signed
    fakes.serve_ledger(older, [0])
    fakes.serve_ledger(newer, [1])
    fakes.serve_ledger(forged, [2])
    ledger = fetch_ledger(ConfigChain(group.config))
    assert ledger.seq == 8 and ledger.client_spend == dict(state.client_spend)


def test_fetch_fails_clearly_when_nothing_verifies(group: Group, fakes: FakeGroup, executed: tuple) -> None:  # type: ignore[type-arg]
    state, _ = executed
    reply = honest_reply(group, state.summary())
    reply.summary.ledger[0].amount += 5
    fakes.serve_ledger(reply)
    with pytest.raises(LedgerError, match="no replica returned a ledger that verifies"):
        fetch_ledger(ConfigChain(group.config))


def test_the_sdk_follows_the_chain_to_the_ledger_of_a_later_epoch(group: Group, fakes: FakeGroup) -> None:
    epochs = joined_epochs(group)
    state = ReplicatedState(epochs.one)
    run_batches(epochs.group_one, state, 4)
    summary = state.summary()
    fakes.serve_ledger(ledger_reply(summary, signed_checkpoints(epochs.one, epochs.keys, summary.seq, summary.state_digest())))
    fakes.serve_links([(epochs.link, 0)])
    with ReplicaClient(None, group.config) as client:
        ledger = client.ledger()
        assert ledger.signed_epoch == 1 and ledger.seq == 4
        assert client.config.epoch == 1  # and from now on it sends to epoch 1's members
        assert ledger.total_spend == ledger.total_earnings


def test_ledger_cli_prints_each_client_and_owner(group: Group, fakes: FakeGroup, executed: tuple, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def, type-arg]
    from certs.config import save_group_config

    state, leaves = executed
    fakes.serve_ledger(honest_reply(group, state.summary()))
    config_path = save_group_config(group.config, tmp_path / "group.json")
    assert main(["ledger", group.config.group_id, "--config", str(config_path)]) == 0
    out = capsys.readouterr().out
    spend, earned = expected_figures(group.config, leaves)
    assert f"at seq {BATCHES}" in out and "alice" in out and str(spend["alice"]) in out
    for rid, amount in earned.items():
        assert f"replica {rid}" in out and str(amount) in out
    assert main(["ledger", group.config.group_id, "--config", str(config_path), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["clients"] == spend
    assert {int(k): v["earned"] for k, v in printed["owners"].items()} == earned
    assert printed["total_spend"] == printed["total_earnings"]


def test_ledger_cli_says_why_when_no_ledger_verifies(group: Group, fakes: FakeGroup, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    from certs.config import save_group_config

    config_path = save_group_config(group.config, tmp_path / "group.json")
    assert main(["ledger", group.config.group_id, "--config", str(config_path)]) == 3
    assert "not certified" in capsys.readouterr().err
