"""What the protocol logic alone costs per certified request, with no processes, gRPC, asyncio,
SQLite or Triton in the way (`python -m tests.bench.bench_core [--quick] [--profile]`).

n real `ConsensusNode`s in one process, each with its own Ed25519 key, its own verifier and its
own memo of voted outputs (`certs.wire.voted_outputs`; so no replica profits from another's
signature cache or decoding), do what a replica's runtime does with what
`ready()` hands back: encode every persist record (`replica.codec.encode_record`), encode each
outgoing message once and decode it at every receiver (`encode_peer_message`, a `PeerBatch`
frame, `decode_peer_batch`: the strict codec a peer's bytes go through), run inference with a
deterministic stand-in model (the simulator's `honest_output`: the model is not what is
measured here), and build and encode a certificate for every request of every committed batch
(`replica.node.batch_encoded_certificates`: the stored form with each voter's
signed vote, and the compact one a client is sent), as `ReplicaNode` does. A client then decodes
and verifies one compact certificate per request, as the gateway and the SDK do.

Requests go in waves of `rows` to every replica; each wave is ordered and certified before the
next. `rows` = 1 is concurrency 1 (every request pays for a whole round of messages and
signatures); 64 leaves mostly what each request costs itself. Every part is timed with
`perf_counter` around the calls (the consensus core's share includes its Ed25519 signing and
verification); the total is the process's CPU time over the waves.

Two things come out of it. A floor under the served figures: whatever the runtime costs, a
request cannot cost less than this, so `cores / CPU per request` is a ceiling on certified
requests/s that only faster protocol code can raise (the ordering benchmark's targets are
10,000/s streaming and 3,000/s unary on two cores). And a quick, single-process measurement to
A/B a change to the hot path: it still moves with the machine's speed (a shared VM's CPU time per
request varies by tens of percent over an hour), so run both sides alternately, several times,
and compare medians. `--profile` adds a pyinstrument call tree of the n=4, 64-row case
(core_profile.html and core_profile.txt in the out-dir).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from certs.certificate import decode_certificate
from certs.config import GroupConfig, ProtocolParams
from certs.keys import Ed25519Verifier
from certs.policy import AgreementPolicy
from certs.request import InferenceRequest
from certs.verify import verify
from certs.wire import voted_outputs
from consensus.node import ConsensusNode
from consensus.ready import CommittedBatch
from replica.codec import decode_peer_batch, encode_peer_message, encode_record
from replica.node import batch_encoded_certificates
from replica.transport import frame
from tests.bench.common import BenchResult, Figure, Options, pyplot, run_alone, save_figure, step
from tests.consensus.cluster import make_request
from tests.sim.world import _KEYS, honest_output, make_config

NAME = "core"
TITLE = "7. Protocol logic alone (one process)"
PARTS = ("consensus core", "decode peer messages", "encode peer messages", "encode persist records", "certificates", "client: decode + verify")
ORDERING_TARGETS_PER_S = {"streaming": 10_000.0, "unary": 3_000.0}  # the ordering benchmark's, on two cores
TICKS_MAX_PER_WAVE = 10_000


class CoreBenchError(RuntimeError):
    pass


@dataclass
class CoreRun:
    """One configuration's measurement: CPU per certified request, in total and by part."""

    n: int
    rows: int
    requests: int = 0
    cpu_s: float = 0.0
    parts_s: dict[str, float] = field(default_factory=lambda: {part: 0.0 for part in PARTS})
    peer_messages: int = 0  # deliveries, one per receiver

    @property
    def cpu_us_per_request(self) -> float:
        return 1e6 * self.cpu_s / self.requests if self.requests else float("nan")

    def part_us_per_request(self, part: str) -> float:
        return 1e6 * self.parts_s[part] / self.requests if self.requests else float("nan")

    @property
    def other_us_per_request(self) -> float:
        """Driving the nodes, the stand-in model and the timers themselves."""
        return self.cpu_us_per_request - sum(self.part_us_per_request(p) for p in PARTS)

    def ceiling_per_s(self, cores: float) -> float:
        return cores * self.requests / self.cpu_s if self.cpu_s else float("nan")


class CoreGroup:
    """n nodes in one process and the runtime work around them, timed by part."""

    def __init__(self, n: int, params: ProtocolParams) -> None:
        self.config: GroupConfig = make_config(n, AgreementPolicy(), params, group_id="unit")  # make_request's group
        self.nodes = {r: ConsensusNode(self.config, r, _KEYS[r].signer(), Ed25519Verifier()) for r in range(n)}
        self.client_verifier = Ed25519Verifier()
        self.inbox: list[tuple[int, int, bytes]] = []  # (via, to, encoded message)
        self.inference: list[tuple[int, Any]] = []
        self.certified: dict[tuple[str, str], bytes] = {}  # one replica's certificate per request
        self.parts = {part: 0.0 for part in PARTS}
        self.deliveries = 0
        # each replica (and the client) decodes with its own memo of voted outputs, as in a
        # process of its own (certs.wire.voted_outputs)
        self.output_memos: dict[int | None, dict[bytes, Any]] = {r: {} for r in self.nodes} | {None: {}}

    def drain(self, r: int) -> None:
        """ready() handled in the runtime's order: persist, send, infer, certify."""
        clock = time.perf_counter
        parts = self.parts
        ready = self.nodes[r].ready()
        started = clock()
        for record in ready.persist:
            encode_record(record)
        encoded_at = clock()
        parts["encode persist records"] += encoded_at - started
        for out in ready.messages:
            encoded = encode_peer_message(out.message)
            targets = [out.to] if out.to is not None else [t for t in self.nodes if t != r]
            self.inbox.extend((r, to, encoded) for to in targets)
        sent_at = clock()
        parts["encode peer messages"] += sent_at - encoded_at
        self.inference.extend((r, batch) for batch in ready.inference)
        for batch in ready.committed:
            self._certify(r, batch)
        parts["certificates"] += clock() - sent_at

    def _certify(self, r: int, batch: CommittedBatch) -> None:
        """What ReplicaNode._build_certificates does for a committed batch: both encodings of
        every request's certificate (the stored one, with each voter's signed vote, and the
        compact one a client is sent)."""
        if not batch.proposal.entries:
            return
        for entry, certificate in zip(batch.proposal.entries, batch_encoded_certificates(batch)):
            if r == 0:
                self.certified[(entry.leaf.client_id, entry.leaf.request_id)] = certificate.compact

    def submit(self, requests: Sequence[InferenceRequest]) -> None:
        clock = time.perf_counter
        for r, node in self.nodes.items():
            for request in requests:
                started = clock()
                node.submit(request)
                self.parts["consensus core"] += clock() - started
                self.drain(r)

    def _deliver(self, via: int, to: int, encoded: bytes) -> None:
        clock = time.perf_counter
        with voted_outputs(self.output_memos[to]):
            started = clock()
            sender, messages = decode_peer_batch(frame(via, [encoded]))
            decoded_at = clock()
        self.parts["decode peer messages"] += decoded_at - started
        node = self.nodes[to]
        for message in messages:
            node.step(message, via=sender)
        self.parts["consensus core"] += clock() - decoded_at
        self.deliveries += 1
        self.drain(to)

    def _run_inference(self) -> None:
        clock = time.perf_counter
        inference, self.inference = self.inference, []
        for r, batch in inference:
            node = self.nodes[r]
            outputs = [honest_output(request.digest, r, batch.model_version) for request in batch.requests]
            started = clock()
            node.executed(batch.batch_id, outputs)
            self.parts["consensus core"] += clock() - started
            self.drain(r)

    def _tick(self) -> None:
        clock = time.perf_counter
        for r, node in self.nodes.items():
            started = clock()
            node.tick()
            self.parts["consensus core"] += clock() - started
            self.drain(r)

    def settle(self, keys: Sequence[tuple[str, str]]) -> None:
        """Deliver, infer and tick until every request in `keys` has its certificate."""
        for _ in range(TICKS_MAX_PER_WAVE):
            while self.inbox or self.inference:
                while self.inbox:
                    inbox, self.inbox = self.inbox, []
                    for via, to, encoded in inbox:
                        self._deliver(via, to, encoded)
                self._run_inference()
            if all(key in self.certified for key in keys):
                return
            self._tick()
        raise CoreBenchError(f"{len(keys)} requests were not all certified within {TICKS_MAX_PER_WAVE} ticks")

    def client_check(self, requests: Sequence[InferenceRequest]) -> None:
        """What the gateway or the SDK does with each answer: decode and verify its certificate."""
        started = time.perf_counter()
        with voted_outputs(self.output_memos[None]):
            for request in requests:
                verify(decode_certificate(self.certified[request.key]), self.config, request, verifier=self.client_verifier)
        self.parts["client: decode + verify"] += time.perf_counter() - started


def _waves(rows: int, waves: int, tag: str) -> Iterator[list[InferenceRequest]]:
    index = 0
    for _ in range(waves):
        yield [make_request(index + i, client_id=f"core-{tag}") for i in range(rows)]
        index += rows


def measure(n: int, rows: int, requests: int, *, warm_up_waves: int = 2, params: ProtocolParams | None = None) -> CoreRun:
    """Certify `requests` requests (rounded up to whole waves of `rows`) in a fresh group of n."""
    group = CoreGroup(n, params or ProtocolParams())
    waves = max(1, -(-requests // rows))
    for wave in _waves(rows, warm_up_waves, "warm-up"):
        group.submit(wave)
        group.settle([r.key for r in wave])
        group.client_check(wave)
    group.parts = {part: 0.0 for part in PARTS}
    group.deliveries = 0
    run = CoreRun(n, rows)
    started_cpu = time.process_time()
    for wave in _waves(rows, waves, "measured"):
        group.submit(wave)
        group.settle([r.key for r in wave])
        group.client_check(wave)
        run.requests += len(wave)
    run.cpu_s = time.process_time() - started_cpu
    run.parts_s = dict(group.parts)
    run.peer_messages = group.deliveries
    return run


def profile(n: int, rows: int, requests: int, out_dir: Path) -> tuple[str, str]:
    """A pyinstrument call tree of one configuration: (html name, text name) in out_dir."""
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005)
    profiler.start()
    try:
        measure(n, rows, requests, warm_up_waves=1)
    finally:
        profiler.stop()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "core_profile.html").write_text(profiler.output_html())
    (out_dir / "core_profile.txt").write_text(profiler.output_text(unicode=False, color=False, show_all=False))
    return "core_profile.html", "core_profile.txt"


def configurations(quick: bool) -> list[tuple[int, int, int]]:
    """(n, rows per wave, requests) to measure."""
    count = 256 if quick else 1024
    return [(4, 1, count // 8), (4, 64, count), (7, 1, count // 16), (7, 64, count // 2)]


def _plot(runs: Sequence[CoreRun], options: Options) -> str:
    plt = pyplot()
    fig, axis = plt.subplots(figsize=(8, 4))
    labels = [f"n={run.n}\n{run.rows} row{'s' if run.rows > 1 else ''}/wave" for run in runs]
    bottoms = [0.0] * len(runs)
    for part in (*PARTS, "other"):
        values = [run.other_us_per_request if part == "other" else run.part_us_per_request(part) for run in runs]
        values = [max(v, 0.0) / 1000 for v in values]
        axis.bar(labels, values, bottom=bottoms, label=part)
        bottoms = [b + v for b, v in zip(bottoms, values)]
    axis.set_yscale("log")
    axis.set_ylabel("CPU ms per certified request (log)")
    axis.set_title("Protocol logic alone, one process: CPU per certified request by part")
    axis.legend(fontsize=7, loc="upper right")
    return save_figure(fig, options, "core.png")


def run(options: Options, result: BenchResult, shared: Any = None, *, with_profile: bool = False) -> None:
    cores = float(os.cpu_count() or 1)
    runs: list[CoreRun] = []
    for n, rows, requests in configurations(options.quick):
        step(f"core: n={n}, {rows} row(s) per wave, {requests} requests, in one process")
        run_ = measure(n, rows, requests, params=options.protocol_params())
        runs.append(run_)
        step(
            f"core: n={n}, {rows} row(s): {run_.cpu_us_per_request:.0f} us CPU per certified request, "
            f"{run_.peer_messages / run_.requests:.1f} peer message deliveries per request"
        )
    if with_profile:
        step("core: pyinstrument call tree of n=4, 64 rows per wave")
        html, text = profile(4, 64, 512 if options.quick else 2048, options.out_dir)
        result.data["profile"] = {"html": html, "text": text}

    by_key = {(r.n, r.rows): r for r in runs}
    batched, single = by_key[(4, 64)], by_key[(4, 1)]
    result.figures += [
        Figure(
            "n=4, 64 rows per batch: ceiling on this machine's cores from the protocol logic alone",
            batched.ceiling_per_s(cores), "req/s", target=ORDERING_TARGETS_PER_S["streaming"], target_op=">=",
            baseline_name="same, 1 row per batch", baseline_value=single.ceiling_per_s(cores),
            ratio=batched.ceiling_per_s(cores) / single.ceiling_per_s(cores), ratio_meaning="x 1 row per batch",
            note=f"{batched.cpu_us_per_request:.0f} us CPU per request; target: the streaming ordering target",
        ),
        Figure(
            "n=4, 1 row per batch: ceiling on this machine's cores from the protocol logic alone",
            single.ceiling_per_s(cores), "req/s", target=ORDERING_TARGETS_PER_S["unary"], target_op=">=",
            note=f"{single.cpu_us_per_request:.0f} us CPU per request; target: the unary ordering target",
        ),
    ]
    header = "| n | rows/batch | requests | CPU us/request | " + " | ".join(f"{p} us" for p in PARTS) + " | other us | peer deliveries/request | ceiling req/s on " + f"{cores:.0f} cores |"
    result.details += [
        "n ConsensusNodes in one process, each with its own key and signature cache; every message through the "
        "strict codec, persist records encoded, certificates built and encoded at every replica, one certificate "
        "per request decoded and verified as a client does; a stand-in model. No gRPC, asyncio, SQLite or Triton: "
        "a floor under what a served request costs, and a ceiling (cores / CPU per request) on certified "
        "requests/s that only faster protocol code can raise. Parts are timed around the calls; the consensus "
        "core's share includes its Ed25519 signing and verification; other = driving the nodes, the stand-in "
        "model and the timers.",
        "",
        header,
        "|" + "---:|" * (len(PARTS) + 7),
    ]
    for r in runs:
        cells = [str(r.n), str(r.rows), str(r.requests), f"{r.cpu_us_per_request:.0f}"]
        cells += [f"{r.part_us_per_request(p):.0f}" for p in PARTS]
        cells += [f"{r.other_us_per_request:.0f}", f"{r.peer_messages / r.requests:.1f}", f"{r.ceiling_per_s(cores):,.0f}"]
        result.details.append("| " + " | ".join(cells) + " |")
    if "profile" in result.data:
        result.details += ["", "pyinstrument call tree of n=4, 64 rows per batch: `core_profile.html` (open in a browser), `core_profile.txt`."]
    result.plots.append(_plot(runs, options))
    result.data["runs"] = [
        {
            "n": r.n, "rows": r.rows, "requests": r.requests, "cpu_us_per_request": r.cpu_us_per_request,
            "parts_us_per_request": {p: r.part_us_per_request(p) for p in PARTS},
            "other_us_per_request": r.other_us_per_request,
            "peer_deliveries_per_request": r.peer_messages / r.requests,
            "ceiling_per_s": r.ceiling_per_s(cores), "cores": cores,
        }
        for r in runs
    ]


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", action="store_true", help="also write a pyinstrument call tree of n=4, 64 rows")


def main(argv: list[str] | None = None) -> int:
    return run_alone(
        NAME, TITLE, lambda options, result, args: run(options, result, with_profile=args.profile), argv, __doc__,
        add_arguments=_add_arguments,
    )


if __name__ == "__main__":
    raise SystemExit(main())
