"""A replica's durable state: one SQLite database in WAL mode.

Durability rule
---------------
Everything the consensus core asks to persist is written by `persist(records)` in ONE
transaction, and the runtime calls it with a Ready's records before it sends any of that Ready's
messages. The database runs with `journal_mode=WAL` and `synchronous=FULL`: COMMIT returns only
after the write-ahead log, commit frame included, is fsynced. So when `persist` returns, the
records survive kill -9 and power loss; when it has not returned, nothing of that Ready has left
the replica. After kill -9 at any instant, SQLite's recovery drops a transaction whose commit
frame is missing or torn, so a reopened store holds every completed `persist` whole and no part
of an interrupted one: the restarted replica is exactly a replica that crashed before that Ready,
which PBFT tolerates. It never finds a message it sent but forgot it signed, so it cannot sign a
second, different message for the same slot.

Certificates and model activations are written after the batches they come from, each call in
its own transaction; certificates without an fsync of their own (the next durable write syncs
them along). Losing the last of those writes in a crash is safe: both are functions of the
committed batches, which were persisted first. The runtime rebuilds the certificates of the
batches after the last certified one at start-up; a lost activation only leaves the version
history that Status reports short of an entry (the versions in effect come from the replicated
state).

What is kept
------------
- signed: the replica's own signed messages by (kind, epoch, slot). A second, different message
  for a slot it already signed is refused (`SlotConflictError`): persisting it would let the
  replica equivocate after a restart.
- prepared: the latest-view prepared proof per sequence number (for view-change messages).
- committed: every committed batch by sequence number, never pruned (audit, state transfer).
- checkpoint + executed: the latest stable checkpoint, and the executed-request table that the
  incremental checkpoint records add up to, so a full StateSnapshot can be rebuilt.
- view: the current view.
- certificates by (client_id, request_id), with the batch seq and the request digest.
- activations: (replica_id, version, weights_digest, from_seq) of model versions.

`prune_below(seq)` drops signed messages and prepared proofs at or below a stable checkpoint
(but the replica's own checkpoint message at that seq); committed batches, certificates and the
executed table stay.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from certs.errors import DecodeError
from consensus.messages import (
    Checkpoint,
    Commit,
    NewView,
    PeerMessage,
    PrePrepare,
    Prepare,
    ViewChange,
    VoteBatch,
)
from consensus.ready import (
    ConfigLinkRecord,
    VoteReservationRecord,
    Activation,
    CommittedBatch,
    CommittedRecord,
    PersistRecord,
    PreparedRecord,
    SignedRecord,
    StableCheckpointRecord,
    ViewRecord,
)
from replica import codec

log = logging.getLogger("quorumserve.storage")

SCHEMA_VERSION = 5
# Version 5 keeps certificates in a rowid table with a unique index on the request, where 4 kept
# them in a WITHOUT ROWID table keyed by it: at 1.5-3 KB a row, far above the 1/20 of a page
# SQLite's documentation advises for WITHOUT ROWID, an insert took about twice as long (every
# certificate a replica serves is written once). A version 4 store is migrated when opened.
MIGRATABLE_VERSIONS = (4,)

R = TypeVar("R")

_CERTIFICATES_SCHEMA = """
CREATE TABLE IF NOT EXISTS certificates (
    client_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    request_digest BLOB NOT NULL,
    certificate BLOB NOT NULL,
    UNIQUE (client_id, request_id)
);
CREATE INDEX IF NOT EXISTS certificates_by_seq ON certificates (seq);
"""

_SCHEMA = _CERTIFICATES_SCHEMA + """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS signed (
    kind TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    slot_a INTEGER NOT NULL,
    slot_b INTEGER NOT NULL,
    seq INTEGER NOT NULL,  -- the seq it is about, or the committed height when it was signed
    record BLOB NOT NULL,
    PRIMARY KEY (kind, epoch, slot_a, slot_b)
);
CREATE TABLE IF NOT EXISTS prepared (
    seq INTEGER PRIMARY KEY,
    view INTEGER NOT NULL,
    record BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS committed (
    seq INTEGER PRIMARY KEY,
    batch_digest BLOB NOT NULL,
    batch BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoint (
    seq INTEGER PRIMARY KEY,
    prior_stable_seq INTEGER NOT NULL,  -- the stable checkpoint before this one (0: none)
    record BLOB NOT NULL  -- StableCheckpointRecord without its executed entries
);
CREATE TABLE IF NOT EXISTS executed (
    client_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    request_digest BLOB NOT NULL,
    PRIMARY KEY (client_id, request_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS current_view (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    view INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS vote_reservation (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    ceiling INTEGER NOT NULL  -- vote batch numbers up to here may have been used
);
CREATE TABLE IF NOT EXISTS config_links (
    epoch INTEGER PRIMARY KEY,
    start_seq INTEGER NOT NULL,  -- the epoch's batches are those above it
    record BLOB NOT NULL  -- ConfigLinkRecord: the config and the previous epoch's signatures
);
CREATE TABLE IF NOT EXISTS evidence (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    evidence BLOB NOT NULL,  -- quorumserve.v1.Evidence (certs/evidence.py), verifiable offline
    summary TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS activations (
    replica_id INTEGER NOT NULL,
    version INTEGER NOT NULL,
    weights_digest BLOB NOT NULL,
    from_seq INTEGER NOT NULL,
    PRIMARY KEY (replica_id, version)
);
"""

# Signed messages whose slot names a sequence number go with the log at or below a stable
# checkpoint; the replica's own CHECKPOINT at the stable seq itself stays (the core restores it,
# and it is part of what the replica can show for that checkpoint).
_LOG_KINDS = ("pre-prepare", "prepare", "commit")
_SIGNED_BELOW_WHERE = "(kind IN (?, ?, ?) AND seq <= ?) OR (kind = 'checkpoint' AND seq < ?)"
_SIGNED_ABOVE = f"SELECT record FROM signed WHERE NOT ({_SIGNED_BELOW_WHERE})"
_SIGNED_BELOW = f"DELETE FROM signed WHERE {_SIGNED_BELOW_WHERE}"
_VIEW_KINDS = ("view-change", "new-view")


class StorageError(Exception):
    """The store cannot do what was asked; nothing of the failed call was written."""


class SlotConflictError(StorageError):
    """A second, different message for a slot this replica already signed (a bug upstream)."""


class CorruptStoreError(StorageError):
    """The database holds something that does not decode."""


@dataclass(frozen=True, slots=True)
class CertificateRow:
    client_id: str
    request_id: str
    request_digest: bytes
    certificate: bytes  # the encoded inference certificate, as served to clients


def _slot_of(message: PeerMessage) -> tuple[str, int, int, int, int | None]:
    """(kind, epoch, slot_a, slot_b, seq) of a signed message; seq None: not about one seq."""
    if isinstance(message, (Prepare, Commit)):
        kind = "prepare" if isinstance(message, Prepare) else "commit"
        return kind, message.epoch, message.view, message.seq, message.seq
    if isinstance(message, VoteBatch):
        return "vote-batch", message.epoch, message.batch_no, 0, None
    if isinstance(message, PrePrepare):
        return "pre-prepare", message.epoch, message.view, message.seq, message.seq
    if isinstance(message, Checkpoint):
        return "checkpoint", message.epoch, message.seq, 0, message.seq
    if isinstance(message, ViewChange):
        return "view-change", message.epoch, message.new_view, 0, None
    if isinstance(message, NewView):
        return "new-view", message.epoch, message.view, 0, None
    raise StorageError(f"{type(message).__name__} is not a message a replica signs")


class ReplicaStore:
    """The durable state of one replica. Safe to call from several threads (one at a time)."""

    def __init__(self, path: str | Path, *, sync: str = "full") -> None:
        """`sync`: "full" (the default) makes every persist() durable against power loss (fsync
        of the WAL at each commit); "process" makes it durable against the replica process
        dying (kill -9, OOM) but not against the machine crashing, for ~100x cheaper commits."""
        if sync not in ("full", "process"):
            raise StorageError(f"sync must be 'full' or 'process', not {sync!r}")
        self.path = Path(path)
        self.sync = sync
        self._lock = threading.Lock()
        # long reads (archive pages, the scan for certificate gaps) use a read-only connection
        # of their own, opened on first use: WAL lets it read beside the writer instead of
        # holding the replica's writes up behind the store's lock
        self._reader_lock = threading.Lock()
        self._reader_db: sqlite3.Connection | None = None
        # isolation_level=None: transactions are ours (BEGIN IMMEDIATE ... COMMIT), never implicit
        try:
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: cannot open: {exc}") from exc
        try:
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StorageError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
            self._db.execute("PRAGMA synchronous=FULL" if sync == "full" else "PRAGMA synchronous=NORMAL")
            with self._transaction():
                self._create_schema()
        except sqlite3.Error as exc:
            self._db.close()
            raise StorageError(f"{self.path}: {exc}") from exc
        except BaseException:
            self._db.close()
            raise

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        with self._reader_lock:
            if self._reader_db is not None:
                self._reader_db.close()
                self._reader_db = None
        with self._lock:
            self._db.close()

    def __enter__(self) -> ReplicaStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _run_script(self, script: str) -> None:
        # executescript would COMMIT our transaction first; run the statements one by one instead
        for statement in script.split(";"):
            if statement.strip():
                self._db.execute(statement)

    def _create_schema(self) -> None:
        self._run_script(_SCHEMA)
        row = self._db.execute("SELECT version FROM schema_version").fetchall()
        if not row:
            self._db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        elif len(row) == 1 and row[0][0] in MIGRATABLE_VERSIONS:
            self._migrate_certificates_to_rowid()
            self._db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
        elif len(row) != 1 or row[0][0] != SCHEMA_VERSION:
            raise StorageError(f"{self.path}: schema version {[r[0] for r in row]}, this replica knows {SCHEMA_VERSION}")

    def _migrate_certificates_to_rowid(self) -> None:
        """Version 4 -> 5, inside the opening transaction (all or nothing): the certificates
        move to a rowid table, every other table is as it was."""
        db = self._db
        db.execute("ALTER TABLE certificates RENAME TO certificates_v4")
        db.execute("DROP INDEX IF EXISTS certificates_by_seq")  # it moved with the renamed table
        self._run_script(_CERTIFICATES_SCHEMA)
        moved = db.execute(
            "INSERT INTO certificates (client_id, request_id, seq, request_digest, certificate) "
            "SELECT client_id, request_id, seq, request_digest, certificate FROM certificates_v4 ORDER BY seq"
        ).rowcount
        db.execute("DROP TABLE certificates_v4")
        log.info("%s: store migrated to schema version %d (%d certificates moved to a rowid table)", self.path, SCHEMA_VERSION, moved)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One all-or-nothing transaction; SQLite's own errors (disk full, I/O) become StorageError."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: {exc}") from exc

    # -- persist ----------------------------------------------------------------------------

    def persist(self, records: Sequence[PersistRecord]) -> None:
        """Write one Ready's records durably, all or nothing (one fsync)."""
        if not records:
            return
        with self._lock, self._transaction() as db:
            height: list[int] = []  # committed height, looked up once if needed
            for record in records:
                if isinstance(record, SignedRecord):
                    self._put_signed(db, record, height)
                elif isinstance(record, PreparedRecord):
                    self._put_prepared(db, record)
                elif isinstance(record, CommittedRecord):
                    self._put_committed(db, record.batch)
                    height.clear()
                elif isinstance(record, StableCheckpointRecord):
                    self._put_checkpoint(db, record)
                    height.clear()
                elif isinstance(record, VoteReservationRecord):
                    db.execute(
                        "INSERT INTO vote_reservation (id, ceiling) VALUES (0, ?) "
                        "ON CONFLICT (id) DO UPDATE SET ceiling = max(ceiling, excluded.ceiling)",
                        (record.ceiling,),
                    )
                elif isinstance(record, ConfigLinkRecord):
                    # a later record for an epoch carries more signatures: it replaces the earlier
                    db.execute(
                        "INSERT OR REPLACE INTO config_links (epoch, start_seq, record) VALUES (?, ?, ?)",
                        (record.link.config.epoch, record.start_seq, codec.encode_record(record)),
                    )
                elif isinstance(record, ViewRecord):
                    db.execute(
                        "INSERT INTO current_view (id, view) VALUES (0, ?) "
                        # the last view written is current: views start again at 0 in a new epoch
                        "ON CONFLICT (id) DO UPDATE SET view = excluded.view",
                        (record.view,),
                    )
                else:
                    raise StorageError(f"no stored form for {type(record).__name__}")

    def _committed_height(self, db: sqlite3.Connection) -> int:
        row = db.execute(
            "SELECT max(coalesce((SELECT max(seq) FROM committed), 0), coalesce((SELECT max(seq) FROM checkpoint), 0))"
        ).fetchone()
        return int(row[0])

    def _put_signed(self, db: sqlite3.Connection, record: SignedRecord, height: list[int]) -> None:
        kind, epoch, slot_a, slot_b, seq = _slot_of(record.message)
        if seq is None:
            # not about one seq: remember how far the log was, to prune it once that is old
            if not height:
                height.append(self._committed_height(db))
            seq = height[0]
        data = codec.encode_record(record)
        cursor = db.execute(
            "INSERT INTO signed (kind, epoch, slot_a, slot_b, seq, record) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (kind, epoch, slot_a, slot_b, seq, data),
        )
        if cursor.rowcount == 0:
            (existing,) = db.execute(
                "SELECT record FROM signed WHERE kind = ? AND epoch = ? AND slot_a = ? AND slot_b = ?",
                (kind, epoch, slot_a, slot_b),
            ).fetchone()
            if bytes(existing) != data:
                raise SlotConflictError(
                    f"this replica already signed a different {kind} for epoch {epoch} slot {(slot_a, slot_b)}"
                )

    def _put_prepared(self, db: sqlite3.Connection, record: PreparedRecord) -> None:
        # a later view's proof replaces an earlier one for the same seq (PBFT 4.4: the
        # view-change message carries the latest view in which the batch prepared)
        db.execute(
            "INSERT INTO prepared (seq, view, record) VALUES (?, ?, ?) "
            "ON CONFLICT (seq) DO UPDATE SET view = excluded.view, record = excluded.record "
            "WHERE excluded.view >= prepared.view",
            (record.pre_prepare.seq, record.pre_prepare.view, codec.encode_record(record)),
        )

    def _put_committed(self, db: sqlite3.Connection, batch: CommittedBatch) -> None:
        seq = batch.header.seq
        digest = batch.header.batch_digest
        cursor = db.execute(
            "INSERT INTO committed (seq, batch_digest, batch) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (seq, digest, codec.encode_committed_batch(batch)),
        )
        if cursor.rowcount == 0:
            (existing,) = db.execute("SELECT batch_digest FROM committed WHERE seq = ?", (seq,)).fetchone()
            if bytes(existing) != digest:
                raise SlotConflictError(f"batch {seq} is already committed with a different digest")

    def _put_checkpoint(self, db: sqlite3.Connection, record: StableCheckpointRecord) -> None:
        snapshot = record.snapshot
        stored = codec.encode_record(dataclasses.replace(record, snapshot=dataclasses.replace(snapshot, executed=())))
        latest = db.execute("SELECT seq, record FROM checkpoint ORDER BY seq DESC LIMIT 1").fetchone()
        latest_seq = 0 if latest is None else int(latest[0])
        if latest is not None and snapshot.seq == latest_seq:
            if bytes(latest[1]) != stored:
                raise SlotConflictError(f"a different stable checkpoint at {latest_seq} is already stored")
            return  # the same checkpoint again
        if snapshot.seq < latest_seq:
            raise StorageError(f"stable checkpoint {snapshot.seq} is older than the stored {latest_seq}")
        if record.previous_seq == 0:
            # a full snapshot (the first checkpoint, or one fetched by state transfer)
            db.execute("DELETE FROM executed")
        elif record.previous_seq != latest_seq:
            raise StorageError(
                f"checkpoint {snapshot.seq} adds to {record.previous_seq}, but the stored one is {latest_seq}"
            )
        try:
            db.executemany(
                "INSERT INTO executed (client_id, request_id, seq, request_digest) VALUES (?, ?, ?, ?)", snapshot.executed
            )
        except sqlite3.IntegrityError as exc:
            raise StorageError(f"checkpoint {snapshot.seq} lists an already executed request again") from exc
        db.execute("DELETE FROM checkpoint")
        db.execute(
            "INSERT INTO checkpoint (seq, prior_stable_seq, record) VALUES (?, ?, ?)", (snapshot.seq, latest_seq, stored)
        )

    # -- recovery -----------------------------------------------------------------------------

    def load_records(self) -> list[PersistRecord]:
        """What the consensus core restores from after a restart, in this order: the latest
        stable checkpoint as a full snapshot (previous_seq=0), the view, committed batches above
        it (ascending), prepared proofs above it (ascending), then the signed messages still
        needed (in the order they were written)."""
        with self._lock:
            db = self._db
            records: list[PersistRecord] = [
                self._decode(bytes(row[0]), ConfigLinkRecord, "config link")
                for row in db.execute("SELECT record FROM config_links ORDER BY epoch")
            ]
            reserved = db.execute("SELECT ceiling FROM vote_reservation WHERE id = 0").fetchone()
            if reserved is not None:
                records.append(VoteReservationRecord(int(reserved[0])))
            stable_seq = 0
            row = db.execute("SELECT seq, record FROM checkpoint ORDER BY seq DESC LIMIT 1").fetchone()
            if row is not None:
                stable_seq = int(row[0])
                partial = self._decode(bytes(row[1]), StableCheckpointRecord, "stable checkpoint")
                executed = tuple(
                    (str(c), str(r), int(s), bytes(d))
                    for c, r, s, d in db.execute(
                        "SELECT client_id, request_id, seq, request_digest FROM executed WHERE seq <= ? "
                        "ORDER BY client_id, request_id",
                        (stable_seq,),
                    )
                )
                snapshot = dataclasses.replace(partial.snapshot, executed=executed)
                records.append(StableCheckpointRecord(snapshot=snapshot, previous_seq=0, proof=partial.proof))
            view = db.execute("SELECT view FROM current_view WHERE id = 0").fetchone()
            if view is not None:
                records.append(ViewRecord(int(view[0])))
            for (data,) in db.execute("SELECT batch FROM committed WHERE seq > ? ORDER BY seq", (stable_seq,)):
                records.append(CommittedRecord(self._decode_batch(bytes(data))))
            for (data,) in db.execute("SELECT record FROM prepared WHERE seq > ? ORDER BY seq", (stable_seq,)):
                records.append(self._decode(bytes(data), PreparedRecord, "prepared proof"))
            for (data,) in db.execute(_SIGNED_ABOVE + " ORDER BY rowid", (*_LOG_KINDS, stable_seq, stable_seq)):
                records.append(self._decode(bytes(data), SignedRecord, "signed message"))
            return records

    def prune_below(self, seq: int) -> None:
        """Drop signed messages and prepared proofs at or below stable checkpoint `seq` (but the
        replica's own checkpoint message at `seq`).

        Vote batches and view-change messages are about no sequence number: a vote batch goes
        once a full checkpoint interval has passed since it was signed (its requests are ordered
        by then, or dropped), except the highest-numbered one, which keeps the numbering from
        going back after a restart; view-change and new-view messages go once they are for an
        earlier view than the current one.
        """
        with self._lock, self._transaction() as db:
            row = db.execute("SELECT seq, prior_stable_seq FROM checkpoint").fetchone()
            if row is None or seq > int(row[0]):
                stable = 0 if row is None else int(row[0])
                raise StorageError(f"cannot prune below {seq}: the stable checkpoint is {stable}")
            prior_stable_seq = min(int(row[1]), seq)
            db.execute(_SIGNED_BELOW, (*_LOG_KINDS, seq, seq))
            db.execute(
                "DELETE FROM signed WHERE kind = 'vote-batch' AND seq <= ? AND rowid != "
                "(SELECT rowid FROM signed WHERE kind = 'vote-batch' ORDER BY epoch DESC, slot_a DESC LIMIT 1)",
                (prior_stable_seq,),
            )
            view = db.execute("SELECT view FROM current_view WHERE id = 0").fetchone()
            if view is not None:
                db.execute(
                    "DELETE FROM signed WHERE kind IN (?, ?) AND slot_a < ? AND seq <= ?",
                    (*_VIEW_KINDS, int(view[0]), seq),
                )
            db.execute("DELETE FROM prepared WHERE seq <= ?", (seq,))

    # -- committed batches --------------------------------------------------------------------

    def committed_batch(self, seq: int) -> CommittedBatch | None:
        with self._lock:
            row = self._db.execute("SELECT batch FROM committed WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else self._decode_batch(bytes(row[0]))

    def committed_range(self, from_seq: int, limit: int) -> list[CommittedBatch]:
        """Up to `limit` consecutive committed batches from `from_seq` on; stops at the first gap
        (a replica that caught up by state transfer has none below its snapshot)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, batch FROM committed WHERE seq >= ? ORDER BY seq LIMIT ?", (from_seq, max(limit, 0))
            ).fetchall()
        batches: list[CommittedBatch] = []
        for expected, (seq, data) in enumerate(rows, start=from_seq):
            if int(seq) != expected:
                break
            batches.append(self._decode_batch(bytes(data)))
        return batches

    def committed_after(self, seq: int, limit: int) -> list[CommittedBatch]:
        """Up to `limit` committed batches above `seq`, in order, gaps and all."""
        with self._lock:
            rows = self._db.execute(
                "SELECT batch FROM committed WHERE seq > ? ORDER BY seq LIMIT ?", (seq, max(limit, 0))
            ).fetchall()
        return [self._decode_batch(bytes(data)) for (data,) in rows]

    def last_committed_seq(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT max(seq) FROM committed").fetchone()
        return 0 if row[0] is None else int(row[0])

    # -- certificates ---------------------------------------------------------------------------

    def put_certificates(self, seq: int, rows: Sequence[CertificateRow], *, durable: bool = True) -> None:
        """Store the certificates of batch `seq`. The first certificate for a request is kept: a
        rebuilt one after a restart certifies the same decision.

        `durable=False` skips the fsync of this write (the next durable write syncs it along):
        certificates are functions of the committed batches, which are written first, and the
        runtime rebuilds the ones a crash lost (`committed_after`, `last_certified_seq`)."""
        if not rows:
            return
        with self._lock:
            relaxed = not durable and self.sync == "full"
            if relaxed:
                self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                with self._transaction() as db:
                    self._insert_certificates(db, seq, rows)
            finally:
                if relaxed:
                    self._db.execute("PRAGMA synchronous=FULL")

    @staticmethod
    def _insert_certificates(db: sqlite3.Connection, seq: int, rows: Sequence[CertificateRow]) -> None:
        # one statement for the batch (executemany sums the rows it inserted): a statement per
        # row was most of a write's cost; rows that were there already are checked afterwards
        cursor = db.executemany(
            "INSERT INTO certificates (client_id, request_id, seq, request_digest, certificate) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [(row.client_id, row.request_id, seq, row.request_digest, row.certificate) for row in rows],
        )
        if cursor.rowcount == len(rows):
            return
        for row in rows:  # a rebuilt certificate, or a conflict: each stored one must match
            existing = db.execute(
                "SELECT seq, request_digest FROM certificates WHERE client_id = ? AND request_id = ?",
                (row.client_id, row.request_id),
            ).fetchone()
            if int(existing[0]) != seq or bytes(existing[1]) != row.request_digest:
                raise SlotConflictError(
                    f"request ({row.client_id!r}, {row.request_id!r}) is already certified "
                    f"in batch {existing[0]} for another request digest or batch"
                )

    def last_certified_seq(self) -> int:
        """The highest batch seq with a stored certificate (0 for none)."""
        with self._lock:
            row = self._db.execute("SELECT max(seq) FROM certificates").fetchone()
        return 0 if row[0] is None else int(row[0])

    def certificates_between(self, after_seq: int, through_seq: int, limit: int) -> tuple[list[tuple[int, bytes]], int, bool]:
        """Stored certificates of batches after_seq < seq <= through_seq as (seq, certificate),
        whole batches in seq order, about `limit` of them (a batch larger than that comes
        whole). Returns them, the seq to continue after, and whether more may follow.

        Read on the reader connection, one read transaction per page (a consistent view),
        never holding up the replica's writes."""
        with self._reader_lock:
            db = self._reader()
            try:
                db.execute("BEGIN")
                try:
                    return self._certificate_page(db, after_seq, through_seq, limit)
                finally:
                    db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: {exc}") from exc

    def _reader(self) -> sqlite3.Connection:
        """The read-only connection; call with `_reader_lock` held."""
        if self._reader_db is None:
            try:
                self._reader_db = sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
                )
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: cannot open for reading: {exc}") from exc
        return self._reader_db

    @staticmethod
    def _certificate_page(db: sqlite3.Connection, after_seq: int, through_seq: int, limit: int) -> tuple[list[tuple[int, bytes]], int, bool]:
        rows = db.execute(
            "SELECT seq, certificate FROM certificates WHERE seq > ? AND seq <= ? ORDER BY seq, client_id, request_id LIMIT ?",
            (after_seq, through_seq, limit + 1),
        ).fetchall()
        if len(rows) <= limit:
            return [(int(seq), bytes(c)) for seq, c in rows], through_seq, False
        last = int(rows[-1][0])
        kept = [(int(seq), bytes(c)) for seq, c in rows if seq < last]
        if not kept:  # one batch above the limit: all of it
            kept = [(last, bytes(c)) for (c,) in db.execute(
                "SELECT certificate FROM certificates WHERE seq = ? ORDER BY client_id, request_id", (last,)
            )]
            return kept, last, True
        return kept, kept[-1][0], True

    def certificate_gaps(self, after_seq: int, limit: int) -> list[tuple[str, str, int, bytes]]:
        """Executed requests (as of the last stable checkpoint) with no stored certificate, seq
        above `after_seq`, in seq order, at most `limit`: (client_id, request_id, seq, digest).

        Every request this replica saw committed has its certificate (written with the batch,
        rebuilt at start-up if a crash lost it), so a gap is a batch that a state-transfer
        snapshot skipped and whose certificate has not been fetched from a peer yet. The scan
        reads the whole executed table, so it runs on the reader connection: WAL lets it read
        while the replica's writes go on, instead of holding them up behind the store's lock."""
        with self._reader_lock:
            try:
                rows = self._reader().execute(
                    "SELECT e.client_id, e.request_id, e.seq, e.request_digest FROM executed AS e "
                    "WHERE e.seq > ? AND NOT EXISTS (SELECT 1 FROM certificates AS c "
                    "WHERE c.client_id = e.client_id AND c.request_id = e.request_id) "
                    "ORDER BY e.seq, e.client_id, e.request_id LIMIT ?",
                    (after_seq, limit),
                ).fetchall()
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: {exc}") from exc
        return [(str(c), str(r), int(s), bytes(d)) for c, r, s, d in rows]

    def get_certificate(self, client_id: str, request_id: str) -> bytes | None:
        with self._lock:
            row = self._db.execute(
                "SELECT certificate FROM certificates WHERE client_id = ? AND request_id = ?", (client_id, request_id)
            ).fetchone()
        return None if row is None else bytes(row[0])

    # -- model versions -------------------------------------------------------------------------

    def put_activations(self, activations: Sequence[Activation]) -> None:
        if not activations:
            return
        with self._lock, self._transaction() as db:
            for a in activations:
                cursor = db.execute(
                    "INSERT INTO activations (replica_id, version, weights_digest, from_seq) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT DO NOTHING",
                    (a.replica_id, a.version, a.weights_digest, a.from_seq),
                )
                if cursor.rowcount == 0:
                    existing = db.execute(
                        "SELECT weights_digest, from_seq FROM activations WHERE replica_id = ? AND version = ?",
                        (a.replica_id, a.version),
                    ).fetchone()
                    if bytes(existing[0]) != a.weights_digest or int(existing[1]) != a.from_seq:
                        raise SlotConflictError(
                            f"replica {a.replica_id} version {a.version} is already recorded with other weights or seq"
                        )

    def activations(self) -> list[Activation]:
        with self._lock:
            rows = self._db.execute(
                "SELECT replica_id, version, weights_digest, from_seq FROM activations ORDER BY from_seq, replica_id"
            ).fetchall()
        return [Activation(int(r), int(v), bytes(w), int(s)) for r, v, w, s in rows]

    # -- decoding what we wrote -------------------------------------------------------------

    def _decode(self, data: bytes, expected: type[R], what: str) -> R:
        try:
            record = codec.decode_record(data)
        except DecodeError as exc:
            raise CorruptStoreError(f"{self.path}: stored {what} does not decode: {exc}") from exc
        if not isinstance(record, expected):
            raise CorruptStoreError(f"{self.path}: stored {what} is a {type(record).__name__}")
        return record

    def _decode_batch(self, data: bytes) -> CommittedBatch:
        try:
            return codec.decode_committed_batch(data)
        except DecodeError as exc:
            raise CorruptStoreError(f"{self.path}: stored committed batch does not decode: {exc}") from exc

    # -- evidence of misbehaviour ------------------------------------------------------------------

    def put_evidence(self, items: Sequence[tuple[bytes, str]]) -> None:
        """Store encoded evidence items (certs.evidence.encode_evidence) with a one-line summary."""
        with self._lock, self._transaction():
            self._db.executemany("INSERT INTO evidence (evidence, summary) VALUES (?, ?)", list(items))

    def list_evidence(self, after_id: int = 0, limit: int = 100) -> list[tuple[int, bytes, str]]:
        """(id, encoded evidence, summary) with id > after_id, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, evidence, summary FROM evidence WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
            ).fetchall()
        return [(int(i), bytes(e), str(s)) for i, e, s in rows]

    def config_links(self) -> list[ConfigLinkRecord]:
        """Every later epoch's config with the signatures vouching for it, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT record FROM config_links ORDER BY epoch").fetchall()
        return [self._decode(bytes(row[0]), ConfigLinkRecord, "config link") for row in rows]
