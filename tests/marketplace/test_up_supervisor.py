"""`quorumserve up` as a supervisor (marketplace/commands.py `_supervise`): stand-in processes,
no replica started."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from marketplace import commands
from marketplace.local import LocalGroupError
from replica.server import EXIT_TRITON_DIED


@dataclass
class FakeProcess:
    returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


@dataclass
class FakeReplica:
    replica_id: int
    process: FakeProcess = field(default_factory=FakeProcess)
    log_path: Path = Path("replica.log")


@dataclass
class FakeGroup:
    replicas: list[FakeReplica]
    started: list[int] = field(default_factory=list)
    refuse: bool = False

    def start_replica(self, replica_id: int) -> None:
        self.started.append(replica_id)
        if self.refuse:
            raise LocalGroupError(f"replica {replica_id} not ready")
        self.replicas[replica_id].process = FakeProcess()


@dataclass
class FakeGateway:
    running: bool = True
    process: FakeProcess = field(default_factory=FakeProcess)
    log_path: Path = Path("gateway.log")


def test_a_replica_whose_triton_died_is_restarted_a_few_times_then_left_down(capsys: pytest.CaptureFixture[str]) -> None:
    group = FakeGroup([FakeReplica(0), FakeReplica(1)])
    reported: set[str] = set()
    restarts: dict[int, int] = {}
    for _ in range(commands.UP_RESTARTS_MAX + 2):
        group.replicas[1].process.returncode = EXIT_TRITON_DIED
        commands._supervise(group, FakeGateway(), reported, restarts)  # type: ignore[arg-type]
    assert group.started == [1] * commands.UP_RESTARTS_MAX
    out = capsys.readouterr().out
    assert out.count("its Triton died; starting it again") == commands.UP_RESTARTS_MAX
    assert out.count(f"replica 1 exited with status {EXIT_TRITON_DIED}") == 1  # then left down, said once
    assert group.replicas[0].process.returncode is None


def test_other_exits_are_reported_once_and_not_restarted(capsys: pytest.CaptureFixture[str]) -> None:
    group = FakeGroup([FakeReplica(0, FakeProcess(1)), FakeReplica(1, FakeProcess(-9))])
    gateway = FakeGateway(running=False, process=FakeProcess(2))
    reported: set[str] = set()
    for _ in range(3):
        commands._supervise(group, gateway, reported, {})  # type: ignore[arg-type]
    assert group.started == []
    out = capsys.readouterr().out
    assert out.count("replica 0 exited with status 1") == 1 and out.count("replica 1 exited with status -9") == 1
    assert out.count("the gateway exited with status 2") == 1


def test_a_restart_that_fails_is_said_and_not_retried(capsys: pytest.CaptureFixture[str]) -> None:
    group = FakeGroup([FakeReplica(0, FakeProcess(EXIT_TRITON_DIED))], refuse=True)
    reported: set[str] = set()
    for _ in range(3):
        commands._supervise(group, FakeGateway(), reported, {})  # type: ignore[arg-type]
    assert group.started == [0]
    assert "replica 0 did not come back: replica 0 not ready" in capsys.readouterr().out
