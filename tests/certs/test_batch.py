"""The batch header's digest: what every PREPARE and COMMIT signs."""

from __future__ import annotations

import dataclasses

from certs.batch import BatchHeader
from certs.encoding import Domain, digest


def _header(**changes: object) -> BatchHeader:
    values: dict[str, object] = dict(
        group_id="g", epoch=1, config_digest=b"\x01" * 32, view=0, seq=7, decisions_root=b"\x02" * 32,
        ops_digest=b"\x03" * 32, model_versions_digest=b"\x04" * 32, leaf_count=3,
    )
    values.update(changes)
    return BatchHeader(**values)  # type: ignore[arg-type]


def test_the_digest_covers_every_field_but_the_view() -> None:
    header = _header()
    expected = digest(Domain.BATCH, "g", 1, b"\x01" * 32, 7, b"\x02" * 32, 3, b"\x03" * 32, b"\x04" * 32)
    assert header.batch_digest == expected
    assert header.batch_digest == expected  # computed once, the same the second time
    assert _header(view=5).batch_digest == expected
    assert header.with_view(9).batch_digest == expected and header.with_view(9).view == 9


def test_a_header_changed_by_replace_gets_its_own_digest_not_a_copy() -> None:
    header = _header()
    original = header.batch_digest
    for field, value in (("seq", 8), ("leaf_count", 4), ("decisions_root", b"\x09" * 32), ("epoch", 2)):
        changed = dataclasses.replace(header, **{field: value})
        assert changed.batch_digest != original
        assert changed.batch_digest == _header(**{field: value}).batch_digest
    assert _header() == header  # the cached digest is not part of equality
