"""What the benchmarks of `make bench` share: a running group with a gateway, closed-loop load
generators on `tritonclient.grpc.aio`, CPU accounting per component, percentiles, and the
Markdown / JSON / PNG writers.

Every benchmark measures against a baseline taken in the same run on the same machine (the
machine is shared, so absolute figures drift with the load; ratios much less). Nothing here
passes or fails on a wall-clock number: a figure is reported next to its target, that is all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from replica.trace import TRACE_DIR_ENV, TRACE_MATCH_ENV

RESULTS_DIR = Path("results")
TRACED_RUN_PREFIX = "lat-"  # calls whose request ids start with it are stage-traced (replica/trace.py)
REQUEST_TIMEOUT_S = 60.0  # per call; a call that takes longer counts as an error
CHANNEL_ARGS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


class BenchError(RuntimeError):
    pass


# =========================================================================================
# options every benchmark takes
# =========================================================================================


MODELS = ("digits", "resnet50")


@dataclass(frozen=True)
class Options:
    quick: bool = False
    out_dir: Path = RESULTS_DIR
    data_dir: Path | None = None  # keys, models, state; a temporary directory when None
    progress: bool = True
    storage_sync: str = "full"  # the replicas' [storage] sync
    spare_models: int = 1  # the replicas' [triton] spare_models
    model: str = "digits"  # what the digits-group benchmarks serve: "digits" or "resnet50" (for a GPU)
    # ProtocolParams fields set otherwise than their defaults in every group the benchmarks
    # start (`--param NAME=VALUE`): to measure a trade-off a group would choose, such as
    # proposing sooner rather than waiting for every owner's vote
    params: tuple[tuple[str, int], ...] = ()

    def pick(self, quick: Any, full: Any) -> Any:
        return quick if self.quick else full

    def protocol_params(self) -> Any:
        """The groups' ProtocolParams, or None for the defaults."""
        if not self.params:
            return None
        from certs.config import ProtocolParams

        return dataclasses.replace(ProtocolParams(), **dict(self.params))

    def describe_params(self) -> str:
        return ", ".join(f"{name}={value}" for name, value in self.params) if self.params else "defaults"


def protocol_param(text: str) -> tuple[str, int]:
    """argparse type of `--param NAME=VALUE`: a ProtocolParams field and a positive integer."""
    from certs.config import ProtocolParams

    name, sep, value = text.partition("=")
    names = [f.name for f in dataclasses.fields(ProtocolParams)]
    if not sep or name not in names:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE with NAME one of {', '.join(names)}")
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {name} takes an integer") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: protocol parameters are positive")
    return name, number


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="shorter windows, fewer points (a few minutes in all)")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR), help="where JSON, PNG and REPORT.md go (default results/)")
    parser.add_argument("--data-dir", help="keys, models and replica state (default: a temporary directory)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--storage-sync", choices=("full", "process"), default="full",
        help="replicas' storage durability: full (fsync per write, the default) or process (survives a process crash only)",
    )
    parser.add_argument(
        "--spare-models", type=int, default=1,
        help="warm spare Triton models per replica (default 1; 0 = every update binds a new model, for comparison)",
    )
    parser.add_argument(
        "--model", choices=MODELS, default="digits",
        help="what replication, latency and recovery serve: four trained digits models (default) or four "
        "random-weight ResNet-50s on 3x224x224 images (marketplace/resnet.py; for a GPU machine)",
    )
    parser.add_argument(
        "--param", type=protocol_param, action="append", default=[], metavar="NAME=VALUE",
        help="a protocol parameter (certs.config.ProtocolParams) for every group the benchmarks start, "
        "e.g. --param vote_timeout_ticks=1 --param vote_wait_max_ticks=1 (repeatable; default: the defaults)",
    )


def options_from(args: argparse.Namespace) -> Options:
    return Options(
        quick=args.quick,
        out_dir=Path(args.out_dir),
        data_dir=Path(args.data_dir) if args.data_dir else None,
        progress=not args.no_progress,
        storage_sync=args.storage_sync,
        spare_models=args.spare_models,
        model=args.model,
        params=tuple(args.param),
    )


@contextlib.contextmanager
def data_dir(options: Options, name: str) -> Iterator[Path]:
    """`options.data_dir / name`, or a temporary directory removed afterwards."""
    if options.data_dir is not None:
        path = options.data_dir / name
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    scratch = tempfile.mkdtemp(prefix=f"qs-bench-{name}-")
    try:
        yield Path(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so every `finally` runs and no replica or gateway is left."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def step(message: str) -> None:
    """One progress line per step, with the machine's load so noisy phases are visible."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message} (load {os.getloadavg()[0]:.1f})", flush=True)


# =========================================================================================
# the machine and CPU accounting
# =========================================================================================


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
    }


_CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def proc_stat(pid: int, tid: int | None = None) -> tuple[str, int, float] | None:
    """(command name, process group, CPU seconds used) of a live process, or of its thread
    `tid`; None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat").read_text()
    except OSError:
        return None
    # the command name is in parentheses and may contain spaces: split after the last ')'
    name = text[text.index("(") + 1 : text.rindex(")")]
    rest = text[text.rindex(")") + 2 :].split()
    pgid = int(rest[2])
    utime, stime = int(rest[11]), int(rest[12])
    return name, pgid, (utime + stime) / _CLOCK_TICKS_PER_S


def _machine_busy_s() -> float:
    """CPU seconds all processes of the machine have used (from /proc/stat), over all cores."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / _CLOCK_TICKS_PER_S


@dataclass(frozen=True)
class CpuSample:
    at_s: float
    by_component_s: dict[str, float]


class CpuMeter:
    """CPU seconds used by each part of the system: this process (the load generator), the
    gateway, the replica processes (consensus, signatures, gRPC, storage, and the model itself,
    which pytriton runs in the replica) and the rest of each replica's process group (its
    tritonserver, Python-backend stub and pytriton helpers: the serving path between Triton and
    the model); and the whole machine, whose remainder is other work sharing it."""

    def __init__(self, gateway_pgids: Sequence[int], replica_pgids: Sequence[int]) -> None:
        self.gateway_pgids = set(gateway_pgids)
        self.replica_pgids = set(replica_pgids)

    def sample(self) -> CpuSample:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        parts = {"client": usage.ru_utime + usage.ru_stime, "gateway": 0.0, "replicas": 0.0, "tritons": 0.0}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            stat = proc_stat(int(entry.name))
            if stat is None:
                continue
            _, pgid, cpu_s = stat
            if pgid in self.gateway_pgids:
                parts["gateway"] += cpu_s
            elif pgid in self.replica_pgids:
                parts["replicas" if int(entry.name) == pgid else "tritons"] += cpu_s
        parts["machine"] = _machine_busy_s()
        return CpuSample(time.monotonic(), parts)

    @staticmethod
    def per_request_ms(before: CpuSample, after: CpuSample, certified: int) -> dict[str, float]:
        """CPU milliseconds per certified request, by component; `other` is the rest of the
        machine (other users' work). Also the cores in use over the interval."""
        wall_s = max(after.at_s - before.at_s, 1e-9)
        delta = {k: max(0.0, after.by_component_s[k] - before.by_component_s[k]) for k in after.by_component_s}
        ours = sum(v for k, v in delta.items() if k != "machine")
        delta["other"] = max(0.0, delta["machine"] - ours)
        out = {f"{k}_ms": 1000 * v / certified if certified else float("nan") for k, v in delta.items()}
        out["ours_ms"] = 1000 * ours / certified if certified else float("nan")
        out["cores_ours"] = ours / wall_s
        out["cores_other"] = delta["other"] / wall_s
        return out


# =========================================================================================
# percentiles and windows
# =========================================================================================


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending sequence (NaN when empty)."""
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


@dataclass(frozen=True)
class Completion:
    done_s: float  # since the load started
    latency_s: float
    rows: int  # certified requests (or Triton rows) this call completed


@dataclass
class LoadRun:
    """What a closed loop recorded."""

    label: str
    concurrency: int
    completions: list[Completion] = field(default_factory=list)
    errors: list[tuple[float, str]] = field(default_factory=list)  # (seconds since start, error)
    wall_s: float = 0.0
    started_at: float = 0.0  # time.monotonic() when the load started: its clock's zero

    def window(self, start_s: float, end_s: float) -> WindowStats:
        inside = [c for c in self.completions if start_s <= c.done_s < end_s]
        latencies_ms = sorted(c.latency_s * 1000 for c in inside)
        rows = sum(c.rows for c in inside)
        span_s = max(end_s - start_s, 1e-9)
        return WindowStats(
            label=self.label,
            concurrency=self.concurrency,
            window_s=span_s,
            calls=len(inside),
            rows=rows,
            throughput_per_s=rows / span_s,
            p50_ms=percentile(latencies_ms, 0.50),
            p99_ms=percentile(latencies_ms, 0.99),
            mean_ms=statistics.fmean(latencies_ms) if latencies_ms else float("nan"),
            errors=sum(1 for at, _ in self.errors if start_s <= at < end_s),
            first_error=next((e for at, e in self.errors if start_s <= at < end_s), ""),
        )

    def timeline(self, bin_s: float, start_s: float = 0.0, end_s: float | None = None) -> tuple[list[float], list[float]]:
        """Rows completed per second in bins of `bin_s`: (bin starts, rates)."""
        end = self.wall_s if end_s is None else end_s
        count = max(1, int(math.ceil((end - start_s) / bin_s)))
        rates = [0.0] * count
        for c in self.completions:
            index = int((c.done_s - start_s) // bin_s)
            if 0 <= index < count:
                rates[index] += c.rows / bin_s
        return [start_s + i * bin_s for i in range(count)], rates


@dataclass(frozen=True)
class WindowStats:
    label: str
    concurrency: int
    window_s: float
    calls: int
    rows: int
    throughput_per_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    errors: int
    first_error: str = ""

    def line(self) -> str:
        error = f", errors {self.errors} ({self.first_error[:80]})" if self.errors else ""
        return (
            f"{self.label} c={self.concurrency}: {self.throughput_per_s:8.1f}/s, p50 {self.p50_ms:7.2f} ms, "
            f"p99 {self.p99_ms:7.2f} ms (n={self.rows}{error})"
        )


def merge_windows(parts: Sequence[WindowStats], runs: Sequence[LoadRun], starts_ends: Sequence[tuple[float, float]]) -> WindowStats:
    """Several rounds of one measurement as one: throughput is the median of the rounds'
    (robust to a round disturbed by other work on the machine), latency percentiles are over
    every call of every round."""
    latencies_ms = sorted(
        c.latency_s * 1000 for run, (s, e) in zip(runs, starts_ends) for c in run.completions if s <= c.done_s < e
    )
    first = parts[0]
    return WindowStats(
        label=first.label,
        concurrency=first.concurrency,
        window_s=sum(p.window_s for p in parts),
        calls=sum(p.calls for p in parts),
        rows=sum(p.rows for p in parts),
        throughput_per_s=statistics.median(p.throughput_per_s for p in parts),
        p50_ms=percentile(latencies_ms, 0.50),
        p99_ms=percentile(latencies_ms, 0.99),
        mean_ms=statistics.fmean(latencies_ms) if latencies_ms else float("nan"),
        errors=sum(p.errors for p in parts),
        first_error=next((p.first_error for p in parts if p.first_error), ""),
    )


# =========================================================================================
# closed-loop load
# =========================================================================================

Call = Callable[[int], Awaitable[int]]  # call number -> rows it completed


async def closed_loop(
    call: Call,
    concurrency: int,
    duration_s: float,
    *,
    label: str,
    progress: bool = True,
    stop: asyncio.Event | None = None,
    first_index: int = 0,
) -> LoadRun:
    """`concurrency` workers, each sending its next call when the last is answered, for
    `duration_s` (or until `stop`). A failed call is recorded with its error and the worker
    goes on (after a short pause, so a dead endpoint does not turn into a busy loop)."""
    from tqdm import tqdm

    run = LoadRun(label, concurrency)
    started = run.started_at = time.monotonic()
    stop_at = started + duration_s
    counter = iter(range(first_index, first_index + 10**12))
    done = stop or asyncio.Event()

    async def worker() -> None:
        while not done.is_set() and time.monotonic() < stop_at:
            i = next(counter)
            sent = time.monotonic()
            try:
                rows = await call(i)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of one call is a data point, not a crash
                run.errors.append((time.monotonic() - started, f"{type(exc).__name__}: {exc}"))
                await asyncio.sleep(0.05)
                continue
            now = time.monotonic()
            run.completions.append(Completion(now - started, now - sent, rows))

    async def show() -> None:
        with tqdm(total=round(duration_s), desc=f"  {label} c={concurrency}", unit="s", leave=False, disable=None if progress else True) as bar:
            shown = 0
            while True:
                await asyncio.sleep(1.0)
                elapsed = min(duration_s, time.monotonic() - started)
                bar.update(round(elapsed) - shown)
                shown = round(elapsed)
                recent = sum(c.rows for c in run.completions[-5000:] if c.done_s > elapsed - 1.0)
                bar.set_postfix_str(f"{recent}/s, errors {len(run.errors)}")

    workers = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
    shower = asyncio.ensure_future(show())
    try:
        await asyncio.gather(*workers)
    finally:
        for task in (*workers, shower):
            task.cancel()
        await asyncio.gather(*workers, shower, return_exceptions=True)
    run.wall_s = time.monotonic() - started
    return run


# =========================================================================================
# callers: one request, one Triton call (or one per Triton), one gateway call
# =========================================================================================


@dataclass(frozen=True)
class TritonTarget:
    """One replica's own Triton: the model its owner serves, called directly (no token needed)."""

    url: str
    model_name: str
    model_version: str
    input_name: str
    served: str = ""  # the owner's model and version it serves, e.g. "digits-mlp v1"


class TritonCaller:
    """Each call sends one row to every target and waits for all of them (no agreement): the
    naive fan-out baseline with all of a group's Tritons, a plain Triton with one."""

    def __init__(self, targets: Sequence[TritonTarget], inputs: np.ndarray) -> None:
        import tritonclient.grpc.aio as triton_aio

        self.targets = list(targets)
        self.inputs = np.ascontiguousarray(inputs, dtype=np.float32)
        self.clients = [triton_aio.InferenceServerClient(t.url, channel_args=CHANNEL_ARGS) for t in self.targets]

    async def one(self, client: Any, target: TritonTarget, row: np.ndarray) -> None:
        from tritonclient.grpc.aio import InferInput, InferRequestedOutput

        tensor = InferInput(target.input_name, [1, *row.shape], "FP32")
        tensor.set_data_from_numpy(row[np.newaxis])
        result = await client.infer(
            target.model_name, [tensor], model_version=target.model_version,
            outputs=[InferRequestedOutput("probabilities")], client_timeout=REQUEST_TIMEOUT_S,
        )
        if result.as_numpy("probabilities") is None:
            raise BenchError(f"{target.url} answered no probabilities")

    async def __call__(self, i: int) -> int:
        row = self.inputs[i % len(self.inputs)]
        await asyncio.gather(*(self.one(c, t, row) for c, t in zip(self.clients, self.targets)))
        return 1

    async def close(self) -> None:
        for client in self.clients:
            await client.close()


class GatewayCaller:
    """Each call is one stock-tritonclient ModelInfer with `rows` rows (`rows` certified
    requests). The gateway verified every row's certificate; here each response is checked to
    carry one certificate per row, and `on_certificate` (if given) sees the first one."""

    def __init__(
        self, address: str, group_id: str, inputs: np.ndarray, *, rows: int = 1, run_id: str,
        on_certificate: Callable[[float, bytes], None] | None = None,
    ) -> None:
        import tritonclient.grpc.aio as triton_aio

        self.group_id = group_id
        self.inputs = np.ascontiguousarray(inputs, dtype=np.float32)
        self.rows = rows
        self.run_id = run_id
        self.on_certificate = on_certificate
        self.client = triton_aio.InferenceServerClient(address, channel_args=CHANNEL_ARGS)

    async def __call__(self, i: int) -> int:
        import base64

        from tritonclient.grpc.aio import InferInput

        start = (i * self.rows) % max(1, len(self.inputs) - self.rows)
        tensor = InferInput("pixels", [self.rows, *self.inputs.shape[1:]], "FP32")
        tensor.set_data_from_numpy(self.inputs[start : start + self.rows])
        result = await self.client.infer(self.group_id, [tensor], request_id=f"{self.run_id}-{i}", client_timeout=REQUEST_TIMEOUT_S)
        parameters = result.get_response().parameters
        last = parameters.get(f"certificate_{self.rows - 1}")
        if last is None or not last.string_param:
            raise BenchError(f"the gateway answered call {i} without a certificate for each of its {self.rows} rows")
        if self.on_certificate is not None:
            self.on_certificate(time.monotonic(), base64.b64decode(parameters["certificate_0"].string_param))
        return self.rows

    async def close(self) -> None:
        await self.client.close()


@dataclass
class Measurement:
    """A closed loop's window, with what the system spent on it (when a group was given)."""

    stats: WindowStats
    run: LoadRun
    cpu_per_request: dict[str, float] = field(default_factory=dict)  # CpuMeter.per_request_ms
    replicas: dict[str, float] = field(default_factory=dict)  # replica_breakdown

    def summary(self) -> dict[str, Any]:
        return {"stats": self.stats, "cpu_per_request": self.cpu_per_request, "replicas": self.replicas}


async def measure(
    make: Callable[[], Any], concurrency: int, warmup_s: float, duration_s: float, *, label: str, progress: bool,
    bench: BenchGroup | None = None,
) -> Measurement:
    """A closed loop with a fresh caller; stats over the window after the warm-up. With a group,
    CPU by component and the replicas' counters are sampled at the window's start and end."""
    if bench is not None:
        await asyncio.to_thread(bench.wait_idle)
    caller = make()
    probe = Probe(bench) if bench is not None else None
    try:
        loop = asyncio.ensure_future(closed_loop(caller, concurrency, warmup_s + duration_s, label=label, progress=progress))
        before = after = None
        if probe is not None:
            await asyncio.sleep(warmup_s)
            before = await asyncio.to_thread(probe.sample)
            await asyncio.sleep(duration_s)
            after = await asyncio.to_thread(probe.sample)
        run = await loop
    finally:
        await caller.close()
    stats = run.window(warmup_s, warmup_s + duration_s)
    measurement = Measurement(stats, run)
    if probe is not None and before is not None and after is not None:
        measurement.cpu_per_request, measurement.replicas = probe.compare(before, after, stats.rows)
    return measurement


class Probe:
    """CPU by component and the replicas' counters, sampled together."""

    def __init__(self, bench: BenchGroup) -> None:
        self.bench = bench
        self.meter = bench.cpu_meter()

    def sample(self) -> tuple[CpuSample, dict[str, float]]:
        return self.meter.sample(), self.bench.scrape()

    def compare(
        self, before: tuple[CpuSample, dict[str, float]], after: tuple[CpuSample, dict[str, float]], certified: int
    ) -> tuple[dict[str, float], dict[str, float]]:
        return (
            CpuMeter.per_request_ms(before[0], after[0], certified),
            replica_breakdown(before[1], after[1], certified, self.bench.n),
        )


def cpu_line(cpu: dict[str, float]) -> str:
    """CPU milliseconds per certified request by component, and the cores in use."""
    if not cpu:
        return ""
    return (
        f"CPU/request {cpu['ours_ms']:.2f} ms = client {cpu['client_ms']:.2f} + gateway {cpu['gateway_ms']:.2f} "
        f"+ replicas {cpu['replicas_ms']:.2f} + Tritons {cpu['tritons_ms']:.2f}; cores: ours {cpu['cores_ours']:.2f}, "
        f"other work {cpu['cores_other']:.2f}"
    )


def replicas_line(replicas: dict[str, float]) -> str:
    if not replicas:
        return ""
    line = (
        f"per replica: {replicas['rows_per_triton_call']:.1f} rows/Triton call, Triton call {replicas['triton_call_mean_ms']:.2f} ms, "
        f"{replicas['requests_per_ordered_batch']:.1f} requests/ordered batch, commit latency {replicas['commit_latency_mean_ms']:.1f} ms, "
        f"persist {replicas['persist_mean_ms']:.2f} ms waited (a write {replicas.get('persist_write_mean_ms', float('nan')):.2f} ms), "
        f"{replicas.get('votes_per_certificate', float('nan')):.2f} votes/certificate"
    )
    gathered = replicas.get("gateway_rows_per_message", float("nan"))
    if not math.isnan(gathered):  # only one-row calls and streamed rows go over the shared streams
        line += f"; the gateway sent {gathered:.1f} rows per stream message"
    return line


# =========================================================================================
# a group with a gateway
# =========================================================================================


def digits_packages(models_dir: Path, count: int = 4, seed: int = 0) -> list[Path]:
    """Heterogeneous trained digits models (cached in `models_dir`)."""
    from marketplace.models import train_digits_models

    manifest = models_dir / "manifest.json"
    if manifest.exists():
        paths = [Path(p) for p in json.loads(manifest.read_text())]
        if len(paths) == count and all(p.exists() for p in paths):
            return paths
    trained = train_digits_models(models_dir, count=count, seed=seed, progress=False)
    paths = [Path(t.package_dir) for t in trained]
    manifest.write_text(json.dumps([str(p) for p in paths]))
    return paths


def null_package(models_dir: Path) -> Path:
    """The trivial-compute model (its logits are the first ten pixels)."""
    from marketplace.models import null_model_package

    path = models_dir / "null"
    if not (path / "spec.json").exists():
        null_model_package(path)
    return path


@dataclass
class BenchGroup:
    """A LocalGroup (replica processes, each with its own Triton) and a gateway process."""

    group: Any  # marketplace.local.LocalGroup
    gateway: Any  # marketplace.commands.GatewayProcess
    served: dict[int, tuple[Path, int]]  # replica id -> (model package, version) its Triton serves
    trace_dir: Path | None = None  # where the gateway and the replicas write stage traces (replica/trace.py)

    @property
    def config(self) -> Any:
        if self.group.config is None:
            raise BenchError("the group is not prepared")
        return self.group.config

    @property
    def n(self) -> int:
        return int(self.group.n)

    def triton_target(self, replica_id: int) -> TritonTarget:
        from replica.model_spec import load_model_package

        package, version = self.served[replica_id]
        spec = load_model_package(package).spec
        port = self.group.replicas[replica_id].config.triton.grpc_port
        status = self.status(replica_id, timeout_s=10.0)
        hosting = [m for m in status.triton_models if m.version == version] if status is not None else []
        if not hosting:
            raise BenchError(f"replica {replica_id} does not say which Triton model serves its version {version}")
        return TritonTarget(
            f"127.0.0.1:{port}", hosting[0].model_name, hosting[0].model_version, spec.input_name, f"{spec.name} v{version}"
        )

    def triton_targets(self) -> list[TritonTarget]:
        return [self.triton_target(i) for i in range(self.n)]

    def cpu_meter(self) -> CpuMeter:
        replicas = [r.process.pid for r in self.group.replicas if r.process is not None]
        return CpuMeter([self.gateway.process.pid], replicas)

    def status(self, replica_id: int, timeout_s: float = 2.0) -> Any | None:
        import grpc

        from protos import replica_api_pb2 as api
        from protos import replica_api_pb2_grpc as api_grpc

        try:
            with grpc.insecure_channel(self.group.replicas[replica_id].address) as channel:
                return api_grpc.ReplicaStub(channel).Status(api.StatusRequest(), timeout=timeout_s)
        except grpc.RpcError:
            return None

    def wait_idle(self, timeout_s: float = 60.0) -> bool:
        """Wait until no replica that answers holds requests still to certify: a closed loop
        that ends leaves its last calls in flight inside the group, and a measurement started
        on top of that backlog would count the previous workload's cost against its own."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            answers = [self.status(i) for i in range(self.n)]
            if all(s is None or s.pending_requests == 0 for s in answers):
                return True
            time.sleep(0.2)
        step(f"the group still had requests in flight after {timeout_s:.0f} s; measuring anyway")
        return False

    def primary(self) -> int:
        """The primary most replicas in the normal state name."""
        named = [s.primary for s in (self.status(i) for i in range(self.n)) if s is not None and s.state == "normal"]
        if not named:
            raise BenchError("no replica answered Status")
        return max(set(named), key=named.count)

    def scrape(self) -> dict[str, float]:
        """The replicas' Prometheus counters, summed over replicas (mean per replica = /n), and
        the gateway's (their names start with quorumserve_gateway_)."""
        import urllib.request

        totals: dict[str, float] = {}
        ports = [replica.config.metrics_port for replica in self.group.replicas if replica.running]
        if self.gateway.metrics_port:
            ports.append(self.gateway.metrics_port)
        for port in ports:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                    text = reply.read().decode()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("#") or not line.startswith("quorumserve_"):
                    continue
                name_labels, _, value = line.rpartition(" ")
                name = name_labels.split("{", 1)[0]
                if "{" in name_labels and 'le="' in name_labels:
                    continue  # histogram buckets: sums and counts suffice
                with contextlib.suppress(ValueError):
                    totals[name] = totals.get(name, 0.0) + float(value)
        return totals


def replica_breakdown(before: dict[str, float], after: dict[str, float], certified: int, n: int) -> dict[str, float]:
    """From two scrapes of the replicas' counters: what each replica did per certified request
    and how the work was batched (figures averaged over the replicas that answered)."""

    def d(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    triton_calls = d("quorumserve_triton_latency_seconds_count")
    batches = d("quorumserve_committed_batches_total")
    gateway_messages = d("quorumserve_gateway_stream_rows_per_message_count")
    out = {
        # one-row calls the gateway wrote to each replica's stream per message (its wait for company)
        "gateway_rows_per_message": (
            d("quorumserve_gateway_stream_rows_per_message_sum") / gateway_messages if gateway_messages else float("nan")
        ),
        "triton_calls_per_replica": triton_calls / n,
        "rows_per_triton_call": d("quorumserve_inference_requests_total") / triton_calls if triton_calls else float("nan"),
        "triton_call_mean_ms": 1000 * d("quorumserve_triton_latency_seconds_sum") / triton_calls if triton_calls else float("nan"),
        "requests_per_ordered_batch": (certified * n) / batches if batches else float("nan"),
        "commit_latency_mean_ms": (
            1000 * d("quorumserve_commit_latency_seconds_sum") / d("quorumserve_commit_latency_seconds_count")
            if d("quorumserve_commit_latency_seconds_count") else float("nan")
        ),
        "persist_mean_ms": (
            1000 * d("quorumserve_persist_latency_seconds_sum") / d("quorumserve_persist_latency_seconds_count")
            if d("quorumserve_persist_latency_seconds_count") else float("nan")
        ),
        # the store's own time per write (fsync included), against what the ordering waited
        "persist_write_mean_ms": (
            1000 * d("quorumserve_persist_write_seconds_sum") / d("quorumserve_persist_write_seconds_count")
            if d("quorumserve_persist_write_seconds_count") else float("nan")
        ),
        "view_changes": d("quorumserve_view_changes_total"),
        # n when every owner's vote made every certificate (each owner's share of the fees)
        "votes_per_certificate": (
            d("quorumserve_certified_votes_total") / d("quorumserve_certified_requests_total")
            if d("quorumserve_certified_requests_total") else float("nan")
        ),
    }
    return out


@contextlib.contextmanager
def running_group(
    directory: Path, packages: Sequence[Path], *, f: int = 1, label: str = "group", gateway_args: Sequence[str] = (),
    storage_sync: str = "full", params: Any = None, spare_models: int = 1, task: Any = None, admission: Any = None,
) -> Iterator[BenchGroup]:
    """Start 3f+1 replicas (each with its own Triton) and a gateway; always stop them all.
    `params`: the group's ProtocolParams (the defaults when None); `task`: its TaskSchema (the
    digits task when None); `admission`: each replica's AdmissionLimits (the defaults when None)."""
    from marketplace.commands import start_gateway_process
    from marketplace.local import LocalGroup, free_ports

    n = 3 * f + 1
    group = LocalGroup(
        directory / label, f=f, model_packages=list(packages), storage_sync=storage_sync, spare_models=spare_models,
        task=task,
    )
    if params is not None:
        group.params = params
    if admission is not None:
        group.admission = admission
    gateway = None
    try:
        started = time.monotonic()
        step(f"{label}: starting {n} replicas, each with its own Triton")
        group.prepare()
        # the processes started here trace the stages of the latency benchmark's calls (their
        # ids start with TRACED_RUN_PREFIX) and of every ordered batch: a few microseconds an
        # event; the variables are only set while they start
        trace_dir = group.data_dir / "trace"
        with _environment(TRACE_DIR_ENV, str(trace_dir)), _environment(TRACE_MATCH_ENV, "/" + TRACED_RUN_PREFIX):
            group.start()
            gateway = start_gateway_process(
                [group.group_config_path], log_path=group.data_dir / "gateway.log", extra_args=list(gateway_args),
                metrics_port=free_ports(1)[0],  # scraped with the replicas' (BenchGroup.scrape)
            )
        step(f"{label}: up in {time.monotonic() - started:.0f} s; gateway at {gateway.address}")
        yield BenchGroup(group, gateway, {i: (Path(packages[i]), 1) for i in range(n)}, trace_dir)
    finally:
        step(f"{label}: stopping")
        if gateway is not None:
            gateway.stop()
        group.stop()


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


@contextlib.contextmanager
def model_group(options: Options, shared: BenchGroup | None, name: str) -> Iterator[BenchGroup]:
    """The shared group when `make bench` passes one, else a fresh 4-replica group of four
    different models (stopped afterwards): trained digits models, or with --model resnet50 four
    random-weight ResNet-50s."""
    if shared is not None:
        yield shared
        return
    with data_dir(options, name) as directory:
        task = None
        if options.model == "resnet50":
            from marketplace.resnet import imagenet_task, resnet50_package

            step(f"{name}: building four ResNet-50s (random weights)")
            packages = [Path(resnet50_package(directory / "models" / f"resnet50-{i}", seed=i).directory) for i in range(4)]
            task = imagenet_task()
        else:
            step(f"{name}: training four digits models")
            packages = digits_packages(directory / "models")
        with running_group(
            directory, packages, label=f"{name} group", storage_sync=options.storage_sync, spare_models=options.spare_models,
            task=task, params=options.protocol_params(),
        ) as bench:
            yield bench


def model_inputs(options: Options) -> np.ndarray:
    """The rows the load generators send: held-out digits, or random images for --model resnet50."""
    if options.model == "resnet50":
        from marketplace.resnet import random_images

        return random_images(64)
    from marketplace.models import held_out_digits

    return held_out_digits(0)[0]


async def warm_up(bench: BenchGroup, inputs: np.ndarray, *, seconds: float = 2.0) -> None:
    """A few seconds of gateway traffic, so connections, caches and the first batch shapes are
    paid for before any window."""
    caller = GatewayCaller(bench.gateway.address, bench.config.group_id, inputs, run_id=f"warm-{time.time_ns()}")
    try:
        await closed_loop(caller, 8, seconds, label="warm-up", progress=False)
    finally:
        await caller.close()


# =========================================================================================
# figures and writers
# =========================================================================================


@dataclass
class Figure:
    """One reported number, its target and its same-run baseline."""

    name: str
    value: float
    unit: str
    target: float | None = None
    target_op: str = ">="  # ">=" or "<=": the direction the target asks for
    baseline_name: str = ""
    baseline_value: float | None = None
    baseline_unit: str | None = None  # when it differs from `unit`
    ratio: float | None = None  # value / baseline_value, or as the benchmark defines it
    ratio_meaning: str = ""
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.target is None or not math.isfinite(self.value):
            return None
        return self.value >= self.target if self.target_op == ">=" else self.value <= self.target


@dataclass
class BenchResult:
    name: str  # e.g. "replication"
    title: str
    figures: list[Figure] = field(default_factory=list)
    details: list[str] = field(default_factory=list)  # Markdown lines for the report's section
    plots: list[str] = field(default_factory=list)  # file names under the results folder
    data: dict[str, Any] = field(default_factory=dict)  # everything measured, for the JSON
    error: str = ""  # set when the benchmark crashed: the report says so


def _number(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    magnitude = abs(value)
    if value == int(value) and unit not in ("x", "s", "ms") and magnitude < 1e9:
        return f"{int(value):,} {unit}".strip()
    text = f"{value:,.0f}" if magnitude >= 100 else f"{value:.2f}" if magnitude >= 1 else f"{value:.3f}"
    return f"{text} {unit}".strip()


def figures_table(results: Sequence[BenchResult]) -> list[str]:
    lines = [
        "| benchmark | figure | measured | target | met | same-run baseline | ratio |",
        "|---|---|---:|---:|:---:|---|---:|",
    ]
    for result in results:
        if result.error:
            lines.append(f"| {result.title} | crashed: {result.error[:120]} | | | | | |")
        for fig in result.figures:
            target = f"{fig.target_op} {_number(fig.target, fig.unit)}" if fig.target is not None else ""
            met = {True: "yes", False: "**no**", None: ""}[fig.met]
            unit = fig.unit if fig.baseline_unit is None else fig.baseline_unit
            baseline = f"{fig.baseline_name}: {_number(fig.baseline_value, unit)}" if fig.baseline_name else ""
            ratio = f"{fig.ratio:.2f}" if fig.ratio is not None and math.isfinite(fig.ratio) else ""
            if ratio and fig.ratio_meaning:
                ratio += f" ({fig.ratio_meaning})"
            lines.append(f"| {result.title} | {fig.name} | {_number(fig.value, fig.unit)} | {target} | {met} | {baseline} | {ratio} |")
    return lines


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return _jsonable(asdict(value))
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_json(result: BenchResult, options: Options) -> Path:
    options.out_dir.mkdir(parents=True, exist_ok=True)
    path = options.out_dir / f"bench_{result.name}.json"
    payload = {
        "benchmark": result.name,
        "title": result.title,
        "quick": options.quick,
        "machine": machine_info(),
        "figures": [dict(_jsonable(f), met=f.met) for f in result.figures],
        "error": result.error,
        "data": _jsonable(result.data),
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def write_figures(path: Path, payload: Any) -> None:
    """A standalone benchmark's figures as JSON (the `make bench` suite writes its own, above)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"figures in {path}")


def pyplot() -> Any:
    """matplotlib with the Agg backend (no display here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, options: Options, name: str) -> str:
    """Write a finished plot as <out-dir>/<name> and close it; returns the name for the report."""
    fig.tight_layout()
    options.out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(options.out_dir / name, dpi=110)
    pyplot().close(fig)
    return name


def section(result: BenchResult) -> list[str]:
    lines = [f"## {result.title}", ""]
    if result.error:
        lines += [f"**Crashed:** `{result.error}`", ""]
    lines += result.details
    for plot in result.plots:
        lines += ["", f"![{result.title}]({plot})"]
    return lines + [""]


def write_report(results: Sequence[BenchResult], options: Options, started_s: float, extra: Sequence[str] = ()) -> Path:
    options.out_dir.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    lines = [
        "# quorumserve benchmarks",
        "",
        f"{'Quick' if options.quick else 'Full'} run of {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{(time.monotonic() - started_s) / 60:.1f} min; {info['cpus']} CPU cores shared with other work "
        f"({info['platform']}, Python {info['python']}); replica storage sync: {options.storage_sync}; protocol parameters: {options.describe_params()}. Every ratio is against a baseline measured in the same run "
        "on the same machine; the absolute figures move with the machine's load, the ratios much less.",
        "",
        *figures_table(results),
        "",
        *extra,
    ]
    for result in results:
        lines += section(result)
    path = options.out_dir / "REPORT.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def finish(result: BenchResult, options: Options) -> None:
    """What a benchmark run alone prints and writes: its JSON, its table and section."""
    path = write_json(result, options)
    print()
    print("\n".join(figures_table([result])))
    print()
    print("\n".join(section(result)))
    print(f"wrote {path}" + "".join(f", {options.out_dir / p}" for p in result.plots))


def run_alone(
    name: str, title: str, body: Callable[..., None], argv: list[str] | None, doc: str | None,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """`python -m tests.bench.bench_X`: parse the common options, run, write, print. A benchmark
    with options of its own adds them with `add_arguments`; its body then also gets the
    parsed arguments: body(options, result, args)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    options = options_from(args)
    stop_on_sigterm()
    result = BenchResult(name, title)
    try:
        if add_arguments is None:
            body(options, result)
        else:
            body(options, result, args)
    except (Exception, KeyboardInterrupt) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        finish(result, options)
        raise
    finish(result, options)
    return 0


def log_line(text: str) -> None:
    print(f"  {text}", flush=True)


def flush_stdout() -> None:
    sys.stdout.flush()
