"""Round-trip probes between test bed hosts (no ping needed): a TCP connect takes one round trip.

    python -m deploy.testbed.probe serve ADDRESS PORT      # accept and close, until killed
    python -m deploy.testbed.probe rtt ADDRESS PORT COUNT  # print the smallest connect time (ms)
"""

from __future__ import annotations

import socket
import sys
import time


class ProbeError(OSError):
    pass


def serve(address: str, port: int) -> None:
    with socket.create_server((address, port), backlog=64) as server:
        print("ready", flush=True)
        while True:
            connection, _ = server.accept()
            connection.close()


def rtt_ms(address: str, port: int, count: int, timeout_s: float = 5.0) -> float:
    """The smallest of `count` TCP connect times to address:port, in milliseconds."""
    best_s = float("inf")
    for _ in range(count):
        started = time.perf_counter()
        try:
            with socket.create_connection((address, port), timeout=timeout_s):
                best_s = min(best_s, time.perf_counter() - started)
        except OSError as exc:
            raise ProbeError(f"{address}:{port}: {exc}") from exc
        time.sleep(0.05)
    return best_s * 1000.0


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "serve":
        serve(argv[1], int(argv[2]))
        return 0
    if len(argv) == 4 and argv[0] == "rtt":
        try:
            print(f"{rtt_ms(argv[1], int(argv[2]), int(argv[3])):.3f}")
        except ProbeError as exc:
            print(f"probe: {exc}", file=sys.stderr)
            return 1
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
