"""One test per claim of the PBFT paper that applies to the consensus core.

Castro and Liskov, "Practical Byzantine Fault Tolerance", OSDI 1999. Each docstring starts with
the section it checks. Groups have n = 4 replicas (f = 1, quorum 2f+1 = 3) unless a test says
otherwise; K = 4 batches between checkpoints and a log window of 8 (see cluster.unit_params).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import pytest

from certs.certificate import QuorumSignature, SignedVoteBatch, build_certificates
from certs.policy import AgreementPolicy
from certs.request import InferenceRequest
from certs.statements import StatementKind
from certs.verify import verify

from consensus.errors import ByzantineMessageError
from consensus.messages import (
    Checkpoint,
    Commit,
    ConfigSignature,
    FetchState,
    NewView,
    PrePrepare,
    Prepare,
    Proposal,
    StateReply,
    ViewChange,
    VoteBatch,
)
from certs.evidence import Equivocation
from consensus.ready import CommittedBatch, PreparedRecord, SignedRecord, StableCheckpointRecord
from tests.consensus.cluster import (
    Cluster,
    commit,
    fingerprint,
    flip_signature,
    matching,
    new_view,
    null_pre_prepare,
    prepare,
    unit_params,
    view_change,
)
from tests.sim.world import make_config


def _first_proposal(cluster: Cluster) -> PrePrepare:
    return cluster.sent_of(cluster.nodes[0].primary, PrePrepare)[0]


def _certificates_verify(cluster: Cluster, batch: CommittedBatch) -> None:
    quorum = [QuorumSignature(c.sender, c.signature) for c in batch.commits]
    votes = [SignedVoteBatch(v.sender, v.batch_no, v.model_version, tuple(e.hash for e in v.entries), v.signature) for v in batch.vote_batches]
    leaves = [entry.leaf for entry in batch.proposal.entries]
    for certificate in build_certificates(batch.header, leaves, quorum, votes):
        verify(certificate, cluster.config, verifier=cluster.verifier)


# =====================================================================================
# 4.1 service properties and the view
# =====================================================================================


@pytest.mark.parametrize("n", [4, 7])
def test_primary_of_view_v_is_replica_v_mod_n(n: int) -> None:
    """4.1: the primary of view v is replica p = v mod |R|; only its pre-prepares count."""
    config = make_config(n, AgreementPolicy(), unit_params())
    assert [config.primary(v) for v in range(3 * n)] == [v % n for v in range(3 * n)]
    cluster = Cluster(n=n)
    cluster.serve_one()
    proposers = {pp.sender for r in range(n) for pp in cluster.sent_of(r, PrePrepare)}
    assert proposers == {0}
    # a pre-prepare for view 0 signed by replica 1 is not the primary's
    forged = null_pre_prepare(cluster.config, 1, 0, 2)
    with pytest.raises(ByzantineMessageError) as info:
        cluster.step(2, forged, via=1)
    assert (info.value.sender, info.value.kind) == (1, "not-primary")


# =====================================================================================
# 4.2 normal-case operation
# =====================================================================================


def test_backup_accepts_pre_prepare_of_current_primary_and_prepares() -> None:
    """4.2: a backup accepts a pre-prepare signed by the primary of its view, with a seq in the
    watermarks and no other pre-prepare for (v, n), and multicasts a matching PREPARE."""
    cluster = Cluster()
    cluster.serve_one()
    pp = _first_proposal(cluster)
    assert (pp.view, pp.seq) == (0, 1)
    assert cluster.sent_of(0, Prepare) == []  # the primary's pre-prepare stands for its prepare
    for backup in (1, 2, 3):
        prepares = cluster.sent_of(backup, Prepare)
        assert [(p.view, p.seq, p.batch_digest) for p in prepares] == [(0, 1, pp.header.batch_digest)]


def test_pre_prepare_for_a_view_not_entered_is_not_accepted() -> None:
    """4.2: a backup accepts a pre-prepare only "if it is in view v": the primary of a later
    view cannot get prepares for it before that view starts."""
    cluster = Cluster()
    before = fingerprint(cluster.nodes[2])
    future = null_pre_prepare(cluster.config, 1, 1, 1)  # replica 1 is primary of view 1
    cluster.step(2, future, via=1)
    assert fingerprint(cluster.nodes[2]) == before
    assert cluster.sent[2] == []


def test_pre_prepare_outside_the_watermarks_is_rejected() -> None:
    """4.2: the sequence number must lie between the low and high watermarks h < n <= H."""
    cluster = Cluster()
    window = cluster.params.log_window_batches
    above = null_pre_prepare(cluster.config, 0, 0, window + 1)
    with pytest.raises(ByzantineMessageError) as info:
        cluster.step(1, above, via=0)
    assert (info.value.sender, info.value.kind) == (0, "outside-window")
    # at the high watermark itself it is accepted
    at_edge = null_pre_prepare(cluster.config, 0, 0, window)
    cluster.step(1, at_edge, via=0)
    assert [(p.seq) for p in cluster.sent_of(1, Prepare)] == [window]


def test_second_pre_prepare_for_same_view_and_seq_is_equivocation() -> None:
    """4.2: a backup does not accept a pre-prepare for (v, n) with a different digest once it
    accepted one; the two signed pre-prepares prove the primary equivocated."""
    cluster = Cluster()
    cluster.hold(matching(Commit, to=3))  # keep seq 1 open at replica 3
    late = cluster.hold(matching(PrePrepare, to=3))
    cluster.submit(cluster.new_request())
    cluster.settle()
    (held,) = cluster.release(late)
    cluster.settle()
    pp = held.message
    node = cluster.nodes[3]
    assert node.log[1].pre_prepare == pp and node.executed_seq == 0
    before = fingerprint(node)
    other = null_pre_prepare(cluster.config, 0, 0, 1)
    with pytest.raises(ByzantineMessageError) as info:
        node.step(other, via=0)
    assert (info.value.sender, info.value.kind) == (0, "equivocation")
    (evidence,) = node.ready().evidence
    assert isinstance(evidence, Equivocation)
    first, second = evidence.first.statement, evidence.second.statement
    assert (first.kind, first.signer, first.slot) == (StatementKind.PRE_PREPARE, 0, (0, 1))
    assert (second.kind, second.signer, second.slot) == (StatementKind.PRE_PREPARE, 0, (0, 1))
    assert {first.content, second.content} == {pp.header.batch_digest, other.header.batch_digest}
    assert evidence.first.verify(cluster.verifier, cluster.config.public_key(0) or b"")
    assert evidence.second.verify(cluster.verifier, cluster.config.public_key(0) or b"")
    assert fingerprint(node) == before
    assert [p.batch_digest for p in cluster.sent_of(3, Prepare)] == [pp.header.batch_digest]


def test_commit_is_sent_only_once_prepared() -> None:
    """4.2: prepared(m, v, n, i) needs the pre-prepare and 2f prepares from different backups
    matching it; only then does replica i multicast COMMIT (and it logs the proof first)."""
    cluster = Cluster()
    cluster.hold(matching(Prepare))
    cluster.submit(cluster.new_request())
    cluster.settle()
    pp = _first_proposal(cluster)
    assert all(cluster.sent_of(r, Commit) == [] for r in range(4))
    # replica 1 holds its own prepare; one more from a backup makes 2f = 2
    cluster.release(lambda e: isinstance(e.message, Prepare) and e.via == 2 and e.to == 1)
    cluster.settle()
    (sent,) = cluster.sent_of(1, Commit)
    assert (sent.view, sent.seq, sent.batch_digest) == (0, 1, pp.header.batch_digest)
    assert all(cluster.sent_of(r, Commit) == [] for r in (0, 2, 3))
    disk = cluster.disks[1]
    prepared_at = next(i for i, rec in enumerate(disk) if isinstance(rec, PreparedRecord))
    commit_at = next(i for i, rec in enumerate(disk) if isinstance(rec, SignedRecord) and isinstance(rec.message, Commit))
    assert prepared_at < commit_at
    record = disk[prepared_at]
    assert isinstance(record, PreparedRecord) and {p.sender for p in record.prepares} == {1, 2}


def test_prepares_must_come_from_2f_distinct_backups() -> None:
    """4.2: the 2f prepares must come from different backups; a prepare claiming to be the
    primary's is refused and a backup's prepare delivered twice counts once."""
    cluster = Cluster()
    cluster.hold(matching(Prepare))
    cluster.submit(cluster.new_request())
    cluster.settle()
    digest = _first_proposal(cluster).header.batch_digest
    with pytest.raises(ByzantineMessageError) as info:
        cluster.step(1, prepare(cluster.config, 0, 0, 1, digest), via=0)
    assert (info.value.sender, info.value.kind) == (0, "not-backup")
    # but only a PREPARE its sender signed, in this epoch, shows the sender at fault: one of
    # another epoch (whose members differ, so the sender may be a backup of that view there) is
    # judged by its epoch, a forged one blames no one
    other_epoch = cluster.config.epoch + 1
    for message, kind in ((prepare(cluster.config, 0, 0, 1, digest, epoch=other_epoch), "future-epoch"),
                          (flip_signature(prepare(cluster.config, 0, 0, 1, digest)), "bad-signature")):
        with pytest.raises(ByzantineMessageError) as info:
            cluster.step(1, message, via=0)
        assert info.value.kind == kind
    # the primary itself signs no prepare: it needs two from backups
    (from_two,) = [e for e in cluster.held if e.via == 2 and e.to == 0]
    (from_three,) = [e for e in cluster.held if e.via == 3 and e.to == 0]
    cluster.step(0, from_two.message, via=2)
    cluster.step(0, from_two.message, via=2)
    assert cluster.sent_of(0, Commit) == []
    cluster.step(0, from_three.message, via=3)
    (sent,) = cluster.sent_of(0, Commit)
    assert sent.batch_digest == digest


def test_batches_execute_in_sequence_order_even_if_a_later_one_commits_first() -> None:
    """4.2: replica i executes the operation of m after committed-local(m, v, n, i) is true and
    it executed all requests with lower sequence numbers."""
    cluster = Cluster()
    late = cluster.hold(matching(Commit, to=3, seq=1))
    first = cluster.serve_one(to=range(3))
    cluster.submit(first, to=[3])
    cluster.settle()
    second = cluster.new_request()
    cluster.submit(second)
    cluster.settle()
    # replica 3 has not executed its last call's request: a lone one waits the batch delay
    cluster.tick(cluster.params.inference_batch_delay_ticks)
    cluster.settle()
    node = cluster.nodes[3]
    assert node.log[2].committed is not None and node.log[1].committed is None
    assert cluster.committed[3] == [] and node.executed_seq == 0
    cluster.release(late)
    cluster.settle()
    assert [b.header.seq for b in cluster.committed[3]] == [1, 2]
    assert cluster.committed_requests(3) == [first.key, second.key]


def test_committed_batches_carry_a_quorum_of_commits_on_the_same_header() -> None:
    """4.2: committed-local needs 2f+1 matching COMMITs from different replicas; that quorum
    is what a certificate carries, and every correct replica commits the same batch at a seq."""
    cluster = Cluster()
    for _ in range(3):
        cluster.serve_one()
    q = cluster.config.quorum_size
    by_seq: dict[int, set[bytes]] = defaultdict(set)
    for r in range(4):
        assert [b.header.seq for b in cluster.committed[r]] == [1, 2, 3]
        for batch in cluster.committed[r]:
            header = batch.header
            senders = [c.sender for c in batch.commits]
            assert len(senders) == q and senders == sorted(set(senders))
            for c in batch.commits:
                assert (c.view, c.seq, c.batch_digest) == (header.view, header.seq, header.batch_digest)
                key = cluster.config.public_key(c.sender) or b""
                assert cluster.verifier.verify(key, c.statement(cluster.config.group_id).message(), c.signature)
            _certificates_verify(cluster, batch)
            by_seq[header.seq].add(header.batch_digest)
    assert all(len(digests) == 1 for digests in by_seq.values())


# =====================================================================================
# 4.3 garbage collection
# =====================================================================================


def test_checkpoint_every_k_batches_becomes_stable_at_a_quorum_and_truncates_the_log() -> None:
    """4.3: every K requests a replica multicasts CHECKPOINT with its state digest; with 2f+1
    matching ones (its own included) the checkpoint is stable, h moves to it and the log at or
    below it is discarded."""
    cluster = Cluster()
    k = cluster.params.checkpoint_interval_batches
    held = cluster.hold(matching(Checkpoint, to=1))
    for _ in range(k):
        cluster.serve_one()
    node = cluster.nodes[1]
    assert [c.seq for r in range(4) for c in cluster.sent_of(r, Checkpoint)] == [k] * 4
    assert node.low == 0 and sorted(node.log) == list(range(1, k + 1))
    cluster.release(lambda e: held(e) and e.via == 2)
    cluster.settle()
    assert node.low == 0, "own + one more is only 2f"
    cluster.release(lambda e: held(e) and e.via == 3)
    cluster.settle()
    assert node.low == k
    assert all(seq > k for seq in node.log)
    (record,) = [rec for rec in cluster.disks[1] if isinstance(rec, StableCheckpointRecord)]
    assert record.snapshot.seq == k
    assert sorted({c.sender for c in record.proof}) == [1, 2, 3]
    assert {c.state_digest for c in record.proof} == {node.state.state_digest()}
    assert any(e.kind == "checkpoint-stable" for e in cluster.events[1])
    for r in (0, 2, 3):
        assert cluster.nodes[r].low == k


def test_messages_below_the_low_watermark_are_rejected_as_stale() -> None:
    """4.3: once h moved to a stable checkpoint, messages for sequence numbers <= h are
    discarded, with the node unchanged. A replay is rejected as stale; the first copy of a vote
    from the interval just below h is dropped silently (the slowest replica's votes arrive that
    late in the normal case)."""
    cluster = Cluster()
    k = cluster.params.checkpoint_interval_batches
    for _ in range(k + 1):
        cluster.serve_one()
    node = cluster.nodes[1]
    assert node.low == k
    old = cluster.committed[0][1]  # seq 2
    digest = old.header.batch_digest
    replays = [
        prepare(cluster.config, 2, 0, 2, digest),
        commit(cluster.config, 2, 0, 2, digest),
        next(pp for pp in cluster.sent_of(0, PrePrepare) if pp.seq == 2),
    ]
    before = fingerprint(node)
    for message in replays[:2]:
        cluster.step(1, message, via=message.sender)
    for message in replays:
        with pytest.raises(ByzantineMessageError) as info:
            cluster.step(1, message, via=message.sender)
        assert info.value.kind == "stale"
        assert info.value.sender == message.sender
    assert fingerprint(node) == before


# =====================================================================================
# 4.4 view changes
# =====================================================================================


def _prepared_then_primary_crashes(cluster: Cluster, seq: int = 1) -> tuple[PrePrepare, InferenceRequest]:
    """A new request's batch (at `seq`) prepares everywhere but commits nowhere (its view-0
    COMMITs are lost), then the primary crashes."""
    cluster.drop(matching(Commit, view=0, seq=seq))
    request = cluster.new_request()
    cluster.submit(request)
    cluster.settle()
    pp = cluster.sent_of(0, PrePrepare)[-1]
    assert pp.seq == seq
    assert all(cluster.nodes[r].log[seq].prepared_proof is not None for r in range(4))
    assert all(request.key not in cluster.nodes[r].state.executed for r in range(4))
    cluster.crash(0)
    return pp, request


def test_backup_times_out_moves_to_next_view_and_sends_view_change_with_prepared_proofs() -> None:
    """4.4: a backup whose timer expires while waiting for a request to execute moves to view
    v+1 and multicasts VIEW-CHANGE with its stable checkpoint and a prepared proof (pre-prepare
    plus 2f matching prepares) for every request prepared above it. Before accusing the
    primary it spends one relay timeout asking a peer whether it merely fell behind."""
    cluster = Cluster()
    timeout = cluster.params.view_change_timeout_ticks
    pp, _ = _prepared_then_primary_crashes(cluster)
    cluster.tick(timeout - 1)
    assert all(cluster.nodes[r].view == 0 for r in (1, 2, 3))
    cluster.tick_until(lambda: all(cluster.nodes[r].view == 1 for r in (1, 2, 3)), cluster.params.relay_timeout_ticks + 5)
    for r in (1, 2, 3):
        (vc,) = cluster.sent_of(r, ViewChange)
        assert (vc.new_view, vc.stable_seq) == (1, 0)
        (proof,) = vc.prepared
        assert proof.pre_prepare == pp
        senders = [p.sender for p in proof.prepares]
        assert len(senders) == 2 and len(set(senders)) == 2 and 0 not in senders
        assert all(p.batch_digest == pp.header.batch_digest and (p.view, p.seq) == (0, 1) for p in proof.prepares)
        assert any(e.kind == "view-change" for e in cluster.events[r])


def test_new_primary_re_proposes_prepared_batches_with_the_same_content() -> None:
    """4.4: the new primary's NEW-VIEW carries 2f+1 view changes and, for each seq prepared in
    them, a pre-prepare for view v+1 with the same digest; the batch commits in the new view."""
    cluster = Cluster()
    pp, request = _prepared_then_primary_crashes(cluster)
    cluster.tick_until(lambda: all(cluster.nodes[r].view_active and cluster.nodes[r].view == 1 for r in (1, 2, 3)), 200)
    (nv,) = cluster.sent_of(1, NewView)
    assert nv.view == 1 and len({vc.sender for vc in nv.view_changes}) == cluster.config.quorum_size
    (again,) = nv.pre_prepares
    assert (again.view, again.seq, again.sender) == (1, 1, 1)
    assert again.header.batch_digest == pp.header.batch_digest and again.proposal == pp.proposal
    for r in (1, 2, 3):
        (batch,) = cluster.committed[r]
        assert batch.header == pp.header.with_view(1)
        assert batch.proposal == pp.proposal
        _certificates_verify(cluster, batch)
    assert cluster.nodes[2].primary == 1


def test_new_view_fills_gaps_with_null_batches() -> None:
    """4.4: for a seq between the stable checkpoint and the highest prepared seq with no
    prepared batch in the view changes, NEW-VIEW proposes a null request; what was only
    pre-prepared there is proposed again later and executes exactly once."""
    cluster = Cluster()
    cluster.drop(matching(Commit, view=0))
    cluster.drop(matching(Prepare, view=0, seq=2))
    requests = []
    for _ in range(3):
        request = cluster.new_request()
        requests.append(request)
        cluster.submit(request)
        cluster.settle()
        # nothing executes (no commits): from the second request on, each replica lets a lone
        # request wait the batch delay for company, and the primary lets it wait a tick
        cluster.tick(cluster.params.inference_batch_delay_ticks)
        cluster.settle()
        cluster.tick()
    first_at_seq: dict[int, PrePrepare] = {}
    for sent in cluster.sent_of(0, PrePrepare):
        first_at_seq.setdefault(sent.seq, sent)  # a resend repeats one
    proposals = list(first_at_seq.values())
    assert [p.seq for p in proposals] == [1, 2, 3]
    cluster.crash(0)
    cluster.tick_until(lambda: all(cluster.nodes[r].view == 1 and cluster.nodes[r].view_active for r in (1, 2, 3)), 300)
    (nv,) = cluster.sent_of(1, NewView)
    assert [p.seq for p in nv.pre_prepares] == [1, 2, 3]
    assert nv.pre_prepares[0].proposal == proposals[0].proposal
    assert nv.pre_prepares[1].proposal.is_null
    assert nv.pre_prepares[2].proposal == proposals[2].proposal
    cluster.tick_until(lambda: all(requests[1].key in cluster.nodes[r].state.executed for r in (1, 2, 3)), 300)
    for r in (1, 2, 3):
        keys = cluster.committed_requests(r)
        assert sorted(keys) == sorted(req.key for req in requests) and len(keys) == 3
        assert [b.proposal.is_null for b in cluster.committed[r]][:3] == [False, True, False]
        assert cluster.nodes[r].state.executed[requests[1].key][0] > 3


@pytest.mark.parametrize("tamper", ["drop-prepared-batch", "change-prepared-content"])
def test_backups_reject_a_new_view_that_changes_a_prepared_batch(tamper: str) -> None:
    """4.4: backups check NEW-VIEW by recomputing it from the view changes it carries; one
    that does not re-propose a prepared batch with its content is rejected."""
    cluster = Cluster()
    pp, request = _prepared_then_primary_crashes(cluster)
    held = cluster.hold(matching(NewView, to=2))
    cluster.tick_until(lambda: len(cluster.held) > 0, 200)
    genuine = cluster.held[0].message
    assert isinstance(genuine, NewView)
    config = cluster.config
    if tamper == "drop-prepared-batch":
        replacement = null_pre_prepare(config, 1, 1, 1)
    else:
        # same header, a proposal missing its leaf (the header no longer matches it)
        replacement = PrePrepare(1, config.epoch, genuine.pre_prepares[0].header, Proposal((), ()), genuine.pre_prepares[0].signature)
    forged = new_view(config, 1, 1, genuine.view_changes, (replacement,))
    node = cluster.nodes[2]
    assert (node.view, node.view_active) == (1, False)
    before = fingerprint(node)
    with pytest.raises(ByzantineMessageError) as info:
        cluster.step(2, forged, via=1)
    assert (info.value.sender, info.value.kind) == (1, "bad-new-view")
    assert fingerprint(node) == before
    cluster.release(held)
    cluster.settle()
    assert node.view_active and node.view == 1
    cluster.tick_until(lambda: request.key in node.state.executed, 100)
    assert cluster.committed[2][0].proposal == pp.proposal


def test_batch_committed_at_one_replica_keeps_its_content_after_a_view_change() -> None:
    """4.4 (safety across views): a request committed at some correct replica in view v is
    committed with the same sequence number and content at every replica after the change."""
    cluster = Cluster()
    cluster.drop(lambda e: isinstance(e.message, Commit) and e.message.view == 0 and e.to != 3)
    # replica 3 could also hand its committed batch over by state transfer, which would settle
    # it without a view change; keep that path closed so the view change has to carry it
    cluster.drop(lambda e: isinstance(e.message, StateReply))
    request = cluster.new_request()
    cluster.submit(request)
    cluster.settle()
    (early,) = cluster.committed[3]
    assert early.header.view == 0 and all(cluster.committed[r] == [] for r in (0, 1, 2))
    cluster.crash(0)
    cluster.tick_until(lambda: all(request.key in cluster.nodes[r].state.executed for r in (1, 2)), 300)
    for r in (1, 2):
        (late,) = cluster.committed[r]
        assert late.header.view == 1
        assert late.header.seq == early.header.seq
        assert late.header.batch_digest == early.header.batch_digest
        assert late.proposal == early.proposal
    # and the group carries on in the new view, replica 3 included
    after = cluster.serve_one(to=[1, 2, 3])
    for r in (1, 2, 3):
        assert cluster.committed_requests(r) == [request.key, after.key]


def test_view_change_after_a_stable_checkpoint_starts_from_it() -> None:
    """4.4: VIEW-CHANGE carries the sender's last stable checkpoint with its 2f+1 proof; the
    NEW-VIEW starts above the latest checkpoint among them (min-s) and re-proposes what was
    prepared beyond it; a replica whose state is behind that checkpoint fetches it."""
    cluster = Cluster()
    k = cluster.params.checkpoint_interval_batches
    cut = cluster.isolate(3)
    for _ in range(k):
        cluster.serve_one(to=[0, 1, 2])
    assert [cluster.nodes[r].low for r in range(4)] == [k, k, k, 0]
    cluster.drop_rules.remove(cut)
    pp, request = _prepared_then_primary_crashes(cluster, k + 1)
    cluster.tick_until(lambda: all(request.key in cluster.nodes[r].state.executed for r in (1, 2, 3)), 500)
    for r in (1, 2):
        (vc,) = cluster.sent_of(r, ViewChange)
        assert vc.stable_seq == k and len({c.sender for c in vc.checkpoint_proof}) == cluster.config.quorum_size
        assert [p.pre_prepare.seq for p in vc.prepared] == [k + 1]
    (nv,) = cluster.sent_of(1, NewView)
    assert [p.seq for p in nv.pre_prepares] == [k + 1]
    assert nv.pre_prepares[0].proposal == pp.proposal
    assert any(e.kind == "state-installed" for e in cluster.events[3])
    digests = {cluster.nodes[r].state.state_digest() for r in (1, 2, 3)}
    assert len(digests) == 1


def test_backup_given_another_pre_prepare_than_the_quorum_executes_what_the_quorum_committed() -> None:
    """4.2 / 4.5: a faulty primary sends one backup a different pre-prepare for (v, n); the
    others commit theirs with 2f+1 commits, and the odd backup, unable to prepare, ends up
    executing the batch the quorum committed (the same digest everywhere)."""
    cluster = Cluster()
    cluster.drop(lambda e: isinstance(e.message, PrePrepare) and e.to == 3 and e.message.seq == 1)
    request = cluster.new_request()
    cluster.submit(request)
    cluster.settle()
    other = null_pre_prepare(cluster.config, 0, 0, 1)
    cluster.step(3, other, via=0)
    cluster.settle()
    assert [cluster.nodes[r].executed_seq for r in range(4)] == [1, 1, 1, 0]
    assert [p.batch_digest for p in cluster.sent_of(3, Prepare)] == [other.header.batch_digest]
    assert cluster.sent_of(3, Commit) == []
    cluster.tick_until(lambda: cluster.nodes[3].executed_seq == 1, 300)
    assert {cluster.committed[r][0].header.batch_digest for r in range(4)} == {cluster.committed[0][0].header.batch_digest}
    assert cluster.committed_requests(3) == [request.key]
    after = cluster.serve_one()
    assert all(cluster.committed_requests(r) == [request.key, after.key] for r in range(4))


def test_a_request_in_a_pre_prepare_the_quorum_did_not_commit_is_ordered_later_in_the_same_view() -> None:
    """4.2 / 4.5: the primary's batch with request X reaches one backup only, and a quorum
    commits another batch (null) for that seq. The primary and that backup execute the
    quorum's batch by state transfer; X was not ordered there, so X stays eligible: the primary
    proposes it at the next seq and every replica accepts it, with no view change (n = 7)."""
    cluster = Cluster(n=7)
    cluster.drop(lambda e: isinstance(e.message, PrePrepare) and e.message.seq == 1 and e.to != 6)
    request = cluster.new_request()
    cluster.submit(request)
    cluster.settle()
    assert [len(p.proposal.entries) for p in cluster.sent_of(0, PrePrepare)] == [1]
    other = null_pre_prepare(cluster.config, 0, 0, 1)
    for r in range(1, 6):
        cluster.step(r, other, via=0)
    cluster.settle()
    assert [node.executed_seq for node in cluster.nodes.values()] == [0, 1, 1, 1, 1, 1, 0]
    cluster.tick_until(lambda: all(request.key in node.state.executed for node in cluster.nodes.values()), 600)
    assert all(node.state.executed[request.key][0] == 2 for node in cluster.nodes.values())
    assert all(node.view == 0 for node in cluster.nodes.values())
    assert cluster.rejected_kinds() == []


def test_f_faulty_primaries_in_a_row_are_replaced_with_n_7() -> None:
    """4.4 / 4.5.2 with f = 2: when the primaries of view 0 and of view 1 are both down, the
    group moves on to view 2 and commits there with 2f+1 = 5 replicas."""
    cluster = Cluster(n=7)
    first = cluster.serve_one()
    cluster.crash(0)
    cluster.crash(1)
    second = cluster.serve_one(to=range(2, 7))
    for r in range(2, 7):
        node = cluster.nodes[r]
        assert node.view == 2 and node.primary == 2
        assert cluster.committed_requests(r) == [first.key, second.key]
        assert len(cluster.committed[r][-1].commits) == 5
    assert cluster.rejections == []


# =====================================================================================
# 4.5.2 liveness
# =====================================================================================


def test_replica_joins_the_smallest_later_view_once_f_plus_1_ask_for_later_views() -> None:
    """4.5.2: a replica that receives f+1 valid VIEW-CHANGEs for views greater than its own
    sends a VIEW-CHANGE for the smallest of them, even though its own timer has not expired."""
    cluster = Cluster()
    node = cluster.nodes[3]
    cluster.step(3, view_change(cluster.config, 1, 2), via=1)
    assert (node.view, node.view_active) == (0, True), "one replica asking is not enough"
    cluster.step(3, view_change(cluster.config, 2, 3), via=2)
    assert (node.view, node.view_active) == (2, False)
    (vc,) = cluster.sent_of(3, ViewChange)
    assert vc.new_view == 2


def test_view_change_timer_doubles_after_each_failed_view_change() -> None:
    """4.5.2: if the timer of view v+1 expires before a NEW-VIEW arrives, the replica starts
    the change to v+2 but waits twice as long; with fewer than 2f+1 view changes for its view
    it does not give up on it, it repeats its own."""
    cluster = Cluster()
    config = cluster.config
    timeout = cluster.params.view_change_timeout_ticks
    node = cluster.nodes[3]

    def tick_alone(count: int) -> None:
        for _ in range(count):
            node.tick()
            cluster.drain(3)

    cluster.step(3, view_change(config, 0, 1), via=0)
    cluster.step(3, view_change(config, 1, 1), via=1)  # f+1: join view 1, 2f+1 with our own
    assert node.view == 1
    tick_alone(timeout - 1)
    assert node.view == 1
    tick_alone(1)
    assert node.view == 2  # replica 1 never sent NEW-VIEW
    cluster.step(3, view_change(config, 0, 2), via=0)
    cluster.step(3, view_change(config, 1, 2), via=1)
    tick_alone(2 * timeout - 1)
    assert node.view == 2
    tick_alone(1)
    assert node.view == 3
    # view 3: only our own view change; we wait 4T, then repeat it instead of moving on
    sent_before = len(cluster.sent_of(3, ViewChange))
    tick_alone(4 * timeout)
    assert node.view == 3
    repeats = [vc for vc in cluster.sent_of(3, ViewChange)[sent_before:] if vc.new_view == 3]
    assert repeats


# =====================================================================================
# state transfer (4.3 "a replica ... fetches the state"; the full protocol is in Castro's
# thesis and the TOCS 2002 paper, section 5.3)
# =====================================================================================


def test_partitioned_replica_catches_up_by_state_transfer_and_takes_part_again() -> None:
    """4.3 / state transfer: a replica cut off past a stable checkpoint fetches the checkpoint
    (snapshot plus its quorum proof) and the committed batches after it, verifies them, reaches
    the group's state and then counts towards quorums again."""
    cluster = Cluster()
    k = cluster.params.checkpoint_interval_batches
    cut = cluster.isolate(3)
    served = [cluster.serve_one(to=[0, 1, 2]) for _ in range(3 * k + 1)]
    assert cluster.nodes[0].low == 3 * k and cluster.nodes[3].executed_seq == 0
    cluster.drop_rules.remove(cut)
    for request in served:
        cluster.submit(request, to=[3])
    fresh = cluster.new_request()
    cluster.submit(fresh)
    cluster.settle()
    node = cluster.nodes[3]
    cluster.tick_until(lambda: node.executed_seq == cluster.nodes[0].executed_seq and fresh.key in node.state.executed, 500)
    assert node.state.state_digest() == cluster.nodes[0].state.state_digest()
    assert all(request.key in node.state.executed for request in served)
    assert any(e.kind == "state-installed" for e in cluster.events[3])
    assert any(b.via_state_transfer for b in cluster.committed[3])
    # it takes part again: with replica 2 cut off, nothing commits without replica 3
    cluster.isolate(2)
    after = cluster.serve_one(to=[0, 1, 3])
    assert all(after.key in cluster.nodes[r].state.executed for r in (0, 1, 3))
    last = cluster.committed[0][-1]
    assert 3 in {c.sender for c in last.commits}


def test_replica_behind_the_window_catches_up_without_leaving_the_view() -> None:
    """4.3 / state transfer: a replica that missed a stable checkpoint while cut off learns of it
    and fetches the state soon after the partition heals, without timing out into a view change
    that the rest of the group does not need (which would keep it out of the current view)."""
    cluster = Cluster()
    k = cluster.params.checkpoint_interval_batches
    cut = cluster.isolate(3)
    for _ in range(3 * k + 1):
        cluster.serve_one(to=[0, 1, 2])
    cluster.drop_rules.remove(cut)
    fresh = cluster.new_request()
    cluster.submit(fresh)
    cluster.settle()
    node = cluster.nodes[3]
    cluster.tick_until(lambda: fresh.key in node.state.executed, cluster.params.view_change_timeout_ticks)
    assert (node.view, node.view_active) == (0, True)
    assert not any(e.kind == "view-change" for e in cluster.events[3])


@pytest.mark.parametrize("tamper", ["checkpoint-signature", "snapshot-content", "commit-signature", "too-few-commits", "batch-content"])
def test_state_reply_with_forged_proof_is_rejected(tamper: str) -> None:
    """4.3 / state transfer: the fetched checkpoint must carry 2f+1 valid signatures over the
    recomputed state digest, and each fetched batch a valid commit quorum; otherwise the reply
    is rejected naming the replica that sent it, and the requester is unchanged."""
    cluster = Cluster()
    k = cluster.params.checkpoint_interval_batches
    cluster.isolate(3)
    for _ in range(k + 1):
        cluster.serve_one(to=[0, 1, 2])
    cluster.heal()
    cluster.step(0, FetchState(3, 0), via=3)
    reply = cluster.sent_of(0, StateReply)[-1]
    assert reply.snapshot is not None and reply.snapshot.seq == k and len(reply.batches) == 1
    if tamper == "checkpoint-signature":
        forged = StateReply(0, reply.snapshot, (flip_signature(reply.checkpoint_proof[0]),) + reply.checkpoint_proof[1:], reply.batches)
    elif tamper == "snapshot-content":
        snapshot = reply.snapshot
        fewer = type(snapshot)(snapshot.seq, snapshot.chain_digest, snapshot.executed[1:], snapshot.versions, snapshot.scheduled)
        forged = StateReply(0, fewer, reply.checkpoint_proof, reply.batches)
    else:
        proof = reply.batches[0]
        if tamper == "commit-signature":
            bad = type(proof)(proof.pre_prepare, (flip_signature(proof.commits[0]),) + proof.commits[1:])
        elif tamper == "too-few-commits":
            bad = type(proof)(proof.pre_prepare, proof.commits[1:])
        else:
            bad = type(proof)(replace(proof.pre_prepare, proposal=Proposal((), ())), proof.commits)
        forged = StateReply(0, None, (), (bad,))
        # the replica first installs the genuine checkpoint, then gets a forged batch after it
        cluster.step(3, StateReply(0, reply.snapshot, reply.checkpoint_proof, ()), via=0)
        assert cluster.nodes[3].executed_seq == k
    node = cluster.nodes[3]
    before = fingerprint(node)
    with pytest.raises(ByzantineMessageError) as info:
        cluster.step(3, forged, via=0)
    assert (info.value.sender, info.value.kind) == (0, "bad-state")
    assert fingerprint(node) == before
    cluster.step(3, reply, via=0)
    assert node.executed_seq == k + 1
    assert node.state.state_digest() == cluster.nodes[0].state.state_digest()


def test_a_snapshot_learned_across_a_membership_change_is_handed_on_with_the_new_config() -> None:
    """State transfer across an epoch change: a snapshot taken after a membership change names
    the new config, which a replica that missed the change learns from the config link carried
    in the same reply. A replica that learned it that way must carry the link when it serves
    the snapshot in turn; otherwise the next replica behind rejects it and blames a correct
    peer (n = 7: replica 4 leaves while replicas 5 and 6 are cut off, so the snapshot is the
    one that closes epoch 0)."""
    cluster = Cluster(n=7)
    for r in (5, 6):
        cluster.isolate(r)
    # the members' signatures on the new config are still on their way: the link a snapshot
    # carries has fewer than a quorum, and the snapshot's checkpoint proof vouches for it
    cluster.drop(lambda e: isinstance(e.message, ConfigSignature))
    change = cluster.submit_leave(4, to=range(5))
    while cluster.nodes[0].low < change.seq:  # the checkpoint that closes epoch 0
        cluster.serve_one(to=range(4))
    assert cluster.nodes[0].config.epoch == 1
    first, second = cluster.nodes[5], cluster.nodes[6]
    cluster.step(0, FetchState(5, first.executed_seq), via=5)
    cluster.step(5, cluster.sent_of(0, StateReply)[-1], via=0)
    assert first.config.epoch == 1 and first.low == cluster.nodes[0].low
    cluster.step(5, FetchState(6, second.executed_seq), via=6)
    reply = cluster.sent_of(5, StateReply)[-1]
    assert reply.snapshot is not None and [link.config.epoch for link, _ in reply.config_links] == [1]
    cluster.step(6, reply, via=5)
    assert second.config.epoch == 1 and not second.config.is_member(4)
    assert second.state.state_digest() == first.state.state_digest()


def test_signatures_on_a_new_config_lost_on_the_way_are_gossiped_until_every_member_holds_a_quorum() -> None:
    """Each replica broadcasts its signature on the next config once. Lost (or arriving before
    its receiver reached the epoch), each replica was left short of a quorum for good, and could
    not vouch for the new config to clients or to a replica catching up."""
    cluster = Cluster(n=7)
    lost = cluster.drop(lambda e: isinstance(e.message, ConfigSignature))
    cluster.submit_leave(4, to=range(7))
    cluster.tick_until(lambda: all(node.config.epoch == 1 for node in cluster.nodes.values()))
    cluster.tick(2 * cluster.params.relay_timeout_ticks)  # gossip rounds, lost as well
    assert all(len(node.config_signatures[1]) == 1 for node in cluster.nodes.values())  # its own
    cluster.drop_rules.remove(lost)
    quorum = cluster.config.quorum_size  # of epoch 0, whose members vouch for epoch 1
    cluster.tick(2 * cluster.params.relay_timeout_ticks)
    assert all(len(cluster.nodes[r].config_signatures[1]) >= quorum for r in (0, 1, 2, 3, 5, 6))


def _epoch_change_without_replica_5_or_config_signatures() -> Cluster:
    """n = 7: replica 4 leaves while replica 5 is cut off and every signature on the new config
    is lost; the others go on until their stable checkpoint is one of epoch 1."""
    cluster = Cluster(n=7)
    cluster.isolate(5)
    cluster.drop(lambda e: isinstance(e.message, ConfigSignature))
    cluster.submit_leave(4, to=(0, 1, 2, 3, 6))
    while not (cluster.nodes[0].stable_proof and cluster.nodes[0].stable_proof[0].epoch == 1):
        cluster.serve_one(to=(0, 1, 2, 3, 6))
    return cluster


def test_a_replica_behind_an_epoch_change_pools_the_config_signatures_its_peers_hold() -> None:
    """A replica that missed a membership change catches up from snapshots of the new epoch,
    which it can check only once it knows the new config. Its peers each held too few of the
    signatures on it to vouch for it alone (here: one each); together they hold a quorum."""
    cluster = _epoch_change_without_replica_5_or_config_signatures()
    behind = cluster.nodes[5]
    assert behind.config.epoch == 0
    peers = (0, 1, 2, 3, 6)  # each serves a snapshot of epoch 1 and its own signature only
    for i, peer in enumerate(peers):
        assert len(cluster.nodes[peer].config_signatures[1]) == 1
        cluster.step(peer, FetchState(5, behind.executed_seq), via=5)
        cluster.step(5, cluster.sent_of(peer, StateReply)[-1], via=peer)
        # a quorum of epoch 0 is 5 signatures: the fifth reply brings the last one
        assert behind.config.epoch == (1 if i == len(peers) - 1 else 0)
    assert behind.low == cluster.nodes[0].low
    assert behind.state.state_digest() == cluster.nodes[0].state.state_digest()


def test_a_forged_signature_in_a_short_config_link_is_blamed_on_the_peer_and_pooled_nowhere() -> None:
    cluster = _epoch_change_without_replica_5_or_config_signatures()
    behind = cluster.nodes[5]
    cluster.step(0, FetchState(5, behind.executed_seq), via=5)
    reply = cluster.sent_of(0, StateReply)[-1]
    (link, start_seq), = reply.config_links
    (own,) = link.signatures
    forged_link = replace(link, signatures=(replace(own, replica_id=2),))  # 0's signature, claimed as 2's
    forged = replace(reply, sender=6, config_links=((forged_link, start_seq),))
    with pytest.raises(ByzantineMessageError) as info:
        cluster.step(5, forged, via=6)
    assert (info.value.sender, info.value.kind) == (6, "bad-state")
    assert behind.pooled_links == {}


def test_replica_alone_in_a_later_view_after_missing_the_last_commits_catches_up_by_fetching() -> None:
    """4.4 / state transfer: a replica that lost the COMMITs of the group's last batch, and whose
    fetch before accusing went unanswered, asks for a view change nobody joins: the group has
    no work left, so no checkpoint or retransmission will ever show it the batch. Each time its
    view change times out short of a quorum it asks a peer for committed batches again, so it
    executes the batch and its client gets the certified answer. It stays in the view it signed
    a VIEW-CHANGE for (leaving it would break the promise that VIEW-CHANGE made), and nobody else
    is dragged into a view change."""
    cluster = Cluster()
    timeout = cluster.params.view_change_timeout_ticks
    lost_commits = cluster.drop(matching(Commit, to=3))
    lost_fetches = cluster.drop(matching(FetchState, via=3))
    request = cluster.new_request()
    cluster.submit(request)
    cluster.settle()
    node = cluster.nodes[3]
    cluster.tick_until(lambda: node.view == 1, 3 * timeout)
    cluster.tick(3 * cluster.params.relay_timeout_ticks)  # its fetch has asked every peer in vain
    assert all(request.key in cluster.nodes[r].state.executed for r in (0, 1, 2))
    assert request.key not in node.state.executed and not node.view_active
    cluster.drop_rules.remove(lost_commits)
    cluster.drop_rules.remove(lost_fetches)
    cluster.tick_until(lambda: request.key in node.state.executed, 2 * timeout)
    assert node.state.state_digest() == cluster.nodes[0].state.state_digest()
    assert any(request.key in [(e.leaf.client_id, e.leaf.request_id) for e in b.proposal.entries] for b in cluster.committed[3])
    assert node.view == 1
    assert all((cluster.nodes[r].view, cluster.nodes[r].view_active) == (0, True) for r in (0, 1, 2))


def test_a_stalled_request_gets_a_fetch_before_accusing_the_primary_in_every_view() -> None:
    """4.4 / state transfer: the fetch a backup makes before accusing the primary is made again
    in each new view. Replicas 2 and 3 miss the COMMITs of a batch and cannot fetch, so they ask
    for view 1 and the group moves there; replica 3 keeps missing COMMITs. When its request
    stalls again in view 1 it asks a peer (who answers now) and executes the batch, instead of
    accusing the new, correct primary on the strength of the fetch it made in view 0 and moving
    to view 2 alone."""
    cluster = Cluster()
    timeout = cluster.params.view_change_timeout_ticks
    cluster.drop(matching(Commit, to=3))
    lost_commits_2 = cluster.drop(matching(Commit, to=2))
    lost_fetches = cluster.drop(lambda e: isinstance(e.message, FetchState) and e.via in (2, 3))
    request = cluster.new_request()
    cluster.submit(request)
    cluster.settle()
    cluster.tick_until(lambda: all(cluster.nodes[r].view == 1 for r in (2, 3)), 3 * timeout)
    cluster.drop_rules.remove(lost_commits_2)
    cluster.tick_until(lambda: all((cluster.nodes[r].view, cluster.nodes[r].view_active) == (1, True) for r in range(4)), 3 * timeout)
    cluster.tick(3 * cluster.params.relay_timeout_ticks)  # the fetches made in view 0 have run out
    node = cluster.nodes[3]
    assert request.key not in node.state.executed
    cluster.drop_rules.remove(lost_fetches)
    cluster.tick_until(lambda: request.key in node.state.executed, 3 * timeout)
    assert node.state.state_digest() == cluster.nodes[0].state.state_digest()
    assert (node.view, node.view_active) == (1, True)
    assert not [e for e in cluster.events[3] if e.kind == "view-change" and "view 2" in e.detail]


# =====================================================================================
# restart (4.2 / 4.4: messages are logged before they are sent, so a recovered replica
# never contradicts what it signed)
# =====================================================================================


def _signed_contents(cluster: Cluster, r: int) -> dict[tuple[str, int, int], set[bytes]]:
    out: dict[tuple[str, int, int], set[bytes]] = defaultdict(set)
    for m in cluster.sent[r]:
        if isinstance(m, PrePrepare):
            out[("pre-prepare", m.view, m.seq)].add(m.header.batch_digest)
        elif isinstance(m, (Prepare, Commit)):
            out[(type(m).__name__, m.view, m.seq)].add(m.batch_digest)
    return out


def test_restarted_primary_never_signs_another_pre_prepare_for_a_slot() -> None:
    """4.2 / 4.4, restart: a primary that signed a pre-prepare and crashed before it left recovers it from
    its log, sends that one again and proposes new requests at later sequence numbers."""
    cluster = Cluster()
    lost = cluster.drop(lambda e: e.via == 0 and isinstance(e.message, PrePrepare))
    first = cluster.new_request()
    cluster.submit(first)
    cluster.settle()
    (signed,) = cluster.sent_of(0, PrePrepare)
    cluster.crash(0)
    cluster.drop_rules.remove(lost)
    node = cluster.restart(0)
    assert node.next_seq == 2
    second = cluster.new_request()
    cluster.submit(second)
    cluster.settle()
    cluster.tick_until(lambda: all(second.key in cluster.nodes[r].state.executed for r in range(4)), 300)
    assert all(len(digests) == 1 for digests in _signed_contents(cluster, 0).values())
    for r in range(4):
        assert cluster.committed_requests(r)[:1] == [first.key]
        assert cluster.committed[r][0].header.batch_digest == signed.header.batch_digest


def test_restarted_backup_never_prepares_or_commits_another_batch_for_a_slot() -> None:
    """4.2 / 4.4, restart: a backup that prepared and committed a batch at (v, n) and recovered from its
    log refuses to sign a PREPARE or COMMIT for a different batch at (v, n), even when faulty
    peers present one with enough matching prepares."""
    cluster = Cluster()
    cluster.hold(matching(Commit, to=1))
    cluster.submit(cluster.new_request())
    cluster.settle()
    pp = _first_proposal(cluster)
    assert len(cluster.sent_of(1, Commit)) == 1 and cluster.committed[1] == []
    cluster.crash(1)
    cluster.held.clear()
    cluster.hold_rules.clear()
    cluster.restart(1)
    other = null_pre_prepare(cluster.config, 0, 0, 1)
    assert other.header.batch_digest != pp.header.batch_digest
    sent_before = len(cluster.sent[1])
    for message in (other, prepare(cluster.config, 2, 0, 1, other.header.batch_digest), prepare(cluster.config, 3, 0, 1, other.header.batch_digest)):
        cluster.step(1, message, via=message.sender)
    assert not any(isinstance(m, (Prepare, Commit)) for m in cluster.sent[1][sent_before:])
    signed = _signed_contents(cluster, 1)
    assert signed[("Prepare", 0, 1)] == {pp.header.batch_digest}
    assert signed[("Commit", 0, 1)] == {pp.header.batch_digest}


def test_restarted_replica_keeps_its_vote_batch_numbering() -> None:
    """4.2 / 4.4, restart: vote batch numbers are a signed slot too; after recovery a replica continues
    above every number it may have signed (numbers are reserved on disk in blocks, so a vote
    batch needs no write of its own), so peers never see two batches under one number."""
    cluster = Cluster()
    for _ in range(2):
        cluster.serve_one()
    numbers = [b.batch_no for b in cluster.sent_of(2, VoteBatch)]
    assert numbers == [1, 2]
    cluster.crash(2)
    node = cluster.restart(2)
    assert node.vote_batch_no >= 2
    cluster.serve_one()
    later = [b.batch_no for b in cluster.sent_of(2, VoteBatch)][2:]
    assert later and min(later) > max(numbers) and later == sorted(set(later))
    assert not [k for k in cluster.rejected_kinds() if k[2] == "equivocation"]


def test_replica_restarted_during_a_view_change_sends_the_same_view_change() -> None:
    """4.2 / 4.4, restart: a replica that signed VIEW-CHANGE for view v+1 and crashed comes back in the
    view change to v+1 with the very same message, and the change completes."""
    cluster = Cluster()
    pp, request = _prepared_then_primary_crashes(cluster)
    cluster.hold(matching(ViewChange, via=2))
    cluster.tick_until(lambda: cluster.nodes[2].view == 1, 200)
    (signed,) = cluster.sent_of(2, ViewChange)
    cluster.crash(2)
    cluster.held.clear()
    cluster.hold_rules.clear()
    node = cluster.restart(2)
    assert (node.view, node.view_active) == (1, False)
    cluster.tick_until(lambda: all(request.key in cluster.nodes[r].state.executed for r in (1, 2, 3)), 500)
    assert {vc.content() for vc in cluster.sent_of(2, ViewChange) if vc.new_view == 1} == {signed.content()}
    assert cluster.committed[2][-1].proposal == pp.proposal


def test_replica_restarted_after_checkpoints_rejoins_with_the_same_state() -> None:
    """4.2 / 4.4, restart: from its stable checkpoint (stored incrementally) and the batches committed
    after it, a replica rebuilds the state the group has, and counts towards quorums again."""
    cluster = Cluster()
    k = cluster.params.checkpoint_interval_batches
    for _ in range(2 * k + 2):
        cluster.serve_one()
    reference = cluster.nodes[0].state.state_digest()
    cluster.crash(2)
    node = cluster.restart(2)
    assert node.executed_seq == 2 * k + 2 and node.low == 2 * k
    assert node.state.state_digest() == reference
    cluster.isolate(3)
    after = cluster.serve_one(to=[0, 1, 2])
    assert 2 in {c.sender for c in cluster.committed[0][-1].commits}
    assert after.key in node.state.executed
    assert node.state.state_digest() == cluster.nodes[0].state.state_digest()


def test_whole_group_restart_resumes_where_it_stopped() -> None:
    """4.2 / 4.4, restart: every replica crashes at once and recovers from its own log; nothing committed
    is lost or executed again and new requests commit."""
    cluster = Cluster()
    served = [cluster.serve_one() for _ in range(cluster.params.checkpoint_interval_batches + 1)]
    for r in range(4):
        cluster.crash(r)
    cluster.queue.clear()
    for r in range(4):
        cluster.restart(r)
    assert {cluster.nodes[r].state.state_digest() for r in range(4)} == {cluster.nodes[0].state.state_digest()}
    for request in served:
        assert cluster.submit(request)[1].status == "executed"
    after = cluster.serve_one()
    for r in range(4):
        assert cluster.committed_requests(r) == [req.key for req in served] + [after.key]


def test_replica_that_missed_a_view_change_joins_the_view_its_fetched_batches_were_committed_in() -> None:
    """4.3 / 4.4: a replica cut off while the others changed view catches up by state transfer
    when the partition heals; the fetched batches' commit quorums (2f+1 signed COMMITs in the
    later view) show that correct replicas work in that view, so it joins it at once instead of
    staying in its old view until new traffic reaches it."""
    cluster = Cluster()
    cut = cluster.isolate(0)  # the primary of view 0
    first = cluster.serve_one(to=[1, 2, 3], ticks_max=4 * cluster.params.view_change_timeout_ticks)
    for _ in range(cluster.params.checkpoint_interval_batches):  # a checkpoint, then batches after it
        cluster.serve_one(to=[1, 2, 3])
    assert all(cluster.nodes[r].view == 1 and first.key in cluster.nodes[r].state.executed for r in (1, 2, 3))
    cluster.drop_rules.remove(cut)
    node = cluster.nodes[0]
    assert node.view == 0 and node.executed_seq == 0
    cluster.step(1, FetchState(0, node.executed_seq), via=0)
    reply = cluster.sent_of(1, StateReply)[-1]
    assert reply.snapshot is not None and reply.batches and all(b.pre_prepare.view == 1 for b in reply.batches)
    cluster.step(0, reply, via=1)
    assert node.executed_seq == cluster.nodes[1].executed_seq
    cluster.tick_until(lambda: node.view == 1 and node.view_active, cluster.params.relay_timeout_ticks)
    assert (node.view, node.view_active) == (1, True)
