"""What a model owner does: sign a model update for its own replica and hand it over.

The owner's key (not the replica's) signs `ModelUpdate{group, replica_id, new_version,
weights_digest}`; the weights digest is the SHA-256 of the TorchScript file, so the signed update
names exactly the bytes that will run. The replica loads the new version beside the serving one,
checks the digest and warms it up, then submits the update for ordering; it takes effect at a
sequence number fixed by the log (consensus/state.py), and every certificate names the version
each vote came from.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import grpc

from certs.config import GroupConfig
from certs.keys import KeyPair
from consensus.messages import ModelUpdate
from protos import replica_api_pb2 as api
from protos import replica_api_pb2_grpc as api_grpc
from replica.codec import model_update_to_proto
from replica.model_spec import load_model_package


class ModelUpdateError(Exception):
    """The replica refused the update; nothing changed. `code` is the gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code


@dataclass(frozen=True, slots=True)
class UpdateReceipt:
    replica_id: int
    version: int
    weights_digest: bytes


def sign_model_update(config: GroupConfig, replica_id: int, new_version: int, weights_digest: bytes, owner_key: KeyPair) -> ModelUpdate:
    unsigned = ModelUpdate(config.group_id, replica_id, new_version, weights_digest, b"")
    return ModelUpdate(config.group_id, replica_id, new_version, weights_digest, owner_key.signer().sign(unsigned.signed_bytes()))


def package_archive(package_dir: Path) -> bytes:
    """The model package as a tar archive (for a replica on another host)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(str(package_dir), arcname=package_dir.name)
    return buffer.getvalue()


class Owner:
    """A model owner's handle on its replica."""

    def __init__(self, config: GroupConfig, replica_id: int, owner_key: KeyPair, address: str | None = None) -> None:
        member = config.member(replica_id)
        if member is None:
            raise ValueError(f"replica {replica_id} is not a member of group {config.group_id}")
        self.config = config
        self.replica_id = replica_id
        self.owner_key = owner_key
        self.address = address or member.address

    def current_version(self, timeout_s: float = 10.0) -> int:
        """The newest version the group has for this replica (in effect or already ordered)."""
        with grpc.insecure_channel(self.address) as channel:
            status = api_grpc.ReplicaStub(channel).Status(api.StatusRequest(), timeout=timeout_s)
        versions = [v.version for v in status.versions if v.replica_id == self.replica_id]
        return max(versions + [v for v in status.loaded_versions if v < 1_000_000])

    def update_model(
        self, package: str | Path, *, version: int | None = None, upload: bool = True, timeout_s: float = 180.0
    ) -> UpdateReceipt:
        """Sign and submit an update to the package at `package`. `upload`: send the package
        itself (works across hosts); otherwise send its path (the replica reads its own disk)."""
        package_dir = Path(package).resolve()
        loaded = load_model_package(package_dir)
        new_version = version if version is not None else self.current_version() + 1
        update = sign_model_update(self.config, self.replica_id, new_version, loaded.weights_digest, self.owner_key)
        request = api.ModelUpdateRequest(update=model_update_to_proto(update, api.ModelUpdateRequest().update))
        if upload:
            request.package_archive = package_archive(package_dir)
        else:
            request.package_path = str(package_dir)
        options = [("grpc.max_send_message_length", 1 << 30)]
        with grpc.insecure_channel(self.address, options=options) as channel:
            try:
                reply = api_grpc.ReplicaStub(channel).UpdateModel(request, timeout=timeout_s)
            except grpc.RpcError as exc:
                raise ModelUpdateError(exc.code(), exc.details() or "") from exc
        return UpdateReceipt(self.replica_id, reply.version, reply.weights_digest)
