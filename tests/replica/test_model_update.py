"""Owners update their models while the group serves (real processes, real Triton).

Under a continuous client load, f+1 replicas switch to a model that always answers one known
class: first one after the other, then two at the same time. No client request fails, every
certificate verifies, and each replica's votes carry the old version exactly up to the
sequence number where the log put the new one in effect, and the new version from there on.
Updates the group must refuse change nothing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from certs.keys import KeyPair
from certs.verify import verify
from marketplace.local import LocalGroup
from marketplace.models import constant_model_package, held_out_digits
from marketplace.owner import ModelUpdateError, Owner, sign_model_update
from protos import replica_api_pb2 as api
from protos import replica_api_pb2_grpc as api_grpc
from replica.codec import model_update_to_proto
from tests.replica.cluster_helpers import status, wait_until
from tests.replica.load import Load, LoadResult

pytestmark = pytest.mark.processes
CONSTANT_LABEL = 7


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory, digits_packages: list[Path]) -> Iterator[LocalGroup]:
    g = LocalGroup(tmp_path_factory.mktemp("updates"), model_packages=digits_packages)
    try:
        g.start()
        yield g
    finally:
        g.stop()


@pytest.fixture(scope="module")
def constant_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(constant_model_package(tmp_path_factory.mktemp("constant") / "always-7", str(CONSTANT_LABEL)).directory)


def owner(group: LocalGroup, replica_id: int) -> Owner:
    assert group.config is not None
    return Owner(group.config, replica_id, group.owner_key(replica_id))


def activation(group: LocalGroup, replica_id: int, version: int) -> int | None:
    """The seq from which `replica_id`'s `version` is in effect, as replica 0 executed it."""
    reply = status(group.replicas[0].address)
    assert reply is not None
    for a in reply.activations:
        if (a.replica_id, a.version) == (replica_id, version):
            return int(a.from_seq)
    return None


def under_load(group: LocalGroup, action, client_id: str, after_s: float = 4.0) -> LoadResult:  # type: ignore[no-untyped-def]
    assert group.config is not None
    X, _ = held_out_digits(0)
    load = Load(group.config, group.addresses, X, client_id=client_id)

    async def scenario() -> LoadResult:
        done = asyncio.Event()
        running = asyncio.ensure_future(load.run(6, until=done))
        await asyncio.sleep(2.0)
        await asyncio.get_running_loop().run_in_executor(None, action)
        await asyncio.sleep(after_s)
        done.set()
        return await running

    return asyncio.run(scenario())


def check_votes_switch_at_activation(group: LocalGroup, result: LoadResult, updated: dict[int, int]) -> None:
    """Every certificate verifies; each updated replica's votes carry version 1 before its
    activation seq and the new version (answering the constant class) from there on."""
    assert group.config is not None
    assert result.invalid == 0
    assert result.retries == 0, f"{result.retries} client requests had to be retried"
    seen_new = {rid: 0 for rid in updated}
    from_seqs = {rid: activation(group, rid, version) for rid, version in updated.items()}
    for certified in result.certified.values():
        certificate = certified.certificate
        verify(certificate, group.config, certified.request)
        seq = certificate.header.seq
        for vote in certificate.leaf.votes:
            if vote.replica_id not in updated:
                assert vote.model_version == 1
                continue
            from_seq = from_seqs[vote.replica_id]
            expected = updated[vote.replica_id] if from_seq is not None and seq >= from_seq else 1
            assert vote.model_version == expected, f"seq {seq}: replica {vote.replica_id} voted with version {vote.model_version}, the log says {expected}"
            if expected != 1:
                seen_new[vote.replica_id] += 1
                assert vote.output.label == CONSTANT_LABEL
    assert all(count > 0 for count in seen_new.values()), f"no vote with the new version: {seen_new}"


def process_group(pid: int) -> set[int]:
    """Every live process in the replica's process group: the replica, its tritonserver, the
    Python-backend stubs and their helpers (LocalGroup starts each replica as a group leader)."""
    members: set[int] = set()
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.getpgid(int(entry)) == pid:
                members.add(int(entry))
        except ProcessLookupError:
            continue  # gone meanwhile
    return members


def triton_models(group: LocalGroup, rid: int) -> dict[int, str]:
    reply = status(group.replicas[rid].address)
    assert reply is not None
    return {m.version: m.model_name for m in reply.triton_models}


def test_f_plus_1_owners_update_one_after_another_under_load(group: LocalGroup, constant_package: Path) -> None:
    # each replica keeps a warm spare Triton model: an update starts no process and ends none
    pids = {rid: group.replicas[rid].process.pid for rid in (1, 2)}  # type: ignore[union-attr]
    processes_before = {rid: process_group(pid) for rid, pid in pids.items()}
    models_before = {rid: triton_models(group, rid) for rid in (1, 2)}
    assert all(list(models) == [1] for models in models_before.values())

    def updates() -> None:
        for rid in (1, 2):
            receipt = owner(group, rid).update_model(constant_package)
            assert receipt.version == 2
            time.sleep(1.0)

    result = under_load(group, updates, "sequential", after_s=6.0)
    for rid in (1, 2):
        assert wait_until(lambda: activation(group, rid, 2) is not None, 60), f"replica {rid}'s update never took effect"
    result = _top_up(group, result, "sequential-after")
    check_votes_switch_at_activation(group, result, {1: 2, 2: 2})
    # the old version is unloaded once the new one is in effect
    for rid in (1, 2):
        assert wait_until(lambda: list((status(group.replicas[rid].address) or api.StatusReply()).loaded_versions) == [2], 60)
        assert triton_models(group, rid)[2] != models_before[rid][1]
        assert process_group(pids[rid]) == processes_before[rid], f"replica {rid} started or ended processes for its update"


def test_two_owners_update_at_the_same_time_under_load(group: LocalGroup, digits_packages: list[Path]) -> None:
    # back to the real models, both at once (version 3)
    def updates() -> None:
        async def both() -> None:
            loop = asyncio.get_running_loop()
            await asyncio.gather(
                loop.run_in_executor(None, lambda: owner(group, 1).update_model(digits_packages[1], version=3)),
                loop.run_in_executor(None, lambda: owner(group, 2).update_model(digits_packages[2], version=3)),
            )

        asyncio.run(both())

    result = under_load(group, updates, "simultaneous", after_s=6.0)
    for rid in (1, 2):
        assert wait_until(lambda: activation(group, rid, 3) is not None, 60)
    assert group.config is not None
    assert result.invalid == 0 and result.retries == 0
    from_seqs = {rid: activation(group, rid, 3) for rid in (1, 2)}
    for certified in result.certified.values():
        verify(certified.certificate, group.config, certified.request)
        for vote in certified.certificate.leaf.votes:
            if vote.replica_id in (1, 2):
                from_seq = from_seqs[vote.replica_id]
                assert from_seq is not None
                assert vote.model_version == (3 if certified.certificate.header.seq >= from_seq else 2)


def _top_up(group: LocalGroup, result: LoadResult, client_id: str) -> LoadResult:
    """A little more traffic after the activations, so the new versions are seen voting."""
    more = under_load(group, lambda: None, client_id, after_s=2.0)
    result.certified.update(more.certified)
    result.retries += more.retries
    result.invalid += more.invalid
    return result


def _versions(group: LocalGroup, rid: int) -> tuple[list[int], list[tuple[int, int]]]:
    reply = status(group.replicas[rid].address)
    assert reply is not None
    return list(reply.loaded_versions), sorted((v.replica_id, v.version) for v in reply.versions)


@pytest.mark.parametrize("case", ["wrong-owner-key", "another-owners-replica", "digest-mismatch", "older-version", "corrupt-model"])
def test_refused_updates_change_nothing(group: LocalGroup, constant_package: Path, tmp_path: Path, case: str) -> None:
    assert group.config is not None
    rid = 3
    before = _versions(group, rid)
    processes_before = process_group(group.replicas[rid].process.pid)  # type: ignore[union-attr]
    current = owner(group, rid).current_version()
    package = constant_package
    key = group.owner_key(rid)
    target = rid
    version = current + 1
    expected = grpc.StatusCode.PERMISSION_DENIED
    if case == "wrong-owner-key":
        key = KeyPair.generate()
    elif case == "another-owners-replica":
        key = group.owner_key(1)  # owner 1 signs an update for replica 3
    elif case == "digest-mismatch":
        expected = grpc.StatusCode.INVALID_ARGUMENT
    elif case == "older-version":
        version = current
        expected = grpc.StatusCode.FAILED_PRECONDITION
    elif case == "corrupt-model":
        package = tmp_path / "corrupt"
        shutil.copytree(constant_package, package)
        (package / "model.pt").write_bytes(b"not a TorchScript file")
        expected = grpc.StatusCode.INVALID_ARGUMENT
    from replica.model_spec import weights_digest

    digest = weights_digest(package / "model.pt") if case != "digest-mismatch" else bytes(32)
    update = sign_model_update(group.config, target, version, digest, key)
    request = api.ModelUpdateRequest(update=model_update_to_proto(update, api.ModelUpdateRequest().update), package_path=str(package))
    with grpc.insecure_channel(group.replicas[rid].address) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            api_grpc.ReplicaStub(channel).UpdateModel(request, timeout=120)
    assert refused.value.code() == expected, refused.value.details()
    assert _versions(group, rid) == before
    # its Triton keeps the same processes: the spare model is still there, nothing was started
    assert process_group(group.replicas[rid].process.pid) == processes_before  # type: ignore[union-attr]
    # and the replica still serves
    assert status(group.replicas[rid].address) is not None


def test_owner_cli_reports_a_refusal_clearly(group: LocalGroup, constant_package: Path, tmp_path: Path) -> None:
    from certs.keys import save_private_key
    from marketplace.cli import main

    stranger = tmp_path / "stranger.key"
    save_private_key(KeyPair.generate(), stranger)
    code = main([
        "owner", "update-model", "--config", str(group.group_config_path), "--replica", "3",
        "--model", str(constant_package), "--key", str(stranger),
    ])
    assert code == 1
    with pytest.raises(ModelUpdateError) as refused:
        Owner(group.config, 3, KeyPair.generate()).update_model(constant_package)  # type: ignore[arg-type]
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
