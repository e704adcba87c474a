"""Serving the certificate archive (`ListCertificates`) without slowing the serving path.

Any client may page through a replica's archive: peers fill in what a state-transfer snapshot
skipped, auditors export it. A page is up to 1,024 certificates (about 1 MiB) read from SQLite
and sent back, a few milliseconds of CPU each. Unbounded, 32 callers looping on it (another
process, 8 per replica) took a replica's certificate thread and its store's write lock from the
requests it serves: certified throughput at 8 calls in flight fell to 0.58-0.95 of what it was
without them and p99 rose from 0.15 s to 0.6-1.25 s. So the archive is read on its own thread and
SQLite connection (WAL lets a reader run beside the writer), at most `ARCHIVE_READS_MAX` pages
wait at once, and pages are handed out at a sustained `ARCHIVE_PAGES_PER_S` with bursts of
`ARCHIVE_PAGE_BURST`: about 8,000 certificates a second per replica, so an export of a million
takes about two minutes. Past that a call is refused with RESOURCE_EXHAUSTED and told when to
come back (`grpc-retry-pushback-ms`); `replica/certificate_fetch.py` waits that long and asks
the same peer again. The same flood then left throughput at 1.04-1.41 of the unflooded figure
(this machine's noise) and p99 at 0.2-0.5 s: what is left is the pages still served and the
flooding process itself, on the same two cores (3 rounds, alternating with and without the
flood, for the code before and after). The limit is one per replica, not per caller: a
caller's address says little about who it is.

A token bucket, written out here: a dozen lines, where the rate-limiting libraries on PyPI
(`limits`, `aiolimiter`) bring storage back ends or an asyncio wait we do not want (a refusal,
not a queue, is the point).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

ARCHIVE_READS_MAX = 4  # pages being read or waiting to be, per replica
ARCHIVE_PAGES_PER_S = 8.0
ARCHIVE_PAGE_BURST = 16


# the trailer that says when to come back, as gRPC's own retry policy reads it (also on the
# RESOURCE_EXHAUSTED of a Submit the admission limits refused)
PUSHBACK_TRAILER = "grpc-retry-pushback-ms"


def pushback_trailer(wait_s: float) -> tuple[tuple[str, str]]:
    """A RESOURCE_EXHAUSTED reply's trailing metadata: the wait, in whole milliseconds."""
    return ((PUSHBACK_TRAILER, str(max(1, round(wait_s * 1000)))),)


def pushback_ms(trailers: Iterable[tuple[str, str | bytes]] | None) -> int | None:
    """The wait, in milliseconds (0 or more), a reply's trailing metadata asks for; None when
    it names none, or garbage (callers cap it: the sender may be faulty)."""
    for key, value in trailers or ():
        if key == PUSHBACK_TRAILER:
            try:
                return max(int(value), 0)
            except (TypeError, ValueError):
                return None
    return None


class ArchiveBusyError(Exception):
    """The archive turned a page request away for now; `retry_after_s` says when to ask again."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def trailer(self) -> tuple[tuple[str, str]]:
        return pushback_trailer(self.retry_after_s)


@dataclass
class ArchiveGate:
    """Admission for archive pages: a token bucket (`pages_per_s`, `burst`) and a cap on pages
    in progress. The caller passes the time, so tests need no clock."""

    pages_per_s: float = ARCHIVE_PAGES_PER_S
    burst: int = ARCHIVE_PAGE_BURST
    reads_max: int = ARCHIVE_READS_MAX
    _tokens: float = -1.0  # full on first use
    _refilled_s: float = 0.0
    in_progress: int = 0

    def admit(self, now_s: float) -> None:
        """Take one page's place, or raise ArchiveBusyError. Pair with `done()`."""
        if self._tokens < 0:
            self._tokens, self._refilled_s = float(self.burst), now_s
        elapsed_s = max(0.0, now_s - self._refilled_s)
        self._tokens = min(float(self.burst), self._tokens + elapsed_s * self.pages_per_s)
        self._refilled_s = now_s
        if self.in_progress >= self.reads_max:
            raise ArchiveBusyError(
                f"the certificate archive is reading {self.in_progress} pages already; retry shortly", 1.0 / self.pages_per_s
            )
        if self._tokens < 1.0:
            wait_s = (1.0 - self._tokens) / self.pages_per_s
            raise ArchiveBusyError(
                f"the certificate archive serves at most {self.pages_per_s:g} pages a second; retry in {wait_s * 1000:.0f} ms",
                wait_s,
            )
        self._tokens -= 1.0
        self.in_progress += 1

    def done(self) -> None:
        self.in_progress -= 1
