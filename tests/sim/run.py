"""`make sim SEEDS=N`: run many seeds; `--seed S` replays one (printing its trace tail)."""

from __future__ import annotations

import argparse
import sys
import time

from tests.sim.scenario import SimulationFailure, run_seed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="deterministic simulation of the consensus core")
    parser.add_argument("--seeds", type=int, default=200, help="how many seeds to run")
    parser.add_argument("--first", type=int, default=0, help="first seed")
    parser.add_argument("--seed", type=int, help="replay exactly this seed")
    parser.add_argument(
        "--report-busy", action="store_true",
        help="after each seed, idle the healed group and list the correct replicas still not quiet, and why (reported, not failed)",
    )
    args = parser.parse_args(argv)
    seeds = [args.seed] if args.seed is not None else list(range(args.first, args.first + args.seeds))
    failures = 0
    busy_seeds = 0
    started = time.monotonic()
    for seed in seeds:
        try:
            result = run_seed(seed, report_busy=args.report_busy)
        except SimulationFailure as exc:
            failures += 1
            print(f"FAIL {exc}", flush=True)
            continue
        print(
            f"ok   {result.summary} seq={result.highest_seq} requests={result.committed_requests} "
            f"view_changes={result.view_changes} evidence={result.evidence}",
            flush=True,
        )
        if result.busy_when_idle:
            busy_seeds += 1
            for replica, reasons in sorted(result.busy_when_idle.items()):
                print(f"busy seed={seed} replica {replica}: {'; '.join(reasons)}", flush=True)
    print(f"{len(seeds) - failures}/{len(seeds)} seeds passed in {time.monotonic() - started:.0f} s")
    if args.report_busy:
        print(f"{busy_seeds}/{len(seeds) - failures} seeds left a correct replica busy once idle")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
