"""The in-process protocol benchmark certifies what it claims to measure, and reports it."""

from __future__ import annotations

from pathlib import Path

import pytest

from certs.certificate import decode_certificate
from certs.verify import verify
from tests.bench import bench_core
from tests.bench.common import BenchResult, Options


def test_every_request_of_every_wave_gets_a_certificate_that_verifies() -> None:
    group = bench_core.CoreGroup(4, bench_core.ProtocolParams())
    waves = list(bench_core._waves(3, 2, "t"))
    for wave in waves:
        group.submit(wave)
        group.settle([r.key for r in wave])
    for wave in waves:
        for request in wave:
            verified = verify(decode_certificate(group.certified[request.key]), group.config, request)
            assert verified.request_checked and len(verified.signers) >= group.config.quorum_size
    # every replica voted and ordered through the codec: a round is n*(n-1) deliveries of each
    # kind, and every part of the runtime's work was done (and timed)
    assert group.deliveries >= 4 * 3 * 3
    assert all(group.parts[part] > 0 for part in bench_core.PARTS if part != "client: decode + verify")


def test_a_measurement_counts_the_requests_and_splits_their_cpu_by_part() -> None:
    run = bench_core.measure(4, 8, 16, warm_up_waves=1)
    assert run.requests == 16
    assert run.cpu_s > 0 and run.cpu_us_per_request > 0
    assert all(run.parts_s[part] > 0 for part in bench_core.PARTS)
    # the parts are timed inside the CPU total (one thread, nothing else running)
    assert sum(run.parts_s.values()) <= run.cpu_s * 1.5
    assert run.peer_messages > 0
    assert run.ceiling_per_s(2.0) == 2.0 * 16 / run.cpu_s


def test_the_report_states_each_configuration_and_the_ceilings_against_the_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench_core, "configurations", lambda quick: [(4, 1, 4), (4, 64, 64)])
    options = Options(quick=True, out_dir=tmp_path, progress=False)
    result = BenchResult(bench_core.NAME, bench_core.TITLE)
    bench_core.run(options, result, with_profile=True)
    names = [figure.name for figure in result.figures]
    assert any("64 rows per batch" in name for name in names) and any("1 row per batch" in name for name in names)
    targets = {figure.target for figure in result.figures}
    assert targets == {10_000.0, 3_000.0}
    rows = [line for line in result.details if line.startswith("| 4 |")]
    assert len(rows) == 2
    assert [r["rows"] for r in result.data["runs"]] == [1, 64]
    assert (tmp_path / "core.png").stat().st_size > 0
    assert "pyinstrument" in (tmp_path / "core_profile.html").read_text().lower()
    assert "measure" in (tmp_path / "core_profile.txt").read_text()
