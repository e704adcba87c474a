"""Gateway overhead: certified-request latency through the gateway versus straight to replicas.

    python -m tests.marketplace.bench_gateway [--requests 200] [--data-dir DIR]

Starts a local group (4 replicas, honest) and a gateway process, then measures, one request at
a time after a warm-up:

- replica Submit: one replica, fanout=0 (it relays the request to its peers);
- fan-out: every replica, one SubmitBatch each, first certificate that verifies (ReplicaFanout,
  what the gateway itself does, and what ReplicaClient does);
- gateway ModelInfer (stock tritonclient, B=1): the fan-out plus one more hop and verification;
- SDK Client.infer: the gateway plus verification in the client;
and the throughput of B=64 ModelInfer calls and of the native streaming Infer. Prints medians and 90th percentiles; it measures,
it does not pass or fail.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as triton

from certs.request import InferenceRequest, TensorData
from certs.verify import verify
from certs.certificate import decode_certificate
from certs.wire import request_to_proto
from marketplace.commands import start_gateway_process
from marketplace.local import LocalGroup
from marketplace.models import held_out_digits
from marketplace.sdk import AsyncClient, Client, InferenceResult, ReplicaFanout
from protos import replica_api_pb2 as api
from protos import replica_api_pb2_grpc as api_grpc


def summary(name: str, samples_s: list[float]) -> str:
    ordered = sorted(samples_s)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    return f"{name:<38} median {statistics.median(ordered) * 1000:7.2f} ms   p90 {p90 * 1000:7.2f} ms   (n={len(ordered)})"


def timed(count: int, call: Callable[[int], object]) -> list[float]:
    out = []
    for i in range(count):
        started = time.perf_counter()
        call(i)
        out.append(time.perf_counter() - started)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="quorumserve-bench-"))
    features, _ = held_out_digits()
    group = LocalGroup(data_dir / "group", f=1)
    group.start()
    gateway = None
    try:
        config = group.config
        assert config is not None
        gateway = start_gateway_process([group.group_config_path], log_path=data_dir / "gateway.log")
        run = uuid.uuid4().hex[:8]
        task = config.task

        def request(kind: str, i: int) -> InferenceRequest:
            row = features[i % len(features)].tobytes()
            return InferenceRequest(config.group_id, "bench", f"{run}-{kind}-{i}", (TensorData(task.input_name, task.input_datatype, task.input_shape, row),))

        with grpc.insecure_channel(group.addresses[1]) as channel:
            stub = api_grpc.ReplicaStub(channel)

            def submit(i: int) -> None:
                r = request("submit", i)
                reply = stub.Submit(api.SubmitRequest(request=request_to_proto(r)), timeout=30)
                verify(decode_certificate(reply.certificate), config, r)

            timed(20, lambda i: submit(10_000 + i))
            direct = timed(args.requests, submit)

        async def fanned() -> list[float]:
            fanout = ReplicaFanout(config)
            out = []
            try:
                for i in range(20 + args.requests):
                    started = time.perf_counter()
                    [outcome] = await fanout.submit([request("fanout", i)], timeout_s=30)
                    if outcome.status != "certified":
                        raise RuntimeError(outcome.error)
                    out.append(time.perf_counter() - started)
            finally:
                await fanout.close()
            return out[20:]

        fanout_s = asyncio.run(fanned())

        with triton.InferenceServerClient(gateway.address) as client:

            def kserve(i: int, rows: int = 1, kind: str = "kserve") -> None:
                tensor = triton.InferInput(task.input_name, [rows, 64], "FP32")
                start = (i * rows) % (len(features) - rows)
                tensor.set_data_from_numpy(np.ascontiguousarray(features[start : start + rows]))
                client.infer(config.group_id, [tensor], request_id=f"{run}-{kind}-{i}")

            timed(20, lambda i: kserve(10_000 + i))
            via_gateway = timed(args.requests, kserve)
            batches = timed(max(10, args.requests // 10), lambda i: kserve(i, 64, "kserve64"))

        with Client(gateway.address, config, client_id="bench-sdk") as sdk:
            timed(20, lambda i: sdk.infer(features[i % len(features)]))
            via_sdk = timed(args.requests, lambda i: sdk.infer(features[i % len(features)]))

        async def streamed(count: int) -> float:
            async with AsyncClient(gateway.address, config, client_id="bench-stream") as sdk:
                rows = [features[i % len(features)] for i in range(count)]
                started = time.perf_counter()
                results = [r async for r in sdk.infer_stream(rows)]
                elapsed = time.perf_counter() - started
            failed = [r for r in results if not isinstance(r, InferenceResult)]
            if failed:
                raise RuntimeError(f"{len(failed)} streamed rows failed: {failed[0]}")
            return count / elapsed

        stream_rate = asyncio.run(streamed(max(512, args.requests * 4)))

        print(summary("replica Submit (one replica, relayed)", direct))
        print(summary("fan-out to all replicas (no gateway)", fanout_s))
        print(summary("gateway ModelInfer, B=1 (tritonclient)", via_gateway))
        print(summary("SDK Client.infer via gateway", via_sdk))
        print(summary("gateway ModelInfer, B=64", batches))
        rate = 64 * len(batches) / sum(batches)
        print(f"{'gateway B=64 throughput':<38} {rate:7.0f} certified requests/s (one client, sequential calls)")
        print(f"{'native streaming Infer throughput':<38} {stream_rate:7.0f} certified requests/s (one stream, SDK verifying)")
        overhead = statistics.median(via_gateway) - statistics.median(fanout_s)
        print(f"{'gateway overhead over fan-out':<38} {overhead * 1000:7.2f} ms (medians)")
    finally:
        if gateway is not None:
            gateway.stop()
        group.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
