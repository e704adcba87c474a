"""A replica's own configuration (`quorumserve replica --config FILE.toml`).

Example:

    group_config = "group.json"          # the group's config (JSON), shared by all members
    replica_id = 0
    key_file = "keys/replica-0.key"      # the replica's Ed25519 key (mode 0600)
    listen = "127.0.0.1:7100"            # gRPC: peers and clients
    data_dir = "data/replica-0"          # SQLite state, Triton workspace, logs
    metrics_port = 9100                  # Prometheus; 0 disables

    [model]
    package = "models/replica-0"         # TorchScript + spec (replica/model_spec.py)
    version = 1                          # must match this member's genesis version and digest

    [storage]
    sync = "full"                        # full: durable against power loss (fsync per write)
                                         # process: durable against the process dying only

    [admission]                          # new client requests are refused (RESOURCE_EXHAUSTED,
    pending_requests_max = 4096          #   with a retry hint) while the replica holds this many
    pending_bytes_max = 1073741824       #   requests, or this many bytes of their inputs, not
                                         #   yet executed; a request it holds already is let in
    wait_share_max = 0.5                 # ... or when what it holds would keep the new one
                                         #   waiting more than this share of its timeout
                                         #   (at the recent execution rate); 0: never

    [triton]
    grpc_port = 8101
    http_port = 8100
    metrics_port = 8102
    torch_threads = 1
    spare_models = 1                     # bound Triton models kept ready for the next model
                                         # version: an update then starts no Triton process

    [misbehave]                          # tests only: make this replica faulty on purpose
    mode = "none"                        # none | wrong-labels | equivocate | silent | swap-weak
    swap_after_requests = 100            # swap-weak: after this many requests, answer with
    weak_package = "models/weak"         #   this model while still claiming the signed version

Relative paths are relative to the config file.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MISBEHAVIOURS = ("none", "wrong-labels", "equivocate", "silent", "swap-weak")


class ReplicaConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class TritonPorts:
    grpc_port: int
    http_port: int
    metrics_port: int
    torch_threads: int = 1
    spare_models: int = 1


PENDING_REQUESTS_MAX = 4096
PENDING_BYTES_MAX = 1 << 30
WAIT_SHARE_MAX = 0.5
# While other rows are in flight, a gateway's lone row waits this long for company before it is
# written to the replicas' streams (marketplace/sdk.py, _ReplicaStream._write); a longer wait holds
# every row back for little more company, so the gateway takes at most STREAM_COALESCE_MAX_S.
STREAM_COALESCE_S = 0.005
STREAM_COALESCE_MAX_S = 0.1


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    """How much client work a replica holds (or a gateway keeps in flight to one group) before
    it refuses more (the rules: replica/admission.py). Without a bound, clients sending faster
    than the group certifies grow every replica's backlog, its memory and every request's wait
    without end, until each request times out before it is ordered. 4,096 is
    5-20 s of work at the 200-900 requests/s a group of four reaches on a 2-core machine, so
    what is let in is certified within the default 30 s request timeout, and it is twice what
    the benchmarks keep in flight. The bytes bound is what holds large inputs: 1 GiB is about
    1,700 ResNet-50 images."""

    pending_requests_max: int = PENDING_REQUESTS_MAX
    pending_bytes_max: int = PENDING_BYTES_MAX
    # refuse a request the backlog would keep waiting longer than this share of its timeout: the
    # wait is a rough estimate (a rate over a couple of seconds), and after it come the
    # request's own inference, ordering and way back, all before the client's deadline
    wait_share_max: float = WAIT_SHARE_MAX


@dataclass(frozen=True, slots=True)
class ReplicaConfig:
    group_config: Path
    replica_id: int
    key_file: Path
    listen: str
    data_dir: Path
    model_package: Path
    model_version: int
    triton: TritonPorts
    metrics_port: int = 0
    storage_sync: str = "full"
    misbehave: str = "none"
    swap_after_requests: int = 100
    weak_package: Path | None = None
    request_timeout_s: float = 30.0
    admission: AdmissionLimits = AdmissionLimits()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def listen_port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


def _path(base: Path, value: Any, name: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ReplicaConfigError(f"{name} must be a non-empty path")
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else (base / path)


def _int(table: dict[str, Any], name: str, default: int | None = None) -> int:
    value = table.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ReplicaConfigError(f"{name} must be an integer")
    return value


def _sync(value: Any) -> str:
    if value not in ("full", "process"):
        raise ReplicaConfigError('storage.sync must be "full" or "process"')
    return str(value)


def load_replica_config(path: str | os.PathLike[str]) -> ReplicaConfig:
    source = Path(path)
    try:
        data = tomllib.loads(source.read_text())
    except FileNotFoundError as exc:
        raise ReplicaConfigError(f"{source}: no such file") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ReplicaConfigError(f"{source}: not valid TOML ({exc})") from exc
    base = source.resolve().parent
    try:
        model = data.get("model", {})
        triton = data.get("triton", {})
        misbehave_table = data.get("misbehave", {})
        misbehave = misbehave_table.get("mode", "none")
        if misbehave not in MISBEHAVIOURS:
            raise ReplicaConfigError(f"misbehave.mode must be one of {', '.join(MISBEHAVIOURS)}")
        weak = misbehave_table.get("weak_package")
        if misbehave == "swap-weak" and not weak:
            raise ReplicaConfigError("misbehave.mode swap-weak needs misbehave.weak_package")
        spare_models = _int(triton, "spare_models", 1)
        if spare_models < 0:
            raise ReplicaConfigError("triton.spare_models must be 0 or more")
        admission_table = data.get("admission", {})
        wait_share = admission_table.get("wait_share_max", WAIT_SHARE_MAX)
        if isinstance(wait_share, bool) or not isinstance(wait_share, (int, float)) or not 0 <= wait_share <= 1:
            raise ReplicaConfigError("admission.wait_share_max must be a number from 0 to 1")
        admission = AdmissionLimits(
            pending_requests_max=_int(admission_table, "pending_requests_max", PENDING_REQUESTS_MAX),
            pending_bytes_max=_int(admission_table, "pending_bytes_max", PENDING_BYTES_MAX),
            wait_share_max=float(wait_share),
        )
        if admission.pending_requests_max < 1 or admission.pending_bytes_max < 1:
            raise ReplicaConfigError("admission.pending_requests_max and admission.pending_bytes_max must be 1 or more")
        listen = data.get("listen")
        if not isinstance(listen, str) or ":" not in listen:
            raise ReplicaConfigError("listen must be host:port")
        return ReplicaConfig(
            group_config=_path(base, data.get("group_config"), "group_config"),
            replica_id=_int(data, "replica_id"),
            key_file=_path(base, data.get("key_file"), "key_file"),
            listen=listen,
            data_dir=_path(base, data.get("data_dir"), "data_dir"),
            model_package=_path(base, model.get("package"), "model.package"),
            model_version=_int(model, "version", 1),
            triton=TritonPorts(
                grpc_port=_int(triton, "grpc_port"),
                http_port=_int(triton, "http_port"),
                metrics_port=_int(triton, "metrics_port"),
                torch_threads=_int(triton, "torch_threads", 1),
                spare_models=spare_models,
            ),
            metrics_port=_int(data, "metrics_port", 0),
            storage_sync=_sync(data.get("storage", {}).get("sync", "full")),
            misbehave=misbehave,
            swap_after_requests=_int(misbehave_table, "swap_after_requests", 100),
            weak_package=_path(base, weak, "misbehave.weak_package") if weak else None,
            request_timeout_s=float(data.get("request_timeout_s", 30.0)),
            admission=admission,
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ReplicaConfigError(f"{source}: {exc}") from exc


def render_replica_config(config: ReplicaConfig) -> str:
    """TOML text for a config (used by `quorumserve up` to write one file per replica)."""

    def q(value: object) -> str:
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'

    return "\n".join(
        [
            f"group_config = {q(config.group_config)}",
            f"replica_id = {config.replica_id}",
            f"key_file = {q(config.key_file)}",
            f"listen = {q(config.listen)}",
            f"data_dir = {q(config.data_dir)}",
            f"metrics_port = {config.metrics_port}",
            f"request_timeout_s = {config.request_timeout_s}",
            "",
            "[model]",
            f"package = {q(config.model_package)}",
            f"version = {config.model_version}",
            "",
            "[storage]",
            f"sync = {q(config.storage_sync)}",
            "",
            "[admission]",
            f"pending_requests_max = {config.admission.pending_requests_max}",
            f"pending_bytes_max = {config.admission.pending_bytes_max}",
            f"wait_share_max = {config.admission.wait_share_max}",
            "",
            "[triton]",
            f"grpc_port = {config.triton.grpc_port}",
            f"http_port = {config.triton.http_port}",
            f"metrics_port = {config.triton.metrics_port}",
            f"torch_threads = {config.triton.torch_threads}",
            f"spare_models = {config.triton.spare_models}",
            "",
            "[misbehave]",
            f"mode = {q(config.misbehave)}",
            f"swap_after_requests = {config.swap_after_requests}",
            *([f"weak_package = {q(config.weak_package)}"] if config.weak_package else []),
            "",
        ]
    )
