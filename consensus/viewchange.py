"""View change (PBFT section 4.4): checking view-change messages and computing NEW-VIEW.

Pure functions of signed messages, shared by the new primary (which builds the NEW-VIEW) and
the backups (which recompute it and compare), so both sides agree by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from certs.batch import BatchHeader, ops_digest
from certs.config import GroupConfig
from certs.keys import SignatureVerifier
from certs.merkle import EMPTY_ROOT, root_of_hashes

from consensus.errors import ByzantineMessageError
from consensus.messages import Checkpoint, PrePrepare, Proposal, ViewChange
from consensus.state import ZERO_DIGEST


def proposal_matches_header(header: BatchHeader, proposal: Proposal) -> bool:
    """A proposal's leaves and ops are the ones its header commits to."""
    if header.leaf_count != len(proposal.entries):
        return False
    if header.decisions_root != root_of_hashes([e.leaf.hash for e in proposal.entries]):
        return False
    if header.ops_digest != ops_digest([op.canonical() for op in proposal.ops]):
        return False
    # batches without requests carry no model version table (nothing was voted on)
    return proposal.entries or header.model_versions_digest == ZERO_DIGEST


def null_header(config: GroupConfig, view: int, seq: int) -> BatchHeader:
    return BatchHeader(config.group_id, config.epoch, config.digest, view, seq, EMPTY_ROOT, ops_digest(()), ZERO_DIGEST, 0)


def check_checkpoint_proof(
    config: GroupConfig, verifier: SignatureVerifier, seq: int, state_digest: bytes, proof: Sequence[Checkpoint]
) -> bool:
    """A quorum of distinct members signed the checkpoint (seq, state_digest)."""
    if seq == 0:
        return True
    signers: set[int] = set()
    for checkpoint in proof:
        public_key = config.public_key(checkpoint.sender)
        if (
            public_key is None
            or checkpoint.seq != seq
            or checkpoint.state_digest != state_digest
            or checkpoint.epoch != config.epoch
            or checkpoint.sender in signers
            or not verifier.verify(public_key, checkpoint.statement(config.group_id).message(), checkpoint.signature)
        ):
            return False
        signers.add(checkpoint.sender)
    return len(signers) >= config.quorum_size


def check_pre_prepare_signature(config: GroupConfig, verifier: SignatureVerifier, pp: PrePrepare) -> bool:
    public_key = config.public_key(pp.sender)
    return (
        public_key is not None
        and pp.sender == config.primary(pp.view)
        and verifier.verify(public_key, pp.statement().message(), pp.signature)
    )


def check_view_change(
    config: GroupConfig,
    verifier: SignatureVerifier,
    vc: ViewChange,
    checkpoint_config: GroupConfig | None = None,
    floor_seq: int = 0,
) -> None:
    """Raise ByzantineMessageError unless `vc` is well-formed and every proof in it holds.

    `checkpoint_config` is the config whose replicas signed the checkpoint at `vc.stable_seq`
    (the previous epoch's, when the checkpoint closed it); `floor_seq` is where the current epoch
    began: batches up to it belong to an earlier epoch and are never re-proposed."""
    sender = vc.sender
    public_key = config.public_key(sender)
    if public_key is None:
        raise ByzantineMessageError(sender, "non-member", "view change from a non-member")
    if vc.epoch != config.epoch:
        raise ByzantineMessageError(sender, "wrong-epoch", f"view change for epoch {vc.epoch}")
    if not verifier.verify(public_key, vc.statement(config.group_id).message(), vc.signature):
        raise ByzantineMessageError(sender, "bad-signature", f"view change to view {vc.new_view}")
    interval = config.params.checkpoint_interval_batches
    if vc.stable_seq % interval:
        raise ByzantineMessageError(sender, "bad-checkpoint", f"checkpoint at {vc.stable_seq} is off the interval")
    if not check_checkpoint_proof(checkpoint_config or config, verifier, vc.stable_seq, vc.stable_digest, vc.checkpoint_proof):
        raise ByzantineMessageError(sender, "bad-checkpoint", f"no valid quorum for checkpoint {vc.stable_seq}")
    window = config.params.log_window_batches
    previous_seq = max(vc.stable_seq, floor_seq)
    for proof in vc.prepared:
        pp = proof.pre_prepare
        if not previous_seq < pp.seq <= max(vc.stable_seq, floor_seq) + window:
            raise ByzantineMessageError(sender, "bad-prepared-proof", f"prepared seq {pp.seq} out of order or window")
        previous_seq = pp.seq
        if pp.view >= vc.new_view or pp.epoch != config.epoch:
            raise ByzantineMessageError(sender, "bad-prepared-proof", f"prepared in view {pp.view}")
        if not check_pre_prepare_signature(config, verifier, pp):
            raise ByzantineMessageError(sender, "bad-prepared-proof", f"pre-prepare for seq {pp.seq} is not signed by its primary")
        header = pp.header
        if (header.group_id, header.epoch, header.config_digest) != (config.group_id, config.epoch, config.digest):
            raise ByzantineMessageError(sender, "bad-prepared-proof", f"pre-prepare for seq {pp.seq} names another group")
        if not proposal_matches_header(header, pp.proposal):
            raise ByzantineMessageError(sender, "bad-prepared-proof", f"proposal for seq {pp.seq} does not match its header")
        primary = pp.sender
        signers: set[int] = set()
        for prepare in proof.prepares:
            key = config.public_key(prepare.sender)
            if (
                key is None
                or prepare.sender == primary
                or prepare.sender in signers
                or (prepare.view, prepare.seq, prepare.batch_digest) != (pp.view, pp.seq, header.batch_digest)
                or prepare.epoch != config.epoch
                or not verifier.verify(key, prepare.statement(config.group_id).message(), prepare.signature)
            ):
                raise ByzantineMessageError(sender, "bad-prepared-proof", f"invalid prepare in proof for seq {pp.seq}")
            signers.add(prepare.sender)
        if len(signers) < config.quorum_size - 1:
            raise ByzantineMessageError(sender, "bad-prepared-proof", f"too few prepares for seq {pp.seq}")


@dataclass(frozen=True, slots=True)
class NewViewPlan:
    """What the NEW-VIEW of a view must re-propose: seq -> the prepared batch, or None (null)."""

    min_seq: int  # the latest stable checkpoint among the view changes
    stable_digest: bytes
    checkpoint_proof: tuple[Checkpoint, ...]
    batches: tuple[tuple[int, PrePrepare | None], ...]  # ascending seq in (min_seq, max_seq]


def plan_new_view(view_changes: Sequence[ViewChange], floor_seq: int = 0) -> NewViewPlan:
    """PBFT's choice of O: for each seq above the latest stable checkpoint (and above the start
    of the current epoch), the batch prepared in the highest view, or a null batch where none
    prepared. Inputs must already be checked."""
    best = max(view_changes, key=lambda vc: vc.stable_seq)
    min_seq = max(best.stable_seq, floor_seq)
    chosen: dict[int, PrePrepare] = {}
    for vc in view_changes:
        for proof in vc.prepared:
            pp = proof.pre_prepare
            if pp.seq > min_seq and (pp.seq not in chosen or pp.view > chosen[pp.seq].view):
                chosen[pp.seq] = pp
    max_seq = max(chosen, default=min_seq)
    batches = tuple((seq, chosen.get(seq)) for seq in range(min_seq + 1, max_seq + 1))
    return NewViewPlan(min_seq, best.stable_digest, best.checkpoint_proof, batches)
