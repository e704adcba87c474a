"""certs/membership.py: who may join or leave a group, and the chain of configs clients follow.

A join is signed by the new owner and by the new replica's key, for one group and epoch, and
approved by a quorum of current members' owners; a leave is signed by the leaving replica's
owner; no change may leave fewer than MIN_GROUP_SIZE replicas. Each later config is vouched for
by a quorum of the epoch before it, and a client following the chain from its pinned genesis
accepts nothing else.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from certs.config import GroupConfig
from certs.errors import CertificateError
from certs.keys import KeyPair
from certs.membership import (
    MIN_GROUP_SIZE,
    Approval,
    ConfigLink,
    JoinRequest,
    LeaveRequest,
    MembershipError,
    QuorumSigned,
    check_join,
    check_leave,
    link_message,
    next_config,
    verify_chain,
    verify_link,
)
from tests.certs.helpers import Group, make_group, owner_key, replica_key


@pytest.fixture
def genesis() -> Group:
    return make_group(1, epoch=0)


def newcomer(config: GroupConfig, n: int = 0, *, address: str | None = None) -> tuple[JoinRequest, KeyPair, KeyPair]:
    owner, replica = owner_key(100 + n, "new"), replica_key(100 + n, "new")
    join = JoinRequest(
        config.group_id, config.epoch, f"newcomer-{n}", owner.public_key, replica.public_key,
        address or f"10.0.0.{n + 1}:7000", 1, bytes(range(32)),
    )
    return join.signed(owner, replica), owner, replica


def approvals(config: GroupConfig, join: JoinRequest, ids: list[int] | None = None) -> list[Approval]:
    chosen = list(config.replica_ids[: config.quorum_size]) if ids is None else ids
    return [Approval(config.group_id, config.epoch, join.digest, rid).signed(owner_key(rid)) for rid in chosen]


def link(previous: GroupConfig, config: GroupConfig, signers: list[int], keys: dict[int, KeyPair] | None = None) -> ConfigLink:
    """`config` vouched for by `signers` (their replica keys, or `keys`)."""
    def key(rid: int) -> KeyPair:
        return (keys or {}).get(rid) or replica_key(rid)

    return ConfigLink(config, tuple(QuorumSigned(r, key(r).signer().sign(link_message(config, r))) for r in signers))


def quorum_link(previous: GroupConfig, config: GroupConfig) -> ConfigLink:
    return link(previous, config, list(previous.replica_ids[: previous.quorum_size]))


# -- joining ----------------------------------------------------------------------------------


def test_a_signed_join_with_a_quorum_of_owner_approvals_is_admitted(genesis: Group) -> None:
    config = genesis.config
    join, _, _ = newcomer(config)
    check_join(config, join, approvals(config, join))
    new = next_config(config, [join])
    assert new.epoch == config.epoch + 1 and new.previous_digest == config.digest
    member = new.member(4)
    assert member is not None and member.public_key == join.replica_public_key and member.owner_public_key == join.owner_public_key
    assert member.address == join.address and (new.n, new.f) == (5, 1)


def test_an_unsigned_join_is_refused(genesis: Group) -> None:
    config = genesis.config
    join, _, _ = newcomer(config)
    unsigned = replace(join, owner_signature=b"", replica_signature=b"")
    with pytest.raises(MembershipError, match="owner.*bad signature"):
        check_join(config, unsigned, approvals(config, unsigned))


@pytest.mark.parametrize("which", ["owner", "replica"])
def test_a_join_signed_by_the_wrong_key_is_refused(genesis: Group, which: str) -> None:
    config = genesis.config
    join, _, _ = newcomer(config)
    forged = KeyPair.generate().signer().sign(join.signed_bytes())
    bad = replace(join, owner_signature=forged) if which == "owner" else replace(join, replica_signature=forged)
    with pytest.raises(MembershipError, match="bad signature"):
        check_join(config, bad, approvals(config, bad))


def test_a_join_changed_after_signing_is_refused(genesis: Group) -> None:
    config = genesis.config
    join, _, _ = newcomer(config)
    moved = replace(join, address="10.9.9.9:7000")  # the signatures cover the old address
    with pytest.raises(MembershipError, match="bad signature"):
        check_join(config, moved, approvals(config, moved))


def test_a_join_for_another_epoch_or_group_is_refused(genesis: Group) -> None:
    config = genesis.config
    old, _, _ = newcomer(config)
    later = next_config(config, [old])
    with pytest.raises(MembershipError, match="epoch 0, this is"):
        check_join(later, old, approvals(later, old))
    other = make_group(1, group_id="other", epoch=0).config
    with pytest.raises(MembershipError, match="is for group 'digits'"):
        check_join(other, old, approvals(other, old))


@pytest.mark.parametrize("duplicate", ["replica key", "owner key as replica key", "address"])
def test_a_join_that_duplicates_a_member_is_refused(genesis: Group, duplicate: str) -> None:
    config = genesis.config
    member = config.members[2]
    owner = owner_key(100, "new")
    if duplicate == "replica key":
        replica = replica_key(2)  # replica 2's own key
        address = "10.0.0.1:7000"
    elif duplicate == "owner key as replica key":
        replica = owner_key(2)
        address = "10.0.0.1:7000"
    else:
        replica = replica_key(100, "new")
        address = member.address
    join = JoinRequest(config.group_id, config.epoch, "dup", owner.public_key, replica.public_key, address, 1, bytes(32)).signed(owner, replica)
    with pytest.raises(MembershipError, match="already"):
        check_join(config, join, approvals(config, join))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"replica_public_key": b"\x01" * 31}, "32 bytes"),
        ({"weights_digest": b"\x01" * 31}, "no valid model"),
        ({"model_version": 0}, "no valid model"),
        ({"address": ""}, "address"),
        ({"owner_id": ""}, "owner id"),
    ],
)
def test_a_malformed_join_is_refused(genesis: Group, change: dict[str, object], message: str) -> None:
    config = genesis.config
    join, _, _ = newcomer(config)
    bad = replace(join, **change)  # type: ignore[arg-type]
    with pytest.raises(MembershipError, match=message):
        check_join(config, bad, approvals(config, bad))


def test_an_unknown_admission_rule_admits_no_one(genesis: Group) -> None:
    config = genesis.config.with_changes(admission_rule="first-come")
    join, _, _ = newcomer(config)
    with pytest.raises(MembershipError, match="unknown admission rule"):
        check_join(config, join, approvals(config, join))


# -- approvals ----------------------------------------------------------------------------------


def test_an_approval_from_a_non_member_is_refused(genesis: Group) -> None:
    config = genesis.config
    join, _, _ = newcomer(config)
    outsider = Approval(config.group_id, config.epoch, join.digest, 9).signed(owner_key(9))
    with pytest.raises(MembershipError, match="replica 9, which is not a member"):
        check_join(config, join, [*approvals(config, join, [0, 1]), outsider])


def test_too_few_approvals_are_refused(genesis: Group) -> None:
    config = genesis.config
    join, _, _ = newcomer(config)
    with pytest.raises(MembershipError, match=f"2 approvals, the admission rule needs {config.quorum_size}"):
        check_join(config, join, approvals(config, join, [0, 1]))


def test_one_member_approving_twice_counts_once(genesis: Group) -> None:
    config = genesis.config
    join, _, _ = newcomer(config)
    twice = approvals(config, join, [0, 1, 1])
    with pytest.raises(MembershipError, match="two approvals from replica 1"):
        check_join(config, join, twice)


def test_an_approval_needs_the_members_owner_key(genesis: Group) -> None:
    config = genesis.config
    join, _, _ = newcomer(config)
    by_replica_key = Approval(config.group_id, config.epoch, join.digest, 2).signed(replica_key(2))
    by_other_owner = Approval(config.group_id, config.epoch, join.digest, 2).signed(owner_key(3))
    for approval in (by_replica_key, by_other_owner):
        with pytest.raises(MembershipError, match="approval from replica 2: bad signature"):
            check_join(config, join, [*approvals(config, join, [0, 1]), approval])


def test_an_approval_of_another_request_or_epoch_is_refused(genesis: Group) -> None:
    config = genesis.config
    join, _, _ = newcomer(config, 0)
    other, _, _ = newcomer(config, 1)
    for stray in (
        Approval(config.group_id, config.epoch, other.digest, 2).signed(owner_key(2)),
        Approval(config.group_id, config.epoch + 1, join.digest, 2).signed(owner_key(2)),
    ):
        with pytest.raises(MembershipError, match="another request or epoch"):
            check_join(config, join, [*approvals(config, join, [0, 1]), stray])


# -- leaving and the minimum group size ---------------------------------------------------------


def test_an_owner_leaves_a_group_of_five(genesis: Group) -> None:
    join, _, _ = newcomer(genesis.config)
    five = next_config(genesis.config, [join])
    leave = LeaveRequest(five.group_id, five.epoch, 1).signed(owner_key(1))
    check_leave(five, leave)
    four = next_config(five, removed=[1])
    assert four.replica_ids == (0, 2, 3, 4) and four.f == 1 and four.previous_digest == five.digest


def test_no_change_may_leave_fewer_than_four_replicas(genesis: Group) -> None:
    config = genesis.config
    assert config.n == MIN_GROUP_SIZE
    leave = LeaveRequest(config.group_id, config.epoch, 1).signed(owner_key(1))
    with pytest.raises(MembershipError, match="at least 4"):
        check_leave(config, leave)
    with pytest.raises(MembershipError, match="at least 4"):
        next_config(config, removed=[1])


def test_a_leave_must_be_signed_by_that_replicas_owner(genesis: Group) -> None:
    join, _, _ = newcomer(genesis.config)
    five = next_config(genesis.config, [join])
    for key in (owner_key(2), replica_key(1)):
        with pytest.raises(MembershipError, match="bad signature"):
            check_leave(five, LeaveRequest(five.group_id, five.epoch, 1).signed(key))


def test_a_leave_of_a_non_member_or_another_epoch_is_refused(genesis: Group) -> None:
    join, _, _ = newcomer(genesis.config)
    five = next_config(genesis.config, [join])
    with pytest.raises(MembershipError, match="not a member"):
        check_leave(five, LeaveRequest(five.group_id, five.epoch, 7).signed(owner_key(7)))
    with pytest.raises(MembershipError, match="epoch 0"):
        check_leave(five, LeaveRequest(five.group_id, 0, 1).signed(owner_key(1)))


def test_f_follows_the_group_size(genesis: Group) -> None:
    config = genesis.config
    for n in range(3):
        join, _, _ = newcomer(config, n)
        config = next_config(config, [join])
    assert (config.n, config.f, config.quorum_size) == (7, 2, 5)
    assert config.replica_ids == (0, 1, 2, 3, 4, 5, 6)


# -- the chain of configs -----------------------------------------------------------------------


def _two_epochs(genesis: Group) -> tuple[GroupConfig, GroupConfig, GroupConfig, dict[int, KeyPair]]:
    """genesis (0..3) -> epoch 1 (0..4) -> epoch 2 (0, 2, 3, 4); keys of every replica."""
    zero = genesis.config
    join, _, new_replica = newcomer(zero)
    one = next_config(zero, [join])
    two = next_config(one, removed=[1])
    keys = {rid: replica_key(rid) for rid in zero.replica_ids}
    keys[4] = new_replica
    return zero, one, two, keys


def test_a_chain_of_quorum_signed_links_verifies_from_genesis(genesis: Group) -> None:
    zero, one, two, keys = _two_epochs(genesis)
    links = [quorum_link(zero, one), link(one, two, [0, 2, 3, 4], keys)]
    assert verify_chain(zero, links) == [zero, one, two]
    # links a client already has (or a chain that repeats genesis) are skipped
    assert verify_chain(one, links) == [one, two]


def test_a_link_that_names_the_wrong_previous_digest_is_refused(genesis: Group) -> None:
    zero, one, _, _ = _two_epochs(genesis)
    forked = replace(one, previous_digest=bytes(32))
    with pytest.raises(CertificateError, match="does not follow epoch 0"):
        verify_link(zero, quorum_link(zero, forked))
    other_genesis = make_group(1, epoch=0, salt="other").config
    with pytest.raises(CertificateError, match="does not follow epoch 0"):
        verify_link(other_genesis, quorum_link(zero, one))


def test_a_link_that_skips_an_epoch_is_refused(genesis: Group) -> None:
    zero, one, two, keys = _two_epochs(genesis)
    with pytest.raises(CertificateError, match="does not follow"):
        verify_chain(zero, [link(one, two, [0, 2, 3, 4], keys)])


def test_a_link_with_too_few_signatures_is_refused(genesis: Group) -> None:
    zero, one, _, _ = _two_epochs(genesis)
    with pytest.raises(CertificateError, match="2 signatures from epoch 0, needs 3"):
        verify_link(zero, link(zero, one, [0, 1]))
    with pytest.raises(CertificateError, match="0 signatures"):
        verify_link(zero, ConfigLink(one, ()))


def test_a_signer_of_the_wrong_epoch_does_not_count(genesis: Group) -> None:
    """Epoch 1's new member cannot vouch for epoch 1: only epoch 0's replicas can."""
    zero, one, two, keys = _two_epochs(genesis)
    with pytest.raises(CertificateError, match="signed by replica 4, not a member of epoch 0"):
        verify_link(zero, link(zero, one, [0, 1, 4], keys))
    # and replica 1, which left in epoch 2, cannot vouch for epoch 3
    join, _, _ = newcomer(two, 1)
    three = next_config(two, [join])
    with pytest.raises(CertificateError, match="signed by replica 1, not a member of epoch 2"):
        verify_link(two, link(two, three, [0, 1, 2], keys))


def test_a_link_signed_twice_by_one_replica_is_refused(genesis: Group) -> None:
    zero, one, _, _ = _two_epochs(genesis)
    good = link(zero, one, [0, 1, 2])
    doubled = ConfigLink(one, (good.signatures[0], good.signatures[1], good.signatures[1]))
    with pytest.raises(CertificateError, match="signed twice by replica 1"):
        verify_link(zero, doubled)


def test_a_bad_or_misplaced_signature_is_refused(genesis: Group) -> None:
    zero, one, _, keys = _two_epochs(genesis)
    good = link(zero, one, [0, 1, 2])
    wrong_key = ConfigLink(one, (*good.signatures[:2], QuorumSigned(2, replica_key(3).signer().sign(link_message(one, 2)))))
    # a signature on the config, but by another replica's statement (signer ids are signed too)
    swapped = ConfigLink(one, (*good.signatures[:2], QuorumSigned(2, replica_key(2).signer().sign(link_message(one, 1)))))
    # a quorum that signed another config
    other = replace(one, price_per_request=one.price_per_request + 1)
    elsewhere = ConfigLink(other, good.signatures)
    for bad in (wrong_key, swapped, elsewhere):
        with pytest.raises(CertificateError, match="bad signature"):
            verify_link(zero, bad)


def test_a_chain_stops_being_trusted_at_its_first_bad_link(genesis: Group) -> None:
    zero, one, two, keys = _two_epochs(genesis)
    links = [quorum_link(zero, one), link(one, two, [0, 2], keys)]  # epoch 1 needs 4 of 5
    with pytest.raises(CertificateError, match="epoch 2 config has 2 signatures from epoch 1, needs 4"):
        verify_chain(zero, links)


def test_a_new_member_never_reuses_the_id_of_one_that_left(genesis: Group) -> None:
    zero, one, _, _ = _two_epochs(genesis)  # replica 4 joined in epoch 1
    without_4 = next_config(one, removed=[4])
    join, _, _ = newcomer(without_4, 1)
    again = next_config(without_4, [join])
    assert 4 not in again.replica_ids
