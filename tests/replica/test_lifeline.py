"""A replica started with --lifeline-fd stops once its launcher is gone (the pipe reads EOF), so
`quorumserve up` or a test killed with SIGKILL leaves no replica (and no Triton) behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

CHILD = """
import os, sys, time
from replica.cli import watch_lifeline
watch_lifeline(int(sys.argv[1]))
print("watching", flush=True)
time.sleep(120)
"""


def test_the_process_stops_when_the_lifeline_closes_and_not_before() -> None:
    read_fd, write_fd = os.pipe()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(read_fd)], pass_fds=(read_fd,), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    os.close(read_fd)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"watching\n"
        os.write(write_fd, b"still here")  # data on the pipe is no reason to stop
        time.sleep(0.3)
        assert child.poll() is None
        os.close(write_fd)  # what the kernel does when the launcher dies, however it dies
        assert child.wait(timeout=60) == -signal.SIGTERM
        assert b"launcher gone" in (child.stderr.read() if child.stderr else b"")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
