"""A client load for process-level tests: every request goes to every replica (fan-out), the
first certificate that verifies wins, and a request that times out is retried with the same ids
(exactly-once makes retries safe). Records what was certified so tests can check nothing is lost."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

import grpc
import grpc.aio
import numpy as np

from certs.certificate import Certificate, decode_certificate
from certs.config import GroupConfig
from certs.errors import CertificateError
from certs.request import InferenceRequest, TensorData
from certs.verify import verify
from certs.wire import request_to_proto
from protos import replica_api_pb2 as api
from protos import replica_api_pb2_grpc as api_grpc


@dataclass
class Certified:
    request: InferenceRequest
    certificate: Certificate
    latency_s: float
    replica_id: int


@dataclass
class LoadResult:
    certified: dict[tuple[str, str], Certified] = field(default_factory=dict)
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, certified so far)
    invalid: int = 0
    retries: int = 0


def digits_request(config: GroupConfig, client_id: str, request_id: str, pixels: np.ndarray) -> InferenceRequest:
    data = np.asarray(pixels, dtype=np.float32).reshape(config.task.input_shape).tobytes()
    return InferenceRequest(config.group_id, client_id, request_id, (TensorData(config.task.input_name, "FP32", config.task.input_shape, data),))


class Load:
    def __init__(self, config: GroupConfig, addresses: list[str], inputs: np.ndarray, *, client_id: str = "load") -> None:
        self.config = config
        self.addresses = addresses
        self.inputs = inputs
        self.client_id = client_id
        self.result = LoadResult()
        self._counter = itertools.count()
        self._stop = asyncio.Event()
        self.started_s = 0.0

    async def certify(self, request: InferenceRequest, stubs: list[api_grpc.ReplicaStub], timeout_s: float = 10.0) -> Certified:
        """Submit to every replica until one certificate verifies; retry with the same ids."""
        message = api.SubmitRequest(request=request_to_proto(request), fanout=1, timeout_ms=int(timeout_s * 1000))
        started = time.monotonic()
        while True:
            calls = [asyncio.ensure_future(stub.Submit(message, timeout=timeout_s + 2)) for stub in stubs]
            try:
                for next_done in asyncio.as_completed(calls):
                    try:
                        reply = await next_done
                    except grpc.aio.AioRpcError:
                        continue
                    if reply.status != api.CERTIFIED:
                        continue
                    try:
                        certificate = decode_certificate(reply.certificate)
                        verify(certificate, self.config, request)
                    except CertificateError:
                        self.result.invalid += 1
                        continue
                    return Certified(request, certificate, time.monotonic() - started, reply.replica_id)
            finally:
                for call in calls:
                    call.cancel()
            self.result.retries += 1
            await asyncio.sleep(0.2)

    async def _worker(self, stubs: list[api_grpc.ReplicaStub]) -> None:
        while not self._stop.is_set():
            index = next(self._counter)
            request = digits_request(self.config, self.client_id, f"req-{index}", self.inputs[index % len(self.inputs)])
            certified = await self.certify(request, stubs)
            self.result.certified[request.key] = certified
            self.result.timeline.append((time.monotonic() - self.started_s, len(self.result.certified)))

    async def run(self, concurrency: int, duration_s: float | None = None, until: asyncio.Event | None = None) -> LoadResult:
        channels = [grpc.aio.insecure_channel(a) for a in self.addresses]
        stubs = [api_grpc.ReplicaStub(c) for c in channels]
        self.started_s = time.monotonic()
        workers = [asyncio.ensure_future(self._worker(stubs)) for _ in range(concurrency)]
        try:
            if until is not None:
                await until.wait()
            elif duration_s is not None:
                await asyncio.sleep(duration_s)
            self._stop.set()
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            for c in channels:
                await c.close()
        return self.result

    def stop(self) -> None:
        self._stop.set()
