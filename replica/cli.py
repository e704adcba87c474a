"""`quorumserve replica --config FILE.toml`: run one replica."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("replica", help="run one replica (its Triton, consensus and gRPC server)")
    parser.add_argument("--config", required=True, help="the replica's TOML config")
    parser.add_argument("--log-level", default="INFO", help="DEBUG shows every certified request")
    parser.add_argument(
        "--lifeline-fd", type=int, default=None, metavar="FD",
        help="stop when this inherited pipe reaches EOF (its launcher exited); used by `quorumserve up`",
    )
    parser.set_defaults(handler=run_replica)


def configure_logging(level: str, prefix: str = "") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def watch_lifeline(fd: int) -> None:
    """SIGTERM this process (an orderly stop, Triton included) once `fd` reads EOF: the launcher
    holding the pipe's write end has exited."""

    def watch() -> None:
        try:
            while os.read(fd, 4096):
                pass
        except OSError:
            pass
        logging.getLogger("replica").warning("launcher gone (lifeline closed): stopping")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="lifeline", daemon=True).start()


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
    if args.lifeline_fd is not None:
        watch_lifeline(args.lifeline_fd)
    uvloop.run(serve(config))
    return 0
