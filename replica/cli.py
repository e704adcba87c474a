"""`quorumserve replica --config FILE.toml`: run one replica."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("replica", help="run one replica (its Triton, consensus and gRPC server)")
    parser.add_argument("--config", required=True, help="the replica's TOML config")
    parser.add_argument("--log-level", default="INFO", help="DEBUG shows every certified request")
    parser.set_defaults(handler=run_replica)


def configure_logging(level: str, prefix: str = "") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_replica(args: argparse.Namespace) -> int:
    import uvloop

    from replica.config import ReplicaConfigError, load_replica_config
    from replica.server import serve

    try:
        config = load_replica_config(args.config)
    except ReplicaConfigError as exc:
        print(f"quorumserve replica: {exc}", file=sys.stderr)
        return 2
    configure_logging(args.log_level, prefix=f"[replica {config.replica_id}] ")
    uvloop.run(serve(config))
    return 0
