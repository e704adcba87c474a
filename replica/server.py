"""One replica process: Triton backend + consensus runtime + gRPC server, with a clean lifecycle.

`serve(config)` runs until SIGINT/SIGTERM, then stops in order: stop taking requests, stop the
runtime, stop Triton (leaving no tritonserver process behind).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from consensus.messages import ModelUpdate
from replica.cli import settle_heap
from replica.config import ReplicaConfig
from replica.node import ReplicaError, ReplicaNode
from replica.service import ReplicaService
from replica.transport import PEER_MESSAGE_SIZE_MAX_BYTES

log = logging.getLogger("quorumserve.replica")

TRITON_WATCH_INTERVAL_S = 1.0
EXIT_TRITON_DIED = 3  # the replica's exit status when it stopped because its tritonserver died


class ReplicaServer:
    def __init__(self, config: ReplicaConfig) -> None:
        self.config = config
        self.backend: object | None = None
        self.node: ReplicaNode | None = None
        self.server: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer()
        self._update_lock = asyncio.Lock()
        self.exit_status = 0

    async def start(self) -> None:
        from replica.triton_backend import TritonBackend  # heavy: torch and Triton

        config = self.config
        node = ReplicaNode(config)
        self.node = node
        backend = TritonBackend(
            config.data_dir / "triton",
            grpc_port=config.triton.grpc_port,
            http_port=config.triton.http_port,
            metrics_port=config.triton.metrics_port,
            task=node.group.task,
            torch_threads=config.triton.torch_threads,
            spare_models=config.triton.spare_models,
        )
        self.backend = backend
        node.backend = backend
        await asyncio.get_running_loop().run_in_executor(None, backend.start)
        # torch, Triton's client and grpc are loaded: settle the heap now, before this replica
        # takes part in anything (a full collection here takes a few hundred ms of a shared core)
        settle_heap()
        await node.start()
        max_bytes = max(PEER_MESSAGE_SIZE_MAX_BYTES, node.group.params.request_size_max_bytes * 64)
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_bytes),
                ("grpc.max_send_message_length", max_bytes),
                ("grpc.so_reuseport", 0),
            ]
        )
        server.add_generic_rpc_handlers((node.transport.handler(), ReplicaService(node, self.update_model).handler()))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        server.add_insecure_port(config.listen)
        await server.start()
        self.server = server
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set("quorumserve.v1.Replica", health_pb2.HealthCheckResponse.SERVING)
        log.info("replica %d serving on %s (Triton gRPC on %d)", config.replica_id, config.listen, config.triton.grpc_port)

    async def update_model(self, update: ModelUpdate, package: Path) -> bytes:
        """Owner-signed update: check it, load the new version BESIDE the serving one (checking
        its digest and warming it up), then submit it for ordering. A package that fails to load
        or an update the group would refuse changes nothing."""
        node, backend = self.node, self.backend
        if node is None or backend is None:
            raise ReplicaError("replica not started")
        async with self._update_lock:
            node.core.check_control(update)
            if update.new_version in backend.loaded_versions():  # type: ignore[attr-defined]
                raise ReplicaError(f"model version {update.new_version} is already loaded")
            try:
                digest: bytes = await backend.load_async(update.new_version, package, expected_digest=update.weights_digest)  # type: ignore[attr-defined]
            except Exception as exc:
                raise ReplicaError(f"model version {update.new_version} did not load: {exc}") from exc
            try:
                node.submit_control(update)
            except Exception:
                await backend.unload_async(update.new_version)  # type: ignore[attr-defined]
                raise
            node.record_model_package(update.new_version, package, digest)
            log.info("replica %d: model version %d loaded beside the old one and submitted for ordering", node.replica_id, update.new_version)
            return digest

    async def watch_triton(self, stop: asyncio.Event) -> None:
        """Crash-only: a replica whose tritonserver died can run no inference, so it casts no
        vote, and would sit in the group earning its owner nothing while its health check said
        SERVING. It stops instead, with EXIT_TRITON_DIED, for its supervisor (the compose
        file's restart policy, the StatefulSet) to start it again: its state is on disk, and a
        restarted replica catches up from its peers."""
        backend = self.backend
        while not stop.is_set():
            await asyncio.sleep(TRITON_WATCH_INTERVAL_S)
            if backend is not None and not backend.alive():  # type: ignore[attr-defined]
                log_path = getattr(backend, "log_path", "its Triton log")
                log.error(
                    "replica %d: its tritonserver exited (see %s); stopping with exit status %d so that it is restarted",
                    self.config.replica_id, log_path, EXIT_TRITON_DIED,
                )
                await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
                await self.health.set("quorumserve.v1.Replica", health_pb2.HealthCheckResponse.NOT_SERVING)
                self.exit_status = EXIT_TRITON_DIED
                stop.set()
                return

    async def stop(self) -> None:
        await self.health.enter_graceful_shutdown()
        if self.server is not None:
            await self.server.stop(grace=1.0)
        if self.node is not None:
            await self.node.stop()
        if self.backend is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.backend.stop)  # type: ignore[attr-defined]


async def serve(config: ReplicaConfig) -> int:
    """Run a replica until SIGINT or SIGTERM (exit status 0) or its Triton dies (EXIT_TRITON_DIED)."""
    server = ReplicaServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watch: asyncio.Task[None] | None = None
    try:
        await server.start()
        watch = loop.create_task(server.watch_triton(stop), name="triton-watch")
        await stop.wait()
        log.info("replica %d stopping", config.replica_id)
    finally:
        if watch is not None:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
        await server.stop()
    return server.exit_status
