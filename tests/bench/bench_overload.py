"""Overload: clients asking for more than the group certifies (`python -m tests.bench.bench_overload [--quick]`).

Clients with a deadline send requests at a fixed rate (an open loop: a new call every 1/rate s,
whatever became of the last; stock tritonclient through the gateway, one row per call, each
call's deadline DEADLINE_S) at OVERLOAD_FACTOR times what the group certifies, measured just
before by a closed loop of CAPACITY_CONCURRENCY calls (the same-run baseline). Two groups of
four digits replicas take the same load, one after the other:

- admission: the default admission rules (replica/admission.py) at the gateway and at the
  replicas: a new call is refused at once (RESOURCE_EXHAUSTED with a retry hint) when the rows
  in flight would keep it waiting more than half its deadline, or past the hard limits;
- unbounded: no admission anywhere (limits too large to matter, the wait rule off), as before
  admission existed: every request is taken.

Reported per group: goodput (calls certified within their deadline, per second) as a share of
the capacity, the refusals and deadline misses, p50/p99 of the certified calls, the most
requests a replica held, and the work certified for nobody: requests the group certified during
and after the load beyond those their clients received (the client had given up). Without
admission a queue that outgrows the deadline makes every call miss it while the group works
flat out on requests nobody waits for any more (a congestion collapse); with it the group keeps
certifying, in time, about what it can. A timeline plots both.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tests.bench.common import (
    BenchError,
    BenchGroup,
    BenchResult,
    Figure,
    GatewayCaller,
    Options,
    data_dir,
    digits_packages,
    log_line,
    measure,
    percentile,
    pyplot,
    run_alone,
    running_group,
    save_figure,
    step,
    warm_up,
)

NAME = "overload"
TITLE = "8. Overload: clients sending twice what the group certifies"
DEADLINE_S = 2.0
OVERLOAD_FACTOR = 2.0
CAPACITY_CONCURRENCY = 64
BIN_S = 1.0
SAMPLE_EVERY_S = 0.5
UNBOUNDED = 1 << 40


@dataclass
class OpenLoopRun:
    """What an open loop recorded: each call's start, end and outcome (seconds since the start)."""

    rate_per_s: float
    duration_s: float
    calls: list[tuple[float, float, str]] = field(default_factory=list)  # (sent, done, outcome)
    held_max: float = 0.0  # the most requests one replica held (metrics, sampled)
    held_timeline: list[tuple[float, float]] = field(default_factory=list)  # (s, mean held per replica)
    certified_by_group: float = 0.0  # requests the replicas certified, during and after the load
    wall_s: float = 0.0
    examples: dict[str, str] = field(default_factory=dict)  # outcome -> the first error of that kind

    def outcomes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, _, outcome in self.calls:
            counts[outcome] = counts.get(outcome, 0) + 1
        return counts

    def certified_latencies_ms(self) -> list[float]:
        return sorted((done - sent) * 1000 for sent, done, outcome in self.calls if outcome == "certified")

    def timeline(self, outcome: str) -> tuple[list[float], list[float]]:
        """Per second of sending, the calls sent then that ended with `outcome`: what became of
        the load at each moment (by the time they ended, a backlog's misses bunch up late)."""
        count = int(np.ceil(self.duration_s / BIN_S)) or 1
        rates = [0.0] * count
        for sent, _, got in self.calls:
            if got == outcome and 0 <= int(sent // BIN_S) < count:
                rates[int(sent // BIN_S)] += 1 / BIN_S
        return [i * BIN_S for i in range(count)], rates


def _outcome(exc: BaseException) -> str:
    """A failed call's kind, by the status the gateway (or the client's own deadline) gave."""
    text = str(exc)
    status = getattr(exc, "status", lambda: "")() or ""
    if "RESOURCE_EXHAUSTED" in status or "RESOURCE_EXHAUSTED" in text:
        return "refused"
    if "DEADLINE_EXCEEDED" in status or "Deadline" in text or isinstance(exc, asyncio.TimeoutError):
        return "missed deadline"
    return "failed"


async def open_loop(bench: BenchGroup, inputs: np.ndarray, rate_per_s: float, duration_s: float, run_id: str) -> OpenLoopRun:
    import tritonclient.grpc.aio as triton_aio
    from tritonclient.grpc.aio import InferInput

    run = OpenLoopRun(rate_per_s, duration_s)
    client = triton_aio.InferenceServerClient(bench.gateway.address)
    group_id = bench.config.group_id
    rows = np.ascontiguousarray(inputs, dtype=np.float32)
    started = time.monotonic()
    before = await asyncio.to_thread(bench.scrape)
    tasks: set[asyncio.Task[None]] = set()

    async def call(i: int) -> None:
        sent = time.monotonic() - started
        tensor = InferInput("pixels", [1, *rows.shape[1:]], "FP32")
        tensor.set_data_from_numpy(rows[i % len(rows)][np.newaxis])
        try:
            await client.infer(group_id, [tensor], request_id=f"{run_id}-{i}", client_timeout=DEADLINE_S)
            outcome = "certified"
        except Exception as exc:  # every failure is a data point
            outcome = _outcome(exc)
            run.examples.setdefault(outcome, f"{type(exc).__name__}: {exc}"[:300])
        run.calls.append((sent, time.monotonic() - started, outcome))

    async def sample_held() -> None:
        while True:
            answers = await asyncio.gather(*(asyncio.to_thread(bench.status, i) for i in range(bench.n)))
            held = [s.pending_requests for s in answers if s is not None]
            if held:
                run.held_max = max(run.held_max, float(max(held)))
                run.held_timeline.append((time.monotonic() - started, statistics.fmean(held)))
            await asyncio.sleep(SAMPLE_EVERY_S)

    sampler = asyncio.ensure_future(sample_held())
    try:
        i = 0
        while (now := time.monotonic() - started) < duration_s:
            due = i / rate_per_s
            if due > now:
                await asyncio.sleep(due - now)
            task = asyncio.ensure_future(call(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if tasks:
            await asyncio.wait(set(tasks))
        # what the group still holds is certified for nobody: wait for it, then count
        await asyncio.to_thread(bench.wait_idle, 120.0)
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
        await client.close()
    run.wall_s = time.monotonic() - started
    after = await asyncio.to_thread(bench.scrape)
    n = bench.n
    run.certified_by_group = (after.get("quorumserve_certified_requests_total", 0.0) - before.get("quorumserve_certified_requests_total", 0.0)) / n
    return run


def run(options: Options, result: BenchResult, shared: BenchGroup | None = None) -> None:
    """`shared` is ignored: each variant needs a group started with its own admission limits."""
    from marketplace.models import held_out_digits
    from replica.config import AdmissionLimits

    if options.model != "digits":
        raise BenchError(f"the overload benchmark serves digits models only, not {options.model}")
    load_s = options.pick(12.0, 30.0)
    capacity_s = options.pick(5.0, 10.0)
    inputs, _ = held_out_digits(0)
    off = ["--admission-rows-max", str(UNBOUNDED), "--admission-bytes-max", str(UNBOUNDED), "--admission-wait-share", "0"]
    variants = {
        "admission": (AdmissionLimits(), []),
        "unbounded": (AdmissionLimits(UNBOUNDED, UNBOUNDED, wait_share_max=0.0), off),
    }
    runs: dict[str, OpenLoopRun] = {}
    capacities: dict[str, float] = {}
    rate_per_s = 0.0
    with data_dir(options, NAME) as directory:
        packages = digits_packages(directory / "models")
        for name, (limits, gateway_args) in variants.items():
            with running_group(
                directory, packages, label=f"overload-{name}", storage_sync=options.storage_sync, admission=limits, gateway_args=gateway_args,
                params=options.protocol_params(),
            ) as bench:
                asyncio.run(warm_up(bench, inputs))
                capacity = asyncio.run(measure(
                    lambda: GatewayCaller(bench.gateway.address, bench.config.group_id, inputs, run_id=f"cap-{name}-{time.time_ns()}"),
                    CAPACITY_CONCURRENCY, 2.0, capacity_s, label="capacity", progress=options.progress, bench=bench,
                ))
                capacities[name] = capacity.stats.throughput_per_s
                log_line(f"{name}: capacity {capacity.stats.line()}")
                if not rate_per_s:  # the same offered load for both groups
                    rate_per_s = OVERLOAD_FACTOR * capacity.stats.throughput_per_s
                bench.wait_idle()
                step(f"overload: {name}: {rate_per_s:.0f} calls/s for {load_s:.0f} s, each with a {DEADLINE_S:.0f} s deadline")
                runs[name] = asyncio.run(open_loop(bench, inputs, rate_per_s, load_s, f"ovl-{name}-{time.time_ns()}"))
                log_line(f"{name}: {runs[name].outcomes()}, held at most {runs[name].held_max:.0f}; {runs[name].examples}")
    report(result, runs, capacities, rate_per_s, load_s, options)


def _summary(run_: OpenLoopRun, capacity_per_s: float) -> dict[str, Any]:
    outcomes = run_.outcomes()
    latencies = run_.certified_latencies_ms()
    certified = outcomes.get("certified", 0)
    goodput = certified / run_.duration_s
    return {
        "offered_per_s": run_.rate_per_s,
        "calls": len(run_.calls),
        "outcomes": outcomes,
        "goodput_per_s": goodput,
        "goodput_share": goodput / capacity_per_s if capacity_per_s else float("nan"),
        "refused_per_s": outcomes.get("refused", 0) / run_.duration_s,
        "missed_per_s": outcomes.get("missed deadline", 0) / run_.duration_s,
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "held_max": run_.held_max,
        "certified_by_group": run_.certified_by_group,
        "certified_for_nobody": max(0.0, run_.certified_by_group - certified),
        "wall_s": run_.wall_s,
    }


def report(result: BenchResult, runs: dict[str, OpenLoopRun], capacities: dict[str, float], rate_per_s: float, load_s: float, options: Options) -> None:
    capacity = capacities["admission"]
    summary = {name: _summary(r, capacities[name]) for name, r in runs.items()}
    admitted, unbounded = summary["admission"], summary["unbounded"]
    result.figures += [
        Figure("goodput under 2x overload, with admission", admitted["goodput_per_s"], "req/s",
               baseline_name=f"capacity (closed loop, {CAPACITY_CONCURRENCY} calls)", baseline_value=capacity,
               ratio=admitted["goodput_share"], ratio_meaning="in time / capacity"),
        Figure("overload: goodput / capacity, with admission", admitted["goodput_share"], "x",
               baseline_name="without admission", baseline_value=unbounded["goodput_share"], baseline_unit="x",
               ratio=admitted["goodput_per_s"] / unbounded["goodput_per_s"] if unbounded["goodput_per_s"] else float("nan"),
               ratio_meaning="with/without"),
        Figure("overload: certified for nobody, with admission", admitted["certified_for_nobody"], "req",
               baseline_name="without admission", baseline_value=unbounded["certified_for_nobody"]),
    ]
    lines = [
        f"Four digits replicas; clients send {rate_per_s:.0f} one-row calls/s for {load_s:.0f} s through the gateway "
        f"({OVERLOAD_FACTOR:g}x the capacity a closed loop of {CAPACITY_CONCURRENCY} calls measured just before), "
        f"each with a {DEADLINE_S:g} s deadline. Goodput counts calls certified within it.",
        "",
        "| group | capacity req/s | goodput req/s | goodput / capacity | refused /s | missed deadline /s | p50 ms | p99 ms | most held by a replica | certified for nobody |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ] + [
        f"| {name} | {capacities[name]:.0f} | {s['goodput_per_s']:.0f} | {s['goodput_share']:.2f} | {s['refused_per_s']:.0f} "
        f"| {s['missed_per_s']:.0f} | {s['p50_ms']:.0f} | {s['p99_ms']:.0f} | {s['held_max']:.0f} | {s['certified_for_nobody']:.0f} |"
        for name, s in summary.items()
    ] + [
        "",
        "Refused calls come back at once with RESOURCE_EXHAUSTED and the grpc-retry-pushback-ms trailer; a client that "
        "asks again after it, with the same id, is certified once. 'Certified for nobody': requests the replicas "
        "certified during and after the load beyond the calls certified in time (their clients had given up).",
    ]
    result.details += lines
    result.data.update({"deadline_s": DEADLINE_S, "overload_factor": OVERLOAD_FACTOR, "rate_per_s": rate_per_s, "load_s": load_s,
                        "capacity_per_s": capacities, "summary": summary,
                        "timelines": {name: {what: r.timeline(what) for what in ("certified", "refused", "missed deadline")}
                                      for name, r in runs.items()},
                        "held": {name: r.held_timeline for name, r in runs.items()}})
    result.plots.append(plot(runs, capacity, load_s, options))


def plot(runs: dict[str, OpenLoopRun], capacity_per_s: float, load_s: float, options: Options) -> str:
    plt = pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    colours = {"admission": "tab:blue", "unbounded": "tab:red"}
    for name, run_ in runs.items():
        times, rates = run_.timeline("certified")
        axes[0].step(times, rates, where="post", color=colours[name], label=f"{name}: certified in time")
        times, missed = run_.timeline("missed deadline")
        axes[0].step(times, missed, where="post", color=colours[name], linestyle=":", label=f"{name}: missed their deadline")
        if run_.held_timeline:
            axes[1].plot([t for t, _ in run_.held_timeline], [h for _, h in run_.held_timeline], color=colours[name], label=name)
    axes[0].axhline(capacity_per_s, color="grey", linestyle="--", label="capacity")
    for axis in axes:
        axis.axvline(load_s, color="black", linewidth=0.8)
        axis.grid(alpha=0.3)
    axes[0].set(ylabel="calls sent / s that ...", title=f"clients sending {OVERLOAD_FACTOR:g}x capacity, {DEADLINE_S:g} s deadlines (load ends at the line)")
    axes[1].set(xlabel="seconds from the start of the load", ylabel="requests held per replica")
    axes[0].legend(fontsize=8, loc="upper right")
    axes[1].legend(fontsize=8)
    return save_figure(fig, options, "overload.png")


def main(argv: list[str] | None = None) -> int:
    return run_alone(NAME, TITLE, run, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
