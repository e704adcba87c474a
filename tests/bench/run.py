"""`make bench`: every benchmark of tests/bench/ in one run, one report.

    python -m tests.bench.run [--quick] [--only certs,replication,ordering,latency,recovery,update,overload,core]
                              [--out-dir results] [--data-dir DIR]

Writes <out-dir>/REPORT.md (one table of every figure next to its target and its same-run
baseline, then a section per benchmark), <out-dir>/bench_*.json and PNG plots, and prints where
the report is. --quick shortens every window and drops some points (a few minutes in all); the
full run repeats points in rounds.

One 4-replica group (four digits models, or four ResNet-50s with --model resnet50, which leaves
the update and overload benchmarks out) is shared, in this order, by replication, latency, update
and recovery (recovery kills the primary, so it comes last), and stopped before ordering and
overload start groups of their own (ordering: the null model; overload: digits models, admission
limits on and off); certs and core need no group. A benchmark that crashes is reported as
crashed and the others still run; every group and gateway is stopped whatever happens. Benchmarks measure: no
figure makes this command fail.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import traceback
from collections.abc import Callable

from tests.bench import bench_core, bench_latency, bench_ordering, bench_overload, bench_recovery, bench_replication, bench_update
from tests.bench.common import (
    BenchGroup,
    BenchResult,
    Figure,
    Options,
    add_options,
    model_group,
    options_from,
    step,
    stop_on_sigterm,
    write_json,
    write_report,
)

CERTS_TITLE = "6. Certificates"
Runner = Callable[[Options, BenchResult, BenchGroup | None], None]


def run_certs(options: Options, result: BenchResult, shared: BenchGroup | None = None) -> None:
    """tests/bench/bench_certs.py as it is (its own JSON and table), its figures brought into
    the report."""
    from tests.bench import bench_certs

    out = options.out_dir / "bench_certs.json"
    runs = options.pick(40, 300)
    step(f"certs: size and verification time, {runs} timed runs per figure")
    bench_certs.main(["--runs", str(runs), "--out", str(out)])
    data = json.loads(out.read_text())
    rows = [r for r in data["rows"] if r["f"] == 1]
    baseline_ms = data["baseline_ed25519_verify_ms"]["cpu"]
    largest = max(rows, key=lambda r: r["compact_size_bytes"])
    slowest = max(rows, key=lambda r: r["verify_compact_cpu_ms"])
    slowest_decode = max(rows, key=lambda r: r["decode_verify_compact_cpu_ms"])
    result.figures += [
        Figure("compact certificate size, f=1 (largest batch and top_k)", float(largest["compact_size_bytes"]), "B",
               target=float(bench_certs.TARGET_SIZE_BYTES - 1), target_op="<=",
               note=f"batch {largest['batch_size']}, top_k {largest['top_k']}"),
        Figure("verify compact certificate, f=1 (slowest)", slowest["verify_compact_cpu_ms"], "ms",
               target=bench_certs.TARGET_VERIFY_MS, target_op="<=", baseline_name="one bare Ed25519 verify",
               baseline_value=baseline_ms, ratio=slowest["verify_compact_cpu_ms"] / baseline_ms, ratio_meaning="x Ed25519"),
        Figure("decode + verify compact, f=1 (slowest)", slowest_decode["decode_verify_compact_cpu_ms"], "ms",
               target=bench_certs.TARGET_VERIFY_MS, target_op="<=", baseline_name="one bare Ed25519 verify",
               baseline_value=baseline_ms, ratio=slowest_decode["decode_verify_compact_cpu_ms"] / baseline_ms,
               ratio_meaning="x Ed25519"),
    ]
    result.details += [
        f"From tests/bench/bench_certs.py ({runs} timed runs per figure, CPU-time medians; full table in bench_certs.json). "
        "f = 1, compact certificates, over batch sizes 1..1024 and top_k 3 and 10:",
        "",
        "| batch | top_k | compact B | with votes B | verify ms | decode + verify ms | x Ed25519 |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ] + [
        f"| {r['batch_size']} | {r['top_k']} | {r['compact_size_bytes']} | {r['accountable_size_bytes']} "
        f"| {r['verify_compact_cpu_ms']:.3f} | {r['decode_verify_compact_cpu_ms']:.3f} | {r['verify_compact_ratio']:.1f} |"
        for r in rows
    ]
    result.data.update({"source": str(out), "baseline_ed25519_verify_cpu_ms": baseline_ms})


# name -> (title, runner, uses the shared group); the order is the order they run in
BENCHES: dict[str, tuple[str, Runner, bool]] = {
    "certs": (CERTS_TITLE, run_certs, False),
    "replication": (bench_replication.TITLE, bench_replication.run, True),
    "latency": (bench_latency.TITLE, bench_latency.run, True),
    "update": (bench_update.TITLE, bench_update.run, True),
    "recovery": (bench_recovery.TITLE, bench_recovery.run, True),
    "ordering": (bench_ordering.TITLE, bench_ordering.run, False),
    "overload": (bench_overload.TITLE, bench_overload.run, False),
    "core": (bench_core.TITLE, bench_core.run, False),
}
REPORT_ORDER = ("replication", "ordering", "latency", "recovery", "update", "certs", "core", "overload")


class SharedGroup:
    """The group the benchmarks that can share one use, started on first use and
    stopped before a benchmark that starts groups of its own (they would compete for CPU)."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self._stack: contextlib.ExitStack | None = None
        self.group: BenchGroup | None = None

    def get(self) -> BenchGroup:
        if self.group is None:
            self._stack = contextlib.ExitStack()
            try:
                self.group = self._stack.enter_context(model_group(self.options, None, "shared"))
            except BaseException:
                self.close()
                raise
        return self.group

    def close(self) -> None:
        stack, self._stack, self.group = self._stack, None, None
        if stack is not None:
            stack.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser)
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHES)}")
    args = parser.parse_args(argv)
    options = options_from(args)
    # the update benchmark swaps in other digits models, the overload one starts digits groups:
    # with another model they are left out
    chosen = [b.strip() for b in args.only.split(",")] if args.only else [
        b for b in BENCHES if options.model == "digits" or b not in ("update", "overload")
    ]
    unknown = [b for b in chosen if b not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHES)}")
    stop_on_sigterm()
    started = time.monotonic()
    selected = [name for name in BENCHES if name in chosen]
    step(f"{'quick' if options.quick else 'full'} run of {', '.join(selected)}; results in {options.out_dir}/")
    results: dict[str, BenchResult] = {}
    shared = SharedGroup(options)
    interrupted = False
    try:
        for name in selected:
            title, runner, shares = BENCHES[name]
            result = results[name] = BenchResult(name, title)
            step(f"== {title} ==")
            began = time.monotonic()
            try:
                if not shares:
                    shared.close()
                runner(options, result, shared.get() if shares else None)
            except Exception as exc:  # one crashed benchmark must not lose the others' figures
                result.error = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            write_json(result, options)
            step(f"{title}: done in {time.monotonic() - began:.0f} s" + (f" (CRASHED: {result.error})" if result.error else ""))
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: writing the report of what ran", file=sys.stderr)
    finally:
        shared.close()
    ordered = [results[name] for name in REPORT_ORDER if name in results]
    extra = [f"Benchmarks in this run: {', '.join(selected)}." + (" Interrupted before the end." if interrupted else ""), ""]
    path = write_report(ordered, options, started, extra)
    step(f"report: {path.resolve()}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    raise SystemExit(main())
