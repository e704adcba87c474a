"""Triton round trip by tensor transport (`python -m tests.bench.bench_transport`).

Two backends in this process, one passing tensors inline and one through pytriton's
shared-memory tensor store, serve the same trivial model (its logits are the first ten inputs)
for small (64 FP32, the digits task) and image-sized (3x224x224 FP32) requests. For each batch
size it times sequential `infer` calls on both, alternating in rounds so that both see the same
machine, and reports the median over rounds of each round's mean ms per call, and the ratio
inline / shared memory. This is the
figure behind TritonBackend's choice of transport (INLINE_INPUT_BYTES_MAX). A Markdown table
goes to stdout and the figures to results/bench_transport.json; it measures, it never fails.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from marketplace.local import free_ports
from marketplace.models import CLASS_LABELS, _FirstPixels
from replica.model_spec import ModelSpec, save_model_package
from replica.triton_backend import TENSOR_TRANSPORTS, TritonBackend
from tests.bench.common import write_figures

# request features -> batch sizes timed
CASES = {64: (1, 16, 64, 256), 3 * 224 * 224: (1, 8)}


async def _time_calls(backend: TritonBackend, batch: np.ndarray, seconds: float) -> float:
    """Mean ms per call over about `seconds` of back-to-back calls."""
    calls = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or calls < 3:
        await backend.infer(1, batch)
        calls += 1
    return 1000 * (time.perf_counter() - started) / calls


async def _measure(backends: dict[str, TritonBackend], features: int, sizes: tuple[int, ...], rounds: int, seconds: float) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for size in sizes:
        batch = np.random.default_rng(0).random((size, features), dtype=np.float32)
        for backend in backends.values():
            for _ in range(5):  # warm: first calls of a new shape
                await backend.infer(1, batch)
        samples: dict[str, list[float]] = {name: [] for name in backends}
        for _ in range(rounds):
            for name, backend in backends.items():
                samples[name].append(await _time_calls(backend, batch, seconds))
        inline_ms, shared_ms = statistics.median(samples["inline"]), statistics.median(samples["shared-memory"])
        rows.append({
            "request_bytes": features * 4, "batch": size, "batch_bytes": features * 4 * size,
            "inline_ms": inline_ms, "shared_memory_ms": shared_ms, "inline_over_shared": inline_ms / shared_ms,
        })
        print(f"| {features * 4} | {size} | {features * 4 * size} | {inline_ms:.2f} | {shared_ms:.2f} | {inline_ms / shared_ms:.2f} |", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="per round, transport and batch size")
    parser.add_argument("--out", type=Path, default=Path("results/bench_transport.json"))
    args = parser.parse_args(argv)
    rows: list[dict[str, object]] = []
    print("| request bytes | batch | batch bytes | inline ms/call | shared memory ms/call | inline / shared |")
    print("|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="qs-transport-") as tmp:
        for features, sizes in CASES.items():
            spec = ModelSpec(
                name="first-inputs", input_name="pixels", input_datatype="FP32", input_shape=(features,),
                output_kind="logits", class_labels=CLASS_LABELS, max_batch_size=max(sizes),
            )
            package = save_model_package(Path(tmp) / f"model-{features}", _FirstPixels(len(CLASS_LABELS)), spec)
            backends: dict[str, TritonBackend] = {}
            try:
                for transport in TENSOR_TRANSPORTS:
                    grpc_port, http_port, metrics_port = free_ports(3)
                    backend = TritonBackend(
                        Path(tmp) / f"{transport}-{features}", grpc_port=grpc_port, http_port=http_port,
                        metrics_port=metrics_port, spare_models=0, tensor_transport=transport,
                    )
                    backends[transport] = backend
                    backend.start()
                    backend.load(1, package.directory)
                rows += asyncio.run(_measure(backends, features, sizes, args.rounds, args.seconds))
            finally:
                for backend in backends.values():
                    backend.stop()
    write_figures(args.out, {"rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
