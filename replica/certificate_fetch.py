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
from typing import TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message

from certs.certificate import Certificate, decode_certificate
from certs.config import GroupConfig
from certs.errors import CertificateError
from certs.verify import verify
from protos import replica_api_pb2 as api
from replica.archive import pushback_ms
from replica.transport import RECONNECT_OPTIONS

log = logging.getLogger("quorumserve.replica")
M = TypeVar("M", bound=Message)

GET_CERTIFICATE_METHOD = "/quorumserve.v1.Replica/GetCertificate"
LIST_CERTIFICATES_METHOD = "/quorumserve.v1.Replica/ListCertificates"
RANGE_PAGE_CERTIFICATES = 1024  # asked per ListCertificates call (the replica caps it too)
RANGE_TIMEOUT_S = 10.0
BUSY_RETRIES_MAX = 20  # a busy peer's pushbacks honoured in a row before moving on
BUSY_PUSHBACK_MAX_S = 2.0
FETCH_ROUNDS = 3  # passes over the peers: one that committed the batch may still be building it
FETCH_RETRY_PAUSE_S = 0.2
FETCH_TIMEOUT_S = 2.0  # per peer and call: a silent peer must not hold the client for long


@dataclass(frozen=True, slots=True)
class FetchedCertificate:
    certificate: Certificate
    encoded: bytes  # as the peer sent it (full, or compact where the peer has only that)
    replica_id: int  # the peer it came from


class PeerCertificates:
    """Asks peers, one after another, for certificates and keeps only those that verify against
    the group config of their epoch and are for exactly the requests asked about."""

    def __init__(self, own_id: int, addresses: Callable[[], Mapping[int, str]], configs: Callable[[int], GroupConfig | None]) -> None:
        self._own_id = own_id
        self._addresses = addresses  # read at each fetch: membership changes move peers
        self._configs = configs
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def fetch(self, client_id: str, request_id: str, executed: tuple[int, bytes]) -> FetchedCertificate | None:
        """The certificate of one request, which the replicated state says was executed at
        `executed` = (seq, request digest)."""
        request = api.GetCertificateRequest(client_id=client_id, request_id=request_id).SerializeToString()
        expected = {(client_id, request_id): executed}
        for round_no in range(FETCH_ROUNDS):
            if round_no:
                await asyncio.sleep(FETCH_RETRY_PAUSE_S)
            for replica_id, address in self._peers():
                reply = await self._call(address, GET_CERTIFICATE_METHOD, request, api.SubmitReply, FETCH_TIMEOUT_S)
                if reply is None or reply.status != api.CERTIFIED:
                    continue  # NOT_FOUND, unreachable, too slow: the next peer
                try:
                    certificate = decode_certificate(reply.certificate)
                    self._check(certificate, expected)
                except Exception as exc:  # whatever is wrong with a peer's bytes is the peer's fault
                    log.warning("replica %d sent an unusable certificate for %s/%s: %s", replica_id, client_id, request_id, exc)
                    continue
                return FetchedCertificate(certificate, reply.certificate, replica_id)
        return None

    async def fetch_range(
        self,
        after_seq: int,
        through_seq: int,
        expected: Mapping[tuple[str, str], tuple[int, bytes]],
        on_page: Callable[[list[FetchedCertificate]], Awaitable[object]],
    ) -> int:
        """The certificates of batches after_seq < seq <= through_seq, page by page from one peer
        after another (ListCertificates), each handed to `on_page` once checked. `expected` holds
        the requests of the range whose certificates this replica lacks, as the replicated
        state's executed table has them (request -> (seq, digest)); a certificate counts only if
        it verifies and matches its entry, and one of the range's other requests is passed over
        unchecked. The next peer is asked for the whole range again while some expected request
        is still missing; a peer that sends anything unusable (undecodable, outside the range,
        not verifying, another digest) is left at once. Returns how many were handed over."""
        got: set[tuple[str, str]] = set()
        for replica_id, address in self._peers():
            if len(got) == len(expected):
                break
            cursor = after_seq
            while cursor < through_seq:
                request = api.CertificateRangeRequest(after_seq=cursor, through_seq=through_seq, limit=RANGE_PAGE_CERTIFICATES)
                reply = await self._call(address, LIST_CERTIFICATES_METHOD, request.SerializeToString(), api.CertificateRangeReply, RANGE_TIMEOUT_S)
                if reply is None:
                    break
                page: list[FetchedCertificate] = []
                unusable = 0
                for raw in reply.certificates:
                    try:
                        certificate = decode_certificate(raw)
                        seq = certificate.header.seq
                        if not after_seq < seq <= through_seq:
                            raise CertificateError(f"seq {seq} is outside {after_seq + 1}..{through_seq}")
                        key = (certificate.leaf.client_id, certificate.leaf.request_id)
                        if key not in expected or key in got:
                            continue  # in the range, but held here already: not worth a verify
                        self._check(certificate, expected)
                    except Exception:  # the peer's fault, whatever it is
                        unusable += 1
                        continue
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

    def _peers(self) -> list[tuple[int, str]]:
        return [(r, a) for r, a in sorted(self._addresses().items()) if r != self._own_id]

    def _check(self, certificate: Certificate, expected: Mapping[tuple[str, str], tuple[int, bytes]]) -> None:
        """Raises unless the certificate verifies and `expected` has its request executed at its
        seq with its digest (which rules out other requests, other batches and forgeries)."""
        leaf, seq = certificate.leaf, certificate.header.seq
        wanted = expected.get((leaf.client_id, leaf.request_id))
        if wanted is None:
            raise CertificateError(f"it is for {leaf.client_id}/{leaf.request_id}, not asked for")
        if wanted != (seq, leaf.request_digest):
            raise CertificateError(f"{leaf.client_id}/{leaf.request_id} was not executed at seq {seq} with that digest")
        config = self._configs(certificate.header.epoch)
        if config is None:
            raise CertificateError(f"it is for epoch {certificate.header.epoch}, unknown here")
        verify(certificate, config)

    async def _call(self, address: str, method: str, request: bytes, reply_type: type[M], timeout_s: float) -> M | None:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.aio.insecure_channel(
                address, options=[("grpc.max_receive_message_length", 64 << 20), *RECONNECT_OPTIONS]
            )
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        for _ in range(BUSY_RETRIES_MAX + 1):
            try:
                return reply_type.FromString(await call(request, timeout=timeout_s))  # type: ignore[no-any-return]
            except grpc.aio.AioRpcError as exc:
                # a peer pacing its archive (replica/archive.py) says when to come back: do, rather
                # than start the whole range again at the next peer. (gRPC's own RESOURCE_EXHAUSTED,
                # a message over the size limit, names no wait: no use asking again.)
                wait_s = _pushback_s(exc) if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else None
                if wait_s is None:
                    return None
                await asyncio.sleep(wait_s)
            except Exception:  # no answer in time, or an undecodable reply
                return None
        return None

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()


def _pushback_s(error: grpc.aio.AioRpcError) -> float | None:
    """The wait an error reply asks for, capped; None when it names none (or garbage)."""
    wait_ms = pushback_ms(error.trailing_metadata())
    return None if wait_ms is None else min(wait_ms / 1000, BUSY_PUSHBACK_MAX_S)
