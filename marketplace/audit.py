"""Canary audits: per-owner accuracy from the owners' own signed votes, with stated confidence.

An auditor is an ordinary client. It mixes requests whose labels it knows (canaries) into its
normal traffic, fetches the accountable certificate of every request it sent (each vote carries
its voter's own signature), and computes for each model owner, per window of requests:

- accuracy: the fraction of its signed canary votes that name the true label;
- agreement: the fraction of its signed votes that name the certified decision (all traffic).

Indistinguishability. Canaries and normal requests use the same client id, request ids of the
same shape (`uuid4().hex`, as the SDK makes), the same path and the same pacing; which slot
carries a canary is a fresh random draw. The accountable form is fetched for *every* request in
shuffled order after its window ends, so fetches do not reveal canaries. Canaries are drawn
without replacement until the labelled set is used up. Two limits remain: an owner who has the
labelled set itself can recognise its inputs (use a private set in production; the digits
held-out set is public), and a proof shows what an owner signed on the canaries the auditor
shows, not that the auditor chose them at random.

The tests (one-sided, exact Clopper-Pearson bounds, so no normal approximation near 100 %):

- accuracy-drop: window w is flagged when
      upper(acc_w, 1 - alpha/2) < lower(acc_baseline, 1 - alpha/2) - margin.
  If the owner's true accuracy in w is at least its baseline accuracy minus `margin`, a flag
  needs one of the two bounds to miss, so P(false alarm) <= alpha/2 + alpha/2 = alpha.
  The baseline is the owner's first `baseline_windows` windows with enough canaries.
- agreement-drift: the same test on agreement with the certified decision (`agreement_margin`);
  it needs no labels, so it sees every request of the window.
- below-floor (only with `accuracy_floor`): upper(acc_w, 1 - alpha) < floor; false alarm <= alpha
  whenever the true accuracy is at least the floor. It catches a weak model from day one.

`alpha` is per (owner, window, test); over a run the chance of any false alarm is at most alpha
times the number of tests made (union bound), which `Analysis.family_alarm_bound` reports.
Windows are disjoint samples of canaries drawn without replacement, so a window and its baseline
are independent given the owner's model, as the bound needs.

Everything is kept in an SQLite audit log (`AuditLog`); `analyse` recomputes every figure and
flag from it, so `quorumserve report` shows exactly what the auditor saw. Each flag comes with a
proof bundle (`flag_proof`): the accountable certificates of the owner's votes behind both
figures of the test and the requests they answer, which `verify_flag_proof` (and `quorumserve
verify-audit`) re-checks offline against the pinned config.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from certs.certificate import Certificate, decode_certificate, encode_certificate
from certs.config import GroupConfig
from certs.errors import CertificateError, DecodeError
from certs.request import InferenceRequest, request_from_json, request_to_json
from certs.verify import verify
from certs.wire import parse_canonical, request_from_proto, request_to_proto, serialize
from protos import common_pb2 as pb

log = logging.getLogger("quorumserve.audit")

PROOF_FORMAT = "quorumserve-audit-proof/v1"
LOG_SCHEMA_VERSION = 1
ACCURACY_DROP = "accuracy-drop"
AGREEMENT_DRIFT = "agreement-drift"
BELOW_FLOOR = "below-floor"
FLAG_KINDS = (ACCURACY_DROP, AGREEMENT_DRIFT, BELOW_FLOOR)


class AuditError(Exception):
    """The audit cannot go on (bad labelled data, an unusable log, no certificates)."""


# =========================================================================================
# statistics
# =========================================================================================


def cp_lower(successes: Any, trials: Any, confidence: float) -> Any:
    """One-sided Clopper-Pearson lower bound on a binomial proportion (arrays broadcast).

    P(bound > true p) <= 1 - confidence for every p; 0 when there are no successes or trials."""
    from scipy.special import betaincinv  # scipy comes with scikit-learn; imported late, it is slow

    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        bound = betaincinv(np.maximum(k, 1.0), np.maximum(n - k + 1.0, 1.0), 1.0 - confidence)
    return np.where((k <= 0) | (n <= 0), 0.0, bound)


def cp_upper(successes: Any, trials: Any, confidence: float) -> Any:
    """One-sided Clopper-Pearson upper bound; 1 when every trial succeeded or there were none."""
    from scipy.special import betaincinv

    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        bound = betaincinv(np.maximum(k + 1.0, 1.0), np.maximum(n - k, 1.0), confidence)
    return np.where((k >= n) | (n <= 0), 1.0, bound)


@dataclass(frozen=True, slots=True)
class Counts:
    successes: int
    trials: int

    @property
    def rate(self) -> float:
        return self.successes / self.trials if self.trials else float("nan")

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.successes + other.successes, self.trials + other.trials)

    def describe(self) -> str:
        return f"{self.successes}/{self.trials} = {100 * self.rate:.1f} %" if self.trials else "no votes"


ZERO = Counts(0, 0)


@dataclass(frozen=True, slots=True)
class TestOutcome:
    """One test of one owner in one window: the figures and whether it flags."""

    kind: str
    window: Counts
    baseline: Counts | None  # None for below-floor
    window_high: float  # upper confidence bound of the window's rate
    reference_low: float  # the baseline's lower bound minus the margin, or the floor
    alpha: float
    margin: float
    flagged: bool

    def statement(self, owner: str, window_no: int) -> str:
        what = "accuracy" if self.kind != AGREEMENT_DRIFT else "agreement with the certified decision"
        confidence = f"{100 * (1 - self.alpha):g} %"
        if self.baseline is None:
            return (
                f"with {confidence} confidence, {owner}'s {what} in window {window_no} ({self.window.describe()}, "
                f"at most {100 * self.window_high:.1f} %) is below the floor of {100 * self.reference_low:.1f} %"
            )
        return (
            f"with {confidence} confidence, {owner}'s {what} in window {window_no} ({self.window.describe()}, at most "
            f"{100 * self.window_high:.1f} %) is more than {100 * self.margin:g} points below its baseline "
            f"({self.baseline.describe()}, at least {100 * (self.reference_low + self.margin):.1f} %)"
        )


def drop_test(kind: str, window: Counts, baseline: Counts, alpha: float, margin: float) -> TestOutcome:
    """Flag when the window's rate is, with confidence 1 - alpha, more than `margin` below the
    baseline's: each bound is taken at alpha/2 (see the module docstring for why that is alpha)."""
    high = float(cp_upper(window.successes, window.trials, 1 - alpha / 2))
    low = float(cp_lower(baseline.successes, baseline.trials, 1 - alpha / 2)) - margin
    flagged = window.trials > 0 and baseline.trials > 0 and high < low
    return TestOutcome(kind, window, baseline, high, low, alpha, margin, flagged)


def floor_test(window: Counts, floor: float, alpha: float) -> TestOutcome:
    high = float(cp_upper(window.successes, window.trials, 1 - alpha))
    return TestOutcome(BELOW_FLOOR, window, None, high, floor, alpha, 0.0, window.trials > 0 and high < floor)


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """How the audit samples and judges. Stored in the log, so a report uses the same."""

    # 100 canaries a window: a swap from 98 % to 62 % accuracy is flagged in 99 % of windows
    # (simulate_detection); 50 canaries: 59 %
    canary_rate: float = 0.25  # fraction of requests that are canaries
    window_requests: int = 400  # a window closes after this many requests...
    window_seconds: float = 0.0  # ...or after this long (0: no time limit)
    baseline_windows: int = 2  # an owner's first windows with enough canaries form its baseline
    min_canaries: int = 10  # fewer canary votes in a window: no accuracy test there
    min_compared: int = 20  # fewer votes on agreed decisions in a window: no agreement test
    alpha: float = 0.001  # false-alarm rate per (owner, window, test)
    margin: float = 0.05  # accuracy drop tolerated before flagging (0.05 = 5 points)
    agreement_margin: float = 0.05
    accuracy_floor: float | None = None  # below-floor test only when set

    def __post_init__(self) -> None:
        if not 0.0 < self.canary_rate <= 1.0:
            raise ValueError("canary rate must be in (0, 1]")
        if self.window_requests < 1 and self.window_seconds <= 0:
            raise ValueError("a window needs a request count or a duration")
        if self.baseline_windows < 1:
            raise ValueError("baseline_windows must be at least 1")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError("alpha must be in (0, 1)")
        if not (0.0 <= self.margin < 1.0 and 0.0 <= self.agreement_margin < 1.0):
            raise ValueError("margins must be in [0, 1)")
        if self.accuracy_floor is not None and not 0.0 < self.accuracy_floor <= 1.0:
            raise ValueError("accuracy floor must be in (0, 1]")

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AuditSettings:
        known = set(cls.__slots__)  # type: ignore[attr-defined]
        return cls(**{k: v for k, v in data.items() if k in known})


# =========================================================================================
# labelled data and normal traffic
# =========================================================================================


@dataclass(frozen=True)
class LabelledData:
    """Inputs with known labels (indexes into the task's class labels)."""

    features: np.ndarray  # [N, ...] one row per input
    labels: np.ndarray  # [N] int64
    source: str

    def __len__(self) -> int:
        return len(self.labels)


def load_labelled(path: str | Path | None, config: GroupConfig) -> LabelledData:
    """An .npz file with arrays X (inputs) and y (class indexes, or label names), or the digits
    held-out set when `path` is None."""
    num_classes = len(config.task.class_labels)
    if path is None:
        from marketplace.models import CLASS_LABELS, held_out_digits

        if tuple(config.task.class_labels) != CLASS_LABELS:
            raise AuditError("the digits held-out set fits only the digits task: give --labelled DATA.npz")
        features, labels = held_out_digits(0)
        return LabelledData(features, labels.astype(np.int64), "digits held-out set (seed 0)")
    try:
        with np.load(Path(path), allow_pickle=False) as data:
            if "X" not in data or "y" not in data:
                raise AuditError(f"{path}: an .npz with arrays X (inputs) and y (labels) is needed")
            features, raw = np.asarray(data["X"]), np.asarray(data["y"])
    except (OSError, ValueError) as exc:
        raise AuditError(f"cannot read labelled data {path}: {exc}") from exc
    if raw.dtype.kind in "US":
        index = {name: i for i, name in enumerate(config.task.class_labels)}
        unknown = sorted({str(v) for v in raw} - set(index))
        if unknown:
            raise AuditError(f"{path}: labels {unknown[:5]} are not among the task's labels")
        labels = np.array([index[str(v)] for v in raw], dtype=np.int64)
    elif raw.dtype.kind in "iu":
        labels = raw.astype(np.int64)
    else:
        raise AuditError(f"{path}: y must hold class indexes or label names, not {raw.dtype}")
    if features.shape[0] != labels.shape[0] or labels.ndim != 1:
        raise AuditError(f"{path}: X has {features.shape[0]} rows, y {labels.shape[0]} labels")
    if labels.size == 0 or labels.min() < 0 or labels.max() >= num_classes:
        raise AuditError(f"{path}: labels must be class indexes 0..{num_classes - 1}")
    values = int(np.prod(config.task.input_shape))
    if features.size != labels.size * values:
        raise AuditError(f"{path}: each input must have {values} values (shape {list(config.task.input_shape)})")
    return LabelledData(features.reshape((labels.size, *config.task.input_shape)), labels, str(path))


def digits_traffic() -> np.ndarray:
    """Normal traffic for the digits task: every digit image that is not in the held-out set."""
    from sklearn.datasets import load_digits

    from marketplace.models import held_out_digits

    features = (load_digits(return_X_y=True)[0] / 16.0).astype(np.float32)
    held_out = {row.tobytes() for row in held_out_digits(0)[0]}
    return np.stack([row for row in features if row.tobytes() not in held_out])


class CanarySource:
    """Draws labelled inputs without replacement, reshuffling when the set is used up."""

    def __init__(self, data: LabelledData, rng: random.Random) -> None:
        self.data = data
        self.rng = rng
        self._order: list[int] = []
        self.cycles = 0

    def draw(self) -> tuple[np.ndarray, int]:
        if not self._order:
            self._order = list(range(len(self.data)))
            self.rng.shuffle(self._order)
            self.cycles += 1
            if self.cycles > 1:
                log.warning("canaries: the labelled set (%d inputs) is used up; reusing it", len(self.data))
        index = self._order.pop()
        return self.data.features[index], int(self.data.labels[index])


# =========================================================================================
# the audit log
# =========================================================================================

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS windows (
    window INTEGER PRIMARY KEY,
    opened_at REAL NOT NULL,
    closed_at REAL                  -- NULL while open
);
CREATE TABLE IF NOT EXISTS requests (
    row INTEGER PRIMARY KEY,
    window INTEGER NOT NULL,
    sent_at REAL NOT NULL,          -- unix seconds
    client_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    canary INTEGER NOT NULL,        -- 1: a labelled canary
    true_label INTEGER,             -- canaries only
    request BLOB NOT NULL,          -- quorumserve.v1.InferenceRequest
    status TEXT NOT NULL,           -- certified | failed
    error TEXT,
    seq INTEGER,
    decision INTEGER,               -- certified class, -1 for NO_AGREEMENT
    certificate BLOB,               -- accountable quorumserve.v1.Certificate once fetched and verified
    UNIQUE (client_id, request_id)
);
CREATE TABLE IF NOT EXISTS votes (  -- from accountable certificates only: each signed by its voter
    row INTEGER NOT NULL REFERENCES requests (row),
    replica_id INTEGER NOT NULL,
    model_version INTEGER NOT NULL,
    label INTEGER NOT NULL,
    PRIMARY KEY (row, replica_id)
);
CREATE TABLE IF NOT EXISTS flags (
    id INTEGER PRIMARY KEY,
    window INTEGER NOT NULL,
    replica_id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    statement TEXT NOT NULL,
    detail TEXT NOT NULL,           -- JSON: the test's figures
    raised_at REAL NOT NULL,
    UNIQUE (window, replica_id, kind)
);
"""


@dataclass(frozen=True, slots=True)
class RequestRecord:
    row: int
    window: int
    sent_at: float
    client_id: str
    request_id: str
    canary: bool
    true_label: int | None
    status: str
    seq: int | None
    decision: int | None
    accountable: bool


@dataclass(frozen=True, slots=True)
class VoteRecord:
    row: int
    replica_id: int
    model_version: int
    label: int


class AuditLog:
    """The auditor's SQLite log: requests, the owners' signed votes, windows, flags."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL with NORMAL sync never corrupts the log; a power cut may lose the last few rows,
        # which an audit can afford (a full fsync per request would slow the traffic instead)
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        version = self.meta("schema_version")
        if version is None:
            self.set_meta("schema_version", str(LOG_SCHEMA_VERSION))
        elif version != str(LOG_SCHEMA_VERSION):
            raise AuditError(f"{self.path}: audit log schema {version}, this version reads {LOG_SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- meta --------------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def bind(self, config: GroupConfig, settings: AuditSettings, labelled_source: str) -> None:
        """Record which group and settings this log is about; refuse to mix groups in one log."""
        known = self.meta("config_digest")
        if known is not None and known != config.digest.hex():
            raise AuditError(
                f"{self.path} audits group {self.meta('group_id')!r} config {known[:16]}...; "
                f"use another log for group {config.group_id!r} config {config.digest.hex()[:16]}..."
            )
        self.set_meta("group_id", config.group_id)
        self.set_meta("config_digest", config.digest.hex())
        self.set_meta("config_json", json.dumps(config.to_json()))
        self.set_meta("settings", json.dumps(settings.to_json()))
        self.set_meta("labelled_source", labelled_source)

    def config(self) -> GroupConfig:
        text = self.meta("config_json")
        if text is None:
            raise AuditError(f"{self.path} holds no audit yet")
        return GroupConfig.from_json(json.loads(text))

    def settings(self) -> AuditSettings:
        text = self.meta("settings")
        return AuditSettings() if text is None else AuditSettings.from_json(json.loads(text))

    # -- windows -----------------------------------------------------------------------------
    def next_window(self) -> int:
        row = self._db.execute("SELECT MAX(window) FROM windows").fetchone()
        return 1 if row[0] is None else int(row[0]) + 1

    def open_window(self, window: int, opened_at: float) -> None:
        self._db.execute("INSERT OR REPLACE INTO windows (window, opened_at, closed_at) VALUES (?, ?, NULL)", (window, opened_at))

    def close_window(self, window: int, closed_at: float) -> None:
        self._db.execute("UPDATE windows SET closed_at = ? WHERE window = ?", (closed_at, window))

    def windows(self) -> list[tuple[int, float, float | None]]:
        return [(int(w), float(o), None if c is None else float(c)) for w, o, c in self._db.execute(
            "SELECT window, opened_at, closed_at FROM windows ORDER BY window")]

    # -- requests and votes --------------------------------------------------------------------
    def add_request(
        self,
        window: int,
        sent_at: float,
        request: InferenceRequest,
        canary: bool,
        true_label: int | None,
        *,
        seq: int | None,
        decision: int | None,
        error: str | None = None,
    ) -> int:
        cursor = self._db.execute(
            "INSERT INTO requests (window, sent_at, client_id, request_id, canary, true_label, request, status, error, seq, decision) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                window, sent_at, request.client_id, request.request_id, int(canary), true_label,
                serialize(request_to_proto(request)), "failed" if error else "certified", error, seq, decision,
            ),
        )
        return int(cursor.lastrowid or 0)

    def attach_certificate(self, row: int, certificate: Certificate) -> None:
        """Store the verified accountable certificate of a request and the votes it proves."""
        leaf = certificate.leaf
        self._db.execute("BEGIN")
        try:
            self._db.execute(
                "UPDATE requests SET certificate = ?, seq = ?, decision = ? WHERE row = ?",
                (encode_certificate(certificate), certificate.header.seq, leaf.decision.label, row),
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO votes (row, replica_id, model_version, label) VALUES (?, ?, ?, ?)",
                [(row, v.replica_id, v.model_version, v.output.label) for v in leaf.votes],
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def requests(self, window: int | None = None) -> list[RequestRecord]:
        query = (
            "SELECT row, window, sent_at, client_id, request_id, canary, true_label, status, seq, decision, "
            "certificate IS NOT NULL FROM requests"
        )
        args: tuple[Any, ...] = ()
        if window is not None:
            query += " WHERE window = ?"
            args = (window,)
        return [
            RequestRecord(int(r), int(w), float(t), c, q, bool(k), None if y is None else int(y), s,
                          None if seq is None else int(seq), None if d is None else int(d), bool(a))
            for r, w, t, c, q, k, y, s, seq, d, a in self._db.execute(query + " ORDER BY row", args)
        ]

    def votes(self) -> list[VoteRecord]:
        return [VoteRecord(int(r), int(i), int(v), int(label)) for r, i, v, label in self._db.execute(
            "SELECT row, replica_id, model_version, label FROM votes ORDER BY row, replica_id")]

    def request_and_certificate(self, row: int) -> tuple[InferenceRequest, Certificate | None]:
        found = self._db.execute("SELECT request, certificate FROM requests WHERE row = ?", (row,)).fetchone()
        if found is None:
            raise AuditError(f"no request row {row} in {self.path}")
        request = request_from_proto(parse_canonical(pb.InferenceRequest, found[0], "logged request"))
        return request, None if found[1] is None else decode_certificate(found[1])

    # -- flags ---------------------------------------------------------------------------------
    def add_flag(self, window: int, replica_id: int, outcome: TestOutcome, statement: str, raised_at: float) -> bool:
        """Record a flag; False when this (window, owner, test) was flagged already."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO flags (window, replica_id, kind, statement, detail, raised_at) VALUES (?, ?, ?, ?, ?, ?)",
            (window, replica_id, outcome.kind, statement, json.dumps(outcome_to_json(outcome)), raised_at),
        )
        return cursor.rowcount > 0

    def flags(self) -> list[dict[str, Any]]:
        return [
            {"id": int(i), "window": int(w), "replica_id": int(r), "kind": k, "statement": s,
             "detail": json.loads(d), "raised_at": float(t)}
            for i, w, r, k, s, d, t in self._db.execute(
                "SELECT id, window, replica_id, kind, statement, detail, raised_at FROM flags ORDER BY id")
        ]


def outcome_to_json(outcome: TestOutcome) -> dict[str, Any]:
    return {
        "kind": outcome.kind,
        "window": [outcome.window.successes, outcome.window.trials],
        "baseline": None if outcome.baseline is None else [outcome.baseline.successes, outcome.baseline.trials],
        "window_high": outcome.window_high,
        "reference_low": outcome.reference_low,
        "alpha": outcome.alpha,
        "margin": outcome.margin,
        "flagged": outcome.flagged,
    }


# =========================================================================================
# analysis: every figure and flag, recomputed from the log
# =========================================================================================


@dataclass
class OwnerWindow:
    """One owner's figures in one window."""

    window: int
    replica_id: int
    accuracy: Counts = ZERO
    agreement: Counts = ZERO
    versions: set[int] = field(default_factory=set)
    accuracy_bounds: tuple[float, float] = (float("nan"), float("nan"))
    agreement_bounds: tuple[float, float] = (float("nan"), float("nan"))
    tests: list[TestOutcome] = field(default_factory=list)
    baseline: bool = False  # part of the owner's accuracy baseline


@dataclass
class Analysis:
    config: GroupConfig
    settings: AuditSettings
    windows: list[int]
    window_times: dict[int, tuple[float, float | None]]
    cells: dict[tuple[int, int], OwnerWindow]  # (window, replica id)
    baselines: dict[int, tuple[list[int], list[int]]]  # replica -> (accuracy windows, agreement windows)
    requests: int
    canaries: int
    accountable: int
    failed: int
    versions_seen: dict[int, list[tuple[int, int, int]]]  # replica -> [(version, first window, last window)]

    @property
    def tests_made(self) -> int:
        return sum(len(cell.tests) for cell in self.cells.values())

    @property
    def family_alarm_bound(self) -> float:
        """Union bound on the chance that any test of the run raised a false alarm."""
        return min(1.0, self.tests_made * self.settings.alpha)

    def flagged(self) -> list[tuple[OwnerWindow, TestOutcome]]:
        return [(cell, test) for key, cell in sorted(self.cells.items()) for test in cell.tests if test.flagged]

    def owner(self, replica_id: int) -> str:
        member = self.config.member(replica_id)
        return f"replica {replica_id}" if member is None else f"{member.owner_id} (replica {replica_id})"


def analyse(log: AuditLog, *, closed_only: bool = True) -> Analysis:
    """Every figure and test of the audit so far, from the log (closed windows only)."""
    return analyse_records(log.config(), log.settings(), log.windows(), log.requests(), log.votes(), closed_only=closed_only)


def analyse_records(
    config: GroupConfig,
    settings: AuditSettings,
    window_rows: Sequence[tuple[int, float, float | None]],
    records: Sequence[RequestRecord],
    votes: Iterable[VoteRecord],
    *,
    closed_only: bool = True,
) -> Analysis:
    """The analysis of logged records: (window, opened_at, closed_at) rows, requests and the
    owners' signed votes (only those from verified accountable certificates)."""
    closed = sorted(w for w, _, c in window_rows if c is not None or not closed_only)
    times = {w: (o, c) for w, o, c in window_rows}
    by_row = {r.row: r for r in records}
    cells: dict[tuple[int, int], OwnerWindow] = {}
    ids = config.replica_ids
    for w in closed:
        for r in ids:
            cells[(w, r)] = OwnerWindow(w, r)
    versions: dict[int, dict[int, list[int]]] = {r: {} for r in ids}
    for vote in votes:
        record = by_row.get(vote.row)
        if record is None or (record.window, vote.replica_id) not in cells:
            continue
        cell = cells[(record.window, vote.replica_id)]
        cell.versions.add(vote.model_version)
        span = versions.setdefault(vote.replica_id, {}).setdefault(vote.model_version, [record.window, record.window])
        span[0], span[1] = min(span[0], record.window), max(span[1], record.window)
        if record.canary and record.true_label is not None:
            cell.accuracy = cell.accuracy + Counts(int(vote.label == record.true_label), 1)
        if record.decision is not None and record.decision >= 0:
            cell.agreement = cell.agreement + Counts(int(vote.label == record.decision), 1)

    alpha = settings.alpha
    baselines: dict[int, tuple[list[int], list[int]]] = {}
    for r in ids:
        accuracy_base: list[int] = []
        agreement_base: list[int] = []
        for w in closed:
            cell = cells[(w, r)]
            cell.accuracy_bounds = (float(cp_lower(cell.accuracy.successes, cell.accuracy.trials, 1 - alpha / 2)),
                                    float(cp_upper(cell.accuracy.successes, cell.accuracy.trials, 1 - alpha / 2)))
            cell.agreement_bounds = (float(cp_lower(cell.agreement.successes, cell.agreement.trials, 1 - alpha / 2)),
                                     float(cp_upper(cell.agreement.successes, cell.agreement.trials, 1 - alpha / 2)))
            enough_canaries = cell.accuracy.trials >= settings.min_canaries
            enough_compared = cell.agreement.trials >= settings.min_compared
            if enough_canaries and len(accuracy_base) == settings.baseline_windows:
                base = sum((cells[(b, r)].accuracy for b in accuracy_base), ZERO)
                cell.tests.append(drop_test(ACCURACY_DROP, cell.accuracy, base, alpha, settings.margin))
            if enough_compared and len(agreement_base) == settings.baseline_windows:
                base = sum((cells[(b, r)].agreement for b in agreement_base), ZERO)
                cell.tests.append(drop_test(AGREEMENT_DRIFT, cell.agreement, base, alpha, settings.agreement_margin))
            if enough_canaries and settings.accuracy_floor is not None:
                cell.tests.append(floor_test(cell.accuracy, settings.accuracy_floor, alpha))
            # baselines fill with the first windows that have enough data (and are then fixed)
            if enough_canaries and len(accuracy_base) < settings.baseline_windows:
                accuracy_base.append(w)
                cell.baseline = True
            if enough_compared and len(agreement_base) < settings.baseline_windows:
                agreement_base.append(w)
        baselines[r] = (accuracy_base, agreement_base)

    return Analysis(
        config=config,
        settings=settings,
        windows=closed,
        window_times=times,
        cells=cells,
        baselines=baselines,
        requests=len(records),
        canaries=sum(1 for r in records if r.canary),
        accountable=sum(1 for r in records if r.accountable),
        failed=sum(1 for r in records if r.status != "certified"),
        versions_seen={r: sorted((v, s[0], s[1]) for v, s in spans.items()) for r, spans in versions.items()},
    )


def record_flags(log: AuditLog, analysis: Analysis, now: float) -> list[dict[str, Any]]:
    """Store the analysis' flags that are new; returns them as the log lists them."""
    before = {(f["window"], f["replica_id"], f["kind"]) for f in log.flags()}
    for cell, test in analysis.flagged():
        statement = test.statement(analysis.owner(cell.replica_id), cell.window) + _versions_note(analysis, cell)
        log.add_flag(cell.window, cell.replica_id, test, statement, now)
    return [f for f in log.flags() if (f["window"], f["replica_id"], f["kind"]) not in before]


def _versions_note(analysis: Analysis, cell: OwnerWindow) -> str:
    """Whether the owner declared a model change: a quiet swap keeps claiming the same version."""
    base_windows = analysis.baselines.get(cell.replica_id, ([], []))[0]
    before = sorted(set().union(*(analysis.cells[(w, cell.replica_id)].versions for w in base_windows)))
    now = sorted(cell.versions)
    if not now or not before:
        return ""
    if now == before:
        return f"; its signed votes claim model version {', '.join(map(str, now))}, as in its baseline"
    return (
        f"; its signed votes claim model version {', '.join(map(str, now))} "
        f"(baseline: {', '.join(map(str, before))})"
    )


# =========================================================================================
# proofs: a flag and the owner's signed votes behind it, checkable offline
# =========================================================================================


def flag_proof(log: AuditLog, flag: Mapping[str, Any]) -> dict[str, Any]:
    """The proof bundle of one flag: every accountable certificate behind its figures."""
    analysis = analyse(log)
    config = analysis.config
    replica_id, window, kind = int(flag["replica_id"]), int(flag["window"]), str(flag["kind"])
    accuracy_base, agreement_base = analysis.baselines.get(replica_id, ([], []))
    parts: dict[int, str] = {window: "window"}
    if kind == ACCURACY_DROP:
        parts.update({w: "baseline" for w in accuracy_base})
    elif kind == AGREEMENT_DRIFT:
        parts.update({w: "baseline" for w in agreement_base})
    voted = {v.row for v in log.votes() if v.replica_id == replica_id}
    items = []
    for record in log.requests():
        part = parts.get(record.window)
        if part is None or record.row not in voted:
            continue
        if kind != AGREEMENT_DRIFT and not record.canary:
            continue
        if kind == AGREEMENT_DRIFT and (record.decision is None or record.decision < 0):
            continue
        request, certificate = log.request_and_certificate(record.row)
        if certificate is None:
            continue
        items.append({
            "part": part,
            "window": record.window,
            "true_label": record.true_label if record.canary else None,
            "request": request_to_json(request),
            "certificate": base64.b64encode(encode_certificate(certificate)).decode("ascii"),
        })
    member = config.member(replica_id)
    return {
        "format": PROOF_FORMAT,
        "group_id": config.group_id,
        "epoch": config.epoch,
        "config_digest": config.digest.hex(),
        "replica_id": replica_id,
        "owner_id": None if member is None else member.owner_id,
        "window": window,
        "kind": kind,
        "statement": flag["statement"],
        "test": flag["detail"],
        "items": items,
    }


@dataclass(frozen=True)
class ProofVerdict:
    replica_id: int
    kind: str
    window: int
    outcome: TestOutcome
    certificates: int
    labels_checked: bool  # the claimed labels were matched against a labelled data set

    def describe(self, config: GroupConfig) -> str:
        member = config.member(self.replica_id)
        owner = f"replica {self.replica_id}" if member is None else f"{member.owner_id} (replica {self.replica_id})"
        labels = "labels checked against the data set" if self.labels_checked else "labels as the auditor states them"
        return (
            f"{self.outcome.statement(owner, self.window)}; from {self.certificates} certificates, each with the "
            f"owner's own signature on its vote ({labels})"
        )


def verify_flag_proof(bundle: Any, config: GroupConfig, labelled: LabelledData | None = None) -> ProofVerdict:
    """Re-check a flag from its proof bundle: every certificate verifies against `config` and the
    request it answers with each voter's signature, the counts recomputed from the owner's signed
    votes match the bundle's, and the test flags with them. With `labelled`, every canary's input
    must be a row of that data set with the stated label. Raises CertificateError otherwise."""
    try:
        return _verify_flag_proof(bundle, config, labelled)
    except CertificateError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise DecodeError(f"malformed audit proof: {exc}") from exc


def _verify_flag_proof(bundle: Any, config: GroupConfig, labelled: LabelledData | None) -> ProofVerdict:
    if not isinstance(bundle, dict) or bundle.get("format") != PROOF_FORMAT:
        raise DecodeError(f"not an audit proof: format must be {PROOF_FORMAT!r}")
    if bundle["config_digest"] != config.digest.hex():
        raise CertificateError(f"the proof is about config {str(bundle['config_digest'])[:16]}..., not the pinned one")
    replica_id, kind, window = int(bundle["replica_id"]), str(bundle["kind"]), int(bundle["window"])
    if kind not in FLAG_KINDS:
        raise DecodeError(f"unknown flag kind {kind!r}")
    test = bundle["test"]
    alpha, margin = float(test["alpha"]), float(test["margin"])
    by_input: dict[bytes, set[int]] = {}
    if labelled is not None:
        from marketplace.sdk import row_bytes

        for row, label in zip(labelled.features, labelled.labels):
            by_input.setdefault(row_bytes(config, row), set()).add(int(label))

    counts = {"window": ZERO, "baseline": ZERO}
    seen: set[tuple[str, str]] = set()
    digests: set[bytes] = set()
    for i, item in enumerate(bundle["items"]):
        part = item["part"]
        if part not in counts:
            raise DecodeError(f"item {i}: part must be 'window' or 'baseline'")
        request = request_from_json(item["request"])
        certificate = decode_certificate(base64.b64decode(item["certificate"], validate=True))
        if request.key in seen or request.digest in digests:
            raise CertificateError(f"item {i}: request {request.client_id}/{request.request_id} is counted twice")
        seen.add(request.key)
        digests.add(request.digest)
        try:
            verified = verify(certificate, config, request)
        except CertificateError as exc:
            raise CertificateError(f"item {i}: {exc}") from exc
        if not verified.vote_proofs_checked:
            raise CertificateError(f"item {i}: a compact certificate: the votes carry no voter signatures")
        vote = next((v for v in certificate.leaf.votes if v.replica_id == replica_id), None)
        if vote is None:
            raise CertificateError(f"item {i}: replica {replica_id} did not vote on request {request.request_id}")
        if kind == AGREEMENT_DRIFT:
            if not certificate.leaf.decision.agreed:
                raise CertificateError(f"item {i}: no agreed decision to compare with")
            hit = vote.output.label == certificate.leaf.decision.label
        else:
            if certificate.leaf.label_space:
                raise CertificateError(f"item {i}: a canary must use the task's own labels")
            true_label = int(item["true_label"])
            if labelled is not None:
                if len(request.inputs) != 1 or true_label not in by_input.get(request.inputs[0].data, set()):
                    raise CertificateError(f"item {i}: the input is not in the labelled data with label {true_label}")
            hit = vote.output.label == true_label
        counts[part] = counts[part] + Counts(int(hit), 1)

    stated = test["window"], test["baseline"]
    if list(stated[0]) != [counts["window"].successes, counts["window"].trials]:
        raise CertificateError(
            f"the proof's window votes give {counts['window'].describe()}, the flag states {stated[0][0]}/{stated[0][1]}"
        )
    if kind == BELOW_FLOOR:
        outcome = floor_test(counts["window"], float(test["reference_low"]), alpha)
    else:
        if stated[1] is None or list(stated[1]) != [counts["baseline"].successes, counts["baseline"].trials]:
            raise CertificateError(
                f"the proof's baseline votes give {counts['baseline'].describe()}, the flag states {stated[1]}"
            )
        outcome = drop_test(kind, counts["window"], counts["baseline"], alpha, margin)
    if not outcome.flagged:
        raise CertificateError(
            f"the signed votes do not support the flag: window at most {100 * outcome.window_high:.1f} %, "
            f"reference {100 * outcome.reference_low:.1f} %"
        )
    return ProofVerdict(replica_id, kind, window, outcome, len(bundle["items"]), labelled is not None)


def write_proof(log: AuditLog, flag: Mapping[str, Any], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"flag-{flag['id']}-window-{flag['window']}-replica-{flag['replica_id']}-{flag['kind']}.json"
    path.write_text(json.dumps(flag_proof(log, flag), indent=1))
    return path


# =========================================================================================
# the auditor: traffic with canaries, accountable certificates, windows
# =========================================================================================


class AuditClient(Protocol):
    """What the auditor needs of an SDK client (AsyncClient or AsyncReplicaClient)."""

    @property
    def config(self) -> GroupConfig: ...

    async def infer(self, array: Any, *, request_id: str | None = None, label_mapping: Mapping[str, str] | None = None, timeout_s: float | None = None) -> Any: ...

    async def get_certificate(self, request_id: str, *, client_id: str | None = None, timeout_s: float = 10.0) -> Any: ...


@dataclass
class _Window:
    number: int
    opened_at: float
    rows: list[int] = field(default_factory=list)
    sent: int = 0
    inflight: set[asyncio.Task[Any]] = field(default_factory=set)


class Auditor:
    """Sends traffic with canaries mixed in through `client`, and judges each window.

    Use `infer` for your own traffic (canaries are slipped in at random around it) or `run` to
    generate traffic from a pool of inputs. A request belongs to the window open when it is
    sent; a window closes after `window_requests` requests (or `window_seconds`), then its
    accountable certificates are fetched and every figure and flag is recomputed. `flush` closes
    the open window and waits for all analyses; `on_flag` sees each new flag as the log stores it.
    """

    def __init__(
        self,
        client: AuditClient,
        audit_log: AuditLog,
        labelled: LabelledData,
        settings: AuditSettings = AuditSettings(),
        *,
        client_id: str | None = None,
        rng: random.Random | None = None,
        concurrency: int = 32,
        fetch_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
        on_flag: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.client = client
        self.config = client.config
        self.log = audit_log
        self.settings = settings
        # canaries go out under the same client id as the traffic they hide in
        self.client_id = client_id or str(getattr(client, "client_id"))
        # unpredictable by default: replicas must not be able to guess which requests are canaries
        self.rng = rng or random.SystemRandom()
        self.canaries = CanarySource(labelled, self.rng)
        self.clock = clock
        self.fetch_timeout_s = fetch_timeout_s
        self.on_flag = on_flag
        self._limit = asyncio.Semaphore(concurrency)
        self._window: _Window | None = None
        self._closing: list[asyncio.Task[None]] = []
        self.sent = 0
        self.failed = 0
        self.new_flags: list[dict[str, Any]] = []
        audit_log.bind(self.config, settings, labelled.source)

    # -- traffic ---------------------------------------------------------------------------------
    async def infer(self, array: Any, *, label_mapping: Mapping[str, str] | None = None) -> Any:
        """One request of your own traffic, certified; canaries are sent around it (a geometric
        number per request, so that they make up canary_rate of all requests), each after a
        random delay."""
        rate = self.settings.canary_rate
        if rate >= 1.0:
            self._spawn(self._send_canary, self.rng.uniform(0.0, 0.05))
        else:
            while self.rng.random() < rate:
                self._spawn(self._send_canary, self.rng.uniform(0.0, 0.05))
        return await self._spawn(self._send, array, None, label_mapping)

    async def run(
        self,
        traffic: np.ndarray | None,
        requests: int | None = None,
        *,
        duration_s: float | None = None,
        qps: float = 20.0,
    ) -> None:
        """Generate `requests` requests (or run for `duration_s`) at `qps` on average, Poisson
        arrivals; each is a canary with probability canary_rate, else a random row of `traffic`
        (None: canaries only). Waits for every request and every window's analysis."""
        if requests is None and duration_s is None:
            raise ValueError("give a request count or a duration")
        deadline = None if duration_s is None else self.clock() + duration_s
        started = 0
        while (requests is None or started < requests) and (deadline is None or self.clock() < deadline):
            if traffic is None or len(traffic) == 0 or self.rng.random() < self.settings.canary_rate:
                self._spawn(self._send_canary, 0.0)
            else:
                self._spawn(self._send_quietly, traffic[self.rng.randrange(len(traffic))])
            started += 1
            if qps > 0:
                await asyncio.sleep(self.rng.expovariate(qps))
        await self.flush()

    def _spawn(self, send: Callable[..., Awaitable[Any]], *args: Any) -> asyncio.Task[Any]:
        """Start one request in the open window (rotating it when full)."""
        window = self._current_window()
        window.sent += 1
        self.sent += 1
        task = asyncio.ensure_future(send(window, *args))
        window.inflight.add(task)
        task.add_done_callback(window.inflight.discard)
        self._maybe_rotate(window)
        return task

    async def _send_quietly(self, window: _Window, array: Any) -> None:
        try:
            await self._send(window, array, None, None)
        except Exception as exc:  # generated traffic: a failure is logged and counted, not raised
            log.info("audit: a request failed: %s", exc)

    async def _send_canary(self, window: _Window, delay_s: float) -> None:
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        features, label = self.canaries.draw()
        await self._send(window, features, label, None)

    async def _send(self, window: _Window, array: Any, true_label: int | None, label_mapping: Mapping[str, str] | None) -> Any:
        # the SDK's own request id shape, so a canary's id looks like any other
        request_id = uuid.uuid4().hex
        sent_at = self.clock()
        async with self._limit:
            try:
                result = await self.client.infer(array, request_id=request_id, label_mapping=label_mapping)
            except Exception as exc:  # an SDK ClientError or a transport failure
                self.failed += 1
                from marketplace.sdk import build_request

                request = build_request(self.config, array, client_id=self.client_id, request_id=request_id, label_mapping=label_mapping)
                window.rows.append(self.log.add_request(
                    window.number, sent_at, request, true_label is not None, true_label,
                    seq=None, decision=None, error=str(exc) or type(exc).__name__,
                ))
                if true_label is None:
                    raise
                return None
        window.rows.append(self.log.add_request(
            window.number, sent_at, result.request, true_label is not None, true_label,
            seq=result.certificate.header.seq, decision=result.certificate.leaf.decision.label,
        ))
        return result

    # -- windows ---------------------------------------------------------------------------------
    def _current_window(self) -> _Window:
        window = self._window
        if window is not None and self.settings.window_seconds > 0 and self.clock() - window.opened_at >= self.settings.window_seconds:
            self._rotate(window)
            window = None
        if window is None:
            number = self.log.next_window()
            window = self._window = _Window(number, self.clock())
            self.log.open_window(number, window.opened_at)
        return window

    def _maybe_rotate(self, window: _Window) -> None:
        if self.settings.window_requests > 0 and window.sent >= self.settings.window_requests:
            self._rotate(window)

    def _rotate(self, window: _Window) -> None:
        if window is self._window:
            self._window = None
            previous = self._closing[-1] if self._closing else None
            self._closing.append(asyncio.ensure_future(self._close(window, previous)))

    async def flush(self) -> None:
        """Close the open window (if it holds anything) and wait for every window's analysis."""
        if self._window is not None and self._window.sent:
            self._rotate(self._window)
        while self._closing:
            await self._closing.pop(0)

    async def _close(self, window: _Window, previous: asyncio.Task[None] | None) -> None:
        while window.inflight:
            await asyncio.gather(*list(window.inflight), return_exceptions=True)
        rows = list(window.rows)
        # every request's accountable form, in random order: fetches say nothing about canaries
        self.rng.shuffle(rows)
        await asyncio.gather(*(self._fetch(row) for row in rows))
        # windows are judged in order: a flag, once stored, must rest on every earlier window
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        closed_at = self.clock()
        self.log.close_window(window.number, closed_at)
        for flag in record_flags(self.log, analyse(self.log), closed_at):
            log.info("audit flag: %s", flag["statement"])
            self.new_flags.append(flag)
            if self.on_flag is not None:
                self.on_flag(flag)

    async def _fetch(self, row: int) -> None:
        request, _ = self.log.request_and_certificate(row)
        async with self._limit:
            try:
                result = await self.client.get_certificate(request.request_id, client_id=request.client_id, timeout_s=self.fetch_timeout_s)
            except Exception as exc:  # no accountable form: the request stays out of the figures
                log.info("audit: no accountable certificate for %s: %s", request.request_id, exc)
                return
        certificate: Certificate = result.certificate
        try:
            verified = verify(certificate, self.config, request)
        except CertificateError as exc:
            log.warning("audit: the accountable certificate of %s does not verify: %s", request.request_id, exc)
            return
        if not verified.vote_proofs_checked:
            log.info("audit: the certificate of %s carries no vote proofs", request.request_id)
            return
        self.log.attach_certificate(row, certificate)


def summarise(analysis: Analysis) -> dict[str, Any]:
    """The analysis as JSON: per owner, per window figures and tests."""
    owners = []
    for r in analysis.config.replica_ids:
        rows = []
        for w in analysis.windows:
            cell = analysis.cells[(w, r)]
            rows.append({
                "window": w,
                "accuracy": [cell.accuracy.successes, cell.accuracy.trials],
                "accuracy_bounds": list(cell.accuracy_bounds),
                "agreement": [cell.agreement.successes, cell.agreement.trials],
                "agreement_bounds": list(cell.agreement_bounds),
                "model_versions": sorted(cell.versions),
                "baseline": cell.baseline,
                "tests": [outcome_to_json(t) for t in cell.tests],
            })
        owners.append({"replica_id": r, "owner": analysis.owner(r), "windows": rows})
    return {
        "group_id": analysis.config.group_id,
        "config_digest": analysis.config.digest.hex(),
        "settings": analysis.settings.to_json(),
        "requests": analysis.requests,
        "canaries": analysis.canaries,
        "accountable": analysis.accountable,
        "failed": analysis.failed,
        "tests_made": analysis.tests_made,
        "family_alarm_bound": analysis.family_alarm_bound,
        "owners": owners,
    }


def simulate_false_alarms(
    accuracies: Sequence[float],
    *,
    windows: int,
    canaries_per_window: int,
    settings: AuditSettings,
    seed: int,
) -> tuple[int, int]:
    """(false alarms, tests) of the accuracy-drop test for honest owners whose accuracy never
    changes: each owner's votes are Bernoulli(accuracy) draws, `windows` windows per owner after
    its baseline. Vectorised, so hundreds of thousands of windows take seconds."""
    rng = np.random.default_rng(seed)
    alarms = tests = 0
    for p in accuracies:
        base = rng.binomial(canaries_per_window * settings.baseline_windows, p, size=windows)
        window = rng.binomial(canaries_per_window, p, size=windows)
        high = cp_upper(window, canaries_per_window, 1 - settings.alpha / 2)
        low = cp_lower(base, canaries_per_window * settings.baseline_windows, 1 - settings.alpha / 2) - settings.margin
        alarms += int(np.count_nonzero(high < low))
        tests += windows
    return alarms, tests


def simulate_detection(
    before: float,
    after: float,
    *,
    windows: int,
    canaries_per_window: int,
    settings: AuditSettings,
    seed: int,
) -> float:
    """Fraction of windows after a swap (accuracy `before` -> `after`) that the accuracy-drop
    test flags: the test's power at this window size."""
    rng = np.random.default_rng(seed)
    base = rng.binomial(canaries_per_window * settings.baseline_windows, before, size=windows)
    window = rng.binomial(canaries_per_window, after, size=windows)
    high = cp_upper(window, canaries_per_window, 1 - settings.alpha / 2)
    low = cp_lower(base, canaries_per_window * settings.baseline_windows, 1 - settings.alpha / 2) - settings.margin
    return float(np.mean(high < low))


def settings_summary(settings: AuditSettings) -> str:
    floor = "" if settings.accuracy_floor is None else f", floor {100 * settings.accuracy_floor:g} %"
    seconds = f" or {settings.window_seconds:g} s" if settings.window_seconds > 0 else ""
    return (
        f"canary rate {settings.canary_rate:g}, windows of {settings.window_requests} requests{seconds}, "
        f"baseline {settings.baseline_windows} windows, alpha {settings.alpha:g} per test, "
        f"margins {100 * settings.margin:g} (accuracy) and {100 * settings.agreement_margin:g} (agreement) points{floor}"
    )


def confidence_text(alpha: float) -> str:
    return f"{100 * (1 - alpha):g} %"


def load_proof(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise AuditError(f"cannot read audit proof {path}: {exc}") from exc


def flags_by_owner(flags: Iterable[Mapping[str, Any]]) -> dict[int, list[Mapping[str, Any]]]:
    out: dict[int, list[Mapping[str, Any]]] = {}
    for flag in flags:
        out.setdefault(int(flag["replica_id"]), []).append(flag)
    return out
