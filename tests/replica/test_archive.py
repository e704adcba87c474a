"""The archive's gate (replica/archive.py): a token bucket and a cap on pages in progress."""

from __future__ import annotations

import pytest

from replica.archive import ArchiveBusyError, ArchiveGate, pushback_ms, pushback_trailer


def test_a_burst_is_served_then_pages_come_at_the_sustained_rate() -> None:
    gate = ArchiveGate(pages_per_s=10.0, burst=5, reads_max=100)
    for _ in range(5):
        gate.admit(0.0)
        gate.done()
    with pytest.raises(ArchiveBusyError, match="at most 10 pages a second; retry in 100 ms") as refused:
        gate.admit(0.0)
    assert refused.value.retry_after_s == pytest.approx(0.1)
    gate.admit(0.1)  # one page's worth refilled
    gate.done()
    with pytest.raises(ArchiveBusyError):
        gate.admit(0.15)
    gate.admit(10.0)  # refilled to the burst, not beyond it
    gate.done()
    for _ in range(4):
        gate.admit(10.0)
        gate.done()
    with pytest.raises(ArchiveBusyError):
        gate.admit(10.0)


def test_pages_in_progress_are_capped_and_a_finished_one_frees_its_place() -> None:
    gate = ArchiveGate(pages_per_s=1000.0, burst=1000, reads_max=2)
    gate.admit(0.0)
    gate.admit(0.0)
    with pytest.raises(ArchiveBusyError, match="reading 2 pages already"):
        gate.admit(0.0)
    assert gate.in_progress == 2
    gate.done()
    gate.admit(0.0)
    assert gate.in_progress == 2


def test_a_refused_page_takes_no_token_and_no_place() -> None:
    gate = ArchiveGate(pages_per_s=1.0, burst=1, reads_max=1)
    gate.admit(0.0)
    with pytest.raises(ArchiveBusyError):
        gate.admit(0.0)  # the place is taken
    gate.done()
    with pytest.raises(ArchiveBusyError):
        gate.admit(0.5)  # half a token
    assert gate.in_progress == 0
    gate.admit(1.0)
    assert gate.in_progress == 1


def test_the_pushback_a_reply_names_is_read_back_and_garbage_names_none() -> None:
    assert pushback_ms(pushback_trailer(0.25)) == 250
    assert pushback_ms((("other", "1"), ("grpc-retry-pushback-ms", "-5"))) == 0
    assert pushback_ms((("grpc-retry-pushback-ms", "soon"),)) is None
    assert pushback_ms((("other", "1"),)) is None and pushback_ms(None) is None
