from __future__ import annotations

import pytest

from tests.certs.helpers import Group, SignedBatch, cached_batch, make_group


@pytest.fixture(scope="session")
def group() -> Group:
    return make_group(1)


@pytest.fixture(scope="session")
def batch() -> SignedBatch:
    return cached_batch(1, 8)
