"""Certificate size and verification time (`python -m tests.bench.bench_certs`).

For f = 1, 2, 3 and batch sizes 1..1024 (powers of 4), it measures the encoded size of one
certificate (compact, and with a vote proof per voter) and the median time to verify it, next to
a baseline measured in the same run: one bare Ed25519 verification (PyNaCl) of a COMMIT message.
Signature checks run with the verifier's cache off, so every run pays for every signature.

Two output shapes: top_k = 3, and top_k = 10 with every class non-zero (the digits demo keeps
all ten classes; this is its worst case). A Markdown table goes to stdout and the figures to
results/bench_certs.json. It measures; it does not pass or fail.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nacl
import nacl.bindings
import nacl.signing

from certs.certificate import decode_certificate, encode_certificate
from certs.keys import Ed25519Verifier
from certs.statements import StatementKind
from certs.verify import verify
from tests.certs.helpers import make_batch, make_group

FAULTS = (1, 2, 3)
BATCH_SIZES = (1, 4, 16, 64, 256, 1024)
TOP_KS = (3, 10)
TARGET_SIZE_BYTES = 1024
TARGET_VERIFY_MS = 0.5


def median_times_ms(action: Callable[[], object], runs: int) -> tuple[float, float]:
    """Median wall-clock and median CPU (thread) time of one call. CPU time leaves out the time
    a shared machine spends running something else, so it is the steadier figure there."""
    for _ in range(max(3, runs // 20)):  # warm caches and the allocator
        action()
    wall, cpu = [], []
    for _ in range(runs):
        start_wall, start_cpu = time.perf_counter_ns(), time.thread_time_ns()
        action()
        cpu.append(time.thread_time_ns() - start_cpu)
        wall.append(time.perf_counter_ns() - start_wall)
    return statistics.median(wall) / 1e6, statistics.median(cpu) / 1e6


def baseline_ed25519_ms(runs: int) -> tuple[float, float]:
    """One bare Ed25519 verify of a COMMIT statement, key already decoded."""
    group = make_group(1)
    header = make_batch(group, 1).header
    message = header.statement(StatementKind.COMMIT, 0).message()
    signature = group.keys[0].signer().sign(message)
    verify_key = nacl.signing.VerifyKey(group.keys[0].public_key)
    return median_times_ms(lambda: verify_key.verify(message, signature), runs)


def measure(f: int, size: int, top_k: int, runs: int) -> dict[str, Any]:
    group = make_group(f, top_k=top_k)
    # agreement 0.9 and confidences 0.5..0.99 spread the rest over every class: dense outputs
    batch = make_batch(group, size, seed=size * 31 + f)
    index = size // 2
    compact, accountable = batch.certificates[index], batch.accountable[index]
    request = batch.requests[index]
    compact_bytes, accountable_bytes = encode_certificate(compact), encode_certificate(accountable)
    verifier = Ed25519Verifier(cache_size=0)  # keys stay decoded, as in a long-lived verifier
    config = group.config
    compact_wall, compact_cpu = median_times_ms(lambda: verify(compact, config, request, verifier=verifier), runs)
    votes_wall, votes_cpu = median_times_ms(lambda: verify(accountable, config, request, verifier=verifier), runs)
    decode_wall, decode_cpu = median_times_ms(
        lambda: verify(decode_certificate(compact_bytes), config, request, verifier=verifier), runs
    )
    return {
        "f": f,
        "n": config.n,
        "batch_size": size,
        "top_k": top_k,
        "classes_per_vote": max(len(v.output.top) for v in compact.leaf.votes),
        "compact_size_bytes": len(compact_bytes),
        "accountable_size_bytes": len(accountable_bytes),
        "verify_compact_ms": compact_wall,
        "verify_compact_cpu_ms": compact_cpu,
        "verify_accountable_ms": votes_wall,
        "verify_accountable_cpu_ms": votes_cpu,
        "decode_verify_compact_ms": decode_wall,
        "decode_verify_compact_cpu_ms": decode_cpu,
        "signatures_compact": len(compact.quorum),
        "signatures_accountable": len(accountable.quorum) + len(accountable.vote_proofs),
    }


def markdown(rows: list[dict[str, Any]], baseline: tuple[float, float]) -> str:
    wall, cpu = baseline
    lines = [
        f"Baseline: one bare Ed25519 verify = {wall * 1000:.1f} us wall, {cpu * 1000:.1f} us CPU (medians). "
        "Times are medians in ms, wall / CPU; (x) is CPU time over the baseline's CPU time.",
        "",
        "| f | batch | top_k | compact B | with votes B | verify compact | decode + verify compact "
        "| verify with votes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['f']} | {r['batch_size']} | {r['top_k']} | {r['compact_size_bytes']} | {r['accountable_size_bytes']} "
            f"| {r['verify_compact_ms']:.3f} / {r['verify_compact_cpu_ms']:.3f} ({r['verify_compact_ratio']:.1f}) "
            f"| {r['decode_verify_compact_ms']:.3f} / {r['decode_verify_compact_cpu_ms']:.3f} "
            f"| {r['verify_accountable_ms']:.3f} / {r['verify_accountable_cpu_ms']:.3f} "
            f"({r['verify_accountable_ratio']:.1f}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=300, help="timed runs per figure (median reported)")
    parser.add_argument("--out", default="results/bench_certs.json")
    args = parser.parse_args(argv)

    baseline = baseline_ed25519_ms(max(args.runs, 1000))
    rows = [measure(f, size, top_k, args.runs) for top_k in TOP_KS for f in FAULTS for size in BATCH_SIZES]
    for row in rows:
        row["verify_compact_ratio"] = row["verify_compact_cpu_ms"] / baseline[1]
        row["verify_accountable_ratio"] = row["verify_accountable_cpu_ms"] / baseline[1]
    print(markdown(rows, baseline))

    f1 = [r for r in rows if r["f"] == 1]
    largest = max(r["compact_size_bytes"] for r in f1)
    slowest = max(r["verify_compact_cpu_ms"] for r in f1)
    slowest_decode = max(r["decode_verify_compact_cpu_ms"] for r in f1)
    print()
    print(
        f"targets (f=1, compact, worst over batch sizes and top_k): size {largest} B (target < {TARGET_SIZE_BYTES} B); "
        f"verify {slowest:.3f} ms CPU, decode + verify {slowest_decode:.3f} ms CPU (target < {TARGET_VERIFY_MS} ms)"
    )

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "pynacl": nacl.__version__,
            "libsodium": nacl.bindings.sodium_version_string() if hasattr(nacl.bindings, "sodium_version_string") else None,
        },
        "runs_per_figure": args.runs,
        "baseline_ed25519_verify_ms": {"wall": baseline[0], "cpu": baseline[1]},
        "targets": {"compact_f1_size_bytes": TARGET_SIZE_BYTES, "verify_ms": TARGET_VERIFY_MS},
        "rows": rows,
    }, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
