"""replica/codec.py: every consensus message and persisted record survives the wire exactly, and
bytes from a peer either decode or raise DecodeError, never anything else."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certs.batch import BatchHeader, Leaf, VoteEntry
from certs.errors import DecodeError
from certs.outputs import ModelOutput
from certs.policy import Decision, Vote
from certs.request import DATATYPE_SIZES, InferenceRequest, TensorData
from certs.wire import voted_outputs
from consensus.messages import (
    Checkpoint,
    Commit,
    CommittedProof,
    ControlMessage,
    FetchState,
    FetchVotes,
    ModelUpdate,
    NewView,
    PeerMessage,
    PrePrepare,
    Prepare,
    PreparedProof,
    Proposal,
    ProposalEntry,
    RequestMessage,
    StateReply,
    StateSnapshot,
    ViewChange,
    VoteBatch,
    VoteRef,
)
from consensus.ready import (
    CommittedBatch,
    CommittedRecord,
    PersistRecord,
    PreparedRecord,
    SignedRecord,
    StableCheckpointRecord,
    ViewRecord,
)
from protos import consensus_pb2 as pb
from replica import codec

# -- strategies ------------------------------------------------------------------------------

u32 = st.integers(0, 2**32 - 1)
u63 = st.integers(0, 2**63 - 1)
digests = st.binary(min_size=32, max_size=32)
signatures = st.binary(min_size=64, max_size=64)  # the codec checks sizes, never signatures
ids = st.text(max_size=12)
label_spaces = st.lists(ids, max_size=3).map(tuple)
pairs = st.tuples(u32, u32)
outputs = st.lists(pairs, min_size=1, max_size=4).map(lambda top: ModelOutput(tuple(top)))

vote_entries = st.builds(VoteEntry, ids, ids, digests, label_spaces, outputs)
votes = st.builds(Vote, u32, u63, outputs)
decisions = st.builds(
    Decision,
    st.integers(-1, 2**63 - 1),
    st.lists(pairs, max_size=3).map(tuple),
    st.lists(u32, max_size=4).map(tuple),
)
leaves = st.builds(Leaf, digests, ids, ids, label_spaces, ids, st.lists(votes, max_size=4).map(tuple), decisions)
vote_refs = st.builds(VoteRef, u32, u63)
headers = st.builds(BatchHeader, ids, u63, digests, u63, u63, digests, digests, digests, u63)
model_updates = st.builds(ModelUpdate, ids, u32, u63, digests, signatures)


@st.composite
def proposal_entries(draw: st.DrawFn) -> ProposalEntry:
    leaf = draw(leaves)
    refs = draw(st.lists(vote_refs, min_size=len(leaf.votes), max_size=len(leaf.votes)))
    return ProposalEntry(leaf, tuple(refs))


proposals = st.builds(
    Proposal, st.lists(proposal_entries(), max_size=3).map(tuple), st.lists(model_updates, max_size=2).map(tuple)
)


@st.composite
def tensors(draw: st.DrawFn) -> TensorData:
    datatype = draw(st.sampled_from(sorted(DATATYPE_SIZES)))
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    size = DATATYPE_SIZES[datatype]
    for dim in shape:
        size *= dim
    return TensorData(draw(ids), datatype, shape, draw(st.binary(min_size=size, max_size=size)))


@st.composite
def requests(draw: st.DrawFn) -> InferenceRequest:
    mapping = draw(st.dictionaries(ids, ids, max_size=3))
    return InferenceRequest(
        draw(ids), draw(ids), draw(ids), tuple(draw(st.lists(tensors(), max_size=2))), tuple(sorted(mapping.items()))
    )


vote_batches = st.builds(VoteBatch, u32, u63, u63, u63, st.lists(vote_entries, max_size=4).map(tuple), signatures)
pre_prepares = st.builds(PrePrepare, u32, u63, headers, proposals, signatures)
prepares = st.builds(Prepare, u32, u63, u63, u63, digests, signatures)
commits = st.builds(Commit, u32, u63, u63, u63, digests, signatures)
checkpoints = st.builds(Checkpoint, u32, u63, u63, digests, signatures)
prepared_proofs = st.builds(PreparedProof, pre_prepares, st.lists(prepares, max_size=3).map(tuple))
view_changes = st.builds(
    ViewChange,
    u32,
    u63,
    u63,
    u63,
    digests,
    st.lists(checkpoints, max_size=3).map(tuple),
    st.lists(prepared_proofs, max_size=2).map(tuple),
    signatures,
)
new_views = st.builds(
    NewView, u32, u63, u63, st.lists(view_changes, max_size=2).map(tuple), st.lists(pre_prepares, max_size=2).map(tuple), signatures
)
committed_proofs = st.builds(CommittedProof, pre_prepares, st.lists(commits, max_size=3).map(tuple))
snapshots = st.builds(
    StateSnapshot,
    u63,
    digests,
    st.lists(st.tuples(ids, ids, u63, digests), max_size=4).map(tuple),
    st.lists(st.tuples(u32, u63, digests), max_size=3).map(tuple),
    st.lists(st.tuples(u63, u32, u63, digests), max_size=3).map(tuple),
)
state_replies = st.builds(
    StateReply,
    u32,
    st.none() | snapshots,
    st.lists(checkpoints, max_size=3).map(tuple),
    st.lists(committed_proofs, max_size=2).map(tuple),
)

peer_messages: st.SearchStrategy[PeerMessage] = st.one_of(
    st.builds(RequestMessage, u32, requests()),
    st.builds(ControlMessage, u32, model_updates),
    vote_batches,
    pre_prepares,
    prepares,
    commits,
    checkpoints,
    view_changes,
    new_views,
    st.builds(FetchVotes, u32, st.lists(vote_refs, max_size=4).map(tuple)),
    st.builds(FetchState, u32, u63),
    state_replies,
)


@st.composite
def committed_batches(draw: st.DrawFn) -> CommittedBatch:
    proposal = draw(proposals)
    indexes = range(len(proposal.entries))
    duplicates = tuple(sorted(draw(st.sets(st.sampled_from(indexes)))) if indexes else ())
    return CommittedBatch(
        draw(headers),
        proposal,
        tuple(draw(st.lists(commits, max_size=3))),
        tuple(draw(st.lists(vote_batches, max_size=2))),
        duplicates,
        draw(st.sampled_from([False, True])),
    )


records: st.SearchStrategy[PersistRecord] = st.one_of(
    st.builds(SignedRecord, peer_messages),
    st.builds(PreparedRecord, pre_prepares, st.lists(prepares, max_size=3).map(tuple)),
    st.builds(CommittedRecord, committed_batches()),
    st.builds(StableCheckpointRecord, snapshots, u63, st.lists(checkpoints, max_size=3).map(tuple)),
    st.builds(ViewRecord, u63),
)

fast = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- round trips -----------------------------------------------------------------------------


@fast
@given(u32, st.lists(peer_messages, max_size=4))
def test_peer_batch_round_trips_exactly(sender: int, messages: list[PeerMessage]) -> None:
    data = codec.encode_peer_batch(sender, messages)
    assert codec.decode_peer_batch(data) == (sender, messages)
    # one value, one encoding: what a peer decodes re-encodes to the very same bytes
    assert codec.encode_peer_batch(sender, codec.decode_peer_batch(data)[1]) == data


@fast
@given(peer_messages)
def test_single_peer_message_round_trips(message: PeerMessage) -> None:
    assert codec.decode_peer_message(codec.encode_peer_message(message)) == message


@fast
@given(records)
def test_persisted_records_round_trip_exactly(record: PersistRecord) -> None:
    data = codec.encode_record(record)
    assert codec.decode_record(data) == record
    assert codec.encode_record(codec.decode_record(data)) == data


@fast
@given(committed_batches())
def test_committed_batches_round_trip(batch: CommittedBatch) -> None:
    assert codec.decode_committed_batch(codec.encode_committed_batch(batch)) == batch


def test_messages_with_all_zero_fields_keep_their_kind() -> None:
    # FetchState(0, 0) has no non-default field; it must still arrive as a FetchState
    messages: list[PeerMessage] = [FetchState(0, 0), FetchVotes(0, ())]
    assert codec.decode_peer_batch(codec.encode_peer_batch(0, messages)) == (0, messages)
    assert codec.decode_record(codec.encode_record(ViewRecord(0))) == ViewRecord(0)


# -- hostile input ---------------------------------------------------------------------------


def _decodes_or_rejects(data: bytes) -> None:
    for decode in (codec.decode_peer_batch, codec.decode_record, codec.decode_committed_batch, codec.decode_peer_message):
        try:
            decode(data)
        except DecodeError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    _decodes_or_rejects(data)


@fast
@given(st.lists(peer_messages, min_size=1, max_size=2), records, st.randoms(use_true_random=False))
def test_mutated_encodings_decode_or_raise_decode_error(
    messages: list[PeerMessage], record: PersistRecord, rng: random.Random
) -> None:
    for valid in (codec.encode_peer_batch(1, messages), codec.encode_record(record)):
        for _ in range(20):
            data = bytearray(valid)
            action = rng.randrange(4)
            if action == 0 and data:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            elif action == 1:
                del data[rng.randrange(len(data) + 1) :]
            elif action == 2:
                data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
            elif data:
                start = rng.randrange(len(data))
                data += data[start : start + rng.randrange(1, 16)]
            _decodes_or_rejects(bytes(data))


def _prepare(**overrides: object) -> bytes:
    message = pb.PeerBatch(sender=1)
    prepare = message.messages.add().prepare
    prepare.sender = 1
    prepare.epoch = 0
    prepare.view = 1
    prepare.seq = 2
    prepare.batch_digest = bytes(32)
    prepare.signature = bytes(64)
    for name, value in overrides.items():
        setattr(prepare, name, value)
    return message.SerializeToString(deterministic=True)


def test_well_formed_prepare_decodes() -> None:
    assert codec.decode_peer_batch(_prepare()) == (1, [Prepare(1, 0, 1, 2, bytes(32), bytes(64))])


@pytest.mark.parametrize(
    "field, value",
    [
        ("batch_digest", bytes(31)),
        ("batch_digest", bytes(33)),
        ("signature", bytes(63)),
        ("signature", b""),
        ("seq", 2**63),
        ("view", 2**64 - 1),
    ],
)
def test_wrong_sizes_and_out_of_range_integers_are_rejected(field: str, value: object) -> None:
    with pytest.raises(DecodeError):
        codec.decode_peer_batch(_prepare(**{field: value}))


def test_unknown_fields_are_rejected() -> None:
    # field 15, varint 5: appended at the end, where protobuf itself would write it back
    with pytest.raises(DecodeError, match="unknown fields"):
        codec.decode_peer_batch(_prepare() + b"\x78\x05")


def test_peer_message_without_a_kind_is_rejected() -> None:
    message = pb.PeerBatch(sender=1)
    message.messages.add()
    with pytest.raises(DecodeError, match="no known kind"):
        codec.decode_peer_batch(message.SerializeToString())


def test_missing_required_parts_are_rejected() -> None:
    message = pb.PeerMessage()
    message.pre_prepare.sender = 1
    message.pre_prepare.signature = bytes(64)
    with pytest.raises(DecodeError, match="header is missing"):
        codec.decode_peer_message(message.SerializeToString())


def test_oversized_lists_are_rejected() -> None:
    message = pb.PeerBatch(sender=1)
    batch = message.messages.add().vote_batch
    batch.signature = bytes(64)
    entries = batch.entries
    for _ in range(codec.VOTE_ENTRIES_MAX + 1):
        entries.add()
    with pytest.raises(DecodeError, match="more than"):
        codec.decode_peer_batch(message.SerializeToString())

    many = pb.PeerBatch(sender=1)
    for _ in range(codec.PEER_BATCH_MESSAGES_MAX + 1):
        many.messages.add().fetch_state.SetInParent()
    with pytest.raises(DecodeError, match="more than"):
        codec.decode_peer_batch(many.SerializeToString())


def test_vote_refs_must_match_the_votes_of_their_leaf() -> None:
    leaf = Leaf(bytes(32), "c", "r", (), "plurality(min_support=2)", (Vote(0, 1, ModelOutput(((1, 10),))),), Decision(-1, (), ()))
    proposal = Proposal((ProposalEntry(leaf, (VoteRef(0, 1),)),))
    header = BatchHeader("g", 0, bytes(32), 0, 1, bytes(32), bytes(32), bytes(32), 0)
    message = codec.peer_message_to_proto(PrePrepare(0, 0, header, proposal, bytes(64)))
    del message.pre_prepare.proposal.entries[0].refs[:]
    with pytest.raises(DecodeError, match="vote refs"):
        codec.decode_peer_message(message.SerializeToString())


def test_unknown_batch_origin_is_rejected() -> None:
    header = BatchHeader("g", 0, bytes(32), 0, 1, bytes(32), bytes(32), bytes(32), 0)
    message = codec.committed_batch_to_proto(CommittedBatch(header, Proposal(()), (), (), ()))
    message.origin = 7  # type: ignore[assignment]  # an open enum accepts any number
    with pytest.raises(DecodeError, match="origin"):
        codec.decode_committed_batch(message.SerializeToString())


def test_duplicate_index_outside_the_batch_is_rejected() -> None:
    header = BatchHeader("g", 0, bytes(32), 0, 1, bytes(32), bytes(32), bytes(32), 0)
    data = codec.encode_committed_batch(CommittedBatch(header, Proposal(()), (), (), (0,)))
    with pytest.raises(DecodeError, match="outside"):
        codec.decode_committed_batch(data)


def test_non_bytes_input_is_rejected() -> None:
    with pytest.raises(DecodeError):
        codec.decode_peer_batch("not bytes")  # type: ignore[arg-type]


@fast
@given(u32, st.lists(vote_batches, min_size=1, max_size=3))
def test_a_received_vote_batch_is_persisted_from_the_bytes_it_came_in_exactly_as_encoded_afresh(
    sender: int, batches: list[VoteBatch]
) -> None:
    _, received = codec.decode_peer_batch(codec.encode_peer_batch(sender, batches))
    assert all(batch.wire is not None for batch in received)  # kept from the frame
    header = BatchHeader("g", 0, b"\x01" * 32, 0, 1, b"\x02" * 32, b"\x03" * 32, b"\x04" * 32, 0)
    persisted = codec.encode_record(CommittedRecord(CommittedBatch(header, Proposal(()), (), tuple(received), ())))
    # copies made field by field (dataclasses.replace keeps no cached bytes) encode the same
    afresh = tuple(replace(batch) for batch in received)
    assert all(batch.wire is None for batch in afresh)
    assert codec.encode_record(CommittedRecord(CommittedBatch(header, Proposal(()), (), afresh, ()))) == persisted
    assert codec.decode_record(persisted) == CommittedRecord(CommittedBatch(header, Proposal(()), (), tuple(batches), ()))


def test_a_stored_committed_batch_reads_each_vote_once() -> None:
    """A committed batch holds every vote twice, in its voter's vote batch and in its leaf: read
    back (start-up rebuilds, state transfer), a leaf's vote is the output its vote entry was read
    as (certs.wire's memo of voted outputs), and the batch is the batch."""
    digest = b"\x07" * 32
    outputs = [ModelOutput(((i, 9000), (i + 1, 1000))) for i in range(3)]
    entries = tuple(VoteEntry("client", f"r{i}", digest, (), output) for i, output in enumerate(outputs))
    votes = VoteBatch(sender=1, epoch=0, batch_no=4, model_version=2, entries=entries, signature=b"\x05" * 64)
    leaves = [
        Leaf(digest, "client", f"r{i}", (), "plurality", (Vote(1, 2, output),), Decision(i, ((i, 9000),), (1,)))
        for i, output in enumerate(outputs)
    ]
    proposal = Proposal(tuple(ProposalEntry(leaf, (VoteRef(1, 4),)) for leaf in leaves))
    header = BatchHeader("g", 0, b"\x01" * 32, 0, 1, b"\x02" * 32, b"\x03" * 32, b"\x04" * 32, len(leaves))
    batch = CommittedBatch(header, proposal, (), (votes,), ())
    with voted_outputs():
        read = codec.decode_committed_batch(codec.encode_committed_batch(batch))
    assert read == batch
    for entry, vote_entry in zip(read.proposal.entries, read.vote_batches[0].entries):
        assert entry.leaf.votes[0].output is vote_entry.output
