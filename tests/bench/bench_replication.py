"""Replication efficiency: certified serving against naive fan-out to the same Tritons
(`python -m tests.bench.bench_replication [--quick]`).

A 4-replica group (f = 1, four heterogeneous trained digits models, each replica with its own
Triton) and a gateway. Three workloads, one after the other at each concurrency, all driven by
the same closed-loop generator (tritonclient.grpc.aio, one row per call):

- certified: stock-tritonclient ModelInfer through the gateway; each call is one certified
  request (the gateway fans out to the four replicas, they batch, vote, order and sign, and the
  gateway verifies the certificate);
- naive fan-out: the client sends each row to all four replicas' Tritons directly (the same
  servers and the same models) and waits for all four answers; no agreement, no certificate;
- plain Triton: each row to replica 0's Triton only (one model), for reference.

Reported per concurrency (1, 8, 32, 64; --quick: 1, 8, 64): requests per second, p50 and p99
latency, and CPU milliseconds per request by component. The figure is certified / naive
throughput (target >= 1.0: one Triton call per batch should make the certified path at least as
efficient as one call per request per model). Full runs repeat each point in rounds that
alternate the workloads and report the median round, so a burst of other work on the shared
machine hits all three alike.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.bench.common import (
    save_figure,
    BenchGroup,
    BenchResult,
    Figure,
    GatewayCaller,
    Measurement,
    Options,
    TritonCaller,
    cpu_line,
    model_group,
    model_inputs,
    log_line,
    measure,
    merge_windows,
    pyplot,
    replicas_line,
    run_alone,
    step,
    warm_up,
)

NAME = "replication"
TITLE = "1. Replication efficiency"
TARGET_RATIO = 1.0
WORKLOADS = ("naive fan-out", "certified", "plain Triton")


def run(options: Options, result: BenchResult, shared: BenchGroup | None = None) -> None:
    concurrencies = options.pick((1, 8, 64), (1, 8, 32, 64))
    rounds = options.pick(1, 3)
    warmup_s = options.pick(2.0, 3.0)
    duration_s = options.pick(5.0, 10.0)
    inputs = model_inputs(options)
    with model_group(options, shared, NAME) as bench:
        targets = bench.triton_targets()
        run_id = f"repl-{time.time_ns()}"
        asyncio.run(warm_up(bench, inputs))

        def make(workload: str, concurrency: int, round_: int) -> Any:
            if workload == "certified":
                return lambda: GatewayCaller(bench.gateway.address, bench.config.group_id, inputs, run_id=f"{run_id}-c{concurrency}-r{round_}")
            if workload == "naive fan-out":
                return lambda: TritonCaller(targets, inputs)
            return lambda: TritonCaller(targets[:1], inputs)

        points: dict[str, dict[int, dict[str, Any]]] = {w: {} for w in WORKLOADS}
        for concurrency in concurrencies:
            measured: dict[str, list[Measurement]] = {w: [] for w in WORKLOADS}
            for round_ in range(rounds):
                for workload in WORKLOADS:
                    m = asyncio.run(measure(
                        make(workload, concurrency, round_), concurrency, warmup_s, duration_s,
                        label=workload, progress=options.progress, bench=bench,
                    ))
                    measured[workload].append(m)
                    log_line(m.stats.line())
            for workload in WORKLOADS:
                ms = measured[workload]
                window = merge_windows(
                    [m.stats for m in ms], [m.run for m in ms], [(warmup_s, warmup_s + duration_s)] * len(ms)
                )
                middle = sorted(ms, key=lambda m: m.stats.throughput_per_s)[len(ms) // 2]
                points[workload][concurrency] = {
                    "stats": window,
                    "rounds": [m.stats.throughput_per_s for m in ms],
                    "cpu_per_request": middle.cpu_per_request,
                    "replicas": middle.replicas,
                }
            certified = points["certified"][concurrency]["stats"].throughput_per_s
            naive = points["naive fan-out"][concurrency]["stats"].throughput_per_s
            step(f"replication c={concurrency}: certified / naive = {certified / naive if naive else float('nan'):.2f}")
        report(result, points, concurrencies, bench, options, rounds, duration_s)


def report(
    result: BenchResult, points: dict[str, dict[int, dict[str, Any]]], concurrencies: tuple[int, ...], bench: BenchGroup,
    options: Options, rounds: int, duration_s: float,
) -> None:
    ratios = {}
    for c in concurrencies:
        certified = points["certified"][c]["stats"]
        naive = points["naive fan-out"][c]["stats"]
        ratio = certified.throughput_per_s / naive.throughput_per_s if naive.throughput_per_s else float("nan")
        ratios[c] = ratio
        result.figures.append(Figure(
            f"certified throughput, c={c}", certified.throughput_per_s, "req/s", baseline_name="naive fan-out",
            baseline_value=naive.throughput_per_s, ratio=ratio, ratio_meaning="certified/naive",
            target=None,
        ))
    best = max(concurrencies, key=lambda c: ratios[c])
    peak_certified = max(points["certified"][c]["stats"].throughput_per_s for c in concurrencies)
    peak_naive = max(points["naive fan-out"][c]["stats"].throughput_per_s for c in concurrencies)
    result.figures.append(Figure(
        "replication efficiency (peak certified / peak naive)", peak_certified / peak_naive if peak_naive else float("nan"), "x",
        target=TARGET_RATIO, baseline_name="peak naive fan-out", baseline_value=peak_naive, baseline_unit="req/s",
    ))
    targets = bench.triton_targets()
    lines = [
        f"4-replica group (f = 1), digits models {', '.join(t.served for t in targets)}; plain Triton = replica 0's "
        f"({targets[0].served}). Closed loops of one-row calls, tritonclient.grpc.aio; {rounds} round(s) of "
        f"{duration_s:g} s per point (median round). CPU columns: CPU milliseconds per request, all processes of the "
        "system (client, gateway, replicas incl. the model, Tritons).",
        "",
        "| concurrency | certified req/s | naive fan-out req/s | plain Triton req/s | certified / naive | certified / plain "
        "| p50 ms cert / naive / plain | p99 ms cert / naive / plain | CPU ms/req cert / naive / plain |",
        "|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for c in concurrencies:
        s = {w: points[w][c]["stats"] for w in WORKLOADS}
        cpu = {w: points[w][c]["cpu_per_request"].get("ours_ms", float("nan")) for w in WORKLOADS}
        plain_ratio = s["certified"].throughput_per_s / s["plain Triton"].throughput_per_s if s["plain Triton"].throughput_per_s else float("nan")
        lines.append(
            f"| {c} | {s['certified'].throughput_per_s:.0f} | {s['naive fan-out'].throughput_per_s:.0f} | {s['plain Triton'].throughput_per_s:.0f} "
            f"| {ratios[c]:.2f} | {plain_ratio:.2f} "
            f"| {s['certified'].p50_ms:.1f} / {s['naive fan-out'].p50_ms:.1f} / {s['plain Triton'].p50_ms:.1f} "
            f"| {s['certified'].p99_ms:.1f} / {s['naive fan-out'].p99_ms:.1f} / {s['plain Triton'].p99_ms:.1f} "
            f"| {cpu['certified']:.2f} / {cpu['naive fan-out']:.2f} / {cpu['plain Triton']:.2f} |"
        )
    errors = {w: sum(points[w][c]["stats"].errors for c in concurrencies) for w in WORKLOADS}
    lines += ["", f"Errors: {errors}. Best ratio at c={best}.", "", "Where the time goes (median round of each point):", ""]
    for c in concurrencies:
        for w in WORKLOADS:
            p = points[w][c]
            lines.append(f"- c={c}, {w}: {cpu_line(p['cpu_per_request'])}" + (f"; {replicas_line(p['replicas'])}" if w == "certified" else ""))
    result.details += lines
    result.data.update({
        "concurrencies": list(concurrencies),
        "rounds": rounds,
        "window_s": duration_s,
        "models": [t.served for t in targets],
        "triton_models": [t.model_name for t in targets],
        "points": {w: {str(c): points[w][c] for c in concurrencies} for w in WORKLOADS},
        "certified_over_naive": {str(c): ratios[c] for c in concurrencies},
    })
    result.plots.append(plot(points, concurrencies, options))


def plot(points: dict[str, dict[int, dict[str, Any]]], concurrencies: tuple[int, ...], options: Options) -> str:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for workload, style in zip(WORKLOADS, ("s--", "o-", "^:")):
        left.plot(concurrencies, [points[workload][c]["stats"].throughput_per_s for c in concurrencies], style, label=workload)
        right.plot(concurrencies, [points[workload][c]["stats"].p50_ms for c in concurrencies], style, label=workload)
    left.set(xscale="log", xlabel="concurrency (calls in flight)", ylabel="requests / s", title="throughput (one row per call)")
    right.set(xscale="log", yscale="log", xlabel="concurrency (calls in flight)", ylabel="p50 latency (ms)", title="latency")
    for axis in (left, right):
        axis.set_xticks(concurrencies, [str(c) for c in concurrencies])
        axis.grid(alpha=0.3)
        axis.legend()
    return save_figure(fig, options, "replication.png")


def main(argv: list[str] | None = None) -> int:
    return run_alone(NAME, TITLE, run, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
