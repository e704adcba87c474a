"""Where the CPU goes under load: py-spy profiles of a serving group
(`python -m tests.bench.bench_profile [--load unary|stream] [--concurrency 64] [--rows 1] [--seconds 15]
[--model digits|null] [--all-samples] [--out-dir results/profile]`).

Starts a group of four replicas (each with its own Triton) and a gateway, warms it up, and drives
a closed loop through the gateway: stock-tritonclient ModelInfer calls, `--rows` rows each
(`--load unary`, `--concurrency` calls in flight; 1 shows what a lone call costs, and many rows
per call leave mostly the cost each request has whatever the batching), or the SDK's
stream (`--load stream`, that many rows in flight). While the loop runs, py-spy samples the
primary, one backup and the gateway for `--seconds` (200 Hz, every thread), keeping only the
samples whose thread holds the GIL: Python work, where a replica spends most of its CPU. Waits
in I/O, locks and polls, and C code that released the GIL, are left out (`--all-samples` keeps
them; py-spy then counts pytriton's output-reading threads, which poll, as busy). What each
thread really used is read from /proc beside it, so CPU outside the GIL still shows.

Writes to the out-dir: PROFILE.md (the load's certified requests/s and CPU per request by
component, then per process: CPU by thread, the functions with the most samples of their own and
the most samples under them), <role>.folded (collapsed stacks: open them in speedscope.app,
flamegraph.pl or inferno for a flame graph) and profile_<role>.png (the functions with the most
samples of their own). It measures, it never fails on a figure. py-spy attaches with ptrace: as root,
or with CAP_SYS_PTRACE in a container.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.bench.common import (
    BenchGroup, GatewayCaller, Measurement, cpu_line, measure, proc_stat, pyplot, running_group, step, warm_up,
)

SAMPLE_RATE_HZ = 200
THREAD_FRAME_PREFIX = "thread ("  # py-spy --threads puts "thread (<tid>): <name>" first in each stack
TOP_FUNCTIONS = 25
WARMUP_S = 3.0


# =========================================================================================
# reading what py-spy and /proc say (pure: tested in tests/bench/test_bench_profile.py)
# =========================================================================================


@dataclass
class FoldedStats:
    """Samples from collapsed stacks ("frame;frame;... count", outermost frame first)."""

    total: int = 0
    own: collections.Counter[str] = field(default_factory=collections.Counter)  # samples in the frame itself
    inclusive: collections.Counter[str] = field(default_factory=collections.Counter)  # samples in it or under it
    threads: collections.Counter[str] = field(default_factory=collections.Counter)  # samples per thread label
    thread_names: dict[int, str] = field(default_factory=dict)  # OS thread id -> Python thread name

    def share(self, count: int) -> float:
        return count / self.total if self.total else 0.0


def fold_stats(lines: Iterable[str]) -> FoldedStats:
    """Own and inclusive samples per frame. A frame that recurs in one stack counts once toward
    its inclusive samples, so no function can exceed 100 %; the thread label py-spy puts first
    (with --threads) is kept apart from the functions. Lines that are not stacks are skipped."""
    stats = FoldedStats()
    for line in lines:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames[0].startswith(THREAD_FRAME_PREFIX):
            label = frames.pop(0)
            stats.threads[label] += count
            # "thread (<tid>): <name>", or "thread (<tid>)" where Python named no thread
            tid_text, _, name = label[len(THREAD_FRAME_PREFIX):].partition(")")
            name = name.removeprefix(": ")
            if tid_text.isdigit() and name:
                stats.thread_names[int(tid_text)] = name
        if not frames:
            continue
        stats.total += count
        stats.own[frames[-1]] += count
        for frame in set(frames):
            stats.inclusive[frame] += count
    return stats


def thread_cpu_s(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) each thread of `pid` has used, with its OS name."""
    try:
        tids = [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return {}
    threads: dict[int, tuple[str, float]] = {}
    for tid in tids:
        stat = proc_stat(pid, tid)
        if stat is not None:  # else a thread that ended meanwhile
            threads[tid] = (stat[0], stat[2])
    return threads


def cpu_by_thread(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], names: dict[int, str] | None = None
) -> list[tuple[int, str, float]]:
    """(tid, name, CPU seconds between the two readings), busiest first; a thread started in
    between counts from zero. `names` (Python thread names, from py-spy) win over OS names,
    which Python leaves as the process's."""
    rows = []
    for tid, (os_name, used_s) in after.items():
        spent_s = used_s - before.get(tid, (os_name, 0.0))[1]
        rows.append((tid, (names or {}).get(tid, os_name), spent_s))
    return sorted(rows, key=lambda row: (-row[2], row[0]))


# =========================================================================================
# the run
# =========================================================================================


@dataclass
class Profiled:
    role: str  # "primary", "backup" or "gateway"
    pid: int
    folded: Path
    stats: FoldedStats | None = None
    threads: list[tuple[int, str, float]] = field(default_factory=list)
    error: str | None = None


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: make venv installs it (requirements.txt)")
    return found


def _record(pid: int, seconds: float, all_samples: bool, path: Path) -> subprocess.Popen[bytes]:
    command = [
        _py_spy(), "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", str(SAMPLE_RATE_HZ),
        "--format", "raw", "--threads", "--nonblocking", "--output", str(path),
    ]
    if not all_samples:
        command.append("--gil")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def _profile_under_load(bench: BenchGroup, args: argparse.Namespace, out_dir: Path) -> tuple[Measurement, list[Profiled]]:
    from marketplace.models import held_out_digits

    inputs, _ = held_out_digits(0)
    await warm_up(bench, inputs)
    primary = bench.primary()
    backup = (primary + 1) % bench.n
    targets = [
        Profiled("primary", bench.group.replicas[primary].process.pid, out_dir / "primary.folded"),
        Profiled("backup", bench.group.replicas[backup].process.pid, out_dir / "backup.folded"),
        Profiled("gateway", bench.gateway.process.pid, out_dir / "gateway.folded"),
    ]
    step(f"profiling the primary (replica {primary}), replica {backup} and the gateway for {args.seconds:g} s "
         f"under {args.load} load, {args.concurrency} in flight")
    window_s = args.seconds + 3.0  # the samples fall inside the measured window, start to end
    if args.load == "stream":
        from tests.bench.bench_ordering import measure_stream

        options = argparse.Namespace(progress=not args.no_progress)
        load = asyncio.ensure_future(measure_stream(bench, inputs, args.concurrency, WARMUP_S, window_s, options))  # type: ignore[arg-type]
    else:
        make = functools.partial(GatewayCaller, bench.gateway.address, bench.config.group_id, inputs, rows=args.rows,
                                 run_id=f"profile-{time.time_ns()}")
        load = asyncio.ensure_future(measure(make, args.concurrency, WARMUP_S, window_s, label=args.load,
                                             progress=not args.no_progress, bench=bench))
    await asyncio.sleep(WARMUP_S + 0.5)  # past the warm-up (and wait_idle's moment) into the window
    before = {t.pid: thread_cpu_s(t.pid) for t in targets}
    recorders = [_record(t.pid, args.seconds, args.all_samples, t.folded) for t in targets]
    results = await asyncio.gather(*(asyncio.to_thread(r.communicate) for r in recorders))
    after = {t.pid: thread_cpu_s(t.pid) for t in targets}
    for target, recorder, (_, stderr) in zip(targets, recorders, results):
        if recorder.returncode != 0 or not target.folded.exists():
            target.error = f"py-spy exited {recorder.returncode}: {stderr.decode(errors='replace').strip()[-300:]}"
            continue
        with target.folded.open() as lines:
            target.stats = fold_stats(lines)
        target.threads = cpu_by_thread(before[target.pid], after[target.pid], target.stats.thread_names)
    return await load, targets


def _short(frame: str, width: int = 110) -> str:
    frame = frame.replace("|", "\\|")
    return frame if len(frame) <= width else frame[: width - 1] + "…"


def report(measurement: Measurement, targets: Sequence[Profiled], args: argparse.Namespace) -> list[str]:
    s = measurement.stats
    lines = [
        "# Where the CPU goes",
        "",
        f"Load: {args.load}, {args.concurrency} in flight{f', {args.rows} rows per call' if args.load == 'unary' and args.rows > 1 else ''}, {args.model} models, four replicas; profiles over {args.seconds:g} s "
        f"at {SAMPLE_RATE_HZ} Hz, {'every sample (waits too)' if args.all_samples else 'samples of threads holding the GIL (Python work)'}.",
        "",
        f"- certified: {s.throughput_per_s:.1f} requests/s, {s.errors} errors",
    ]
    if measurement.cpu_per_request:
        lines.append(f"- {cpu_line(measurement.cpu_per_request)}")
    lines.append("")
    for target in targets:
        lines += [f"## {target.role} (pid {target.pid})", ""]
        if target.error is not None or target.stats is None:
            lines += [f"not profiled: {target.error}", ""]
            continue
        busy_s = sum(spent for _, _, spent in target.threads)
        lines += [
            f"CPU by thread over the window: {busy_s:.2f} s in all ({busy_s / args.seconds:.2f} cores).",
            "",
            "| thread | CPU s | share |",
            "|---|---:|---:|",
        ]
        for tid, name, spent in target.threads:
            if spent <= 0:
                continue
            lines.append(f"| {name} ({tid}) | {spent:.2f} | {spent / busy_s if busy_s else 0:.0%} |")
        stats = target.stats
        lines += ["", f"{stats.total} samples; collapsed stacks in `{target.folded.name}`.", "",
                  "| own samples | function |", "|---:|---|"]
        lines += [f"| {stats.share(n):.1%} | {_short(frame)} |" for frame, n in stats.own.most_common(TOP_FUNCTIONS)]
        lines += ["", "| inclusive samples | function |", "|---:|---|"]
        # the outer frames (thread and event-loop start-up) come first; the subsystems follow
        lines += [f"| {stats.share(n):.1%} | {_short(frame)} |" for frame, n in stats.inclusive.most_common(2 * TOP_FUNCTIONS)]
        lines += ["", f"![{target.role}](profile_{target.role}.png)", ""]
    return lines


def plot(target: Profiled, out_dir: Path) -> None:
    if target.stats is None or not target.stats.total:
        return
    plt = pyplot()
    top = target.stats.own.most_common(TOP_FUNCTIONS)[::-1]
    fig, ax = plt.subplots(figsize=(11, 0.32 * len(top) + 1.2))
    ax.barh([_short(frame, 70) for frame, _ in top], [100 * target.stats.share(n) for _, n in top], color="#4477aa")
    ax.set_xlabel("% of samples in the function itself")
    ax.set_title(f"{target.role}: where the samples fall")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / f"profile_{target.role}.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", choices=("unary", "stream"), default="unary")
    parser.add_argument("--concurrency", type=int, default=64, help="calls (unary) or rows (stream) in flight")
    parser.add_argument("--rows", type=int, default=1, help="rows (certified requests) per unary call")
    parser.add_argument("--seconds", type=float, default=15.0, help="how long py-spy samples")
    parser.add_argument("--model", choices=("digits", "null"), default="digits",
                        help="four trained digits models, or the null model on every replica (ordering cost alone)")
    parser.add_argument("--all-samples", action="store_true", help="keep samples of threads not holding the GIL (waits)")
    parser.add_argument("--out-dir", type=Path, default=Path("results/profile"))
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.rows < 1 or (args.rows > 1 and args.load != "unary"):
        parser.error("--rows takes a positive count, with --load unary")
    _py_spy()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    from tests.bench.common import digits_packages, null_package

    with tempfile.TemporaryDirectory(prefix="qs-profile-") as tmp:
        models = Path(tmp) / "models"
        packages = [null_package(models)] * 4 if args.model == "null" else digits_packages(models)
        with running_group(Path(tmp), packages, label="profile") as bench:
            measurement, targets = asyncio.run(_profile_under_load(bench, args, args.out_dir))
    for target in targets:
        plot(target, args.out_dir)
    path = args.out_dir / "PROFILE.md"
    path.write_text("\n".join(report(measurement, targets, args)) + "\n")
    stats = measurement.stats
    print(f"{args.load}, {args.concurrency} in flight: {stats.throughput_per_s:.1f} certified requests/s, {stats.errors} errors")
    for target in targets:
        print(f"  {target.role}: {target.error or f'{target.stats.total if target.stats else 0} samples'}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
