"""The marketplace commands as a user runs them: infer, groups, status against the session's
group, and `quorumserve up` from start to a SIGTERM that leaves no process behind."""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from certs.config import load_group_config, save_group_config
from marketplace.commands import GatewayProcess
from marketplace.local import LocalGroup
from replica.triton_backend import triton_processes

pytestmark = pytest.mark.processes

ROOT = Path(__file__).resolve().parents[2]


def quorumserve(*args: str, env: dict[str, str] | None = None, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "marketplace.cli", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=timeout_s, env={**os.environ, **(env or {})},
    )


def test_infer_prints_a_verified_result_that_verify_accepts(
    gateway: GatewayProcess, group_config_path: Path, tmp_path: Path, digits: tuple[np.ndarray, np.ndarray], unanimous_digits: np.ndarray
) -> None:
    _, labels = digits
    # the first image of a 7 every honest model gets right, as --digit 7 --sample N picks it
    sevens = [int(i) for i in np.flatnonzero(labels == 7)]
    sample = next(n for n, image in enumerate(sevens) if image in set(unanimous_digits.tolist()))
    cert, request = tmp_path / "cert.pb", tmp_path / "request.json"
    done = quorumserve(
        "infer", "--gateway", gateway.address, "--config", str(group_config_path), "--digit", "7", "--sample", str(sample),
        "--out", str(cert), "--request-out", str(request),
    )
    assert done.returncode == 0, done.stderr
    assert "certified decision '7'" in done.stdout and "(true label 7)" in done.stdout
    assert "verified against" in done.stdout
    checked = quorumserve("verify", str(cert), "--config", str(group_config_path), "--request", str(request))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_infer_json_and_an_input_file(
    gateway: GatewayProcess, group_config_path: Path, tmp_path: Path, digits: tuple[np.ndarray, np.ndarray], unanimous_digits: np.ndarray
) -> None:
    features, labels = digits
    image = int(unanimous_digits[len(unanimous_digits) // 2])
    row = tmp_path / "row.npy"
    np.save(row, features[image].reshape(8, 8))  # any shape with 64 values
    done = quorumserve("infer", "--gateway", gateway.address, "--config", str(group_config_path), "--input", str(row), "--json", "--out", str(tmp_path / "c.json"))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["verified"] and result["label"] == labels[image]
    assert len(result["votes"]) >= 3
    assert json.loads((tmp_path / "c.json").read_text())["format"]


def test_infer_refuses_a_certificate_from_another_group(gateway: GatewayProcess, group_config_path: Path, tmp_path: Path) -> None:
    from certs.keys import KeyPair

    config = load_group_config(group_config_path)
    forged = dataclasses.replace(config.members[0], public_key=KeyPair.generate().public_key)
    impostor = config.with_changes(members=(forged, *config.members[1:]))
    pinned = save_group_config(impostor, tmp_path / "impostor.json")
    done = quorumserve("infer", "--gateway", gateway.address, "--config", str(pinned), "--digit", "1")
    assert done.returncode == 1
    assert "INVALID CERTIFICATE" in done.stderr


def test_groups_and_status(gateway: GatewayProcess, local_group: LocalGroup, group_config_path: Path, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    registry.mkdir()
    save_group_config(load_group_config(group_config_path), registry / "digits.json")
    listed = quorumserve("groups", "--registry", str(registry))
    assert listed.returncode == 0 and "digits" in listed.stdout, listed.stderr
    via_gateway = quorumserve("groups", "--gateway", gateway.address, "--json")
    assert [g["group_id"] for g in json.loads(via_gateway.stdout)] == ["digits"]
    for where in (["--registry", str(registry)], ["--gateway", gateway.address], ["--config", str(group_config_path)]):
        status = quorumserve("status", "digits", *where, "--json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["can_certify"] and report["reachable"] == 4
        assert all(r["state"] == "normal" and r["versions"] == {str(i): 1 for i in range(4)} for r in report["replicas"])
        # which Triton model serves each loaded version (models are reused across versions)
        assert all(list(r["triton_models"]) == ["1"] and r["triton_models"]["1"].startswith("model-") for r in report["replicas"])
        # a started local group waits for its replicas' links to each other: all up
        others = {r["replica_id"]: sorted({0, 1, 2, 3} - {r["replica_id"]}) for r in report["replicas"]}
        assert all(r["peers"] == r["connected_peers"] == others[r["replica_id"]] for r in report["replicas"]), report
    table = quorumserve("status", "digits", "--config", str(group_config_path))
    assert "can certify" in table.stdout and table.stdout.count("normal") == 4
    assert "LINKS" in table.stdout and table.stdout.count(" 3/3 ") == 4, table.stdout
    unknown = quorumserve("status", "cats", "--registry", str(registry))
    assert unknown.returncode == 1 and "unknown group 'cats'" in unknown.stderr


def test_up_serves_a_group_and_sigterm_leaves_no_process(tmp_path: Path, digits_packages: list[Path]) -> None:
    data_dir, registry = tmp_path / "up", tmp_path / "registry"
    models = data_dir / "models"
    models.mkdir(parents=True)
    # the session's trained models, so `up` does not train its own
    (models / "manifest.json").write_text(json.dumps({"packages": [str(p) for p in digits_packages]}))
    up = subprocess.Popen(
        [sys.executable, "-m", "marketplace.cli", "up", "--data-dir", str(data_dir), "--gateway-port", "0",
         "--registry", str(registry), "--group-id", "up-test"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read_output() -> None:
        for line in up.stdout or ():
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read_output, daemon=True).start()
    output: list[str] = []
    try:
        address = config_path = None
        while address is None or config_path is None:
            line = lines.get(timeout=300)
            assert line is not None, "".join(output)
            output.append(line)
            if line.startswith("gateway: "):
                address = line.split()[1]
            if line.startswith("group config: "):
                config_path = line.split(": ", 1)[1].strip()
        done = quorumserve("infer", "--gateway", address, "--config", config_path, "--digit", "4")
        assert done.returncode == 0, done.stderr
        assert "certified decision" in done.stdout and "verified against" in done.stdout
        listed = quorumserve("groups", "--registry", str(registry))
        assert "up-test" in listed.stdout
        status = quorumserve("status", "up-test", "--registry", str(registry), "--json")
        assert json.loads(status.stdout)["reachable"] == 4
        assert _processes_under(data_dir)  # replicas and Tritons are running
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=180)
        finally:
            if up.poll() is None:
                up.kill()
    while (line := lines.get(timeout=30)) is not None:
        output.append(line)
    assert up.returncode == 0, "".join(output)
    assert "stopped" in output[-1]
    assert _processes_under(data_dir) == []
    assert triton_processes(data_dir) == []
    assert not (registry / "up-test.json").exists()


def _processes_under(directory: Path) -> list[int]:
    """Processes whose command line names `directory` (replicas) or runs from it (Tritons)."""
    marker = str(directory.resolve())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(int(entry))
    return sorted(set(found) | set(triton_processes(directory)))


@pytest.mark.parametrize("coalesce_ms", ["-1", "1000"])
def test_the_gateway_refuses_a_wait_for_company_out_of_range(group_config_path: Path, coalesce_ms: str) -> None:
    result = quorumserve("gateway", "--config", str(group_config_path), "--port", "0", "--coalesce-ms", coalesce_ms, timeout_s=60)
    assert result.returncode != 0
    assert "--coalesce-ms must be from 0 to 100" in result.stderr
