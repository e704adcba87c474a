"""The request path of the consensus core: exactly-once, inference batching, votes, decisions
and the model-version rule, as a client or a model owner sees them in committed batches."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from certs.outputs import ModelOutput, map_probabilities, quantise
from certs.policy import NO_AGREEMENT, AgreementPolicy, Decision, PolicyKind
from certs.request import InferenceRequest, TensorData

from consensus.errors import ByzantineMessageError, LocalProtocolError, RequestRejectedError
from consensus.messages import Commit, ControlMessage, ModelUpdate, PrePrepare, Prepare, RequestMessage, VoteBatch
from consensus.node import SubmitOutcome
from consensus.ready import Activation
from tests.consensus.cluster import Cluster, Envelope, Model, honest_model, make_request, matching
from tests.sim.world import LABELS

# =====================================================================================
# exactly-once
# =====================================================================================


def test_resubmitted_request_returns_executed_with_its_seq() -> None:
    cluster = Cluster()
    request = cluster.serve_one()
    seq, digest = cluster.nodes[0].state.executed[request.key]
    assert seq == cluster.committed[0][0].header.seq and digest == request.digest
    outcomes = cluster.submit(request)
    assert outcomes == {r: SubmitOutcome("executed", seq) for r in range(4)}
    cluster.settle()
    cluster.tick(3 * cluster.params.relay_timeout_ticks)
    assert all(cluster.committed_requests(r) == [request.key] for r in range(4))
    assert all(cluster.inference[r] == [] for r in range(4))


def test_resubmission_while_pending_is_pending_and_runs_once() -> None:
    cluster = Cluster(auto_inference=False)
    request = cluster.new_request()
    assert cluster.submit(request, to=[1]) == {1: SubmitOutcome("accepted")}
    assert cluster.submit(request, to=[1]) == {1: SubmitOutcome("pending")}
    assert [b.requests for b in cluster.inference[1]] == [(request,)]
    cluster.submit(request, to=[0, 2, 3])
    cluster.settle()
    cluster.run_inference()
    cluster.settle()
    assert all(cluster.committed_requests(r) == [request.key] for r in range(4))


def test_held_requests_count_what_waits_to_execute_once_and_drop_to_zero_when_executed() -> None:
    """What the runtime's admission limits read: a request held (with its input bytes) from the
    first copy that reaches a replica, by a client or a peer's relay, until it executes; a second
    copy adds nothing, and knows_request says the ids are taken, waiting or executed."""
    cluster = Cluster()
    first, second = cluster.new_request(), cluster.new_request()
    node = cluster.nodes[1]
    assert (node.held_requests, node.held_request_bytes) == (0, 0)
    assert not node.knows_request(first)
    cluster.submit(first, to=[1])
    cluster.submit(first, to=[1])
    cluster.submit(second, to=[1])
    assert (node.held_requests, node.held_request_bytes) == (2, first.size_bytes + second.size_bytes)
    assert node.knows_request(first) and node.knows_request(second)
    cluster.submit(first, to=[0, 2, 3])
    cluster.submit(second, to=[0, 2, 3])
    cluster.settle()
    cluster.tick_until(lambda: all(sorted(cluster.committed_requests(r)) == sorted([first.key, second.key]) for r in range(4)))
    for replica in cluster.nodes.values():
        assert (replica.held_requests, replica.held_request_bytes) == (0, 0)
        assert replica.knows_request(first)  # executed: a retry is answered, not refused


def test_same_id_with_a_different_body_is_rejected_while_pending() -> None:
    cluster = Cluster()
    request = cluster.new_request()
    cluster.submit(request, to=[1])
    impostor = make_request(999, request.client_id)
    impostor = replace(impostor, request_id=request.request_id)
    assert impostor.key == request.key and impostor.digest != request.digest
    with pytest.raises(RequestRejectedError, match="already in use"):
        cluster.nodes[1].submit(impostor)


def test_same_id_with_a_different_body_is_rejected_after_execution() -> None:
    """A client reusing a request id for another input must not be told its request executed:
    the certificate it would fetch is about a different input."""
    cluster = Cluster()
    request = cluster.serve_one()
    impostor = replace(make_request(999, request.client_id), request_id=request.request_id)
    assert impostor.key == request.key and impostor.digest != request.digest
    with pytest.raises(RequestRejectedError):
        cluster.nodes[1].submit(impostor)


def test_relayed_and_direct_copies_of_a_request_commit_once() -> None:
    """A client talking to one replica (disseminate=True) while a gateway also sends it to all:
    each replica votes once and the request is certified once."""
    cluster = Cluster()
    request = cluster.new_request()
    cluster.submit(request, to=[2], disseminate=True)
    cluster.submit(request)
    cluster.settle()
    for r in range(4):
        assert cluster.committed_requests(r) == [request.key]
        assert sum(len(b.entries) for b in cluster.sent_of(r, VoteBatch)) == 1


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(dict(group_id="other"), id="other-group"),
        pytest.param(dict(client_id=""), id="empty-client-id"),
        pytest.param(dict(inputs=(TensorData("y", "FP32", (4,), bytes(16)),)), id="unknown-input"),
        pytest.param(dict(inputs=(TensorData("x", "FP64", (4,), bytes(32)),)), id="wrong-datatype"),
        pytest.param(dict(inputs=(TensorData("x", "FP32", (2, 2), bytes(16)),)), id="wrong-shape"),
        pytest.param(dict(inputs=(TensorData("x", "FP32", (4,), bytes(12)),)), id="short-data"),
        pytest.param(dict(inputs=()), id="no-input"),
        pytest.param(dict(label_mapping=(("cat", "pet"),)), id="mapping-of-unknown-label"),
    ],
)
def test_malformed_request_is_rejected_and_a_relayed_one_blames_the_relayer(change: dict[str, object]) -> None:
    cluster = Cluster()
    bad = replace(cluster.new_request(), **change)  # type: ignore[arg-type]
    with pytest.raises(RequestRejectedError):
        cluster.nodes[1].submit(bad)
    with pytest.raises(ByzantineMessageError) as info:
        cluster.step(1, RequestMessage(2, bad), via=2)
    assert (info.value.sender, info.value.kind) == (2, "bad-request")
    assert cluster.nodes[1].pending == {} and cluster.inference[1] == []


# =====================================================================================
# inference batching and votes
# =====================================================================================


def test_first_request_goes_to_an_idle_model_at_once_and_a_full_batch_goes_at_once() -> None:
    cluster = Cluster(auto_inference=False)
    batch_max = cluster.params.inference_batch_max
    first = cluster.new_request()
    cluster.submit(first, to=[1])
    assert [b.requests for b in cluster.inference[1]] == [(first,)]
    waiting = [cluster.new_request() for _ in range(batch_max - 1)]
    for request in waiting:
        cluster.submit(request, to=[1])
    assert len(cluster.inference[1]) == 1, "a partial batch waits while the model is busy"
    last = cluster.new_request()
    cluster.submit(last, to=[1])
    assert [b.requests for b in cluster.inference[1]] == [(first,), tuple(waiting) + (last,)]


def _lone_request_waits(start_tick: int) -> None:
    cluster = Cluster(auto_inference=False)
    delay = cluster.params.inference_batch_delay_ticks
    cluster.tick(start_tick)
    cluster.submit(cluster.new_request(), to=[1])
    lone = cluster.new_request()
    cluster.submit(lone, to=[1])
    cluster.tick(delay - 1)
    assert len(cluster.inference[1]) == 1, "a lone request waits for company while the model is busy"
    cluster.tick()
    assert len(cluster.inference[1]) == 2, f"the lone request did not go after {delay} ticks"
    assert cluster.inference[1][1].requests == (lone,)


def test_lone_request_goes_after_the_batch_delay_while_the_model_is_busy() -> None:
    _lone_request_waits(start_tick=5)


def test_lone_request_queued_at_tick_zero_goes_after_the_batch_delay() -> None:
    _lone_request_waits(start_tick=0)


def _voted_not_executed(cluster: Cluster) -> InferenceRequest:
    """Replica 1 runs a request through its model and votes; the group does not order it yet
    (every message is held). Returns the request."""
    cluster.hold(lambda e: True)
    first = cluster.new_request()
    cluster.submit(first, to=[1])
    cluster.run_one_inference(1)
    assert cluster.nodes[1].inference_inflight == {} and first.key not in cluster.nodes[1].state.executed
    return first


def test_a_lone_request_waits_for_company_while_the_last_calls_requests_are_being_ordered() -> None:
    """Nagle's rule on the whole pipeline: an idle model is no sign of an idle group. Under
    load the model is often idle while the ordering of its last call keeps the replicas busy;
    a Triton call of one row then costs a vote batch and an ordered batch of one row too."""
    cluster = Cluster(auto_inference=False)
    delay = cluster.params.inference_batch_delay_ticks
    _voted_not_executed(cluster)
    second, third = cluster.new_request(), cluster.new_request()
    cluster.submit(second, to=[1])
    assert cluster.inference[1] == [], "a lone request went to the model while its predecessor was being ordered"
    cluster.tick(delay - 1)
    cluster.submit(third, to=[1])
    assert cluster.inference[1] == []
    cluster.tick()
    assert [b.requests for b in cluster.inference[1]] == [(second, third)], "the two did not share one Triton call"


def test_a_waiting_request_goes_as_soon_as_the_last_calls_requests_execute() -> None:
    cluster = Cluster()
    cluster.serve_one()
    cluster.auto_inference = False
    held = cluster.hold(matching(Commit, to=1))
    second = cluster.new_request()
    cluster.submit(second)
    cluster.run_inference()
    cluster.settle()
    node = cluster.nodes[1]
    assert second.key in cluster.nodes[2].state.executed and second.key not in node.state.executed
    third = cluster.new_request()
    cluster.submit(third, to=[1])
    assert cluster.inference[1] == [], "third went to the model while second was being ordered"
    cluster.release(held)
    cluster.settle()  # no tick: the commits for second arrive and it executes
    assert second.key in node.state.executed
    assert [b.requests for b in cluster.inference[1]] == [(third,)], "third still waits after second executed"


def test_a_lone_request_goes_at_once_when_the_last_calls_requests_were_executed() -> None:
    """Concurrency 1: the previous request was certified before the next came, so nothing
    waits and the latency of a lone call is unchanged."""
    cluster = Cluster()
    cluster.serve_one()
    cluster.auto_inference = False
    lone = cluster.new_request()
    cluster.submit(lone)
    assert all([b.requests for b in cluster.inference[r]] == [(lone,)] for r in range(cluster.n))


def test_at_most_inference_inflight_max_batches_in_flight() -> None:
    cluster = Cluster(auto_inference=False)
    params = cluster.params
    requests = [cluster.new_request() for _ in range(params.inference_batch_max * (params.inference_inflight_max + 2))]
    for request in requests:
        cluster.submit(request, to=[1])
    cluster.tick(params.inference_batch_delay_ticks * 3)
    assert len(cluster.inference[1]) == params.inference_inflight_max
    cluster.run_one_inference(1)
    assert len(cluster.inference[1]) == params.inference_inflight_max, "the next batch takes the freed place"
    while cluster.inference[1]:
        assert len(cluster.nodes[1].inference_inflight) <= params.inference_inflight_max
        cluster.run_one_inference(1)
        if not cluster.inference[1]:
            # the rest is less than a full batch and the last call's requests are not
            # executed: it waits the batch delay for company
            cluster.tick(params.inference_batch_delay_ticks)
    vote_batches = {vb.batch_no: vb for vb in cluster.sent_of(1, VoteBatch)}  # a resend repeats one
    voted = [e.request_id for vb in vote_batches.values() for e in vb.entries]
    assert voted == [r.request_id for r in requests]


def test_one_signed_vote_batch_per_executed_inference_batch() -> None:
    cluster = Cluster(auto_inference=False)
    requests = [cluster.new_request() for _ in range(cluster.params.inference_batch_max + 1)]
    for request in requests:
        cluster.submit(request, to=[1])
    cluster.tick(cluster.params.inference_batch_delay_ticks)
    batches = list(cluster.inference[1])
    assert [len(b.requests) for b in batches] == [1, cluster.params.inference_batch_max]
    for expected_no, batch in enumerate(batches, start=1):
        cluster.run_one_inference(1)
        vote_batches = cluster.sent_of(1, VoteBatch)
        assert len(vote_batches) == expected_no
        vb = vote_batches[-1]
        assert (vb.sender, vb.batch_no, vb.model_version) == (1, expected_no, batch.model_version)
        assert [e.request_digest for e in vb.entries] == [r.digest for r in batch.requests]
        assert [e.output for e in vb.entries] == [honest_model(1, r, 1, ()) for r in batch.requests]
        key = cluster.config.public_key(1) or b""
        assert cluster.verifier.verify(key, vb.statement(cluster.config.group_id).message(), vb.signature)


def test_failed_inference_is_tried_again() -> None:
    cluster = Cluster(auto_inference=False)
    request = cluster.new_request()
    cluster.submit(request, to=[1])
    (batch,) = cluster.inference[1]
    cluster.inference[1].clear()
    cluster.nodes[1].inference_failed(batch.batch_id)
    cluster.drain(1)
    assert [b.requests for b in cluster.inference[1]] == [(request,)]
    with pytest.raises(LocalProtocolError):
        cluster.nodes[1].executed(batch.batch_id, [])


def test_executed_with_the_wrong_number_of_outputs_is_local_misuse() -> None:
    cluster = Cluster(auto_inference=False)
    cluster.submit(cluster.new_request(), to=[1])
    (batch,) = cluster.inference[1]
    with pytest.raises(LocalProtocolError, match="outputs"):
        cluster.nodes[1].executed(batch.batch_id, [])
    with pytest.raises(LocalProtocolError, match="unknown"):
        cluster.nodes[1].executed(batch.batch_id + 100, [])
    assert cluster.sent_of(1, VoteBatch) == []


def test_primary_waits_up_to_the_vote_timeout_for_all_votes_then_proposes_with_a_quorum() -> None:
    cluster = Cluster()
    timeout = cluster.params.vote_timeout_ticks
    cluster.hold(lambda e: isinstance(e.message, VoteBatch) and e.via == 3 and e.to == 0)
    request = cluster.new_request()
    cluster.submit(request)
    cluster.settle()
    assert cluster.sent_of(0, PrePrepare) == []
    cluster.tick(timeout - 1)
    assert cluster.sent_of(0, PrePrepare) == []
    cluster.tick()
    (pp,) = cluster.sent_of(0, PrePrepare)
    assert [v.replica_id for v in pp.proposal.entries[0].leaf.votes] == [0, 1, 2]


def _proposed_with(cluster: Cluster, request: InferenceRequest) -> list[int] | None:
    """The voters in the primary's (replica 0's) proposal of `request`, None if not proposed."""
    for pp in cluster.sent_of(0, PrePrepare):
        for entry in pp.proposal.entries:
            if entry.leaf.request_id == request.request_id:
                return [v.replica_id for v in entry.leaf.votes]
    return None


def test_the_primary_waits_past_the_vote_timeout_for_a_voter_still_voting_and_certifies_its_vote() -> None:
    """Under load an honest replica's vote often comes well after the quorum's: while that
    voter is still voting (a batch of its came lately) the primary holds the request for it,
    so the owner gets its fee and the certificate its vote."""
    cluster = Cluster()
    cluster.serve_one()  # replica 3 has voted lately
    late = cluster.hold(lambda e: isinstance(e.message, VoteBatch) and e.via == 3 and e.to == 0)
    request = cluster.new_request()
    cluster.submit(request)
    cluster.settle()
    cluster.tick(cluster.params.vote_timeout_ticks + 2)
    assert _proposed_with(cluster, request) is None
    cluster.release(late)
    cluster.settle()
    assert _proposed_with(cluster, request) == [0, 1, 2, 3]
    cluster.tick_until(lambda: all(request.key in cluster.nodes[r].state.executed for r in range(4)))


def test_a_voter_that_keeps_voting_but_not_on_a_request_holds_it_no_longer_than_vote_wait_max() -> None:
    """A Byzantine voter that keeps sending vote batches on other requests, never this one,
    delays it by vote_wait_max_ticks after its quorum, no more."""
    cluster = Cluster(auto_inference=False)
    wait_max = cluster.params.vote_wait_max_ticks
    assert wait_max > cluster.params.vote_timeout_ticks + 2
    requests = [cluster.new_request() for _ in range(10)]
    target, others = requests[1], requests[:1] + requests[2:]
    cluster.drop(
        lambda e: isinstance(e.message, VoteBatch) and e.via == 3
        and any(x.request_id == target.request_id for x in e.message.entries)
    )
    for request in requests:
        cluster.submit(request)
    node = cluster.nodes[0]
    pending = node.pending[node.by_request_key[target.key]]
    assert cluster.run_one_inference(3).requests == (requests[0],)  # a lone request goes at once
    assert target in cluster.run_one_inference(3).requests  # that vote batch is lost
    while pending.quorum_tick is None:
        for r in (0, 1, 2):
            cluster.run_inference(r)
        cluster.tick()
    quorum_tick = pending.quorum_tick
    votes_from_3 = 0
    while cluster.now < quorum_tick + wait_max - 1:
        for r in (0, 1, 2):
            cluster.run_inference(r)
        if cluster.now % 8 == 0 and cluster.inference[3]:
            cluster.run_one_inference(3)  # still voting, on requests older than the target
            votes_from_3 += 1
        cluster.tick()
        assert _proposed_with(cluster, target) is None, f"proposed at tick {cluster.now}"
    assert votes_from_3 >= 2
    assert all(_proposed_with(cluster, r) == [0, 1, 2, 3] for r in others if _proposed_with(cluster, r) is not None)
    cluster.tick()
    assert _proposed_with(cluster, target) == [0, 1, 2]


def test_a_voter_that_voted_past_a_request_is_not_waited_for() -> None:
    """A replica that never got the request votes on a later one: the primary proposes at the
    vote timeout as if that voter were absent."""
    cluster = Cluster()
    cluster.serve_one()
    skipped = cluster.new_request()
    cluster.submit(skipped, to=[0, 1, 2])
    cluster.settle()
    node = cluster.nodes[0]
    quorum_tick = node.pending[node.by_request_key[skipped.key]].quorum_tick
    assert quorum_tick is not None
    cluster.tick()
    later = cluster.new_request()
    cluster.submit(later)
    cluster.settle()
    assert node.vote_progress[3] > node.pending[node.by_request_key[skipped.key]].first_tick
    cluster.tick_until(lambda: _proposed_with(cluster, skipped) is not None)
    assert cluster.now == quorum_tick + cluster.params.vote_timeout_ticks
    assert _proposed_with(cluster, skipped) == [0, 1, 2]


def test_a_voter_working_off_a_backlog_is_not_waited_for() -> None:
    """A replica that stalled (say, loading a new model) comes back voting on requests long
    since certified: it is voting again, but too far behind for the primary to hold new
    requests for it."""
    cluster = Cluster()
    cluster.serve_one()
    cluster.tick(cluster.params.vote_wait_max_ticks)
    stalled = cluster.hold(lambda e: isinstance(e.message, VoteBatch) and e.via == 3 and e.to == 0)
    cluster.serve_one()  # certified without replica 3's vote, which is held back
    cluster.release(stalled)
    cluster.settle()  # its late vote batch arrives: voting again, on an executed request
    node = cluster.nodes[0]
    cluster.hold(lambda e: isinstance(e.message, VoteBatch) and e.via == 3 and e.to == 0)
    request = cluster.new_request()
    cluster.submit(request)
    cluster.settle()
    quorum_tick = node.pending[node.by_request_key[request.key]].quorum_tick
    assert quorum_tick is not None
    cluster.tick_until(lambda: _proposed_with(cluster, request) is not None)
    assert cluster.now == quorum_tick + cluster.params.vote_timeout_ticks
    assert _proposed_with(cluster, request) == [0, 1, 2]


def test_a_crashed_voter_is_waited_for_only_the_vote_timeout() -> None:
    """Once a voter's newest vote is vote_wait_max_ticks older than a request, the request
    waits for it no longer than the vote timeout: a crash costs each request that, not the cap."""
    cluster = Cluster()
    cluster.serve_one()
    cluster.crash(3)
    cluster.tick(cluster.params.vote_wait_max_ticks)
    request = cluster.new_request()
    cluster.submit(request)
    cluster.settle()
    cluster.tick(cluster.params.vote_timeout_ticks - 1)
    assert _proposed_with(cluster, request) is None
    cluster.tick()
    assert _proposed_with(cluster, request) == [0, 1, 2]


def test_primary_proposes_at_once_when_every_vote_is_in() -> None:
    cluster = Cluster()
    request = cluster.new_request()
    cluster.submit(request)
    cluster.settle()
    (pp,) = cluster.sent_of(0, PrePrepare)
    assert [v.replica_id for v in pp.proposal.entries[0].leaf.votes] == [0, 1, 2, 3]
    assert all(cluster.committed_requests(r) == [request.key] for r in range(4))


def test_a_request_without_a_quorum_of_votes_is_relayed_not_blamed_on_the_primary() -> None:
    """A request only some replicas received cannot be proposed (no 2f+1 votes): that is no
    reason to replace the primary. The replicas that have it relay it, and it commits."""
    cluster = Cluster()
    relays = cluster.drop(lambda e: isinstance(e.message, RequestMessage))
    request = cluster.new_request()
    cluster.submit(request, to=[1, 2])
    cluster.settle()
    cluster.tick(3 * cluster.params.view_change_timeout_ticks)
    assert all(cluster.nodes[r].view == 0 for r in range(4))
    assert not any(e.kind == "view-change" for r in range(4) for e in cluster.events[r])
    assert cluster.sent_of(1, RequestMessage), "the replica relays a request that lacks votes"
    cluster.drop_rules.remove(relays)
    cluster.tick_until(lambda: all(request.key in cluster.nodes[r].state.executed for r in range(4)), 100)
    assert all(cluster.nodes[r].view == 0 for r in range(4))


def test_a_request_whose_voters_restarted_and_forgot_it_is_handed_to_them_again_and_commits() -> None:
    """Requests waiting for order live in memory only. Replicas 0 (the primary), 1 and 3 vote
    for a request, then restart before it is proposed; replica 2 still holds it with their old
    votes, so no relay would go to them (they voted). When it stalls, replica 2 hands every peer
    the request and the primary the vote batches it holds, before accusing anyone: the request
    commits in view 0 and nobody is accused. Before this, replica 2 asked for a view change
    nobody joined and its client waited forever."""
    cluster = Cluster()
    to_primary = cluster.hold(lambda e: isinstance(e.message, VoteBatch) and e.to == 0)
    request = cluster.new_request()
    cluster.submit(request, to=[2], disseminate=True)
    cluster.settle()
    assert all(len(cluster.nodes[r].pending[cluster.nodes[2].by_request_key[request.key]].votes) == 4 for r in (1, 2, 3))
    assert not cluster.sent_of(0, PrePrepare)
    for r in (0, 1, 3):
        cluster.crash(r)
    cluster.release(to_primary)
    cluster.settle()
    for r in (0, 1, 3):
        cluster.restart(r)
    cluster.tick_until(lambda: all(request.key in cluster.nodes[r].state.executed for r in range(4)), 3 * cluster.params.view_change_timeout_ticks)
    assert all((cluster.nodes[r].view, cluster.nodes[r].view_active) == (0, True) for r in range(4))
    assert not any(e.kind == "view-change" for r in range(4) for e in cluster.events[r])
    assert [b.header.view for b in cluster.committed[2]] == [0]


def test_a_request_is_relayed_only_to_the_replicas_missing_its_vote_and_ever_less_often() -> None:
    """Under load a request can wait seconds for votes without anything being lost: relaying
    it to every peer at every relay timeout multiplied the group's work exactly then."""
    cluster = Cluster()
    relayed: list[tuple[int, int]] = []  # (tick, to) of replica 1's relays

    def record(e: Envelope) -> bool:
        if isinstance(e.message, RequestMessage):
            if e.via == 1:
                relayed.append((cluster.now, e.to))
            return True  # replicas 0 and 3 never get the request
        return False

    cluster.drop(record)
    request = cluster.new_request()
    cluster.submit(request, to=[1, 2])
    cluster.settle()
    timeout = cluster.params.relay_timeout_ticks
    cluster.tick(40 * timeout)
    assert relayed, "a request that lacks votes is relayed"
    assert {to for _, to in relayed} == {0, 3}, "replica 2 voted for it: it has it"
    rounds = sorted({tick for tick, _ in relayed})
    gaps = [b - a for a, b in zip(rounds, rounds[1:])]
    assert gaps == sorted(gaps) and gaps[0] >= timeout and gaps[-1] >= 8 * timeout, gaps
    assert len(rounds) <= 10  # once per relay timeout would be 40
    assert all(cluster.nodes[r].view == 0 for r in range(4))


def test_a_request_is_relayed_at_once_to_a_peer_whose_votes_moved_past_it() -> None:
    """A peer voting for requests that arrived after one it has not voted for most likely never
    got that one: it is relayed without waiting for the request to grow old."""
    cluster = Cluster()
    held = cluster.hold(lambda e: isinstance(e.message, RequestMessage))
    timeout = cluster.params.relay_timeout_ticks
    lost = cluster.new_request()
    cluster.submit(lost, to=[1, 2])  # the copies to replicas 0 and 3 were lost
    cluster.settle()
    cluster.tick(timeout + 1)
    assert not cluster.held, "nobody has moved past it yet: no relay"
    later = cluster.new_request()
    cluster.submit(later)  # everyone gets this one and votes for it
    cluster.tick_until(lambda: later.key in cluster.nodes[0].state.executed, 3 * timeout)
    cluster.tick(2 * timeout)
    relayed = {(e.via, e.to) for e in cluster.held if e.message.request == lost}
    assert {to for _, to in relayed} == {0, 3}
    assert cluster.now < 5 * timeout  # well before the request counts as old
    cluster.release(held)
    cluster.tick_until(lambda: all(lost.key in cluster.nodes[r].state.executed for r in range(4)), 100)
    batch, index = cluster.leaf_of(0, lost)
    assert len(batch.proposal.entries[index].leaf.votes) == 4, "every model answered it"


def test_a_proposed_request_is_not_relayed_while_its_batch_commits() -> None:
    """Once a request is in a PRE-PREPARE its votes are chosen: relaying it or resending vote
    batches for it helps no one (lost ordering messages are resent per slot)."""
    cluster = Cluster()
    cluster.drop(lambda e: isinstance(e.message, RequestMessage))
    held = cluster.hold(lambda e: isinstance(e.message, Prepare))
    request = cluster.new_request()
    cluster.submit(request, to=[0, 1, 2])  # replica 3 never gets it, so never votes
    cluster.tick_until(lambda: all(request.key in cluster.nodes[r].proposed for r in range(4)), 50)
    sent_before = {r: (len(cluster.sent_of(r, RequestMessage)), len(cluster.sent_of(r, VoteBatch))) for r in range(4)}
    cluster.tick(3 * cluster.params.relay_timeout_ticks)  # short of the view change timeout
    assert {r: (len(cluster.sent_of(r, RequestMessage)), len(cluster.sent_of(r, VoteBatch))) for r in range(4)} == sent_before
    cluster.release(held)
    cluster.tick_until(lambda: all(request.key in cluster.nodes[r].state.executed for r in range(4)), 100)
    assert all(cluster.nodes[r].view == 0 for r in range(4))


# =====================================================================================
# decisions, as the committed leaves show them
# =====================================================================================


def _fixed_model(tops: dict[int, tuple[tuple[int, int], ...]]) -> Model:
    def model(replica_id: int, request: InferenceRequest, version: int, label_space: tuple[str, ...]) -> ModelOutput:
        return ModelOutput(tops[replica_id])

    return model


def _committed_decision(policy: AgreementPolicy, tops: dict[int, tuple[tuple[int, int], ...]]) -> Decision:
    cluster = Cluster(policy=policy, model=_fixed_model(tops))
    request = cluster.serve_one()
    decisions = set()
    for r in range(4):
        batch, index = cluster.leaf_of(r, request)
        leaf = batch.proposal.entries[index].leaf
        assert [(v.replica_id, v.output.top) for v in leaf.votes] == sorted(tops.items())
        assert leaf.policy == policy.describe(cluster.config.f)
        decisions.add(leaf.decision)
    (decision,) = decisions
    return decision


def test_plurality_certifies_the_label_with_most_votes_and_at_least_f_plus_1_supporters() -> None:
    decision = _committed_decision(
        AgreementPolicy(PolicyKind.PLURALITY),
        {0: ((3, 9000), (5, 1000)), 1: ((3, 7000), (5, 3000)), 2: ((5, 9000),), 3: ((7, 10_000),)},
    )
    assert decision.label == 3 and decision.support == (0, 1)
    assert decision.probabilities == ((3, 8000), (5, 2000))


def test_plurality_tie_is_no_agreement() -> None:
    decision = _committed_decision(
        AgreementPolicy(PolicyKind.PLURALITY),
        {0: ((3, 10_000),), 1: ((3, 10_000),), 2: ((5, 10_000),), 3: ((5, 10_000),)},
    )
    assert decision == Decision(NO_AGREEMENT, (), ())


@pytest.mark.parametrize(("supporters", "agreed"), [(2, False), (3, True)])
def test_plurality_min_support(supporters: int, agreed: bool) -> None:
    tops = {r: ((4, 10_000),) if r < supporters else ((r, 10_000),) for r in range(4)}
    decision = _committed_decision(AgreementPolicy(PolicyKind.PLURALITY, min_support=3), tops)
    assert decision.agreed is agreed
    if agreed:
        assert decision.label == 4 and decision.support == (0, 1, 2)


def test_trimmed_mean_drops_f_highest_and_f_lowest_per_class() -> None:
    # plurality would be a 2-2 tie; the trimmed mean decides, robust to replica 3's extreme vote
    decision = _committed_decision(
        AgreementPolicy(PolicyKind.TRIMMED_MEAN),
        {0: ((4, 5100), (2, 4900)), 1: ((2, 6000), (4, 4000)), 2: ((4, 5200), (2, 4800)), 3: ((2, 10_000),)},
    )
    # class 2: [4800, 4900, 6000, 10000] -> (4900 + 6000) / 2; class 4: [0, 4000, 5100, 5200] -> 4550
    assert decision == Decision(2, ((2, 5450), (4, 4550)), (1, 3))


def test_application_mapping_is_applied_before_voting() -> None:
    """Replicas split between labels "0" and "2"; under a mapping that sends both to "even",
    every replica votes "even" and the group agrees; without it, no agreement."""
    favourite = {0: 0, 1: 0, 2: 2, 3: 2}

    def model(replica_id: int, request: InferenceRequest, version: int, label_space: tuple[str, ...]) -> ModelOutput:
        probs = np.full(len(LABELS), 0.1 / (len(LABELS) - 1))
        probs[favourite[replica_id]] = 0.9
        if not label_space:
            return quantise(probs, len(LABELS))
        space, mapped = map_probabilities(probs[None, :], LABELS, dict(request.label_mapping))
        assert space == label_space
        return quantise(mapped[0], len(space))

    cluster = Cluster(model=model)
    mapping = tuple(sorted((label, "even" if int(label) % 2 == 0 else "odd") for label in LABELS))
    plain = cluster.serve_one()
    mapped = cluster.new_request(mapping=mapping)
    cluster.submit(mapped)
    cluster.settle()
    for r in range(4):
        batch, index = cluster.leaf_of(r, plain)
        assert batch.proposal.entries[index].leaf.decision.label == NO_AGREEMENT
        batch, index = cluster.leaf_of(r, mapped)
        leaf = batch.proposal.entries[index].leaf
        assert leaf.label_space == ("even", "odd")
        assert leaf.decision.label == 0 and leaf.decision.support == (0, 1, 2, 3)
        assert all(v.output.label == 0 for v in leaf.votes)


# =====================================================================================
# model versions
# =====================================================================================


UPDATED = 2  # the replica whose owner ships version 2
NEW_LABEL = 7  # what version 2 of its model always answers


def _versioned_model(replica_id: int, request: InferenceRequest, version: int, label_space: tuple[str, ...]) -> ModelOutput:
    if replica_id == UPDATED and version >= 2:
        return ModelOutput(((NEW_LABEL, 10_000),))
    return honest_model(replica_id, request, version, label_space)


def test_model_update_takes_effect_log_window_batches_after_it_is_ordered() -> None:
    """A ModelUpdate ordered at seq t takes effect from seq t + log_window_batches: the
    replica's votes in batches before carry the old version, from then on the new one; the
    replica votes again on requests still pending when its version changes; every replica
    reports the Activation."""
    cluster = Cluster(model=_versioned_model)
    window = cluster.params.log_window_batches
    op = cluster.submit_update(UPDATED, 2)
    assert [type(m) for m in cluster.sent[UPDATED]] == [ControlMessage]
    cluster.settle()
    (t,) = [b.header.seq for b in cluster.committed[0] if b.proposal.ops]
    assert cluster.committed[0][t - 1].proposal.ops == (op,)
    early = cluster.serve_one()
    # a request only the updated replica has seen: it votes with version 1, then must re-vote
    cluster.drop(lambda e: isinstance(e.message, RequestMessage))
    pending = cluster.new_request()
    cluster.submit(pending, to=[UPDATED])
    cluster.settle()
    assert [b.model_version for b in cluster.sent_of(UPDATED, VoteBatch) if b.entries[0].request_id == pending.request_id] == [1]
    cluster.tick_until(lambda: all(cluster.nodes[r].executed_seq >= t + window - 1 for r in range(4)), 200)
    cluster.tick()  # the re-vote's inference batch goes out on the next tick
    for r in range(4):
        assert cluster.activations[r] == [Activation(UPDATED, 2, op.weights_digest, t + window)]
        assert cluster.nodes[r].state.versions[UPDATED] == (2, op.weights_digest)
    assert cluster.nodes[UPDATED].model_version == 2
    # (a vote batch resent while the activation comes repeats its number)
    revotes = {b.batch_no: b for b in cluster.sent_of(UPDATED, VoteBatch) if b.entries[0].request_id == pending.request_id}
    assert [b.model_version for b in revotes.values()] == [1, 2]
    cluster.heal()
    late = cluster.serve_one()
    cluster.tick_until(lambda: all(pending.key in cluster.nodes[r].state.executed for r in range(4)), 200)
    for r in range(4):
        for request in (early, pending, late):
            batch, index = cluster.leaf_of(r, request)
            vote = next(v for v in batch.proposal.entries[index].leaf.votes if v.replica_id == UPDATED)
            expected = 2 if batch.header.seq >= t + window else 1
            assert vote.model_version == expected, (request.request_id, batch.header.seq)
            if expected == 2:
                assert vote.output.label == NEW_LABEL
    assert cluster.leaf_of(0, early)[0].header.seq < t + window <= cluster.leaf_of(0, pending)[0].header.seq
    assert cluster.rejections == []


def test_model_update_from_an_owner_reaches_the_primary_through_any_replica() -> None:
    cluster = Cluster()
    op = cluster.submit_update(UPDATED, 2, to=3)
    cluster.settle()
    for r in range(4):
        assert cluster.nodes[r].state.latest_version(UPDATED) == 2
        assert [b.proposal.ops for b in cluster.committed[r] if b.proposal.ops] == [(op,)]



def _updated_replica_catches_up_by_state_transfer() -> tuple[Cluster, ModelUpdate]:
    """Replica 2's update is ordered, then replica 2 is cut off until well past the activation
    and a stable checkpoint, and catches up by state transfer."""
    cluster = Cluster(model=_versioned_model)
    op = cluster.submit_update(UPDATED, 2)
    cluster.settle()
    cut = cluster.isolate(UPDATED)
    (t,) = [b.header.seq for b in cluster.committed[0] if b.proposal.ops]
    window = cluster.params.log_window_batches
    cluster.tick_until(lambda: cluster.nodes[0].state.versions[UPDATED][0] == 2, 200)
    for _ in range(cluster.params.checkpoint_interval_batches):
        cluster.serve_one(to=[0, 1, 3])
    assert cluster.nodes[0].low > t + window and cluster.nodes[UPDATED].executed_seq == t
    cluster.drop_rules.remove(cut)
    fresh = cluster.new_request()
    cluster.submit(fresh)
    cluster.settle()
    node = cluster.nodes[UPDATED]
    cluster.tick_until(lambda: node.executed_seq == cluster.nodes[0].executed_seq, 500)
    assert any(e.kind == "state-installed" for e in cluster.events[UPDATED])
    return cluster, op


def test_updated_replica_catching_up_by_state_transfer_votes_with_its_new_version() -> None:
    cluster, _ = _updated_replica_catches_up_by_state_transfer()
    assert cluster.nodes[UPDATED].model_version == 2
    after = cluster.serve_one()
    batch, index = cluster.leaf_of(0, after)
    vote = next(v for v in batch.proposal.entries[index].leaf.votes if v.replica_id == UPDATED)
    assert (vote.model_version, vote.output.label) == (2, NEW_LABEL)


def _ordered_update(cluster: Cluster) -> int:
    """Order a model update of UPDATED's; returns the seq of the batch that carries it."""
    op = cluster.submit_update(UPDATED, 2)
    cluster.settle()
    (t,) = [b.header.seq for b in cluster.committed[0] if b.proposal.ops == (op,)]
    return t


def _ticks_to_activation(cluster: Cluster) -> int:
    def in_effect() -> bool:
        cluster.settle()
        return cluster.nodes[0].state.versions[UPDATED][0] == 2

    return cluster.tick_until(in_effect, 1000)


def test_an_idle_group_orders_an_empty_batch_every_tick_to_reach_an_activation() -> None:
    cluster = Cluster()
    t = _ordered_update(cluster)
    window = cluster.params.log_window_batches
    assert _ticks_to_activation(cluster) == window - 1
    assert [b.header.seq for b in cluster.committed[0]] == list(range(1, t + window))
    assert all(not b.proposal.entries and not b.proposal.ops for b in cluster.committed[0][t:])


def test_while_requests_are_about_an_activation_gets_an_empty_batch_only_after_the_longest_vote_wait() -> None:
    """Requests waiting at the replicas (for company, or for votes) will carry the activation
    forward; an empty batch meanwhile is a full round for nothing. After a vote timeout (30 ms),
    the gaps of a closed loop got one for every two or three real batches and the group
    certified 10-20 % less while an update was due; after the longest a request may wait for
    its votes, a steady load gets none."""
    cluster = Cluster(auto_inference=False)  # the request stays pending: nobody votes yet
    timeout = cluster.params.vote_wait_max_ticks
    assert timeout > cluster.params.vote_timeout_ticks
    cluster.submit(cluster.new_request())
    t = _ordered_update(cluster)
    assert cluster.nodes[0].executed_seq == t, "empty batches went while a request was pending"
    cluster.tick(timeout - 1)
    cluster.settle()
    assert cluster.nodes[0].executed_seq == t
    cluster.tick()
    cluster.settle()
    assert cluster.nodes[0].executed_seq == t + 1
    assert not cluster.committed[0][t].proposal.entries, "the batch after the update is not empty"
    # and so on, one a vote timeout, until the activation (the request never gets its votes)
    assert _ticks_to_activation(cluster) == (cluster.params.log_window_batches - 2) * timeout


def test_a_steady_load_carries_an_activation_with_no_empty_batches() -> None:
    """A closed loop: each request spends longer than a vote timeout at the models before its
    votes come, then the next is sent. The requests' own batches take the update to its
    activation; none of the group's rounds go to empty batches."""
    cluster = Cluster(auto_inference=False)
    params = cluster.params
    t = _ordered_update(cluster)
    for _ in range(params.log_window_batches):
        if cluster.nodes[0].state.versions[UPDATED][0] == 2:
            break
        request = cluster.new_request()
        cluster.submit(request)
        cluster.tick(params.vote_timeout_ticks + 2)  # the models are slow
        cluster.run_inference()
        cluster.settle()
        cluster.tick_until(lambda: request.key in cluster.nodes[0].state.executed, 100)
    assert cluster.nodes[0].state.versions[UPDATED][0] == 2
    after = cluster.committed[0][t:]
    assert [b.header.seq for b in after if not b.proposal.entries] == [], "empty batches went while requests were about"
    assert len(after) == params.log_window_batches - 1


def test_updated_replica_catching_up_by_state_transfer_reports_the_activation() -> None:
    """The runtime switches models, updates metrics and records activations from
    ready().activations; a replica that skipped the activating batch must still hear of it."""
    cluster, op = _updated_replica_catches_up_by_state_transfer()
    assert [(a.replica_id, a.version, a.weights_digest) for a in cluster.activations[UPDATED]] == [(UPDATED, 2, op.weights_digest)]


def test_a_model_update_still_pending_when_its_replica_leaves_is_dropped_and_blames_nobody() -> None:
    """An update taken while its replica was a member waits past the end of the epoch when the
    epoch's last batches are already proposed. Once an epoch change removes that replica, the
    primary must not propose it (every correct backup would reject the batch and blame the
    primary), every replica drops it, and a copy relayed from the old epoch is late, not faulty."""
    cluster = Cluster(n=5)
    change = cluster.submit_leave(4, to=range(5))
    while cluster.nodes[0].executed_seq < change.seq - 1:
        cluster.serve_one()
    held_commits = cluster.hold(lambda e: isinstance(e.message, Commit))
    cluster.submit(cluster.new_request())
    cluster.settle()
    cluster.tick(cluster.params.vote_timeout_ticks + 1)
    assert all(max(node.log) == change.seq for node in cluster.nodes.values())  # the epoch's last batch
    held_relay = cluster.hold(lambda e: isinstance(e.message, ControlMessage) and e.to == 0)
    update = cluster.submit_update(4, 2, to=0)
    cluster.submit_update(4, 2, to=1)
    cluster.settle()
    assert all(cluster.nodes[r].pending_ops for r in (0, 1))  # the window is full: it waits
    cluster.release(held_commits)
    cluster.settle()
    assert all(node.config.epoch == 1 and not node.config.is_member(4) for node in cluster.nodes.values())
    cluster.release(held_relay)
    cluster.settle()
    after = cluster.serve_one(to=[0, 1, 2, 3])
    assert all(after.key in cluster.nodes[r].state.executed for r in range(4))
    assert all(update not in pp.proposal.ops for r in range(5) for pp in cluster.sent_of(r, PrePrepare))
    assert {r: node.pending_ops for r, node in cluster.nodes.items()} == {r: {} for r in range(5)}
    assert {kind for _, _, kind in cluster.rejected_kinds()} <= {"stale"}
    assert all(node.view == 0 for node in cluster.nodes.values())


@pytest.mark.parametrize("version", [2, 3], ids=["same-version-exported-twice", "later-version"])
def test_an_update_overtaken_by_another_is_dropped_by_the_replica_holding_it(version: int) -> None:
    """An owner sends update 2 through replica 3, whose relay is held up, and then another
    update through the primary: version 2 again with other weights (the model exported twice),
    or version 3. The other is ordered first. Replica 3's update 2 can never be ordered now, so
    replica 3 drops it as soon as it executes the other, instead of holding it pending for good:
    a pending operation keeps a node from going quiet (ticked every few milliseconds)."""
    cluster = Cluster()
    relays = cluster.hold(lambda e: isinstance(e.message, ControlMessage) and e.message.sender == 3)
    overtaken = cluster.submit_update(UPDATED, 2, to=3, export=1)
    ordered = cluster.submit_update(UPDATED, version, to=0)
    assert overtaken != ordered
    cluster.settle()
    assert all(cluster.nodes[r].state.latest_version(UPDATED) == version for r in range(4))
    assert [b.proposal.ops for b in cluster.committed[0] if b.proposal.ops] == [(ordered,)]
    cluster.release(relays)
    cluster.settle()
    assert {r: node.pending_ops for r, node in cluster.nodes.items()} == {r: {} for r in range(4)}
    cluster.tick_until(lambda: all(node.quiet() for node in cluster.nodes.values()), 100)
    assert {kind for _, _, kind in cluster.rejected_kinds()} <= {"stale"}


def test_an_update_overtaken_while_its_replica_was_cut_off_is_dropped_when_a_snapshot_shows_it() -> None:
    """Replica 3 takes update 2 from the owner while cut off; the group orders update 3 through
    the primary and moves on past a stable checkpoint. Replica 3 catches up by state transfer,
    never executing the batch that ordered update 3, and still drops its update 2."""
    cluster = Cluster()
    cut = cluster.isolate(3)
    cluster.submit_update(UPDATED, 2, to=3)
    cluster.submit_update(UPDATED, 3, to=0)
    cluster.settle()
    for _ in range(2 * cluster.params.checkpoint_interval_batches):
        cluster.serve_one(to=[0, 1, 2])
    assert cluster.nodes[3].pending_ops and cluster.nodes[0].low > 0
    cluster.drop_rules.remove(cut)
    cluster.submit(cluster.new_request())
    cluster.settle()
    node = cluster.nodes[3]
    cluster.tick_until(lambda: node.executed_seq == cluster.nodes[0].executed_seq, 500)
    assert any(e.kind == "state-installed" for e in cluster.events[3])
    assert node.state.latest_version(UPDATED) == 3
    assert node.pending_ops == {}


def test_a_second_leave_asked_of_the_same_epoch_is_dropped_with_word_and_the_group_goes_quiet() -> None:
    """Two owners ask to leave in epoch 0; membership changes go one at a time, so one is
    ordered and closes the epoch. The other was asked of epoch 0 and can never be ordered in
    epoch 1: every replica drops it and says so (its owner must ask again), and every replica,
    the one that left too, goes quiet instead of ticking for good."""
    cluster = Cluster(n=7)
    for leaving in (5, 6):
        cluster.ask_leave(leaving, to=range(cluster.n))
    cluster.settle()
    while cluster.nodes[0].config.epoch == 0:
        cluster.serve_one(to=range(5))
    (left,) = [r for r in (5, 6) if not cluster.nodes[0].config.is_member(r)]
    (stayed,) = {5, 6} - {left}
    assert all(node.config.epoch == 1 for node in cluster.nodes.values())
    assert {r: node.pending_ops for r, node in cluster.nodes.items()} == {r: {} for r in range(cluster.n)}
    for r in range(cluster.n):
        dropped = [e.detail for e in cluster.events[r] if e.kind == "control-dropped"]
        assert dropped == [f"the leave of replica {stayed}, asked of epoch 0, was not ordered; ask again of epoch 1"]
    cluster.tick_until(lambda: all(node.quiet() for node in cluster.nodes.values()), 500)
    assert cluster.nodes[left].retired


def test_an_update_the_primary_lost_in_a_restart_is_handed_to_it_again_and_ordered() -> None:
    """The owner's update reaches the backups while the primary is down; the primary comes back
    (in time to stay primary) without it, as pending operations live in memory only. The
    backups hand it to the primary again after a relay timeout, so it is ordered, with no view
    change (the simulator found an update that was never ordered this way: seed 77)."""
    cluster = Cluster()
    cluster.crash(0)
    op = cluster.submit_update(UPDATED, 2, to=1)
    cluster.settle()
    cluster.restart(0)
    cluster.settle()
    assert not cluster.nodes[0].pending_ops and all(cluster.nodes[r].pending_ops for r in (1, 2, 3))
    cluster.tick_until(lambda: all(node.state.latest_version(UPDATED) == 2 for node in cluster.nodes.values()), 400)
    assert [b.proposal.ops for b in cluster.committed[1] if b.proposal.ops] == [(op,)]
    assert all(node.view == 0 for node in cluster.nodes.values())
    cluster.tick_until(lambda: all(node.quiet() for node in cluster.nodes.values()), 100)


def test_requests_a_snapshot_shows_executed_are_reported_so_their_clients_need_not_wait() -> None:
    """A replica cut off while holding a client's request catches up by a snapshot that
    includes that request's batch: it never sees the batch, so it cannot certify the request.
    ready().executed_unseen names it (and only it), so the runtime can tell the waiting client
    at once to ask another replica instead of letting it time out."""
    cluster = Cluster()
    k = cluster.params.checkpoint_interval_batches
    cut = cluster.isolate(3)
    held = cluster.new_request()
    cluster.submit(held)  # all four hold it; replica 3's votes go nowhere
    cluster.settle()
    for _ in range(2 * k):
        cluster.serve_one(to=[0, 1, 2])
    assert cluster.nodes[0].low >= k and held.key not in cluster.nodes[3].state.executed
    cluster.drop_rules.remove(cut)
    fresh = cluster.new_request()
    cluster.submit(fresh)
    cluster.settle()
    node = cluster.nodes[3]
    cluster.tick_until(lambda: fresh.key in node.state.executed, 500)
    assert any(e.kind == "state-installed" for e in cluster.events[3])
    assert cluster.executed_unseen[3] == [held.key]
    # and the batches it skipped, whose certificates it lacks: from where it was to the snapshot
    assert cluster.skipped_batches[3] == [(0, cluster.nodes[3].low)]
    # the request after the snapshot came as a batch: certified there, not reported
    assert fresh.key in cluster.committed_requests(3)
    assert all(not cluster.executed_unseen[r] for r in (0, 1, 2))
