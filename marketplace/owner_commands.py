"""`quorumserve owner update-model`: an owner updates its replica's model while the group serves."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    owner = subparsers.add_parser("owner", help="what a model owner does with its replica")
    commands = owner.add_subparsers(dest="owner_command", required=True, metavar="ACTION")
    update = commands.add_parser(
        "update-model",
        help="sign a model update with the owner key and hand it to the replica (loaded beside the "
        "serving version, ordered by the group, in effect from a sequence number fixed by the log)",
    )
    update.add_argument("--config", required=True, help="the group config JSON")
    update.add_argument("--replica", type=int, required=True, help="the replica id (yours)")
    update.add_argument("--model", required=True, help="the new model package (TorchScript + spec.json)")
    update.add_argument("--key", required=True, help="the owner's private key file")
    update.add_argument("--version", type=int, help="the new version (default: current + 1)")
    update.add_argument("--address", help="the replica's gRPC address (default: from the group config)")
    update.add_argument("--path-only", action="store_true", help="send the package path instead of uploading it")
    update.set_defaults(handler=run_update_model)


def run_update_model(args: argparse.Namespace) -> int:
    from certs.config import load_group_config
    from certs.errors import CertificateError
    from certs.keys import load_private_key
    from marketplace.owner import ModelUpdateError, Owner
    from replica.model_spec import ModelPackageError

    try:
        config = load_group_config(args.config)
        key = load_private_key(args.key)
        owner = Owner(config, args.replica, key, args.address)
        receipt = owner.update_model(args.model, version=args.version, upload=not args.path_only)
    except (CertificateError, ModelPackageError, ValueError, OSError) as exc:
        print(f"quorumserve owner update-model: {exc}", file=sys.stderr)
        return 2
    except ModelUpdateError as exc:
        print(f"quorumserve owner update-model: refused, nothing changed: {exc}", file=sys.stderr)
        return 1
    print(
        f"replica {receipt.replica_id}: model version {receipt.version} (weights {receipt.weights_digest.hex()[:16]}) "
        f"loaded beside the serving one and submitted for ordering; it takes effect "
        f"{config.params.log_window_batches} batches after the group orders it"
    )
    return 0
