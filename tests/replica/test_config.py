"""A replica's TOML config: what `quorumserve up` writes is what the replica reads back."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from replica.config import AdmissionLimits, ReplicaConfig, ReplicaConfigError, TritonPorts, load_replica_config, render_replica_config


def _config(tmp_path: Path, **triton: int) -> ReplicaConfig:
    return ReplicaConfig(
        group_config=tmp_path / "group.json", replica_id=2, key_file=tmp_path / "replica-2.key",
        listen="127.0.0.1:7102", data_dir=tmp_path / "replica-2", model_package=tmp_path / "model",
        model_version=1, triton=TritonPorts(grpc_port=8201, http_port=8200, metrics_port=8202, **triton),
    )


def test_a_rendered_config_reads_back_unchanged(tmp_path: Path) -> None:
    config = _config(tmp_path, torch_threads=2, spare_models=2)
    path = tmp_path / "replica.toml"
    path.write_text(render_replica_config(config))
    assert load_replica_config(path) == config


def test_admission_limits_read_back_default_when_absent_and_must_be_positive(tmp_path: Path) -> None:
    path = tmp_path / "replica.toml"
    limited = dataclasses.replace(_config(tmp_path), admission=AdmissionLimits(pending_requests_max=10, pending_bytes_max=4096, wait_share_max=0.0))
    path.write_text(render_replica_config(limited))
    assert load_replica_config(path) == limited
    text = render_replica_config(_config(tmp_path))
    start = text.index("[admission]")
    path.write_text(text[:start] + text[text.index("[triton]"):])  # a config written before the table existed
    assert load_replica_config(path).admission == AdmissionLimits()
    for bad, words in [
        ("pending_requests_max = 0", "must be 1 or more"),
        ('pending_bytes_max = "1 GiB"', "pending_bytes_max must be an integer"),
        ("wait_share_max = 1.5", "from 0 to 1"),
    ]:
        name = bad.split(" ")[0]
        path.write_text(text.replace(f"{name} = {getattr(AdmissionLimits(), name)}", bad))
        with pytest.raises(ReplicaConfigError, match=words):
            load_replica_config(path)


def test_spare_models_default_to_one_and_cannot_be_negative(tmp_path: Path) -> None:
    path = tmp_path / "replica.toml"
    text = render_replica_config(_config(tmp_path))
    path.write_text(text.replace("spare_models = 1\n", ""))
    assert load_replica_config(path).triton.spare_models == 1
    path.write_text(text.replace("spare_models = 1", "spare_models = 0"))
    assert load_replica_config(path) == dataclasses.replace(_config(tmp_path), triton=TritonPorts(8201, 8200, 8202, 1, 0))
    path.write_text(text.replace("spare_models = 1", "spare_models = -1"))
    with pytest.raises(ReplicaConfigError, match="spare_models must be 0 or more"):
        load_replica_config(path)
    path.write_text(text.replace("spare_models = 1", 'spare_models = "one"'))
    with pytest.raises(ReplicaConfigError, match="spare_models must be an integer"):
        load_replica_config(path)
