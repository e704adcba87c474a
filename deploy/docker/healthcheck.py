#!/usr/bin/env python3
"""Container health check for quorumserve images (exit 0: healthy, 1: not).

    quorumserve-healthcheck --config /etc/quorumserve/replica.toml   # replica: gRPC health service
    quorumserve-healthcheck --kserve 127.0.0.1:8001                  # gateway: KServe ServerReady

A replica is healthy when its gRPC health service (grpc.health.v1) reports the
`quorumserve.v1.Replica` service SERVING on the port its config listens on; a gateway when it
answers KServe ServerReady with ready=true.
"""

from __future__ import annotations

import argparse
import sys
import tomllib

REPLICA_SERVICE = "quorumserve.v1.Replica"


class HealthcheckError(Exception):
    pass


def replica_address(config_path: str) -> str:
    """Where to reach the replica from inside its own container: its listen port on loopback
    when it listens on every address, else the address it listens on."""
    try:
        with open(config_path, "rb") as handle:
            listen = tomllib.load(handle)["listen"]
        host, port = str(listen).rsplit(":", 1)
    except (OSError, tomllib.TOMLDecodeError, KeyError, ValueError) as exc:
        raise HealthcheckError(f"{config_path}: no usable `listen` ({exc})") from exc
    if host in ("0.0.0.0", "[::]", "::", ""):
        host = "127.0.0.1"
    return f"{host}:{int(port)}"


def check_replica(address: str, timeout_s: float) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=REPLICA_SERVICE), timeout=timeout_s)
        except grpc.RpcError as exc:
            raise HealthcheckError(f"{address}: {exc.code().name}") from exc
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        raise HealthcheckError(f"{address}: {REPLICA_SERVICE} is {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")


def check_gateway(address: str, timeout_s: float) -> None:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerReady(service_pb2.ServerReadyRequest(), timeout=timeout_s)
        except grpc.RpcError as exc:
            raise HealthcheckError(f"{address}: {exc.code().name}") from exc
    if not reply.ready:
        raise HealthcheckError(f"{address}: gateway not ready")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quorumserve-healthcheck", description="quorumserve container health check")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--config", metavar="REPLICA.toml", help="check the replica this config describes")
    target.add_argument("--kserve", metavar="HOST:PORT", help="check the gateway at this address")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    args = parser.parse_args(argv)
    try:
        if args.config:
            check_replica(replica_address(args.config), args.timeout)
        else:
            check_gateway(args.kserve, args.timeout)
    except HealthcheckError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
