"""Prometheus metrics of one replica (served on `metrics_port`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# a durable write takes a quarter of a millisecond on an idle local disk, fsync included
_WRITE_BUCKETS_S = (0.00025, 0.0005, *_LATENCY_BUCKETS_S)


class ReplicaMetrics:
    def __init__(self, replica_id: int, group_id: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"replica": str(replica_id), "group": group_id}
        r = self.registry

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, ("replica", "group", *extra), registry=r)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, ("replica", "group"), registry=r)

        self._labels = labels
        self._children: dict[tuple[object, ...], object] = {}
        self.requests = counter("quorumserve_requests_total", "client requests received", ("outcome",))
        self.certified = counter("quorumserve_certified_requests_total", "requests certified by this replica")
        self.batches = counter("quorumserve_committed_batches_total", "ordered batches executed")
        # certificates of requests executed within a state-transfer snapshot, which this replica
        # never saw as batches: "fetched" came from a peer, "missing" nobody gave
        self.peer_certificates = counter(
            "quorumserve_peer_certificates_total", "certificates this replica could not build and asked its peers for", ("outcome",)
        )
        self.inference_batches = counter("quorumserve_inference_batches_total", "Triton calls (one per inference batch)")
        self.inference_requests = counter("quorumserve_inference_requests_total", "requests run through the model")
        # each is a batch this replica casts no vote on: its owner earns nothing from it
        self.inference_failures = counter("quorumserve_inference_failures_total", "Triton calls that failed")
        self.disagreeing_votes = counter(
            "quorumserve_disagreeing_votes_total", "votes in certified decisions that named another label", ("voter",)
        )
        # an owner's share of the certified votes is its share of the fees: a replica missing
        # from many certificates is losing earnings (and auditors its evidence)
        self.certified_votes = counter(
            "quorumserve_certified_votes_total", "votes in the certificates this replica built, by voter", ("voter",)
        )
        self.rejected = counter("quorumserve_rejected_messages_total", "peer messages rejected", ("reason",))
        # "refused": over the archive's rate or queue (replica/archive.py), told to come back
        self.archive_pages = counter("quorumserve_archive_pages_total", "ListCertificates pages asked for", ("outcome",))
        self.certificate_lookups = counter(
            "quorumserve_certificate_lookups_total", "GetCertificate look-ups (refused: too many waiting)", ("outcome",)
        )
        # by message type; a request sent to peers is a relay of one a peer skipped (its votes
        # moved past it) or that is long overdue: a steady stream of them means lost messages
        self.sent = counter("quorumserve_peer_messages_sent_total", "messages sent to peers (a broadcast counts once)", ("kind",))
        self.evidence = counter("quorumserve_evidence_total", "equivocation proofs collected", ("accused",))
        self.view_changes = counter("quorumserve_view_changes_total", "view changes started")
        self.view = gauge("quorumserve_view", "current view")
        self.seq = gauge("quorumserve_executed_seq", "highest executed sequence number")
        self.stable_seq = gauge("quorumserve_stable_seq", "last stable checkpoint")
        self.pending = gauge("quorumserve_pending_requests", "requests known but not yet executed")
        # with quorumserve_pending_requests, what the [admission] limits are checked against
        self.pending_bytes = gauge("quorumserve_pending_request_bytes", "input bytes of the requests held until they execute")
        self.model_version = gauge("quorumserve_model_version", "this replica's model version in effect")
        # below n-1 for long: this replica's votes and signatures miss some peer (down, or the
        # network between them)
        self.peer_links = gauge("quorumserve_peer_links_connected", "outgoing peer links connected now")
        self.peers = gauge("quorumserve_peers", "peers this replica has links to, connected or not")
        self.commit_latency = Histogram(
            "quorumserve_commit_latency_seconds", "client request received to certificate ready",
            ("replica", "group"), buckets=_LATENCY_BUCKETS_S, registry=r,
        )
        self.triton_latency = Histogram(
            "quorumserve_triton_latency_seconds", "one Triton call (an inference batch)",
            ("replica", "group"), buckets=_LATENCY_BUCKETS_S, registry=r,
        )
        # what the ordering waits for before it sends: the write, and before it the hop to the
        # I/O thread and any write queued there (committed batches, certificates)
        self.persist_latency = Histogram(
            "quorumserve_persist_latency_seconds", "consensus records handed to the store until durable (the ordering waits for this)",
            ("replica", "group"), buckets=_LATENCY_BUCKETS_S, registry=r,
        )
        # the store's own part (every write of consensus records, fsync included): the disk,
        # told apart from a busy replica
        self.persist_write = Histogram(
            "quorumserve_persist_write_seconds", "one write of consensus records by the store, fsync included",
            ("replica", "group"), buckets=_WRITE_BUCKETS_S, registry=r,
        )

    def labels(self, metric, **extra: str):  # type: ignore[no-untyped-def]
        # children are cached: prometheus_client's labels() validates and locks on every call,
        # and the replica asks for a handful per message it handles
        key = (id(metric), *extra.items())
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(**self._labels, **extra)
        return child

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        if port:
            start_http_server(port, addr=host, registry=self.registry)
