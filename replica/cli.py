"""`quorumserve replica --config FILE.toml`: run one replica."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import threading
from typing import Any

FULL_COLLECTION_EVERY = 100  # middle-generation collections per full one (Python's default: 10)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "replica", help="run one replica (its Triton, consensus and gRPC server)",
        epilog="Exit status: 0 after SIGTERM or SIGINT; 2 for a config it cannot use; 3 when its tritonserver "
        "died (it cannot vote without it: restart it, as compose's restart policy and the StatefulSet do).",
    )
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


def settle_heap() -> None:
    """Call once start-up is done, before serving: take what start-up left behind out of the
    cyclic garbage collector's sight.

    A replica imports torch, Triton's client and grpc and loads its models: about 250,000
    long-lived objects that every full collection would walk again while the replica serves.
    With batched load a full collection then took 0.3 s, and the collector took about a quarter
    of a replica's CPU (py-spy --native). `gc.freeze` moves the survivors of one last collection
    into the permanent generation, which collections skip (reference counting still frees
    them). The third threshold (full collections after 100 rather than 10 middle-generation
    ones) keeps the collections of what serving itself keeps alive rare: requests in flight
    live for up to a second, long enough to reach the oldest generation."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)


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

    from replica import trace
    from replica.config import ReplicaConfigError, load_replica_config
    from replica.server import serve

    try:
        config = load_replica_config(args.config)
    except ReplicaConfigError as exc:
        print(f"quorumserve replica: {exc}", file=sys.stderr)
        return 2
    configure_logging(args.log_level, prefix=f"[replica {config.replica_id}] ")
    trace.start(f"replica-{config.replica_id}")
    if args.lifeline_fd is not None:
        watch_lifeline(args.lifeline_fd)
    return uvloop.run(serve(config))
