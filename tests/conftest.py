"""Fixtures shared by every test directory."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def digits_packages(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four heterogeneous digits model packages, trained once per test session."""
    from marketplace.models import train_digits_models

    trained = train_digits_models(tmp_path_factory.mktemp("digits-models"), count=4, seed=0, progress=False)
    return [Path(t.package_dir) for t in trained]
