"""Marketplace subcommands of `quorumserve`: up, gateway, infer, groups, status.

    quorumserve up [--f 1] [--data-dir DIR] [--gateway-port PORT]
        a whole local group (3f+1 replica processes, each with its own Triton and model) plus a
        gateway process; prints the gateway address and the group config path; Ctrl-C or
        SIGTERM stops everything, leaving no process behind
    quorumserve gateway --config GROUP.json [--port P]
        a gateway for one or more groups (or --registry DIR for every group in a directory)
    quorumserve infer --gateway ADDR --config GROUP.json [--digit N | --input FILE.npy] [--out CERT]
        one certified inference; prints the result and its verification against GROUP.json
    quorumserve groups / quorumserve status GROUP
        the groups on offer (a registry directory, or a gateway) and each replica's health,
        view, sequence number and model versions

The registry directory is --registry, else $QUORUMSERVE_REGISTRY, else ~/.quorumserve/groups;
`up` registers its group there while it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from replica.config import (
    PENDING_BYTES_MAX, PENDING_REQUESTS_MAX, STREAM_COALESCE_MAX_S, STREAM_COALESCE_S, WAIT_SHARE_MAX, AdmissionLimits,
)

log = logging.getLogger("quorumserve.commands")

GATEWAY_START_TIMEOUT_S = 60.0
GATEWAY_STOP_TIMEOUT_S = 10.0
DEFAULT_UP_DIR = Path("~/.quorumserve/local")


class CommandError(Exception):
    """A user-facing failure: printed without a traceback, exit status 1."""


def register(subparsers: Any) -> None:
    up = subparsers.add_parser(
        "up",
        help="start a local group (3f+1 replicas, each its own Triton and model) and a gateway",
        description="Start a whole group on this machine plus a gateway; Ctrl-C or SIGTERM stops everything.",
    )
    up.add_argument("--f", type=int, default=1, help="faults tolerated; the group has 3f+1 replicas (default 1)")
    up.add_argument("--data-dir", default=str(DEFAULT_UP_DIR), help=f"keys, models, configs, state (default {DEFAULT_UP_DIR})")
    up.add_argument("--gateway-port", type=int, default=8001, help="the gateway's gRPC port (default 8001; 0 picks a free one)")
    up.add_argument("--metrics-port", type=int, default=0, help="the gateway's Prometheus port (default: a free one)")
    up.add_argument("--group-id", default="digits", help="the group id, which is the KServe model name (default digits)")
    up.add_argument("--registry", help="registry directory to list the group in while it runs")
    up.add_argument("--log-level", default="INFO")
    up.set_defaults(handler=run_up)

    gateway = subparsers.add_parser("gateway", help="run a gateway (KServe v2 and native gRPC) for some groups")
    gateway.add_argument("--config", action="append", default=[], metavar="GROUP.json", help="a group config or registry entry (repeatable)")
    gateway.add_argument("--registry", help="serve every group of this registry directory")
    gateway.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    gateway.add_argument("--port", type=int, default=8001, help="gRPC port (default 8001; 0 picks a free one)")
    gateway.add_argument("--metrics-port", type=int, default=0, help="Prometheus metrics port (default 0: off)")
    gateway.add_argument("--rows-max", type=int, default=1024, help="rows per request at most (default 1024)")
    gateway.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a certificate (default 30)")
    gateway.add_argument(
        "--admission-rows-max", type=int, default=PENDING_REQUESTS_MAX,
        help=f"refuse new calls to a group while this many of its rows are in flight (default {PENDING_REQUESTS_MAX})",
    )
    gateway.add_argument(
        "--admission-bytes-max", type=int, default=PENDING_BYTES_MAX,
        help=f"... or this many bytes of their inputs (default {PENDING_BYTES_MAX})",
    )
    gateway.add_argument(
        "--admission-wait-share", type=float, default=WAIT_SHARE_MAX,
        help="... or when the rows in flight would keep a new call waiting more than this share of its "
        f"timeout, at the rate the group certified lately (default {WAIT_SHARE_MAX}; 0: never)",
    )
    gateway.add_argument(
        "--coalesce-ms", type=float, default=STREAM_COALESCE_S * 1000,
        help="while other rows are in flight, a lone row waits this long for company before it is sent to the "
        f"replicas, so that rows travel and are batched together (default {STREAM_COALESCE_S * 1000:g}; 0: at once)",
    )
    gateway.add_argument("--log-level", default="INFO")
    gateway.set_defaults(handler=run_gateway)

    infer = subparsers.add_parser("infer", help="one certified inference through a gateway, verified locally")
    infer.add_argument("--gateway", required=True, metavar="ADDR", help="host:port of a gateway")
    infer.add_argument("--config", required=True, metavar="GROUP.json", help="the group config you pin")
    source = infer.add_mutually_exclusive_group(required=True)
    source.add_argument("--digit", type=int, metavar="N", help="a held-out image of the digit N (digits task)")
    source.add_argument("--input", metavar="FILE.npy", help="one input row as a .npy file")
    infer.add_argument("--sample", type=int, default=0, help="with --digit: which held-out image of N (default 0)")
    infer.add_argument("--client-id", default="anonymous")
    infer.add_argument("--request-id", help="default: a random one (give one to make a retry safe)")
    infer.add_argument("--label-mapping", metavar="JSON", help='application decisions, e.g. \'{"0": "round", "8": "round"}\'')
    infer.add_argument("--timeout", type=float, default=30.0)
    infer.add_argument("--out", metavar="CERT", help="write the certificate (.json: JSON, else protobuf)")
    infer.add_argument("--request-out", metavar="FILE", help="write the request as JSON (for quorumserve verify --request)")
    infer.add_argument("--json", action="store_true", help="print the result as JSON")
    infer.set_defaults(handler=run_infer)

    groups = subparsers.add_parser("groups", help="list the groups on offer")
    groups.add_argument("--gateway", metavar="ADDR", help="ask this gateway")
    groups.add_argument("--registry", help="read this registry directory")
    groups.add_argument("--json", action="store_true")
    groups.set_defaults(handler=run_groups)

    status = subparsers.add_parser("status", help="each replica's health, view, sequence number and model versions")
    status.add_argument("group", metavar="GROUP", help="group id")
    status.add_argument("--gateway", metavar="ADDR", help="ask this gateway")
    status.add_argument("--registry", help="find the group in this registry directory")
    status.add_argument("--config", metavar="GROUP.json", help="ask the replicas of this group config directly")
    status.add_argument("--timeout", type=float, default=2.0)
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=run_status)


def _fail(command: str, message: str) -> int:
    print(f"quorumserve {command}: {message}", file=sys.stderr)
    return 1


# =========================================================================================
# gateway
# =========================================================================================


def run_gateway(args: argparse.Namespace) -> int:
    import uvloop

    from marketplace.gateway import serve
    from marketplace.registry import Registry, RegistryError, default_registry_dir
    from replica import trace
    from replica.cli import configure_logging, settle_heap

    configure_logging(args.log_level, prefix="[gateway] ")
    if args.admission_rows_max < 1 or args.admission_bytes_max < 1 or not 0 <= args.admission_wait_share <= 1:
        return _fail("gateway", "--admission-rows-max and --admission-bytes-max must be 1 or more, --admission-wait-share from 0 to 1")
    if not 0 <= args.coalesce_ms <= STREAM_COALESCE_MAX_S * 1000:
        return _fail("gateway", f"--coalesce-ms must be from 0 to {STREAM_COALESCE_MAX_S * 1000:g}")
    admission = AdmissionLimits(args.admission_rows_max, args.admission_bytes_max, args.admission_wait_share)
    trace.start("gateway")
    try:
        registry = Registry.from_configs(args.config)
        if args.registry or not args.config:
            for entry in Registry.from_directory(args.registry or default_registry_dir()):
                registry.add(entry)
    except RegistryError as exc:
        return _fail("gateway", str(exc))
    if not len(registry):
        return _fail("gateway", "no groups to serve: give --config GROUP.json or --registry DIR")

    def started(gateway: Any) -> None:
        print(f"gateway listening on {args.host}:{gateway.port} for groups {registry.group_ids}", flush=True)

    settle_heap()  # before serving: what start-up loaded stays out of the collector's sight

    try:
        uvloop.run(
            serve(
                registry, f"{args.host}:{args.port}", metrics_port=args.metrics_port, rows_max=args.rows_max,
                request_timeout_s=args.timeout, on_started=started, admission=admission,
                stream_coalesce_s=args.coalesce_ms / 1000,
            )
        )
    except OSError as exc:
        return _fail("gateway", str(exc))
    except RuntimeError as exc:  # GatewayError: the port is taken
        return _fail("gateway", str(exc))
    return 0


@dataclass
class GatewayProcess:
    """A `quorumserve gateway` process in its own process group."""

    process: subprocess.Popen[bytes]
    address: str
    metrics_port: int
    log_path: Path

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = GATEWAY_STOP_TIMEOUT_S) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("gateway did not stop in %.0f s; killing it", timeout_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def start_gateway_process(
    configs: Sequence[str | os.PathLike[str]],
    *,
    port: int = 0,
    host: str = "127.0.0.1",
    metrics_port: int = 0,
    log_path: str | os.PathLike[str],
    extra_args: Sequence[str] = (),
    timeout_s: float = GATEWAY_START_TIMEOUT_S,
) -> GatewayProcess:
    """Start a gateway for `configs` and wait until it answers ServerLive."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    from marketplace.local import free_ports

    if port == 0:
        port = free_ports(1, host)[0]
    arguments = [sys.executable, "-m", "marketplace.cli", "gateway", "--host", host, "--port", str(port), "--metrics-port", str(metrics_port)]
    for config in configs:
        arguments += ["--config", str(config)]
    arguments += list(extra_args)
    log_file = Path(log_path)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as handle:
        process = subprocess.Popen(
            arguments,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped with the group, not by a terminal's Ctrl-C
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            cwd=str(Path(__file__).resolve().parent.parent),
        )
    gateway = GatewayProcess(process, f"{host}:{port}", metrics_port, log_file)
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            tail = log_file.read_text(errors="replace")[-2000:]
            raise CommandError(f"the gateway exited with status {process.returncode}; see {log_file}:\n{tail}")
        try:
            with grpc.insecure_channel(gateway.address) as channel:
                if service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerLive(service_pb2.ServerLiveRequest(), timeout=1.0).live:
                    return gateway
        except grpc.RpcError:
            pass
        if time.monotonic() > deadline:
            gateway.stop()
            raise CommandError(f"the gateway did not answer within {timeout_s:.0f} s; see {log_file}")
        time.sleep(0.2)


# =========================================================================================
# up
# =========================================================================================


class _Stop(BaseException):
    """SIGINT or SIGTERM: stop everything (BaseException so no `except Exception` swallows it)."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop()


@contextlib.contextmanager
def _signals_stop() -> Iterator[None]:
    # SIGINT explicitly too: a shell starts background jobs with SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_up(args: argparse.Namespace) -> int:
    from marketplace.local import LocalGroup, LocalGroupError, free_ports
    from marketplace.registry import GroupEntry, default_registry_dir, register_group
    from replica.cli import configure_logging

    configure_logging(args.log_level, prefix="[up] ")
    if args.f < 1:
        return _fail("up", "--f must be at least 1")
    data_dir = Path(args.data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    group = LocalGroup(data_dir, f=args.f, group_id=args.group_id, progress=True, log_level=args.log_level)
    gateway: GatewayProcess | None = None
    registered: Path | None = None
    status = 0
    with _signals_stop():
        try:
            print(f"preparing group {args.group_id!r}: {group.n} replicas (f={args.f}) under {data_dir}", flush=True)
            config = group.prepare()
            print(f"starting {group.n} replicas, each with its own Triton ...", flush=True)
            started_s = time.monotonic()
            group.start()
            print(f"replicas ready in {time.monotonic() - started_s:.0f} s: {', '.join(group.addresses)}", flush=True)
            metrics_port = args.metrics_port or free_ports(1)[0]
            gateway = start_gateway_process(
                [group.group_config_path], port=args.gateway_port, metrics_port=metrics_port, log_path=data_dir / "gateway.log"
            )
            registry_dir = Path(args.registry).expanduser() if args.registry else default_registry_dir()
            try:
                registered = register_group(registry_dir, GroupEntry.of(config))
            except OSError as exc:
                print(f"(not listed in registry {registry_dir}: {exc})", flush=True)
            print(f"gateway: {gateway.address}  (KServe v2 gRPC; model name {config.group_id!r})", flush=True)
            print(f"group config: {group.group_config_path}", flush=True)
            print(f"metrics: http://127.0.0.1:{metrics_port}/metrics", flush=True)
            print(
                f"try: quorumserve infer --gateway {gateway.address} --config {group.group_config_path} --digit 7\n"
                "Ctrl-C stops everything.",
                flush=True,
            )
            _watch(group, gateway)
        except (KeyboardInterrupt, _Stop):
            print("\nstopping ...", flush=True)
        except (LocalGroupError, CommandError) as exc:
            status = _fail("up", str(exc))
        finally:
            # a second Ctrl-C must not cut the clean-up short
            previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
            previous_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
            try:
                if gateway is not None:
                    gateway.stop()
                group.stop()
                if registered is not None:
                    with contextlib.suppress(OSError):
                        registered.unlink()
            finally:
                signal.signal(signal.SIGINT, previous_int)
                signal.signal(signal.SIGTERM, previous_term)
    print("stopped: no replica, Triton or gateway process is left", flush=True)
    return status


UP_RESTARTS_MAX = 3  # restarts of one replica whose Triton died, before `up` leaves it down


def _watch(group: Any, gateway: GatewayProcess) -> None:
    """Run until interrupted, supervising the processes (see `_supervise`)."""
    reported: set[str] = set()
    restarts: dict[int, int] = {}
    while True:
        time.sleep(1.0)
        _supervise(group, gateway, reported, restarts)


def _supervise(group: Any, gateway: GatewayProcess, reported: set[str], restarts: dict[int, int]) -> None:
    """One look at the processes: say so when one has exited (the group tolerates f of them),
    and start again a replica that stopped because its Triton died (exit status 3), as a
    production supervisor would, up to UP_RESTARTS_MAX times; any other exit is left as it is."""
    from marketplace.local import LocalGroupError
    from replica.server import EXIT_TRITON_DIED

    for replica in group.replicas:
        rid = replica.replica_id
        name = f"replica {rid}"
        if replica.process is None or replica.process.poll() is None or name in reported:
            continue
        status = replica.process.returncode
        if status == EXIT_TRITON_DIED and restarts.get(rid, 0) < UP_RESTARTS_MAX:
            restarts[rid] = restarts.get(rid, 0) + 1
            print(f"{name}: its Triton died; starting it again ({restarts[rid]} of {UP_RESTARTS_MAX}); see {replica.log_path}", flush=True)
            try:
                group.start_replica(rid)
            except LocalGroupError as exc:
                reported.add(name)
                print(f"{name} did not come back: {exc}", flush=True)
            continue
        reported.add(name)
        print(f"{name} exited with status {status}; see {replica.log_path}", flush=True)
    if not gateway.running and "gateway" not in reported:
        reported.add("gateway")
        print(f"the gateway exited with status {gateway.process.returncode}; see {gateway.log_path}", flush=True)


# =========================================================================================
# infer
# =========================================================================================


def _input_row(args: argparse.Namespace) -> tuple[Any, int | None]:
    import numpy as np

    if args.input is not None:
        try:
            return np.load(args.input, allow_pickle=False), None
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot read {args.input}: {exc}") from exc
    from marketplace.models import held_out_digits

    if not 0 <= args.digit <= 9:
        raise CommandError("--digit must be between 0 and 9")
    features, labels = held_out_digits()
    indexes = [i for i, label in enumerate(labels) if label == args.digit]
    if not 0 <= args.sample < len(indexes):
        raise CommandError(f"--sample must be between 0 and {len(indexes) - 1} for digit {args.digit}")
    return features[indexes[args.sample]], args.digit


def run_infer(args: argparse.Namespace) -> int:
    from certs.certificate import certificate_to_json
    from certs.config import load_group_config
    from certs.errors import CertificateError
    from certs.request import request_to_json
    from marketplace.sdk import Client, ClientError, InvalidCertificateError

    try:
        config = load_group_config(args.config)
        row, truth = _input_row(args)
        mapping = json.loads(args.label_mapping) if args.label_mapping else None
        if mapping is not None and not isinstance(mapping, dict):
            raise CommandError("--label-mapping must be a JSON object {label: decision}")
    except CertificateError as exc:
        return _fail("infer", f"group config: {exc}")
    except ValueError as exc:
        return _fail("infer", f"--label-mapping: {exc}")
    except CommandError as exc:
        return _fail("infer", str(exc))
    try:
        with Client(args.gateway, config, client_id=args.client_id, timeout_s=args.timeout, label_mapping=mapping) as client:
            result = client.infer(row, request_id=args.request_id)
    except InvalidCertificateError as exc:
        return _fail("infer", f"INVALID CERTIFICATE (not accepted): {exc}")
    except ClientError as exc:
        return _fail("infer", f"{exc.code.name}: {exc}")
    except ValueError as exc:
        return _fail("infer", f"invalid input: {exc}")
    if args.out:
        out = Path(args.out)
        if out.suffix == ".json":
            out.write_text(json.dumps(certificate_to_json(result.certificate, config), indent=2) + "\n")
        else:
            out.write_bytes(result.certificate_bytes)
    if args.request_out:
        Path(args.request_out).write_text(json.dumps(request_to_json(result.request), indent=2) + "\n")
    if args.json:
        print(json.dumps(_result_json(result, truth), indent=2))
        return 0
    top = sorted(result.probabilities_by_label().items(), key=lambda item: -item[1])[:3]
    decision = f"{result.label_name!r}" if result.agreed else "NO_AGREEMENT"
    print(f"request {result.client_id}/{result.request_id}: certified decision {decision}" + (f" (true label {truth})" if truth is not None else ""))
    print("  probabilities: " + ", ".join(f"{name} {p:.4f}" for name, p in top if p > 0))
    for vote in result.votes:
        mark = "*" if vote.replica_id in result.supporters else " "
        print(f"  {mark} replica {vote.replica_id} (model v{vote.model_version}) voted {vote.label_name!r} ({vote.probabilities[vote.label]:.4f})")
    print(f"  group {result.group_id!r} epoch {result.epoch}, seq {result.seq}, committed by replicas {list(result.verified.signers)}")
    print(f"verified against {args.config} (config digest {config.digest.hex()[:16]}...): OK")
    if args.out:
        print(f"certificate written to {args.out}")
    return 0


def _result_json(result: Any, truth: int | None) -> dict[str, Any]:
    return {
        "client_id": result.client_id,
        "request_id": result.request_id,
        "agreed": result.agreed,
        "label": result.label,
        "label_name": result.label_name,
        "true_label": truth,
        "probabilities": result.probabilities_by_label(),
        "votes": [
            {"replica_id": v.replica_id, "model_version": v.model_version, "label": v.label, "label_name": v.label_name}
            for v in result.votes
        ],
        "supporters": list(result.supporters),
        "signers": list(result.verified.signers),
        "group_id": result.group_id,
        "epoch": result.epoch,
        "seq": result.seq,
        "verified": True,
    }


# =========================================================================================
# groups and status
# =========================================================================================


def _registry(args: argparse.Namespace) -> Any:
    from marketplace.registry import Registry, default_registry_dir

    return Registry.from_directory(args.registry or default_registry_dir())


def _gateway_stub_call(address: str, method: str, message: Any, reply_type: Any, timeout_s: float) -> Any:
    import grpc

    from marketplace.sdk import GATEWAY_SERVICE

    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(f"/{GATEWAY_SERVICE}/{method}", request_serializer=type(message).SerializeToString, response_deserializer=reply_type.FromString)
        try:
            return call(message, timeout=timeout_s)
        except grpc.RpcError as exc:
            raise CommandError(f"gateway {address}: {exc.code().name}: {exc.details()}") from exc


def run_groups(args: argparse.Namespace) -> int:
    from marketplace.registry import RegistryError
    from protos import marketplace_pb2 as mpb

    rows: list[dict[str, Any]] = []
    try:
        if args.gateway:
            reply = _gateway_stub_call(args.gateway, "ListGroups", mpb.ListGroupsRequest(), mpb.ListGroupsReply, 5.0)
            for g in reply.groups:
                rows.append(
                    {"group_id": g.group_id, "epoch": g.epoch, "n": g.n, "f": g.f, "price_per_request": g.price_per_request,
                     "config_digest": g.config_digest.hex(), "policy": g.policy, "input": f"{g.input_name} {g.input_datatype} {list(g.input_shape)}",
                     "labels": len(g.class_labels)}
                )
            where = f"gateway {args.gateway}"
        else:
            registry = _registry(args)
            for entry in registry:
                c = entry.config
                rows.append(
                    {"group_id": c.group_id, "epoch": c.epoch, "n": c.n, "f": c.f, "price_per_request": c.price_per_request,
                     "config_digest": c.digest.hex(), "policy": c.policy.describe(c.f),
                     "input": f"{c.task.input_name} {c.task.input_datatype} {list(c.task.input_shape)}", "labels": len(c.task.class_labels),
                     "source": str(entry.source) if entry.source else None}
                )
            where = f"registry {args.registry or 'default'}"
    except (CommandError, RegistryError) as exc:
        return _fail("groups", str(exc))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no groups ({where})")
        return 0
    print(f"{'GROUP':<16} {'EPOCH':>5} {'N':>3} {'F':>3} {'PRICE':>6}  {'CONFIG DIGEST':<18} {'POLICY':<26} INPUT")
    for r in rows:
        print(
            f"{r['group_id']:<16} {r['epoch']:>5} {r['n']:>3} {r['f']:>3} {r['price_per_request']:>6}  "
            f"{r['config_digest'][:16]:<18} {r['policy']:<26} {r['input']} -> {r['labels']} labels"
        )
    return 0


def run_status(args: argparse.Namespace) -> int:
    import asyncio

    from certs.config import load_group_config
    from certs.errors import CertificateError
    from marketplace.registry import RegistryError
    from marketplace.sdk import ReplicaFanout
    from protos import marketplace_pb2 as mpb

    try:
        if args.gateway:
            reply = _gateway_stub_call(args.gateway, "GroupStatus", mpb.GroupRequest(group_id=args.group), mpb.GroupStatusReply, args.timeout + 3)
            quorum, epoch = reply.quorum_size, reply.epoch
            replicas = [
                (r.replica_id, r.address, r.reachable, r.error, r.status if r.reachable else None, r.latency_us / 1e6)
                for r in reply.replicas
            ]
        else:
            if args.config:
                config = load_group_config(args.config)
                if config.group_id != args.group:
                    raise CommandError(f"{args.config} is group {config.group_id!r}, not {args.group!r}")
                chain, addresses = (config,), None
            else:
                entry = _registry(args).get(args.group)
                chain, addresses = entry.chain, entry.addresses
            fanout = ReplicaFanout(chain, addresses)

            async def ask() -> Any:
                try:
                    return await fanout.status(timeout_s=args.timeout)
                finally:
                    await fanout.close()

            health = asyncio.run(ask())
            quorum, epoch = fanout.config.quorum_size, fanout.config.epoch
            replicas = [(h.replica_id, h.address, h.reachable, h.error, h.status, h.latency_s) for h in health]
    except (CommandError, RegistryError, CertificateError) as exc:
        return _fail("status", str(exc))
    reachable = sum(1 for r in replicas if r[2])
    if args.json:
        print(json.dumps(
            {
                "group_id": args.group, "epoch": epoch, "quorum_size": quorum, "reachable": reachable, "can_certify": reachable >= quorum,
                "replicas": [_status_json(*r) for r in replicas],
            },
            indent=2,
        ))
        return 0 if reachable >= quorum else 1
    print(f"group {args.group!r} epoch {epoch}: {reachable} of {len(replicas)} replicas reachable; "
          f"{'can certify' if reachable >= quorum else 'CANNOT certify'} (quorum {quorum})")
    print(f"{'ID':>3} {'ADDRESS':<22} {'HEALTH':<14} {'VIEW':>5} {'PRIMARY':>7} {'SEQ':>7} {'STABLE':>7} {'PENDING':>7} {'LINKS':>5}  MODEL VERSIONS")
    for rid, address, ok, error, status, latency_s in replicas:
        if not ok or status is None:
            print(f"{rid:>3} {address:<22} {'unreachable':<14} {error}")
            continue
        own = {v.replica_id: v.version for v in status.versions}.get(rid, "?")
        versions = f"v{own} in effect, loaded {list(status.loaded_versions)}"
        print(
            f"{rid:>3} {address:<22} {status.state:<14} {status.view:>5} {status.primary:>7} {status.executed_seq:>7} "
            f"{status.stable_seq:>7} {status.pending_requests:>7} {_links(status):>5}  {versions}  ({latency_s * 1000:.1f} ms)"
        )
    return 0 if reachable >= quorum else 1


def _links(status: Any) -> str:
    """Outgoing peer links up, of those the replica has: a replica short of links has peers that
    miss its votes and signatures."""
    return f"{len(status.connected_peers)}/{len(status.peers)}"


def _status_json(rid: int, address: str, ok: bool, error: str, status: Any, latency_s: float) -> dict[str, Any]:
    item: dict[str, Any] = {"replica_id": rid, "address": address, "reachable": ok, "error": error or None, "latency_ms": round(latency_s * 1000, 3)}
    if ok and status is not None:
        item.update(
            state=status.state, view=status.view, primary=status.primary, executed_seq=status.executed_seq,
            stable_seq=status.stable_seq, pending_requests=status.pending_requests,
            peers=list(status.peers), connected_peers=list(status.connected_peers),
            versions={str(v.replica_id): v.version for v in status.versions}, loaded_versions=list(status.loaded_versions),
            triton_models={str(m.version): m.model_name for m in status.triton_models},
        )
    return item
