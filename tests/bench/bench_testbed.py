"""Certified throughput and latency of one 4-replica group across three emulated sites, next to
the same group on loopback, in the same run.

    python -m tests.bench.bench_testbed [--duration 20] [--warmup 5] [--concurrency 1 16 64]

Needs root (deploy/testbed: network namespaces, WAN delays). Starts a group on loopback, measures,
stops it; then starts the same group (same models, same protocol parameters) with each replica in
its own namespace across sites a, b, c (deploy/testbed/topology.py: one-way 20/40/30 ms), clients
at site b, and measures again. For each concurrency (closed loop: N clients, each sends its next
request when the last one is certified) it reports certified requests per second and the p50 and
p99 latency of requests completed inside the measurement window (after a warm-up). Every
request goes to every replica and its certificate is verified by the client (tests/replica/load.py).

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
from tests.replica.load import Load

REFERENCE = {
    "certified_requests_per_s": 800,
    "what": "published figure for a BFT multi-model inference system: ImageNet models, 3 cloud sites, on GPUs",
}


class BenchError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Measurement:
    setup: str  # "loopback" or "3 sites"
    concurrency: int
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
    result = asyncio.run(load.run(concurrency, duration_s=warmup_s + duration_s))
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
        concurrency=concurrency,
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


def run_setup(group: LocalGroup, setup: str, inputs: np.ndarray, concurrencies: Sequence[int], warmup_s: float, duration_s: float) -> list[Measurement]:
    out = []
    try:
        group.prepare()
        started = time.monotonic()
        group.start()
        print(f"[{setup}] group up in {time.monotonic() - started:.0f} s", flush=True)
        for concurrency in concurrencies:
            m = measure(group, setup, inputs, concurrency, warmup_s, duration_s)
            print(
                f"[{setup}] {concurrency:>3} clients: {m.throughput_per_s:7.1f} certified/s, "
                f"p50 {m.latency_p50_ms:7.1f} ms, p99 {m.latency_p99_ms:7.1f} ms "
                f"(n={m.certified}, retries {m.retries}, invalid {m.invalid}, load {m.load_before:.1f}->{m.load_after:.1f})",
                flush=True,
            )
            out.append(m)
    finally:
        group.stop()
    return out


def markdown(measurements: list[Measurement], testbed: Testbed, meta: dict[str, object]) -> str:
    by = {(m.setup, m.concurrency): m for m in measurements}
    concurrencies = sorted({m.concurrency for m in measurements})
    lines = [
        "# Certified throughput and latency: three emulated sites vs loopback",
        "",
        f"One 4-replica group (f = 1, digits models on CPU Tritons), {meta['cpus']} CPU cores shared by the replicas,",
        f"their Tritons, the client and the WAN emulation ({meta['wan_links']}). Closed loop: N clients, each",
        "request sent to all replicas, every certificate verified by the client. "
        f"Window {meta['duration_s']:g} s after a {meta['warmup_s']:g} s warm-up.",
        "",
        "| clients | loopback req/s | 3 sites req/s | ratio | loopback p50 ms | 3 sites p50 ms | loopback p99 ms | 3 sites p99 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in concurrencies:
        lo, wan = by.get(("loopback", c)), by.get(("3 sites", c))
        if lo is None or wan is None:
            continue
        ratio = wan.throughput_per_s / lo.throughput_per_s if lo.throughput_per_s else float("nan")
        lines.append(
            f"| {c} | {lo.throughput_per_s:.1f} | {wan.throughput_per_s:.1f} | {ratio:.2f} | "
            f"{lo.latency_p50_ms:.0f} | {wan.latency_p50_ms:.0f} | {lo.latency_p99_ms:.0f} | {wan.latency_p99_ms:.0f} |"
        )
    lines += [
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
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64], help="closed-loop clients (default 1 16 64)")
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
        measurements += run_setup(LocalGroup(data / "loopback", model_packages=packages), "loopback", inputs, args.concurrency, args.warmup, args.duration)
        testbed = Testbed()
        try:
            testbed.start()
            group = TestbedGroup(data / "sites", model_packages=packages, testbed=testbed)
            measurements += run_setup(group, "3 sites", inputs, args.concurrency, args.warmup, args.duration)
        except TestbedError as exc:
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
            lo = next((x for x in measurements if x.setup == "loopback" and x.concurrency == m.concurrency), None)
            if lo is not None and lo.throughput_per_s:
                ratios[str(m.concurrency)] = {
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
