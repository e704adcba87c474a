"""The auditor's report: one HTML page with PNG plots, rendered from an audit log.

    index.html       summary, flags (with their proof files), per-window table, evidence,
                     model versions, and a fee ledger when the group has one
    accuracy.png     per owner: canary accuracy per window with its confidence bounds
    agreement.png    per owner: agreement with the certified decision per window
    versions.png     per owner: the model version its signed votes claim, per window

Figures come from `marketplace.audit.analyse`, so the report shows exactly what flagged an owner.
What the replicas say (`collect_live`: each one's ListEvidence and Status) is optional: every
evidence item is verified against the config here before it is shown as proven, and a replica
that cannot be reached is named, not silently left out.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from certs.config import GroupConfig
from certs.errors import CertificateError
from marketplace.audit import (
    ACCURACY_DROP,
    AGREEMENT_DRIFT,
    Analysis,
    AuditLog,
    analyse,
    confidence_text,
    settings_summary,
)
from marketplace.membership import ConfigChain, Ledger, LedgerError, fetch_ledger


class ReportError(Exception):
    """The report cannot be rendered (an unusable log or output directory)."""


@dataclass(frozen=True)
class EvidenceRow:
    """One distinct evidence item and what verifying it against the config found."""

    holders: tuple[int, ...]  # replicas that store it
    kind: str
    proven: bool
    accused: tuple[int, ...]
    description: str  # the verdict, or why it proves nothing


@dataclass(frozen=True)
class Activation:
    replica_id: int
    version: int
    from_seq: int
    weights_digest: str


@dataclass
class LiveInfo:
    """What the replicas said when the report was made."""

    collected_at: float
    evidence: list[EvidenceRow] = field(default_factory=list)
    activations: list[Activation] = field(default_factory=list)
    current_versions: dict[int, int] = field(default_factory=dict)  # replica -> version in effect
    unreachable: dict[int, str] = field(default_factory=dict)  # replica -> error
    ledger: Ledger | None = None  # the fee ledger at the newest stable checkpoint, verified here
    ledger_error: str | None = None  # why no ledger could be verified (groups that charge only)


# A section a caller adds to the page: (title, HTML body) or None to leave it out.
Section = Callable[[GroupConfig, Path], "tuple[str, str] | None"]


def collect_live(config: GroupConfig, *, timeout_s: float = 3.0, page_size: int = 500) -> LiveInfo:
    """Every replica's stored evidence (verified here) and model version history."""
    import grpc

    from certs.evidence import Evidence, decode_evidence, describe_evidence, encode_evidence, verify_evidence
    from protos import replica_api_pb2 as api
    from protos import replica_api_pb2_grpc as api_grpc

    live = LiveInfo(collected_at=time.time())
    found: dict[bytes, tuple[list[int], Evidence | None, str]] = {}
    activations: set[Activation] = set()
    for member in config.members:
        rid = member.replica_id
        try:
            with grpc.insecure_channel(member.address) as channel:
                stub = api_grpc.ReplicaStub(channel)
                status = stub.Status(api.StatusRequest(), timeout=timeout_s)
                for v in status.versions:
                    if v.replica_id == rid:
                        live.current_versions[rid] = int(v.version)
                for a in status.activations:
                    activations.add(Activation(int(a.replica_id), int(a.version), int(a.from_seq), bytes(a.weights_digest).hex()))
                after = 0
                while True:
                    reply = stub.ListEvidence(api.EvidenceRequest(after_id=after, limit=page_size), timeout=timeout_s)
                    for item in reply.items:
                        raw = bytes(item.evidence)
                        try:
                            decoded: Evidence | None = decode_evidence(raw)
                            key = encode_evidence(decoded)  # type: ignore[arg-type]
                        except CertificateError as exc:
                            decoded, key = None, raw
                            found.setdefault(key, ([], None, f"unreadable: {exc}"))
                        entry = found.setdefault(key, ([], decoded, item.summary))
                        if rid not in entry[0]:
                            entry[0].append(rid)
                        after = max(after, int(item.id))
                    if len(reply.items) < page_size:
                        break
        except grpc.RpcError as exc:
            code = exc.code().name if hasattr(exc, "code") else "error"
            live.unreachable[rid] = f"{code}: {exc.details() if hasattr(exc, 'details') else exc}"
    for holders, item, summary in found.values():
        if item is None:
            live.evidence.append(EvidenceRow(tuple(sorted(holders)), "unreadable", False, (), summary))
            continue
        kind = type(item).__name__
        try:
            accused = verify_evidence(item, config)
            live.evidence.append(EvidenceRow(tuple(sorted(holders)), kind, True, accused, describe_evidence(item, accused, config)))
        except CertificateError as exc:
            live.evidence.append(EvidenceRow(tuple(sorted(holders)), kind, False, (), f"proves nothing: {exc}"))
    live.activations = sorted(activations, key=lambda a: (a.replica_id, a.from_seq))
    if len(live.unreachable) < config.n:
        _collect_ledger(config, live, timeout_s)
    return live


def _collect_ledger(config: GroupConfig, live: LiveInfo, timeout_s: float) -> None:
    """The fee ledger, verified against a quorum of checkpoint signatures (following the config
    chain from `config` if the group has moved on). A group that charges nothing and has no
    stable checkpoint yet simply has no ledger to show."""
    try:
        live.ledger = fetch_ledger(ConfigChain(config), timeout_s=timeout_s)
    except (LedgerError, CertificateError) as exc:
        if config.price_per_request > 0:
            live.ledger_error = str(exc)


# =========================================================================================
# plots
# =========================================================================================


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _rate_plot(analysis: Analysis, path: Path, which: str) -> None:
    """One panel per owner: the window's rate, its confidence bounds, the baseline, flags."""
    plt = _pyplot()
    ids = analysis.config.replica_ids
    flag_kind = ACCURACY_DROP if which == "accuracy" else AGREEMENT_DRIFT
    figure, axes = plt.subplots(len(ids), 1, figsize=(9, 2.1 * len(ids) + 0.6), sharex=True, squeeze=False)
    windows = analysis.windows
    for axis, rid in zip(axes[:, 0], ids):
        xs, ys, lows, highs, baseline_xs, flagged_xs, flagged_ys = [], [], [], [], [], [], []
        for w in windows:
            cell = analysis.cells[(w, rid)]
            counts = cell.accuracy if which == "accuracy" else cell.agreement
            if not counts.trials:
                continue
            low, high = cell.accuracy_bounds if which == "accuracy" else cell.agreement_bounds
            xs.append(w)
            ys.append(counts.rate)
            lows.append(counts.rate - low)
            highs.append(high - counts.rate)
            if w in analysis.baselines.get(rid, ([], []))[0 if which == "accuracy" else 1]:
                baseline_xs.append(w)
            if any(t.flagged and t.kind in (flag_kind, "below-floor") for t in cell.tests):
                flagged_xs.append(w)
                flagged_ys.append(counts.rate)
        if xs:
            axis.errorbar(xs, ys, yerr=[lows, highs], fmt="o-", color="#1f5fa8", ecolor="#8fb0d8", capsize=3,
                          label=f"{which} ({confidence_text(analysis.settings.alpha / 2)} bounds)")
        for w in baseline_xs:
            axis.axvspan(w - 0.5, w + 0.5, color="#e8e8e8", zorder=0)
        if flagged_xs:
            axis.scatter(flagged_xs, flagged_ys, marker="X", s=90, color="#c0392b", zorder=5, label="flagged")
        if which == "accuracy" and analysis.settings.accuracy_floor is not None:
            axis.axhline(analysis.settings.accuracy_floor, color="#c0392b", linestyle=":", linewidth=1)
        axis.set_ylim(-0.02, 1.02)
        axis.set_ylabel(analysis.owner(rid).split(" (")[0], fontsize=9)
        axis.grid(alpha=0.3)
        if flagged_xs or (xs and rid == ids[0]):
            axis.legend(loc="lower left", fontsize=7)
    axes[-1, 0].set_xlabel("window (grey: baseline)")
    if windows:
        axes[-1, 0].set_xticks(windows)
    title = "canary accuracy per owner" if which == "accuracy" else "agreement with the certified decision per owner"
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _versions_plot(analysis: Analysis, path: Path) -> None:
    """Per owner, the model version(s) its signed votes claim in each window."""
    plt = _pyplot()
    ids = analysis.config.replica_ids
    figure, axis = plt.subplots(figsize=(9, 0.6 * len(ids) + 1.4))
    colours = ["#1f5fa8", "#e67e22", "#27ae60", "#8e44ad", "#c0392b", "#16a085"]
    seen: dict[int, str] = {}
    for row, rid in enumerate(ids):
        for version, first, last in analysis.versions_seen.get(rid, []):
            colour = seen.setdefault(version, colours[len(seen) % len(colours)])
            axis.barh(row, last - first + 1, left=first - 0.5, height=0.5, color=colour, edgecolor="white")
            axis.text((first + last) / 2, row, f"v{version}", ha="center", va="center", color="white", fontsize=8)
    axis.set_yticks(range(len(ids)))
    axis.set_yticklabels([analysis.owner(r).split(" (")[0] for r in ids], fontsize=9)
    if analysis.windows:
        axis.set_xticks(analysis.windows)
        axis.set_xlim(min(analysis.windows) - 0.6, max(analysis.windows) + 0.6)
    axis.set_xlabel("window")
    axis.set_title("model version claimed in the signed votes", fontsize=11)
    axis.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# =========================================================================================
# HTML
# =========================================================================================

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 64em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } .flag { color: #c0392b; font-weight: 600; } .ok { color: #27ae60; }
.muted { color: #777; } img { max-width: 100%; } code { font-size: 0.9em; }
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _when(seconds: float | None) -> str:
    return "-" if seconds is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _percent(successes: int, trials: int) -> str:
    return f"{100 * successes / trials:.1f} % ({successes}/{trials})" if trials else "-"


def render_report(
    audit_log: AuditLog,
    out_dir: str | os.PathLike[str],
    *,
    live: LiveInfo | None = None,
    proofs_dir: Path | None = None,
    sections: Sequence[Section] | None = None,
) -> Path:
    """Write index.html and its PNGs under `out_dir`; returns the HTML file's path."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create {out}: {exc}") from exc
    analysis = analyse(audit_log)
    config = analysis.config
    flags = audit_log.flags()
    _rate_plot(analysis, out / "accuracy.png", "accuracy")
    _rate_plot(analysis, out / "agreement.png", "agreement")
    _versions_plot(analysis, out / "versions.png")

    settings = analysis.settings
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>quorumserve audit: {_e(config.group_id)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Audit of group <code>{_e(config.group_id)}</code></h1>",
        "<table>",
        f"<tr><th>config</th><td>epoch {config.epoch}, digest <code>{_e(config.digest.hex())}</code>, "
        f"n = {config.n}, f = {config.f}, policy {_e(config.policy.describe(config.f))}</td></tr>",
        f"<tr><th>labelled data</th><td>{_e(audit_log.meta('labelled_source') or '-')}</td></tr>",
        f"<tr><th>traffic</th><td>{analysis.requests} requests ({analysis.canaries} canaries), "
        f"{analysis.accountable} with accountable certificates, {analysis.failed} failed; "
        f"{len(analysis.windows)} closed windows</td></tr>",
        f"<tr><th>settings</th><td>{_e(settings_summary(settings))}</td></tr>",
        f"<tr><th>false alarms</th><td>at most {settings.alpha:g} per owner, window and test (one-sided "
        f"Clopper-Pearson bounds); {analysis.tests_made} tests so far, so a false alarm anywhere in this "
        f"audit has probability at most {analysis.family_alarm_bound:.3g} (union bound)</td></tr>",
        f"<tr><th>rendered</th><td>{_when(time.time())}</td></tr>",
        "</table>",
    ]

    parts.append("<h2>Flags</h2>")
    if flags:
        parts.append("<table><tr><th>window</th><th>owner</th><th>test</th><th>finding</th><th>proof</th></tr>")
        for flag in flags:
            proof = "-"
            if proofs_dir is not None:
                matches = sorted(proofs_dir.glob(f"flag-{flag['id']}-*.json")) if proofs_dir.exists() else []
                if matches:
                    proof = f"<a href='{_e(Path(os.path.relpath(matches[0], out)).as_posix())}'>{_e(matches[0].name)}</a>"
            parts.append(
                f"<tr><td>{flag['window']}</td><td>{_e(analysis.owner(flag['replica_id']))}</td>"
                f"<td class='flag'>{_e(flag['kind'])}</td><td>{_e(flag['statement'])}</td><td>{proof}</td></tr>"
            )
        parts.append("</table><p class='muted'>Check a proof offline: <code>quorumserve verify-audit PROOF.json "
                     "--config GROUP.json [--labelled DATA]</code></p>")
    else:
        parts.append("<p class='ok'>No owner was flagged.</p>")

    parts.append("<h2>Accuracy over time</h2><img src='accuracy.png' alt='accuracy per owner and window'>")
    parts.append("<h2>Agreement over time</h2><img src='agreement.png' alt='agreement per owner and window'>")
    parts.append(_window_table(analysis))
    parts.append(_evidence_section(live))
    parts.append(_versions_section(analysis, live))
    extra = _extra_sections(config, out, sections)
    for title, body in extra:
        parts.append(f"<h2>{_e(title)}</h2>{body}")
    parts.append(_ledger_section(config, live))
    parts.append("</body></html>")
    index = out / "index.html"
    index.write_text("\n".join(parts), encoding="utf-8")
    return index


def _window_table(analysis: Analysis) -> str:
    ids = analysis.config.replica_ids
    rows = ["<h2>Per window</h2><table><tr><th>window</th><th>closed</th>"
            + "".join(f"<th>{_e(analysis.owner(r))}</th>" for r in ids) + "</tr>"]
    for w in analysis.windows:
        cells = []
        for r in ids:
            cell = analysis.cells[(w, r)]
            flagged = [t.kind for t in cell.tests if t.flagged]
            note = " <span class='muted'>(baseline)</span>" if cell.baseline else ""
            if flagged:
                note += f" <span class='flag'>{_e(', '.join(flagged))}</span>"
            versions = ", ".join(f"v{v}" for v in sorted(cell.versions)) or "-"
            cells.append(
                f"<td>accuracy {_percent(cell.accuracy.successes, cell.accuracy.trials)}<br>"
                f"agreement {_percent(cell.agreement.successes, cell.agreement.trials)}<br>"
                f"<span class='muted'>{_e(versions)}</span>{note}</td>"
            )
        rows.append(f"<tr><td>{w}</td><td>{_when(analysis.window_times.get(w, (0.0, None))[1])}</td>{''.join(cells)}</tr>")
    rows.append("</table>")
    return "".join(rows)


def _evidence_section(live: LiveInfo | None) -> str:
    parts = ["<h2>Evidence held by the replicas</h2>"]
    if live is None:
        parts.append("<p class='muted'>Not collected (offline report).</p>")
        return "".join(parts)
    parts.append(f"<p class='muted'>Asked at {_when(live.collected_at)}; every item verified here against the config.</p>")
    if live.unreachable:
        parts.append("<p>Not reachable: " + "; ".join(f"replica {r} ({_e(e)})" for r, e in sorted(live.unreachable.items())) + "</p>")
    if not live.evidence:
        parts.append("<p class='ok'>No replica holds evidence of misbehaviour.</p>")
        return "".join(parts)
    parts.append("<table><tr><th>kind</th><th>verdict</th><th>accused</th><th>held by</th><th>description</th></tr>")
    for row in live.evidence:
        verdict = "<span class='flag'>proven</span>" if row.proven else "<span class='muted'>not proven</span>"
        parts.append(
            f"<tr><td>{_e(row.kind)}</td><td>{verdict}</td><td>{_e(', '.join(map(str, row.accused)) or '-')}</td>"
            f"<td>{_e(', '.join(map(str, row.holders)))}</td><td>{_e(row.description)}</td></tr>"
        )
    parts.append("</table>")
    return "".join(parts)


def _versions_section(analysis: Analysis, live: LiveInfo | None) -> str:
    parts = ["<h2>Model versions</h2><img src='versions.png' alt='model versions per owner and window'>",
             "<table><tr><th>owner</th><th>versions in its signed votes (windows)</th><th>activations ordered by the group</th></tr>"]
    for r in analysis.config.replica_ids:
        seen = ", ".join(f"v{v} (windows {a}-{b})" for v, a, b in analysis.versions_seen.get(r, [])) or "-"
        if live is None:
            ordered = "<span class='muted'>not collected</span>"
        else:
            own = [a for a in live.activations if a.replica_id == r]
            ordered = ", ".join(f"v{a.version} from seq {a.from_seq}" for a in own) or "none since genesis"
            if r in live.current_versions:
                ordered += f"; v{live.current_versions[r]} in effect"
        parts.append(f"<tr><td>{_e(analysis.owner(r))}</td><td>{_e(seen)}</td><td>{ordered}</td></tr>")
    parts.append("</table>")
    return "".join(parts)


def _extra_sections(config: GroupConfig, out: Path, sections: Sequence[Section] | None) -> list[tuple[str, str]]:
    """Sections the caller contributes, in order; a section returning None is left out."""
    rendered = []
    for section in sections or ():
        result = section(config, out)
        if result is not None:
            rendered.append(result)
    return rendered


CLIENTS_SHOWN_MAX = 50  # the biggest spenders; the JSON from `quorumserve ledger` has them all


def _ledger_section(config: GroupConfig, live: LiveInfo | None) -> str:
    """Each owner's earnings and each client's spend at the newest stable checkpoint. Shown only
    when the group charges or its ledger has entries; every figure was checked against a quorum
    of checkpoint signatures when it was collected."""
    if live is None:
        return ""
    if live.ledger is None:
        if live.ledger_error is None:
            return ""
        return f"<h2>Fee ledger</h2><p class='flag'>No ledger could be verified: {_e(live.ledger_error)}</p>"
    ledger = live.ledger
    if config.price_per_request == 0 and not ledger.client_spend and not ledger.owner_earnings:
        return ""
    parts = [
        "<h2>Fee ledger</h2>",
        f"<p>At the stable checkpoint of seq {ledger.seq} (epoch {ledger.epoch}), signed by replicas "
        f"{_e(', '.join(map(str, ledger.signers)))} of epoch {ledger.signed_epoch} over state "
        f"<code>{ledger.state_digest.hex()[:16]}…</code>; price {config.price_per_request} credits per "
        "certified request, shared among the owners whose votes supported the decision.</p>",
        "<table><tr><th>replica</th><th>owner</th><th>earned</th><th>share</th></tr>",
    ]
    total = ledger.total_earnings
    for rid, amount in sorted(ledger.owner_earnings.items()):
        share = f"{100.0 * amount / total:.1f} %" if total else "-"
        owner = ledger.owner_ids.get(rid, "?")
        parts.append(f"<tr><td>{rid}</td><td>{_e(owner)}</td><td>{amount}</td><td>{share}</td></tr>")
    parts.append(f"<tr><th colspan='2'>total</th><th>{total}</th><th></th></tr></table>")
    spenders = sorted(ledger.client_spend.items(), key=lambda item: (-item[1], item[0]))
    parts.append("<table><tr><th>client</th><th>spent</th></tr>")
    for client, amount in spenders[:CLIENTS_SHOWN_MAX]:
        parts.append(f"<tr><td>{_e(client)}</td><td>{amount}</td></tr>")
    if len(spenders) > CLIENTS_SHOWN_MAX:
        rest = sum(amount for _, amount in spenders[CLIENTS_SHOWN_MAX:])
        parts.append(f"<tr><td class='muted'>{len(spenders) - CLIENTS_SHOWN_MAX} more clients</td><td>{rest}</td></tr>")
    parts.append(f"<tr><th>total</th><th>{ledger.total_spend}</th></tr></table>")
    return "".join(parts)
