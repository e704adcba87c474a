"""The Prometheus alerting rules (deploy/prometheus/alerts.yml) against the metrics the replica
and the gateway really export: a renamed metric or label would otherwise leave an alert that
never fires."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from marketplace.gateway import GatewayMetrics
from replica.metrics import ReplicaMetrics

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"
METRIC = re.compile(r"\b(quorumserve_[a-z_]+)(\{[^}]*\})?")
MATCHER_LABEL = re.compile(r"([a-z_]+)\s*(?:=~|!~|!=|=)")
TEMPLATE_LABEL = re.compile(r"\$labels\.([a-z_]+)")
BY_LABELS = re.compile(r"\bby\s*\(([^)]*)\)")
DURATION = re.compile(r"^\d+[smhd]$")


def _exported(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Sample name -> label names, for every metric family in the registry."""
    names: dict[str, set[str]] = {}
    for collector in list(registry._collector_to_names):  # families with labels yield no samples until used
        labels = set(getattr(collector, "_labelnames", ()))
        kind = getattr(collector, "_type", "")
        base = getattr(collector, "_name", "")
        suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}.get(kind, ("",))
        for suffix in suffixes:
            names[base + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


def _metrics() -> dict[str, set[str]]:
    return {**_exported(ReplicaMetrics(0, "digits").registry), **_exported(GatewayMetrics().registry)}


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_the_rules_file_is_a_prometheus_rules_file_with_named_documented_alerts() -> None:
    document = yaml.safe_load(RULES.read_text())
    assert set(document) == {"groups"}
    assert all(set(group) == {"name", "rules"} and group["rules"] for group in document["groups"])
    rules = _rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)) and len(names) >= 8
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"].strip() and rule["annotations"]["description"].strip(), rule["alert"]
        assert "for" not in rule or DURATION.match(rule["for"]), rule["alert"]
        expr = rule["expr"]
        assert expr.count("(") == expr.count(")") and expr.count("[") == expr.count("]"), rule["alert"]


def test_every_metric_and_label_an_alert_uses_is_exported() -> None:
    exported = _metrics()
    for rule in _rules():
        used = METRIC.findall(rule["expr"])
        assert used, f"{rule['alert']} uses no quorumserve metric"
        available: set[str] = set()
        for name, matchers in used:
            assert name in exported, f"{rule['alert']}: {name} is not exported"
            for label in MATCHER_LABEL.findall(matchers):
                assert label in exported[name], f"{rule['alert']}: {name} has no label {label!r}"
            available |= exported[name]
        # two metrics with different labels compared or combined match no series at all unless
        # the expression aggregates or names the labels to match on
        label_sets = {frozenset(exported[name]) for name, _ in used}
        if len(label_sets) > 1:
            assert re.search(r"\b(by|on|ignoring)\s*\(", rule["expr"]), f"{rule['alert']}: metrics with different labels, matched on none"
        grouped = [set(filter(None, (s.strip() for s in labels.split(",")))) for labels in BY_LABELS.findall(rule["expr"])]
        if grouped:
            available = set.intersection(*grouped)
        templates = " ".join(rule["annotations"].values())
        for label in TEMPLATE_LABEL.findall(templates):
            assert label in available, f"{rule['alert']}: its annotations name label {label!r}, which its expression does not keep"
