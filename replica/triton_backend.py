"""A replica's inference backend: its owner's model versions behind one real tritonserver.

Each replica starts its own `tritonserver` through nvidia-pytriton, bound to loopback on the
ports it is given, and calls it through `tritonclient` (grpc.aio) with exactly one Triton request
per inference batch. Choices, and why:

- Versions side by side. Every serving version has a Triton model of its own, so a new version
  loads while the old one serves, untouched (Triton does not promise a downtime-free reload of
  one model name). Loading binds a new model into the running server (pytriton's `Triton.bind`
  after `run()` loads it through Triton's explicit model control).
- Warm spare models. Binding a model is the expensive part of an update: Triton starts a
  Python-backend stub process for it and pytriton's stub spawns a tensor-store process (with the
  shared-memory transport), about 0.5 s of CPU together, on the cores that serve. So the backend keeps `spare_models` bound
  models that host no version (`prepare_spares`, done at start-up), and a new version with the
  same tensor signature takes a spare: loading it costs the TorchScript load and a warm-up only.
  A retired version's model becomes the spare again instead of being unloaded. Hence Triton
  model names say which bound model, not which version: "model-<k>", Triton version 1, and
  `loaded(version).model_name` (and the replica's Status) maps versions to them.
- Unloading. A retiring version first stops taking new calls and drains its in-flight ones; then
  its model becomes a spare, or, when there are spares enough, Triton's model-repository API
  unloads it (explicit model-control mode, which pytriton always uses) and pytriton's proxy for it
  is stopped. pytriton 0.7 has no public call to drop one bound model, so `_QuorumTriton.forget`
  reaches into its model manager (the version is pinned).
- Protected endpoints. pytriton guards the model-repository and statistics endpoints with an
  access token by default; the backend keeps the token and sends it in the gRPC header. Triton
  listens on 127.0.0.1 only: the model never leaves the owner's replica.
- The model runs in this process: pytriton proxies each request from Triton's Python backend to
  a handler thread here, which runs TorchScript under `torch.inference_mode`, without the
  optimising executor (it stalls on every new batch shape), with a bounded number of torch
  threads (several replicas share a few cores). No dynamic batcher: the replica
  batches requests itself, so one `infer()` is one Triton request and one model execution.
- Tensor transport. pytriton moves tensors between Triton's Python-backend stub and this process
  either through a shared-memory tensor store, whose blocks a multiprocessing-manager process
  hands out (several IPC round trips a call), or inline, base64 in the ZeroMQ message
  (pytriton's PYTRITON_NO_TENSORSTORE). Inline is cheaper for small batches, shared memory for
  large ones: inline takes 0.73x the time of shared memory per call at 256 B, 0.90x at 16 KiB,
  1.24x at 64 KiB, 3-4x at 0.6-4.8 MB (tests/bench/bench_transport.py, 2 cores). So the
  backend goes inline when one request's input is at most INLINE_INPUT_BYTES_MAX (the digits
  task's 256 B: a batch of 64 is 16 KiB), and uses shared memory otherwise (images). pytriton
  reads the choice from the environment, in this process when a model is bound and in the stub
  when it starts (a mismatch hangs the bind), so the backend sets it in tritonserver's
  environment and around each bind (`_QuorumTriton`), not in this process's for good.
- Triton's own output goes to `<workspace>/tritonserver.log`, not the console. The Python-backend
  stub must load this interpreter's libpython, so its LIBDIR leads LD_LIBRARY_PATH for Triton.
- Unix socket paths are limited to 107 bytes and pytriton builds them from its workspace and the
  model name, so when the replica's workspace path is long pytriton's part lives in a short
  temporary directory instead (logged).
"""

from __future__ import annotations

import asyncio
import atexit
import errno
import hashlib
import logging
import math
import os
import re
import shutil
import signal
import socket
import sysconfig
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from pytriton.model_config import ModelConfig, Tensor
from pytriton.server.triton_server import TritonServer
from pytriton.triton import Triton, TritonConfig
from tritonclient.utils import InferenceServerException

from certs.config import TaskSchema
from replica.model_spec import (
    NUMPY_DTYPES,
    ModelPackageError,
    ModelSpec,
    check_against_task,
    load_model_package,
    load_torchscript,
)

LOGGER = logging.getLogger(__name__)

OUTPUT_NAME = "probabilities"
LOG_FILE_NAME = "tritonserver.log"
VERSION_MAX = 2**31 - 1
_SOCKET_PATH_MAX = 107
# pytriton's longest socket name for a model: f"{model_name}_0_0-server.sock"
_SOCKET_SUFFIX = "_0_0-server.sock"
_GRPC_TOKEN_HEADER = "triton-grpc-protocol-triton-access-token"
# every bound model is Triton version 1 of its own name: a model outlives the versions it hosts
TRITON_MODEL_VERSION = 1
WARM_UP_TIMEOUT_S = 60.0  # the model already ran once here (self-test); this is Triton's round trip
INLINE_INPUT_BYTES_MAX = 512  # one request's input: at most this goes inline, more through shared memory
TENSOR_TRANSPORTS = ("inline", "shared-memory")
_NO_TENSOR_STORE_ENV = "PYTRITON_NO_TENSORSTORE"  # pytriton 0.7: set (non-empty) means inline
_BIND_ENVIRONMENT_LOCK = threading.Lock()  # os.environ is process-wide; binds in one process take turns
MODEL_NAME_PREFIX = "model-"
_LOG_TAIL_CHARS = 2000
_RAISED_LINE = re.compile(r"^[\w.]*(?:Error|Exception): \S")


class BackendError(RuntimeError):
    """The inference backend cannot do what was asked."""


class BackendStartError(BackendError):
    """tritonserver did not start (port in use, missing libraries, ...)."""


class BackendNotRunningError(BackendError):
    """The backend was not started, or has been stopped, or its tritonserver died."""


class ModelLoadError(BackendError):
    """A model version failed to load; the versions already loaded are unaffected."""


class WeightsDigestMismatchError(ModelLoadError):
    """The model file's SHA-256 is not the digest the caller expected (e.g. an owner signed)."""


class VersionNotLoadedError(BackendError, LookupError):
    """The version is not loaded (never was, failed to load, or was unloaded)."""


class BatchShapeError(BackendError, ValueError):
    """An inference batch does not fit the version's input spec."""


class InferenceError(BackendError):
    """Triton (or the model behind it) failed to answer an inference request."""


@dataclass(frozen=True, slots=True)
class LoadedVersion:
    """A version that serves: what was loaded and which Triton model (version 1) hosts it."""

    version: int
    spec: ModelSpec
    model_name: str
    weights_digest: bytes
    device: str


@dataclass(frozen=True, slots=True)
class _Signature:
    """What a bound Triton model's configuration fixes, hence which versions it can host."""

    input_name: str
    input_datatype: str
    input_shape: tuple[int, ...]
    num_classes: int
    max_batch_size: int

    @classmethod
    def of(cls, spec: ModelSpec) -> _Signature:
        return cls(spec.input_name, spec.input_datatype, tuple(spec.input_shape), spec.num_classes, spec.max_batch_size)

    def hosts(self, spec: ModelSpec) -> bool:
        # `infer` splits a batch by the version's own max_batch_size, so a larger one fits too
        other = _Signature.of(spec)
        return self.max_batch_size >= other.max_batch_size and (
            (self.input_name, self.input_datatype, self.input_shape, self.num_classes)
            == (other.input_name, other.input_datatype, other.input_shape, other.num_classes)
        )


class _ModelHost:
    """pytriton's inference callable for one bound Triton model: runs the version it hosts now.

    Swapped by plain attribute assignment, which is atomic; a model hosts a new version only
    after the previous one drained, so no call sees the swap.
    """

    def __init__(self) -> None:
        self.callable: _TorchCallable | None = None

    def __call__(self, requests: Sequence[Any]) -> list[dict[str, np.ndarray]]:
        current = self.callable
        if current is None:
            raise RuntimeError("this Triton model hosts no model version at the moment")
        return current(requests)


@dataclass(eq=False)
class _TritonModel:
    """One model bound into Triton; it hosts at most one version at a time."""

    name: str
    signature: _Signature
    host: _ModelHost = field(default_factory=_ModelHost)


@dataclass(eq=False)
class _Slot:
    """Serving state of one version; `inflight` and `retiring` are guarded by the backend's lock.

    `requests_before` is Triton's request count of the model when the version moved in, so that
    statistics count this version's requests only.
    """

    loaded: LoadedVersion
    model: _TritonModel
    requests_before: int = 0
    inflight: int = 0
    retiring: bool = False
    chunk_warned: bool = field(default=False)


class TritonBackend:
    """One tritonserver serving one replica's model versions.

    Lifecycle methods (`start`, `load`, `unload`, `prepare_spares`, `stop`) block for seconds and
    are thread-safe. `load`, `unload` and `prepare_spares` refuse to run on an event loop's
    thread, where they would stall serving; coroutines use their `_async` variants, which run
    them on a worker thread.
    """

    def __init__(
        self,
        workspace: str | os.PathLike[str],
        *,
        grpc_port: int,
        http_port: int,
        metrics_port: int,
        task: TaskSchema | None = None,
        torch_threads: int = 1,
        host: str = "127.0.0.1",
        startup_timeout_s: float = 60.0,
        spare_models: int = 1,
        tensor_transport: str | None = None,
    ) -> None:
        """`tensor_transport`: "inline" or "shared-memory"; None chooses from the task's input
        size (see the module's docstring), shared memory when there is no task."""
        if tensor_transport is None:
            tensor_transport = "inline" if task is not None and task.input_size_bytes <= INLINE_INPUT_BYTES_MAX else "shared-memory"
        if tensor_transport not in TENSOR_TRANSPORTS:
            raise ValueError(f"tensor_transport must be one of {TENSOR_TRANSPORTS}, is {tensor_transport!r}")
        if torch_threads < 1:
            raise ValueError("torch_threads must be at least 1")
        if spare_models < 0:
            raise ValueError("spare_models must be at least 0")
        ports = (grpc_port, http_port, metrics_port)
        if len(set(ports)) != 3 or not all(0 < p < 65536 for p in ports):
            raise ValueError(f"grpc, http and metrics ports must be three distinct ports, are {ports}")
        self._workspace = Path(workspace).resolve()
        self._grpc_port = grpc_port
        self._http_port = http_port
        self._metrics_port = metrics_port
        self._task = task
        self._torch_threads = torch_threads
        self._host = host
        self._startup_timeout_s = startup_timeout_s
        self._spare_models = spare_models
        self._tensor_transport = tensor_transport
        # _lifecycle serialises start/load/unload/stop; _lock guards the serving table
        self._lifecycle = threading.RLock()
        self._lock = threading.Condition()
        self._slots: dict[int, _Slot] = {}
        self._spares: list[_TritonModel] = []
        self._models_bound = 0  # numbers Triton model names; never reused while the server runs
        self._triton: _QuorumTriton | None = None
        self._sync_client: grpcclient.InferenceServerClient | None = None
        self._auth_headers: dict[str, str] = {}
        self._short_dir: Path | None = None
        self._log_sink: _LogSink | None = None
        self._aio_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, grpcaio.InferenceServerClient] = (
            weakref.WeakKeyDictionary()
        )

    # -- facts ---------------------------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        return f"{self._host}:{self._grpc_port}"

    @property
    def workspace(self) -> Path:
        return self._workspace

    @property
    def tensor_transport(self) -> str:
        """How tensors pass between Triton and the model here: "inline" or "shared-memory"."""
        return self._tensor_transport

    @property
    def log_path(self) -> Path:
        return self._workspace / LOG_FILE_NAME

    @property
    def auth_headers(self) -> dict[str, str]:
        """gRPC headers that open Triton's protected endpoints (statistics, model repository)."""
        return dict(self._auth_headers)

    @property
    def triton_dir(self) -> Path | None:
        """pytriton's directory while running: Triton's binaries, sockets and model store."""
        triton = self._triton
        return None if triton is None else triton.workspace_path

    @property
    def server_pid(self) -> int | None:
        """The tritonserver process id while it runs."""
        triton = self._triton
        return None if triton is None else triton.server_pid()

    def is_running(self) -> bool:
        triton = self._triton
        return triton is not None and triton.server_alive()

    def loaded_versions(self) -> tuple[int, ...]:
        with self._lock:
            return tuple(sorted(v for v, slot in self._slots.items() if not slot.retiring))

    def triton_models(self) -> dict[int, tuple[str, str]]:
        """The Triton model (name, Triton version) hosting each loaded version."""
        with self._lock:
            return {
                v: (slot.model.name, str(TRITON_MODEL_VERSION))
                for v, slot in sorted(self._slots.items()) if not slot.retiring
            }

    def spare_model_count(self) -> int:
        """Bound Triton models hosting no version, ready for the next one."""
        with self._lock:
            return len(self._spares)

    def loaded(self, version: int) -> LoadedVersion:
        with self._lock:
            slot = self._slots.get(version)
            if slot is None or slot.retiring:
                raise VersionNotLoadedError(f"model version {version} is not loaded")
            return slot.loaded

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start tritonserver and wait until it is ready; raises BackendStartError on failure."""
        with self._lifecycle:
            if self._triton is not None:
                raise BackendError("the backend is already started")
            self._workspace.mkdir(parents=True, exist_ok=True)
            for port in (self._grpc_port, self._http_port, self._metrics_port):
                _check_port_free(self._host, port)
            torch.set_num_threads(self._torch_threads)
            # pytriton registers its own atexit stop; ours also kills a stuck server and tidies up
            atexit.register(self.stop)
            started = time.monotonic()
            try:
                triton_dir = self._triton_workspace()
                self._log_sink = _LogSink(self.log_path)
                self._log_sink.write(f"==== quorumserve backend starting tritonserver (pid {os.getpid()}) ====\n")
                config = TritonConfig(
                    grpc_address=self._host,
                    grpc_port=self._grpc_port,
                    http_address=self._host,
                    http_port=self._http_port,
                    metrics_address=self._host,
                    metrics_port=self._metrics_port,
                    allow_gpu_metrics=torch.cuda.is_available(),
                    log_verbose=0,
                )
                self._triton = _QuorumTriton(
                    config=config, workspace=triton_dir, log_sink=self._log_sink, inline_tensors=self._tensor_transport == "inline"
                )
                self._triton.start_and_wait(self._startup_timeout_s)
            except BaseException as exc:
                tail = self._log_tail()
                self.stop()
                if isinstance(exc, BackendStartError):
                    raise BackendStartError(f"{exc}\n--- tritonserver log (tail) ---\n{tail}") from exc
                if isinstance(exc, Exception):
                    raise BackendStartError(
                        f"tritonserver failed to start: {exc}\n--- tritonserver log (tail) ---\n{tail}"
                    ) from exc
                raise
            token = self._triton.get_access_token()
            self._auth_headers = {_GRPC_TOKEN_HEADER: token} if token else {}
            self._sync_client = grpcclient.InferenceServerClient(self.grpc_url)
            LOGGER.info(
                "tritonserver pid %s ready on grpc %s in %.2f s, tensors %s (log %s)",
                self.server_pid, self.grpc_url, time.monotonic() - started, self._tensor_transport, self.log_path,
            )

    def load(self, version: int, package_path: str | os.PathLike[str], *, expected_digest: bytes | None = None) -> bytes:
        """Load a model package as `version` beside the loaded versions; returns its weights digest.

        The model is checked (spec, task schema, digest, one local forward pass), moved into a
        spare Triton model that fits it or else bound into a new one, and warmed up with one
        inference through Triton. On any failure it raises ModelLoadError and the versions
        already loaded keep serving, untouched.
        """
        _refuse_on_event_loop("load")
        with self._lifecycle:
            triton = self._require_running()
            if not (isinstance(version, int) and 1 <= version <= VERSION_MAX):
                raise ModelLoadError(f"model version must be an integer in 1..{VERSION_MAX}, is {version!r}")
            with self._lock:
                if version in self._slots:
                    raise ModelLoadError(f"model version {version} is already loaded")
            started = time.monotonic()
            try:
                package = load_model_package(package_path)
                spec = package.spec
                if self._task is not None:
                    check_against_task(spec, self._task)
                weights = package.read_weights()
            except ModelPackageError as exc:
                raise ModelLoadError(f"model version {version}: {exc}") from exc
            digest = hashlib.sha256(weights).digest()
            if expected_digest is not None and digest != expected_digest:
                raise WeightsDigestMismatchError(
                    f"model version {version}: weights digest {digest.hex()} is not the expected {expected_digest.hex()}"
                )
            if spec.input_name == OUTPUT_NAME:
                raise ModelLoadError(f"model version {version}: input name {OUTPUT_NAME!r} is reserved for the output")
            device = spec.resolved_device()
            try:
                module = load_torchscript(weights, device, str(package.model_path))
                callable_ = _TorchCallable(module, spec, device)
                callable_.self_test()
            except ModelPackageError as exc:
                raise ModelLoadError(f"model version {version}: {exc}") from exc
            with self._lock:
                model = next((m for m in self._spares if m.signature.hosts(spec)), None)
                if model is not None:
                    self._spares.remove(model)
            fresh = model is None
            if model is None:
                model = self._new_model(triton, spec)
            loaded = LoadedVersion(version=version, spec=spec, model_name=model.name, weights_digest=digest, device=device)
            try:
                if fresh:
                    self._bind(triton, model)
                requests_before = self._success_counts(model.name).get(model.name, 0)
                model.host.callable = callable_
                self._warm_up(loaded)
            except Exception as exc:  # pytriton and tritonclient raise many types; all mean "not loaded"
                # a spare that failed a version is dropped too: whatever broke may be in Triton
                model.host.callable = None
                self._drop_from_triton(model.name, triton)
                raise ModelLoadError(
                    f"model version {version} (Triton model {model.name}) failed to load in Triton: {_short_message(exc)}"
                ) from exc
            with self._lock:
                self._slots[version] = _Slot(loaded, model, requests_before)
            LOGGER.info(
                "loaded model version %d into %s Triton model %s (digest %s, device %s) in %.2f s",
                version, "a new" if fresh else "the spare", model.name, digest.hex()[:16], device,
                time.monotonic() - started,
            )
            return digest

    def prepare_spares(self) -> int:
        """Bind Triton models until `spare_models` spares can host the newest loaded version's
        successor (same tensor signature); returns how many were bound. Spares that cannot host
        it are unloaded. Blocks for about a second per model; call it before serving."""
        _refuse_on_event_loop("prepare_spares")
        with self._lifecycle:
            triton = self._require_running()
            with self._lock:
                serving = [v for v, slot in self._slots.items() if not slot.retiring]
                if not serving:
                    return 0
                spec = self._slots[max(serving)].loaded.spec
                stale = [m for m in self._spares if not m.signature.hosts(spec)]
                self._spares = [m for m in self._spares if m.signature.hosts(spec)]
                wanted = self._spare_models - len(self._spares)
            for model in stale:
                self._drop_from_triton(model.name, triton)
            started = time.monotonic()
            for _ in range(wanted):
                model = self._new_model(triton, spec)
                try:
                    self._bind(triton, model)
                except Exception as exc:
                    self._drop_from_triton(model.name, triton)
                    raise BackendError(f"spare Triton model {model.name} failed to load: {_short_message(exc)}") from exc
                with self._lock:
                    self._spares.append(model)
            if wanted > 0:
                LOGGER.info("bound %d spare Triton model(s) for the next model version in %.2f s", wanted, time.monotonic() - started)
            return max(wanted, 0)

    async def prepare_spares_async(self) -> int:
        """`prepare_spares` on a worker thread."""
        return await asyncio.to_thread(self.prepare_spares)

    async def load_async(
        self, version: int, package_path: str | os.PathLike[str], *, expected_digest: bytes | None = None
    ) -> bytes:
        """`load` on a worker thread, so the calling event loop keeps serving."""
        return await asyncio.to_thread(self._load_off_loop, version, package_path, expected_digest)

    def unload(self, version: int, *, drain_timeout_s: float = 30.0) -> None:
        """Stop serving `version`: refuse new calls, wait for in-flight ones, unload it from Triton.

        In-flight calls still running after `drain_timeout_s` fail with InferenceError.
        """
        _refuse_on_event_loop("unload")
        self._unload(version, drain_timeout_s)

    async def unload_async(self, version: int, *, drain_timeout_s: float = 30.0) -> None:
        """`unload` on a worker thread, so in-flight calls on the calling event loop can drain."""
        await asyncio.to_thread(self._unload, version, drain_timeout_s)

    def stop(self) -> None:
        """Stop tritonserver and wait for it to exit (killing it if it does not); idempotent."""
        with self._lifecycle:
            triton = self._triton
            self._triton = None
            with self._lock:
                self._slots.clear()
                self._spares.clear()
                self._lock.notify_all()
            atexit.unregister(self.stop)
            try:
                if triton is not None:
                    pid = triton.server_pid()
                    # pytriton would stop each model's proxy after the server, one after another,
                    # about a second each; the backend stops them side by side, while the server stops
                    cleaners = _start_cleaning(triton.detach_models())
                    try:
                        triton.stop()
                    finally:
                        for cleaner in cleaners:
                            cleaner.join()
                        # pytriton waits 30 s and then kills; make sure nothing is left either way
                        if pid is not None and _process_exists(pid):
                            LOGGER.warning("tritonserver pid %d outlived stop(); killing it", pid)
                            _kill_and_reap(pid)
                        triton.release_launcher()
            finally:
                if self._sync_client is not None:
                    self._sync_client.close()
                    self._sync_client = None
                self._aio_clients.clear()
                self._auth_headers = {}
                if self._log_sink is not None:
                    self._log_sink.close()
                    self._log_sink = None
                if self._short_dir is not None:
                    shutil.rmtree(self._short_dir, ignore_errors=True)
                    self._short_dir = None

    def __enter__(self) -> TritonBackend:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- serving -------------------------------------------------------------------------------
    async def infer(self, version: int, batch: np.ndarray, *, timeout_s: float | None = None) -> np.ndarray:
        """Probabilities [B, num_classes] (float32) for a batch [B, *input_shape] of `version`.

        One Triton request per call, whatever B is, unless B exceeds the version's
        max_batch_size: then the batch is split into ceil(B / max_batch_size) requests, sent
        one after another (and logged once per version).
        """
        if self._triton is None:
            raise BackendNotRunningError("the backend is not started")
        with self._lock:
            slot = self._slots.get(version)
            if slot is None or slot.retiring:
                raise VersionNotLoadedError(f"model version {version} is not loaded")
            loaded = slot.loaded
            array = _check_batch(loaded.spec, batch, version)
            slot.inflight += 1
            warn_chunks = array.shape[0] > loaded.spec.max_batch_size and not slot.chunk_warned
            if warn_chunks:
                slot.chunk_warned = True
        try:
            step = loaded.spec.max_batch_size
            if warn_chunks:
                LOGGER.info(
                    "batch of %d exceeds max_batch_size %d of model version %d: sending it as %d Triton requests",
                    array.shape[0], step, version, math.ceil(array.shape[0] / step),
                )
            client = self._aio_client()
            parts = [
                await self._infer_once(client, loaded, array[start:start + step], timeout_s)
                for start in range(0, array.shape[0], step)
            ]
        finally:
            with self._lock:
                slot.inflight -= 1
                if slot.inflight == 0:
                    self._lock.notify_all()
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def statistics(self) -> dict[int, int]:
        """Successful inference requests per loaded version, as Triton itself counts them.

        The count includes the one warm-up request of `load`. Triton counts a request once it
        has sent the answer, so a read right after `infer` returns may briefly lag behind it.
        A version hosted by a reused model counts from when it moved in.
        """
        with self._lock:
            hosted = {v: (slot.model.name, slot.requests_before) for v, slot in self._slots.items()}
        try:
            by_model = self._success_counts()
        except InferenceServerException as exc:
            raise BackendError(f"Triton statistics unavailable: {_short_message(exc)}") from exc
        return {v: by_model[name] - before for v, (name, before) in hosted.items() if name in by_model}

    # -- internals -----------------------------------------------------------------------------
    def _load_off_loop(self, version: int, package_path: str | os.PathLike[str], expected: bytes | None) -> bytes:
        return self.load(version, package_path, expected_digest=expected)

    def _unload(self, version: int, drain_timeout_s: float) -> None:
        with self._lifecycle:
            triton = self._require_running()
            with self._lock:
                slot = self._slots.get(version)
                if slot is None or slot.retiring:
                    raise VersionNotLoadedError(f"model version {version} is not loaded")
                slot.retiring = True
                drained = self._lock.wait_for(lambda: slot.inflight == 0, timeout=drain_timeout_s)
                if not drained:
                    LOGGER.warning(
                        "model version %d still has %d calls in flight after %.1f s; unloading anyway",
                        version, slot.inflight, drain_timeout_s,
                    )
            model = slot.model
            model.host.callable = None
            with self._lock:
                self._slots.pop(version, None)
                keep = len(self._spares) < self._spare_models
                if keep:
                    self._spares.append(model)
            if not keep:
                self._drop_from_triton(model.name, triton)
            LOGGER.info(
                "unloaded model version %d; Triton model %s %s", version, model.name,
                "stays bound as a spare" if keep else "is unloaded",
            )

    def _new_model(self, triton: _QuorumTriton, spec: ModelSpec) -> _TritonModel:
        with self._lock:
            self._models_bound += 1
            name = f"{MODEL_NAME_PREFIX}{self._models_bound}"
        socket_path = triton.workspace_path / f"{name}{_SOCKET_SUFFIX}"
        if len(str(socket_path)) > _SOCKET_PATH_MAX:
            raise ModelLoadError(f"socket path {socket_path} is too long; use a shorter workspace path")
        return _TritonModel(name, _Signature.of(spec))

    def _bind(self, triton: _QuorumTriton, model: _TritonModel) -> None:
        signature = model.signature
        triton.bind(
            model_name=model.name,
            infer_func=model.host,
            inputs=[Tensor(name=signature.input_name, dtype=NUMPY_DTYPES[signature.input_datatype].type, shape=signature.input_shape)],
            outputs=[Tensor(name=OUTPUT_NAME, dtype=np.float32, shape=(signature.num_classes,))],
            model_version=TRITON_MODEL_VERSION,
            # batcher=None: no dynamic batching, one request is one execution
            config=ModelConfig(batching=True, max_batch_size=signature.max_batch_size, batcher=None),
            strict=True,
        )

    def _success_counts(self, model_name: str = "") -> dict[str, int]:
        """Triton's successful requests by model name (one model, or all when "")."""
        client = self._require_sync_client()
        response = client.get_inference_statistics(model_name=model_name, headers=self._auth_headers)
        return {
            stats.name: int(stats.inference_stats.success.count)
            for stats in response.model_stats if stats.version == str(TRITON_MODEL_VERSION)
        }

    def _drop_from_triton(self, model_name: str, triton: _QuorumTriton | None = None) -> None:
        """Unload a model from Triton (if Triton has it) and stop its pytriton proxy."""
        triton = triton or self._triton
        client = self._sync_client
        if triton is None:
            return
        try:
            if client is not None and triton.server_alive():
                client.unload_model(model_name, headers=self._auth_headers)
        except InferenceServerException as exc:
            LOGGER.warning("Triton refused to unload %s: %s", model_name, _short_message(exc))
        finally:
            triton.forget(model_name, TRITON_MODEL_VERSION)

    def _warm_up(self, loaded: LoadedVersion) -> None:
        """One inference through Triton, so the first real request pays no start-up cost."""
        client = self._require_sync_client()
        spec = loaded.spec
        sample = np.zeros((1, *spec.input_shape), dtype=spec.input_dtype)
        tensor = grpcclient.InferInput(spec.input_name, list(sample.shape), spec.input_datatype)
        tensor.set_data_from_numpy(sample)
        result = client.infer(
            loaded.model_name,
            [tensor],
            model_version=str(TRITON_MODEL_VERSION),
            outputs=[grpcclient.InferRequestedOutput(OUTPUT_NAME)],
            # bounded: a load whose first call never comes back fails instead of holding the update
            client_timeout=WARM_UP_TIMEOUT_S,
        )
        output = result.as_numpy(OUTPUT_NAME)
        if output is None or output.shape != (1, spec.num_classes):
            raise InferenceError(f"warm-up answered shape {None if output is None else output.shape}")

    async def _infer_once(
        self, client: grpcaio.InferenceServerClient, loaded: LoadedVersion, array: np.ndarray, timeout_s: float | None
    ) -> np.ndarray:
        spec = loaded.spec
        tensor = grpcaio.InferInput(spec.input_name, list(array.shape), spec.input_datatype)
        tensor.set_data_from_numpy(array)
        try:
            result = await client.infer(
                loaded.model_name,
                [tensor],
                model_version=str(TRITON_MODEL_VERSION),
                outputs=[grpcaio.InferRequestedOutput(OUTPUT_NAME)],
                client_timeout=timeout_s,
            )
        except InferenceServerException as exc:
            raise InferenceError(
                f"model version {loaded.version} ({loaded.model_name}): {_short_message(exc)}"
            ) from exc
        output = result.as_numpy(OUTPUT_NAME)
        if output is None or output.shape != (array.shape[0], spec.num_classes):
            shape = None if output is None else output.shape
            raise InferenceError(
                f"model version {loaded.version} answered shape {shape}, expected {(array.shape[0], spec.num_classes)}"
            )
        return output

    def _aio_client(self) -> grpcaio.InferenceServerClient:
        # a grpc.aio channel belongs to the event loop it was first used on
        loop = asyncio.get_running_loop()
        client = self._aio_clients.get(loop)
        if client is None:
            client = grpcaio.InferenceServerClient(self.grpc_url)
            self._aio_clients[loop] = client
        return client

    def alive(self) -> bool:
        """Started, and its tritonserver still running."""
        triton = self._triton
        return triton is not None and triton.server_alive()

    def _require_running(self) -> _QuorumTriton:
        triton = self._triton
        if triton is None:
            raise BackendNotRunningError("the backend is not started")
        if not triton.server_alive():
            raise BackendNotRunningError(f"tritonserver has exited; see {self.log_path}")
        return triton

    def _require_sync_client(self) -> grpcclient.InferenceServerClient:
        self._require_running()
        client = self._sync_client
        if client is None:
            raise BackendNotRunningError("the backend is not started")
        return client

    def _triton_workspace(self) -> Path:
        """A fresh directory for pytriton (it refuses an existing one), short enough for sockets."""
        candidate = self._workspace / "triton"
        budget = len(str(candidate)) + 1 + 40 + len("-v") + len(str(VERSION_MAX)) + len(_SOCKET_SUFFIX)
        if budget <= _SOCKET_PATH_MAX:
            # left over from a replica that crashed: it held only sockets and copied binaries
            shutil.rmtree(candidate, ignore_errors=True)
            return candidate
        self._short_dir = Path(tempfile.mkdtemp(prefix="qs-"))
        LOGGER.info("workspace path is long for Unix sockets; Triton's sockets live in %s", self._short_dir)
        return self._short_dir / "t"

    def _log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-_LOG_TAIL_CHARS:]


class _TorchCallable:
    """The inference callable pytriton runs in this process for one model version."""

    def __init__(self, module: torch.jit.ScriptModule, spec: ModelSpec, device: str) -> None:
        self._module = module
        self._spec = spec
        self._device = torch.device(device)

    def __call__(self, requests: Sequence[Any]) -> list[dict[str, np.ndarray]]:
        return [{OUTPUT_NAME: self.run(request[self._spec.input_name])} for request in requests]

    def run(self, batch: np.ndarray) -> np.ndarray:
        # Triton may hand over read-only shared memory; torch wants a writable array
        array = batch if batch.flags.writeable else np.array(batch)
        # TorchScript's optimising executor re-profiles on new batch shapes (100+ ms stalls);
        # a replica votes on a deadline, so steady latency is worth more than fused kernels
        with torch.jit.optimized_execution(False), torch.inference_mode():
            out = self._module(torch.from_numpy(array).to(self._device))
            if not isinstance(out, torch.Tensor):
                raise ValueError(f"model returned {type(out).__name__}, expected one tensor")
            expected = (array.shape[0], self._spec.num_classes)
            if tuple(out.shape) != expected:
                raise ValueError(f"model output has shape {tuple(out.shape)}, expected {expected}")
            out = out.float()
            if self._spec.output_kind == "logits":
                out = torch.softmax(out, dim=1)
            probabilities = out.cpu().numpy()
        if not np.all(np.isfinite(probabilities)):
            raise ValueError("model output is not finite")
        return probabilities

    def self_test(self) -> None:
        """One forward pass on zeros before Triton sees the model, for a clear error early."""
        sample = np.zeros((2, *self._spec.input_shape), dtype=self._spec.input_dtype)
        try:
            self.run(sample)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise ModelPackageError(f"model {self._spec.name!r} fails on a batch of its declared input: {exc}") from exc


class _LogSink:
    """Where tritonserver's stdout and stderr go: a file, written by pytriton's reader thread."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._file: Any = path.open("a", encoding="utf-8", buffering=1)

    def write(self, text: str) -> None:
        with self._lock:
            if self._file is not None:
                self._file.write(text)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class _LoggedTritonServer(TritonServer):
    """pytriton's server process with output to a file and this interpreter's libpython first."""

    def __init__(self, *, log_sink: _LogSink, inline_tensors: bool, **kwargs: Any) -> None:
        super().__init__(verbose=False, **kwargs)
        self._log_sink = log_sink
        self._inline_tensors = inline_tensors

    def _record_logs(self, line: bytes | str) -> None:
        # pytriton's version prints every line and keeps the whole log in memory
        self._log_sink.write(line.decode("utf-8", errors="replace") if isinstance(line, bytes) else line)

    def _get_env(self) -> dict[str, str]:
        env: dict[str, str] = super()._get_env()
        env.pop(_NO_TENSOR_STORE_ENV, None)
        if self._inline_tensors:
            env[_NO_TENSOR_STORE_ENV] = "1"  # the stub reads it when a model starts
        libdir = sysconfig.get_config_var("LIBDIR")
        if libdir:
            env["LD_LIBRARY_PATH"] = f"{libdir}:{env.get('LD_LIBRARY_PATH', '')}".rstrip(":")
        return env


class _QuorumTriton(Triton):
    """pytriton's Triton with the hooks the backend needs (pytriton 0.7.0 internals, pinned)."""

    def __init__(self, *, config: TritonConfig, workspace: Path, log_sink: _LogSink, inline_tensors: bool) -> None:
        self._log_sink = log_sink
        self._inline_tensors = inline_tensors
        self._release = threading.Event()
        self._launcher: threading.Thread | None = None
        super().__init__(config=config, workspace=workspace)
        self.workspace_path = workspace

    def _initialize_server(self) -> None:
        super()._initialize_server()
        base: TritonServer = getattr(self, "_triton_server")  # pytriton's stock server, never started
        self._triton_server = _LoggedTritonServer(
            path=base._server_path, libs_path=base._server_libs_path, config=base._server_config, log_sink=self._log_sink,
            inline_tensors=self._inline_tensors,
        )

    def bind(self, *args: Any, **kwargs: Any) -> None:
        # pytriton's Model reads the transport from os.environ when it is made, inside bind:
        # set it for just that (backends in one process may differ), to match the stub's
        with _BIND_ENVIRONMENT_LOCK:
            before = os.environ.pop(_NO_TENSOR_STORE_ENV, None)
            if self._inline_tensors:
                os.environ[_NO_TENSOR_STORE_ENV] = "1"
            try:
                super().bind(*args, **kwargs)
            finally:
                os.environ.pop(_NO_TENSOR_STORE_ENV, None)
                if before is not None:
                    os.environ[_NO_TENSOR_STORE_ENV] = before

    def start_and_wait(self, timeout_s: float) -> None:
        """Run tritonserver and wait for it, failing fast if the process dies during start-up."""
        launched = threading.Event()
        failures: list[BaseException] = []

        def launch_and_stay() -> None:
            try:
                self._run_server()
            except BaseException as exc:  # handed to the calling thread below
                failures.append(exc)
                return
            finally:
                launched.set()
            # pytriton asks the kernel to signal tritonserver when the *thread* that launched it
            # exits (PR_SET_PDEATHSIG), so this thread lives exactly as long as the server. It
            # has no event loop, which the `sh` library would otherwise tie the process to.
            self._release.wait()

        # daemon: interpreter exit runs atexit (which stops the server) before daemon threads end
        self._launcher = threading.Thread(target=launch_and_stay, name="tritonserver-launcher", daemon=True)
        self._launcher.start()
        launched.wait()
        if failures:
            raise BackendStartError(f"tritonserver did not launch: {failures[0]}") from failures[0]
        deadline = time.monotonic() + timeout_s
        client = grpcclient.InferenceServerClient(self._grpc_url())
        try:
            while True:
                if not self.server_alive():
                    raise BackendStartError("tritonserver exited during start-up")
                try:
                    if client.is_server_ready():
                        break
                except InferenceServerException:
                    pass
                if time.monotonic() > deadline:
                    raise BackendStartError(f"tritonserver not ready after {timeout_s:.0f} s")
                time.sleep(0.05)
        finally:
            client.close()
        self.connect()

    def release_launcher(self) -> None:
        """Let the launching thread end, once the server has exited."""
        self._release.set()
        if self._launcher is not None and self._launcher is not threading.current_thread():
            self._launcher.join()
        self._launcher = None

    def server_alive(self) -> bool:
        server = self._triton_server
        return server is not None and server.is_alive()

    def server_pid(self) -> int | None:
        server = self._triton_server
        running = None if server is None else server._tritonserver_running_cmd
        return None if running is None or not server.is_alive() else int(running.pid)

    def detach_models(self) -> list[Any]:
        """Take every bound model out of pytriton, uncleaned, so that stop() leaves them alone."""
        models = list(self._model_manager._models.values())
        self._model_manager._models.clear()
        return models

    def forget(self, model_name: str, version: int) -> None:
        """Drop one bound model from pytriton and stop its proxy (pytriton has no public call)."""
        model = self._model_manager._models.pop((model_name.lower(), version), None)
        if model is not None:
            model.clean()

    def _grpc_url(self) -> str:
        return f"{self._config.grpc_address}:{self._config.grpc_port}"


# -- helpers ----------------------------------------------------------------------------------------


def _check_batch(spec: ModelSpec, batch: np.ndarray, version: int) -> np.ndarray:
    if not isinstance(batch, np.ndarray):
        raise BatchShapeError(f"model version {version}: a batch is a numpy array, got {type(batch).__name__}")
    expected = tuple(spec.input_shape)
    if batch.ndim != len(expected) + 1 or tuple(batch.shape[1:]) != expected:
        raise BatchShapeError(
            f"model version {version}: input {spec.input_name!r} needs shape [B, {', '.join(map(str, expected))}], "
            f"got {list(batch.shape)}"
        )
    if batch.shape[0] == 0:
        raise BatchShapeError(f"model version {version}: empty batch")
    if batch.dtype != spec.input_dtype:
        raise BatchShapeError(
            f"model version {version}: input {spec.input_name!r} is {spec.input_datatype} ({spec.input_dtype}), got {batch.dtype}"
        )
    return np.ascontiguousarray(batch)


def _refuse_on_event_loop(name: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise BackendError(
        f"{name}() blocks for seconds and would stall this event loop's serving; use await backend.{name}_async(...)"
    )


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            reason = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc})"
            raise BackendStartError(f"port {port} on {host} {reason}") from exc


def _short_message(exc: BaseException) -> str:
    """The useful line of an error: Triton relays a model's whole Python traceback."""
    text = exc.message() if isinstance(exc, InferenceServerException) else str(exc)
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    # a relayed traceback: its last "SomeError: message" line says what the model raised
    raised = [line for line in lines if _RAISED_LINE.match(line) and not line.endswith("(most recent call last):")]
    line = raised[-1] if raised else lines[0] if lines else type(exc).__name__
    status = exc.status() if isinstance(exc, InferenceServerException) else None
    return f"[{status}] {line}" if status else line


def _start_cleaning(models: Sequence[Any]) -> list[threading.Thread]:
    threads = [threading.Thread(target=model.clean, name=f"clean-{model.model_name}") for model in models]
    for thread in threads:
        thread.start()
    return threads


def _process_exists(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            # a zombie has exited; it only waits for its parent to reap it
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10.0
    while _process_exists(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def triton_processes(directory: str | os.PathLike[str]) -> list[int]:
    """Live tritonserver and Python-backend stub processes whose executable lies under `directory`.

    pytriton copies Triton's binaries into its directory (`TritonBackend.triton_dir`), so this
    finds exactly one backend's processes, also after it was stopped or its owner crashed.
    """
    root = str(Path(directory).resolve()) + os.sep
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                program = cmdline.read().split(b"\0", 1)[0].decode(errors="replace")
        except OSError:
            continue
        if program.startswith(root) and _process_exists(int(entry)):
            found.append(int(entry))
    return sorted(found)
