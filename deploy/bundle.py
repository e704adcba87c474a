"""Deployment bundles: keys, model packages and the group config for a group whose replicas run
elsewhere (containers, Kubernetes clusters), with the members' real addresses.

    python -m deploy.bundle compose                      # deploy/compose/bundle/, addresses replica-<i>:7100
    python -m deploy.bundle k8s --address 0=replica.owner-0.example.net:7100 --address 1=... \
                                                         # group.json and owner keys into deploy/k8s/
    python -m deploy.bundle dir --out DIR --address ...  # just the bundle

A bundle directory holds
    group.json              the group config (what clients pin; public keys and addresses only)
    keys/replica-<i>.key    each replica's signing key (mode 0600): a secret for its owner only
    keys/owner-<i>.key      each owner's key for signing model updates: stays with the owner
    models/replica-<i>/     each replica's model package (the demo's digits models)

This generates every owner's keys in one place, which suits a demo or a test. In a real
deployment each owner runs `quorumserve keygen` for its own replica and sends only the public
key and its address to whoever assembles group.json.

Keys, models and configs come from marketplace.local's LocalGroup (the same ones `quorumserve up`
uses); only the member addresses change. When run as root, key files are handed to the
containers' user (uid 10001, mode 0600), because compose mounts a file secret with the owner
and mode it has on the host.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from certs.config import GroupConfig, save_group_config
from marketplace.local import LocalGroup

CONTAINER_UID = 10001
REPLICA_PORT = 7100
DEPLOY_DIR = Path(__file__).resolve().parent


class BundleError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Bundle:
    directory: Path
    config: GroupConfig

    @property
    def group_config_path(self) -> Path:
        return self.directory / "group.json"

    def replica_key_path(self, replica_id: int) -> Path:
        return self.directory / "keys" / f"replica-{replica_id}.key"

    def owner_key_path(self, replica_id: int) -> Path:
        return self.directory / "keys" / f"owner-{replica_id}.key"

    def model_path(self, replica_id: int) -> Path:
        return self.directory / "models" / f"replica-{replica_id}"


def with_member_addresses(config: GroupConfig, addresses: dict[int, str]) -> GroupConfig:
    """The same group config with the members' gRPC addresses replaced (a new digest)."""
    members = tuple(replace(m, address=addresses.get(m.replica_id, m.address)) for m in config.members)
    return replace(config, members=members)


def parse_addresses(items: Sequence[str], n: int) -> dict[int, str]:
    """["0=host:port", ...] for every replica 0..n-1."""
    addresses: dict[int, str] = {}
    for item in items:
        rid, sep, address = item.partition("=")
        if not sep or not rid.isdigit() or ":" not in address or not address.rsplit(":", 1)[1].isdigit():
            raise BundleError(f"--address {item!r}: expected REPLICA_ID=HOST:PORT")
        addresses[int(rid)] = address
    missing = sorted(set(range(n)) - set(addresses))
    extra = sorted(set(addresses) - set(range(n)))
    if missing or extra:
        raise BundleError(f"need one address for each of replicas 0..{n - 1} (missing {missing}, unknown {extra})")
    return addresses


def make_bundle(
    directory: str | os.PathLike[str],
    addresses: dict[int, str],
    *,
    f: int = 1,
    group_id: str = "digits",
    model_packages: Sequence[Path] | None = None,
    key_owner_uid: int | None = None,
) -> Bundle:
    """Create (or refresh, keeping existing keys) a bundle in `directory`."""
    out = Path(directory).resolve()
    out.mkdir(parents=True, exist_ok=True)
    n = 3 * f + 1
    if sorted(addresses) != list(range(n)):
        raise BundleError(f"need one address for each of replicas 0..{n - 1}")
    work = LocalGroup(out, f=f, group_id=group_id, model_packages=model_packages)
    config = work.prepare()
    models_dir = out / "models"
    for replica in work.replicas:
        target = models_dir / f"replica-{replica.replica_id}"
        source = replica.config.model_package.resolve()
        if source != target.resolve():
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(source, target)
        replica.config_path.unlink(missing_ok=True)  # local-process configs: not part of a bundle
    config = with_member_addresses(config, addresses)
    save_group_config(config, out / "group.json")
    bundle = Bundle(out, config)
    for rid in range(n):
        for key in (bundle.replica_key_path(rid), bundle.owner_key_path(rid)):
            os.chmod(key, 0o600)
        if key_owner_uid is not None:
            os.chown(bundle.replica_key_path(rid), key_owner_uid, key_owner_uid)
    return bundle


def install_k8s(bundle: Bundle, k8s_dir: Path) -> list[Path]:
    """Copy the group config and each replica's key where the kustomize tree reads them."""
    written = []
    for target in (k8s_dir / "replica" / "base" / "group.json", k8s_dir / "gateway" / "group.json"):
        shutil.copyfile(bundle.group_config_path, target)
        written.append(target)
    for member in bundle.config.members:
        overlay = k8s_dir / "replica" / "overlays" / f"owner-{member.replica_id}"
        if not overlay.is_dir():
            raise BundleError(f"no overlay {overlay} for replica {member.replica_id}")
        key = overlay / "replica.key"
        key.unlink(missing_ok=True)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(bundle.replica_key_path(member.replica_id).read_bytes())
        written.append(key)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.bundle", description="keys, models and group config for a deployment")
    parser.add_argument("target", choices=("compose", "k8s", "dir"))
    parser.add_argument("--out", help="bundle directory (compose: deploy/compose/bundle; k8s: deploy/k8s/bundle)")
    parser.add_argument("--address", action="append", default=[], metavar="ID=HOST:PORT", help="a member's address (repeatable)")
    parser.add_argument("--f", type=int, default=1, help="faults tolerated (3f+1 replicas; default 1)")
    parser.add_argument("--group-id", default="digits")
    args = parser.parse_args(argv)
    n = 3 * args.f + 1
    try:
        if args.target == "compose":
            out = Path(args.out or DEPLOY_DIR / "compose" / "bundle")
            addresses = parse_addresses(args.address, n) if args.address else {i: f"replica-{i}:{REPLICA_PORT}" for i in range(n)}
        else:
            if args.target == "dir" and not args.out:
                raise BundleError("dir: --out is required")
            out = Path(args.out or DEPLOY_DIR / "k8s" / "bundle")
            addresses = parse_addresses(args.address, n)
        uid = CONTAINER_UID if args.target == "compose" and os.geteuid() == 0 else None
        bundle = make_bundle(out, addresses, f=args.f, group_id=args.group_id, key_owner_uid=uid)
        print(f"bundle in {bundle.directory}: group {bundle.config.group_id}, config digest {bundle.config.digest.hex()}")
        if args.target == "compose" and uid is None:
            print(f"note: give the key files to uid {CONTAINER_UID} (chown {CONTAINER_UID} {out}/keys/replica-*.key): "
                  "compose mounts them with their host owner and mode")
        if args.target == "k8s":
            for path in install_k8s(bundle, DEPLOY_DIR / "k8s"):
                print(f"wrote {path}")
    except (BundleError, OSError) as exc:
        print(f"deploy.bundle: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
