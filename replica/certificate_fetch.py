"""Fetching certificates this replica cannot build from its peers, trusting none of them.

A replica that catches up by a state-transfer snapshot never sees the batches inside it, so it
cannot certify their requests itself: a client waiting on one of them at this replica would
wait for nothing, and its archive would lack them. A certificate proves itself (its commit
quorum's signatures, the Merkle path to its leaf) and the replicated state says which request
was executed at which seq with which digest, so any one peer that has it is enough, and a peer
that answers with garbage, someone else's certificate or a forged one is passed over (and
logged). One request at a time (GetCertificate) for a waiting client; whole seq ranges
(ListCertificates) to fill in the archive.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
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
LIST_CERTIFICATES_METHOD = "/quorumserve.v1.Replica/ListCertificates"
RANGE_PAGE_CERTIFICATES = 1024  # asked per ListCertificates call (the replica caps it too)
RANGE_TIMEOUT_S = 10.0
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

    async def fetch_range(
        self,
        after_seq: int,
        through_seq: int,
        expected: Mapping[tuple[str, str], tuple[int, bytes]],
        on_page: Callable[[list[FetchedCertificate]], Awaitable[object]],
    ) -> int:
        """The certificates of batches after_seq < seq <= through_seq, page by page from one peer
        after another (ListCertificates), each handed to `on_page` once checked. A certificate
        counts only if it verifies and `expected` (the replicated state's executed table: request
        -> (seq, digest)) has its request at its seq with its digest. The next peer is asked for
        the whole range again while some expected request is still missing; a peer that sends
        anything unusable is left at once. Returns how many certificates were handed over."""
        wanted = {key for key, (seq, _) in expected.items() if after_seq < seq <= through_seq}
        got: set[tuple[str, str]] = set()
        for replica_id, address in sorted(self._addresses().items()):
            if replica_id == self._own_id or got >= wanted:
                continue
            cursor = after_seq
            while cursor < through_seq:
                request = api.CertificateRangeRequest(after_seq=cursor, through_seq=through_seq, limit=RANGE_PAGE_CERTIFICATES)
                reply = await self._list(address, request.SerializeToString())
                if reply is None:
                    break
                page: list[FetchedCertificate] = []
                unusable = 0
                for raw in reply.certificates:
                    try:
                        certificate = self._checked_against(raw, expected, after_seq, through_seq)
                    except Exception:  # the peer's fault, whatever it is
                        unusable += 1
                        continue
                    key = (certificate.leaf.client_id, certificate.leaf.request_id)
                    if key not in got:
                        got.add(key)
                        page.append(FetchedCertificate(certificate, raw, replica_id))
                if page:
                    await on_page(page)
                if unusable:
                    log.warning("replica %d sent %d unusable certificates for seqs %d..%d", replica_id, unusable, cursor + 1, through_seq)
                    break
                if not reply.more or reply.next_after_seq <= cursor:
                    break
                cursor = reply.next_after_seq
        return len(got)

    def _checked_against(self, raw: bytes, expected: Mapping[tuple[str, str], tuple[int, bytes]], after_seq: int, through_seq: int) -> Certificate:
        certificate = decode_certificate(raw)
        leaf, seq = certificate.leaf, certificate.header.seq
        if not after_seq < seq <= through_seq:
            raise CertificateError(f"seq {seq} is outside {after_seq + 1}..{through_seq}")
        if expected.get((leaf.client_id, leaf.request_id)) != (seq, leaf.request_digest):
            raise CertificateError(f"{leaf.client_id}/{leaf.request_id} was not executed at seq {seq} with that digest")
        config = self._configs(certificate.header.epoch)
        if config is None:
            raise CertificateError(f"it is for epoch {certificate.header.epoch}, unknown here")
        verify(certificate, config)
        return certificate

    async def _list(self, address: str, request: bytes) -> api.CertificateRangeReply | None:
        call = self._channel(address).unary_unary(LIST_CERTIFICATES_METHOD, request_serializer=None, response_deserializer=None)
        try:
            return api.CertificateRangeReply.FromString(await call(request, timeout=RANGE_TIMEOUT_S))
        except grpc.aio.AioRpcError:
            return None
        except Exception:  # an undecodable reply
            return None

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.aio.insecure_channel(
                address, options=[("grpc.max_receive_message_length", 64 << 20)]
            )
        return channel

    async def _ask(self, address: str, request: bytes) -> bytes | None:
        call = self._channel(address).unary_unary(GET_CERTIFICATE_METHOD, request_serializer=None, response_deserializer=None)
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
