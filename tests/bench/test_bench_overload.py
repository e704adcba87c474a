"""The overload benchmark's bookkeeping (tests/bench/bench_overload.py): how a call's failure is
classified and what the summary makes of an open loop's record."""

from __future__ import annotations

import asyncio

import pytest
from tritonclient.utils import InferenceServerException

from tests.bench.bench_overload import OpenLoopRun, _outcome, _summary


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (InferenceServerException("row 0: the group is overloaded", status="StatusCode.RESOURCE_EXHAUSTED"), "refused"),
        (InferenceServerException("not certified in time", status="StatusCode.DEADLINE_EXCEEDED"), "missed deadline"),
        (InferenceServerException("Deadline Exceeded"), "missed deadline"),
        (asyncio.TimeoutError(), "missed deadline"),
        (InferenceServerException("no replica returned a valid certificate", status="StatusCode.UNAVAILABLE"), "failed"),
    ],
)
def test_a_failed_call_is_classified_by_the_status_it_got(error: BaseException, kind: str) -> None:
    assert _outcome(error) == kind


def test_goodput_counts_only_certified_calls_and_the_rest_certified_was_for_nobody() -> None:
    run = OpenLoopRun(rate_per_s=400.0, duration_s=10.0)
    run.calls = [(0.0, 0.5, "certified")] * 900 + [(1.0, 1.1, "refused")] * 2000 + [(2.0, 4.0, "missed deadline")] * 1100
    run.certified_by_group = 1500.0  # 600 of them after their clients gave up
    summary = _summary(run, capacity_per_s=180.0)
    assert summary["goodput_per_s"] == 90.0 and summary["goodput_share"] == pytest.approx(0.5)
    assert (summary["refused_per_s"], summary["missed_per_s"]) == (200.0, 110.0)
    assert summary["certified_for_nobody"] == 600.0 and summary["p50_ms"] == pytest.approx(500.0)
