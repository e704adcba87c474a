"""Auditor subcommands of `quorumserve`: audit, verify-audit, report.

    quorumserve audit --gateway ADDR --config GROUP.json [--labelled DATA.npz] --rate R
                      [--requests N | --duration S] [--qps Q] [--window-requests W] ...
        traffic with canaries mixed in (a fraction R of the requests, at random), through a
        gateway (or, without --gateway, straight to the config's replicas); per window, each
        owner's accuracy and agreement from its signed votes; flags written to the audit log,
        each with a proof file. Exit status 0: nothing flagged, 3: flags raised, 1: error.
    quorumserve verify-audit PROOF.json --config GROUP.json [--labelled DATA.npz|digits]
        re-check a flag offline from its proof. Exit status 0 proven, 1 not, 2 unreadable.
    quorumserve report GROUP [--log PATH] [--out DIR]
        an HTML report with PNG plots from the audit log, plus the replicas' evidence and
        model versions when they can be reached.

Labelled data is an .npz with X (inputs) and y (class indexes or label names); without
--labelled, the digits held-out set. The audit log defaults to ~/.quorumserve/audit/GROUP.sqlite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from pathlib import Path
from typing import Any

DEFAULT_AUDIT_DIR = Path("~/.quorumserve/audit")
EXIT_FLAGGED = 3


def default_log_path(group_id: str) -> Path:
    return (DEFAULT_AUDIT_DIR / f"{group_id}.sqlite").expanduser()


def proofs_dir(log_path: Path) -> Path:
    return log_path.with_name(log_path.stem + "-proofs")


def register(subparsers: Any) -> None:
    audit = subparsers.add_parser(
        "audit",
        help="canary audit: each owner's accuracy from its signed votes, flags with stated confidence",
        description="Send traffic with labelled canaries mixed in, indistinguishable to the replicas; judge each "
        "owner per window from the accountable certificates. Exit status 0: no flags, 3: flags raised, 1: error.",
    )
    audit.add_argument("--gateway", metavar="ADDR", help="host:port of a gateway (default: the config's replicas directly)")
    audit.add_argument("--config", required=True, metavar="GROUP.json", help="the group config you pin")
    audit.add_argument("--labelled", metavar="DATA.npz", help="labelled inputs: arrays X and y (default 'digits': the digits held-out set)")
    audit.add_argument("--traffic", metavar="ROWS.npy", help="normal traffic to mix canaries into (default for digits: "
                       "the digits outside the held-out set; else canaries only)")
    audit.add_argument("--rate", type=float, default=0.25, metavar="R", help="fraction of requests that are canaries (default 0.25)")
    amount = audit.add_mutually_exclusive_group()
    amount.add_argument("--requests", type=int, metavar="N", help="send N requests (default 2000)")
    amount.add_argument("--duration", type=float, metavar="S", help="send for S seconds")
    audit.add_argument("--qps", type=float, default=20.0, help="average requests per second, Poisson arrivals (default 20; 0: as fast as --concurrency allows)")
    audit.add_argument("--window-requests", type=int, default=400, help="requests per window (default 400)")
    audit.add_argument("--window-seconds", type=float, default=0.0, help="or close windows after this long (default: off)")
    audit.add_argument("--baseline-windows", type=int, default=2, help="an owner's first windows that form its baseline (default 2)")
    audit.add_argument("--alpha", type=float, default=0.001, help="false-alarm rate per owner, window and test (default 0.001)")
    audit.add_argument("--margin", type=float, default=0.05, help="accuracy drop tolerated, as a fraction (default 0.05)")
    audit.add_argument("--agreement-margin", type=float, default=0.05, help="agreement drop tolerated (default 0.05)")
    audit.add_argument("--floor", type=float, metavar="ACC", help="also flag accuracy below this floor (e.g. 0.9)")
    audit.add_argument("--client-id", default="anonymous", help="the client id of the traffic the canaries hide in")
    audit.add_argument("--concurrency", type=int, default=32, help="requests in flight at most (default 32)")
    audit.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each certificate (default 30)")
    audit.add_argument("--log", metavar="PATH", help="audit log (SQLite; default ~/.quorumserve/audit/GROUP.sqlite)")
    audit.add_argument("--proofs", metavar="DIR", help="where flag proofs go (default: beside the log)")
    audit.add_argument("--seed", type=int, help="seed the canary choices (tests; default: unpredictable)")
    audit.add_argument("--json", action="store_true", help="print the analysis as JSON at the end")
    audit.set_defaults(handler=run_audit)

    check = subparsers.add_parser(
        "verify-audit",
        help="check an audit flag offline from its proof (the owner's signed votes)",
        description="Re-check a flag: every certificate and vote signature, the recounted figures and the test. "
        "Exit status: 0 proven, 1 not proven, 2 unreadable input.",
    )
    check.add_argument("proof", metavar="PROOF.json")
    check.add_argument("--config", required=True, metavar="GROUP.json", help="the group config (JSON)")
    check.add_argument("--labelled", metavar="DATA", help="check the canaries' labels against this .npz (or 'digits')")
    check.add_argument("--json", action="store_true")
    check.set_defaults(handler=run_verify_audit)

    report = subparsers.add_parser(
        "report",
        help="HTML report of an audit: accuracy and agreement over time, evidence, model versions, fee ledger",
        description="Render the audit log of GROUP as HTML with PNG plots. Evidence and model versions come from "
        "the replicas (ListEvidence, Status) and the fee ledger is verified against a checkpoint quorum when they answer; --offline skips them.",
    )
    report.add_argument("group", metavar="GROUP", help="group id")
    report.add_argument("--log", metavar="PATH", help="audit log (default ~/.quorumserve/audit/GROUP.sqlite)")
    report.add_argument("--out", metavar="DIR", help="output directory (default: GROUP-report beside the log)")
    report.add_argument("--offline", action="store_true", help="do not contact the replicas")
    report.add_argument("--timeout", type=float, default=3.0, help="seconds per replica call (default 3)")
    report.set_defaults(handler=run_report)


def _fail(command: str, message: str, status: int = 1) -> int:
    print(f"quorumserve {command}: {message}", file=sys.stderr)
    return status


# =========================================================================================
# audit
# =========================================================================================


def run_audit(args: argparse.Namespace) -> int:
    import numpy as np

    from certs.cli import InputError, load_config
    from marketplace.audit import AuditError, AuditLog, AuditSettings, analyse, load_labelled, summarise

    try:
        config = load_config(args.config)
        settings = AuditSettings(
            canary_rate=args.rate,
            window_requests=args.window_requests,
            window_seconds=args.window_seconds,
            baseline_windows=args.baseline_windows,
            alpha=args.alpha,
            margin=args.margin,
            agreement_margin=args.agreement_margin,
            accuracy_floor=args.floor,
        )
        digits = args.labelled in (None, "digits")
        labelled = load_labelled(None if digits else args.labelled, config)
        traffic = _traffic(args, digits, np)
    except (InputError, AuditError, ValueError, OSError) as exc:
        return _fail("audit", str(exc))
    log_path = Path(args.log).expanduser() if args.log else default_log_path(config.group_id)
    proofs = Path(args.proofs).expanduser() if args.proofs else proofs_dir(log_path)
    requests = args.requests if args.requests is not None or args.duration is not None else 2000
    try:
        audit_log = AuditLog(log_path)
    except (AuditError, OSError) as exc:
        return _fail("audit", str(exc))
    try:
        flags = asyncio.run(_audit(args, config, audit_log, labelled, settings, traffic, requests, proofs))
        analysis = analyse(audit_log)
    except AuditError as exc:
        return _fail("audit", str(exc))
    finally:
        audit_log.close()
    if args.json:
        print(json.dumps({"log": str(log_path), "flags": flags, "analysis": summarise(analysis)}, indent=1))
    else:
        print(_table(analysis))
        print(f"{analysis.requests} requests ({analysis.canaries} canaries), {analysis.accountable} with accountable "
              f"certificates, {analysis.failed} failed; audit log: {log_path}")
        print(
            f"{analysis.tests_made} tests at alpha {settings.alpha:g} each: a false alarm anywhere in this run "
            f"has probability at most {analysis.family_alarm_bound:.3g}"
        )
        for flag in flags:
            print(f"FLAG: {flag['statement']}\n  proof: {flag['proof']}")
    return EXIT_FLAGGED if flags else 0


def _traffic(args: argparse.Namespace, digits: bool, np: Any) -> Any:
    if args.traffic:
        rows = np.load(args.traffic, allow_pickle=False)
        return rows.reshape(rows.shape[0], -1) if rows.ndim > 1 else rows.reshape(1, -1)
    if digits:
        from marketplace.audit import digits_traffic

        return digits_traffic()
    return None  # canaries only: they hide among other clients' traffic


async def _audit(
    args: argparse.Namespace,
    config: Any,
    audit_log: Any,
    labelled: Any,
    settings: Any,
    traffic: Any,
    requests: int | None,
    proofs: Path,
) -> list[dict[str, Any]]:
    from marketplace.audit import Auditor, write_proof
    from marketplace.sdk import AsyncClient, AsyncReplicaClient

    client: Any
    if args.gateway:
        client = AsyncClient(args.gateway, config, client_id=args.client_id, timeout_s=args.timeout)
    else:
        client = AsyncReplicaClient(None, config, client_id=args.client_id, timeout_s=args.timeout)
    flags: list[dict[str, Any]] = []

    def on_flag(flag: dict[str, Any]) -> None:
        path = write_proof(audit_log, flag, proofs)
        flags.append({**flag, "proof": str(path)})
        print(f"window {flag['window']}: FLAG {flag['statement']}", file=sys.stderr)

    rng = random.Random(args.seed) if args.seed is not None else None
    auditor = Auditor(client, audit_log, labelled, settings, client_id=args.client_id, rng=rng,
                      concurrency=args.concurrency, on_flag=on_flag)
    try:
        await auditor.run(traffic, None if args.duration else requests, duration_s=args.duration, qps=args.qps)
    finally:
        await client.close()
    return flags


def _table(analysis: Any) -> str:
    """Per owner: accuracy and agreement per window, * where flagged."""
    lines = [f"{'window':>6}  " + "  ".join(f"{analysis.owner(r):>28}" for r in analysis.config.replica_ids)]
    for w in analysis.windows:
        cells = []
        for r in analysis.config.replica_ids:
            cell = analysis.cells[(w, r)]
            mark = "*" if any(t.flagged for t in cell.tests) else ("b" if cell.baseline else " ")
            acc = f"{100 * cell.accuracy.rate:5.1f}%" if cell.accuracy.trials else "   - "
            agree = f"{100 * cell.agreement.rate:5.1f}%" if cell.agreement.trials else "   - "
            cells.append(f"acc {acc} ({cell.accuracy.trials:3d}) agr {agree}{mark}")
        lines.append(f"{w:>6}  " + "  ".join(f"{c:>28}" for c in cells))
    lines.append("b: baseline window, *: flagged")
    return "\n".join(lines)


# =========================================================================================
# verify-audit
# =========================================================================================


def run_verify_audit(args: argparse.Namespace) -> int:
    from certs.cli import InputError, load_config, parse_json, read_input
    from certs.errors import CertificateError, DecodeError
    from marketplace.audit import AuditError, load_labelled, verify_flag_proof

    try:
        config = load_config(args.config)
        bundle = parse_json(read_input(args.proof, "audit proof"), "audit proof")
        labelled = None
        if args.labelled:
            labelled = load_labelled(None if args.labelled == "digits" else args.labelled, config)
    except (InputError, AuditError) as exc:
        return _fail("verify-audit", str(exc), 2)
    try:
        verdict = verify_flag_proof(bundle, config, labelled)
    except DecodeError as exc:
        return _fail("verify-audit", f"audit proof is not readable: {exc}", 2)
    except CertificateError as exc:
        if args.json:
            print(json.dumps({"verdict": "not proven", "error": str(exc)}))
        else:
            print(f"NOT PROVEN: {exc}")
        return 1
    if args.json:
        print(json.dumps({"verdict": "proven", "replica_id": verdict.replica_id, "kind": verdict.kind,
                          "window": verdict.window, "description": verdict.describe(config)}))
    else:
        print(f"PROVEN: {verdict.describe(config)}")
    return 0


# =========================================================================================
# report
# =========================================================================================


def run_report(args: argparse.Namespace) -> int:
    from marketplace.audit import AuditError, AuditLog
    from marketplace.report import ReportError, collect_live, render_report

    log_path = Path(args.log).expanduser() if args.log else default_log_path(args.group)
    if not log_path.exists():
        return _fail("report", f"no audit log at {log_path} (run quorumserve audit, or give --log)")
    out_dir = Path(args.out).expanduser() if args.out else log_path.with_name(f"{args.group}-report")
    try:
        with AuditLog(log_path) as audit_log:
            config = audit_log.config()
            if config.group_id != args.group:
                return _fail("report", f"{log_path} audits group {config.group_id!r}, not {args.group!r}")
            live = None if args.offline else collect_live(config, timeout_s=args.timeout)
            index = render_report(audit_log, out_dir, live=live, proofs_dir=proofs_dir(log_path))
    except (AuditError, ReportError, OSError) as exc:
        return _fail("report", str(exc))
    print(index)
    return 0
