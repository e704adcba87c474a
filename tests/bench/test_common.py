"""What the benchmarks read from the replicas' and the gateway's counters (tests/bench/common.py)."""

from __future__ import annotations

import math

from tests.bench.common import replica_breakdown, replicas_line


def _counters(rows_to_triton: float, batches: float, gateway_messages: float, gateway_rows: float) -> dict[str, float]:
    counters = {
        "quorumserve_triton_latency_seconds_count": rows_to_triton / 10,  # 10 rows a Triton call
        "quorumserve_triton_latency_seconds_sum": rows_to_triton / 1000,
        "quorumserve_inference_requests_total": rows_to_triton,
        "quorumserve_committed_batches_total": batches,
    }
    if gateway_messages:
        counters["quorumserve_gateway_stream_rows_per_message_count"] = gateway_messages
        counters["quorumserve_gateway_stream_rows_per_message_sum"] = gateway_rows
    return counters


def test_the_gateway_s_rows_per_stream_message_are_what_it_wrote_in_the_window() -> None:
    before = _counters(0, 0, gateway_messages=10, gateway_rows=10)  # earlier traffic: a row a message
    after = _counters(400, 40, gateway_messages=10 + 100, gateway_rows=10 + 400)
    work = replica_breakdown(before, after, certified=100, n=4)
    assert work["gateway_rows_per_message"] == 4.0  # 400 rows (100 to each of 4 replicas) in 100 messages
    assert work["rows_per_triton_call"] == 10.0
    assert work["requests_per_ordered_batch"] == 10.0
    assert "the gateway sent 4.0 rows per stream message" in replicas_line(work)


def test_without_one_row_calls_the_line_leaves_the_gateway_out() -> None:
    # many-row calls go by SubmitBatch, not the streams: the histogram does not move
    counters = _counters(400, 40, gateway_messages=0, gateway_rows=0)
    work = replica_breakdown(_counters(0, 0, 0, 0), counters, certified=100, n=4)
    assert math.isnan(work["gateway_rows_per_message"])
    line = replicas_line(work)
    assert line.startswith("per replica: 10.0 rows/Triton call")
    assert "gateway" not in line
