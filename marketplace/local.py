"""A whole group on one machine: keys, models, configs and one process per replica.

Used by `quorumserve up`, the demo, the process-level tests and the benchmarks. Each replica is
a separate `quorumserve replica` process (its own Triton, its own SQLite, gRPC to the others),
started in its own process group so that stopping it also stops its tritonserver.

Membership: `join_member()` prepares a new owner's replica (keys, model, ports, TOML) and its
signed join request; once a quorum of owners approved it and the group ordered it
(`admit_member`), `start_member()` starts the replica in the epoch it joined. `leave_member(i)`
takes replica i out. The group's later configs are followed from the genesis config
(`chain()`), each link checked against the quorum of the epoch before it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc

from certs.config import GroupConfig, Member, ProtocolParams, TaskSchema, save_group_config
from certs.keys import KeyPair, load_private_key, save_private_key
from certs.membership import JoinRequest
from marketplace.membership import ConfigChain, follow_chain
from certs.policy import AgreementPolicy
from replica.config import AdmissionLimits, ReplicaConfig, TritonPorts, render_replica_config

log = logging.getLogger("quorumserve.local")

# how long start-up waits for the replicas' links to each other once they serve (gRPC retries a
# refused connection within a second: see replica/transport.py)
LINKS_WAIT_S = 15.0


class LocalGroupError(RuntimeError):
    pass


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the OS considers free right now (held open together so they are distinct)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class ReplicaProcess:
    replica_id: int
    config_path: Path
    config: ReplicaConfig
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    lifeline_fd: int | None = None  # write end of the pipe the process watches (see start_replica)

    def close_lifeline(self) -> None:
        if self.lifeline_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.lifeline_fd)
            self.lifeline_fd = None

    @property
    def address(self) -> str:
        return self.config.listen

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class JoiningMember:
    """A new owner's replica, prepared but not yet a member (its id comes with the new epoch)."""

    slot: int  # numbers the joins of this local group (files are named after it)
    owner_id: str
    owner_key_path: Path
    replica_key_path: Path
    config: ReplicaConfig  # replica_id is the expected one until the join takes effect
    join: JoinRequest  # signed for the epoch that was current when it was prepared

    @property
    def owner_key(self) -> KeyPair:
        return load_private_key(self.owner_key_path)

    @property
    def replica_key(self) -> KeyPair:
        return load_private_key(self.replica_key_path)

    @property
    def address(self) -> str:
        return self.config.listen


@dataclass
class LocalGroup:
    """n = 3f+1 replica processes of one group under `data_dir`."""

    data_dir: Path
    f: int = 1
    group_id: str = "digits"
    model_packages: Sequence[Path] | None = None  # one per replica; trained digits models if None
    misbehave: dict[int, str] = field(default_factory=dict)
    params: ProtocolParams = field(default_factory=ProtocolParams)
    policy: AgreementPolicy = field(default_factory=AgreementPolicy)
    price_per_request: int = 1
    storage_sync: str = "full"  # each replica's [storage] sync ("process": no fsync per write)
    spare_models: int = 1  # each replica's [triton] spare_models (warm Triton models for updates)
    admission: AdmissionLimits = field(default_factory=AdmissionLimits)  # each replica's [admission]
    task: TaskSchema | None = None  # the group's task; the digits task if None
    host: str = "127.0.0.1"
    log_level: str = "INFO"
    progress: bool = False
    config: GroupConfig | None = None
    replicas: list[ReplicaProcess] = field(default_factory=list)
    trained: list[object] = field(default_factory=list)

    @property
    def n(self) -> int:
        return 3 * self.f + 1

    @property
    def group_config_path(self) -> Path:
        return self.data_dir / "group.json"

    def owner_key_path(self, replica_id: int) -> Path:
        return self.data_dir / "keys" / f"owner-{replica_id}.key"

    def owner_key(self, replica_id: int) -> KeyPair:
        return load_private_key(self.owner_key_path(replica_id))

    # -- preparing ------------------------------------------------------------------------------
    def prepare(self) -> GroupConfig:
        """Keys, models, the group config and one TOML per replica (reused when present)."""
        from replica.model_spec import weights_digest

        self.data_dir = Path(self.data_dir).resolve()
        keys_dir = self.data_dir / "keys"
        keys_dir.mkdir(parents=True, exist_ok=True)
        packages = self._packages()
        existing = self._existing_replica_configs()
        ports = free_ports(5 * self.n, self.host)
        members = []
        self.replicas = []
        for i in range(self.n):
            replica_key = self._key(keys_dir / f"replica-{i}.key")
            owner_key = self._key(self.owner_key_path(i))
            if i in existing:
                replica_config = existing[i]
            else:
                base = 5 * i
                replica_config = ReplicaConfig(
                    group_config=self.group_config_path,
                    replica_id=i,
                    key_file=keys_dir / f"replica-{i}.key",
                    listen=f"{self.host}:{ports[base]}",
                    data_dir=self.data_dir / f"replica-{i}",
                    model_package=Path(packages[i]).resolve(),
                    model_version=1,
                    triton=TritonPorts(ports[base + 1], ports[base + 2], ports[base + 3], spare_models=self.spare_models),
                    metrics_port=ports[base + 4],
                )
            mode = self.misbehave.get(i, "none")
            replica_config = replace(
                replica_config, misbehave=mode.split(":")[0], storage_sync=self.storage_sync, admission=self.admission
            )
            if mode.startswith("swap-weak"):
                # "swap-weak:N": after N requests this replica silently answers with a weak model
                from marketplace.models import weak_model_package

                weak = weak_model_package(self.data_dir / "models" / f"weak-{i}", seed=i)
                after = int(mode.split(":")[1]) if ":" in mode else 100
                replica_config = replace(replica_config, weak_package=Path(weak.directory), swap_after_requests=after)
            members.append(
                Member(
                    replica_id=i,
                    owner_id=f"owner-{i}",
                    public_key=replica_key.public_key,
                    owner_public_key=owner_key.public_key,
                    address=replica_config.listen,
                    model_version=1,
                    weights_digest=weights_digest(Path(packages[i])),
                )
            )
            config_path = self.data_dir / f"replica-{i}.toml"
            config_path.write_text(render_replica_config(replica_config))
            self.replicas.append(ReplicaProcess(i, config_path, replica_config, self.data_dir / f"replica-{i}.log"))
        from marketplace.models import digits_task

        task: TaskSchema = self.task or digits_task()
        self.config = GroupConfig(
            group_id=self.group_id,
            epoch=0,
            f=self.f,
            members=tuple(members),
            task=task,
            policy=self.policy,
            params=self.params,
            price_per_request=self.price_per_request,
        )
        save_group_config(self.config, self.group_config_path)
        return self.config

    def _existing_replica_configs(self) -> dict[int, ReplicaConfig]:
        from replica.config import ReplicaConfigError, load_replica_config

        found: dict[int, ReplicaConfig] = {}
        for i in range(self.n):
            path = self.data_dir / f"replica-{i}.toml"
            if path.exists() and self.group_config_path.exists():
                try:
                    found[i] = load_replica_config(path)
                except ReplicaConfigError:
                    continue
        return found

    @staticmethod
    def _key(path: Path) -> KeyPair:
        if path.exists():
            return load_private_key(path)
        key = KeyPair.generate()
        save_private_key(key, path)
        return key

    def _packages(self) -> list[Path]:
        if self.model_packages is not None:
            if len(self.model_packages) != self.n:
                raise LocalGroupError(f"{len(self.model_packages)} model packages for {self.n} replicas")
            return [Path(p) for p in self.model_packages]
        models_dir = self.data_dir / "models"
        manifest = models_dir / "manifest.json"
        if manifest.exists():
            paths = [Path(p) for p in json.loads(manifest.read_text())["packages"]]
            if len(paths) >= self.n and all(p.exists() for p in paths[: self.n]):
                return paths[: self.n]
        from marketplace.models import train_digits_models

        trained = train_digits_models(models_dir, count=self.n, seed=0, progress=self.progress)
        self.trained = list(trained)
        paths = [Path(t.package_dir) for t in trained]  # type: ignore[attr-defined]
        manifest.write_text(json.dumps({"packages": [str(p) for p in paths]}, indent=2))
        return paths

    # -- membership -----------------------------------------------------------------------------
    def chain(self, timeout_s: float = 5.0) -> ConfigChain:
        """The group's configs from genesis, each later epoch's checked against the quorum of
        the one before it."""
        if self.config is None:
            raise LocalGroupError("the group is not prepared")
        chain = ConfigChain(self.config)
        follow_chain(chain, timeout_s=timeout_s)
        return chain

    def current_config(self, timeout_s: float = 5.0) -> GroupConfig:
        return self.chain(timeout_s).current

    def join_member(self, *, owner_id: str | None = None, model_package: Path | None = None) -> JoiningMember:
        """Prepare a new owner's replica: its owner and replica keys, a model (a freshly trained
        digits model unless given), ports and TOML, and its signed join request for the
        current epoch. Nothing is sent: approvals and submission come next."""
        from marketplace.membership import expected_replica_id, sign_join
        from replica.model_spec import weights_digest

        if self.config is None:
            raise LocalGroupError("the group is not prepared")
        keys_dir = self.data_dir / "keys"
        slot = sum(1 for _ in keys_dir.glob("owner-join-*.key"))
        owner_id = owner_id or f"owner-join-{slot}"
        owner_key_path = keys_dir / f"owner-join-{slot}.key"
        replica_key_path = keys_dir / f"replica-join-{slot}.key"
        owner_key, replica_key = self._key(owner_key_path), self._key(replica_key_path)
        if model_package is None:
            from marketplace.models import train_digits_models

            trained = train_digits_models(self.data_dir / "models" / f"join-{slot}", count=1, seed=100 + slot, progress=False)
            model_package = Path(trained[0].package_dir)
        package = Path(model_package).resolve()
        current = self.current_config()
        rid = expected_replica_id(current)
        ports = free_ports(5, self.host)
        replica_config = ReplicaConfig(
            group_config=self.group_config_path,
            replica_id=rid,
            key_file=replica_key_path,
            listen=f"{self.host}:{ports[0]}",
            data_dir=self.data_dir / f"replica-join-{slot}",
            model_package=package,
            model_version=1,
            triton=TritonPorts(ports[1], ports[2], ports[3], spare_models=self.spare_models),
            metrics_port=ports[4],
            storage_sync=self.storage_sync,
            admission=self.admission,
        )
        join = sign_join(
            current, owner_id=owner_id, owner_key=owner_key, replica_key=replica_key,
            address=replica_config.listen, weights_digest=weights_digest(package),
        )
        (self.data_dir / f"replica-join-{slot}.toml").write_text(render_replica_config(replica_config))
        return JoiningMember(slot, owner_id, owner_key_path, replica_key_path, replica_config, join)

    def admit_member(self, member: JoiningMember, approvers: Sequence[int] | None = None, *, wait: bool = True, timeout_s: float = 600.0) -> GroupConfig:
        """Have a quorum of the current members' owners approve the join and submit it; with
        `wait`, return the config of the epoch that admits it (else the current one)."""
        from marketplace.membership import approve_join, join_op, submit_control

        current = self.current_config()
        ids = list(approvers) if approvers is not None else list(current.replica_ids[: current.quorum_size])
        approvals = [approve_join(current, member.join, rid, self.owner_key(rid)) for rid in ids]
        submit_control(current, join_op(current, member.join, approvals))
        if not wait:
            return current
        return self.wait_for_config(lambda c: any(m.public_key == member.join.replica_public_key for m in c.members), timeout_s)

    def wait_for_config(self, predicate: Callable[[GroupConfig], bool], timeout_s: float = 600.0) -> GroupConfig:
        """The first epoch's config that satisfies `predicate` (polling the chain)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for config in self.chain().configs:
                if predicate(config):
                    return config
            if time.monotonic() > deadline:
                raise LocalGroupError(f"no epoch with the expected membership after {timeout_s:.0f} s")
            time.sleep(0.5)

    def start_member(self, member: JoiningMember, *, wait: bool = True, timeout_s: float = 180.0) -> int:
        """Start an admitted member's replica (it fetches the chain from the genesis members,
        starts in the epoch it joined and catches up by state transfer); returns its id."""
        joined = self.wait_for_config(lambda c: any(m.public_key == member.join.replica_public_key for m in c.members), 0)
        rid = next(m.replica_id for m in joined.members if m.public_key == member.join.replica_public_key)
        replica_config = replace(member.config, replica_id=rid)
        member.config = replica_config
        config_path = self.data_dir / f"replica-{rid}.toml"
        config_path.write_text(render_replica_config(replica_config))
        keys_dir = self.data_dir / "keys"
        for source, target in ((member.owner_key_path, self.owner_key_path(rid)), (member.replica_key_path, keys_dir / f"replica-{rid}.key")):
            if not target.exists():  # so owner_key(rid) finds the new owner's key like everyone else's
                save_private_key(load_private_key(source), target)
        process = ReplicaProcess(rid, config_path, replica_config, self.data_dir / f"replica-{rid}.log")
        if rid < len(self.replicas):
            if self.replicas[rid].running:
                raise LocalGroupError(f"replica {rid} is still running; the new member got its id")
            self.replicas[rid] = process
        elif rid == len(self.replicas):
            self.replicas.append(process)
        else:
            raise LocalGroupError(f"replica id {rid} skips ids this launcher never started")
        self.start_replica(rid, wait=wait, timeout_s=timeout_s)
        return rid

    def leave_member(self, replica_id: int, *, wait: bool = True, stop: bool = True, timeout_s: float = 600.0) -> GroupConfig:
        """Replica `replica_id`'s owner takes it out of the group. With `wait`, return the config
        of the epoch without it (and, with `stop`, stop its process then)."""
        from marketplace.membership import leave_op, submit_control

        current = self.current_config()
        submit_control(current, leave_op(current, replica_id, self.owner_key(replica_id)))
        if not wait:
            return current
        config = self.wait_for_config(lambda c: c.epoch > current.epoch and not c.is_member(replica_id), timeout_s)
        if stop:
            self.stop_replica(replica_id)
        return config

    # -- running --------------------------------------------------------------------------------
    def start(self, *, timeout_s: float = 180.0) -> None:
        if self.config is None:
            self.prepare()
        for replica in self.replicas:
            self.start_replica(replica.replica_id, wait=False)
        self.wait_ready(timeout_s=timeout_s)

    def command_prefix(self, replica_id: int) -> list[str]:
        """What a replica's command runs under (e.g. `ip netns exec` on the test bed); none here."""
        return []

    def start_replica(self, replica_id: int, *, wait: bool = True, timeout_s: float = 120.0) -> None:
        replica = self.replicas[replica_id]
        if replica.running:
            return
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        handle = open(replica.log_path, "ab")
        # A lifeline: the replica stops when the read end it holds reaches EOF, which happens when
        # this process exits however it exits (SIGKILL, an OOM kill), so no replica outlives its
        # launcher. A pipe rather than PR_SET_PDEATHSIG, which needs code run between fork and
        # exec (unsafe beside grpc's threads) and fires when the launching *thread* exits.
        read_fd, write_fd = os.pipe()
        replica.close_lifeline()
        try:
            replica.process = subprocess.Popen(
                [
                    *self.command_prefix(replica_id),
                    sys.executable, "-m", "marketplace.cli", "replica", "--config", str(replica.config_path),
                    "--log-level", self.log_level, "--lifeline-fd", str(read_fd),
                ],
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopping it stops its Triton too
                pass_fds=(read_fd,),
                env=env,
                cwd=str(Path(__file__).resolve().parent.parent),
            )
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
            handle.close()
        replica.lifeline_fd = write_fd
        if wait:
            self.wait_ready([replica_id], timeout_s=timeout_s)

    def wait_ready(self, replica_ids: Sequence[int] | None = None, *, timeout_s: float = 180.0) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        ids = list(range(self.n)) if replica_ids is None else list(replica_ids)
        deadline = time.monotonic() + timeout_s
        for rid in ids:
            replica = self.replicas[rid]
            while True:
                if replica.process is not None and replica.process.poll() is not None:
                    raise LocalGroupError(f"replica {rid} exited with {replica.process.returncode}; see {replica.log_path}:\n{self.log_tail(rid)}")
                try:
                    with grpc.insecure_channel(replica.address) as channel:
                        reply = health_pb2_grpc.HealthStub(channel).Check(
                            health_pb2.HealthCheckRequest(service="quorumserve.v1.Replica"), timeout=1.0
                        )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise LocalGroupError(f"replica {rid} not ready after {timeout_s:.0f} s; see {replica.log_path}:\n{self.log_tail(rid)}")
                time.sleep(0.25)
        self._wait_linked(ids, min(LINKS_WAIT_S, max(0.0, deadline - time.monotonic())))

    def _wait_linked(self, replica_ids: Sequence[int], timeout_s: float) -> None:
        """Until the links between `replica_ids` and the other running replicas are up, both ways.
        A replica serves before its links connect (a peer may be down for good), but a link to
        a peer that started a moment later connects only on gRPC's next retry: requests sent
        meanwhile were certified without that replica's votes, and its owner went unpaid for
        them. Not fatal when it takes longer (a peer may be stopped on purpose): logged."""
        from protos import replica_api_pb2 as api
        from protos import replica_api_pb2_grpc as api_grpc

        deadline = time.monotonic() + timeout_s
        missing: list[str] = []
        while True:
            links: dict[int, tuple[set[int], set[int]]] = {}  # replica -> (peers, connected)
            for replica in self.replicas:
                if not replica.running:
                    continue
                try:
                    with grpc.insecure_channel(replica.address) as channel:
                        reply = api_grpc.ReplicaStub(channel).Status(api.StatusRequest(), timeout=1.0)
                    links[replica.replica_id] = (set(reply.peers), set(reply.connected_peers))
                except grpc.RpcError:
                    continue  # still starting, or its Triton is busy: asked again below
            missing = [
                f"{a}->{b}"
                for a, (peers, connected) in sorted(links.items())
                for b in sorted(peers & links.keys())
                if (a in replica_ids or b in replica_ids) and b not in connected
            ]
            if not missing and all(rid in links for rid in replica_ids):
                return
            if time.monotonic() > deadline:
                log.warning("peer links still down after %.0f s: %s", timeout_s, ", ".join(missing) or "status unanswered")
                return
            time.sleep(0.05)

    def log_tail(self, replica_id: int, lines: int = 30) -> str:
        path = self.replicas[replica_id].log_path
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def signal(self, replica_id: int, sig: int) -> None:
        process = self.replicas[replica_id].process
        if process is not None and process.poll() is None:
            os.killpg(process.pid, sig)

    def kill(self, replica_id: int) -> None:
        """kill -9 the replica and its Triton, as a crash would."""
        process = self.replicas[replica_id].process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        self.replicas[replica_id].close_lifeline()

    def pause(self, replica_id: int) -> None:
        self.signal(replica_id, signal.SIGSTOP)

    def resume(self, replica_id: int) -> None:
        self.signal(replica_id, signal.SIGCONT)

    def stop_replica(self, replica_id: int, timeout_s: float = 30.0) -> None:
        process = self.replicas[replica_id].process
        if process is None or process.poll() is not None:
            self.replicas[replica_id].close_lifeline()
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGCONT)
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("replica %d did not stop in %.0f s; killing it", replica_id, timeout_s)
        # whatever is left of its process group (Triton) goes too
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        self.replicas[replica_id].close_lifeline()

    def stop(self) -> None:
        for replica in self.replicas:
            process = replica.process
            if process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGCONT)
                    os.killpg(process.pid, signal.SIGTERM)
        for replica in self.replicas:
            self.stop_replica(replica.replica_id)

    @property
    def addresses(self) -> list[str]:
        return [r.address for r in self.replicas]

    def __enter__(self) -> LocalGroup:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def local_group(data_dir: Path, **kwargs: object) -> Iterator[LocalGroup]:
    group = LocalGroup(Path(data_dir), **kwargs)  # type: ignore[arg-type]
    try:
        group.start()
        yield group
    finally:
        group.stop()
