"""The committed generated protobuf modules match the .proto files they come from."""

from __future__ import annotations

from protos import build


def test_generated_code_matches_the_proto_files() -> None:
    stale = build.check_current()
    assert stale == [], f"regenerate with `python -m protos.build`: {stale} differ"
