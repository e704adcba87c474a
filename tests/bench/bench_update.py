"""Throughput while two owners update their models (`python -m tests.bench.bench_update [--quick]`).

A 4-replica group serves a steady closed-loop load through the gateway (stock tritonclient,
one row per call). Then the owners of replicas 0 and 1 each sign and send an update to another
digits model at the same time (marketplace.owner.Owner.update_model, the package uploaded as an
archive): each replica loads the new version into its Triton beside the serving one (into the
warm spare Triton model it keeps, unless `--spare-models 0`), warms it up and submits the update
for ordering; it takes effect at a sequence number fixed by the log.

The update lasts from the owners' calls until both new versions are in effect (Status of an
untouched replica shows both activations executed). Reported: throughput during the update as
a ratio of throughput just before (target: a dip of at most 10 %, i.e. a ratio >= 0.9), the
worst 1 s window during the update, throughput after, and calls that failed (an update must
fail none). A timeline is plotted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from pathlib import Path
from typing import Any

from tests.bench.common import (
    BenchError,
    save_figure,
    BenchGroup,
    BenchResult,
    Figure,
    GatewayCaller,
    LoadRun,
    Options,
    Probe,
    closed_loop,
    cpu_line,
    data_dir,
    model_group,
    digits_packages,
    log_line,
    pyplot,
    run_alone,
    step,
    warm_up,
)

NAME = "update"
TITLE = "5. Model update under load"
TARGET_RATIO = 0.9  # a dip of at most 10 %
CONCURRENCY = 8
UPDATED = (0, 1)
BIN_S = 0.25
ACTIVATION_TIMEOUT_S = 120.0


def run(options: Options, result: BenchResult, shared: BenchGroup | None = None) -> None:
    from marketplace.models import held_out_digits

    if options.model != "digits":
        raise BenchError(f"the update benchmark updates digits models only, not {options.model}")
    before_s = options.pick(6.0, 15.0)
    after_s = options.pick(5.0, 10.0)
    inputs, _ = held_out_digits(0)
    with model_group(options, shared, NAME) as bench, data_dir(options, f"{NAME}-models") as models:
        step("update: training two other digits models for the update")
        # another seed: other subsamples and initialisations, so other weights
        packages = digits_packages(models / "update", count=len(UPDATED), seed=1)
        asyncio.run(warm_up(bench, inputs))
        marks: dict[str, Any] = {}

        async def scenario() -> LoadRun:
            # a grpc.aio channel belongs to the loop it is made on: make it here
            caller = GatewayCaller(bench.gateway.address, bench.config.group_id, inputs, run_id=f"upd-{time.time_ns()}")
            stop = asyncio.Event()
            load = asyncio.ensure_future(
                closed_loop(caller, CONCURRENCY, 3600.0, label="gateway load", progress=options.progress, stop=stop)
            )
            probe = Probe(bench)
            samples = marks["samples"] = []  # CPU and counters: start of "before", update start, update done, end
            try:
                await asyncio.sleep(1.0)
                samples.append(await asyncio.to_thread(probe.sample))
                await asyncio.sleep(before_s - 1.0)
                samples.append(await asyncio.to_thread(probe.sample))
                marks.update(await asyncio.to_thread(update_two, bench, packages))
                samples.append(await asyncio.to_thread(probe.sample))
                await asyncio.sleep(after_s)
                samples.append(await asyncio.to_thread(probe.sample))
                stop.set()
                return await load
            finally:
                stop.set()
                load.cancel()
                await caller.close()

        run_ = asyncio.run(scenario())
        report(result, run_, marks, Probe(bench), options, before_s)


def update_two(bench: BenchGroup, packages: list[Path]) -> dict[str, Any]:
    """Both owners update at once; returns when both new versions are in effect everywhere
    (as an untouched replica executed them). Times are time.monotonic()."""
    from marketplace.owner import Owner

    config = bench.config
    witness = next(i for i in range(bench.n) if i not in UPDATED)
    started = time.monotonic()
    step(f"update: owners of replicas {list(UPDATED)} update their models")
    with concurrent.futures.ThreadPoolExecutor(len(UPDATED)) as pool:
        futures = {
            rid: pool.submit(Owner(config, rid, bench.group.owner_key(rid)).update_model, package)
            for rid, package in zip(UPDATED, packages)
        }
        receipts = {rid: f.result() for rid, f in futures.items()}
    ordered = time.monotonic()
    wanted = {(rid, receipt.version) for rid, receipt in receipts.items()}
    deadline = time.monotonic() + ACTIVATION_TIMEOUT_S
    activations: dict[int, int] = {}
    while True:
        status = bench.status(witness)
        if status is not None:
            found = {(a.replica_id, a.version): int(a.from_seq) for a in status.activations}
            if all(k in found and found[k] <= status.executed_seq for k in wanted):
                activations = {rid: found[(rid, v)] for rid, v in wanted}
                break
        if time.monotonic() > deadline:
            raise TimeoutError(f"the updates {sorted(wanted)} were not in effect after {ACTIVATION_TIMEOUT_S:.0f} s")
        time.sleep(0.05)
    done = time.monotonic()
    for rid, package in zip(UPDATED, packages):
        bench.served[rid] = (package, receipts[rid].version)
    log_line(f"loaded and ordered in {ordered - started:.1f} s, in effect {done - ordered:.1f} s later (from seqs {activations})")
    return {"started": started, "ordered": ordered, "done": done, "activations": activations,
            "versions": {rid: r.version for rid, r in receipts.items()}}


def report(result: BenchResult, run_: LoadRun, marks: dict[str, Any], probe: Probe, options: Options, before_s: float) -> None:
    zero = run_.started_at
    start_s, ordered_s, done_s = (marks[k] - zero for k in ("started", "ordered", "done"))
    samples = marks["samples"]
    first_s, end_s = samples[0][0].at_s - zero, samples[-1][0].at_s - zero
    before = run_.window(first_s, start_s)
    during = run_.window(start_s, done_s)
    after = run_.window(done_s, end_s)
    cpu = {
        phase: probe.compare(samples[i], samples[i + 1], stats.rows)
        for i, (phase, stats) in enumerate((("before", before), ("during", during), ("after", after)))
    }
    ratio = during.throughput_per_s / before.throughput_per_s if before.throughput_per_s else float("nan")
    worst = _worst_window(run_, start_s, done_s, 1.0)
    failed = [e for at, e in run_.errors if start_s <= at <= done_s + 1.0]
    result.figures += [
        Figure("throughput during the update of 2 replicas", during.throughput_per_s, "req/s",
               baseline_name="just before", baseline_value=before.throughput_per_s, ratio=ratio, ratio_meaning="during/before"),
        Figure("update: during / before", ratio, "x", target=TARGET_RATIO, baseline_name="just before",
               baseline_value=before.throughput_per_s, baseline_unit="req/s"),
        Figure("update: worst 1 s window / before", worst / before.throughput_per_s if before.throughput_per_s else float("nan"), "x",
               baseline_name="just before", baseline_value=before.throughput_per_s, baseline_unit="req/s"),
        Figure("calls failed during the update", float(len(failed)), "calls", target=0.0, target_op="<="),
    ]
    lines = [
        f"4-replica group, closed loop of {CONCURRENCY} one-row calls through the gateway. The owners of replicas "
        f"{list(UPDATED)} update to versions {marks['versions']} at once.",
        "",
        "| phase | span s | certified req/s | p50 ms | p99 ms | failed calls |",
        "|---|---:|---:|---:|---:|---:|",
        f"| before | {before.window_s:.1f} | {before.throughput_per_s:.1f} | {before.p50_ms:.1f} | {before.p99_ms:.1f} | {before.errors} |",
        f"| loading + ordering the update | {ordered_s - start_s:.1f} | {run_.window(start_s, ordered_s).throughput_per_s:.1f} "
        f"| {run_.window(start_s, ordered_s).p50_ms:.1f} | {run_.window(start_s, ordered_s).p99_ms:.1f} | {run_.window(start_s, ordered_s).errors} |",
        f"| ordered -> in effect | {done_s - ordered_s:.1f} | {run_.window(ordered_s, done_s).throughput_per_s:.1f} "
        f"| {run_.window(ordered_s, done_s).p50_ms:.1f} | {run_.window(ordered_s, done_s).p99_ms:.1f} | {run_.window(ordered_s, done_s).errors} |",
        f"| whole update | {during.window_s:.1f} | {during.throughput_per_s:.1f} | {during.p50_ms:.1f} | {during.p99_ms:.1f} | {during.errors} |",
        f"| after | {after.window_s:.1f} | {after.throughput_per_s:.1f} | {after.p50_ms:.1f} | {after.p99_ms:.1f} | {after.errors} |",
        "",
        f"Worst 1 s window during the update: {worst:.1f} req/s; during / after = "
        f"{during.throughput_per_s / after.throughput_per_s if after.throughput_per_s else float('nan'):.2f}. New versions in effect "
        f"from seqs {marks['activations']}. The update's own cost is loading TorchScript, moving it into a spare Triton "
        f"model ({options.spare_models} per replica; with none, binding a new one starts Triton processes) and one "
        "warm-up inference, in the updated replicas' processes, on the cores that also serve:",
        "",
    ] + [f"- {phase}: {cpu_line(c)}" for phase, (c, _) in cpu.items()]
    result.details += lines
    times, rates = run_.timeline(BIN_S)
    result.data.update({
        "concurrency": CONCURRENCY,
        "spare_models": options.spare_models,
        "updated": list(UPDATED),
        "marks_s": {"start": start_s, "ordered": ordered_s, "done": done_s},
        "activations": marks["activations"],
        "versions": marks["versions"],
        "before": before,
        "during": during,
        "after": after,
        "during_over_before": ratio,
        "worst_1s_per_s": worst,
        "failed_calls": len(failed),
        "cpu_per_request": {phase: c for phase, (c, _) in cpu.items()},
        "replicas": {phase: r for phase, (_, r) in cpu.items()},
        "timeline": {"bin_s": BIN_S, "t_s": [t - start_s for t in times], "per_s": rates},
    })
    result.plots.append(plot(times, rates, start_s, ordered_s, done_s, before.throughput_per_s, options))


def _worst_window(run_: LoadRun, start_s: float, end_s: float, width_s: float) -> float:
    """The lowest throughput of any `width_s` window inside [start_s, end_s] (the whole span
    when it is shorter)."""
    if end_s - start_s <= width_s:
        return run_.window(start_s, end_s).throughput_per_s
    times, rates = run_.timeline(BIN_S, start_s=start_s, end_s=end_s)
    width = int(round(width_s / BIN_S))
    return min(sum(rates[i : i + width]) / width for i in range(len(rates) - width + 1))


def plot(
    times: list[float], rates: list[float], start_s: float, ordered_s: float, done_s: float, before_per_s: float, options: Options
) -> str:
    plt = pyplot()
    fig, axis = plt.subplots(figsize=(9, 4))
    axis.step([t - start_s for t in times], rates, where="post", label=f"certified / s ({BIN_S * 1000:.0f} ms bins)")
    axis.axvspan(0.0, ordered_s - start_s, color="orange", alpha=0.2, label="loading + ordering")
    axis.axvspan(ordered_s - start_s, done_s - start_s, color="green", alpha=0.2, label="ordered -> in effect")
    axis.axhline(before_per_s, color="grey", linestyle=":", label="mean before")
    axis.set(xlabel="seconds from the owners' update calls", ylabel="certified requests / s", title="throughput during a model update of 2 replicas")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right")
    return save_figure(fig, options, "update.png")


def main(argv: list[str] | None = None) -> int:
    return run_alone(NAME, TITLE, run, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
