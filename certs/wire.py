"""Protobuf <-> dataclass conversion for the shared types of protos/common.proto.

Decoding is strict, because the bytes come from untrusted peers and clients: every `*_from_proto`
either returns a well-typed value or raises `DecodeError`. `parse_canonical` also rejects any
encoding that protobuf would not produce itself (unknown fields, unpacked repeated fields,
non-minimal varints, a bool written as 3): a flipped byte can never yield the same value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message

from certs.batch import BatchHeader, Leaf, VoteEntry
from certs.encoding import DIGEST_SIZE
from certs.errors import DecodeError
from certs.outputs import ModelOutput
from certs.policy import Decision, Vote
from certs.request import DATATYPE_SIZES, InferenceRequest, TensorData
from protos import common_pb2 as pb

M = TypeVar("M", bound=Message)
T = TypeVar("T")

INT64_MAX = 2**63 - 1
STRING_MAX = 1024  # ids, labels, addresses
LIST_MAX = 1 << 20


def parse_canonical(message_type: type[M], data: bytes, what: str) -> M:
    """Parse `data` as `message_type`, insisting it is exactly protobuf's own encoding."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"{what}: expected bytes")
    message = message_type()
    try:
        message.ParseFromString(bytes(data))
    except (ProtobufDecodeError, RuntimeError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise DecodeError(f"{what}: not a valid protobuf encoding ({exc})") from exc
    # protobuf keeps unknown fields and writes them back out; drop them so they fail the comparison
    message.DiscardUnknownFields()
    if message.SerializeToString(deterministic=True) != bytes(data):
        raise DecodeError(f"{what}: non-canonical encoding (unknown fields or re-encoded values)")
    return message


def serialize(message: Message) -> bytes:
    return message.SerializeToString(deterministic=True)


_ONE_BYTE_VARINTS = tuple(bytes((value,)) for value in range(0x80))


def varint(value: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative integer."""
    if 0 <= value < 0x80:
        return _ONE_BYTE_VARINTS[value]  # tags, lengths and most counts: no loop, no new object
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def repeated_field(field_number: int, encoded_items: Sequence[bytes]) -> bytes:
    """A repeated message field from already-serialized items, byte for byte what protobuf emits
    for them: the batch framings (PeerBatch, SubmitBatchRequest/Reply) are built from messages
    encoded once, without copying each into a container message and serializing again."""
    tag = varint(field_number << 3 | 2)  # wire type 2: length-delimited
    return b"".join([tag + varint(len(item)) + item for item in encoded_items])


# Fields of a message composed from bytes, each exactly as protobuf (proto3) writes it: fields in
# ascending number, a scalar or bytes field left out when it holds its default (0, b""), every
# item of a repeated field and every set sub-message written. For messages built once per request
# on a replica's hot path (certs.certificate.encode_batch_certificates), whose parts repeat.

_UINT64_LIMIT = 1 << 64


def uint_field(field_number: int, value: int) -> bytes:
    """A uint32/uint64 field (wire type 0); b"" for 0. ValueError outside 0..2**64-1, as
    protobuf raises (the bound of a uint32 field is left to its callers)."""
    if not 0 <= value < _UINT64_LIMIT:
        raise ValueError(f"value {value} is out of range for field {field_number}")
    return varint(field_number << 3) + varint(value) if value else b""


def bytes_field(field_number: int, value: bytes) -> bytes:
    """A singular bytes field (wire type 2); b"" when empty."""
    return varint(field_number << 3 | 2) + varint(len(value)) + value if value else b""


def bytes_field_item(field_number: int, value: bytes) -> bytes:
    """One item of a repeated bytes field: written even when empty."""
    return varint(field_number << 3 | 2) + varint(len(value)) + value


def message_field(field_number: int, encoded: bytes) -> bytes:
    """A set sub-message from its encoding: written even when empty."""
    return varint(field_number << 3 | 2) + varint(len(encoded)) + encoded


def check_int(value: int, what: str, minimum: int = 0) -> int:
    if not minimum <= value <= INT64_MAX:
        raise DecodeError(f"{what} {value} is out of range")
    return value


def check_digest(value: bytes, what: str) -> bytes:
    if len(value) != DIGEST_SIZE:
        raise DecodeError(f"{what} must be {DIGEST_SIZE} bytes, is {len(value)}")
    return bytes(value)


def check_str(value: str, what: str, maximum: int = STRING_MAX) -> str:
    if len(value) > maximum:
        raise DecodeError(f"{what} is longer than {maximum} characters")
    return value


def check_list(values: Sequence[T], what: str, maximum: int = LIST_MAX) -> Sequence[T]:
    if len(values) > maximum:
        raise DecodeError(f"{what} has more than {maximum} items")
    return values


def decode_all(values: Sequence[M], convert: Callable[[M], T], what: str, maximum: int = LIST_MAX) -> tuple[T, ...]:
    check_list(values, what, maximum)
    return tuple(convert(v) for v in values)


# -- ModelOutput ---------------------------------------------------------------------------


def output_to_proto(output: ModelOutput, out: pb.ModelOutput | None = None) -> pb.ModelOutput:
    message = pb.ModelOutput() if out is None else out
    message.classes.extend(cls for cls, _ in output.top)
    message.probabilities.extend(q for _, q in output.top)
    return message


def _pairs_from_proto(message: pb.ModelOutput, what: str) -> tuple[tuple[int, int], ...]:
    classes, probabilities = message.classes, message.probabilities
    if len(classes) != len(probabilities):
        raise DecodeError(f"{what}: classes and probabilities differ in length")
    check_list(classes, what, 1 << 16)
    return tuple(zip(classes, probabilities))


def output_from_proto(message: pb.ModelOutput) -> ModelOutput:
    top = _pairs_from_proto(message, "model output")
    if not top:
        raise DecodeError("model output lists no classes")
    return ModelOutput(top)


# The outputs of the vote entries decoded lately, by their encoding. A vote reaches a backup
# twice, in its voter's vote batch and again in the primary's PRE-PREPARE: the second time it is
# the same (immutable) object, its canonical bytes already packed, instead of a dozen new tuples,
# and comparing the two (ConsensusNode._vote_matches) is an identity check. Only vote batches
# fill it, so a process that decodes none (a client checking certificates) never looks in it.
# Bounded in entries (cleared when full) and in their size: outputs are remembered before
# consensus checks them, and a peer's oversized ones (up to 65,536 classes decode) must not stay
# in memory. 256 bytes is a top-50 output; a vote lists top_k classes, 5 or 10 for the tasks here.
_VOTED_OUTPUTS: dict[bytes, ModelOutput] = {}
VOTED_OUTPUTS_MAX = 4096
VOTED_OUTPUT_BYTES_MAX = 256


def _remember_voted_output(message: pb.ModelOutput) -> ModelOutput:
    output = output_from_proto(message)
    key = message.SerializeToString()
    if len(key) <= VOTED_OUTPUT_BYTES_MAX:
        if len(_VOTED_OUTPUTS) >= VOTED_OUTPUTS_MAX:
            _VOTED_OUTPUTS.clear()
        _VOTED_OUTPUTS[key] = output
    return output


def _voted_output(message: pb.ModelOutput) -> ModelOutput:
    if _VOTED_OUTPUTS:
        known = _VOTED_OUTPUTS.get(message.SerializeToString())
        if known is not None:
            return known
    return output_from_proto(message)


@contextmanager
def voted_outputs(memo: dict[bytes, ModelOutput] | None = None) -> Iterator[dict[bytes, ModelOutput]]:
    """Decode with `memo` (a new, empty one when None) as the memo of voted outputs inside the
    block, then put back the one before. For several replicas in one process
    (tests/bench/bench_core.py), each with its own memo as if in its own process (one shared would
    find every peer's votes already decoded), and for tests that start from an empty memo."""
    global _VOTED_OUTPUTS
    installed = {} if memo is None else memo
    previous, _VOTED_OUTPUTS = _VOTED_OUTPUTS, installed
    try:
        yield installed
    finally:
        _VOTED_OUTPUTS = previous


# -- Vote, Decision, Leaf ----------------------------------------------------------------


def vote_to_proto(vote: Vote, out: pb.Vote | None = None) -> pb.Vote:
    message = pb.Vote() if out is None else out
    message.replica_id = vote.replica_id
    message.model_version = vote.model_version
    output_to_proto(vote.output, message.output)
    return message


def vote_from_proto(message: pb.Vote) -> Vote:
    return Vote(
        replica_id=int(message.replica_id),
        model_version=check_int(message.model_version, "model version"),
        output=_voted_output(message.output),
    )


def decision_to_proto(decision: Decision, out: pb.Decision | None = None) -> pb.Decision:
    message = pb.Decision() if out is None else out
    message.label = decision.label
    output_to_proto(ModelOutput(decision.probabilities), message.probabilities)
    message.support.extend(decision.support)
    return message


def decision_from_proto(message: pb.Decision) -> Decision:
    return Decision(
        label=check_int(message.label, "decision label", minimum=-1),
        probabilities=_pairs_from_proto(message.probabilities, "decision probabilities"),
        support=tuple(int(s) for s in check_list(message.support, "decision support", 1 << 16)),
    )


def leaf_to_proto(leaf: Leaf, out: pb.Leaf | None = None) -> pb.Leaf:
    """The leaf's message, merged into `out` when given, parsed from its kept encoding
    (`leaf_wire`), which protobuf does in C: a leaf is encoded field by field once."""
    message = pb.Leaf() if out is None else out
    message.MergeFromString(leaf_wire(leaf))
    return message


def leaf_wire(leaf: Leaf) -> bytes:
    """The leaf's protobuf encoding, made once and kept on it (`Leaf.wire`)."""
    encoded = leaf.wire
    if encoded is None:
        encoded = serialize(_leaf_message(leaf))
        object.__setattr__(leaf, "wire", encoded)
    return encoded


def _leaf_message(leaf: Leaf) -> pb.Leaf:
    message = pb.Leaf()
    message.request_digest = leaf.request_digest
    message.client_id = leaf.client_id
    message.request_id = leaf.request_id
    message.label_space.extend(leaf.label_space)
    message.policy = leaf.policy
    for vote in leaf.votes:
        vote_to_proto(vote, message.votes.add())
    decision_to_proto(leaf.decision, message.decision)
    return message


def leaf_from_proto(message: pb.Leaf) -> Leaf:
    leaf = Leaf(
        request_digest=check_digest(message.request_digest, "request digest"),
        client_id=check_str(message.client_id, "client id"),
        request_id=check_str(message.request_id, "request id"),
        label_space=tuple(check_str(s, "label") for s in check_list(message.label_space, "label space", 1 << 16)),
        policy=check_str(message.policy, "policy"),
        votes=decode_all(message.votes, vote_from_proto, "votes", 1 << 10),
        decision=decision_from_proto(message.decision),
    )
    # every field of the message is a field of the leaf, so its encoding is the leaf's (unknown
    # fields cannot ride along: parse_canonical drops them and then refuses the message)
    object.__setattr__(leaf, "wire", serialize(message))
    return leaf


# -- BatchHeader ---------------------------------------------------------------------------


def header_to_proto(header: BatchHeader, out: pb.BatchHeader | None = None) -> pb.BatchHeader:
    message = pb.BatchHeader() if out is None else out
    message.group_id = header.group_id
    message.epoch = header.epoch
    message.config_digest = header.config_digest
    message.view = header.view
    message.seq = header.seq
    message.decisions_root = header.decisions_root
    message.ops_digest = header.ops_digest
    message.model_versions_digest = header.model_versions_digest
    message.leaf_count = header.leaf_count
    return message


def header_from_proto(message: pb.BatchHeader) -> BatchHeader:
    return BatchHeader(
        group_id=check_str(message.group_id, "group id"),
        epoch=check_int(message.epoch, "epoch"),
        config_digest=check_digest(message.config_digest, "config digest"),
        view=check_int(message.view, "view"),
        seq=check_int(message.seq, "sequence number"),
        decisions_root=check_digest(message.decisions_root, "decisions root"),
        ops_digest=check_digest(message.ops_digest, "ops digest"),
        model_versions_digest=check_digest(message.model_versions_digest, "model versions digest"),
        leaf_count=check_int(message.leaf_count, "leaf count"),
    )


# -- VoteEntry -------------------------------------------------------------------------------


def vote_entry_to_proto(entry: VoteEntry, out: pb.VoteEntry | None = None) -> pb.VoteEntry:
    message = pb.VoteEntry() if out is None else out
    message.client_id = entry.client_id
    message.request_id = entry.request_id
    message.request_digest = entry.request_digest
    message.label_space.extend(entry.label_space)
    output_to_proto(entry.output, message.output)
    return message


def vote_entry_from_proto(message: pb.VoteEntry) -> VoteEntry:
    return VoteEntry(
        client_id=check_str(message.client_id, "client id"),
        request_id=check_str(message.request_id, "request id"),
        request_digest=check_digest(message.request_digest, "request digest"),
        label_space=tuple(check_str(s, "label") for s in check_list(message.label_space, "label space", 1 << 16)),
        output=_remember_voted_output(message.output),
    )


# -- InferenceRequest ----------------------------------------------------------------------


def request_to_proto(request: InferenceRequest, out: pb.InferenceRequest | None = None) -> pb.InferenceRequest:
    message = pb.InferenceRequest() if out is None else out
    message.group_id = request.group_id
    message.client_id = request.client_id
    message.request_id = request.request_id
    for tensor in request.inputs:
        t = message.inputs.add()
        t.name = tensor.name
        t.datatype = tensor.datatype
        t.shape.extend(tensor.shape)
        t.data = tensor.data
    for label, decision in request.label_mapping:
        m = message.label_mapping.add()
        m.label = label
        m.decision = decision
    return message


def _tensor_from_proto(message: pb.TensorData) -> TensorData:
    if message.datatype not in DATATYPE_SIZES:
        raise DecodeError(f"input {message.name!r}: unknown datatype {message.datatype!r}")
    tensor = TensorData(
        name=check_str(message.name, "input name"),
        datatype=message.datatype,
        shape=tuple(check_int(d, "dimension") for d in check_list(message.shape, "shape", 16)),
        data=bytes(message.data),
    )
    if tensor.expected_size_bytes() != len(tensor.data):
        raise DecodeError(
            f"input {tensor.name!r}: {len(tensor.data)} bytes of data for shape {list(tensor.shape)} "
            f"of {tensor.datatype} (expected {tensor.expected_size_bytes()})"
        )
    return tensor


def request_from_proto(message: pb.InferenceRequest) -> InferenceRequest:
    mapping = tuple((check_str(m.label, "label"), check_str(m.decision, "decision")) for m in message.label_mapping)
    if list(mapping) != sorted(set(mapping)) or len({label for label, _ in mapping}) != len(mapping):
        raise DecodeError("label mapping must list each label once, sorted by label")
    return InferenceRequest(
        group_id=check_str(message.group_id, "group id"),
        client_id=check_str(message.client_id, "client id"),
        request_id=check_str(message.request_id, "request id"),
        inputs=decode_all(message.inputs, _tensor_from_proto, "inputs", 64),
        label_mapping=mapping,
    )
