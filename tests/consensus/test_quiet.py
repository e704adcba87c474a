"""The core's clock: `quiet()` says when nothing is under way that its timers must move along
(the runtime then ticks it rarely), and `tick(k)` advances the clock by k ticks at once with the
same effect as k single ticks."""

from __future__ import annotations

import pytest

from consensus.messages import Checkpoint, Commit, PrePrepare, VoteBatch
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
