"""The replica runtime: drives the pure consensus core and does all of its I/O.

One asyncio loop (uvloop) owns the core; nothing else touches it. Every call into the core is
followed by `_drain`, which queues the core's `Ready`. A single consumer task handles the queued
Readies strictly in order, and for each group of them:

1. persists their records in ONE SQLite transaction (fsync) on a worker thread: the durability
   rule is that nothing a record protects (a signed message, a vote batch number, a prepared
   proof) leaves this process before that record is on disk, so a replica restarted after
   kill -9 never signs two different things for one slot;
2. sends their messages;
3. starts their inference batches (one Triton call each);
4. builds certificates for their committed batches, stores them (by client and request id) and
   answers the clients waiting for them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from certs.certificate import (
    EncodedCertificate,
    QuorumSignature,
    SignedVoteBatch,
    encode_batch_certificates,
)
from certs.config import GroupConfig, load_group_config
from certs.membership import verify_chain
from certs.evidence import describe_evidence, encode_evidence
from certs.keys import Ed25519Verifier, load_private_key
from certs.outputs import ModelOutput, map_probabilities, quantise
from certs.policy import NO_AGREEMENT
from certs.request import InferenceRequest
from certs.wire import serialize
from consensus.errors import ByzantineMessageError, ConsensusError
from consensus.messages import Commit, ModelUpdate, PeerMessage, PrePrepare, VoteBatch
from consensus.node import ConsensusNode, SubmitOutcome
from consensus.messages import Checkpoint
from consensus.ready import Activation, CommittedBatch, CommittedRecord, ConfigLinkRecord, InferenceBatch, PersistRecord, Ready
from consensus.state import CheckpointSummary
from replica.certificate_fetch import FetchedCertificate, PeerCertificates
from replica.config import ReplicaConfig
from replica.metrics import ReplicaMetrics
from replica.storage import CertificateRow, ReplicaStore
from replica import trace
from replica.admission import DrainRate, refusal
from replica.archive import ArchiveBusyError, ArchiveGate
from replica.transport import PeerTransport
from protos import certificate_pb2 as cpb

log = logging.getLogger("quorumserve.replica")


class ReplicaError(Exception):
    pass


class RequestTimeoutError(ReplicaError, TimeoutError):
    pass


class ReplicaOverloadedError(ReplicaError):
    """The admission rules (replica/admission.py) refused a new request for now; the client may
    ask again, with the same ids, after `retry_after_ms`."""

    def __init__(self, message: str, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


@dataclass(frozen=True, slots=True)
class Certified:
    """What a client gets back: the committed decision's certificate and where it sits."""

    client_id: str
    request_id: str
    seq: int
    certificate: bytes  # encoded certs.certificate.Certificate (with vote proofs when available)
    compact_certificate: bytes


@dataclass
class _Waiters:
    futures: list[asyncio.Future[Certified]] = field(default_factory=list)
    received_s: float = 0.0


def fetch_config_chain(addresses: Sequence[str], timeout_s: float = 5.0) -> list[ConfigLinkRecord]:
    """The config links one of `addresses` serves (the first that answers)."""
    import grpc

    from protos import replica_api_pb2 as api
    from protos import replica_api_pb2_grpc as api_grpc
    from replica.codec import record_from_proto

    for address in addresses:
        try:
            with grpc.insecure_channel(address) as channel:
                reply = api_grpc.ReplicaStub(channel).GetConfigChain(api.ConfigChainRequest(), timeout=timeout_s)
        except grpc.RpcError:
            continue
        links = []
        for item in reply.links:
            record = record_from_proto(_as_record(item))
            if isinstance(record, ConfigLinkRecord):
                links.append(record)
        return links
    return []


def _as_record(link_record: object) -> object:
    from protos import consensus_pb2

    wrapper = consensus_pb2.PersistRecord()
    wrapper.config_link.CopyFrom(link_record)
    return wrapper


def membership_of(
    genesis: GroupConfig, replica_id: int, public_key: bytes, links: Sequence[ConfigLinkRecord]
) -> tuple[GroupConfig, tuple[GroupConfig, int] | None]:
    """The config this replica starts from: genesis if it is a founding member, else the epoch
    it joined (checked link by link from genesis) with (previous config, epoch start)."""
    configs = verify_chain(genesis, [record.link for record in links if record.link.signatures])
    starts = {record.link.config.epoch: record.start_seq for record in links}
    for index, config in enumerate(configs):
        member = config.member(replica_id)
        if member is not None and member.public_key == public_key:
            return config, (None if index == 0 else (configs[index - 1], starts[config.epoch]))
    raise ReplicaError(f"replica {replica_id} with this key is in no epoch of group {genesis.group_id} known here")


class ReplicaNode:
    def __init__(self, config: ReplicaConfig, backend: object | None = None) -> None:
        self.config = config
        self.genesis: GroupConfig = load_group_config(config.group_config)
        self.replica_id = config.replica_id
        self.key = load_private_key(config.key_file)
        self.verifier = Ed25519Verifier()
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = ReplicaStore(config.data_dir / "replica.sqlite", sync=config.storage_sync)
        records = self.store.load_records()
        links = [r for r in records if isinstance(r, ConfigLinkRecord)]
        if self.genesis.member(self.replica_id) is None and not links:
            # a replica that joined after genesis: learn the chain from the group (checked below)
            links = fetch_config_chain(_addresses(self.genesis))
            if links:
                self.store.persist(links)
                records = self.store.load_records()
        start, joined_at = membership_of(self.genesis, self.replica_id, self.key.public_key, links)
        self.group = start
        self.member = start.member(self.replica_id)  # type: ignore[assignment]
        self.metrics = ReplicaMetrics(config.replica_id, self.genesis.group_id)
        self.core = ConsensusNode(start, self.replica_id, self.key.signer(), self.verifier, records, joined_at=joined_at)
        self.group = self.core.config
        self.backend = backend
        self.transport = PeerTransport(
            self.replica_id,
            _peer_addresses(self.core.configs),
            self._on_peer_messages,
            self._on_reject,
        )
        self._io = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"replica-{self.replica_id}-io")
        self._certificates = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"replica-{self.replica_id}-certs")
        # ListCertificates pages: their own thread, and a gate (replica/archive.py)
        self._archive = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"replica-{self.replica_id}-archive")
        self._archive_gate = ArchiveGate()
        self._lookups = 0  # GetCertificate look-ups waiting or running
        self._ready_queue: asyncio.Queue[Ready] = asyncio.Queue()
        # Readies put on the queue and handled so far, and look-ups waiting for the handling to
        # reach a count (ascending): see _readies_settled
        self._readies_queued = 0
        self._readies_handled = 0
        self._drain_rate = DrainRate()  # requests executed per second lately (admission retry hints)
        self._settle_waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._consuming = False  # _consume_ready is running
        self._waiters: dict[tuple[str, str], _Waiters] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._peer_certificates = PeerCertificates(self.replica_id, lambda: _peer_addresses(self.core.configs), lambda epoch: self.core.configs.get(epoch))
        self._background_tasks: set[asyncio.Task[None]] = set()
        self._archive_gaps = asyncio.Event()  # set: a snapshot skipped batches, look for gaps now
        self._core_touched = asyncio.Event()  # set whenever something reaches the core: see _tick_loop
        self._core_sleeping = False  # the tick loop waits on a quiet core: its clock lags
        self._clock_s = 0.0  # the loop time the core's clock stands for
        self._stopping = False
        self.models_file = config.data_dir / "models.json"
        self.started_s = 0.0
        self.log_rate: dict[str, float] = {}
        self._inferred_requests = 0

    # =====================================================================================
    # lifecycle
    # =====================================================================================

    async def start(self) -> None:
        self.started_s = time.monotonic()
        self.metrics.serve(self.config.metrics_port)
        if self.backend is not None:
            await self._load_models()
            # before consensus starts: binding a spare starts Triton processes (about a second
            # of CPU), which an update then needn't, and peers must not wait on it
            await self._prepare_spares()
        # before any client can ask: look-ups run on the same thread, so after it
        self._certificates.submit(self._rebuild_quietly)
        self.transport.start()
        self.metrics.labels(self.metrics.peer_links).set_function(lambda: len(self.transport.connected_peers()))
        self.metrics.labels(self.metrics.peers).set_function(lambda: len(self.transport.peer_ids))
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._consume_ready(), name="ready"))
        self._tasks.append(loop.create_task(self._tick_loop(), name="tick"))
        self._tasks.append(loop.create_task(self._repair_archive(), name="archive"))
        log.info(
            "replica %d of group %s started: view %d, executed seq %d, model version %d",
            self.replica_id, self.group.group_id, self.core.view, self.core.executed_seq, self.core.model_version,
        )

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks + list(self._background_tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._background_tasks, return_exceptions=True)
        await self.transport.stop()
        await self._peer_certificates.close()
        for waiters in self._waiters.values():
            for future in waiters.futures:
                if not future.done():
                    future.set_exception(ReplicaError("replica stopping"))
        self._certificates.shutdown(wait=True)
        self._archive.shutdown(wait=True)
        self._io.shutdown(wait=True)
        self.store.close()

    def model_packages(self) -> dict[int, dict[str, str]]:
        """version -> {"package": path, "digest": hex}: where each of this replica's versions lives."""
        packages = {self.config.model_version: {"package": str(self.config.model_package), "digest": self.member.weights_digest.hex()}}
        if self.models_file.exists():
            for version, entry in json.loads(self.models_file.read_text()).items():
                packages[int(version)] = entry
        return packages

    def record_model_package(self, version: int, package: Path, digest: bytes) -> None:
        packages = {str(v): e for v, e in self.model_packages().items()}
        packages[str(version)] = {"package": str(package), "digest": digest.hex()}
        tmp = self.models_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(packages, indent=2))
        tmp.replace(self.models_file)

    async def _load_models(self) -> None:
        """Load the version in effect, and any newer one already ordered for later activation."""
        backend = self.backend
        packages = self.model_packages()
        current = self.core.model_version
        wanted = sorted(v for v in packages if v >= current and v <= self.core.state.latest_version(self.replica_id))
        for version in wanted or [current]:
            entry = packages.get(version)
            if entry is None:
                raise ReplicaError(f"no model package recorded for version {version} of replica {self.replica_id}")
            await backend.load_async(version, entry["package"], expected_digest=bytes.fromhex(entry["digest"]))  # type: ignore[attr-defined]
            log.info("replica %d: model version %d loaded from %s", self.replica_id, version, entry["package"])
        if self.config.misbehave == "swap-weak" and self.config.weak_package is not None:
            # tests only: a cheaper model held ready to be swapped in silently, unannounced
            await backend.load_async(SWAPPED_MODEL_VERSION, self.config.weak_package)  # type: ignore[attr-defined]
        self.metrics.labels(self.metrics.model_version).set(current)

    async def _prepare_spares(self) -> None:
        try:
            await self.backend.prepare_spares_async()  # type: ignore[attr-defined]
        except Exception as exc:  # a missing spare only makes the next update dearer
            log.warning("replica %d: no spare Triton model prepared: %s", self.replica_id, exc)

    async def _tick_loop(self) -> None:
        """Tick the core every tick_interval_ms while it has work under way. While it is quiet
        (core.quiet(): nothing pending, in flight or armed) sleep until something reaches it, or
        QUIET_TICK_INTERVAL_S at most for its periodic work: an idle replica used to wake 200
        times a second for nothing (about 0.03 cores per replica). The core's clock then lags
        the wall clock; _catch_up_clock() advances it by the ticks that passed, here and before
        anything is handed to a sleeping core, so what it stamps on arrival (batching delays,
        vote timeouts) is as fresh as under regular ticks."""
        interval_s = self.group.params.tick_interval_ms / 1000
        loop = asyncio.get_running_loop()
        self._clock_s = loop.time()
        woke = False
        while True:
            if self.core.quiet():
                self._core_touched.clear()
                self._core_sleeping = True
                # a timer setting the event rather than asyncio.wait_for, which (Python 3.11) can
                # swallow a cancellation that meets the wake-up, and stop() would wait forever
                timer = loop.call_later(QUIET_TICK_INTERVAL_S, self._core_touched.set)
                try:
                    await self._core_touched.wait()
                finally:
                    timer.cancel()
                    self._core_sleeping = False
                self._catch_up_clock()
                woke = True
            else:
                # busy: one tick per pass, however long the pass took. The first pass after a
                # wake keeps the clock's phase (the next tick is due at _clock_s + a tick, 2.5 ms
                # away on average, as under regular ticks), not a whole tick from the wake
                delay_s = self._clock_s + interval_s - loop.time() if woke else interval_s
                woke = False
                await asyncio.sleep(max(delay_s, 0.0))
                self._clock_s = loop.time()
                self.core.tick()
            self._drain()

    def _wake_core(self) -> None:
        """Before handing anything to the core: if the tick loop left it unticked (quiet), bring
        its clock up to date first, so what it stamps on arrival is fresh."""
        if self._core_sleeping:
            self._catch_up_clock()

    def _catch_up_clock(self) -> None:
        """Advance a core that was left unticked by the whole ticks since `_clock_s` (the wall
        time its clock stands for; what is left of a tick carries over, so wakes closer together
        than a tick, from a chatty peer, still add up)."""
        interval_s = self.group.params.tick_interval_ms / 1000
        elapsed_ticks = int((asyncio.get_running_loop().time() - self._clock_s) / interval_s)
        if elapsed_ticks > 0:
            self._clock_s += elapsed_ticks * interval_s
            self.core.tick(elapsed_ticks)

    # =====================================================================================
    # into the core
    # =====================================================================================

    def _spawn(self, work: Coroutine[object, object, None]) -> None:
        """Run `work` beside the ordering; stop() cancels whatever is still running."""
        task = asyncio.get_running_loop().create_task(work)
        self._background_tasks.add(task)
        task.add_done_callback(self._background_tasks.discard)

    def _drain(self) -> None:
        self._core_touched.set()
        if self.core.has_ready():
            self._ready_queue.put_nowait(self.core.ready())
            self._readies_queued += 1

    def _on_peer_messages(self, sender: int, messages: list[PeerMessage]) -> None:
        self._wake_core()
        traced = trace.enabled()
        for message in messages:
            if traced and isinstance(message, PrePrepare):
                trace.event("pre-prepare", message.seq)
            elif traced and isinstance(message, VoteBatch):
                keys = [k for e in message.entries if (k := trace.request_key(e.client_id, e.request_id)) is not None]
                if keys:
                    trace.event("vote-in", ",".join(keys))
            try:
                self.core.step(message, via=sender)
            except ByzantineMessageError as exc:
                self._on_reject(exc.kind, str(exc))
            except ConsensusError as exc:
                self._on_reject("local", f"message from {sender}: {exc}")
        self._drain()

    def _on_reject(self, reason: str, detail: str) -> None:
        self.metrics.labels(self.metrics.rejected, reason=reason).inc()
        now = time.monotonic()
        if now - self.log_rate.get(reason, 0.0) > 5.0:  # at most one line per reason every 5 s
            self.log_rate[reason] = now
            log.warning("replica %d rejected a message (%s): %s", self.replica_id, reason, detail)

    def submit(
        self, request: InferenceRequest, *, fanout: bool, timeout_s: float | None = None
    ) -> tuple[SubmitOutcome, asyncio.Future[Certified]]:
        """Hand a client request to consensus; the future resolves with its certificate.
        Raises RequestRejectedError for a request the group will not take, and
        ReplicaOverloadedError for one it does not take now (`timeout_s`: how long its client
        waits, see _admit)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Certified] = loop.create_future()
        traced = trace.request_key(request.client_id, request.request_id)
        if traced is not None:
            trace.event("received", traced)
        self._admit(request, timeout_s)
        self._wake_core()
        outcome = self.core.submit(request, disseminate=not fanout)
        self.metrics.labels(self.metrics.requests, outcome=outcome.status).inc()
        if outcome.status == "executed":
            self._resolve_executed(request.client_id, request.request_id, [future])
        else:
            waiters = self._waiters.setdefault(request.key, _Waiters(received_s=time.monotonic()))
            waiters.futures.append(future)
            log.debug("request %s/%s accepted (%s)", request.client_id, request.request_id, outcome.status)
        self._drain()
        return outcome, future

    def _admit(self, request: InferenceRequest, timeout_s: float | None) -> None:
        """Refuse a new request (ReplicaOverloadedError) by the admission rules
        (replica/admission.py): past the hard limits, or when what the replica holds would keep
        it waiting too long of its client's `timeout_s` at the rate it executed lately.

        Only client requests pass here: requests relayed by peers and those in proposals are
        always taken (they are the group's work already, and a relay is how a request this
        replica refused still gets its vote), and a client asking again for ids the replica
        holds adds nothing, so it gets its answer."""
        core = self.core
        refused = refusal(
            self.config.admission, core.held_requests, core.held_request_bytes, self._drain_rate.per_s(time.monotonic()), timeout_s
        )
        if refused is None or core.knows_request(request):
            return
        self.metrics.labels(self.metrics.requests, outcome="overloaded").inc()
        raise ReplicaOverloadedError(
            f"replica {self.replica_id} is overloaded: {refused.reason}; retry with the same ids in about {refused.retry_after_ms} ms",
            refused.retry_after_ms,
        )

    def _resolve_executed(self, client_id: str, request_id: str, futures: Sequence[asyncio.Future[Certified]]) -> None:
        """Answer clients asking about a request this replica knows executed: the certificate
        it stored, or else one fetched from a peer, or else word to ask another replica. None is
        stored when the batch was executed within a state-transfer snapshot (a peer's copy
        certifies the same decision, perhaps under another commit quorum). A request that
        arrives after its batch executed here but before the certificates were built (a slow
        client link: the group ordered it on the others' votes) finds it stored, since the
        look-up waits for the build (`get_certificate`), and costs no peer a fetch."""

        async def resolve() -> None:
            certified = await self.get_certificate(client_id, request_id)
            if certified is None:
                certified = await self._certificate_from_peers(client_id, request_id)
            for future in futures:
                if future.done():
                    continue
                if certified is None:
                    future.set_exception(ReplicaError(f"{client_id}/{request_id} was executed before this replica's records start and no peer gave its certificate; ask another replica"))
                else:
                    future.set_result(certified)

        self._spawn(resolve())

    def _answer_unseen(self, keys: Sequence[tuple[str, str]]) -> None:
        """A snapshot showed these requests executed: this replica never saw their batches, so
        their waiting clients are answered now, not at their timeout."""
        for key in keys:
            waiters = self._waiters.pop(key, None)
            if waiters is not None:
                self._resolve_executed(key[0], key[1], waiters.futures)

    async def _repair_archive(self) -> None:
        """For the replica's life: fill its archive's gaps with certificates from peers.

        A gap is an executed request with no certificate here: one of the batches a
        state-transfer snapshot skipped. Looking for gaps in the store, rather than remembering
        the ranges snapshots skipped, also finds what a restart interrupted and what no peer had
        last time. It runs at start-up, after each snapshot (`_archive_gaps` is set), and, while
        some are still missing, again after ARCHIVE_RETRY_FIRST_S, doubling up to
        ARCHIVE_RETRY_MAX_S."""
        retry_s = ARCHIVE_RETRY_FIRST_S
        while True:
            self._archive_gaps.clear()
            try:
                missing = await self._fill_archive_gaps()
            except Exception:  # a store or peer failure must not end the loop: try again later
                log.exception("replica %d: filling in missing certificates failed", self.replica_id)
                missing = -1
            if not missing:
                retry_s = ARCHIVE_RETRY_FIRST_S
                await self._archive_gaps.wait()
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._archive_gaps.wait(), retry_s)
            retry_s = min(retry_s * 2, ARCHIVE_RETRY_MAX_S)

    async def _fill_archive_gaps(self) -> int:
        """One pass over the store's gaps, a range of consecutive batches at a time; returns
        how many certificates no peer gave."""
        loop = asyncio.get_running_loop()
        after_seq = got_total = missing_total = 0
        while True:
            gaps = await loop.run_in_executor(self._certificates, self.store.certificate_gaps, after_seq, ARCHIVE_GAPS_PER_READ)
            if len(gaps) == ARCHIVE_GAPS_PER_READ:
                # a batch's requests come together (a batch is smaller than a read): the last
                # seq may go on in the next read, so it waits for that one
                last_seq = gaps[-1][2]
                gaps = [gap for gap in gaps if gap[2] < last_seq] or gaps
            if not gaps:
                break
            for first_seq, last_seq, expected in _gap_ranges(gaps):
                got = await self._peer_certificates.fetch_range(first_seq - 1, last_seq, expected, self._keep_fetched)
                got_total += got
                missing_total += len(expected) - got
            after_seq = gaps[-1][2]
        if missing_total:
            self.metrics.labels(self.metrics.peer_certificates, outcome="missing").inc(missing_total)
        if got_total or missing_total:
            log.info(
                "replica %d: %d certificates this replica lacked (batches a snapshot skipped) fetched from peers%s",
                self.replica_id, got_total, f", {missing_total} found at no peer (asked again later)" if missing_total else "",
            )
        return missing_total

    async def _keep_fetched(self, fetched: list[FetchedCertificate]) -> None:
        """Store certificates fetched from peers, so that look-ups here find them."""
        by_seq: dict[int, list[CertificateRow]] = {}
        for item in fetched:
            leaf = item.certificate.leaf
            by_seq.setdefault(item.certificate.header.seq, []).append(CertificateRow(leaf.client_id, leaf.request_id, leaf.request_digest, item.encoded))
        await asyncio.get_running_loop().run_in_executor(self._certificates, self._put_fetched, by_seq)
        self.metrics.labels(self.metrics.peer_certificates, outcome="fetched").inc(len(fetched))

    def _put_fetched(self, by_seq: dict[int, list[CertificateRow]]) -> None:
        for seq, rows in by_seq.items():
            try:
                self.store.put_certificates(seq, rows, durable=False)
            except Exception:  # checked against the replicated state, so this is a local fault
                log.exception("replica %d: storing fetched certificates of seq %d failed", self.replica_id, seq)

    async def _certificate_from_peers(self, client_id: str, request_id: str) -> Certified | None:
        executed = self.core.state.executed.get((client_id, request_id))
        if executed is None:
            return None
        try:
            fetched = await self._peer_certificates.fetch(client_id, request_id, executed)
        except Exception:
            log.exception("replica %d: fetching the certificate of %s/%s from peers failed", self.replica_id, client_id, request_id)
            return None
        if fetched is None:
            self.metrics.labels(self.metrics.peer_certificates, outcome="missing").inc()
            log.info("replica %d: no peer gave the certificate of %s/%s (executed at seq %d)", self.replica_id, client_id, request_id, executed[0])
            return None
        await self._keep_fetched([fetched])
        log.info("replica %d: certificate of %s/%s (seq %d, none stored here) fetched from replica %d", self.replica_id, client_id, request_id, executed[0], fetched.replica_id)
        return _certified(client_id, request_id, fetched.encoded)

    def submit_control(self, op: ModelUpdate) -> None:
        self._wake_core()
        self.core.submit_control(op)
        self._drain()

    async def list_evidence(self, after_id: int, limit: int) -> list[tuple[int, bytes, str]]:
        """Stored evidence items (id, encoded certs.evidence.Evidence, one-line summary)."""
        return await asyncio.get_running_loop().run_in_executor(self._certificates, self.store.list_evidence, after_id, min(limit, 1000))

    async def config_links(self) -> list[ConfigLinkRecord]:
        return await asyncio.get_running_loop().run_in_executor(self._certificates, self.store.config_links)

    def ledger(self) -> tuple[CheckpointSummary, tuple[Checkpoint, ...]] | None:
        """The ledger as of the last stable checkpoint, with the checkpoint's quorum proof."""
        core = self.core
        summary = core.summaries.get(core.low)
        if summary is None or not core.stable_proof:
            return None
        return summary, core.stable_proof

    async def activations(self) -> list[Activation]:
        return await asyncio.get_running_loop().run_in_executor(self._certificates, self.store.activations)

    async def get_certificate(self, client_id: str, request_id: str) -> Certified | None:
        """The stored certificate, counting every batch the core executed before the call: the
        look-up runs on the certificates thread after their builds. ArchiveBusyError when
        CERTIFICATE_LOOKUPS_MAX look-ups wait already: that thread builds every certificate
        this replica serves, and a caller flooding it with look-ups must not queue them ahead."""
        if self._lookups >= CERTIFICATE_LOOKUPS_MAX:
            self.metrics.labels(self.metrics.certificate_lookups, outcome="refused").inc()
            raise ArchiveBusyError(f"replica {self.replica_id} has {self._lookups} certificate look-ups waiting; retry shortly", 0.05)
        self._lookups += 1
        try:
            await self._readies_settled()
            found = await asyncio.get_running_loop().run_in_executor(self._certificates, self._load_certified, client_id, request_id)
        finally:
            self._lookups -= 1
        self.metrics.labels(self.metrics.certificate_lookups, outcome="served").inc()
        return found

    async def _readies_settled(self) -> None:
        """Return once `_consume_ready` has handled every Ready queued before the call. By then
        each batch the core had executed has its certificates' build queued on the
        certificates thread (`_certify`), ahead of anything submitted there afterwards."""
        target = self._readies_queued
        if self._readies_handled >= target or not self._consuming:
            return  # nothing on its way, or nothing to wait for (not started, or stopping)
        settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._settle_waiters.append((target, settled))
        await settled

    async def list_certificates(self, after_seq: int, through_seq: int, limit: int) -> tuple[list[tuple[int, bytes]], int, bool]:
        """A page of the archive; ArchiveBusyError when the gate turns it away (replica/archive.py)."""
        try:
            self._archive_gate.admit(time.monotonic())
        except ArchiveBusyError:
            self.metrics.labels(self.metrics.archive_pages, outcome="refused").inc()
            raise
        try:
            page = await asyncio.get_running_loop().run_in_executor(
                self._archive, self.store.certificates_between, after_seq, through_seq, limit
            )
        finally:
            self._archive_gate.done()
        self.metrics.labels(self.metrics.archive_pages, outcome="served").inc()
        return page

    def _load_certified(self, client_id: str, request_id: str) -> Certified | None:
        full = self.store.get_certificate(client_id, request_id)
        return None if full is None else _certified(client_id, request_id, full)

    # =====================================================================================
    # out of the core
    # =====================================================================================

    async def _consume_ready(self) -> None:
        self._consuming = True
        try:
            await self._consume_readies()
        finally:
            self._consuming = False
            self._release_settle_waiters(None)  # look-ups go ahead with what is stored

    async def _consume_readies(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            readies = [await self._ready_queue.get()]
            while not self._ready_queue.empty():
                readies.append(self._ready_queue.get_nowait())  # group commit: one fsync for all
            records = [record for ready in readies for record in ready.persist]
            if records:
                if any(ready.messages for ready in readies) or not all(isinstance(r, CommittedRecord) for r in records):
                    started = time.monotonic()
                    await loop.run_in_executor(self._io, self._persist, records)
                    self.metrics.labels(self.metrics.persist_latency).observe(time.monotonic() - started)
                else:
                    # committed batches protect no message this replica sends (the quorum's
                    # signatures already make them final): write them without waiting; the single
                    # I/O thread keeps every write in order
                    self._io.submit(self._persist_quietly, records)
            for ready in readies:
                try:
                    self._handle(ready)
                except Exception:  # a bug here must not stop the replica from ordering
                    log.exception("replica %d: failed to handle a ready batch", self.replica_id)
            committed = [batch for ready in readies for batch in ready.committed]
            if committed:
                self._drain_rate.add(sum(batch.header.leaf_count for batch in committed), time.monotonic())
                if trace.enabled():
                    for batch in committed:
                        trace.event("committed", batch.header.seq)
                # certificates are built beside the ordering, never in its way
                self._certify(committed)
            self._readies_handled += len(readies)
            self._release_settle_waiters(self._readies_handled)

    def _release_settle_waiters(self, handled: int | None) -> None:
        """Let go the look-ups waiting for at most `handled` Readies (all of them when None)."""
        waiters = self._settle_waiters
        while waiters and (handled is None or waiters[0][0] <= handled):
            settled = waiters.popleft()[1]
            if not settled.done():  # its look-up may have been cancelled
                settled.set_result(None)

    def _persist(self, records: list[PersistRecord]) -> None:
        """One durable write, on the I/O thread, timed by itself (`persist_write`)."""
        started = time.perf_counter()
        self.store.persist(records)
        self.metrics.labels(self.metrics.persist_write).observe(time.perf_counter() - started)

    def _persist_quietly(self, records: list[PersistRecord]) -> None:
        try:
            self._persist(records)
        except Exception:
            log.exception("replica %d: writing committed batches failed", self.replica_id)

    def _on_config_links(self, records: Sequence[ConfigLinkRecord]) -> None:
        for record in records:
            config = record.link.config
            self.transport.add_peers(_peer_addresses({config.epoch: config}))
            if config.epoch == self.core.config.epoch:
                self.group = config
                if self.core.retired:
                    log.warning("replica %d left group %s at epoch %d; it keeps serving its certificates", self.replica_id, config.group_id, config.epoch)

    def _handle(self, ready: Ready) -> None:
        if ready.config_links:
            self._on_config_links(ready.config_links)
        for event in ready.events:
            level = logging.WARNING if event.kind in ("view-change", "state-divergence", "rejected", "control-dropped") else logging.INFO
            log.log(level, "replica %d %s: %s", self.replica_id, event.kind, event.detail)
            if event.kind == "view-change":
                self.metrics.labels(self.metrics.view_changes).inc()
        if ready.evidence:
            rows = []
            for item in ready.evidence:
                summary = describe_evidence(item, item.accused, self.core.config)
                self.metrics.labels(self.metrics.evidence, accused=",".join(map(str, item.accused))).inc()
                log.warning("replica %d holds evidence: %s", self.replica_id, summary)
                rows.append((encode_evidence(item), summary))
            self._io.submit(self.store.put_evidence, rows)
        if self.config.misbehave == "silent":
            pass  # a silent replica sends nothing at all
        else:
            for out in ready.messages:
                self._send(out.to, out.message)
        for batch in ready.inference:
            self._spawn(self._infer(batch))
        for activation in ready.activations:
            if activation.replica_id == self.replica_id:
                self.metrics.labels(self.metrics.model_version).set(activation.version)
                self._after_activation(activation.version)
        if ready.activations:
            self._io.submit(self.store.put_activations, list(ready.activations))
        if ready.executed_unseen:
            self._answer_unseen(ready.executed_unseen)
        if ready.skipped_batches:
            self._archive_gaps.set()  # the snapshot is on disk (persisted before this runs)
        core = self.core
        self.metrics.labels(self.metrics.view).set(core.view)
        self.metrics.labels(self.metrics.seq).set(core.executed_seq)
        self.metrics.labels(self.metrics.stable_seq).set(core.low)
        self.metrics.labels(self.metrics.pending).set(len(core.pending))
        self.metrics.labels(self.metrics.pending_bytes).set(core.held_request_bytes)

    def _send(self, to: int | None, message: PeerMessage) -> None:
        if trace.enabled():
            if isinstance(message, PrePrepare):
                trace.event("pre-prepare", message.seq)
            elif isinstance(message, Commit):
                trace.event("commit-sent", message.seq)
        self.metrics.labels(self.metrics.sent, kind=type(message).__name__).inc()
        if self.config.misbehave == "equivocate" and isinstance(message, VoteBatch) and to is None:
            # tests only: sign a second, different batch under the same number for half the peers
            peers = self.transport.peer_ids
            half = peers[: len(peers) // 2]
            other = _flip_labels(message, len(self.group.task.class_labels))
            other = VoteBatch(other.sender, other.epoch, other.batch_no, other.model_version, other.entries,
                              self.key.signer().sign(other.statement(self.group.group_id).message()))
            from replica.codec import encode_peer_message

            self.transport.send_encoded(half, encode_peer_message(other))
            self.transport.send_encoded([p for p in peers if p not in half], encode_peer_message(message))
            return
        self.transport.send(to, message)

    def _after_activation(self, version: int) -> None:
        """This replica's new model version is in effect: the older ones can go."""
        backend = self.backend
        if backend is None:
            return
        older = [v for v in backend.loaded_versions() if v < version]  # type: ignore[attr-defined]

        async def unload() -> None:
            if version not in backend.loaded_versions():  # type: ignore[attr-defined]
                # learned by state transfer after a restart: load it (its package was recorded
                # when the owner handed the update to this replica) before dropping the old one
                entry = self.model_packages().get(version)
                if entry is None:
                    log.error("replica %d: version %d is in effect but its package is unknown here", self.replica_id, version)
                    return
                await backend.load_async(version, entry["package"], expected_digest=bytes.fromhex(entry["digest"]))  # type: ignore[attr-defined]
            for v in older:
                try:
                    await backend.unload_async(v)  # type: ignore[attr-defined]
                    log.info("replica %d: model version %d unloaded after version %d took effect", self.replica_id, v, version)
                except Exception as exc:
                    log.warning("replica %d: could not unload model version %d: %s", self.replica_id, v, exc)
            # the retired version's model is normally the next spare already; this only binds
            # one when none is left (a failed load drops the spare it used) or none fits
            await self._prepare_spares()

        self._spawn(unload())

    # =====================================================================================
    # inference
    # =====================================================================================

    async def _infer(self, batch: InferenceBatch) -> None:
        task = self.group.task
        started = time.monotonic()
        try:
            dtype = np.dtype(_NUMPY_DTYPES[task.input_datatype])
            rows = np.stack(
                [np.frombuffer(r.inputs[0].data, dtype=dtype).reshape(task.input_shape) for r in batch.requests]
            )
            version = batch.model_version
            if self.config.misbehave == "swap-weak" and self._inferred_requests >= self.config.swap_after_requests:
                version = SWAPPED_MODEL_VERSION  # tests only: answer with the weak model, claim the signed one
            probabilities = await self.backend.infer(version, rows)  # type: ignore[attr-defined]
            self._inferred_requests += len(batch.requests)
            outputs: list[ModelOutput] = []
            for request, space, row in zip(batch.requests, batch.label_spaces, probabilities):
                if space:
                    _, mapped = map_probabilities(row[None, :], task.class_labels, dict(request.label_mapping))
                    row = mapped[0]
                classes = len(space) or len(task.class_labels)
                if self.config.misbehave == "wrong-labels":
                    row = np.roll(row, 1)  # tests only: every answer shifted to the next class
                outputs.append(quantise(row, min(task.top_k, classes)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("replica %d: inference batch %d failed: %s", self.replica_id, batch.batch_id, exc)
            self.metrics.labels(self.metrics.inference_failures).inc()
            self.core.inference_failed(batch.batch_id)
            self._drain()
            return
        self.metrics.labels(self.metrics.triton_latency).observe(time.monotonic() - started)
        if trace.enabled():
            traced = [key for r in batch.requests if (key := trace.request_key(r.client_id, r.request_id)) is not None]
            if traced:
                trace.event("inferred", ",".join(traced))
        self.metrics.labels(self.metrics.inference_batches).inc()
        self.metrics.labels(self.metrics.inference_requests).inc(len(batch.requests))
        self.core.executed(batch.batch_id, outputs)
        self._drain()

    # =====================================================================================
    # certificates
    # =====================================================================================

    def _certify(self, batches: Sequence[CommittedBatch]) -> None:
        """Queue the build of these batches' certificates on the certificates thread, now: a
        look-up queued there afterwards runs after it (see `_readies_settled`)."""
        loop = asyncio.get_running_loop()

        def on_built(certified: list[Certified]) -> None:
            # on the certificates thread, before the write: the clients need not wait for it
            try:
                loop.call_soon_threadsafe(self._answer_waiters, certified)
            except RuntimeError:  # the loop closed: the replica is stopping
                pass

        built = loop.run_in_executor(self._certificates, self._build_and_store, list(batches), on_built)
        self._spawn(self._log_certified(built, batches))

    async def _log_certified(self, built: asyncio.Future[None], batches: Sequence[CommittedBatch]) -> None:
        await built
        for batch in batches:
            self.metrics.labels(self.metrics.batches).inc()
            log.info(
                "replica %d committed seq %d (view %d): %d requests%s",
                self.replica_id, batch.header.seq, batch.header.view,
                len(batch.proposal.entries) - len(batch.duplicate_entries),
                " (state transfer)" if batch.via_state_transfer else "",
            )

    def _answer_waiters(self, results: list[Certified]) -> None:
        now = time.monotonic()
        for certified in results:
            waiters = self._waiters.pop((certified.client_id, certified.request_id), None)
            if waiters is None:
                continue
            self.metrics.labels(self.metrics.commit_latency).observe(now - waiters.received_s)
            traced = trace.request_key(certified.client_id, certified.request_id)
            if traced is not None:
                trace.event("certified", f"{traced}@{certified.seq}")
            for future in waiters.futures:
                if not future.done():
                    future.set_result(certified)

    def _build_and_store(self, batches: list[CommittedBatch], on_built: Callable[[list[Certified]], object]) -> None:
        """On the certificates thread: certificates for every request of the batches, stored by id.

        `on_built` gets each batch's certificates as soon as they are built, before they are
        written: a certificate is final once built (its quorum's signatures make it so) and the
        write only serves later look-ups, which run on this same thread and so after it. A
        write lost in a crash is redone at start-up (`_rebuild_certificates`)."""
        for batch in batches:
            built = self._build_certificates(batch)
            if built is None:
                continue
            rows, certified = built
            on_built(certified)
            self.store.put_certificates(batch.header.seq, rows, durable=False)
            self.metrics.labels(self.metrics.certified).inc(len(rows))

    def _build_certificates(self, batch: CommittedBatch) -> tuple[list[CertificateRow], list[Certified]] | None:
        entries = batch.proposal.entries
        if not entries:
            return None
        seq = batch.header.seq
        encoded = batch_encoded_certificates(batch)
        duplicates = set(batch.duplicate_entries)
        rows: list[CertificateRow] = []
        certified: list[Certified] = []
        votes_by_voter: dict[int, int] = {}
        for index, (entry, certificate) in enumerate(zip(entries, encoded)):
            if index in duplicates:
                continue
            leaf = entry.leaf
            rows.append(CertificateRow(leaf.client_id, leaf.request_id, leaf.request_digest, certificate.full))
            certified.append(Certified(leaf.client_id, leaf.request_id, seq, certificate.full, certificate.compact))
            for vote in leaf.votes:
                votes_by_voter[vote.replica_id] = votes_by_voter.get(vote.replica_id, 0) + 1
                if leaf.decision.label != NO_AGREEMENT and vote.output.label != leaf.decision.label:
                    self.metrics.labels(self.metrics.disagreeing_votes, voter=str(vote.replica_id)).inc()
            log.debug("request %s/%s certified at seq %d: label %d", leaf.client_id, leaf.request_id, batch.header.seq, leaf.decision.label)
        for voter, count in votes_by_voter.items():
            self.metrics.labels(self.metrics.certified_votes, voter=str(voter)).inc(count)
        return rows, certified

    def _rebuild_quietly(self) -> None:
        try:
            self._rebuild_certificates()
        except Exception:  # a replica that cannot rebuild still orders and answers new requests
            log.exception("replica %d: rebuilding certificates failed", self.replica_id)

    def _rebuild_certificates(self) -> int:
        """On the certificates thread at start-up: certificates for the committed batches after
        the last one whose certificates were written (a crash can lose those writes, never the
        batches, which are written first). Returns how many certificates it wrote."""
        written = 0
        after = self.store.last_certified_seq()
        while True:
            batches = self.store.committed_after(after, REBUILD_BATCHES_PER_READ)
            if not batches:
                break
            for batch in batches:
                built = self._build_certificates(batch)
                if built is not None:
                    self.store.put_certificates(batch.header.seq, built[0], durable=False)
                    written += len(built[0])
            after = batches[-1].header.seq
        if written:
            log.info("replica %d rebuilt %d certificates of batches committed before it stopped", self.replica_id, written)
        return written

    # =====================================================================================
    # status
    # =====================================================================================

    def status(self) -> dict[str, object]:
        core = self.core
        state = "normal" if core.view_active else "view-change"
        if core.fetching_state_since is not None:
            state = "state-transfer"
        if core.retired:
            state = "retired"
        versions = core.state.versions_at(core.executed_seq + 1)
        loaded = tuple(self.backend.loaded_versions()) if self.backend is not None else ()  # type: ignore[attr-defined]
        triton_models = self.backend.triton_models() if self.backend is not None else {}  # type: ignore[attr-defined]
        return {
            "group_id": self.core.config.group_id,
            "epoch": self.core.config.epoch,
            "config_digest": self.core.config.digest,
            "replica_id": self.replica_id,
            "view": core.view,
            "primary": core.primary,
            "state": state,
            "executed_seq": core.executed_seq,
            "stable_seq": core.low,
            "pending_requests": len(core.pending),
            "versions": sorted((rid, v, wd) for rid, (v, wd) in versions.items()),
            "loaded_versions": loaded,
            "triton_models": triton_models,
            "connected_peers": self.transport.connected_peers(),
            "peers": self.transport.peer_ids,
        }


def batch_encoded_certificates(batch: CommittedBatch) -> list[EncodedCertificate]:
    """One certificate per leaf of a committed batch, as bytes: the stored form, with each
    voter's signed vote, and the compact one a client is sent; compact only when a vote batch is
    missing (the batch arrived by state transfer)."""
    leaves = [e.leaf for e in batch.proposal.entries]
    quorum = [QuorumSignature(c.sender, c.signature) for c in batch.commits]
    vote_batches = [
        SignedVoteBatch(vb.sender, vb.batch_no, vb.model_version, tuple(e.hash for e in vb.entries), vb.signature, vb.entries)
        for vb in batch.vote_batches
    ]
    try:
        return encode_batch_certificates(batch.header, leaves, quorum, vote_batches)
    except ValueError:
        return encode_batch_certificates(batch.header, leaves, quorum)


def _certified(client_id: str, request_id: str, full: bytes) -> Certified:
    """A stored or fetched certificate as a client gets it: as held, and compact. The bytes are
    this replica's own encoding, or a peer's that the strict decoder read before they were kept,
    so protobuf's parser is enough (the strict decoder and a re-encode cost a look-up about
    twenty times as much)."""
    message = cpb.Certificate.FromString(full)
    if not message.vote_proofs:
        return Certified(client_id, request_id, message.header.seq, full, full)
    message.ClearField("vote_proofs")
    return Certified(client_id, request_id, message.header.seq, full, serialize(message))


def _gap_ranges(gaps: Sequence[tuple[str, str, int, bytes]]) -> list[tuple[int, int, dict[tuple[str, str], tuple[int, bytes]]]]:
    """Missing certificates (in seq order) as ranges of batches to ask peers for: (first seq,
    last seq, request -> (seq, digest)). Gaps close together share a range; one far away starts
    a new one, so a peer is not asked to page through batches held here already."""
    ranges: list[tuple[int, int, dict[tuple[str, str], tuple[int, bytes]]]] = []
    for client_id, request_id, seq, digest in gaps:
        if not ranges or seq - ranges[-1][1] > ARCHIVE_GAP_SEQS_MAX:
            ranges.append((seq, seq, {}))
        first_seq, _, expected = ranges[-1]
        expected[(client_id, request_id)] = (seq, digest)
        ranges[-1] = (first_seq, seq, expected)
    return ranges


def _addresses(config: GroupConfig) -> list[str]:
    return [m.address for m in config.members]


def _peer_addresses(configs: Mapping[int, GroupConfig]) -> dict[int, str]:
    """Every replica of the known epochs, the latest address winning."""
    peers: dict[int, str] = {}
    for epoch in sorted(configs):
        for member in configs[epoch].members:
            peers[member.replica_id] = member.address
    return peers


QUIET_TICK_INTERVAL_S = 0.1  # how often a quiet core is ticked (its periodic work is per 40 ticks)
REBUILD_BATCHES_PER_READ = 256  # committed batches read at a time when rebuilding certificates
ARCHIVE_GAPS_PER_READ = 8192  # missing certificates read at a time (more than a batch holds)
CERTIFICATE_LOOKUPS_MAX = 256  # GetCertificate look-ups waiting at once (about 0.1 ms each)
ARCHIVE_GAP_SEQS_MAX = 16  # gaps this many seqs apart or less are fetched as one range
ARCHIVE_RETRY_FIRST_S = 30.0  # then doubling: what no peer had is asked for again
ARCHIVE_RETRY_MAX_S = 600.0
SWAPPED_MODEL_VERSION = 1_000_000  # where the swap-weak misbehaviour keeps its hidden model

_NUMPY_DTYPES = {
    "BOOL": "bool", "UINT8": "uint8", "INT8": "int8", "UINT16": "uint16", "INT16": "int16",
    "FP16": "float16", "UINT32": "uint32", "INT32": "int32", "FP32": "float32",
    "UINT64": "uint64", "INT64": "int64", "FP64": "float64",
}


def _flip_labels(batch: VoteBatch, num_classes: int) -> VoteBatch:
    from certs.batch import VoteEntry

    entries = []
    for entry in batch.entries:
        top = entry.output.top
        classes = len(entry.label_space) or num_classes
        cls = (top[0][0] + 1) % classes
        entries.append(VoteEntry(entry.client_id, entry.request_id, entry.request_digest, entry.label_space, ModelOutput(((cls, 10_000),))))
    return VoteBatch(batch.sender, batch.epoch, batch.batch_no, batch.model_version, tuple(entries), b"")


