"""consensus/state.py: executing committed batches, exactly-once, model-version activations,
and snapshots (incremental, merged, digested, restored)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certs.batch import BatchHeader, Leaf, model_versions_digest
from certs.encoding import sha256
from certs.policy import NO_AGREEMENT, AgreementPolicy, Decision

from consensus.messages import ModelUpdate, Proposal, ProposalEntry, StateSnapshot
from consensus.state import ReplicatedState, merge_snapshots, snapshot_digest
from tests.consensus.cluster import header_for, model_update, unit_params
from tests.sim.world import make_config

CONFIG = make_config(4, AgreementPolicy(), unit_params())
WINDOW = CONFIG.params.log_window_batches


def _entry(client_id: str, request_id: str) -> ProposalEntry:
    leaf = Leaf(sha256(f"{client_id}/{request_id}".encode()), client_id, request_id, (), "plurality(min_support=2)", (), Decision(NO_AGREEMENT, (), ()))
    return ProposalEntry(leaf, ())


def _batch(seq: int, keys: Sequence[tuple[str, str]] = (), ops: Sequence[ModelUpdate] = ()) -> tuple[BatchHeader, Proposal]:
    proposal = Proposal(tuple(_entry(c, r) for c, r in keys), tuple(ops))
    return header_for(CONFIG, 0, seq, proposal), proposal


def _run(batches: Sequence[tuple[Sequence[tuple[str, str]], Sequence[ModelUpdate]]]) -> ReplicatedState:
    state = ReplicatedState(CONFIG)
    for seq, (keys, ops) in enumerate(batches, start=1):
        state.apply(*_batch(seq, keys, ops))
    return state


# =====================================================================================
# apply
# =====================================================================================


def test_apply_records_each_request_with_its_seq_and_advances() -> None:
    state = ReplicatedState(CONFIG)
    applied = state.apply(*_batch(1, [("a", "1"), ("b", "1")]))
    assert (applied.duplicates, applied.activations, applied.new_config) == ([], [], None)
    state.apply(*_batch(2, [("a", "2")]))
    assert state.seq == 2
    assert {key: seq for key, (seq, _) in state.executed.items()} == {("a", "1"): 1, ("b", "1"): 1, ("a", "2"): 2}


@pytest.mark.parametrize("seq", [1, 3, 4])
def test_apply_out_of_order_raises_and_changes_nothing(seq: int) -> None:
    state = _run([([("a", "1")], ())])  # executed seq 1; only seq 2 may come next
    before = state.state_digest()
    with pytest.raises(ValueError, match="out of order"):
        state.apply(*_batch(seq, [("b", "1")]))
    assert state.state_digest() == before and state.seq == 1


def test_a_request_seen_again_is_a_duplicate_and_keeps_its_first_seq() -> None:
    state = _run([([("a", "1")], ())])
    before_hash = state.summary().executed_hash
    duplicates = state.apply(*_batch(2, [("b", "1"), ("a", "1"), ("b", "1")])).duplicates
    assert duplicates == [1, 2]  # across batches and within one
    assert state.executed[("a", "1")][0] == 1 and state.executed[("b", "1")][0] == 2
    assert state.summary().executed_hash != before_hash  # ("b", "1") was new


def test_chain_digest_commits_to_the_order_of_batches() -> None:
    one = _run([([("a", "1")], ()), ([("b", "1")], ())])
    same = _run([([("a", "1")], ()), ([("b", "1")], ())])
    other = _run([([("b", "1")], ()), ([("a", "1")], ())])
    assert one.chain_digest == same.chain_digest and one.state_digest() == same.state_digest()
    assert one.chain_digest != other.chain_digest and one.state_digest() != other.state_digest()


# =====================================================================================
# model versions
# =====================================================================================


def test_model_update_ordered_at_t_takes_effect_at_t_plus_window() -> None:
    op = model_update(CONFIG, 2, 2)
    state = ReplicatedState(CONFIG)
    genesis = dict(state.versions)
    t = 3
    for seq in range(1, t):
        state.apply(*_batch(seq))
    activations = state.apply(*_batch(t, ops=[op])).activations
    assert activations == []
    assert state.latest_version(2) == 2 and state.versions[2] == genesis[2]
    assert state.versions_at(t + WINDOW - 1)[2] == genesis[2]
    assert state.versions_at(t + WINDOW)[2] == (2, op.weights_digest)
    before = state.versions_digest_at(t + WINDOW - 1)
    after = state.versions_digest_at(t + WINDOW)
    assert before != after
    assert after == model_versions_digest([(rid, v, wd) for rid, (v, wd) in state.versions_at(t + WINDOW).items()])
    for seq in range(t + 1, t + WINDOW - 1):
        assert state.apply(*_batch(seq)).activations == []
    # executing the batch just before t + W makes the new version the one in effect for t + W
    activations = state.apply(*_batch(t + WINDOW - 1)).activations
    assert activations == [(2, 2, op.weights_digest, t + WINDOW)]
    assert state.versions[2] == (2, op.weights_digest) and state.scheduled == []


@pytest.mark.parametrize("version", [1, 2])
def test_an_update_to_a_version_already_known_is_ignored(version: int) -> None:
    state = _run([((), [model_update(CONFIG, 2, 2)])])
    scheduled = list(state.scheduled)
    state.apply(*_batch(2, ops=[model_update(CONFIG, 2, version)]))
    assert state.scheduled == scheduled
    assert state.latest_version(2) == 2


def test_two_updates_in_flight_activate_in_order() -> None:
    state = _run([((), [model_update(CONFIG, 2, 2)]), ((), [model_update(CONFIG, 2, 3)])])
    assert state.latest_version(2) == 3
    assert state.versions_at(1 + WINDOW)[2][0] == 2
    assert state.versions_at(2 + WINDOW)[2][0] == 3
    activations = []
    for seq in range(3, 2 + WINDOW):
        activations += state.apply(*_batch(seq)).activations
    assert [(rid, v, from_seq) for rid, v, _, from_seq in activations] == [(2, 2, 1 + WINDOW), (2, 3, 2 + WINDOW)]


# =====================================================================================
# snapshots
# =====================================================================================


def test_full_snapshot_digest_restore_roundtrip() -> None:
    state = _run([([("a", "1"), ("b", "1")], [model_update(CONFIG, 1, 2)]), ([("c", "1")], ()), ([("a", "2")], ())])
    summary = state.summary()
    snapshot = state.snapshot(summary)
    assert snapshot.executed == tuple(sorted((c, r, s, d) for (c, r), (s, d) in state.executed.items()))
    assert snapshot_digest(snapshot) == summary.state_digest() == state.state_digest()
    restored = ReplicatedState.from_snapshot(CONFIG, snapshot)
    assert restored.state_digest() == state.state_digest()
    assert (restored.seq, restored.executed, restored.versions, restored.scheduled) == (
        state.seq, state.executed, state.versions, state.scheduled,
    )


def test_snapshot_digest_notices_any_change() -> None:
    state = _run([([("a", "1")], [model_update(CONFIG, 1, 2)]), ([("b", "1")], ())])
    snapshot = state.snapshot(state.summary())
    digest = snapshot_digest(snapshot)
    changed = [
        StateSnapshot(snapshot.seq + 1, snapshot.chain_digest, snapshot.executed, snapshot.versions, snapshot.scheduled),
        StateSnapshot(snapshot.seq, bytes(32), snapshot.executed, snapshot.versions, snapshot.scheduled),
        StateSnapshot(snapshot.seq, snapshot.chain_digest, snapshot.executed[1:], snapshot.versions, snapshot.scheduled),
        StateSnapshot(snapshot.seq, snapshot.chain_digest, (("a", "1", 2, snapshot.executed[0][3]),) + snapshot.executed[1:], snapshot.versions, snapshot.scheduled),
        StateSnapshot(snapshot.seq, snapshot.chain_digest, (snapshot.executed[0][:3] + (bytes(32),),) + snapshot.executed[1:], snapshot.versions, snapshot.scheduled),
        StateSnapshot(snapshot.seq, snapshot.chain_digest, snapshot.executed, snapshot.versions[1:], snapshot.scheduled),
        StateSnapshot(snapshot.seq, snapshot.chain_digest, snapshot.executed, snapshot.versions, ()),
    ]
    assert all(snapshot_digest(other) != digest for other in changed)


def test_snapshot_of_an_older_summary_ignores_later_requests() -> None:
    state = _run([([("a", "1")], ()), ([("b", "1")], ())])
    older = state.summary()
    taken_then = state.snapshot(older)
    state.apply(*_batch(3, [("c", "1")]))
    assert state.snapshot(older) == taken_then
    assert snapshot_digest(taken_then) == older.state_digest()


def test_merge_snapshots_of_nothing_raises() -> None:
    with pytest.raises(ValueError):
        merge_snapshots([])


_KEYS = st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from([str(i) for i in range(6)]))
_OPS = st.lists(st.tuples(st.integers(0, 3), st.integers(1, 4)), max_size=2)
_BATCHES = st.lists(st.tuples(st.lists(_KEYS, max_size=4), _OPS), min_size=1, max_size=3 * WINDOW)


@settings(max_examples=60, deadline=None)
@given(batches=_BATCHES, interval=st.integers(1, 5))
def test_incremental_snapshots_merge_into_the_full_one(
    batches: list[tuple[list[tuple[str, str]], list[tuple[int, int]]]], interval: int
) -> None:
    """What a replica persists at each stable checkpoint (only the requests executed since the
    previous one) folds back into the full snapshot, whose digest is the checkpoint's, and a
    replica restored from it continues exactly like the original."""
    state = ReplicatedState(CONFIG)
    parts: list[StateSnapshot] = []
    previous = 0
    for seq, (keys, op_specs) in enumerate(batches, start=1):
        ops = [model_update(CONFIG, rid, version) for rid, version in op_specs]
        state.apply(*_batch(seq, keys, ops))
        if seq % interval == 0:
            parts.append(state.snapshot(state.summary(), since_seq=previous))
            previous = seq
    if not parts:
        return
    merged = merge_snapshots(parts)
    last = parts[-1].seq
    assert merged.seq == last
    # the live state has moved on past the last checkpoint: compare with a replay up to it
    replay = _run([(k, [model_update(CONFIG, r, v) for r, v in o]) for k, o in batches[:last]])
    assert merged == replay.snapshot(replay.summary())
    assert snapshot_digest(merged) == replay.state_digest()
    restored = ReplicatedState.from_snapshot(CONFIG, merged)
    assert restored.state_digest() == replay.state_digest()
    for seq, (keys, op_specs) in enumerate(batches[last:], start=last + 1):
        ops = [model_update(CONFIG, rid, version) for rid, version in op_specs]
        assert restored.apply(*_batch(seq, keys, ops)) == replay.apply(*_batch(seq, keys, ops))
    assert restored.state_digest() == state.state_digest()


def _scanned(state: ReplicatedState, since_seq: int, through_seq: int) -> tuple[tuple[str, str, int, bytes], ...]:
    """What an incremental snapshot must list, by a pass over the whole table."""
    return tuple(sorted((c, r, s, d) for (c, r), (s, d) in state.executed.items() if since_seq < s <= through_seq))


@settings(max_examples=60, deadline=None)
@given(batches=_BATCHES, restore_at=st.integers(0, 3 * WINDOW), data=st.data())
def test_snapshot_lists_exactly_the_requests_executed_in_its_range_also_after_a_restore(
    batches: list[tuple[list[tuple[str, str]], list[tuple[int, int]]]], restore_at: int, data: st.DataObject
) -> None:
    """snapshot() walks the table back from its newest entry instead of scanning all of it, so it
    relies on the table being in execution order, including for a replica that started from a
    snapshot (whose entries are sorted by key, not by seq) and executed more batches after it."""
    keys_only = [(keys, ()) for keys, _ in batches]
    state = _run(keys_only[:restore_at])
    if 0 < restore_at <= len(batches):
        state = ReplicatedState.from_snapshot(CONFIG, state.snapshot(state.summary()))
    summaries = {state.seq: state.summary()}
    for seq, (keys, _) in enumerate(keys_only[state.seq:], start=state.seq + 1):
        state.apply(*_batch(seq, keys))
        summaries[seq] = state.summary()
    through = data.draw(st.sampled_from(sorted(summaries)), label="through")
    since = data.draw(st.integers(0, through), label="since")
    snapshot = state.snapshot(summaries[through], since_seq=since)
    assert snapshot.executed == _scanned(state, since, through)
    assert state.snapshot(summaries[through]).executed == _scanned(state, 0, through)
