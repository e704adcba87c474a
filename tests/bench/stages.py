"""Where a certified request's time goes: stage durations from the trace files that the gateway
and the replicas write under `QUORUMSERVE_TRACE_DIR` (see `replica/trace.py`).

For each request the gateway both received and answered, the milestones below are taken from
every process's lines; each stage is the time from one milestone to the next (a milestone
earlier than the one before it counts as reached at that one):

    gateway in -> every replica has the request -> the slowest model answered -> the primary
    has every peer's vote on it -> the primary sends its PRE-PREPARE -> a quorum of replicas
    sent COMMIT -> a replica committed -> a replica built the certificate -> the gateway answered

The primary is the replica that logged the batch's PRE-PREPARE first (it sent it). Its last
vote may come after the slowest model's answer (a hop) or before it (the slowest model was the
primary's own); a proposal without a vote the primary never got has that stage end at the
proposal.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

STAGES = (
    "gateway to every replica",
    "inference (slowest model)",
    "votes reach the primary",
    "primary proposes (PRE-PREPARE sent)",
    "PREPARE round (quorum sent COMMIT)",
    "COMMIT round (first replica committed)",
    "certificate built",
    "back through the gateway",
)


@dataclass
class StageBreakdown:
    requests: int = 0
    durations_ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    total_ms: list[float] = field(default_factory=list)

    def median_ms(self, stage: str) -> float:
        values = self.durations_ms[stage]
        return statistics.median(values) if values else float("nan")

    @property
    def total_median_ms(self) -> float:
        return statistics.median(self.total_ms) if self.total_ms else float("nan")

    def summary(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "median_ms": {s: self.median_ms(s) for s in STAGES},
            "total_median_ms": self.total_median_ms,
        }


@dataclass(frozen=True)
class TraceLine:
    at_s: float
    process: str
    event: str
    key: str


def read_traces(folder: Path) -> list[TraceLine]:
    lines: list[TraceLine] = []
    for path in sorted(Path(folder).glob("*.trace")):
        for raw in path.read_text().splitlines():
            parts = raw.split(" ", 3)
            if len(parts) != 4:
                continue  # a line cut short when its process was killed
            try:
                lines.append(TraceLine(float(parts[0]), parts[1], parts[2], parts[3]))
            except ValueError:
                continue
    return lines


def breakdown(lines: Iterable[TraceLine], *, key_marker: str = "") -> StageBreakdown:
    """Stage durations of every request whose key (client_id/request_id) contains `key_marker`
    and whose every milestone is in the trace."""
    gateway_in: dict[str, float] = {}
    gateway_out: dict[str, float] = {}
    received: dict[str, list[float]] = defaultdict(list)
    inferred: dict[str, list[float]] = defaultdict(list)
    certified: dict[str, list[tuple[float, int]]] = defaultdict(list)
    pre_prepare: dict[int, tuple[float, str]] = {}  # seq -> (first logged, by whom: the primary)
    votes_in: dict[tuple[str, str], float] = {}  # (process, key) -> its last peer vote on key
    commit_sent: dict[int, list[float]] = defaultdict(list)
    committed: dict[int, float] = {}
    replicas: set[str] = set()
    for line in lines:
        if line.process.startswith("replica"):
            replicas.add(line.process)
        event, key = line.event, line.key
        if event == "in" and key_marker in key:
            gateway_in[key] = line.at_s
        elif event == "out" and key_marker in key:
            gateway_out[key] = line.at_s
        elif event == "received" and key_marker in key:
            received[key].append(line.at_s)
        elif event == "inferred":
            for k in key.split(","):
                if key_marker in k:
                    inferred[k].append(line.at_s)
        elif event == "vote-in":
            for k in key.split(","):
                if key_marker in k:
                    votes_in[(line.process, k)] = max(line.at_s, votes_in.get((line.process, k), line.at_s))
        elif event == "certified" and key_marker in key:
            k, _, seq = key.rpartition("@")
            certified[k].append((line.at_s, int(seq)))
        elif event == "pre-prepare":
            seq = int(key)
            pre_prepare[seq] = min((line.at_s, line.process), pre_prepare.get(seq, (line.at_s, line.process)))
        elif event == "commit-sent":
            commit_sent[int(key)].append(line.at_s)
        elif event == "committed":
            seq = int(key)
            committed[seq] = min(line.at_s, committed.get(seq, line.at_s))
    n = len(replicas)
    quorum = (n + (n - 1) // 3) // 2 + 1 if n else 0
    out = StageBreakdown()
    for key, start_s in gateway_in.items():
        end_s = gateway_out.get(key)
        if end_s is None or len(received[key]) < n or len(inferred[key]) < n or not certified[key]:
            continue
        first_certified_s, seq = min(certified[key])
        commits = sorted(commit_sent.get(seq, []))
        if seq not in pre_prepare or seq not in committed or len(commits) < quorum:
            continue
        proposed_s, primary = pre_prepare[seq]
        milestones = [
            start_s,
            max(received[key]),
            max(inferred[key]),
            min(votes_in.get((primary, key), proposed_s), proposed_s),
            proposed_s,
            commits[quorum - 1],
            committed[seq],
            first_certified_s,
            end_s,
        ]
        out.requests += 1
        reached = milestones[0]
        for stage, at_s in zip(STAGES, milestones[1:]):
            at_s = max(at_s, reached)
            out.durations_ms[stage].append((at_s - reached) * 1000)
            reached = at_s
        out.total_ms.append((end_s - start_s) * 1000)
    return out


def table(result: StageBreakdown, client_p50_ms: float | None = None) -> list[str]:
    """Markdown rows: each stage's median, and its share of the median request."""
    total = sum(result.median_ms(s) for s in STAGES)
    lines = ["| stage | median ms | share |", "|---|---:|---:|"]
    for stage in STAGES:
        median = result.median_ms(stage)
        lines.append(f"| {stage} | {median:.2f} | {100 * median / total:.0f} % |" if total else f"| {stage} | {median:.2f} | |")
    lines.append(f"| gateway in to gateway out (median of the whole) | {result.total_median_ms:.2f} | |")
    if client_p50_ms is not None:
        lines.append(f"| client p50 (adds client to gateway and back) | {client_p50_ms:.2f} | |")
    return lines


def plot_stages(axis: object, result: StageBreakdown, colours: Sequence[str] | None = None) -> None:
    """One horizontal bar of the stage medians, stacked in order."""
    left = 0.0
    for i, stage in enumerate(STAGES):
        width = result.median_ms(stage)
        axis.barh([0], [width], left=[left], label=f"{stage} ({width:.1f} ms)",  # type: ignore[attr-defined]
                  color=None if colours is None else colours[i % len(colours)])
        left += width
