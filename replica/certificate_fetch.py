"""Fetching a certificate this replica cannot build from its peers, trusting none of them.

A replica that catches up by a state-transfer snapshot never sees the batches inside it, so it
cannot certify their requests itself; a client waiting on one of them at this replica would
otherwise wait for nothing. A certificate proves itself (its commit quorum's signatures, the
Merkle path to its leaf), so any one peer that has it is enough, and a peer that answers with
garbage, someone else's certificate or a forged one is simply passed over (and logged).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import grpc
import grpc.aio

from certs.certificate import Certificate, decode_certificate
from certs.config import GroupConfig
from certs.errors import CertificateError
from certs.verify import verify
from protos import replica_api_pb2 as api

log = logging.getLogger("quorumserve.replica")

GET_CERTIFICATE_METHOD = "/quorumserve.v1.Replica/GetCertificate"
FETCH_ROUNDS = 3  # passes over the peers: one that committed the batch may still be building it
FETCH_RETRY_PAUSE_S = 0.2
FETCH_TIMEOUT_S = 2.0  # per peer and call: a silent peer must not hold the client for long


@dataclass(frozen=True, slots=True)
class FetchedCertificate:
    certificate: Certificate
    encoded: bytes  # as the peer sent it (full, or compact where the peer has only that)
    replica_id: int  # the peer it came from


class PeerCertificates:
    """Asks peers, one after another, for a request's certificate and returns the first that
    verifies against the group config of its epoch and is for exactly that request."""

    def __init__(self, own_id: int, addresses: Callable[[], Mapping[int, str]], configs: Callable[[int], GroupConfig | None]) -> None:
        self._own_id = own_id
        self._addresses = addresses  # read at each fetch: membership changes move peers
        self._configs = configs
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def fetch(self, client_id: str, request_id: str, request_digest: bytes) -> FetchedCertificate | None:
        request = api.GetCertificateRequest(client_id=client_id, request_id=request_id).SerializeToString()
        for round_no in range(FETCH_ROUNDS):
            if round_no:
                await asyncio.sleep(FETCH_RETRY_PAUSE_S)
            for replica_id, address in sorted(self._addresses().items()):
                if replica_id == self._own_id:
                    continue
                raw = await self._ask(address, request)
                if raw is None:
                    continue
                try:
                    certificate = self._checked(raw, client_id, request_id, request_digest)
                except Exception as exc:  # whatever is wrong with a peer's bytes is the peer's fault
                    log.warning("replica %d sent an unusable certificate for %s/%s: %s", replica_id, client_id, request_id, exc)
                    continue
                return FetchedCertificate(certificate, raw, replica_id)
        return None

    async def _ask(self, address: str, request: bytes) -> bytes | None:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.aio.insecure_channel(address)
        call = channel.unary_unary(GET_CERTIFICATE_METHOD, request_serializer=None, response_deserializer=None)
        try:
            reply = api.SubmitReply.FromString(await call(request, timeout=FETCH_TIMEOUT_S))
        except grpc.aio.AioRpcError:
            return None  # NOT_FOUND, unreachable, too slow: the next peer
        except Exception:  # an undecodable reply is the peer's fault, not ours
            return None
        return reply.certificate if reply.status == api.CERTIFIED else None

    def _checked(self, raw: bytes, client_id: str, request_id: str, request_digest: bytes) -> Certificate:
        certificate = decode_certificate(raw)
        leaf = certificate.leaf
        if (leaf.client_id, leaf.request_id) != (client_id, request_id):
            raise CertificateError(f"it is for {leaf.client_id}/{leaf.request_id}")
        if leaf.request_digest != request_digest:
            raise CertificateError("it is for another request under the same ids")
        config = self._configs(certificate.header.epoch)
        if config is None:
            raise CertificateError(f"it is for epoch {certificate.header.epoch}, unknown here")
        verify(certificate, config)
        return certificate

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()
