"""Fixtures shared by every test directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from certs.config import ProtocolParams

# For process tests that need every replica's vote in the certificates (a liar's signed votes as
# evidence): four Tritons, four replicas and the tests share two cores here, so the primary waits
# 300 ms for the votes beyond a quorum instead of the 30 ms that suit a group on its own machines.
ALL_VOTES_PARAMS = ProtocolParams(vote_timeout_ticks=60)


@pytest.fixture(scope="session")
def digits_packages(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four heterogeneous digits model packages, trained once per test session."""
    from marketplace.models import train_digits_models

    trained = train_digits_models(tmp_path_factory.mktemp("digits-models"), count=4, seed=0, progress=False)
    return [Path(t.package_dir) for t in trained]
