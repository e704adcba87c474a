"""Messages a faulty peer may send, one test per kind the consensus issue lists.

Each test hands a replica a faulty message and checks three things: the typed error
(ByzantineMessageError naming the peer at fault, with a stable `kind`), that the replica's state
is unchanged (nothing new in its log, no prepare sent), and that it carries on serving.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

import consensus.node as consensus_node
from certs.batch import VoteEntry
from certs.outputs import ModelOutput
from certs.policy import Decision, Vote, decide

from consensus.errors import ByzantineMessageError, RequestRejectedError
from consensus.node import ConsensusNode
from consensus.messages import (
    FetchState,
    Checkpoint,
    Commit,
    ControlMessage,
    FetchVotes,
    ModelUpdate,
    NewView,
    PeerMessage,
    PrePrepare,
    Prepare,
    PreparedProof,
    Proposal,
    ProposalEntry,
    RequestMessage,
    ViewChange,
    VoteBatch,
    VoteRef,
)
from tests.consensus.cluster import (
    Cluster,
    Rule,
    checkpoint,
    commit,
    fingerprint,
    flip_signature,
    header_for,
    matching,
    model_update,
    new_view,
    null_pre_prepare,
    pre_prepare,
    prepare,
    resigned,
    sign,
    view_change,
    vote_batch,
)

TARGET = 3  # the replica under test; replica 0 is the primary of view 0


def _of(kind: type, to: int = TARGET, via: int | None = None) -> Rule:
    """Messages of one type to the replica under test (or `to`), optionally from `via`."""
    return matching(kind, to=to) if via is None else matching(kind, to=to, via=via)


def _staged(cluster: Cluster) -> PrePrepare:
    """One request proposed and committed by replicas 0-2; its pre-prepare (and the commits)
    held back from the replica under test, which has every vote batch."""
    cluster.hold(_of(PrePrepare))
    cluster.hold(_of(Commit))
    cluster.submit(cluster.new_request())
    cluster.settle()
    (pp,) = [e.message for e in cluster.held if isinstance(e.message, PrePrepare)]
    assert isinstance(pp, PrePrepare)
    return pp


def _rejects(
    cluster: Cluster, message: PeerMessage, sender: int, kind: str, *, via: int | None = None, may_send: tuple[type, ...] = ()
) -> None:
    """The replica under test refuses `message` with (sender, kind) and is left unchanged.
    `may_send`: message kinds it may still send in answer (to help a peer that is ahead or behind)."""
    node = cluster.nodes[TARGET]
    before = fingerprint(node)
    sent_before, disk_before = len(cluster.sent[TARGET]), len(cluster.disks[TARGET])
    with pytest.raises(ByzantineMessageError) as info:
        cluster.step(TARGET, message, via=message.sender if via is None else via)
    assert (info.value.sender, info.value.kind) == (sender, kind), info.value
    assert fingerprint(node) == before
    sent = cluster.sent[TARGET][sent_before:]
    assert all(isinstance(m, may_send) for m in sent), f"a rejected message made the replica send {sent}"
    assert len(cluster.disks[TARGET]) == disk_before, "a rejected message made the replica persist"


def _carries_on(cluster: Cluster) -> None:
    """Whatever was held is delivered, and the replica under test commits a fresh request."""
    cluster.release()
    cluster.settle()
    before = len(cluster.committed[TARGET])
    request = cluster.serve_one(to=[r for r in range(cluster.n) if r not in cluster.down])
    assert request.key in cluster.nodes[TARGET].state.executed
    assert len(cluster.committed[TARGET]) > before


def _with_entry(pp: PrePrepare, change: Callable[[ProposalEntry], ProposalEntry]) -> Proposal:
    entries = (change(pp.proposal.entries[0]),) + pp.proposal.entries[1:]
    return Proposal(entries, pp.proposal.ops)


def _with_leaf(**fields: object) -> Callable[[ProposalEntry], ProposalEntry]:
    return lambda entry: ProposalEntry(replace(entry.leaf, **fields), entry.refs)


# =====================================================================================
# signatures
# =====================================================================================


@pytest.mark.parametrize("kind", ["pre-prepare", "prepare", "commit", "vote-batch", "checkpoint", "view-change"])
def test_bad_signature(kind: str) -> None:
    cluster = Cluster()
    config = cluster.config
    pp = _staged(cluster)
    digest = pp.header.batch_digest
    forged: PeerMessage
    sender = 0 if kind == "pre-prepare" else 2
    if kind == "pre-prepare":
        forged = flip_signature(pp)
    elif kind == "prepare":
        forged = flip_signature(prepare(config, 2, 0, 1, digest))
    elif kind == "commit":
        forged = flip_signature(commit(config, 2, 0, 1, digest))
    elif kind == "vote-batch":
        original = cluster.sent_of(2, VoteBatch)[0]
        forged = flip_signature(replace(original, batch_no=original.batch_no + 1))
    elif kind == "checkpoint":
        forged = flip_signature(checkpoint(config, 2, cluster.params.checkpoint_interval_batches, bytes(32)))
    else:
        forged = flip_signature(view_change(config, 2, 1))
    _rejects(cluster, forged, sender, "bad-signature")
    _carries_on(cluster)


def test_bad_signature_on_new_view() -> None:
    cluster = Cluster()
    cluster.crash(0)
    cluster.hold(_of(NewView))
    cluster.submit(cluster.new_request(), to=[1, 2, 3])
    cluster.tick_until(lambda: bool(cluster.held), 200)
    genuine = cluster.held[0].message
    assert isinstance(genuine, NewView) and cluster.nodes[TARGET].view == 1
    _rejects(cluster, flip_signature(genuine), 1, "bad-signature")
    _carries_on(cluster)


def test_bad_signature_on_a_relayed_message_is_blamed_on_the_relayer() -> None:
    """Vote batches are relayed (answers to FetchVotes): a broken signature on one is the fault
    of whoever handed it over, not of the replica it names."""
    cluster = Cluster()
    _staged(cluster)
    original = cluster.sent_of(2, VoteBatch)[0]
    forged = flip_signature(replace(original, batch_no=original.batch_no + 1))
    _rejects(cluster, forged, 1, "bad-signature", via=1)
    _carries_on(cluster)


# =====================================================================================
# views, epochs, watermarks
# =====================================================================================


@pytest.mark.parametrize("case", ["not-primary", "old-view", "far-future-view"])
def test_wrong_view(case: str) -> None:
    cluster = Cluster()
    config = cluster.config
    if case == "not-primary":
        _staged(cluster)
        message: PeerMessage = null_pre_prepare(config, 2, 0, 2)  # replica 2 is not primary of view 0
        _rejects(cluster, message, 2, "not-primary")
    elif case == "old-view":
        cluster.crash(0)
        cluster.serve_one(to=[1, 2, 3])  # through a view change to view 1
        assert cluster.nodes[TARGET].view == 1
        _rejects(cluster, null_pre_prepare(config, 0, 0, 2), 0, "stale")
    else:
        _staged(cluster)
        _rejects(cluster, prepare(config, 2, 1000, 1, bytes(32)), 2, "outside-window")
    _carries_on(cluster)


@pytest.mark.parametrize("kind", ["pre-prepare", "prepare", "commit", "vote-batch", "checkpoint", "view-change"])
def test_wrong_epoch(kind: str) -> None:
    cluster = Cluster()
    config = cluster.config
    pp = _staged(cluster)
    digest = pp.header.batch_digest
    epoch = config.epoch + 1
    message: PeerMessage
    sender = 0 if kind == "pre-prepare" else 2
    if kind == "pre-prepare":
        header = header_for(config, 0, 2, pp.proposal, pp.header.model_versions_digest, epoch=epoch)
        message = pre_prepare(config, 0, header, pp.proposal, epoch=epoch)
    elif kind == "prepare":
        message = prepare(config, 2, 0, 1, digest, epoch=epoch)
    elif kind == "commit":
        message = commit(config, 2, 0, 1, digest, epoch=epoch)
    elif kind == "vote-batch":
        original = cluster.sent_of(2, VoteBatch)[0]
        message = vote_batch(config, 2, original.batch_no + 1, original.model_version, original.entries, epoch=epoch)
    elif kind == "checkpoint":
        unsigned = Checkpoint(2, epoch, cluster.params.checkpoint_interval_batches, bytes(32), b"")
        message = replace(unsigned, signature=sign(2, unsigned.statement(config.group_id)))
    else:
        unsigned_vc = ViewChange(2, epoch, 1, 0, bytes(32), (), (), b"")
        message = replace(unsigned_vc, signature=sign(2, unsigned_vc.statement(config.group_id)))
    # a later epoch than ours: refused, and a sign that we may have missed a membership change,
    # so the replica may ask the sender for the state
    _rejects(cluster, message, sender, "future-epoch", may_send=(FetchState,))
    _carries_on(cluster)


@pytest.mark.parametrize("kind", ["pre-prepare", "prepare", "commit"])
def test_sequence_number_above_the_high_watermark(kind: str) -> None:
    cluster = Cluster()
    config = cluster.config
    _staged(cluster)
    beyond = cluster.params.log_window_batches + 1
    message: PeerMessage
    if kind == "pre-prepare":
        message = null_pre_prepare(config, 0, 0, beyond)
    elif kind == "prepare":
        message = prepare(config, 2, 0, beyond, bytes(32))
    else:
        message = commit(config, 2, 0, beyond, bytes(32))
    # the sender is ahead of our window: we may ask it for the state we lack
    _rejects(cluster, message, message.sender, "outside-window", may_send=(FetchState,))
    _carries_on(cluster)


# =====================================================================================
# who votes
# =====================================================================================


@pytest.mark.parametrize("kind", ["prepare", "vote-batch", "request"])
def test_message_from_a_non_member(kind: str) -> None:
    cluster = Cluster()
    _staged(cluster)
    outsider = cluster.n + 3
    message: PeerMessage
    if kind == "prepare":
        message = Prepare(outsider, 0, 0, 1, bytes(32), bytes(64))
    elif kind == "vote-batch":
        original = cluster.sent_of(2, VoteBatch)[0]
        message = replace(original, sender=outsider)
    else:
        message = RequestMessage(outsider, cluster.new_request())
    # an unsigned message from an unknown id may come from a replica that joined in an epoch
    # this one has not reached: refused as from an unknown sender, not as a proven outsider
    _rejects(cluster, message, outsider, "unknown-sender" if kind == "request" else "non-member")
    _carries_on(cluster)


def test_proposal_with_a_vote_from_a_non_member() -> None:
    cluster = Cluster()
    pp = _staged(cluster)
    outsider = cluster.n + 3

    def add_outsider(entry: ProposalEntry) -> ProposalEntry:
        output = entry.leaf.votes[0].output
        votes = entry.leaf.votes + (Vote(outsider, 1, output),)
        return ProposalEntry(replace(entry.leaf, votes=votes), entry.refs + (VoteRef(outsider, 1),))

    _rejects(cluster, resigned(cluster.config, pp, _with_entry(pp, add_outsider)), 0, "non-member-vote")
    _carries_on(cluster)


def test_proposal_with_a_duplicate_voter() -> None:
    cluster = Cluster()
    pp = _staged(cluster)

    def repeat_voter(entry: ProposalEntry) -> ProposalEntry:
        votes = entry.leaf.votes[:2] + (entry.leaf.votes[1],)
        refs = entry.refs[:2] + (entry.refs[1],)
        return ProposalEntry(replace(entry.leaf, votes=votes), refs)

    _rejects(cluster, resigned(cluster.config, pp, _with_entry(pp, repeat_voter)), 0, "duplicate-voter")
    _carries_on(cluster)


def test_vote_batch_voting_twice_on_one_request() -> None:
    cluster = Cluster()
    _staged(cluster)
    original = cluster.sent_of(2, VoteBatch)[0]
    doubled = vote_batch(cluster.config, 2, original.batch_no + 1, original.model_version, original.entries * 2)
    _rejects(cluster, doubled, 2, "duplicate-entry")
    _carries_on(cluster)


# =====================================================================================
# proposals whose content does not hold up
# =====================================================================================


def _too_few(entry: ProposalEntry) -> ProposalEntry:
    return ProposalEntry(replace(entry.leaf, votes=entry.leaf.votes[:2]), entry.refs[:2])


def _wrong_version(entry: ProposalEntry) -> ProposalEntry:
    votes = (replace(entry.leaf.votes[0], model_version=7),) + entry.leaf.votes[1:]
    return ProposalEntry(replace(entry.leaf, votes=votes), entry.refs)


def _other_decision(entry: ProposalEntry) -> ProposalEntry:
    decision = entry.leaf.decision
    label = (decision.label + 1) % 10
    return ProposalEntry(replace(entry.leaf, decision=Decision(label, ((label, 9000),), decision.support)), entry.refs)


@pytest.mark.parametrize(
    ("case", "kind"),
    [
        ("decision-does-not-recompute", "bad-decision"),
        ("other-policy", "bad-decision"),
        ("too-few-votes", "too-few-votes"),
        ("vote-with-wrong-model-version", "wrong-version"),
        ("request-twice", "duplicate-request"),
        ("leaves-do-not-match-header", "bad-proposal"),
        ("wrong-version-table", "bad-versions"),
    ],
)
def test_proposal_that_does_not_check_out(case: str, kind: str) -> None:
    cluster = Cluster()
    config = cluster.config
    pp = _staged(cluster)
    forged: PrePrepare
    if case == "decision-does-not-recompute":
        forged = resigned(config, pp, _with_entry(pp, _other_decision))
    elif case == "other-policy":
        forged = resigned(config, pp, _with_entry(pp, _with_leaf(policy="trimmed_mean(trim=1)")))
    elif case == "too-few-votes":
        forged = resigned(config, pp, _with_entry(pp, _too_few))
    elif case == "vote-with-wrong-model-version":
        forged = resigned(config, pp, _with_entry(pp, _wrong_version))
    elif case == "request-twice":
        forged = resigned(config, pp, Proposal(pp.proposal.entries * 2, ()))
    elif case == "leaves-do-not-match-header":
        # the primary's genuine signature over the header, with other leaves
        forged = PrePrepare(0, pp.epoch, pp.header, _with_entry(pp, _other_decision), pp.signature)
    else:
        header = replace(pp.header, model_versions_digest=bytes(32))
        forged = pre_prepare(config, 0, header, pp.proposal)
    _rejects(cluster, forged, 0, kind)
    _carries_on(cluster)


def test_proposal_replaying_an_executed_request() -> None:
    cluster = Cluster()
    cluster.serve_one()
    first = cluster.committed[0][0]
    pp = _staged(cluster)
    assert pp.seq == 2
    replay = resigned(cluster.config, pp, first.proposal)
    _rejects(cluster, replay, 0, "replayed-request")
    _carries_on(cluster)


def test_proposal_referencing_vote_batches_the_replica_lacks_is_fetched_then_accepted() -> None:
    """No error: the replica asks the primary for the missing vote batches, waits without
    preparing, and accepts the proposal once they arrive."""
    cluster = Cluster()
    cluster.hold(_of(VoteBatch, via=2))  # replica 2's own broadcast of its votes
    late = cluster.hold(_of(PrePrepare))
    cluster.submit(cluster.new_request())
    cluster.settle()
    cluster.release(late)
    (envelope,) = [e for e in cluster.queue]
    pp = envelope.message
    assert isinstance(pp, PrePrepare)
    cluster.deliver_next()  # the pre-prepare reaches the replica under test
    node = cluster.nodes[TARGET]
    assert cluster.rejections == []
    assert node.log.get(1) is None or node.log[1].pre_prepare is None
    assert cluster.sent_of(TARGET, Prepare) == []
    (fetch,) = cluster.sent_of(TARGET, FetchVotes)
    assert [(ref.voter, ref.batch_no) for ref in fetch.refs] == [(2, 1)]
    assert cluster.queue[-1].to == 0, "asked the primary, which built its proposal on them"
    cluster.settle()  # the primary answers with replica 2's signed batch
    assert cluster.rejections == []
    assert node.log[1].pre_prepare == pp
    assert [p.batch_digest for p in cluster.sent_of(TARGET, Prepare)] == [pp.header.batch_digest]
    assert node.executed_seq == 1
    _carries_on(cluster)


def test_proposal_with_a_vote_its_voter_never_signed_is_rejected() -> None:
    """The leaf says replica 2 voted otherwise than it signed (the decision recomputed to
    match): once the primary's copies of the vote batches are fetched, the proposal is refused
    naming the primary."""
    cluster = Cluster()
    pp = _staged(cluster)

    def change_vote(entry: ProposalEntry) -> ProposalEntry:
        leaf = entry.leaf
        label = (leaf.votes[2].output.label + 1) % 10
        votes = leaf.votes[:2] + (Vote(2, leaf.votes[2].model_version, ModelOutput(((label, 10_000),))),) + leaf.votes[3:]
        decision = decide(cluster.config.policy, cluster.config.f, cluster.config.quorum_size, votes, 10)
        return ProposalEntry(replace(leaf, votes=votes, decision=decision), entry.refs)

    forged = resigned(cluster.config, pp, _with_entry(pp, change_vote))
    errors: list[ByzantineMessageError] = []
    try:
        cluster.step(TARGET, forged, via=0)
    except ByzantineMessageError as exc:
        errors.append(exc)
    cluster.settle()  # FetchVotes to the primary and its answer
    cluster.tick(2 * cluster.params.relay_timeout_ticks)
    assert all(p.batch_digest != forged.header.batch_digest for p in cluster.sent_of(TARGET, Prepare))
    cluster.tick(2 * cluster.params.relay_timeout_ticks)  # the voters are asked too, then it is dropped
    rejected = [(e.sender, e.kind) for e in errors] + [
        (0, "forged-vote") for event in cluster.events[TARGET]
        if event.kind == "rejected" and event.detail.startswith("replica 0: forged-vote")
    ]
    assert (0, "forged-vote") in rejected, f"the forged proposal was never rejected naming the primary: {rejected}"
    assert (forged.view, forged.seq) not in cluster.nodes[TARGET].waiting


# =====================================================================================
# replays
# =====================================================================================


@pytest.mark.parametrize("kind", ["pre-prepare", "prepare", "commit", "checkpoint"])
def test_replay_below_the_low_watermark_is_stale_or_ignored(kind: str) -> None:
    """Old messages replayed after a stable checkpoint: protocol messages for a discarded slot
    are rejected as stale, an old checkpoint is ignored; nothing changes."""
    cluster = Cluster()
    k = cluster.params.checkpoint_interval_batches
    for _ in range(k + 1):
        cluster.serve_one()
    assert cluster.nodes[TARGET].low == k
    old_pp = next(pp for pp in cluster.sent_of(0, PrePrepare) if pp.seq == 2)
    old: PeerMessage = {
        "pre-prepare": old_pp,
        "prepare": next(p for p in cluster.sent_of(2, Prepare) if p.seq == 2),
        "commit": next(c for c in cluster.sent_of(2, Commit) if c.seq == 2),
        "checkpoint": next(c for c in cluster.sent_of(2, Checkpoint) if c.seq == k),
    }[kind]
    node = cluster.nodes[TARGET]
    if kind == "checkpoint":
        before = fingerprint(node)
        cluster.step(TARGET, old, via=2)
        assert fingerprint(node) == before
    if kind in ("prepare", "commit"):
        # a first copy of a vote just below the stable checkpoint is what the slowest replica
        # sends in the normal case: ignored, nothing sent, nothing changed
        before, sent_before = fingerprint(node), len(cluster.sent[TARGET])
        cluster.step(TARGET, old, via=2)
        assert fingerprint(node) == before
        assert cluster.sent[TARGET][sent_before:] == []
    if kind != "checkpoint":
        # (again, for a vote: a retransmission) the sender looks stuck behind our stable
        # checkpoint: we may show it the checkpoint
        _rejects(cluster, old, old.sender, "stale", may_send=(Checkpoint,))
    _carries_on(cluster)


@pytest.mark.parametrize("kind", ["prepare", "commit"])
def test_a_vote_more_than_a_checkpoint_below_is_stale_at_once(kind: str) -> None:
    """A vote from before the previous stable checkpoint is no late copy: its sender is far
    behind, and the first copy already gets the stable checkpoint shown to it."""
    cluster = Cluster()
    k = cluster.params.checkpoint_interval_batches
    for _ in range(2 * k + 1):
        cluster.serve_one()
    assert cluster.nodes[TARGET].low == 2 * k
    old: PeerMessage = next(m for m in cluster.sent_of(2, Prepare if kind == "prepare" else Commit) if m.seq == 2)
    sent_before = len(cluster.sent[TARGET])
    _rejects(cluster, old, old.sender, "stale", may_send=(Checkpoint,))
    shown = [m for m in cluster.sent[TARGET][sent_before:] if isinstance(m, Checkpoint)]
    assert shown and all(c.seq == 2 * k for c in shown)
    _carries_on(cluster)


@pytest.mark.parametrize("kind", ["pre-prepare", "prepare", "commit", "vote-batch", "request", "own-message"])
def test_replay_of_a_recent_message_changes_nothing(kind: str) -> None:
    """Retransmissions and replays inside the window are accepted silently and change nothing:
    no second prepare, no second inference, no second execution."""
    cluster = Cluster()
    served = cluster.serve_one()
    pp = cluster.sent_of(0, PrePrepare)[0]
    message: PeerMessage = {
        "pre-prepare": pp,
        "prepare": cluster.sent_of(2, Prepare)[0],
        "commit": cluster.sent_of(2, Commit)[0],
        "vote-batch": cluster.sent_of(2, VoteBatch)[0],
        "request": RequestMessage(2, served),
        "own-message": cluster.sent_of(TARGET, Prepare)[0],
    }[kind]
    node = cluster.nodes[TARGET]
    before = fingerprint(node)
    sent_before = len(cluster.sent[TARGET])
    cluster.step(TARGET, message, via=2)
    assert fingerprint(node) == before
    assert cluster.inference[TARGET] == []
    assert not any(isinstance(m, (Prepare, Commit, VoteBatch)) for m in cluster.sent[TARGET][sent_before:])
    assert len(cluster.committed[TARGET]) == 1
    _carries_on(cluster)


def test_a_pre_prepare_executed_by_state_transfer_while_it_waited_for_votes_accuses_nobody() -> None:
    """A backup holding a PRE-PREPARE while it waits for vote batches may get the same batch,
    committed, by state transfer. The waiting PRE-PREPARE is then done with; checked again, its
    requests would look replayed and a correct primary would be reported as faulty."""
    cluster = Cluster()
    cluster.drop(lambda e: isinstance(e.message, VoteBatch) and e.to == 3)
    request = cluster.new_request()
    cluster.submit(request, to=[0, 1, 2])
    cluster.settle()
    cluster.tick_until(lambda: cluster.nodes[3].executed_seq == 1, 500)
    assert any(b.via_state_transfer for b in cluster.committed[3])
    assert [e.detail for e in cluster.events[3] if e.kind == "rejected"] == []
    assert not cluster.nodes[3].waiting


def test_replayed_old_view_change_is_answered_once_not_bounced_between_correct_replicas() -> None:
    """A replica past view v answers a VIEW-CHANGE for v with its own (its sender may lack it
    for a quorum). Two correct replicas past v must not keep answering each other's: one late,
    duplicated or replayed VIEW-CHANGE would bounce between them forever (a message storm the
    simulator found). Each answers it once per relay timeout, and the group still works."""
    cluster = Cluster(n=7)
    cluster.serve_one()
    cluster.crash(0)
    cluster.crash(1)
    cluster.serve_one(to=range(2, 7))
    assert all(cluster.nodes[r].view == 2 for r in range(2, 7))
    old = next(vc for vc in cluster.sent_of(2, ViewChange) if vc.new_view == 1)
    sent_before = {r: len(cluster.sent[r]) for r in range(2, 7)}
    cluster.step(3, old, via=4)  # replayed by anyone, signed by replica 2
    cluster.settle()  # before the fix: "the cluster did not settle: messages keep flowing"
    answers = [(r, m) for r in range(2, 7) for m in cluster.sent[r][sent_before[r]:] if isinstance(m, ViewChange)]
    assert sorted((r, m.new_view) for r, m in answers) == [(2, 1), (3, 1)]  # 3 answers 2, 2 answers 3, done
    cluster.step(3, old, via=4)  # the same replay again, at once: not answered again
    cluster.settle()
    assert len([m for m in cluster.sent[3][sent_before[3]:] if isinstance(m, ViewChange)]) == 1
    after = cluster.serve_one(to=range(2, 7))
    assert all(after.key in cluster.nodes[r].state.executed for r in range(2, 7))


def test_conflicting_pre_prepare_for_an_executed_slot_is_refused_as_equivocation() -> None:
    """A primary's second, different pre-prepare for a slot this replica already executed is
    still two signed contents for one slot: proof of equivocation."""
    cluster = Cluster()
    cluster.serve_one()
    pp = cluster.sent_of(0, PrePrepare)[0]
    node = cluster.nodes[TARGET]
    assert node.log[1].executed
    other = null_pre_prepare(cluster.config, 0, 0, 1)
    assert other.header.batch_digest != pp.header.batch_digest
    _rejects(cluster, other, 0, "equivocation")
    assert cluster.evidence[TARGET], "no evidence of the equivocation"
    _carries_on(cluster)


# =====================================================================================
# equivocation: two signed contents for one slot
# =====================================================================================


@pytest.mark.parametrize("kind", ["prepare", "commit", "vote-batch", "checkpoint", "view-change"])
def test_equivocation_is_refused_with_evidence(kind: str) -> None:
    cluster = Cluster()
    config = cluster.config
    pp = _staged(cluster)
    k = cluster.params.checkpoint_interval_batches
    first: PeerMessage
    second: PeerMessage
    if kind == "prepare":
        first, second = cluster.sent_of(2, Prepare)[0], prepare(config, 2, 0, 1, bytes(32))
    elif kind == "commit":
        first = commit(config, 2, 0, 1, pp.header.batch_digest)
        second = commit(config, 2, 0, 1, bytes(32))
    elif kind == "vote-batch":
        first = cluster.sent_of(2, VoteBatch)[0]
        entry = replace(first.entries[0], output=ModelOutput(((9, 10_000),)))
        second = vote_batch(config, 2, first.batch_no, first.model_version, [entry])
    elif kind == "checkpoint":
        first, second = checkpoint(config, 2, k, bytes(32)), checkpoint(config, 2, k, b"\x01" * 32)
    else:
        first = view_change(config, 2, 5)
        second = replace(first, stable_digest=b"\x01" * 32)  # still stable_seq 0: a valid proof
        second = replace(second, signature=sign(2, second.statement(config.group_id)))
    cluster.step(TARGET, first, via=2)
    _rejects(cluster, second, 2, "equivocation")
    (evidence,) = cluster.evidence[TARGET]
    a, b = evidence.first, evidence.second
    assert a.statement.signer == b.statement.signer == 2
    assert (a.statement.kind, a.statement.slot) == (b.statement.kind, b.statement.slot)
    assert a.statement.content != b.statement.content
    key = config.public_key(2) or b""
    assert a.verify(cluster.verifier, key) and b.verify(cluster.verifier, key)
    _carries_on(cluster)


def test_proposal_built_on_the_other_batch_of_an_equivocating_voter_is_accepted() -> None:
    """Replica 2 signs two vote batches under one number, one for the primary and one for the
    rest. Backups holding the other one fetch the primary's copy: the voter is blamed (with
    evidence) and the proposal, whose votes are all signed, is accepted and commits."""
    cluster = Cluster()
    cluster.drop(matching(VoteBatch, via=2, to=0))
    request = cluster.new_request()
    cluster.submit(request)
    cluster.settle()
    mine = cluster.sent_of(2, VoteBatch)[0]
    other_entry = replace(mine.entries[0], output=ModelOutput(((9, 10_000),)))
    theirs = vote_batch(cluster.config, 2, mine.batch_no, mine.model_version, [other_entry])
    cluster.step(0, theirs, via=2)
    cluster.settle()
    assert sorted(cluster.rejected_kinds()) == [(1, 2, "equivocation"), (TARGET, 2, "equivocation")]
    assert len(cluster.evidence[1]) == len(cluster.evidence[TARGET]) == 1
    for r in (0, 1, TARGET):
        batch, index = cluster.leaf_of(r, request)
        vote = next(v for v in batch.proposal.entries[index].leaf.votes if v.replica_id == 2)
        assert vote.output == other_entry.output
    _carries_on(cluster)


# =====================================================================================
# checkpoints, view changes and new views that do not hold up
# =====================================================================================


def test_checkpoint_off_the_interval() -> None:
    cluster = Cluster()
    _staged(cluster)
    _rejects(cluster, checkpoint(cluster.config, 2, cluster.params.checkpoint_interval_batches + 1, bytes(32)), 2, "bad-checkpoint")
    _carries_on(cluster)


def _prepared_proof(cluster: Cluster) -> PreparedProof:
    """A genuine prepared proof for seq 1 (what replica 2 would put in its view change)."""
    cluster.hold(_of(Commit))
    cluster.hold(_of(Commit, to=2))
    cluster.submit(cluster.new_request())
    cluster.settle()
    proof = cluster.nodes[2].log[1].prepared_proof
    assert proof is not None
    return proof


@pytest.mark.parametrize("case", ["too-few-prepares", "prepare-from-primary", "proposal-not-matching", "unsigned-pre-prepare", "checkpoint-without-quorum"])
def test_view_change_with_a_bad_proof(case: str) -> None:
    cluster = Cluster()
    config = cluster.config
    proof = _prepared_proof(cluster)
    pp = proof.pre_prepare
    prepared: tuple[PreparedProof, ...]
    if case == "too-few-prepares":
        prepared = (replace(proof, prepares=proof.prepares[:1]),)
    elif case == "prepare-from-primary":
        prepared = (replace(proof, prepares=proof.prepares[:1] + (prepare(config, 0, 0, 1, pp.header.batch_digest),)),)
    elif case == "proposal-not-matching":
        prepared = (replace(proof, pre_prepare=replace(pp, proposal=Proposal((), ()))),)
    elif case == "unsigned-pre-prepare":
        prepared = (replace(proof, pre_prepare=flip_signature(pp)),)
    else:
        prepared = ()
    if case == "checkpoint-without-quorum":
        k = cluster.params.checkpoint_interval_batches
        unsigned = ViewChange(2, config.epoch, 1, k, bytes(32), (checkpoint(config, 2, k, bytes(32)),), (), b"")
        kind = "bad-checkpoint"
    else:
        unsigned = ViewChange(2, config.epoch, 1, 0, bytes(32), (), prepared, b"")
        kind = "bad-prepared-proof"
    vc = replace(unsigned, signature=sign(2, unsigned.statement(config.group_id)))
    _rejects(cluster, vc, 2, kind)
    _carries_on(cluster)


def test_view_change_to_a_far_future_view() -> None:
    cluster = Cluster()
    _staged(cluster)
    _rejects(cluster, view_change(cluster.config, 2, 10_000), 2, "outside-window")
    _carries_on(cluster)


def _in_view_change_to_1(cluster: Cluster) -> list[ViewChange]:
    """The replica under test and two others want view 1 (whose primary is replica 1)."""
    changes = [view_change(cluster.config, r, 1) for r in (1, 2)]
    for vc in changes:
        cluster.step(TARGET, vc, via=vc.sender)
    node = cluster.nodes[TARGET]
    assert (node.view, node.view_active) == (1, False)
    return changes + [cluster.sent_of(TARGET, ViewChange)[0]]


@pytest.mark.parametrize("case", ["not-primary", "too-few-view-changes", "duplicate-view-changes", "view-change-for-another-view", "missing-batch"])
def test_new_view_that_does_not_hold_up(case: str) -> None:
    cluster = Cluster()
    config = cluster.config
    changes = _in_view_change_to_1(cluster)
    sender, kind = 1, "bad-new-view"
    message: NewView
    if case == "not-primary":
        sender, kind = 2, "not-primary"
        message = new_view(config, 2, 1, changes, ())
    elif case == "too-few-view-changes":
        message = new_view(config, 1, 1, changes[:2], ())
    elif case == "duplicate-view-changes":
        message = new_view(config, 1, 1, [changes[0], changes[0], changes[1]], ())
    elif case == "view-change-for-another-view":
        message = new_view(config, 1, 1, changes[:2] + [view_change(config, 0, 2)], ())
    else:
        message = new_view(config, 1, 1, changes, (null_pre_prepare(config, 1, 1, 1),))
    _rejects(cluster, message, sender, kind)
    cluster.step(TARGET, new_view(config, 1, 1, changes, ()), via=1)
    assert cluster.nodes[TARGET].view_active
    cluster.crash(0)  # replicas 1 and 2 still run view 0: they join view 1 when it times out
    _carries_on(cluster)


def test_new_view_carrying_a_tampered_view_change_is_blamed_on_the_new_primary() -> None:
    """A view change's signature covers its summary, not the prepares in its proofs: a new
    primary that strips a prepare from a correct replica's proof is the one at fault."""
    cluster = Cluster()
    cluster.drop(lambda e: isinstance(e.message, Commit) and e.message.view == 0)
    cluster.submit(cluster.new_request())
    cluster.settle()
    cluster.crash(0)
    cluster.hold(_of(NewView))
    cluster.tick_until(lambda: bool(cluster.held), 200)
    genuine = cluster.held[0].message
    assert isinstance(genuine, NewView)
    changes = list(genuine.view_changes)
    index = next(i for i, vc in enumerate(changes) if vc.sender == 2)
    proof = changes[index].prepared[0]
    changes[index] = replace(changes[index], prepared=(replace(proof, prepares=proof.prepares[:1]),))
    unsigned = NewView(1, genuine.epoch, genuine.view, tuple(changes), genuine.pre_prepares, b"")
    forged = replace(unsigned, signature=sign(1, unsigned.statement(cluster.config.group_id)))
    node = cluster.nodes[TARGET]
    before = fingerprint(node)
    with pytest.raises(ByzantineMessageError) as info:
        cluster.step(TARGET, forged, via=1)
    assert info.value.sender == 1, f"blamed replica {info.value.sender} ({info.value.kind}) for the new primary's tampering"
    assert fingerprint(node) == before


# =====================================================================================
# sizes and malformed outputs
# =====================================================================================


def test_oversized_proposal() -> None:
    cluster = Cluster()
    pp = _staged(cluster)
    size_max = cluster.params.proposal_size_max
    entry = pp.proposal.entries[0]
    _rejects(cluster, resigned(cluster.config, pp, Proposal((entry,) * (size_max + 1), ())), 0, "oversized")
    _carries_on(cluster)


def test_oversized_vote_batch() -> None:
    cluster = Cluster()
    _staged(cluster)
    original = cluster.sent_of(2, VoteBatch)[0]
    entry = original.entries[0]
    size_max = cluster.params.inference_batch_max
    entries = [replace(entry, request_digest=bytes([i]) * 32, request_id=f"x-{i}") for i in range(size_max + 1)]
    _rejects(cluster, vote_batch(cluster.config, 2, original.batch_no + 1, 1, entries), 2, "oversized")
    _carries_on(cluster)


def test_empty_vote_batch() -> None:
    cluster = Cluster()
    _staged(cluster)
    _rejects(cluster, vote_batch(cluster.config, 2, 5, 1, ()), 2, "empty")
    _carries_on(cluster)


@pytest.mark.parametrize(
    "top",
    [
        pytest.param(((10, 9000),), id="class-outside-label-space"),
        pytest.param(((-1, 9000),), id="negative-class"),
        pytest.param(((3, 0),), id="zero-probability"),
        pytest.param(((3, 10_001),), id="probability-above-one"),
        pytest.param(((3, 2000), (4, 7000)), id="not-in-canonical-order"),
        pytest.param(((3, 5000), (3, 4000)), id="class-twice"),
        pytest.param(((3, 6000), (4, 6000)), id="sums-above-one"),
        pytest.param((), id="no-classes"),
    ],
)
def test_vote_batch_with_malformed_output(top: tuple[tuple[int, int], ...]) -> None:
    cluster = Cluster()
    _staged(cluster)
    original = cluster.sent_of(2, VoteBatch)[0]
    entry = replace(original.entries[0], output=ModelOutput(top))
    _rejects(cluster, vote_batch(cluster.config, 2, original.batch_no + 1, 1, [entry]), 2, "bad-vote")
    _carries_on(cluster)


def _flood(cluster: Cluster, monkeypatch: pytest.MonkeyPatch, batches: int) -> ConsensusNode:
    """Replica 2 signs many vote batches for requests nobody sent (phantom votes)."""
    monkeypatch.setattr(consensus_node, "VOTE_BATCHES_PER_VOTER_MAX", 16)
    node = cluster.nodes[TARGET]
    output = ModelOutput(((1, 10_000),))
    for batch_no in range(1, batches + 1):
        entries = [
            VoteEntry("phantom", f"p-{batch_no}-{j}", bytes([j]) + batch_no.to_bytes(31, "big"), (), output)
            for j in range(cluster.params.inference_batch_max)
        ]
        cluster.step(TARGET, vote_batch(cluster.config, 2, batch_no, 1, entries), via=2)
    return node


def test_vote_batch_flood_keeps_a_bounded_number_of_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = Cluster()
    node = _flood(cluster, monkeypatch, 100)
    assert node.vote_batch_count[2] <= 16
    assert len([ref for ref in node.vote_batches if ref[0] == 2]) <= 16
    _carries_on(cluster)


def test_vote_batch_flood_keeps_a_bounded_number_of_phantom_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = Cluster()
    node = _flood(cluster, monkeypatch, 100)
    kept = len(node.pending)
    assert kept <= 16 * cluster.params.inference_batch_max, f"{kept} phantom requests kept"


def test_phantom_votes_are_forgotten_in_a_group_gone_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Phantom votes were collected only at a stable checkpoint: in a group with no more
    traffic, the requests they name stayed pending for good and kept the node from going quiet
    (ticked every 5 ms forever). They are forgotten once past the vote retention."""
    cluster = Cluster()
    node = _flood(cluster, monkeypatch, 3)
    assert node.pending and not node.quiet()
    cluster.tick_until(lambda: not node.pending, 25 * cluster.params.view_change_timeout_ticks)
    assert node.quiet()
    _carries_on(cluster)


def test_checkpoint_flood_keeps_a_bounded_number_of_future_checkpoints() -> None:
    cluster = Cluster()
    k = cluster.params.checkpoint_interval_batches
    window = cluster.params.log_window_batches
    node = cluster.nodes[TARGET]
    for i in range(1, 201):
        cluster.step(TARGET, checkpoint(cluster.config, 2, k * 1000 * i, bytes(32)), via=2)
    kept = len(node.checkpoints)
    assert kept <= 2 * (window // k) + cluster.n, f"{kept} future checkpoints kept from one replica"


# =====================================================================================
# model updates
# =====================================================================================


@pytest.mark.parametrize("case", ["signed-by-replica-key", "signed-by-another-owner", "other-group", "not-a-member"])
def test_model_update_not_signed_by_the_replicas_owner(case: str) -> None:
    cluster = Cluster()
    config = cluster.config
    op: ModelUpdate
    if case == "signed-by-replica-key":
        op = model_update(config, 2, 2, replica_key=True)
    elif case == "signed-by-another-owner":
        op = model_update(config, 2, 2, signed_by=1)
    elif case == "other-group":
        op = replace(model_update(config, 2, 2), group_id="other")
    else:
        op = model_update(config, 1, 2)
        op = replace(op, replica_id=9)
    node = cluster.nodes[TARGET]
    with pytest.raises(RequestRejectedError):
        node.submit_control(op)
    assert not node.has_ready() and node.pending_ops == {}
    _rejects(cluster, ControlMessage(1, op), 1, "bad-control")
    # nor may a primary order it
    pp = _staged(cluster)
    carrying = resigned(config, pp, Proposal(pp.proposal.entries, (op,)))
    _rejects(cluster, carrying, 0, "bad-control")
    _carries_on(cluster)
    assert all(cluster.nodes[r].state.latest_version(2) == 1 for r in range(cluster.n))


@pytest.mark.parametrize("version", [1, 2])
def test_replayed_or_older_model_update(version: int) -> None:
    cluster = Cluster()
    cluster.submit_update(2, 2)
    cluster.settle()
    assert all(cluster.nodes[r].state.latest_version(2) == 2 for r in range(cluster.n))
    op = model_update(cluster.config, 2, version)
    node = cluster.nodes[TARGET]
    with pytest.raises(RequestRejectedError, match="already ordered"):
        node.submit_control(op)
    _rejects(cluster, ControlMessage(2, op), 2, "stale")
    _carries_on(cluster)



def test_late_copy_of_an_ordered_model_update_is_not_blamed_on_its_relayer() -> None:
    """Replica 2 relays its owner's update to every replica; the copy to replica 3 is delayed
    until the update has been ordered. That copy is a stale duplicate (like a late request for
    an executed one), not a fault of replica 2."""
    cluster = Cluster()
    late = cluster.hold(lambda e: isinstance(e.message, ControlMessage) and e.to == TARGET)
    cluster.submit_update(2, 2)
    cluster.settle()
    assert cluster.nodes[TARGET].state.latest_version(2) == 2
    cluster.release(late)
    cluster.settle()
    assert [kind for _, sender, kind in cluster.rejected_kinds() if sender == 2 and kind != "stale"] == []
