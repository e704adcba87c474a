"""Recovery after the primary crashes (`python -m tests.bench.bench_recovery [--quick]`).

A 4-replica group serves a steady closed-loop load through the gateway (stock tritonclient,
one row per call). The primary (the one most replicas name in Status) is killed with SIGKILL,
its Triton with it, as a crash would. Measured from the kill:

- recovery time: until the first certified response whose certificate was signed in a later
  view (the new primary's first committed batch); target within 2 s;
- the longest stretch with no certified response at all around the kill;
- the time until throughput is back to 90 % of its level before the kill (1 s moving window);
- calls that failed (the gateway retries nothing: a call fails only if no certificate came).

A throughput timeline (certified requests per second in 100 ms bins) is plotted around the
kill. The baseline is the same load just before the kill (its p99 latency and throughput). The
killed replica is not restarted: this benchmark is the last user of a shared group.
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
    LoadRun,
    Options,
    closed_loop,
    model_group,
    model_inputs,
    log_line,
    pyplot,
    run_alone,
    step,
    warm_up,
)

NAME = "recovery"
TITLE = "4. Recovery after a primary crash"
TARGET_RECOVERY_S = 2.0
CONCURRENCY = 8
BIN_S = 0.1


def run(options: Options, result: BenchResult, shared: BenchGroup | None = None) -> None:
    from certs.certificate import decode_certificate

    before_s = options.pick(5.0, 10.0)
    after_s = options.pick(8.0, 15.0)
    inputs = model_inputs(options)
    with model_group(options, shared, NAME) as bench:
        asyncio.run(warm_up(bench, inputs))
        views: list[tuple[float, int, int]] = []  # (monotonic time answered, view, seq) of each call's first row

        def on_certificate(at: float, data: bytes) -> None:
            header = decode_certificate(data).header
            views.append((at, header.view, header.seq))

        kill: dict[str, Any] = {}

        async def scenario() -> LoadRun:
            # a grpc.aio channel belongs to the loop it is made on: make it here
            caller = GatewayCaller(
                bench.gateway.address, bench.config.group_id, inputs, run_id=f"rec-{time.time_ns()}", on_certificate=on_certificate
            )
            load = asyncio.ensure_future(
                closed_loop(caller, CONCURRENCY, before_s + after_s, label="gateway load", progress=options.progress)
            )
            started = time.monotonic()
            try:
                await asyncio.sleep(before_s)
                primary = await asyncio.to_thread(bench.primary)
                status = await asyncio.to_thread(bench.status, primary)
                kill["view"] = int(status.view) if status is not None else -1
                kill["primary"] = primary
                kill["at"] = time.monotonic()
                await asyncio.to_thread(bench.group.kill, primary)
                kill["killed_in_s"] = time.monotonic() - kill["at"]
                step(f"recovery: killed primary {primary} (view {kill['view']}) at t={kill['at'] - started:.1f} s")
                return await load
            finally:
                load.cancel()
                await caller.close()

        run_ = asyncio.run(scenario())
        report(result, run_, views, kill, run_.started_at, before_s, bench, options)


def report(
    result: BenchResult, run_: LoadRun, views: list[tuple[float, int, int]], kill: dict[str, Any], load_start: float,
    before_s: float, bench: BenchGroup, options: Options,
) -> None:
    kill_s = kill["at"] - load_start  # on the load's clock
    old_view = kill["view"]
    after_view = [(at - load_start, view, seq) for at, view, seq in views if view > old_view]
    first_new_view_s = min((t for t, _, _ in after_view), default=float("nan"))
    recovery_s = first_new_view_s - kill_s
    answered = sorted(c.done_s for c in run_.completions)
    first_any_s = next((t for t in answered if t > kill_s), float("nan"))
    # the longest stretch with no certified response, over the second before the kill and after it
    around = [t for t in answered if t >= kill_s - 1.0] + [run_.wall_s]
    gaps = [(b - a, a) for a, b in zip(around, around[1:])]
    longest_gap_s, gap_start_s = max(gaps, default=(float("nan"), float("nan")))
    baseline = run_.window(max(0.0, kill_s - min(before_s - 1.0, 5.0)), kill_s)
    regain_s = _time_to_regain(run_, kill_s, baseline.throughput_per_s * 0.9)
    after = run_.window(kill_s + (recovery_s if recovery_s == recovery_s else 0.0) + 1.0, run_.wall_s)
    failed = [e for at, e in run_.errors if at >= kill_s]
    log_line(f"first certificate of view > {old_view}: {recovery_s:.2f} s after the kill; longest gap {longest_gap_s:.2f} s")
    result.figures += [
        Figure("recovery: kill -> first certificate of the new view", recovery_s, "s", target=TARGET_RECOVERY_S, target_op="<=",
               baseline_name="p99 latency before the kill", baseline_value=baseline.p99_ms / 1000,
               ratio=recovery_s / (baseline.p99_ms / 1000) if baseline.p99_ms else float("nan"), ratio_meaning="x p99 before"),
        Figure("longest stretch without a certified response", longest_gap_s, "s", target=TARGET_RECOVERY_S, target_op="<=",
               baseline_name="p99 latency before the kill", baseline_value=baseline.p99_ms / 1000,
               ratio=longest_gap_s / (baseline.p99_ms / 1000) if baseline.p99_ms else float("nan"), ratio_meaning="x p99 before"),
        Figure("throughput after recovery", after.throughput_per_s, "req/s", baseline_name="before the kill",
               baseline_value=baseline.throughput_per_s,
               ratio=after.throughput_per_s / baseline.throughput_per_s if baseline.throughput_per_s else float("nan"),
               ratio_meaning="after/before"),
    ]
    lines = [
        f"4-replica group, closed loop of {CONCURRENCY} one-row calls through the gateway. Killed: replica {kill['primary']}, "
        f"primary of view {old_view}, at t = {kill_s:.2f} s (SIGKILL to its process group, {kill['killed_in_s'] * 1000:.0f} ms).",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| kill -> first certified response of any view | {first_any_s - kill_s:.3f} s |",
        f"| kill -> first certificate of a later view (recovery) | {recovery_s:.3f} s |",
        f"| new view(s) seen | {sorted({v for _, v, _ in after_view}) or 'none'} |",
        f"| longest stretch without a certified response | {longest_gap_s:.3f} s (from t = {gap_start_s:.2f} s) |",
        f"| kill -> throughput back to 90 % of before (1 s window) | {regain_s:.2f} s |",
        f"| throughput before / after | {baseline.throughput_per_s:.1f} / {after.throughput_per_s:.1f} req/s |",
        f"| p50 / p99 latency before | {baseline.p50_ms:.1f} / {baseline.p99_ms:.1f} ms |",
        f"| calls that failed after the kill | {len(failed)}{f' (first: {failed[0][:100]})' if failed else ''} |",
        "",
        f"The group's view-change timeout is {bench.config.params.view_change_timeout_ticks} ticks of "
        f"{bench.config.params.tick_interval_ms} ms = {bench.config.params.view_change_timeout_ticks * bench.config.params.tick_interval_ms / 1000:g} s: "
        "a backup waits that long for progress before it votes the primary out, so it is the floor of the recovery time.",
    ]
    result.details += lines
    times, rates = run_.timeline(BIN_S)
    result.data.update({
        "concurrency": CONCURRENCY,
        "killed": kill,
        "kill_s": kill_s,
        "recovery_s": recovery_s,
        "first_response_after_kill_s": first_any_s - kill_s,
        "longest_gap_s": longest_gap_s,
        "regain_90_s": regain_s,
        "before": baseline,
        "after": after,
        "failed_after_kill": len(failed),
        "timeline": {"bin_s": BIN_S, "t_s": [t - kill_s for t in times], "per_s": rates},
        "view_change_timeout_s": bench.config.params.view_change_timeout_ticks * bench.config.params.tick_interval_ms / 1000,
    })
    result.plots.append(plot(times, rates, kill_s, recovery_s, baseline.throughput_per_s, options))


def _time_to_regain(run_: LoadRun, kill_s: float, level_per_s: float) -> float:
    """Seconds from the kill until a 1 s moving window after it reaches `level_per_s`."""
    times, rates = run_.timeline(BIN_S, start_s=kill_s)
    width = int(round(1.0 / BIN_S))
    for i in range(len(rates) - width + 1):
        if sum(rates[i : i + width]) / width >= level_per_s:
            return times[i] + 1.0 - kill_s
    return float("nan")


def plot(times: list[float], rates: list[float], kill_s: float, recovery_s: float, before_per_s: float, options: Options) -> str:
    plt = pyplot()
    fig, axis = plt.subplots(figsize=(9, 4))
    axis.step([t - kill_s for t in times], rates, where="post", label=f"certified / s ({BIN_S * 1000:.0f} ms bins)")
    axis.axvline(0.0, color="red", linestyle="--", label="primary killed")
    if recovery_s == recovery_s:
        axis.axvline(recovery_s, color="green", linestyle="--", label=f"first new-view certificate (+{recovery_s:.2f} s)")
    axis.axhline(before_per_s, color="grey", linestyle=":", label="mean before the kill")
    axis.set(xlabel="seconds from the kill", ylabel="certified requests / s", title="throughput around a primary crash")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right")
    return save_figure(fig, options, "recovery.png")


def main(argv: list[str] | None = None) -> int:
    return run_alone(NAME, TITLE, run, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
