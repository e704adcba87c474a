"""Compile protos/*.proto into Python modules beside them (`python -m protos.build`).

The generated modules are committed; tests/protos checks they match what this produces, so a
fresh clone needs no compile step and a stale file cannot slip through.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
ROOT = PROTO_DIR.parent


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def compile_into(out_dir: Path) -> None:
    from grpc_tools import protoc  # build-time only

    include = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p.relative_to(ROOT)) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def generated_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((directory / "protos").glob("*_pb2*.py*"))}


def main() -> int:
    compile_into(ROOT)
    print(f"compiled {len(proto_files())} proto files into {PROTO_DIR}")
    return 0


def check_current() -> list[str]:
    """Names of generated files that differ from a fresh compile (empty when current)."""
    with tempfile.TemporaryDirectory() as tmp:
        compile_into(Path(tmp))
        fresh = generated_files(Path(tmp))
    committed = generated_files(ROOT)
    return sorted(name for name in set(fresh) | set(committed) if fresh.get(name) != committed.get(name))


if __name__ == "__main__":
    sys.exit(main())
