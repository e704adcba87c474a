"""Throughput while two owners update their models (`python -m tests.bench.bench_update [--quick]`).

A 4-replica group serves a steady closed-loop load through the gateway (stock tritonclient,
one row per call). Then the owners of replicas 0 and 1 each sign and send an update to another
digits model at the same time (marketplace.owner.Owner.update_model, the package uploaded as an
archive): each replica loads the new version into its Triton beside the serving one (into the
warm spare Triton model it keeps, unless `--spare-models 0`), warms it up and submits the update
for ordering; it takes effect at a sequence number fixed by the log.

An update lasts from the owners' calls until both new versions are in effect (Status of an
untouched replica shows both activations executed), about three seconds, and a 3 s window of
a shared 2-core machine's throughput moves by 10-20 % with no update at all. So the owners update
several times in one run (rounds; every other round back to the first models, as new
versions), each round's throughput during the update is divided by that of the window just
before it, and the median of those ratios is the figure (target: a dip of at most 10 %, i.e. a
ratio >= 0.9). Beside it, the same division with no update: in each round's quiet window, its
last stretch as long as the update (at most half the window) against the rest of it; the spread
of those ratios is what noise alone does to the figure. Also reported: the worst 1 s window
during an update, throughput after, CPU per request before and during each update, and calls
that failed (an update must fail none). A timeline is plotted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import statistics
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
    WindowStats,
    closed_loop,
    cpu_line,
    data_dir,
    model_group,
    digits_packages,
    log_line,
    pyplot,
    replicas_line,
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
STATUS_POLL_S = 0.1  # the witness's Status, each poll on the cores being measured
SETTLE_S = 1.0  # load running before the first quiet window opens


@dataclasses.dataclass(frozen=True)
class UpdateRound:
    """One update and the quiet window before it; times in seconds on the load's clock."""

    quiet_start_s: float
    started_s: float  # the owners' calls
    ordered_s: float  # both updates loaded and ordered
    done_s: float  # both new versions in effect
    versions: dict[int, int]
    activations: dict[int, int]  # replica id -> the seq its new version is in effect from

    def since(self, zero_s: float) -> UpdateRound:
        """The same round with its times counted from `zero_s`."""
        return dataclasses.replace(
            self, quiet_start_s=self.quiet_start_s - zero_s, started_s=self.started_s - zero_s,
            ordered_s=self.ordered_s - zero_s, done_s=self.done_s - zero_s,
        )

    def before(self, run_: LoadRun) -> WindowStats:
        return run_.window(self.quiet_start_s, self.started_s)

    def during(self, run_: LoadRun) -> WindowStats:
        return run_.window(self.started_s, self.done_s)

    def ratio(self, run_: LoadRun) -> float:
        return _ratio(self.during(run_), self.before(run_))

    def quiet_ratio(self, run_: LoadRun) -> float:
        """The same division with no update: the quiet window's last stretch as long as the
        update (at most half the window) against the rest of it."""
        span_s = min(self.done_s - self.started_s, (self.started_s - self.quiet_start_s) / 2)
        split_s = self.started_s - span_s
        return _ratio(run_.window(split_s, self.started_s), run_.window(self.quiet_start_s, split_s))


def _ratio(numerator: WindowStats, denominator: WindowStats) -> float:
    return numerator.throughput_per_s / denominator.throughput_per_s if denominator.throughput_per_s else float("nan")


def run(options: Options, result: BenchResult, shared: BenchGroup | None = None) -> None:
    from marketplace.models import held_out_digits

    if options.model != "digits":
        raise BenchError(f"the update benchmark updates digits models only, not {options.model}")
    rounds = options.pick(3, 5)
    quiet_s = options.pick(5.0, 8.0)
    after_s = options.pick(4.0, 8.0)
    inputs, _ = held_out_digits(0)
    with model_group(options, shared, NAME) as bench, data_dir(options, f"{NAME}-models") as models:
        step("update: training two other digits models for the update")
        # another seed: other subsamples and initialisations, so other weights
        others = digits_packages(models / "update", count=len(UPDATED), seed=1)
        firsts = [bench.served[rid][0] for rid in UPDATED]
        asyncio.run(warm_up(bench, inputs))
        done: list[UpdateRound] = []
        samples: list[Any] = []  # CPU and counters at each round's quiet start, update start and end; then the end

        async def scenario() -> LoadRun:
            # a grpc.aio channel belongs to the loop it is made on: make it here
            caller = GatewayCaller(bench.gateway.address, bench.config.group_id, inputs, run_id=f"upd-{time.time_ns()}")
            stop = asyncio.Event()
            load = asyncio.ensure_future(
                closed_loop(caller, CONCURRENCY, 3600.0, label="gateway load", progress=options.progress, stop=stop)
            )
            probe = Probe(bench)
            try:
                await asyncio.sleep(SETTLE_S)
                for index in range(rounds):
                    samples.append(await asyncio.to_thread(probe.sample))
                    quiet_start = time.monotonic()
                    await asyncio.sleep(quiet_s)
                    samples.append(await asyncio.to_thread(probe.sample))
                    packages = others if index % 2 == 0 else firsts
                    done.append(await asyncio.to_thread(update_two, bench, packages, quiet_start, index + 1, rounds))
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
        # the rounds were timed by time.monotonic(); the load's clock starts at run_.started_at
        report(result, run_, [r.since(run_.started_at) for r in done], samples, Probe(bench), options)


def update_two(bench: BenchGroup, packages: list[Path], quiet_start_s: float, number: int, rounds: int) -> UpdateRound:
    """Both owners update at once; returns, once both new versions are in effect everywhere (as
    an untouched replica executed them), the round that began with a quiet window at
    `quiet_start_s`. Times are time.monotonic()."""
    from marketplace.owner import Owner

    config = bench.config
    witness = next(i for i in range(bench.n) if i not in UPDATED)
    started = time.monotonic()
    step(f"update {number}/{rounds}: owners of replicas {list(UPDATED)} update their models")
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
        time.sleep(STATUS_POLL_S)
    done = time.monotonic()
    for rid, package in zip(UPDATED, packages):
        bench.served[rid] = (package, receipts[rid].version)
    log_line(f"loaded and ordered in {ordered - started:.1f} s, in effect {done - ordered:.1f} s later (from seqs {activations})")
    return UpdateRound(quiet_start_s, started, ordered, done, {rid: r.version for rid, r in receipts.items()}, activations)


def report(result: BenchResult, run_: LoadRun, rounds: list[UpdateRound], samples: list[Any], probe: Probe, options: Options) -> None:
    ratios = [r.ratio(run_) for r in rounds]
    quiet = [r.quiet_ratio(run_) for r in rounds]
    ratio, quiet_ratio = statistics.median(ratios), statistics.median(quiet)
    befores = [r.before(run_) for r in rounds]
    durings = [r.during(run_) for r in rounds]
    before_per_s = statistics.fmean(b.throughput_per_s for b in befores)
    after = run_.window(rounds[-1].done_s, samples[-1][0].at_s - run_.started_at)
    worsts = [_worst_window(run_, r.started_s, r.done_s, 1.0) / b.throughput_per_s if b.throughput_per_s else float("nan")
              for r, b in zip(rounds, befores)]
    failed = [e for at, e in run_.errors if any(r.started_s <= at <= r.done_s + 1.0 for r in rounds)]
    # samples: (quiet start, update start) per round, then the last update's end and the run's end
    compared = [
        (probe.compare(samples[2 * i], samples[2 * i + 1], b.rows), probe.compare(samples[2 * i + 1], samples[2 * i + 2], d.rows))
        for i, (b, d) in enumerate(zip(befores, durings))
    ]
    cpu = [(quiet_[0], during_[0]) for quiet_, during_ in compared]
    work = [(quiet_[1], during_[1]) for quiet_, during_ in compared]
    n = len(rounds)
    result.figures += [
        Figure(f"throughput during an update of 2 replicas (mean of {n})", statistics.fmean(d.throughput_per_s for d in durings), "req/s",
               baseline_name="just before", baseline_value=before_per_s, ratio=ratio, ratio_meaning=f"during/before, median of {n}"),
        Figure(f"update: during / before (median of {n} updates)", ratio, "x", target=TARGET_RATIO,
               baseline_name=f"the same with no update (median of {n})", baseline_value=quiet_ratio,
               note=f"updates {_span(ratios)}, with no update {_span(quiet)}"),
        Figure("update: worst 1 s window / before", min(worsts), "x",
               baseline_name="just before", baseline_value=before_per_s, baseline_unit="req/s"),
        Figure("calls failed during the updates", float(len(failed)), "calls", target=0.0, target_op="<="),
    ]
    lines = [
        f"4-replica group, closed loop of {CONCURRENCY} one-row calls through the gateway. {n} times, after a quiet "
        f"window, the owners of replicas {list(UPDATED)} update their models at once (every other time back to the "
        "first models, as new versions). Each update's throughput is divided by that of the quiet window just "
        "before it; \"no update\" divides the quiet window's last stretch, as long as the update (at most half the "
        "window), by the rest of it: what this machine's noise alone does to the figure.",
        "",
        "| update | versions | quiet req/s | loading + ordering s | ordered -> in effect s | during req/s | p99 ms before / during "
        "| during / before | no update | worst 1 s / before | CPU/request ms before / during | failed calls |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, (r, b, d) in enumerate(zip(rounds, befores, durings)):
        lines.append(
            f"| {i + 1} | {r.versions} | {b.throughput_per_s:.1f} | {r.ordered_s - r.started_s:.1f} | {r.done_s - r.ordered_s:.1f} "
            f"| {d.throughput_per_s:.1f} | {b.p99_ms:.0f} / {d.p99_ms:.0f} | {ratios[i]:.2f} | {quiet[i]:.2f} | {worsts[i]:.2f} "
            f"| {cpu[i][0].get('ours_ms', float('nan')):.1f} / {cpu[i][1].get('ours_ms', float('nan')):.1f} | {d.errors} |"
        )
    lines += [
        "",
        f"Median during / before {ratio:.2f} (with no update {quiet_ratio:.2f}); after the last update {after.throughput_per_s:.1f} "
        f"req/s over {after.window_s:.1f} s. An update's own cost is loading TorchScript, moving it into a spare Triton "
        f"model ({options.spare_models} per replica; with none, binding a new one starts Triton processes) and one "
        "warm-up inference, in the updated replicas' processes, on the cores that also serve. CPU by component, "
        "all quiet windows and all updates:",
        "",
        f"- quiet: {cpu_line(_mean_cpu([c[0] for c in cpu], befores))}",
        f"- during: {cpu_line(_mean_cpu([c[1] for c in cpu], durings))}",
        "",
        "What each replica did, quiet and during each update:",
        "",
    ] + [f"- update {i + 1}, {phase}: {replicas_line(w[j])}" for i, w in enumerate(work) for j, phase in enumerate(("quiet", "during"))]
    result.details += lines
    times, rates = run_.timeline(BIN_S)
    result.data.update({
        "concurrency": CONCURRENCY,
        "spare_models": options.spare_models,
        "updated": list(UPDATED),
        "rounds": [
            {"quiet_start_s": r.quiet_start_s, "started_s": r.started_s, "ordered_s": r.ordered_s, "done_s": r.done_s,
             "versions": r.versions, "activations": r.activations, "before": b, "during": d, "during_over_before": x,
             "no_update_ratio": q, "worst_1s_over_before": w, "cpu_per_request": {"before": c[0], "during": c[1]},
             "replicas": {"before": k[0], "during": k[1]}}
            for r, b, d, x, q, w, c, k in zip(rounds, befores, durings, ratios, quiet, worsts, cpu, work)
        ],
        "during_over_before_median": ratio,
        "no_update_ratio_median": quiet_ratio,
        "after": after,
        "failed_calls": len(failed),
        "timeline": {"bin_s": BIN_S, "t_s": times, "per_s": rates},
    })
    result.plots.append(plot(times, rates, rounds, before_per_s, options))


def _span(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def _mean_cpu(parts: list[dict[str, float]], windows: list[WindowStats]) -> dict[str, float]:
    """CPU over several windows: per request weighted by the requests each certified, cores by
    each window's length."""
    rows, spans_s = sum(w.rows for w in windows), sum(w.window_s for w in windows)
    if not rows or not all(parts):
        return {}
    return {
        key: sum(part[key] * (w.window_s / spans_s if key.startswith("cores_") else w.rows / rows) for part, w in zip(parts, windows))
        for key in parts[0]
    }


def _worst_window(run_: LoadRun, start_s: float, end_s: float, width_s: float) -> float:
    """The lowest throughput of any `width_s` window inside [start_s, end_s] (the whole span
    when it is shorter)."""
    if end_s - start_s <= width_s:
        return run_.window(start_s, end_s).throughput_per_s
    times, rates = run_.timeline(BIN_S, start_s=start_s, end_s=end_s)
    width = int(round(width_s / BIN_S))
    return min(sum(rates[i : i + width]) / width for i in range(len(rates) - width + 1))


def plot(times: list[float], rates: list[float], rounds: list[UpdateRound], before_per_s: float, options: Options) -> str:
    plt = pyplot()
    fig, axis = plt.subplots(figsize=(11, 4))
    axis.step(times, rates, where="post", label=f"certified / s ({BIN_S * 1000:.0f} ms bins)")
    for i, r in enumerate(rounds):
        axis.axvspan(r.started_s, r.ordered_s, color="orange", alpha=0.3, label="loading + ordering" if i == 0 else None)
        axis.axvspan(r.ordered_s, r.done_s, color="green", alpha=0.2, label="ordered -> in effect" if i == 0 else None)
    axis.axhline(before_per_s, color="grey", linestyle=":", label="mean of the quiet windows")
    axis.set(xlabel="seconds from the start of the load", ylabel="certified requests / s",
             title=f"throughput through {len(rounds)} model updates of 2 replicas")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right")
    return save_figure(fig, options, "update.png")


def main(argv: list[str] | None = None) -> int:
    return run_alone(NAME, TITLE, run, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
