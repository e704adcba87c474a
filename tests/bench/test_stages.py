"""The stage breakdown of the latency benchmark, on hand-made trace lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench.stages import STAGES, TraceLine, breakdown, read_traces, table


def _request_lines(key: str, seq: int, t0: float) -> list[TraceLine]:
    """One call through a 4-replica group (replica-0 primary): every milestone 1 ms after the
    one before, except the slowest model (3 ms), the primary's last peer vote (0.5 ms after it,
    the proposal 0.5 ms later), a backup's late copy of a vote and one replica's late COMMIT
    (neither counts)."""
    lines = [TraceLine(t0, "gateway", "in", key)]
    lines += [TraceLine(t0 + 0.0005 * (r + 1), f"replica-{r}", "received", key) for r in range(4)]  # last: +2 ms
    lines += [TraceLine(t0 + 0.003 + 0.001 * r, f"replica-{r}", "inferred", f"other/x,{key}") for r in range(4)]  # last: +6 ms
    lines += [TraceLine(t0 + 0.004 + 0.00075 * r, "replica-0", "vote-in", f"{key},other/y") for r in (1, 2, 3)]  # last: +6.25 ms
    lines += [TraceLine(t0 + 0.0065, "replica-0", "vote-in", f"other/z,{key}")]  # a second batch with it: +6.5 ms
    lines += [TraceLine(t0 + 0.009, "replica-1", "vote-in", key)]  # at a backup: no milestone
    lines += [TraceLine(t0 + 0.007, "replica-0", "pre-prepare", str(seq))]
    lines += [TraceLine(t0 + 0.0075, f"replica-{r}", "pre-prepare", str(seq)) for r in (1, 2, 3)]  # received later
    lines += [TraceLine(t0 + 0.008 + 0.001 * r, f"replica-{r}", "commit-sent", str(seq)) for r in (0, 1, 2)]  # third: +10 ms
    lines += [TraceLine(t0 + 0.030, "replica-3", "commit-sent", str(seq))]
    lines += [TraceLine(t0 + 0.011, "replica-2", "committed", str(seq)), TraceLine(t0 + 0.012, "replica-0", "committed", str(seq))]
    lines += [TraceLine(t0 + 0.013, "replica-2", "certified", f"{key}@{seq}"), TraceLine(t0 + 0.0135, "replica-0", "certified", f"{key}@{seq}")]
    lines += [TraceLine(t0 + 0.015, "gateway", "out", key)]
    return lines


def test_each_stage_runs_from_one_milestone_to_the_next() -> None:
    lines = _request_lines("anonymous/lat-1-r0-0/0", 7, 100.0) + _request_lines("anonymous/lat-1-r0-1/0", 8, 200.0)
    result = breakdown(lines, key_marker="/lat-1-")
    assert result.requests == 2
    expected = [2.0, 4.0, 0.5, 0.5, 3.0, 1.0, 2.0, 2.0]  # ms, in STAGES order
    assert [round(result.median_ms(s), 6) for s in STAGES] == expected
    assert result.total_median_ms == pytest.approx(15.0)
    assert sum(expected) == pytest.approx(result.total_median_ms)


def test_calls_of_other_runs_and_incomplete_calls_are_left_out() -> None:
    complete = _request_lines("anonymous/lat-1-r0-0/0", 7, 100.0)
    other_run = _request_lines("anonymous/lat-2-r0-0/0", 8, 200.0)
    unanswered = [line for line in _request_lines("anonymous/lat-1-r0-5/0", 9, 300.0) if line.event != "out"]
    one_replica_silent = [
        line for line in _request_lines("anonymous/lat-1-r0-6/0", 10, 400.0)
        if not (line.process == "replica-3" and line.event == "received")
    ]
    result = breakdown(complete + other_run + unanswered + one_replica_silent, key_marker="/lat-1-")
    assert result.requests == 1


def test_a_milestone_reached_early_counts_as_reached_with_the_one_before() -> None:
    # the primary proposed before the gateway's last replica logged its receipt (relayed copy)
    lines = _request_lines("anonymous/lat-1-r0-0/0", 7, 100.0)
    lines = [TraceLine(100.0005, l.process, l.event, l.key) if l.event == "pre-prepare" and l.process == "replica-0" else l for l in lines]
    result = breakdown(lines, key_marker="/lat-1-")
    assert result.median_ms("votes reach the primary") == result.median_ms("primary proposes (PRE-PREPARE sent)") == 0.0
    assert all(result.median_ms(s) >= 0 for s in STAGES)
    assert sum(result.median_ms(s) for s in STAGES) == pytest.approx(result.total_median_ms)


def test_when_the_primarys_own_model_is_the_slowest_its_votes_are_in_before_and_proposing_is_the_rest() -> None:
    lines = [l for l in _request_lines("anonymous/lat-1-r0-0/0", 7, 100.0) if not (l.event == "vote-in" and l.at_s > 100.0055)]
    result = breakdown(lines, key_marker="/lat-1-")  # last peer vote at +5.5 ms, slowest model at +6
    assert result.median_ms("votes reach the primary") == 0.0
    assert result.median_ms("primary proposes (PRE-PREPARE sent)") == pytest.approx(1.0)
    assert sum(result.median_ms(s) for s in STAGES) == pytest.approx(result.total_median_ms)


def test_trace_files_are_read_and_cut_lines_skipped(tmp_path: Path) -> None:
    (tmp_path / "gateway.1.trace").write_text("100.000000 gateway in anonymous/lat-1-a/0\n100.5 gateway out")
    (tmp_path / "replica-0.2.trace").write_text("not-a-time replica-0 received x\n100.001000 replica-0 received anonymous/lat-1-a/0\n")
    lines = read_traces(tmp_path)
    assert [(l.process, l.event) for l in lines] == [("gateway", "in"), ("replica-0", "received")]


def test_the_table_gives_every_stage_and_its_share() -> None:
    result = breakdown(_request_lines("anonymous/lat-1-r0-0/0", 7, 100.0), key_marker="/lat-1-")
    rows = table(result, client_p50_ms=16.5)
    assert len(rows) == 2 + len(STAGES) + 2
    assert "| inference (slowest model) | 4.00 | 27 % |" in rows
    assert rows[-1] == "| client p50 (adds client to gateway and back) | 16.50 | |"
