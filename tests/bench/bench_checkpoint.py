"""Cost of a stable checkpoint's snapshot as the executed-request table grows
(`python -m tests.bench.bench_checkpoint`).

At every stable checkpoint (every `checkpoint_interval_batches` batches) a replica persists an
incremental snapshot: the requests executed since the previous stable checkpoint. The table of
executed requests is kept forever (exactly-once), so what that snapshot costs as the table grows
is what a long-lived group pays on its event loop every few dozen batches.

For each table size this builds a replicated state holding that many executed requests (as a
replica restored from a snapshot would, then executing one checkpoint interval of batches of
8 requests, about what a loaded group orders), and times, alternating in rounds:

- `ReplicatedState.snapshot(summary, since_seq=previous)`, which walks the table back from its
  newest entry and stops at the previous checkpoint;
- the same listing by a pass over the whole table (what the snapshot did before), as the
  same-run baseline.

It reports the median ms of each and their ratio. A Markdown table goes to stdout and the figures
to results/bench_checkpoint.json; it measures, it never fails.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

from certs.batch import Leaf
from certs.encoding import sha256
from certs.policy import NO_AGREEMENT, AgreementPolicy, Decision

from consensus.messages import Proposal, ProposalEntry
from consensus.state import ReplicatedState
from certs.config import ProtocolParams
from tests.bench.common import write_figures
from tests.consensus.cluster import header_for
from tests.sim.world import make_config

SIZES = (10_000, 100_000, 1_000_000)
REQUESTS_PER_BATCH = 8


def _state_with(size: int) -> tuple[ReplicatedState, int]:
    """A state with `size` executed requests, the last interval's worth executed batch by batch;
    returns it and the seq of the checkpoint before that interval."""
    config = make_config(4, AgreementPolicy(), ProtocolParams())  # the shipped checkpoint interval
    interval = config.params.checkpoint_interval_batches
    recent = interval * REQUESTS_PER_BATCH
    history = max(size - recent, 0)
    history_seq = -(-history // REQUESTS_PER_BATCH)
    empty = ReplicatedState(config)
    base = replace(
        empty.snapshot(empty.summary()),
        seq=history_seq,
        executed=tuple(sorted(
            (f"client-{i % 997}", f"r{i}", 1 + i // REQUESTS_PER_BATCH, sha256(b"%d" % i)) for i in range(history)
        )),
    )
    state = ReplicatedState.from_snapshot(config, base)
    decision = Decision(NO_AGREEMENT, (), ())
    for seq in range(history_seq + 1, history_seq + interval + 1):
        entries = tuple(
            ProposalEntry(Leaf(sha256(b"%d/%d" % (seq, k)), "live", f"{seq}-{k}", (), "plurality(min_support=2)", (), decision), ())
            for k in range(REQUESTS_PER_BATCH)
        )
        proposal = Proposal(entries, ())
        state.apply(header_for(config, 0, seq, proposal), proposal)
    return state, history_seq


def _full_scan(state: ReplicatedState, since_seq: int, through_seq: int) -> tuple[tuple[str, str, int, bytes], ...]:
    return tuple(sorted((c, r, s, d) for (c, r), (s, d) in state.executed.items() if since_seq < s <= through_seq))


def _ms(call: object, repeats: int) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        call()  # type: ignore[operator]
    return 1000 * (time.perf_counter() - started) / repeats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES), help="comma-separated table sizes")
    parser.add_argument("--out", type=Path, default=Path("results/bench_checkpoint.json"))
    args = parser.parse_args(argv)
    rows: list[dict[str, object]] = []
    print("| executed requests | in the snapshot | snapshot ms | full-scan ms (before) | snapshot / full scan |")
    print("|---:|---:|---:|---:|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        state, previous = _state_with(size)
        summary = state.summary()
        listed = state.snapshot(summary, since_seq=previous).executed
        if listed != _full_scan(state, previous, summary.seq):  # a benchmark of a wrong answer is worthless
            raise SystemExit(f"snapshot of {size} requests differs from the full scan")
        repeats = max(1, 200_000 // max(size, 1))
        walk_ms: list[float] = []
        scan_ms: list[float] = []
        for _ in range(args.rounds):
            walk_ms.append(_ms(lambda: state.snapshot(summary, since_seq=previous), repeats * 10))
            scan_ms.append(_ms(lambda: _full_scan(state, previous, summary.seq), repeats))
        walk, scan = statistics.median(walk_ms), statistics.median(scan_ms)
        rows.append({
            "executed_requests": len(state.executed), "listed": len(listed),
            "snapshot_ms": walk, "full_scan_ms": scan, "snapshot_over_full_scan": walk / scan,
        })
        print(f"| {len(state.executed)} | {len(listed)} | {walk:.3f} | {scan:.2f} | {walk / scan:.4f} |", flush=True)
    write_figures(args.out, {"rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
