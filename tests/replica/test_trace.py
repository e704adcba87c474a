"""Stage tracing (replica/trace.py): off unless asked for, and then one file per process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

_PROBE = textwrap.dedent(
    """
    from replica import trace
    trace.start("replica 2")
    print(trace.enabled(), trace.request_key("alice", "lat-1/0"), trace.request_key("bob", "other"))
    trace.event("received", "alice/lat-1/0")
    trace.event("in", "alice/lat-1/0", at_s=12.5)
    trace.event("committed", 7)
    """
)


def _run(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_tracing_is_off_without_the_variable() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUORUMSERVE_TRACE")}
    done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False None None"


def test_a_traced_process_writes_its_own_file_of_matching_requests_and_every_batch(tmp_path: Path) -> None:
    out = _run({"QUORUMSERVE_TRACE_DIR": str(tmp_path / "trace"), "QUORUMSERVE_TRACE_MATCH": "/lat-"})
    assert out == "True alice/lat-1/0 None"  # bob's request is not traced
    files = list((tmp_path / "trace").glob("replica-2.*.trace"))
    assert len(files) == 1
    lines = [line.split(" ") for line in files[0].read_text().splitlines()]
    assert [line[1:] for line in lines] == [
        ["replica-2", "received", "alice/lat-1/0"],
        ["replica-2", "in", "alice/lat-1/0"],
        ["replica-2", "committed", "7"],
    ]
    assert float(lines[1][0]) == 12.5
    assert float(lines[0][0]) > 0 and float(lines[2][0]) >= float(lines[0][0])
