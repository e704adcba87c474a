"""What an idle group costs its owners (`python -m tests.bench.bench_idle`).

Starts a group of four replicas (null model, each with its own Triton) and a gateway, serves a
burst of certified calls (so the replicas have a history, and must settle back to idle), waits,
and then measures over a window with no calls: the CPU (cores) of each replica process, of its
Triton (tritonserver, Python-backend stub, pytriton helpers: the same-run baseline, what an idle
Triton serving the model costs anyway) and of the gateway, and the replica processes' context
switches per second (how often their threads wake). A replica's consensus core is ticked every
tick_interval_ms only while work is under way (replica/node.py, _tick_loop); the figure here
shows what a quiet one costs. A Markdown table goes to stdout and the figures to
results/bench_idle.json; it measures, it never fails.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import numpy as np

from tests.bench.common import CpuMeter, GatewayCaller, closed_loop, null_package, running_group, step, write_figures

BURST_CONCURRENCY = 8


def _context_switches(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if "ctxt_switches:" in line:  # voluntary and involuntary
                    total += int(line.split()[1])
        except OSError:
            continue  # a thread that ended meanwhile
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=20.0, help="seconds measured with no calls")
    parser.add_argument("--burst", type=float, default=5.0, help="seconds of certified calls before")
    parser.add_argument("--out", type=Path, default=Path("results/bench_idle.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="qs-idle-") as tmp:
        package = null_package(Path(tmp) / "models")
        with running_group(Path(tmp), [package] * 4, label="idle") as bench:
            inputs = np.random.default_rng(0).random((256, 64), dtype=np.float32)

            async def burst() -> int:
                caller = GatewayCaller(bench.gateway.address, bench.config.group_id, inputs, run_id=f"idle-{time.time()}")
                try:
                    run = await closed_loop(caller, BURST_CONCURRENCY, args.burst, label="burst", progress=True)
                finally:
                    await caller.close()
                return len(run.completions)

            certified = asyncio.run(burst())
            step(f"burst: {certified} certified calls; settling, then {args.window:.0f} s with no calls")
            time.sleep(3.0)
            pids = [r.process.pid for r in bench.group.replicas if r.process is not None]
            meter: CpuMeter = bench.cpu_meter()
            switches_before = sum(_context_switches(pid) for pid in pids)
            before = meter.sample()
            time.sleep(args.window)
            after = meter.sample()
            switches_after = sum(_context_switches(pid) for pid in pids)
    wall_s = after.at_s - before.at_s
    n = len(pids)
    cores = {k: (after.by_component_s[k] - before.by_component_s[k]) / wall_s for k in ("replicas", "tritons", "gateway")}
    figures = {
        "burst_certified": certified,
        "window_s": wall_s,
        "replica_cores": cores["replicas"] / n,
        "triton_cores": cores["tritons"] / n,
        "gateway_cores": cores["gateway"],
        "replica_over_triton": cores["replicas"] / cores["tritons"] if cores["tritons"] else float("nan"),
        "replica_context_switches_per_s": (switches_after - switches_before) / wall_s / n,
    }
    print("| per replica, idle | cores |")
    print("|---|---:|")
    print(f"| replica process (consensus, gRPC, storage, the model's host) | {figures['replica_cores']:.4f} |")
    print(f"| its Triton (baseline) | {figures['triton_cores']:.4f} |")
    print(f"| replica / Triton | {figures['replica_over_triton']:.2f} |")
    print(f"| replica context switches per second | {figures['replica_context_switches_per_s']:.0f} |")
    print(f"| gateway (whole) | {figures['gateway_cores']:.4f} |")
    write_figures(args.out, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
