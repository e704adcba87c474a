"""replica/storage.py: what a replica persisted is there after a restart or a kill -9, whole."""

from __future__ import annotations

import hashlib

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from certs.batch import BatchHeader, Leaf, VoteEntry
from certs.outputs import ModelOutput
from certs.policy import Decision, Vote
from consensus.messages import (
    Checkpoint,
    Commit,
    FetchState,
    NewView,
    PrePrepare,
    Prepare,
    Proposal,
    ProposalEntry,
    StateSnapshot,
    ViewChange,
    VoteBatch,
    VoteRef,
)
from consensus.ready import (
    Activation,
    CommittedBatch,
    CommittedRecord,
    PersistRecord,
    PreparedRecord,
    SignedRecord,
    StableCheckpointRecord,
    ViewRecord,
)
from replica.storage import CertificateRow, ReplicaStore, SlotConflictError, StorageError

ROOT = Path(__file__).resolve().parents[2]
SIG = bytes(range(64))


def d(n: int) -> bytes:
    return n.to_bytes(32, "big")


def header(seq: int, view: int = 0, root: int = 0) -> BatchHeader:
    return BatchHeader("g", 0, d(1), view, seq, d(1000 + seq + root), d(2), d(3), 0)


def leaf(request_id: str) -> Leaf:
    output = ModelOutput(((3, 9000), (1, 1000)))
    return Leaf(d(7), "alice", request_id, (), "plurality(min_support=2)", (Vote(0, 1, output), Vote(1, 1, output)), Decision(3, output.top, (0, 1)))


def proposal(seq: int) -> Proposal:
    return Proposal((ProposalEntry(leaf(f"r{seq}"), (VoteRef(0, seq), VoteRef(1, seq))),))


def pre_prepare(seq: int, view: int = 0) -> PrePrepare:
    return PrePrepare(0, 0, header(seq, view), proposal(seq), SIG)


def prepare(seq: int, view: int = 0, sender: int = 1, digest: bytes | None = None) -> Prepare:
    return Prepare(sender, 0, view, seq, digest or header(seq).batch_digest, SIG)


def commit(seq: int, sender: int = 1) -> Commit:
    return Commit(sender, 0, 0, seq, header(seq).batch_digest, SIG)


def vote_batch(batch_no: int) -> VoteBatch:
    entry = VoteEntry("alice", f"r{batch_no}", d(7), (), ModelOutput(((3, 9000),)))
    return VoteBatch(1, 0, batch_no, 1, (entry,), SIG)


def committed(seq: int, root: int = 0) -> CommittedBatch:
    return CommittedBatch(header(seq, root=root), proposal(seq), (commit(seq, 0), commit(seq, 1), commit(seq, 2)), (vote_batch(seq),), ())


def checkpoint_record(seq: int, previous_seq: int, executed: tuple[tuple[str, str, int], ...]) -> StableCheckpointRecord:
    """`executed` as (client, request, seq); each request's digest is derived from its ids."""
    entries = tuple((c, r, s, hashlib.sha256(f"{c}/{r}".encode()).digest()) for c, r, s in executed)
    snapshot = StateSnapshot(seq, d(seq), entries, ((0, 1, d(9)),), ())
    return StableCheckpointRecord(snapshot, previous_seq, tuple(Checkpoint(i, 0, seq, d(50 + seq), SIG) for i in range(3)))


def certificate(request_id: str, digest: int = 7) -> CertificateRow:
    return CertificateRow("alice", request_id, d(digest), b"cert:" + request_id.encode())


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ReplicaStore]:
    with ReplicaStore(tmp_path / "replica.db") as s:
        yield s


def test_persisted_records_come_back_in_recovery_order(store: ReplicaStore) -> None:
    signed: list[PersistRecord] = [
        SignedRecord(vote_batch(1)),
        SignedRecord(pre_prepare(1)),
        SignedRecord(prepare(1)),
        SignedRecord(commit(1)),
    ]
    store.persist([ViewRecord(0), *signed, PreparedRecord(pre_prepare(1), (prepare(1, sender=2), prepare(1, sender=3)))])
    store.persist([CommittedRecord(committed(1)), SignedRecord(Checkpoint(1, 0, 1, d(5), SIG))])

    assert store.load_records() == [
        ViewRecord(0),
        CommittedRecord(committed(1)),
        PreparedRecord(pre_prepare(1), (prepare(1, sender=2), prepare(1, sender=3))),
        *signed,
        SignedRecord(Checkpoint(1, 0, 1, d(5), SIG)),
    ]
    assert store.committed_batch(1) == committed(1)
    assert store.committed_batch(2) is None
    assert store.last_committed_seq() == 1


def test_reopened_store_recovers_everything(tmp_path: Path) -> None:
    path = tmp_path / "replica.db"
    with ReplicaStore(path) as store:
        store.persist([ViewRecord(2), SignedRecord(pre_prepare(1, view=2)), CommittedRecord(committed(1))])
        store.persist([checkpoint_record(1, 0, (("alice", "r1", 1),))])
        store.put_certificates(1, [certificate("r1")])
        store.put_activations([Activation(0, 2, d(9), 11)])
        before = store.load_records()
    with ReplicaStore(path) as reopened:
        assert reopened.load_records() == before
        assert reopened.get_certificate("alice", "r1") == b"cert:r1"
        assert reopened.get_certificate("alice", "nope") is None
        assert reopened.activations() == [Activation(0, 2, d(9), 11)]
        assert reopened.committed_batch(1) == committed(1)


def test_a_second_different_message_for_a_signed_slot_is_refused(store: ReplicaStore) -> None:
    store.persist([SignedRecord(prepare(4))])
    store.persist([SignedRecord(prepare(4))])  # the same message again is harmless
    with pytest.raises(SlotConflictError):
        store.persist([ViewRecord(9), SignedRecord(prepare(4, digest=d(99)))])
    # the refused call wrote nothing, not even its other records
    assert store.load_records() == [SignedRecord(prepare(4))]

    store.persist([SignedRecord(vote_batch(3))])
    other = VoteBatch(1, 0, 3, 1, (), SIG)
    with pytest.raises(SlotConflictError):
        store.persist([SignedRecord(other)])


def test_messages_a_replica_does_not_sign_are_refused(store: ReplicaStore) -> None:
    with pytest.raises(StorageError):
        store.persist([SignedRecord(FetchState(1, 0))])


def test_a_committed_seq_never_changes_its_batch(store: ReplicaStore) -> None:
    store.persist([CommittedRecord(committed(1))])
    store.persist([CommittedRecord(committed(1))])
    with pytest.raises(SlotConflictError):
        store.persist([CommittedRecord(committed(1, root=5))])
    assert store.committed_batch(1) == committed(1)


def test_the_latest_view_prepared_proof_wins(store: ReplicaStore) -> None:
    store.persist([PreparedRecord(pre_prepare(3, view=1), ())])
    store.persist([PreparedRecord(pre_prepare(3, view=2), ())])
    store.persist([PreparedRecord(pre_prepare(3, view=0), ())])  # a stale one does not go back
    assert store.load_records() == [PreparedRecord(pre_prepare(3, view=2), ())]


def test_checkpoint_deltas_add_up_to_a_full_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "replica.db"
    with ReplicaStore(path) as store:
        store.persist([checkpoint_record(10, 0, (("alice", "a", 3), ("bob", "b", 9)))])
        store.persist([checkpoint_record(20, 10, (("alice", "c", 15),))])
        with pytest.raises(StorageError):
            store.persist([checkpoint_record(30, 10, (("carol", "x", 25),))])  # skips checkpoint 20
        with pytest.raises(StorageError):
            store.persist([checkpoint_record(15, 10, ())])  # older than the stored one
    with ReplicaStore(path) as store:
        (restored,) = store.load_records()
    full = checkpoint_record(20, 0, (("alice", "a", 3), ("alice", "c", 15), ("bob", "b", 9)))
    assert restored == full


def test_a_full_snapshot_from_state_transfer_replaces_the_executed_table(store: ReplicaStore) -> None:
    store.persist([checkpoint_record(10, 0, (("alice", "a", 3),))])
    store.persist([checkpoint_record(50, 0, (("alice", "a", 3), ("bob", "b", 40)))])
    assert store.load_records() == [checkpoint_record(50, 0, (("alice", "a", 3), ("bob", "b", 40)))]


def test_prune_drops_the_log_below_a_checkpoint_and_keeps_what_audits_need(store: ReplicaStore) -> None:
    for seq in (1, 2, 3):
        store.persist(
            [
                SignedRecord(vote_batch(seq)),
                SignedRecord(pre_prepare(seq)),
                SignedRecord(prepare(seq)),
                PreparedRecord(pre_prepare(seq), ()),
                CommittedRecord(committed(seq)),
                SignedRecord(Checkpoint(1, 0, seq, d(60 + seq), SIG)),
            ]
        )
        store.put_certificates(seq, [certificate(f"r{seq}")])
    store.persist([SignedRecord(prepare(4)), PreparedRecord(pre_prepare(4), ())])
    with pytest.raises(StorageError):
        store.prune_below(2)  # no stable checkpoint yet: nothing may go
    store.persist([checkpoint_record(2, 0, (("alice", "r1", 1), ("alice", "r2", 2)))])
    store.prune_below(2)

    records = store.load_records()
    assert records[0] == checkpoint_record(2, 0, (("alice", "r1", 1), ("alice", "r2", 2)))
    assert [r.batch.header.seq for r in records if isinstance(r, CommittedRecord)] == [3]
    assert [r.pre_prepare.seq for r in records if isinstance(r, PreparedRecord)] == [3, 4]
    signed = [r.message for r in records if isinstance(r, SignedRecord)]
    assert {(type(m).__name__, getattr(m, "seq", None)) for m in signed if not isinstance(m, VoteBatch)} == {
        ("PrePrepare", 3),
        ("Prepare", 3),
        ("Prepare", 4),
        ("Checkpoint", 2),  # its own checkpoint message at the stable seq stays
        ("Checkpoint", 3),
    }
    # the highest vote batch number survives, so a restarted replica never reuses it
    assert max(m.batch_no for m in signed if isinstance(m, VoteBatch)) == 3
    # audit data stays
    assert [b.header.seq for b in store.committed_range(1, 10)] == [1, 2, 3]
    assert all(store.get_certificate("alice", f"r{seq}") == f"cert:r{seq}".encode() for seq in (1, 2, 3))


def test_old_view_change_messages_are_pruned_once_a_later_view_is_current(store: ReplicaStore) -> None:
    vc = ViewChange(1, 0, 1, 0, d(0), (), (), SIG)
    nv = NewView(1, 0, 1, (vc,), (), SIG)
    vc2 = ViewChange(1, 0, 2, 0, d(0), (), (), SIG)
    store.persist([SignedRecord(vc), SignedRecord(nv), ViewRecord(1)])
    store.persist([CommittedRecord(committed(1)), SignedRecord(vc2), ViewRecord(2)])
    store.persist([checkpoint_record(1, 0, ())])
    store.prune_below(1)
    assert [r for r in store.load_records() if isinstance(r, SignedRecord)] == [SignedRecord(vc2)]


def test_committed_range_is_consecutive(store: ReplicaStore) -> None:
    store.persist([CommittedRecord(committed(seq)) for seq in (5, 6, 7, 9)])
    assert [b.header.seq for b in store.committed_range(5, 10)] == [5, 6, 7]
    assert [b.header.seq for b in store.committed_range(6, 1)] == [6]
    assert store.committed_range(8, 10) == []


def test_certificates_are_indexed_by_request(store: ReplicaStore) -> None:
    store.put_certificates(3, [certificate("r1"), certificate("r2")])
    store.put_certificates(3, [certificate("r1")])  # a rebuilt certificate after a restart
    assert store.get_certificate("alice", "r2") == b"cert:r2"
    with pytest.raises(SlotConflictError):
        store.put_certificates(3, [certificate("r1", digest=8)])
    with pytest.raises(SlotConflictError):
        store.put_certificates(4, [certificate("r2")])


def test_committed_after_skips_gaps_and_last_certified_seq_says_where_certificates_stop(store: ReplicaStore) -> None:
    assert store.last_certified_seq() == 0
    store.persist([CommittedRecord(committed(seq)) for seq in (5, 6, 7, 9)])
    assert [b.header.seq for b in store.committed_after(5, 10)] == [6, 7, 9]
    assert [b.header.seq for b in store.committed_after(0, 2)] == [5, 6]
    assert store.committed_after(9, 10) == []
    store.put_certificates(6, [certificate("r1")], durable=False)
    store.put_certificates(5, [certificate("r0")])
    assert store.last_certified_seq() == 6


def test_certificates_between_pages_through_whole_batches(store: ReplicaStore) -> None:
    """The archive by seq range (ListCertificates): whole batches in order, about `limit` at a
    time; a batch bigger than the limit comes whole rather than never."""
    store.put_certificates(2, [certificate("a1"), certificate("a2")])
    store.put_certificates(3, [certificate("b1"), certificate("b2"), certificate("b3")])
    store.put_certificates(5, [certificate("c1")])
    store.put_certificates(9, [certificate("d1")])  # outside the range asked for
    page, after, more = store.certificates_between(0, 8, 4)
    assert (page, after, more) == ([(2, b"cert:a1"), (2, b"cert:a2")], 2, True)  # batch 3 would not fit whole
    page, after, more = store.certificates_between(after, 8, 4)
    assert (page, after, more) == ([(3, b"cert:b1"), (3, b"cert:b2"), (3, b"cert:b3"), (5, b"cert:c1")], 8, False)
    page, after, more = store.certificates_between(2, 8, 2)  # batch 3 alone exceeds the limit
    assert ([seq for seq, _ in page], after, more) == ([3, 3, 3], 3, True)
    assert store.certificates_between(9, 20, 4) == ([], 20, False)


def test_archive_pages_are_read_beside_the_writer_not_behind_it(store: ReplicaStore) -> None:
    """ListCertificates pages use a connection of their own: a page is read while the replica
    is in the middle of a write (its lock held), and sees what was committed before it."""
    store.put_certificates(2, [certificate("a1"), certificate("a2")])
    pages: list[tuple[list[tuple[int, bytes]], int, bool]] = []
    with store._lock:  # a persist in progress
        reader = threading.Thread(target=lambda: pages.append(store.certificates_between(0, 8, 16)))
        reader.start()
        reader.join(timeout=30)  # a hang guard: behind the lock it would wait for ever
        assert not reader.is_alive(), "the archive page waited for the writer"
    assert pages == [([(2, b"cert:a1"), (2, b"cert:a2")], 8, False)]
    store.put_certificates(3, [certificate("b1")])  # later writes show up on the next page
    assert store.certificates_between(2, 8, 16) == ([(3, b"cert:b1")], 8, False)


def test_certificate_gaps_are_the_executed_requests_without_a_stored_certificate(store: ReplicaStore) -> None:
    """What a snapshot skipped and no peer has filled in yet: executed, not certified here."""
    store.persist([checkpoint_record(50, 0, (("alice", "a", 3), ("alice", "b", 40), ("alice", "c", 40), ("alice", "d", 45)))])
    store.put_certificates(3, [certificate("a")])
    digest = hashlib.sha256(b"alice/c").digest()
    assert store.certificate_gaps(0, 10) == [
        ("alice", "b", 40, hashlib.sha256(b"alice/b").digest()),
        ("alice", "c", 40, digest),
        ("alice", "d", 45, hashlib.sha256(b"alice/d").digest()),
    ]
    assert [r for _, r, _, _ in store.certificate_gaps(0, 2)] == ["b", "c"]  # in seq order, at most `limit`
    assert [r for _, r, _, _ in store.certificate_gaps(40, 10)] == ["d"]
    store.put_certificates(40, [certificate("b"), CertificateRow("alice", "c", digest, b"cert:c")])
    store.put_certificates(45, [certificate("d")])
    assert store.certificate_gaps(0, 10) == []


def test_a_certificate_written_without_its_own_fsync_is_kept_and_the_store_stays_fully_synced(tmp_path: Path) -> None:
    store = ReplicaStore(tmp_path / "replica.db")
    store.put_certificates(3, [certificate("r1")], durable=False)
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again for what follows
    with pytest.raises(SlotConflictError):  # the same checks as a durable write
        store.put_certificates(4, [certificate("r1")], durable=False)
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2
    store.close()
    with ReplicaStore(tmp_path / "replica.db") as reopened:
        assert reopened.get_certificate("alice", "r1") == b"cert:r1"


def test_conflicting_activation_is_refused(store: ReplicaStore) -> None:
    store.put_activations([Activation(1, 2, d(9), 10), Activation(0, 2, d(8), 10)])
    store.put_activations([Activation(1, 2, d(9), 10)])
    with pytest.raises(SlotConflictError):
        store.put_activations([Activation(1, 2, d(9), 11)])
    assert store.activations() == [Activation(0, 2, d(8), 10), Activation(1, 2, d(9), 10)]


def test_a_store_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "replica.db"
    ReplicaStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StorageError, match="schema version"):
        ReplicaStore(path)


def test_a_version_4_store_is_migrated_keeping_every_certificate_and_batch(tmp_path: Path) -> None:
    """Version 4 kept certificates in a WITHOUT ROWID table; opening such a store moves them to
    the rowid table of version 5, and nothing else changes."""
    path = tmp_path / "replica.db"
    with ReplicaStore(path) as store:
        store.persist([CommittedRecord(committed(seq)) for seq in (3, 4)])
        store.put_certificates(3, [certificate("r1"), certificate("r2")])
        store.put_certificates(4, [certificate("r3")])
    with sqlite3.connect(path) as db:  # as version 4 left it
        db.execute("ALTER TABLE certificates RENAME TO new_certificates")
        db.execute("DROP INDEX certificates_by_seq")
        db.execute(
            "CREATE TABLE certificates (client_id TEXT NOT NULL, request_id TEXT NOT NULL, seq INTEGER NOT NULL, "
            "request_digest BLOB NOT NULL, certificate BLOB NOT NULL, PRIMARY KEY (client_id, request_id)) WITHOUT ROWID"
        )
        db.execute("CREATE INDEX certificates_by_seq ON certificates (seq)")
        db.execute("INSERT INTO certificates SELECT client_id, request_id, seq, request_digest, certificate FROM new_certificates")
        db.execute("DROP TABLE new_certificates")
        db.execute("UPDATE schema_version SET version = 4")
    with ReplicaStore(path) as store:
        assert store.get_certificate("alice", "r2") == b"cert:r2"
        assert store.certificates_between(0, 10, 10) == ([(3, b"cert:r1"), (3, b"cert:r2"), (4, b"cert:r3")], 10, False)
        assert store.last_certified_seq() == 4 and store.last_committed_seq() == 4
        with pytest.raises(SlotConflictError):  # still one certificate per request
            store.put_certificates(5, [certificate("r1")])
        store.put_certificates(5, [certificate("r4")])
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(5,)]
        (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name = 'certificates'").fetchone()
        assert "WITHOUT ROWID" not in sql
        assert {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'certificates'")} >= {"certificates", "certificates_by_seq"}
        assert db.execute("SELECT count(*) FROM certificates").fetchone() == (4,)


def test_the_store_runs_in_wal_mode_with_full_sync(store: ReplicaStore, tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "replica.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


_WRITER = textwrap.dedent(
    """
    import sys
    from certs.batch import BatchHeader, VoteEntry
    from certs.outputs import ModelOutput
    from consensus.messages import Commit, Prepare, Proposal, VoteBatch
    from consensus.ready import CommittedBatch, CommittedRecord, SignedRecord
    from replica.storage import ReplicaStore

    store = ReplicaStore(sys.argv[1])
    sig = bytes(64)
    entries = tuple(VoteEntry("c", f"r{i}", bytes(32), (), ModelOutput(((1, 10),))) for i in range(300))
    seq = 0
    while True:
        seq += 1
        h = BatchHeader("g", 0, bytes(32), 0, seq, seq.to_bytes(32, "big"), bytes(32), bytes(32), 0)
        commit = Commit(1, 0, 0, seq, h.batch_digest, sig)
        store.persist([
            SignedRecord(VoteBatch(1, 0, seq, 1, entries, sig)),
            SignedRecord(Prepare(1, 0, 0, seq, h.batch_digest, sig)),
            SignedRecord(commit),
            CommittedRecord(CommittedBatch(h, Proposal(()), (commit,), (), ())),
        ])
        print(seq, flush=True)
    """
)


def test_kill_9_while_writing_keeps_every_completed_persist_whole(tmp_path: Path) -> None:
    path = tmp_path / "replica.db"
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    reported = 0
    try:
        while reported < 25:
            line = child.stdout.readline()
            if not line:
                pytest.fail(f"writer died: {child.stderr.read() if child.stderr else ''}")
            reported = int(line)
    finally:
        os.kill(child.pid, signal.SIGKILL)  # in the middle of a later persist
        rest, _ = child.communicate()
    reported = max([reported, *(int(x) for x in rest.split())])

    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with ReplicaStore(path) as store:
        records = store.load_records()
    batches = {r.batch.header.seq for r in records if isinstance(r, CommittedRecord)}
    votes = {r.message.batch_no for r in records if isinstance(r, SignedRecord) and isinstance(r.message, VoteBatch)}
    prepares = {r.message.seq for r in records if isinstance(r, SignedRecord) and isinstance(r.message, Prepare)}
    commits = {r.message.seq for r in records if isinstance(r, SignedRecord) and isinstance(r.message, Commit)}
    # every persist that returned is there; the one cut short is there whole or not at all
    assert batches == votes == prepares == commits
    assert batches in (set(range(1, reported + 1)), set(range(1, reported + 2)))


def test_a_store_that_cannot_be_opened_raises_storage_error(tmp_path: Path) -> None:
    (tmp_path / "not-a-db").write_bytes(b"this is not an SQLite database file, not at all" * 10)
    with pytest.raises(StorageError):
        ReplicaStore(tmp_path / "not-a-db")
    with pytest.raises(StorageError):
        ReplicaStore(tmp_path / "missing-dir" / "replica.db")


def test_evidence_is_kept_in_order_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "replica.sqlite"
    with ReplicaStore(path) as store:
        store.put_evidence([(b"first", "replica 2 equivocated"), (b"second", "replica 3 equivocated")])
    with ReplicaStore(path) as store:
        items = store.list_evidence()
        assert [(e, s) for _, e, s in items] == [(b"first", "replica 2 equivocated"), (b"second", "replica 3 equivocated")]
        assert store.list_evidence(after_id=items[0][0]) == items[1:]
        assert store.list_evidence(limit=1) == items[:1]
