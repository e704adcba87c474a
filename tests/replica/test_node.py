"""replica/node.py in one process, without Triton or peers: how the runtime answers waiting
clients for what the consensus core reports."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import grpc
import grpc.aio
import numpy as np
import pytest

from certs.batch import Leaf
from certs.certificate import QuorumSignature, decode_certificate, encode_certificate
from certs.keys import load_private_key
from certs.outputs import quantise
from certs.policy import Vote, decide
from certs.verify import verify
from consensus.ready import Ready
from marketplace.local import LocalGroup
from marketplace.models import held_out_digits
from replica.config import load_replica_config
from protos import replica_api_pb2 as api
from replica.node import Certified, ReplicaError, ReplicaNode
from tests.certs.helpers import Group, certify
from tests.replica.load import digits_request


def test_clients_waiting_on_requests_a_snapshot_executed_are_told_at_once_to_ask_another_replica(
    tmp_path: Path, digits_packages: list[Path]
) -> None:
    """A replica that catches up by a snapshot never sees the batches inside it, so it can never
    certify their requests. Its clients waiting on one of them hear so as soon as the core
    reports it (ready().executed_unseen), not at their 30 s timeout; other clients keep waiting."""
    group = LocalGroup(tmp_path / "group", model_packages=digits_packages)
    config = group.prepare()
    X, _ = held_out_digits(0)
    skipped = digits_request(config, "client", "skipped", X[0])
    other = digits_request(config, "client", "other", X[1])

    async def scenario() -> tuple[BaseException | None, BaseException | None, bool]:
        node = ReplicaNode(load_replica_config(group.data_dir / "replica-3.toml"))
        try:
            _, skipped_first = node.submit(skipped, fanout=True)
            _, skipped_again = node.submit(skipped, fanout=True)  # a retry waits on the same key
            _, waiting = node.submit(other, fanout=True)
            waiting.add_done_callback(lambda f: f.exception())  # failed by stop() below: expected
            node._handle(Ready(executed_unseen=[skipped.key, ("client", "never-submitted")]))
            done, _ = await asyncio.wait([skipped_first, skipped_again], timeout=10)
            assert done == {skipped_first, skipped_again}
            await asyncio.sleep(0.1)
            return skipped_first.exception(), skipped_again.exception(), waiting.done()
        finally:
            await node.stop()

    first, again, other_done = asyncio.run(scenario())
    for error in (first, again):
        assert isinstance(error, ReplicaError) and "ask another replica" in str(error)
    assert not other_done


def test_a_client_waiting_on_a_request_a_snapshot_executed_gets_its_certificate_from_a_peer(
    tmp_path: Path, digits_packages: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """The peer certificate path: a forged certificate from one peer is passed over, the
    genuine one from the next is handed to the waiting client and kept for later look-ups."""
    group = LocalGroup(tmp_path / "group", model_packages=digits_packages)
    config = group.prepare()
    X, _ = held_out_digits(0)
    request = digits_request(config, "client", "in-snapshot", X[2])
    keys = {i: load_private_key(group.data_dir / "keys" / f"replica-{i}.key") for i in range(config.n)}
    top_k = min(config.task.top_k, len(config.task.class_labels))
    votes = tuple(Vote(r, 1, quantise(np.eye(len(config.task.class_labels))[4] * 0.9 + 0.01, top_k)) for r in (0, 1, 2))
    leaf = Leaf(request.digest, request.client_id, request.request_id, (), config.policy.describe(config.f), votes,
                decide(config.policy, config.f, config.quorum_size, votes, top_k))
    (genuine,) = certify(Group(config, keys), [leaf], seq=40)
    first = genuine.quorum[0]
    forged = dataclasses.replace(genuine, quorum=(QuorumSignature(first.replica_id, bytes(64)),) + genuine.quorum[1:])
    answers = {0: encode_certificate(forged), 1: encode_certificate(genuine)}

    async def serve(replica_id: int) -> grpc.aio.Server:
        async def get_certificate(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return api.SubmitReply(status=api.CERTIFIED, certificate=answers[replica_id]).SerializeToString()

        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "quorumserve.v1.Replica", {"GetCertificate": grpc.unary_unary_rpc_method_handler(get_certificate)}),))
        server.add_insecure_port(config.member(replica_id).address)  # type: ignore[union-attr]
        await server.start()
        return server

    async def scenario() -> tuple[Certified, Certified | None]:
        peers = [await serve(r) for r in answers]
        node = ReplicaNode(load_replica_config(group.data_dir / "replica-3.toml"))
        try:
            _, waiting = node.submit(request, fanout=True)
            node.core.state.executed[request.key] = (40, request.digest)  # as a snapshot would
            node._handle(Ready(executed_unseen=[request.key]))
            certified = await asyncio.wait_for(waiting, 20)
            return certified, await node.get_certificate(request.client_id, request.request_id)
        finally:
            await node.stop()
            for server in peers:
                await server.stop(None)

    with caplog.at_level(logging.INFO, logger="quorumserve.replica"):
        certified, stored = asyncio.run(scenario())
    assert any("replica 0 sent an unusable certificate" in r.getMessage() for r in caplog.records)
    assert any("fetched from replica 1" in r.getMessage() for r in caplog.records)
    assert certified.seq == 40
    assert decode_certificate(certified.certificate) == genuine
    verify(decode_certificate(certified.certificate), config, request)
    assert stored is not None and stored.certificate == certified.certificate
