"""Stage tracing: where one request's time goes, across the gateway and the replicas.

Off unless the environment variable `QUORUMSERVE_TRACE_DIR` names a folder when a process
starts (the latency benchmark sets it for the groups it starts). Each process then appends one
line per event to its own file there:

    <monotonic seconds> <process> <event> <key>

`CLOCK_MONOTONIC` is one clock for the whole machine on Linux, so the lines of the gateway and
of every replica of a local group line up. `QUORUMSERVE_TRACE_MATCH` limits the per-request
events to requests whose client_id/request_id contains it (the per-batch events stay: a few a
batch), so a busy process writes only what a measurement needs. Events and their keys:

    gateway   in, out                  client_id/request_id (a row as the gateway forwards it)
    replica   received                 client_id/request_id
              inferred                 client_id/request_id,... (one Triton call's rows)
              vote-in                  client_id/request_id,... (a peer's vote batch arrived)
              pre-prepare              seq (sent by the primary, received by a backup)
              commit-sent              seq (this replica prepared it and sent its COMMIT)
              committed                seq
              certified                client_id/request_id@seq

`tests/bench/stages.py` turns the files into per-request stage durations. Written by hand
rather than with OpenTelemetry: a trace line costs about two microseconds and needs no
collector; when tracing is off every hook is one function call that finds no file.
"""

from __future__ import annotations

import os
import time
from typing import TextIO

TRACE_DIR_ENV = "QUORUMSERVE_TRACE_DIR"
TRACE_MATCH_ENV = "QUORUMSERVE_TRACE_MATCH"  # trace only requests whose client_id/request_id contains it

FLUSH_INTERVAL_S = 0.2

_out: TextIO | None = None
_process = ""
_match = ""
_flushed_s = 0.0


def start(process: str) -> None:
    """Open this process's trace file if tracing is on (idempotent per process)."""
    global _out, _process, _match
    folder = os.environ.get(TRACE_DIR_ENV)
    if not folder or _out is not None:
        return
    _match = os.environ.get(TRACE_MATCH_ENV, "")
    os.makedirs(folder, exist_ok=True)
    _process = process.replace(" ", "-")
    _out = open(os.path.join(folder, f"{_process}.{os.getpid()}.trace"), "a", buffering=1 << 16)


def enabled() -> bool:
    return _out is not None


def request_key(client_id: str, request_id: str) -> str | None:
    """The trace key of a request, or None when tracing is off or the request is not traced."""
    if _out is None:
        return None
    key = f"{client_id}/{request_id}"
    return key if _match in key else None


def event(name: str, key: object, at_s: float | None = None) -> None:
    """Record `name` for `key` now, or at `at_s` (a time.monotonic() taken earlier)."""
    global _flushed_s
    out = _out
    if out is None:
        return
    now = time.monotonic()
    out.write(f"{now if at_s is None else at_s:.6f} {_process} {name} {key}\n")
    # buffered, flushed at most every FLUSH_INTERVAL_S: a write per event would cost a
    # busy process a syscall per event; a killed one loses at most the last interval
    if now - _flushed_s > FLUSH_INTERVAL_S:
        out.flush()
        _flushed_s = now
