"""The `quorumserve` command: one CLI, subcommands contributed by each part of the system.

Each module in COMMAND_MODULES defines `register(subparsers)`, adding its subcommands with
`parser.set_defaults(handler=...)`; a handler takes the parsed arguments and returns the exit
status. Heavy imports (torch, Triton) happen inside handlers so that `quorumserve verify` stays
quick on an auditor's laptop.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMAND_MODULES = ("certs.cli", "replica.cli", "marketplace.commands", "marketplace.owner_commands", "marketplace.demo", "marketplace.audit_commands")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quorumserve",
        description="Byzantine-fault-tolerant multi-model inference with signed inference certificates.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that part of the CLI does not exist yet
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
