"""The core's clock: `quiet()` says when nothing is under way that its timers must move along
(the runtime then ticks it rarely), and `tick(k)` advances the clock by k ticks at once with the
same effect as k single ticks."""

from __future__ import annotations

import pytest

from certs.statements import StatementKind
from consensus.messages import Checkpoint, Commit, PrePrepare, Prepare, VoteBatch
from consensus.ready import SignedRecord
from tests.consensus.cluster import Cluster


def _quiet(cluster: Cluster) -> list[bool]:
    return [cluster.nodes[r].quiet() for r in range(cluster.n)]


def test_a_node_is_quiet_before_any_request_and_again_once_everything_is_executed() -> None:
    cluster = Cluster()
    assert _quiet(cluster) == [True] * 4
    request = cluster.new_request()
    cluster.submit(request)
    assert _quiet(cluster) == [False] * 4  # pending, and queued for inference
    cluster.settle()
    cluster.tick_until(lambda: all(request.key in cluster.nodes[r].state.executed for r in range(4)))
    assert _quiet(cluster) == [True] * 4


def test_a_proposal_above_what_was_executed_keeps_a_node_busy() -> None:
    cluster = Cluster()
    held = cluster.hold(lambda e: isinstance(e.message, Commit))
    request = cluster.new_request()
    cluster.submit(request)
    cluster.settle()
    assert cluster.sent_of(0, PrePrepare)
    assert not any(_quiet(cluster))  # prepared, not committed: retransmission may be needed
    cluster.release(held)
    cluster.settle()
    cluster.tick_until(lambda: all(_quiet(cluster)))


def test_a_checkpoint_not_yet_stable_keeps_a_node_busy() -> None:
    cluster = Cluster()
    interval = cluster.params.checkpoint_interval_batches
    held = cluster.hold(lambda e: isinstance(e.message, Checkpoint))
    for _ in range(interval):
        cluster.serve_one()
    assert all(node.state.seq == interval and node.low == 0 for node in cluster.nodes.values())
    assert not any(_quiet(cluster))  # its CHECKPOINT is resent until a quorum has it
    cluster.release(held)
    cluster.settle()
    assert all(node.low == interval for node in cluster.nodes.values())
    assert all(_quiet(cluster))


def test_a_replica_that_missed_the_checkpoints_gets_its_own_stable_by_resending_it() -> None:
    """The others made the checkpoint stable without it and then had nothing more to say: the
    replica resends its CHECKPOINT, and a second copy from it tells each of them to show it
    their proof. Before, it stayed busy (resending every round) until new traffic reached the
    next checkpoint."""
    cluster = Cluster()
    interval = cluster.params.checkpoint_interval_batches
    cluster.drop(lambda e: isinstance(e.message, Checkpoint) and e.to == 3)
    for _ in range(interval):
        cluster.serve_one()
    assert [node.low for node in cluster.nodes.values()] == [interval, interval, interval, 0]
    cluster.heal()
    cluster.tick_until(lambda: all(_quiet(cluster)))
    assert cluster.nodes[3].low == interval


def test_a_first_late_checkpoint_at_the_stable_seq_is_not_answered_a_resent_one_is() -> None:
    cluster = Cluster()
    interval = cluster.params.checkpoint_interval_batches
    cluster.hold(lambda e: isinstance(e.message, Checkpoint) and e.via == 3)  # replica 3's come late
    for _ in range(interval):
        cluster.serve_one()
    assert cluster.nodes[0].low == interval and 3 not in {c.sender for c in cluster.nodes[0].stable_proof}
    copy = next(c for c in cluster.sent_of(3, Checkpoint) if c.seq == interval)
    before = len(cluster.sent_of(0, Checkpoint))
    cluster.step(0, copy)  # the slowest replica's checkpoint, late: it asks for nothing
    assert len(cluster.sent_of(0, Checkpoint)) == before
    cluster.step(0, copy)  # the same again: replica 3 is resending, so it lacks the quorum
    shown = cluster.sent_of(0, Checkpoint)[before:]
    assert {c.sender for c in shown} == {c.sender for c in cluster.nodes[0].stable_proof}


def test_the_slowest_replicas_late_votes_at_a_checkpoint_cost_nothing() -> None:
    """The slowest replica's PREPARE, COMMIT and CHECKPOINT for the batch that completes a
    checkpoint reach the others after they made it stable: the normal case at every checkpoint
    under light load. Nobody rejects them as stale (an operator saw a warning per checkpoint)
    and nobody shows it the checkpoint (3-4 signed messages each, per checkpoint)."""
    cluster = Cluster()
    interval = cluster.params.checkpoint_interval_batches
    for _ in range(interval - 1):
        cluster.serve_one()
    late = cluster.hold(lambda e: e.via == 3 and isinstance(e.message, (Prepare, Commit, Checkpoint)))
    cluster.serve_one()
    assert [node.low for node in cluster.nodes.values()] == [interval] * 4  # 3 heard the others
    assert any(isinstance(e.message, Prepare) for e in cluster.held) and any(isinstance(e.message, Commit) for e in cluster.held)
    sent_before = {r: len(cluster.sent_of(r, Checkpoint)) for r in range(3)}
    rejections_before = len(cluster.rejections)
    cluster.release(late)
    cluster.settle()
    assert cluster.rejections[rejections_before:] == []
    assert {r: len(cluster.sent_of(r, Checkpoint)) for r in range(3)} == sent_before


def test_a_proof_relayed_at_the_stable_seq_is_not_taken_for_its_signers_resending() -> None:
    """A peer showing this replica a checkpoint proof passes on other replicas' CHECKPOINTs. A
    copy passed on is no resend by its signer, who is not behind: answering it sent this
    replica's proof to replicas that had it, and they answered in turn."""
    cluster = Cluster()
    interval = cluster.params.checkpoint_interval_batches
    for _ in range(interval):
        cluster.serve_one()
    node = cluster.nodes[0]
    assert node.low == interval
    signed_by_2 = next(c for c in cluster.sent_of(2, Checkpoint) if c.seq == interval)
    assert 2 in {c.sender for c in node.stable_proof}  # straight from 2, this copy is a resend
    before = len(cluster.sent[0])
    cluster.step(0, signed_by_2, via=3)
    assert cluster.sent[0][before:] == []


def test_an_old_proof_relayed_shows_the_checkpoint_to_the_peer_that_passed_it_on() -> None:
    """A relayed checkpoint below the stable one says the relaying peer works from an old
    proof: it is the one behind, not the checkpoint's signer."""
    cluster = Cluster()
    interval = cluster.params.checkpoint_interval_batches
    for _ in range(2 * interval):
        cluster.serve_one()
    cluster.settle()
    assert cluster.nodes[0].low == 2 * interval
    old_by_2 = next(c for c in cluster.sent_of(2, Checkpoint) if c.seq == interval)
    queued_before = len(cluster.queue)
    cluster.step(0, old_by_2, via=3)
    shown = list(cluster.queue)[queued_before:]
    assert shown and {e.to for e in shown} == {3}
    assert all(isinstance(e.message, Checkpoint) and e.message.seq == 2 * interval for e in shown)


def test_a_replica_stable_by_state_transfer_signs_its_checkpoint_when_it_shows_a_peer_its_proof() -> None:
    """Its proof is the others' checkpoints; if a faulty one among them showed the peer another
    digest, the peer needs one more correct replica's checkpoint: this replica's, signed over
    the state it installed (whose digest a quorum signed)."""
    cluster = Cluster()
    interval = cluster.params.checkpoint_interval_batches
    cluster.isolate(2)
    for _ in range(interval + 1):
        cluster.serve_one(to=[0, 1, 3])
    cluster.heal()
    node = cluster.nodes[2]
    cluster.serve_one()  # new traffic shows replica 2 it is behind: it fetches the state
    cluster.tick_until(lambda: node.low == interval)
    assert (StatementKind.CHECKPOINT, (interval,)) not in node.signed  # installed, never executed
    assert 2 not in {c.sender for c in node.stable_proof}
    proof_senders = {c.sender for c in node.stable_proof}
    resent = next(c for c in cluster.sent_of(3, Checkpoint) if c.seq == interval)
    before = len(cluster.sent_of(2, Checkpoint))
    cluster.step(2, resent)  # replica 3 is in the proof: a copy from it is a resend
    shown = cluster.sent_of(2, Checkpoint)[before:]
    own = [c for c in shown if c.sender == 2]
    assert {c.sender for c in shown} == proof_senders | {2} and len(own) == 1
    assert (own[0].seq, own[0].state_digest) == (interval, node.stable_digest)
    # a real signature, kept like every signed statement (a restart signs nothing different)
    key = cluster.config.public_key(2)
    assert key is not None and cluster.verifier.verify(key, own[0].statement(cluster.config.group_id).message(), own[0].signature)
    assert any(isinstance(r, SignedRecord) and r.message == own[0] for r in cluster.disks[2])


def test_a_slot_left_with_an_earlier_views_proposal_the_new_view_did_not_reuse_keeps_nobody_busy() -> None:
    """The old primary proposed two requests at seqs 2 and 3; neither prepared before it
    crashed. The new primary orders both in one batch at seq 2, so seq 3 keeps only view 0's
    proposal until new traffic reuses it: no timer can help it, and ticking every few
    milliseconds for it did nothing but cost CPU."""
    cluster = Cluster()
    cluster.serve_one()
    cluster.drop(lambda e: isinstance(e.message, Prepare) and e.message.view == 0)
    requests = []
    for _ in range(2):
        requests.append(cluster.new_request())
        cluster.submit(requests[-1])
        cluster.settle()
        # nothing executes: each replica lets a lone request wait the batch delay for company,
        # and the primary lets a batch wait a tick while one is in flight
        cluster.tick(cluster.params.inference_batch_delay_ticks)
        cluster.settle()
        cluster.tick(2)
    proposals = {pp.seq: pp for pp in cluster.sent_of(0, PrePrepare)}  # a resend repeats one
    assert [(seq, len(pp.proposal.entries)) for seq, pp in proposals.items()] == [(1, 1), (2, 1), (3, 1)]
    cluster.crash(0)
    backups = [cluster.nodes[r] for r in (1, 2, 3)]
    cluster.tick_until(lambda: all(n.view == 1 and all(r.key in n.state.executed for r in requests) for n in backups), 5000)
    for node in backups:
        assert node.state.seq == 2 and node.log[3].pre_prepare is None and node.log[3].contents
    cluster.tick_until(lambda: all(n.quiet() for n in backups))
    assert all(3 in n.log for n in backups)  # kept: its proposal is this replica's to report in a view change


def test_a_view_change_in_progress_keeps_a_node_busy() -> None:
    cluster = Cluster()
    cluster.serve_one()
    backup = cluster.nodes[1]
    assert backup.quiet()
    backup._start_view_change(1, "test")
    cluster.drain(1)
    assert not backup.quiet()
    assert backup.busy_reasons() == ("view change to view 1 in progress",)  # and says why


def test_one_tick_of_k_fires_the_timers_k_single_ticks_would() -> None:
    """The primary waits vote_timeout_ticks for a missing vote: one jump of that many ticks
    proposes, one tick fewer does not."""
    timeout = Cluster().params.vote_timeout_ticks
    for jump, proposes in ((timeout - 1, False), (timeout, True)):
        cluster = Cluster()
        cluster.hold(lambda e: isinstance(e.message, VoteBatch) and e.via == 3 and e.to == 0)
        cluster.submit(cluster.new_request())
        cluster.settle()
        assert cluster.sent_of(0, PrePrepare) == []
        cluster.nodes[0].tick(jump)
        cluster.drain(0)
        assert bool(cluster.sent_of(0, PrePrepare)) == proposes
        assert cluster.nodes[0].now == jump


@pytest.mark.parametrize("elapsed_ticks", [0, -1])
def test_a_tick_that_does_not_advance_the_clock_is_refused(elapsed_ticks: int) -> None:
    node = Cluster().nodes[0]
    with pytest.raises(ValueError, match="at least 1"):
        node.tick(elapsed_ticks)
    assert node.now == 0
