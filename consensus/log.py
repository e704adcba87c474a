"""The message log: one slot per sequence number inside the watermarks (PBFT section 4.2)."""

from __future__ import annotations

from consensus.messages import Commit, PrePrepare, Prepare, PreparedProof


class Slot:
    """Everything known about one sequence number.

    Contents are indexed by batch digest (view-free), votes by (view, batch digest): a batch
    re-proposed in a later view has the same digest and a new view.
    """

    __slots__ = (
        "seq",
        "pre_prepare",
        "contents",
        "prepares",
        "commits",
        "prepared_proof",
        "committed",
        "executed",
        "created_tick",
        "progress_tick",
    )

    def __init__(self, seq: int, tick: int) -> None:
        self.seq = seq
        self.pre_prepare: PrePrepare | None = None  # accepted in the current view
        self.contents: dict[bytes, PrePrepare] = {}  # batch digest -> a pre-prepare carrying it
        self.prepares: dict[tuple[int, bytes], dict[int, Prepare]] = {}
        self.commits: dict[tuple[int, bytes], dict[int, Commit]] = {}
        self.prepared_proof: PreparedProof | None = None  # highest view in which this replica prepared
        self.committed: tuple[PrePrepare, tuple[Commit, ...]] | None = None
        self.executed = False
        self.created_tick = tick
        self.progress_tick = tick

    def add_prepare(self, prepare: Prepare) -> dict[int, Prepare]:
        bucket = self.prepares.setdefault((prepare.view, prepare.batch_digest), {})
        bucket.setdefault(prepare.sender, prepare)
        return bucket

    def add_commit(self, commit: Commit) -> dict[int, Commit]:
        bucket = self.commits.setdefault((commit.view, commit.batch_digest), {})
        bucket.setdefault(commit.sender, commit)
        return bucket

    def prepare_from(self, view: int, sender: int) -> Prepare | None:
        for (v, _), bucket in self.prepares.items():
            if v == view and sender in bucket:
                return bucket[sender]
        return None

    def commit_from(self, view: int, sender: int) -> Commit | None:
        for (v, _), bucket in self.commits.items():
            if v == view and sender in bucket:
                return bucket[sender]
        return None

    def drop_views_below(self, view: int) -> None:
        """Prepares of older views can no longer prepare anything (commits still certify)."""
        self.prepares = {key: bucket for key, bucket in self.prepares.items() if key[0] >= view}
