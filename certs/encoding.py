"""Canonical encoding of every signed or hashed structure.

One value always gives the same bytes, and two different values never do: every item carries a
one-byte type tag and every variable-length item a length, so the encoding is prefix-free and
injective. Each kind of signed structure starts with its own domain tag, so a signature over a
vote can never pass as a signature over a commit, a checkpoint or anything else.

Written by hand rather than with a general serialiser (CBOR, protobuf): protobuf's wire format is
not canonical (field order, unknown fields, non-minimal varints, any non-zero varint is `true`),
and this encoder is small enough to audit in one sitting. The wire uses protobuf; signatures are
always over these bytes, recomputed from the decoded fields.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from collections.abc import Iterable
from typing import Union

DIGEST_SIZE = 32

Encodable = Union[int, bytes, str, None, tuple["Encodable", ...], list["Encodable"]]

_INT_MIN = -(2**63)
_INT_MAX = 2**63 - 1
_pack_i64 = struct.Struct(">q").pack
_pack_u32 = struct.Struct(">I").pack


class Domain(enum.Enum):
    """Domain tags: the first bytes of every signed or hashed structure."""

    REQUEST = b"quorumserve/v1/request\x00"
    VOTE_BATCH = b"quorumserve/v1/vote-batch\x00"
    VOTE_ENTRY = b"quorumserve/v1/vote-entry\x00"
    LEAF = b"quorumserve/v1/decision-leaf\x00"
    BATCH = b"quorumserve/v1/batch\x00"
    PRE_PREPARE = b"quorumserve/v1/pre-prepare\x00"
    PREPARE = b"quorumserve/v1/prepare\x00"
    COMMIT = b"quorumserve/v1/commit\x00"
    CHECKPOINT = b"quorumserve/v1/checkpoint\x00"
    STATE = b"quorumserve/v1/state\x00"
    VIEW_CHANGE = b"quorumserve/v1/view-change\x00"
    NEW_VIEW = b"quorumserve/v1/new-view\x00"
    CONTROL_OPS = b"quorumserve/v1/control-ops\x00"
    MODEL_UPDATE = b"quorumserve/v1/model-update\x00"
    MODEL_VERSIONS = b"quorumserve/v1/model-versions\x00"
    CONFIG = b"quorumserve/v1/group-config\x00"
    CONFIG_APPROVAL = b"quorumserve/v1/config-approval\x00"
    KEY_ID = b"quorumserve/v1/key-id\x00"
    JOIN_REQUEST = b"quorumserve/v1/join-request\x00"
    JOIN_APPROVAL = b"quorumserve/v1/join-approval\x00"
    LEAVE_REQUEST = b"quorumserve/v1/leave-request\x00"
    LEDGER = b"quorumserve/v1/ledger\x00"
    PAYLOAD = b"quorumserve/v1/request-payload\x00"


def _encode_int(value: int, out: bytearray) -> None:
    if not _INT_MIN <= value <= _INT_MAX:
        raise ValueError(f"integer {value} does not fit in 64 bits")
    out += b"i"
    out += _pack_i64(value)


def _encode_bytes(value: bytes, out: bytearray) -> None:
    out += b"b"
    out += _pack_u32(len(value))
    out += value


def _encode_str(value: str, out: bytearray) -> None:
    raw = value.encode("utf-8")
    out += b"s"
    out += _pack_u32(len(raw))
    out += raw


def _encode_none(value: None, out: bytearray) -> None:
    out += b"n"


def _encode_sequence(value: tuple[Encodable, ...] | list[Encodable], out: bytearray) -> None:
    out += b"l"
    out += _pack_u32(len(value))
    for item in value:
        encoder = _ENCODERS.get(type(item))
        if encoder is None:
            _encode_into(item, out)
        else:
            encoder(item, out)  # type: ignore[operator]


# exact-type dispatch: this runs for every vote and leaf hashed, so it avoids isinstance chains
# (bool is deliberately absent: True and 1 must never collide)
_ENCODERS = {
    int: _encode_int,
    bytes: _encode_bytes,
    str: _encode_str,
    type(None): _encode_none,
    tuple: _encode_sequence,
    list: _encode_sequence,
}


def _encode_into(value: Encodable, out: bytearray) -> None:
    encoder = _ENCODERS.get(type(value))
    if encoder is not None:
        encoder(value, out)  # type: ignore[operator]
        return
    # subclasses of the supported types (an IntEnum, a str subclass) encode as their base type
    if isinstance(value, bool):
        raise TypeError("booleans have no canonical encoding; use 0/1 explicitly")
    for base, encoder in _ENCODERS.items():
        if isinstance(value, base):
            encoder(value, out)  # type: ignore[operator]
            return
    raise TypeError(f"no canonical encoding for {type(value).__name__}")


def encode(domain: Domain, *fields: Encodable) -> bytes:
    """The canonical bytes of a structure of kind `domain` with the given fields, in order."""
    out = bytearray(domain.value)
    for field in fields:
        _encode_into(field, out)
    return bytes(out)


# -- one item at a time, for hot paths ------------------------------------------------------
# Every vote entry, vote and leaf is hashed on its way to a certificate, several per request at
# every replica, and `encode` walking their nested tuples (a dispatch per item) was a tenth of the
# protocol's CPU. These return the exact bytes `encode` writes for one item, so a fixed structure
# can be joined from them directly; anything but the exact expected type goes through the general
# encoder (same bytes, same errors). tests/certs/test_batch.py checks both agree.


def _item(value: Encodable) -> bytes:
    out = bytearray()
    _encode_into(value, out)
    return bytes(out)


def str_item(value: str) -> bytes:
    if type(value) is str:
        raw = value.encode("utf-8")
        return b"s" + _pack_u32(len(raw)) + raw
    return _item(value)


def bytes_item(value: bytes) -> bytes:
    if type(value) is bytes:
        return b"b" + _pack_u32(len(value)) + value
    return _item(value)


def int_item(value: int) -> bytes:
    if type(value) is int and _INT_MIN <= value <= _INT_MAX:
        return b"i" + _pack_i64(value)
    return _item(value)


def list_head(count: int) -> bytes:
    """What precedes the items of a tuple or list of `count` items."""
    return b"l" + _pack_u32(count)


_NO_ITEMS = list_head(0)


def strs_item(values: tuple[str, ...] | list[str]) -> bytes:
    """A tuple of strings (as `encode` writes `tuple(values)`)."""
    if not values:
        return _NO_ITEMS  # the usual label space: the task's own labels
    return b"l" + _pack_u32(len(values)) + b"".join([str_item(v) for v in values])


def ints_item(values: tuple[int, ...] | list[int]) -> bytes:
    """A tuple of integers (as `encode` writes `tuple(values)`)."""
    return b"l" + _pack_u32(len(values)) + b"".join([int_item(v) for v in values])


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def digest(domain: Domain, *fields: Encodable) -> bytes:
    """SHA-256 of the canonical encoding."""
    return hashlib.sha256(encode(domain, *fields)).digest()


def require_digest(value: bytes, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != DIGEST_SIZE:
        raise ValueError(f"{what} must be {DIGEST_SIZE} bytes")
    return value


def encode_all(items: Iterable[Encodable]) -> tuple[Encodable, ...]:
    """Helper for list-valued fields: a tuple, so the encoding is the same whatever was passed."""
    return tuple(items)
