"""Admission: when to refuse new work, shared by the replicas and the gateway.

Without a bound, clients sending faster than a group certifies grow its backlog, its memory and
every request's wait without end, until each request times out before it is ordered while the
group certifies requests nobody waits for any more (a congestion collapse; `bench_overload`
measures it). Two rules, checked in this order, refuse a new request:

- the hard limits ([admission] pending_requests_max, pending_bytes_max): what is held already;
- the wait rule: at the rate requests were executed (or certified) lately, what is held would
  keep the new one waiting more than `wait_share_max` of its timeout. Not checked below
  WAIT_ESTIMATE_HELD_MIN held requests (a few batches always fit) nor without a recent rate (an
  idle replica, or one in a view change, cannot tell how long the wait is).

The gateway applies them to the rows it has in flight to a group, before any replica sees
them, so one decision covers the whole request; each replica applies them again to what it
holds, for clients that talk to it directly and as the bound on its own memory. A request that
some replicas take and others refuse is still certified (relays between replicas are always
taken), only later and perhaps for nobody: a decision at the gateway avoids that.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from replica.config import AdmissionLimits

RETRY_AFTER_MIN_MS = 50
RETRY_AFTER_MAX_MS = 5000
RETRY_AFTER_BACKLOG_SHARE = 0.1  # ask again once about this share of what is held has executed
# below this many held requests the wait is never estimated: a few batches' worth always fit
WAIT_ESTIMATE_HELD_MIN = 256


class DrainRate:
    """Requests executed per second over the last WINDOW_S: how long what is held will keep a
    new request waiting, and how soon an overloaded replica expects room again. Short, so that
    when load jumps the rate soon shows what the group does busy, not what it did while it had
    little to do. The caller passes the time, so tests need no clock."""

    WINDOW_S = 2.0

    def __init__(self) -> None:
        self._executed = 0
        self._marks: deque[tuple[float, int]] = deque()  # (monotonic s, executed so far)

    def add(self, count: int, now_s: float) -> None:
        self._executed += count
        marks = self._marks
        marks.append((now_s, self._executed))
        while len(marks) > 2 and now_s - marks[1][0] >= self.WINDOW_S:
            marks.popleft()

    def per_s(self, now_s: float) -> float:
        if not self._marks:
            return 0.0
        since_s, executed = self._marks[0]
        elapsed_s = now_s - since_s
        return (self._executed - executed) / elapsed_s if elapsed_s > 0 else 0.0


def retry_after_ms(held_requests: int, executed_per_s: float) -> int:
    """The retry hint for a refused client: the time to execute a tenth of what is held at the
    recent rate (not all of it: by then the clients refused meanwhile would all come back at
    once), within [RETRY_AFTER_MIN_MS, RETRY_AFTER_MAX_MS]; with no recent rate, a second."""
    if executed_per_s <= 0:
        return 1000
    wait_ms = 1000 * RETRY_AFTER_BACKLOG_SHARE * held_requests / executed_per_s
    return int(min(RETRY_AFTER_MAX_MS, max(RETRY_AFTER_MIN_MS, wait_ms)))


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str  # why, in words a client can act on
    retry_after_ms: int
    hard_limit: bool = False  # past a hard limit (else: the wait rule)


def refusal(
    limits: AdmissionLimits, held: int, held_bytes: int, executed_per_s: float, timeout_s: float | None, *, what: str = "requests"
) -> Refusal | None:
    """Why a new request is refused, or None when it is taken. `held`/`held_bytes`: what waits
    already (`what` names it in the reason); `executed_per_s`: the recent rate; `timeout_s`: how
    long the new request's client waits (None: unknown, the wait rule does not apply)."""
    if held >= limits.pending_requests_max or held_bytes >= limits.pending_bytes_max:
        return Refusal(
            f"{held} {what} ({held_bytes} bytes) wait to be executed; the limit is "
            f"{limits.pending_requests_max} requests or {limits.pending_bytes_max} bytes",
            retry_after_ms(held, executed_per_s),
            hard_limit=True,
        )
    if timeout_s is None or not limits.wait_share_max or held < WAIT_ESTIMATE_HELD_MIN or executed_per_s <= 0:
        return None
    wait_s = held / executed_per_s
    allowed_s = limits.wait_share_max * timeout_s
    if wait_s <= allowed_s:
        return None
    return Refusal(
        f"the {held} {what} waiting would keep this one waiting about {wait_s:.1f} s at the "
        f"{executed_per_s:.0f} requests/s executed lately, more than {allowed_s:.1f} s of the request's {timeout_s:.1f} s timeout",
        min(RETRY_AFTER_MAX_MS, max(retry_after_ms(held, executed_per_s), round(1000 * (wait_s - allowed_s)))),
    )
