"""Latency at concurrency 1: certified through the gateway against direct Triton
(`python -m tests.bench.bench_latency [--quick]`).

One request at a time, one row per call, through the same generator (tritonclient.grpc.aio):

- certified: ModelInfer through the gateway (fan-out to the 4 replicas, batching, votes,
  PBFT ordering, signatures, certificate verified by the gateway);
- direct Triton: replica 0's own Triton, its model, nothing else (the baseline);
- naive fan-out: all four replicas' Tritons, waiting for the slowest (for reference: the
  certified path waits for the votes of the slower models too).

The three alternate in rounds so a burst of other work on the shared machine hits them alike.
Reported: p50 and p99 of each, and the added p50 (certified minus direct Triton; target at
most 3 ms), with the replicas' own view of where the time goes (Triton call, durable write,
request to certificate), and the certified calls' stage by stage medians from the trace lines
the gateway and the replicas write (`replica/trace.py`, `tests/bench/stages.py`): reaching every
replica, the slowest model, the votes reaching the primary, its PRE-PREPARE, the PREPARE and
COMMIT rounds, the certificate, the way back.
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
    TRACED_RUN_PREFIX,
    TritonCaller,
    cpu_line,
    model_group,
    model_inputs,
    log_line,
    measure,
    merge_windows,
    percentile,
    pyplot,
    replicas_line,
    run_alone,
    step,
    warm_up,
)
from tests.bench.stages import STAGES, breakdown, plot_stages, read_traces, table

NAME = "latency"
TITLE = "3. Latency at concurrency 1"
TARGET_ADDED_P50_MS = 3.0
WORKLOADS = ("direct Triton", "certified", "naive fan-out")


def run(options: Options, result: BenchResult, shared: BenchGroup | None = None) -> None:
    rounds = options.pick(2, 4)
    warmup_s = 1.0
    duration_s = options.pick(5.0, 10.0)
    inputs = model_inputs(options)
    with model_group(options, shared, NAME) as bench:
        targets = bench.triton_targets()
        run_id = f"{TRACED_RUN_PREFIX}{time.time_ns()}"
        asyncio.run(warm_up(bench, inputs))
        makers: dict[str, Any] = {
            "direct Triton": lambda: TritonCaller(targets[:1], inputs),
            "naive fan-out": lambda: TritonCaller(targets, inputs),
        }
        measured: dict[str, list[Measurement]] = {w: [] for w in WORKLOADS}
        for round_ in range(rounds):
            step(f"latency: round {round_ + 1} of {rounds}")
            for workload in WORKLOADS:
                make = makers.get(workload) or (
                    lambda r=round_: GatewayCaller(bench.gateway.address, bench.config.group_id, inputs, run_id=f"{run_id}-r{r}")
                )
                m = asyncio.run(measure(make, 1, warmup_s, duration_s, label=workload, progress=options.progress, bench=bench))
                measured[workload].append(m)
                log_line(m.stats.line())
        report(result, measured, bench, options, rounds, warmup_s, duration_s)
        report_stages(result, bench, run_id, merged_p50_ms=result.data["merged"]["certified"].p50_ms, options=options)


def report(
    result: BenchResult, measured: dict[str, list[Measurement]], bench: BenchGroup, options: Options,
    rounds: int, warmup_s: float, duration_s: float,
) -> None:
    window = (warmup_s, warmup_s + duration_s)
    merged = {
        w: merge_windows([m.stats for m in ms], [m.run for m in ms], [window] * len(ms)) for w, ms in measured.items()
    }
    certified, direct, naive = merged["certified"], merged["direct Triton"], merged["naive fan-out"]
    added_ms = certified.p50_ms - direct.p50_ms
    # the same difference round by round: how much it moves with the machine's load
    per_round = [c.stats.p50_ms - d.stats.p50_ms for c, d in zip(measured["certified"], measured["direct Triton"])]
    result.figures += [
        Figure("added p50 latency (certified - direct Triton)", added_ms, "ms", target=TARGET_ADDED_P50_MS, target_op="<=",
               baseline_name="direct Triton p50", baseline_value=direct.p50_ms,
               ratio=certified.p50_ms / direct.p50_ms if direct.p50_ms else float("nan"), ratio_meaning="certified/direct p50"),
        # the floor under the target: asking all four models and waiting for the slowest, with
        # no agreement at all, already adds this much on this machine
        Figure("added p50 latency of naive fan-out (no agreement)", naive.p50_ms - direct.p50_ms, "ms",
               baseline_name="direct Triton p50", baseline_value=direct.p50_ms,
               ratio=naive.p50_ms / direct.p50_ms if direct.p50_ms else float("nan"), ratio_meaning="naive/direct p50"),
        Figure("certified p50", certified.p50_ms, "ms", baseline_name="direct Triton p50", baseline_value=direct.p50_ms,
               ratio=certified.p50_ms / direct.p50_ms if direct.p50_ms else float("nan"), ratio_meaning="certified/direct"),
        Figure("certified p99", certified.p99_ms, "ms", baseline_name="direct Triton p99", baseline_value=direct.p99_ms,
               ratio=certified.p99_ms / direct.p99_ms if direct.p99_ms else float("nan"), ratio_meaning="certified/direct"),
    ]
    target = bench.triton_target(0)
    middle = {w: sorted(ms, key=lambda m: m.stats.p50_ms)[len(ms) // 2] for w, ms in measured.items()}
    replicas = middle["certified"].replicas
    lines = [
        f"Concurrency 1, one row per call; {rounds} rounds of {duration_s:g} s per workload, alternating; percentiles over "
        f"every call of every round. Direct Triton = replica 0's Triton and model ({target.served}, Triton model {target.model_name}).",
        "",
        "| workload | p50 ms | p99 ms | mean ms | calls | p50 minus direct Triton p50 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for w in WORKLOADS:
        s = merged[w]
        lines.append(f"| {w} | {s.p50_ms:.2f} | {s.p99_ms:.2f} | {s.mean_ms:.2f} | {s.calls} | {s.p50_ms - direct.p50_ms:+.2f} |")
    lines += [
        "",
        "Added p50 round by round: " + ", ".join(f"{x:.1f} ms" for x in per_round) + ".",
        "",
        "Where the time goes (certified, the median round): the replicas' counters "
        f"say {replicas_line(replicas) or 'n/a'}.",
        "",
    ] + [f"- {w}: {cpu_line(middle[w].cpu_per_request)}" for w in WORKLOADS]
    result.details += lines
    result.data.update({
        "rounds": rounds,
        "window_s": duration_s,
        "direct_triton_model": target.model_name,
        "direct_triton_serves": target.served,
        "merged": merged,
        "added_p50_ms": added_ms,
        "added_p50_by_round_ms": per_round,
        "by_round": {w: [m.summary() for m in ms] for w, ms in measured.items()},
    })
    result.plots.append(plot(measured, window, options))


def report_stages(result: BenchResult, bench: BenchGroup, run_id: str, *, merged_p50_ms: float, options: Options) -> None:
    """Where a certified request's time goes, from the stage traces of the gateway and replicas."""
    if bench.trace_dir is None or not bench.trace_dir.is_dir():
        return
    # a process flushes its trace buffer at its first event after `replica.trace.FLUSH_INTERVAL_S`, so the
    # last few calls of a round before an idle spell may be missing: they are left out
    stages = breakdown(read_traces(bench.trace_dir), key_marker=run_id)
    if not stages.requests:
        result.details += ["", "No complete stage traces were found for the certified calls.", ""]
        return
    slowest = max(STAGES, key=stages.median_ms)
    result.details += [
        "",
        f"Where a certified call's time goes, stage by stage (median over {stages.requests} calls, from the trace lines "
        "the gateway and the replicas write: `replica/trace.py`, `tests/bench/stages.py`). "
        f"The largest stage: {slowest}.",
        "",
        *table(stages, client_p50_ms=merged_p50_ms),
        "",
    ]
    result.data["stages"] = stages.summary()
    plt = pyplot()
    fig, axis = plt.subplots(figsize=(9, 2.8))
    plot_stages(axis, stages)
    axis.set(yticks=[], xlabel="ms (medians, stacked in order)", title="a certified call at concurrency 1, stage by stage")
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=2, fontsize=8)
    fig.tight_layout()
    result.plots.append(save_figure(fig, options, "latency_stages.png"))


def plot(measured: dict[str, list[Measurement]], window: tuple[float, float], options: Options) -> str:
    plt = pyplot()
    fig, axis = plt.subplots(figsize=(7, 4))
    for workload in WORKLOADS:
        latencies = sorted(
            c.latency_s * 1000 for m in measured[workload] for c in m.run.completions if window[0] <= c.done_s < window[1]
        )
        if not latencies:
            continue
        axis.plot(latencies, [(i + 1) / len(latencies) for i in range(len(latencies))], label=f"{workload} (p50 {percentile(latencies, 0.5):.1f} ms)")
    axis.set(xscale="log", xlabel="latency (ms)", ylabel="fraction of calls", title="latency at concurrency 1 (CDF)")
    axis.grid(alpha=0.3)
    axis.legend()
    return save_figure(fig, options, "latency.png")


def main(argv: list[str] | None = None) -> int:
    return run_alone(NAME, TITLE, run, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
