"""replica/admission.py: the rules that refuse new work, and the retry hint a refusal carries."""

from __future__ import annotations

import pytest

from replica.admission import (
    RETRY_AFTER_MAX_MS,
    RETRY_AFTER_MIN_MS,
    WAIT_ESTIMATE_HELD_MIN,
    DrainRate,
    refusal,
    retry_after_ms,
)
from replica.config import AdmissionLimits


def test_the_rate_is_what_was_executed_over_the_last_couple_of_seconds() -> None:
    rate = DrainRate()
    assert rate.per_s(0.0) == 0.0
    for tick in range(21):
        rate.add(100, tick / 2)  # 200 requests a second
    assert rate.per_s(10.0) == pytest.approx(200.0)
    rate.add(0, 30.0)  # a stall: the window forgets the old rate
    assert rate.per_s(30.0) < 50


def test_retry_hint_is_the_time_to_execute_a_tenth_of_what_is_held_within_bounds() -> None:
    assert retry_after_ms(1000, 0.0) == 1000  # nothing executed lately
    assert retry_after_ms(4000, 200.0) == 2000  # 400 requests at 200/s
    assert retry_after_ms(10, 200.0) == RETRY_AFTER_MIN_MS
    assert retry_after_ms(10**6, 200.0) == RETRY_AFTER_MAX_MS


def test_the_hard_limits_refuse_whatever_the_rate_or_timeout() -> None:
    limits = AdmissionLimits(pending_requests_max=100, pending_bytes_max=10_000)
    assert refusal(limits, 99, 9_999, 0.0, None) is None
    by_count = refusal(limits, 100, 0, 0.0, None, what="rows")
    by_bytes = refusal(limits, 1, 10_000, 50.0, 30.0)
    assert by_count is not None and "100 rows (0 bytes) wait to be executed" in by_count.reason and "limit is 100 requests" in by_count.reason
    assert by_bytes is not None and "10000 bytes" in by_bytes.reason
    assert by_count.retry_after_ms == 1000 and by_bytes.retry_after_ms == RETRY_AFTER_MIN_MS


def test_the_wait_rule_refuses_what_would_wait_too_much_of_its_timeout_and_says_when_it_would_fit() -> None:
    limits = AdmissionLimits()  # half the timeout
    held = 1000
    assert refusal(limits, held, 0, 500.0, 4.0) is None  # 2 s of a 4 s timeout: taken
    refused = refusal(limits, held, 0, 250.0, 4.0)  # 4 s: more than half
    assert refused is not None and "waiting about 4.0 s" in refused.reason and "more than 2.0 s of the request's 4.0 s timeout" in refused.reason
    assert refused.retry_after_ms == 2000  # until 2 s of backlog would be left
    # no estimate: below a few batches' worth, without a recent rate, without a timeout, or turned off
    assert refusal(limits, WAIT_ESTIMATE_HELD_MIN - 1, 0, 1.0, 0.1) is None
    assert refusal(limits, held, 0, 0.0, 0.1) is None
    assert refusal(limits, held, 0, 1.0, None) is None
    assert refusal(AdmissionLimits(wait_share_max=0.0), held, 0, 1.0, 0.1) is None
