"""One simulated run: a safety phase under faults, then a liveness phase after healing, then the
checkers. `run_seed(seed)` raises SimulationFailure (whose message starts with `seed=...`) on
any violation; `python -m tests.sim.run --seed N` replays it exactly."""

from __future__ import annotations

from dataclasses import dataclass, field

from certs.certificate import QuorumSignature, SignedVoteBatch, build_certificates, decode_certificate, encode_certificate
from certs.errors import CertificateError
from certs.policy import NO_AGREEMENT, PolicyKind, decide
from certs.verify import verify
from consensus.messages import ModelUpdate
from consensus.ready import CommittedBatch

import random

from tests.sim.world import World, lost_with_crashes

SAFETY_TICKS = 600
LIVENESS_TICKS = 2400


class SimulationFailure(AssertionError):
    pass


@dataclass
class SimResult:
    seed: int
    n: int
    byzantine: dict[int, str]
    committed_requests: int
    highest_seq: int
    view_changes: int
    crashes: int
    rejected: dict[str, int]
    evidence: int
    summary: str
    # with report_busy: correct members still busy (ConsensusNode.busy_reasons) after idling
    busy_when_idle: dict[int, tuple[str, ...]] = field(default_factory=dict)


def run_seed(
    seed: int, *, faults: bool = True, byzantine: bool = True, requests: int | None = None, report_busy: bool = False
) -> SimResult:
    """One seed, checked. `report_busy` then lets the healed world idle past every retention
    period and reports the correct members not quiet (each such state costs a replica a tick
    every few milliseconds for good, and may hide work that never finishes: a lost update was
    found this way), or holding a checkpoint quorum they did not make stable. It reports, it
    does not fail: tests/sim/test_sim.py says which states are accepted."""
    world = World(seed, faults=faults, byzantine=byzantine)
    busy: dict[int, tuple[str, ...]] = {}
    try:
        _drive(world, requests)
        _check(world)
        if report_busy:
            busy = _busy_after_idling(world)
    except SimulationFailure:
        raise
    except Exception as exc:  # any crash of the real code is a finding too
        tail = "\n".join(world.trace[-15:])
        raise SimulationFailure(f"seed={seed}: {type(exc).__name__}: {exc}\n{tail}") from exc
    reference = world.committed[world.correct[0]]
    return SimResult(
        seed=seed,
        n=world.n,
        byzantine=dict(world.byzantine),
        committed_requests=sum(len(b.proposal.entries) - len(b.duplicate_entries) for b in reference.values()),
        highest_seq=max((node.executed_seq for node in world.nodes.values() if node is not None), default=0),
        view_changes=world.stats.view_changes,
        crashes=world.stats.crashes,
        rejected=dict(world.stats.rejected),
        evidence=len(world.evidence),
        summary=f"seed={seed} n={world.n} policy={world.config.policy.describe(world.f)} byzantine={world.byzantine} {world.fault_summary}",
        busy_when_idle=busy,
    )


def _busy_after_idling(world: World) -> dict[int, tuple[str, ...]]:
    params = world.config.params
    # past the longest retention (vote batches nobody can use: 20 view-change timeouts)
    world.run_until(world.now + 20 * params.view_change_timeout_ticks + 10 * params.relay_timeout_ticks)
    busy = {}
    for r in world.correct:
        node = world.nodes[r]
        if node is None or node.retired:
            continue
        reasons = list(node.busy_reasons())
        # not busy, but stuck all the same: a quorum's checkpoints for a batch it executed,
        # never made stable (its log is not truncated until new traffic makes the next one)
        for seq, by_digest in sorted(node.checkpoints.items()):
            quorum = node._config_at(seq).quorum_size
            if node.low < seq <= node.state.seq and any(len(bucket) >= quorum for bucket in by_digest.values()):
                reasons.append(f"holds a quorum of checkpoints at seq {seq} but its stable checkpoint is {node.low}")
        if reasons:
            busy[r] = tuple(reasons)
    return busy


def _drive(world: World, requests: int | None) -> None:
    rng = world.rng
    count = requests if requests is not None else rng.randint(20, 80)
    everyone = list(range(world.n))
    for index in range(count):
        when = rng.randint(0, SAFETY_TICKS - 50)
        request = world.make_request(index)
        if rng.random() < 0.6:
            targets, disseminate = everyone, False  # a gateway fans out to all replicas
        else:
            targets, disseminate = [rng.choice(everyone)], True  # a client talks to one replica
        world.at(when, lambda request=request, targets=targets, d=disseminate: world.submit(request, targets, d))
    if rng.random() < 0.3:
        # an owner updates its model while the group serves
        owner = rng.choice(world.correct)
        world.constant_after_update[owner] = rng.randrange(10)
        world.at(rng.randint(50, 300), lambda: world.submit_update(owner, 2))
    # membership: its own random stream, so seeds without it replay as before
    members = random.Random(world.seed * 7919 + 17)
    if members.random() < 0.35:
        world.at(members.randint(40, 250), world.submit_join)
        if members.random() < 0.6:
            leaver = members.choice(world.correct)
            world.at(members.randint(260, 450), lambda: world.submit_leave(leaver))
    if world.crashes_enabled:
        budget = max(1, world.f - len(world.byzantine)) if rng.random() < 0.7 else world.f + 1
        for victim in rng.sample(world.correct, min(budget, len(world.correct))):
            down = rng.randint(20, SAFETY_TICKS - 100)
            world.at(down, lambda v=victim: world.crash(v))
            world.at(down + rng.randint(20, 200), lambda v=victim: world.restart(v))
    if world.partitions_enabled:
        for _ in range(rng.randint(1, 3)):
            start = rng.randint(0, SAFETY_TICKS - 100)
            side = set(rng.sample(everyone, rng.randint(1, world.n // 2)))
            links = {(a, b) for a in everyone for b in everyone if (a in side) != (b in side)}
            world.at(start, lambda links=links: world.cut.update(links))
            world.at(start + rng.randint(30, 150), lambda links=links: world.cut.difference_update(links))
    world.run_until(SAFETY_TICKS)
    # heal: no more loss, partitions or crashes; everyone restarts
    world.cut.clear()
    world.loss = 0.0
    world.duplication = 0.0
    world.delay_max_ticks = 2
    for r in list(world.nodes):
        world.restart(r)
    for request in lost_with_crashes(world):
        world.submit(request, everyone, False)  # the client's retry after a timeout
    late = [world.make_request(count + i) for i in range(5)]
    for request in late:
        world.submit(request, everyone, False)
    world.run_until(SAFETY_TICKS + LIVENESS_TICKS)


def _fail(world: World, message: str) -> None:
    tail = "\n".join(world.trace[-20:])
    raise SimulationFailure(f"seed={world.seed}: {message}\n(world: n={world.n} byzantine={world.byzantine})\n{tail}")


def _check(world: World) -> None:
    # agreement: no two correct replicas commit different batches at one sequence number
    chosen: dict[int, bytes] = {}
    for r in world.correct:
        for seq, batch in world.committed[r].items():
            digest = batch.header.batch_digest
            if chosen.setdefault(seq, digest) != digest:
                _fail(world, f"agreement violated at seq {seq}: replica {r} committed another batch")
    # validity and exactly-once, on every correct replica's log
    for r in world.correct:
        seen: set[tuple[str, str]] = set()
        for seq in sorted(world.committed[r]):
            batch = world.committed[r][seq]
            config = world.configs[batch.header.epoch]  # each epoch under its own config
            q = config.quorum_size
            duplicates = set(batch.duplicate_entries)
            for index, entry in enumerate(batch.proposal.entries):
                leaf = entry.leaf
                key = (leaf.client_id, leaf.request_id)
                if (key in seen) != (index in duplicates):
                    _fail(world, f"exactly-once violated at seq {seq} for {key} on replica {r}")
                seen.add(key)
                voters = [v.replica_id for v in leaf.votes]
                if len(voters) < q or voters != sorted(set(voters)):
                    _fail(world, f"seq {seq}: decision for {key} rests on voters {voters}")
                classes = len(leaf.label_space) or len(config.task.class_labels)
                if decide(config.policy, config.f, q, leaf.votes, min(config.task.top_k, classes)) != leaf.decision:
                    _fail(world, f"seq {seq}: decision for {key} does not follow from its votes")
                request = world.requests.get(key)
                for vote in leaf.votes:
                    if vote.replica_id in world.correct and request is not None:
                        expected = world.model_output(vote.replica_id, request, vote.model_version, leaf.label_space)
                        if vote.output != expected:
                            _fail(world, f"seq {seq}: vote of correct replica {vote.replica_id} for {key} was altered")
                if (
                    config.policy.kind is PolicyKind.PLURALITY
                    and config.policy.effective_min_support(config.f) >= config.f + 1
                    and leaf.decision.label != NO_AGREEMENT
                    and not set(leaf.decision.support) & set(world.correct)
                ):
                    _fail(world, f"seq {seq}: label {leaf.decision.label} for {key} has no correct supporter")
    _check_model_versions(world)
    _check_certificates(world)
    # liveness: after healing, every request a correct replica received is executed everywhere
    for r in world.correct:
        node = world.nodes[r]
        assert node is not None
        if node.retired:
            continue  # left the group: it owes nothing after that
        missing = [key for key in world.submitted_to_correct if key not in node.state.executed]
        if missing:
            _fail(world, f"liveness: replica {r} (seq {node.executed_seq}, view {node.view}, active {node.view_active}) never executed {len(missing)} requests, e.g. {missing[:3]}")
        # nothing is left marked as proposed at a seq already executed: the request was not in
        # the batch executed there, and such a mark would make this replica refuse (as a backup)
        # or never make (as primary) a later proposal of it
        settled = {key: seq for key, seq in node.proposed.items() if seq <= node.executed_seq}
        if settled:
            _fail(world, f"replica {r} still marks {len(settled)} requests as proposed at executed seqs, e.g. {sorted(settled.items())[:3]}")
        # and no client of it is left waiting: each request it took was certified there or
        # reported as executed within a snapshot (the runtime then sends the client elsewhere)
        if world.waiting[r]:
            _fail(world, f"liveness: replica {r} leaves clients waiting on {len(world.waiting[r])} executed requests, e.g. {sorted(world.waiting[r])[:3]}")
        # what the admission limits read counts exactly the requests still held: a drift would
        # make an idle replica refuse clients (or a loaded one take without bound)
        held = [p.request for p in node.pending.values() if p.request is not None]
        if (node.held_requests, node.held_request_bytes) != (len(held), sum(q.size_bytes for q in held)):
            _fail(world, f"replica {r} counts {node.held_requests} requests ({node.held_request_bytes} bytes) held, holds {len(held)} ({sum(q.size_bytes for q in held)} bytes)")


def _check_model_versions(world: World) -> None:
    """Every vote carries the version the ordered log puts in effect at its batch: an update
    ordered at seq t is in effect from t + log_window_batches on, never earlier or later."""
    config = world.config
    window = config.params.log_window_batches
    # replicas that installed a snapshot skipped batches: merge every correct replica's log
    # (agreement makes them consistent) and stop where no replica logged a batch
    log: dict[int, object] = {}
    for r in world.correct:
        for seq, batch in world.committed[r].items():
            log.setdefault(seq, batch)
    versions: dict[int, int] = {m.replica_id: m.model_version for c in world.configs.values() for m in c.members}
    scheduled: list[tuple[int, int, int]] = []
    for seq in range(1, max(log, default=0) + 1):
        if seq not in log:
            return
        for activation_seq, rid, version in [x for x in scheduled if x[0] <= seq]:
            versions[rid] = version
            scheduled.remove((activation_seq, rid, version))
        batch = log[seq]
        assert isinstance(batch, CommittedBatch)
        for entry in batch.proposal.entries:
            for vote in entry.leaf.votes:
                if vote.model_version != versions[vote.replica_id]:
                    _fail(world, f"seq {seq}: replica {vote.replica_id} voted with version {vote.model_version}, "
                          f"the log has version {versions[vote.replica_id]} in effect")
        for op in batch.proposal.ops:
            if isinstance(op, ModelUpdate) and op.new_version > max([versions[op.replica_id]] + [v for _, r, v in scheduled if r == op.replica_id]):
                scheduled.append((seq + window, op.replica_id, op.new_version))


def _check_certificates(world: World) -> None:
    """Certificates built from committed batches verify offline against the group config and
    the client's request, in compact form and with every voter's signed vote."""
    r = world.correct[0]
    for seq, batch in sorted(world.committed[r].items()):
        if not batch.proposal.entries:
            continue
        leaves = [e.leaf for e in batch.proposal.entries]
        quorum = [QuorumSignature(c.sender, c.signature) for c in batch.commits]
        vote_batches = [
            SignedVoteBatch(vb.sender, vb.batch_no, vb.model_version, tuple(e.hash for e in vb.entries), vb.signature)
            for vb in batch.vote_batches
        ]
        try:
            certificates = build_certificates(batch.header, leaves, quorum, vote_batches)
        except ValueError:
            certificates = build_certificates(batch.header, leaves, quorum)  # arrived by state transfer
        for leaf, certificate in zip(leaves, certificates):
            request = world.requests.get((leaf.client_id, leaf.request_id))
            try:
                verify(decode_certificate(encode_certificate(certificate)), world.configs[batch.header.epoch], request, verifier=world.verifier)
            except CertificateError as exc:
                _fail(world, f"seq {seq}: certificate for {leaf.client_id}/{leaf.request_id} does not verify: {exc}")
