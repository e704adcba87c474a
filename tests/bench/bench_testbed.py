"""Certified throughput and latency of one 4-replica group across three emulated sites, next to
the same group on loopback, in the same run.

    python -m tests.bench.bench_testbed [--duration 20] [--warmup 5] [--concurrency 1 16 64]
                                        [--gateway-calls 4] [--gateway-rows 64]

Needs root (deploy/testbed: network namespaces, WAN delays). Starts a group on loopback, measures,
stops it; then starts the same group (same models, same protocol parameters) with each replica in
its own namespace across sites a, b, c (deploy/testbed/topology.py: one-way 20/40/30 ms), clients
at site b, and measures again. Two workloads, each a closed loop (a client sends its next call when
the last one is answered), timed inside a window after a warm-up:

- fan-out clients (1, 16, 64 of them): one request per call, sent to every replica, the first
  certificate that verifies wins (tests/replica/load.py); latency is per request;
- gateway: a `quorumserve gateway` at the clients' site and a few stock tritonclient ModelInfer
  calls in flight, each with 64 rows (64 certified requests, each certificate verified by the
  gateway); latency is per call.

Reported: certified requests per second, p50 and p99 latency.

Writes results/bench_testbed.json and results/bench_testbed.md. It measures; it does not pass or
fail. Reference for such a system, published: about 800 certified requests/s with ImageNet models
across 3 cloud sites, on GPUs; these figures are the digits models on CPU Tritons sharing the
cores of one machine with the clients and the WAN emulation, so compare the ratio, not the
absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from deploy.testbed.group import TestbedGroup
from deploy.testbed.network import Testbed, TestbedError, unavailable_reason
from marketplace.local import LocalGroup
from marketplace.models import held_out_digits, train_digits_models
from tests.replica.load import Load, LoadResult

REFERENCE = {
    "certified_requests_per_s": 800,
    "what": "published figure for a BFT multi-model inference system: ImageNet models, 3 cloud sites, on GPUs",
}


STALL_S = 120.0  # after the window: how long clients may still wait for their last certificates


class BenchError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Measurement:
    setup: str  # "loopback" or "3 sites"
    workload: str  # "fan-out" (one request per call) or "gateway" (rows_per_call per ModelInfer)
    concurrency: int  # calls in flight
    rows_per_call: int
    certified: int  # inside the window
    window_s: float
    throughput_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_mean_ms: float
    retries: int
    invalid: int
    load_before: float  # 1-minute load average of the machine when the phase started
    load_after: float
    first_error: str = ""


def percentile(ordered: Sequence[float], fraction: float) -> float:
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, int(round(fraction * (len(ordered) - 1)))))
    return ordered[index]


def measure(group: LocalGroup, setup: str, inputs: np.ndarray, concurrency: int, warmup_s: float, duration_s: float) -> Measurement:
    if group.config is None:
        raise BenchError("group not prepared")
    load = Load(group.config, group.addresses, inputs, client_id=f"bench-{setup.replace(' ', '')}-c{concurrency}-{time.time_ns()}")
    load_before = os.getloadavg()[0]

    async def run() -> LoadResult:
        # a client retries until certified: a group that stopped certifying would hold it forever
        return await asyncio.wait_for(load.run(concurrency, duration_s=warmup_s + duration_s), warmup_s + duration_s + STALL_S)

    try:
        result = asyncio.run(run())
    except asyncio.TimeoutError:
        raise BenchError(f"[{setup}] requests still uncertified {STALL_S:.0f} s after the window; see the replicas' logs in {group.data_dir}") from None
    load_after = os.getloadavg()[0]
    # certified and timeline are appended together, one entry per certified request, in order
    window_end_s = warmup_s + duration_s
    in_window = [
        certified.latency_s
        for certified, (done_s, _) in zip(result.certified.values(), result.timeline)
        if warmup_s <= done_s <= window_end_s
    ]
    latencies_ms = sorted(s * 1000 for s in in_window)
    return Measurement(
        setup=setup,
        workload="fan-out",
        concurrency=concurrency,
        rows_per_call=1,
        certified=len(in_window),
        window_s=duration_s,
        throughput_per_s=len(in_window) / duration_s,
        latency_p50_ms=percentile(latencies_ms, 0.50),
        latency_p99_ms=percentile(latencies_ms, 0.99),
        latency_mean_ms=statistics.fmean(latencies_ms) if latencies_ms else float("nan"),
        retries=result.retries,
        invalid=result.invalid,
        load_before=load_before,
        load_after=load_after,
    )


def measure_gateway(
    address: str, group: LocalGroup, setup: str, inputs: np.ndarray, calls: int, rows: int, warmup_s: float, duration_s: float
) -> Measurement:
    """`calls` ModelInfer calls of `rows` rows in flight through the gateway, closed loop."""
    import tritonclient.grpc.aio as triton_aio
    from tritonclient.grpc import InferInput
    from tritonclient.utils import InferenceServerException

    if group.config is None:
        raise BenchError("group not prepared")
    config = group.config
    run = f"bench-{setup.replace(' ', '')}-gw{calls}x{rows}-{time.time_ns()}"
    done: list[tuple[float, float]] = []  # (seconds since start when answered, latency)
    failures = 0
    errors: list[str] = []

    async def scenario() -> None:
        client = triton_aio.InferenceServerClient(address, channel_args=[("grpc.max_receive_message_length", 64 << 20)])
        started = time.monotonic()
        stop_at = started + warmup_s + duration_s
        counter = iter(range(10**9))

        async def worker() -> None:
            nonlocal failures
            while time.monotonic() < stop_at:
                i = next(counter)
                start = (i * rows) % (len(inputs) - rows)
                tensor = InferInput(config.task.input_name, [rows, *config.task.input_shape], config.task.input_datatype)
                tensor.set_data_from_numpy(np.ascontiguousarray(inputs[start : start + rows], dtype=np.float32))
                sent = time.monotonic()
                try:
                    await client.infer(config.group_id, [tensor], request_id=f"{run}-{i}", client_timeout=120)
                except InferenceServerException as exc:
                    failures += 1
                    errors.append(str(exc)[:300])
                    continue
                now = time.monotonic()
                done.append((now - started, now - sent))

        try:
            await asyncio.gather(*(worker() for _ in range(calls)))
        finally:
            await client.close()

    load_before = os.getloadavg()[0]
    asyncio.run(scenario())
    load_after = os.getloadavg()[0]
    in_window = sorted(latency * 1000 for at, latency in done if warmup_s <= at <= warmup_s + duration_s)
    return Measurement(
        setup=setup,
        workload="gateway",
        concurrency=calls,
        rows_per_call=rows,
        certified=len(in_window) * rows,
        window_s=duration_s,
        throughput_per_s=len(in_window) * rows / duration_s,
        latency_p50_ms=percentile(in_window, 0.50),
        latency_p99_ms=percentile(in_window, 0.99),
        latency_mean_ms=statistics.fmean(in_window) if in_window else float("nan"),
        retries=0,
        invalid=failures,
        load_before=load_before,
        load_after=load_after,
        first_error=errors[0] if errors else "",
    )


def report(m: Measurement) -> None:
    what = f"{m.concurrency:>3} clients" if m.workload == "fan-out" else f"gateway {m.concurrency}x{m.rows_per_call} rows"
    print(
        f"[{m.setup}] {what}: {m.throughput_per_s:7.1f} certified/s, p50 {m.latency_p50_ms:7.1f} ms, p99 {m.latency_p99_ms:7.1f} ms "
        f"(n={m.certified}, retries {m.retries}, failed/invalid {m.invalid}, load {m.load_before:.1f}->{m.load_after:.1f})",
        flush=True,
    )
    if m.first_error:
        print(f"[{m.setup}]   first failure: {m.first_error}", flush=True)


def run_setup(
    group: LocalGroup, setup: str, inputs: np.ndarray, concurrencies: Sequence[int], warmup_s: float, duration_s: float,
    gateway_calls: int, gateway_rows: int,
) -> list[Measurement]:
    from marketplace.commands import start_gateway_process

    out = []
    gateway = None
    try:
        group.prepare()
        started = time.monotonic()
        group.start()
        print(f"[{setup}] group up in {time.monotonic() - started:.0f} s", flush=True)
        for concurrency in concurrencies:
            out.append(measure(group, setup, inputs, concurrency, warmup_s, duration_s))
            report(out[-1])
        if gateway_calls > 0:
            # the gateway runs where the clients are (this namespace: site b on the test bed)
            gateway = start_gateway_process([group.group_config_path], log_path=group.data_dir / "gateway.log")
            out.append(measure_gateway(gateway.address, group, setup, inputs, gateway_calls, gateway_rows, warmup_s, duration_s))
            report(out[-1])
    finally:
        if gateway is not None:
            gateway.stop()
        group.stop()
    return out


def markdown(measurements: list[Measurement], testbed: Testbed, meta: dict[str, object]) -> str:
    by = {(m.setup, m.workload, m.concurrency): m for m in measurements}
    points = sorted({(m.workload != "fan-out", m.workload, m.concurrency, m.rows_per_call) for m in measurements})
    lines = [
        "# Certified throughput and latency: three emulated sites vs loopback",
        "",
        f"One 4-replica group (f = 1, digits models on CPU Tritons), {meta['cpus']} CPU cores shared by the replicas,",
        f"their Tritons, the clients and the WAN emulation ({meta['wan_links']}). Closed loops.",
        "Fan-out: N clients, one request per call sent to every replica, every certificate verified by",
        "the client; latency per request. Gateway: a gateway at the clients' site, N ModelInfer calls",
        "in flight with R rows each (R certified requests, each certificate verified by the gateway);",
        f"latency per call. Window {meta['duration_s']:g} s after a {meta['warmup_s']:g} s warm-up.",
        "",
        "| workload | in flight | loopback req/s | 3 sites req/s | ratio | loopback p50 ms | 3 sites p50 ms | loopback p99 ms | 3 sites p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for _, workload, c, rows in points:
        lo, wan = by.get(("loopback", workload, c)), by.get(("3 sites", workload, c))
        if lo is None or wan is None:
            continue
        ratio = wan.throughput_per_s / lo.throughput_per_s if lo.throughput_per_s else float("nan")
        label = "fan-out clients" if workload == "fan-out" else f"gateway, {rows} rows/call"
        lines.append(
            f"| {label} | {c} | {lo.throughput_per_s:.1f} | {wan.throughput_per_s:.1f} | {ratio:.2f} | "
            f"{lo.latency_p50_ms:.0f} | {wan.latency_p50_ms:.0f} | {lo.latency_p99_ms:.0f} | {wan.latency_p99_ms:.0f} |"
        )
    loads = [x for m in measurements for x in (m.load_before, m.load_after)]
    lines += [
        "",
        f"Machine load average (1 min) during the runs: {min(loads):.1f} to {max(loads):.1f} on {meta['cpus']} cores"
        " (other work shares this machine: the figures are CPU-bound and noisy).",
        "",
        "Sites (one-way delays; clients at site "
        f"{testbed.topology.client_site}; replicas {dict(sorted(testbed.topology.placement.items()))}):",
        "",
        testbed.topology.delay_table(),
        "",
        f"Reference: {REFERENCE['certified_requests_per_s']} certified requests/s, {REFERENCE['what']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0, help="measurement window per point, seconds (default 20)")
    parser.add_argument("--warmup", type=float, default=5.0, help="warm-up before each window, seconds (default 5)")
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 16, 64], help="closed-loop fan-out clients (default 1 16 64; none: skip)")
    parser.add_argument("--gateway-calls", type=int, default=4, help="ModelInfer calls in flight through a gateway (0: skip; default 4)")
    parser.add_argument("--gateway-rows", type=int, default=64, help="rows per ModelInfer call (default 64)")
    parser.add_argument("--out-dir", default="results")
    parser.add_argument("--data-dir", help="keys, models and state (default: a temporary directory)")
    args = parser.parse_args(argv)
    reason = unavailable_reason()
    if reason is not None:
        print(f"bench_testbed: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-testbed-") as scratch:
        data = Path(args.data_dir or scratch)
        packages = [Path(t.package_dir) for t in train_digits_models(data / "models", count=4, seed=0, progress=False)]
        inputs, _ = held_out_digits(0)
        measurements: list[Measurement] = []
        workload = (args.concurrency, args.warmup, args.duration, args.gateway_calls, args.gateway_rows)
        try:
            measurements += run_setup(LocalGroup(data / "loopback", model_packages=packages), "loopback", inputs, *workload)
        except BenchError as exc:
            print(f"bench_testbed: {exc}", file=sys.stderr)
            return 1
        testbed = Testbed()
        try:
            testbed.start()
            group = TestbedGroup(data / "sites", model_packages=packages, testbed=testbed)
            measurements += run_setup(group, "3 sites", inputs, *workload)
        except (TestbedError, BenchError) as exc:
            print(f"bench_testbed: {exc}", file=sys.stderr)
            return 1
        finally:
            testbed.stop()
    meta: dict[str, object] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "wan_links": "tc netem" if testbed.link_kind == "netem" else "user-space TUN wire, the kernel has no netem",
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "delays_one_way_ms": {f"{a}-{b}": testbed.topology.delay_ms(a, b) for a, b in testbed.topology.pairs()},
        "placement": {str(k): v for k, v in testbed.topology.placement.items()},
        "client_site": testbed.topology.client_site,
    }
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ratios = {}
    for m in measurements:
        if m.setup == "3 sites":
            lo = next((x for x in measurements if x.setup == "loopback" and (x.workload, x.concurrency) == (m.workload, m.concurrency)), None)
            if lo is not None and lo.throughput_per_s:
                ratios[f"{m.workload}-{m.concurrency}x{m.rows_per_call}"] = {
                    "throughput_sites_over_loopback": m.throughput_per_s / lo.throughput_per_s,
                    "p50_sites_over_loopback": m.latency_p50_ms / lo.latency_p50_ms if lo.latency_p50_ms else None,
                }
    (out_dir / "bench_testbed.json").write_text(json.dumps(
        {"meta": meta, "reference": REFERENCE, "measurements": [asdict(m) for m in measurements], "ratios": ratios}, indent=2
    ) + "\n")
    table = markdown(measurements, testbed, meta)
    (out_dir / "bench_testbed.md").write_text(table)
    print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
