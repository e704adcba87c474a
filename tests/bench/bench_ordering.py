"""Ordering capacity: certified requests per second when inference costs nothing
(`python -m tests.bench.bench_ordering [--quick]`).

Groups of n = 4 (f = 1) and n = 7 (f = 2) replicas all serving the null model (its logits are
the first ten pixels: trivial compute), so what is left is the protocol: fan-out, batching,
Triton round trips, votes, PBFT ordering, signatures, storage, certificates and their
verification. For each group:

- unary: stock-tritonclient ModelInfer through the gateway, one row per call, many calls in
  flight (target 3,000 certified requests/s); also 64 rows per call, for comparison;
- streaming: the SDK's AsyncClient.infer_stream over the gateway's native streaming Infer,
  with a bounded number of rows in flight (target 10,000 certified requests/s); the SDK
  verifies every certificate again, in this process;
- baseline, same run: replica 0's Triton with the same null model, one row per call, as many
  calls in flight as the unary load (what one plain Triton serves on this machine).

Reported: certified requests/s, the ratio to the plain-Triton baseline, and CPU milliseconds
per certified request by component: on a machine with C cores the system cannot certify more
than C / (CPU seconds per request) per second, which says what limits the figure. The unary
one-row calls are stage-traced like the latency benchmark's (`replica/trace.py`), so the report
also says where a call's time goes under load: in the stages that batch (waiting for company
before a Triton call, for votes before a proposal) or queued behind busy event loops, where
nothing batches.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

from tests.bench.common import (
    save_figure,
    BenchGroup,
    BenchResult,
    Completion,
    Figure,
    GatewayCaller,
    LoadRun,
    Measurement,
    Options,
    Probe,
    TRACED_RUN_PREFIX,
    TritonCaller,
    cpu_line,
    data_dir,
    log_line,
    measure,
    null_package,
    pyplot,
    replicas_line,
    run_alone,
    running_group,
    warm_up,
)
from tests.bench.stages import breakdown, read_traces, table

NAME = "ordering"
TITLE = "2. Ordering capacity (null model)"
TARGET_STREAM_PER_S = 10_000.0
TARGET_UNARY_PER_S = 3_000.0
BATCHED_ROWS = 64


def run(options: Options, result: BenchResult, shared: BenchGroup | None = None) -> None:
    """`shared` is ignored: this benchmark needs groups that serve the null model."""
    from marketplace.models import held_out_digits

    faults = (1, 2)
    unary_concurrency = options.pick((64,), (64, 256))
    stream_windows = options.pick((256,), (256, 2048))
    warmup_s = options.pick(2.0, 3.0)
    duration_s = options.pick(5.0, 12.0)
    inputs, _ = held_out_digits(0)
    rows: dict[int, list[dict[str, Any]]] = {}
    with data_dir(options, NAME) as directory:
        package = null_package(directory / "models")
        for f in faults:
            n = 3 * f + 1
            rows[n] = []
            with running_group(
                directory, [package] * n, f=f, label=f"ordering n={n}", storage_sync=options.storage_sync, params=options.protocol_params(),
            ) as bench:
                asyncio.run(warm_up(bench, inputs))
                target = bench.triton_target(0)
                run_id = f"ord{n}-{time.time_ns()}"

                def record(kind: str, setting: str, m: Measurement) -> None:
                    log_line(f"n={n} {kind} {setting}: {m.stats.line()}")
                    if m.cpu_per_request:
                        log_line(f"    {cpu_line(m.cpu_per_request)}")
                    rows[n].append({"kind": kind, "setting": setting, "stats": m.stats, "cpu_per_request": m.cpu_per_request,
                                    "replicas": m.replicas})

                for c in unary_concurrency:
                    record("plain Triton (baseline)", f"{c} calls in flight", asyncio.run(measure(
                        lambda: TritonCaller([target], inputs), c, warmup_s, duration_s,
                        label="plain Triton", progress=options.progress, bench=bench)))
                    traced_id = f"{TRACED_RUN_PREFIX}{run_id}-u{c}"
                    record("unary, 1 row/call", f"{c} calls in flight", asyncio.run(measure(
                        functools.partial(GatewayCaller, bench.gateway.address, bench.config.group_id, inputs, run_id=traced_id),
                        c, warmup_s, duration_s, label="unary", progress=options.progress, bench=bench)))
                    if bench.trace_dir is not None and bench.trace_dir.is_dir():
                        rows[n][-1]["stages"] = breakdown(read_traces(bench.trace_dir), key_marker=traced_id)
                record(f"unary, {BATCHED_ROWS} rows/call", "8 calls in flight", asyncio.run(measure(
                    lambda: GatewayCaller(bench.gateway.address, bench.config.group_id, inputs, rows=BATCHED_ROWS, run_id=f"{run_id}-b"),
                    8, warmup_s, duration_s, label=f"unary x{BATCHED_ROWS}", progress=options.progress, bench=bench)))
                for window in stream_windows:
                    record("streaming (SDK)", f"{window} rows in flight", asyncio.run(
                        measure_stream(bench, inputs, window, warmup_s, duration_s, options)))
    report(result, rows, options, duration_s)


async def measure_stream(bench: BenchGroup, inputs: Any, window: int, warmup_s: float, duration_s: float, options: Options) -> Measurement:
    """One AsyncClient.infer_stream kept `window` rows ahead of its results. The stream is
    cancelled at the end of the window; rows still in flight then are not counted."""
    from marketplace.sdk import AsyncClient, InferenceResult

    await asyncio.to_thread(bench.wait_idle)
    run_ = LoadRun("streaming", window)
    probe = Probe(bench)
    client = AsyncClient(bench.gateway.address, bench.config, client_id=f"bench-stream-{time.time_ns()}", timeout_s=120.0)
    slots = asyncio.Semaphore(window)
    stop = asyncio.Event()
    started = run_.started_at = time.monotonic()

    async def rows() -> Any:
        i = 0
        while not stop.is_set():
            await slots.acquire()
            if stop.is_set():
                return
            yield inputs[i % len(inputs)]
            i += 1

    async def consume() -> None:
        async for item in client.infer_stream(rows()):
            slots.release()
            now = time.monotonic() - started
            if isinstance(item, InferenceResult):
                # per-row latency is not observable here (the SDK picks the request ids); Little's law gives the mean
                run_.completions.append(Completion(now, 0.0, 1))
            else:
                run_.errors.append((now, f"{type(item).__name__}: {item}"))

    consumer = asyncio.ensure_future(consume())
    try:
        # the warm-up starts with the first certified row: the first `window` rows are all in
        # flight at once and, on a slow machine with n=7, can take longer than a whole warm-up
        first_deadline_s = time.monotonic() + 60.0
        while not run_.completions and not run_.errors and time.monotonic() < first_deadline_s and not consumer.done():
            await asyncio.sleep(0.05)
        window_start_s = time.monotonic() - started + warmup_s
        await asyncio.sleep(warmup_s)
        before = await asyncio.to_thread(probe.sample)
        await asyncio.sleep(duration_s)
        after = await asyncio.to_thread(probe.sample)
        # end the stream without draining it: rows still in flight would only delay the next step
        stop.set()
        slots.release()
    finally:
        stop.set()
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        await client.close()
    run_.wall_s = time.monotonic() - started
    stats = run_.window(window_start_s, window_start_s + duration_s)
    measurement = Measurement(stats, run_)
    measurement.cpu_per_request, measurement.replicas = probe.compare(before, after, stats.rows)
    return measurement


def report(result: BenchResult, rows: dict[int, list[dict[str, Any]]], options: Options, duration_s: float) -> None:
    import os

    cores = os.cpu_count() or 1
    lines = [
        f"Null model on every replica; {duration_s:g} s windows. 'x baseline' is certified requests/s over the plain Triton's "
        "requests/s in the same group, same run. The CPU ceiling is this machine's cores divided by the CPU time the "
        "system spent per certified request (client + gateway + replicas + Tritons), i.e. what the figure would be with "
        "the whole machine to ourselves and nothing else limiting.",
        "",
        "| n | load | setting | certified req/s | x baseline | CPU ms/req (client / gateway / replicas / Tritons) | CPU ceiling req/s "
        "| p50 ms | rows/Triton call | req/ordered batch | errors |",
        "|---:|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for n, items in rows.items():
        baselines = {r["setting"]: r["stats"].throughput_per_s for r in items if r["kind"].startswith("plain")}
        baseline = max(baselines.values(), default=float("nan"))
        for r in items:
            s, cpu, rep = r["stats"], r["cpu_per_request"], r["replicas"]
            x = s.throughput_per_s / baseline if baseline else float("nan")
            ceiling = cores / (cpu["ours_ms"] / 1000) if cpu and cpu.get("ours_ms") else float("nan")
            r["cpu_ceiling_per_s"] = ceiling
            cpu_text = (
                f"{cpu['ours_ms']:.2f} ({cpu['client_ms']:.2f} / {cpu['gateway_ms']:.2f} / {cpu['replicas_ms']:.2f} / {cpu['tritons_ms']:.2f})"
                if cpu else "n/a"
            )
            p50 = f"{s.p50_ms:.1f}" if r["kind"] != "streaming (SDK)" else f"~{1000 * s.concurrency / s.throughput_per_s:.0f} (Little)" if s.throughput_per_s else "n/a"
            certified_kind = not r["kind"].startswith("plain")
            lines.append(
                f"| {n} | {r['kind']} | {r['setting']} | {s.throughput_per_s:.0f} | {x:.2f} | {cpu_text} | {ceiling:.0f} | {p50} "
                f"| {rep.get('rows_per_triton_call', float('nan')) if certified_kind else float('nan'):.1f} "
                f"| {rep.get('requests_per_ordered_batch', float('nan')) if certified_kind else float('nan'):.1f} | {s.errors} |"
            )
        best_unary = max((r for r in items if r["kind"] == "unary, 1 row/call"), key=lambda r: r["stats"].throughput_per_s)
        best_stream = max((r for r in items if r["kind"] == "streaming (SDK)"), key=lambda r: r["stats"].throughput_per_s)
        batched = next(r for r in items if r["kind"].startswith(f"unary, {BATCHED_ROWS}"))
        for kind, best, target in (("unary (1 row/call)", best_unary, TARGET_UNARY_PER_S), ("streaming (SDK)", best_stream, TARGET_STREAM_PER_S)):
            value = best["stats"].throughput_per_s
            result.figures.append(Figure(
                f"n={n}, {kind}, {best['setting']}", value, "req/s", target=target,
                baseline_name="plain Triton, null model", baseline_value=baseline, ratio=value / baseline if baseline else float("nan"),
                ratio_meaning="x plain Triton",
                note=f"CPU ceiling {best['cpu_ceiling_per_s']:.0f}/s",
            ))
        value = batched["stats"].throughput_per_s
        result.figures.append(Figure(
            f"n={n}, unary ({BATCHED_ROWS} rows/call)", value, "req/s", baseline_name="plain Triton, null model",
            baseline_value=baseline, ratio=value / baseline if baseline else float("nan"), ratio_meaning="x plain Triton",
        ))
    lines += ["", "Where the time goes:", ""]
    for n, items in rows.items():
        for r in items:
            if r["replicas"] and not r["kind"].startswith("plain"):
                lines.append(f"- n={n}, {r['kind']}, {r['setting']}: {replicas_line(r['replicas'])}")
    stage_summaries: dict[str, Any] = {}
    for n, items in rows.items():
        for r in items:
            stages = r.get("stages")
            if stages is None or not stages.requests:
                continue
            stage_summaries[f"n={n}, {r['kind']}, {r['setting']}"] = stages.summary()
            lines += [
                "",
                f"n={n}, {r['kind']}, {r['setting']}: a call's time stage by stage (median over {stages.requests} calls, "
                "from the trace lines of the gateway and the replicas). Under load 'gateway to every replica' is time queued "
                "behind busy event loops (a replica reads the gateway's stream between its other work), where nothing "
                "batches; 'inference' holds the wait for company before a Triton call (up to the batch delay), the call "
                "itself (its mean is in the line above) and the wait for the loop that takes its result.",
                "",
                *table(stages, client_p50_ms=r["stats"].p50_ms),
            ]
    result.details += lines
    result.data.update({
        "cores": cores, "window_s": duration_s,
        # the stage summaries, not every traced duration
        "rows": {str(n): [{k: v for k, v in r.items() if k != "stages"} for r in items] for n, items in rows.items()},
        "stages": stage_summaries,
    })
    result.plots.append(plot(rows, options))


def plot(rows: dict[int, list[dict[str, Any]]], options: Options) -> str:
    plt = pyplot()
    fig, axis = plt.subplots(figsize=(10, 4.5))
    labels, values, ceilings, colours = [], [], [], []
    palette = {4: "tab:blue", 7: "tab:orange"}
    for n, items in rows.items():
        for r in items:
            labels.append(f"n={n}\n{r['kind']}\n{r['setting']}")
            values.append(r["stats"].throughput_per_s)
            ceilings.append(r.get("cpu_ceiling_per_s", float("nan")))
            colours.append(palette.get(n, "tab:grey"))
    positions = range(len(labels))
    axis.bar(positions, values, color=colours, label="measured")
    axis.scatter(positions, ceilings, marker="_", s=400, color="black", label="CPU ceiling (cores / CPU per request)")
    axis.axhline(TARGET_UNARY_PER_S, color="grey", linestyle=":", label="unary target")
    axis.axhline(TARGET_STREAM_PER_S, color="grey", linestyle="--", label="streaming target")
    axis.set_xticks(list(positions), labels, fontsize=6)
    axis.set(yscale="log", ylabel="requests / s", title="ordering capacity with the null model")
    axis.grid(alpha=0.3, axis="y")
    axis.legend(fontsize=7)
    return save_figure(fig, options, "ordering.png")


def main(argv: list[str] | None = None) -> int:
    return run_alone(NAME, TITLE, run, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
