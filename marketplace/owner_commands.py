"""What owners do from the command line, and reading the chain and the fee ledger.

    quorumserve owner update-model --config GROUP.json --replica ID --model PKG --key OWNER_KEY
        an owner updates its replica's model while the group serves
    quorumserve owner join GROUP --config GROUP.json --key OWNER_KEY --replica-key REPLICA_KEY \\
            --replica-address HOST:PORT --model PKG [--out REQUEST.json]
        a new owner signs a request to join (written as readable JSON)
    quorumserve owner approve REQUEST.json --config GROUP.json --replica ID --key OWNER_KEY [--out A.json]
        a current member's owner approves it
    quorumserve owner submit-join REQUEST.json --approvals A.json B.json C.json --config GROUP.json [--wait]
        anyone hands the request and a quorum of approvals to the group
    quorumserve owner leave --config GROUP.json --replica ID --key OWNER_KEY [--wait]
        an owner takes its replica out of the group
    quorumserve owner evict --config GROUP.json --replica ID --evidence FILE --key OWNER_KEY [--wait]
        a member's owner has a replica removed that the evidence proves misbehaved
    quorumserve ledger GROUP --config GROUP.json [--gateway ADDR] [--json]
        each client's spend and each owner's earnings, verified against a checkpoint quorum
    quorumserve chain GROUP --config GROUP.json [--gateway ADDR] [--out CHAIN.json]
        the signed configs of the later epochs, for `quorumserve verify --chain`

GROUP.json is the config the user pinned (normally the genesis config). Commands that act on
the group's current epoch follow the chain of configs from it by asking the replicas (each link
checked against a quorum of the epoch before it); `--chain CHAIN.json` adds links from a file.

Exit status: 0 done; 1 refused (by the checks here, which are the group's own rules, or by the
group): nothing changed; 2 an input cannot be read; 3 the group could not be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_UNREADABLE = 2
EXIT_UNAVAILABLE = 3
WAIT_POLL_INTERVAL_S = 1.0


class _Failure(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def register(subparsers: Any) -> None:
    owner = subparsers.add_parser("owner", help="what a model owner does with its replica: models, joining, leaving")
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

    join = commands.add_parser(
        "join",
        help="ask to join a group: writes a join request signed by your owner key and your replica's key",
        description="Sign a request to join GROUP with a new replica. The request is for the group's current epoch; "
        "a quorum of the current members' owners must approve it (quorumserve owner approve) before anyone "
        "submits it (quorumserve owner submit-join).",
    )
    join.add_argument("group", metavar="GROUP", help="the group id")
    _chain_arguments(join)
    join.add_argument("--key", required=True, help="your owner private key file")
    join.add_argument("--replica-key", required=True, help="your new replica's private key file (it signs too, proving you hold it)")
    join.add_argument("--replica-address", required=True, metavar="HOST:PORT", help="where your replica will listen")
    join.add_argument("--model", required=True, metavar="PKG", help="your model package (TorchScript + spec.json)")
    join.add_argument("--model-version", type=int, default=1, help="the version your replica starts with (default 1)")
    join.add_argument("--owner-id", help="your owner id (default: owner-<first 8 hex of your owner key id>)")
    join.add_argument("--out", metavar="REQUEST.json", help="where to write the request (default join-<owner id>.json)")
    join.set_defaults(handler=run_join)

    approve = commands.add_parser("approve", help="approve a join request as the owner of a current member")
    approve.add_argument("request", metavar="REQUEST.json")
    _chain_arguments(approve)
    approve.add_argument("--replica", type=int, required=True, help="your replica's id (a current member)")
    approve.add_argument("--key", required=True, help="your owner private key file")
    approve.add_argument("--out", metavar="APPROVAL.json", help="default: <request>.approval-<ID>.json beside the request")
    approve.set_defaults(handler=run_approve)

    submit = commands.add_parser("submit-join", help="hand a join request and its approvals to the group for ordering")
    submit.add_argument("request", metavar="REQUEST.json")
    submit.add_argument("--approvals", nargs="+", required=True, metavar="APPROVAL.json")
    _chain_arguments(submit)
    _wait_arguments(submit)
    submit.set_defaults(handler=run_submit_join)

    leave = commands.add_parser("leave", help="take your replica out of the group (signed with your owner key)")
    _chain_arguments(leave)
    leave.add_argument("--replica", type=int, required=True, help="your replica's id")
    leave.add_argument("--key", required=True, help="your owner private key file")
    _wait_arguments(leave)
    leave.set_defaults(handler=run_leave)

    evict = commands.add_parser("evict", help="have a replica removed with evidence that proves it misbehaved")
    _chain_arguments(evict)
    evict.add_argument("--replica", type=int, required=True, help="the accused replica's id")
    evict.add_argument("--evidence", required=True, metavar="FILE", help="the evidence (binary protobuf, base64 or JSON)")
    evict.add_argument("--key", required=True, help="your owner private key file (you own a current member)")
    _wait_arguments(evict)
    evict.set_defaults(handler=run_evict)

    ledger = subparsers.add_parser(
        "ledger",
        help="each client's spend and each owner's earnings, verified against a checkpoint quorum",
        description="Fetch the fee ledger at the newest stable checkpoint from the group's replicas (named by a gateway, "
        "or by the pinned config and the chain from it) and check it against that checkpoint's quorum of signatures.",
    )
    ledger.add_argument("group", metavar="GROUP", help="the group id")
    ledger.add_argument("--config", metavar="GROUP.json", help="the group config you pinned (default: the gateway's genesis, unverified)")
    ledger.add_argument("--gateway", metavar="ADDR", help="learn the chain and the replicas' addresses from this gateway")
    ledger.add_argument("--chain", metavar="CHAIN.json", help="signed configs of later epochs (quorumserve chain)")
    ledger.add_argument("--timeout", type=float, default=5.0)
    ledger.add_argument("--json", action="store_true")
    ledger.set_defaults(handler=run_ledger)

    chain = subparsers.add_parser(
        "chain",
        help="fetch and verify the group's chain of configs (for quorumserve verify --chain)",
    )
    chain.add_argument("group", metavar="GROUP", help="the group id")
    chain.add_argument("--config", required=True, metavar="GROUP.json", help="the group config you pinned")
    chain.add_argument("--gateway", metavar="ADDR", help="ask this gateway (default: the replicas)")
    chain.add_argument("--out", metavar="CHAIN.json", help="write the chain here (default: print it)")
    chain.add_argument("--timeout", type=float, default=5.0)
    chain.set_defaults(handler=run_chain)


def _chain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="GROUP.json", help="the group config you pinned (its genesis)")
    parser.add_argument("--chain", metavar="CHAIN.json", help="signed configs of later epochs, checked from --config")
    parser.add_argument("--offline", action="store_true", help="do not ask the replicas for later epochs")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per call to a replica (default 5)")


def _wait_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", action="store_true", help="wait until the change takes effect (a new epoch)")
    parser.add_argument("--wait-timeout", type=float, default=600.0, help="give up waiting after this many seconds")


# =========================================================================================
# update-model
# =========================================================================================


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


# =========================================================================================
# membership
# =========================================================================================


def _run(command: str, args: argparse.Namespace, action: Any) -> int:
    """Run `action(args)`, mapping each kind of failure to its exit status and one clear line."""
    from certs.errors import CertificateError, ConfigError, DecodeError, KeyFileError
    from certs.membership import MembershipError
    from marketplace.membership import ControlRefusedError, GroupUnavailableError

    try:
        return int(action(args))
    except _Failure as exc:
        print(f"quorumserve {command}: {exc}", file=sys.stderr)
        return exc.status
    except MembershipError as exc:
        print(f"quorumserve {command}: refused, nothing changed: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except ControlRefusedError as exc:
        print(f"quorumserve {command}: the group refused it, nothing changed: {exc.reason} ({exc.code.name})", file=sys.stderr)
        return EXIT_REFUSED
    except GroupUnavailableError as exc:
        print(f"quorumserve {command}: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except (DecodeError, KeyFileError, ConfigError, OSError) as exc:
        print(f"quorumserve {command}: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    except CertificateError as exc:  # a config or chain that does not hold
        print(f"quorumserve {command}: {exc}", file=sys.stderr)
        return EXIT_REFUSED


def _chain(args: argparse.Namespace, group_id: str | None = None) -> Any:
    """The pinned config, extended by --chain and (unless --offline) by the replicas' links."""
    from certs.cli import InputError, load_chain
    from certs.config import load_group_config
    from marketplace.membership import ConfigChain, follow_chain

    genesis = load_group_config(args.config)
    if group_id is not None and genesis.group_id != group_id:
        raise _Failure(EXIT_UNREADABLE, f"{args.config} is group {genesis.group_id!r}, not {group_id!r}")
    chain = ConfigChain(genesis)
    if getattr(args, "chain", None):
        try:
            links = load_chain(args.chain)
        except InputError as exc:
            raise _Failure(EXIT_UNREADABLE, str(exc)) from exc
        chain.extend(links)
    if not getattr(args, "offline", False):
        follow_chain(chain, timeout_s=args.timeout)
    return chain


def run_join(args: argparse.Namespace) -> int:
    return _run("owner join", args, _join)


def _join(args: argparse.Namespace) -> int:
    from certs.keys import load_private_key
    from marketplace.membership import expected_replica_id, join_request_to_json, sign_join, write_json
    from replica.model_spec import ModelPackageError, load_model_package

    chain = _chain(args, args.group)
    config = chain.current
    owner_key = load_private_key(args.key)
    replica_key = load_private_key(args.replica_key)
    try:
        package = load_model_package(args.model)
    except ModelPackageError as exc:
        raise _Failure(EXIT_UNREADABLE, f"model package: {exc}") from exc
    owner_id = args.owner_id or f"owner-{owner_key.key_id[:8]}"
    join = sign_join(
        config, owner_id=owner_id, owner_key=owner_key, replica_key=replica_key, address=args.replica_address,
        weights_digest=package.weights_digest, model_version=args.model_version,
    )
    out = Path(args.out or f"join-{owner_id}.json")
    write_json(join_request_to_json(join), out)
    members = ", ".join(f"{m.replica_id} ({m.owner_id})" for m in config.members)
    print(f"wrote {out}: a request to join group {config.group_id!r} at epoch {config.epoch} (digest {join.digest.hex()[:16]}...)")
    print(f"next: the owners of {config.quorum_size} of the current members [{members}] each run")
    print(f"  quorumserve owner approve {out} --config {args.config} --replica THEIR_ID --key THEIR_OWNER_KEY")
    print("and send you the approval files; then anyone runs")
    print(f"  quorumserve owner submit-join {out} --approvals A.json B.json ... --config {args.config} --wait")
    print(
        f"Your replica should get id {expected_replica_id(config)} once the change takes effect; start it then with "
        f"group_config = {args.config} and that id (it fetches the chain and catches up by state transfer)."
    )
    return EXIT_OK


def run_approve(args: argparse.Namespace) -> int:
    return _run("owner approve", args, _approve)


def _approve(args: argparse.Namespace) -> int:
    from certs.keys import load_private_key
    from marketplace.membership import approval_to_json, approve_join, join_request_from_json, read_json, write_json

    join = join_request_from_json(read_json(args.request, "join request"))
    chain = _chain(args, join.group_id)
    config = chain.current
    approval = approve_join(config, join, args.replica, load_private_key(args.key))
    request_path = Path(args.request)
    out = Path(args.out) if args.out else request_path.with_name(f"{request_path.stem}.approval-{args.replica}.json")
    write_json(approval_to_json(approval), out)
    print(
        f"wrote {out}: replica {args.replica}'s owner approves {join.owner_id!r} (replica key "
        f"{join.replica_public_key.hex()[:16]}..., address {join.address}) joining {config.group_id!r} at epoch {config.epoch}"
    )
    return EXIT_OK


def run_submit_join(args: argparse.Namespace) -> int:
    return _run("owner submit-join", args, _submit_join)


def _submit_join(args: argparse.Namespace) -> int:
    from marketplace.membership import approval_from_json, expected_replica_id, join_op, join_request_from_json, read_json, submit_control

    join = join_request_from_json(read_json(args.request, "join request"))
    approvals = [approval_from_json(read_json(path, "approval")) for path in args.approvals]
    chain = _chain(args, join.group_id)
    config = chain.current
    op = join_op(config, join, approvals)  # the group's own checks, before anything is sent
    receipt = submit_control(config, op, timeout_s=args.timeout)
    print(
        f"submitted to {len(receipt.accepted_by)} replicas of group {config.group_id!r} (epoch {receipt.epoch}); the join "
        f"takes effect at the first checkpoint at least {config.params.log_window_batches} batches after the group orders it"
    )
    if not args.wait:
        print(f"the new replica should get id {expected_replica_id(config)}; `--wait` waits for the new epoch")
        return EXIT_OK
    new = _wait_for(args, chain, lambda c: any(m.public_key == join.replica_public_key for m in c.members), "the join", config.epoch)
    member = next(m for m in new.members if m.public_key == join.replica_public_key)
    print(f"epoch {new.epoch}: {join.owner_id!r} is replica {member.replica_id}; start it now (it catches up by state transfer)")
    return EXIT_OK


def run_leave(args: argparse.Namespace) -> int:
    return _run("owner leave", args, _leave)


def _leave(args: argparse.Namespace) -> int:
    from certs.keys import load_private_key
    from marketplace.membership import leave_op, submit_control

    chain = _chain(args)
    config = chain.current
    op = leave_op(config, args.replica, load_private_key(args.key))
    receipt = submit_control(config, op, timeout_s=args.timeout)
    print(f"replica {args.replica}'s leave submitted to group {config.group_id!r} (epoch {receipt.epoch})")
    if args.wait:
        new = _wait_for(args, chain, lambda c: not c.is_member(args.replica), "the leave", config.epoch)
        print(f"epoch {new.epoch}: replica {args.replica} is no longer a member; it can be stopped")
    return EXIT_OK


def run_evict(args: argparse.Namespace) -> int:
    return _run("owner evict", args, _evict)


def _evict(args: argparse.Namespace) -> int:
    from certs.cli import InputError, decode_document, read_input
    from certs.evidence import decode_evidence, evidence_from_json
    from certs.keys import load_private_key
    from marketplace.membership import evict_op, submit_control

    chain = _chain(args)
    config = chain.current
    try:
        evidence = decode_document(read_input(args.evidence, "evidence"), "evidence", decode_evidence, evidence_from_json)
    except InputError as exc:
        raise _Failure(EXIT_UNREADABLE, str(exc)) from exc
    op = evict_op(config, args.replica, evidence, load_private_key(args.key))
    receipt = submit_control(config, op, timeout_s=args.timeout)
    print(f"eviction of replica {args.replica} submitted to group {config.group_id!r} (epoch {receipt.epoch}) with verified evidence")
    if args.wait:
        new = _wait_for(args, chain, lambda c: not c.is_member(args.replica), "the eviction", config.epoch)
        print(f"epoch {new.epoch}: replica {args.replica} is no longer a member")
    return EXIT_OK


def _wait_for(args: argparse.Namespace, chain: Any, done: Any, what: str, asked_epoch: int) -> Any:
    """The first config in which `done` holds. Membership changes go one at a time, each
    closing its epoch: an epoch after `asked_epoch` that does not show the change means another
    change went first, and the group dropped this one (it was asked of a closed epoch)."""
    from marketplace.membership import follow_chain

    deadline = time.monotonic() + args.wait_timeout
    while True:
        for config in chain.configs:
            if done(config):
                return config
            if config.epoch > asked_epoch:
                raise _Failure(
                    EXIT_REFUSED,
                    f"epoch {config.epoch} began with another membership change, so {what}, asked of epoch {asked_epoch}, "
                    "was dropped (changes go one at a time); run the command again",
                )
        if time.monotonic() > deadline:
            raise _Failure(EXIT_UNAVAILABLE, f"{what} did not take effect within {args.wait_timeout:.0f} s (the group may be idle: epochs change at checkpoints)")
        time.sleep(WAIT_POLL_INTERVAL_S)
        follow_chain(chain, timeout_s=args.timeout)


# =========================================================================================
# ledger and chain
# =========================================================================================


def _gateway_group(address: str, group_id: str, timeout_s: float) -> Any:
    import grpc

    from protos import marketplace_pb2 as mpb

    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(
            "/quorumserve.v1.Gateway/GetGroup",
            request_serializer=mpb.GroupRequest.SerializeToString,
            response_deserializer=mpb.GroupReply.FromString,
        )
        try:
            return call(mpb.GroupRequest(group_id=group_id), timeout=timeout_s)
        except grpc.RpcError as exc:
            status = EXIT_REFUSED if exc.code() == grpc.StatusCode.NOT_FOUND else EXIT_UNAVAILABLE
            raise _Failure(status, f"gateway {address}: {exc.code().name} {exc.details()}") from exc


def _reader_chain(args: argparse.Namespace) -> tuple[Any, list[str] | None, str]:
    """The chain a reader trusts, the replica addresses to ask (None: the chain's members) and
    a note on what the trust rests on."""
    from certs.config import GroupConfig
    from marketplace.membership import ConfigChain, follow_chain, links_from_group_reply

    if args.gateway:
        reply = _gateway_group(args.gateway, args.group, args.timeout)
        if args.config:
            chain = _chain(argparse.Namespace(config=args.config, chain=getattr(args, "chain", None), offline=True, timeout=args.timeout), args.group)
            note = f"pinned config {args.config}"
        else:
            chain = ConfigChain(GroupConfig.from_json(json.loads(reply.config_chain_json[0])))
            note = "the gateway's genesis config (not pinned: pass --config to check against yours)"
        chain.extend(links_from_group_reply(reply.config_chain_json))
        return chain, list(reply.addresses.values()) or None, note
    if not args.config:
        raise _Failure(EXIT_UNREADABLE, "give --config GROUP.json (the config you pinned) or --gateway ADDR")
    chain = _chain(argparse.Namespace(config=args.config, chain=getattr(args, "chain", None), offline=True, timeout=args.timeout), args.group)
    follow_chain(chain, timeout_s=args.timeout)
    return chain, None, f"pinned config {args.config}"


def run_ledger(args: argparse.Namespace) -> int:
    return _run("ledger", args, _ledger)


def _ledger(args: argparse.Namespace) -> int:
    from marketplace.membership import LedgerError, fetch_ledger

    chain, addresses, note = _reader_chain(args)
    try:
        ledger = fetch_ledger(chain, addresses=addresses, timeout_s=args.timeout)
    except LedgerError as exc:
        raise _Failure(EXIT_UNAVAILABLE, str(exc)) from exc
    if args.json:
        print(json.dumps({**ledger.to_json(), "trusted": note}, indent=2))
        return EXIT_OK
    print(ledger.describe())
    print(f"verified: a quorum of epoch {ledger.signed_epoch}'s replicas signed this state at seq {ledger.seq}; trust rests on the {note}")
    return EXIT_OK


def run_chain(args: argparse.Namespace) -> int:
    return _run("chain", args, _print_chain)


def _print_chain(args: argparse.Namespace) -> int:
    from certs.cli import chain_to_json

    chain, _, _ = _reader_chain(args)
    links = chain.signed_links()
    text = json.dumps(chain_to_json(links), indent=2) + "\n"
    epochs = ", ".join(f"{c.epoch} (replicas {list(c.replica_ids)})" for c in chain.configs)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}: epochs {epochs}, each link checked from {args.config}")
    else:
        sys.stdout.write(text)
        print(f"epochs {epochs}, each link checked from {args.config}", file=sys.stderr)
    return EXIT_OK
