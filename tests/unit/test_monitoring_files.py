"""The shipped alert rules and dashboard only use metrics and label values amzguard really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from amzguard.metrics import Metrics
from amzguard.policy import parse_limits
from amzguard.store import BACKENDS, DailyCount

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "etc" / "prometheus" / "amzguard-rules.yml"
DASHBOARD = REPO / "etc" / "grafana" / "amzguard-dashboard.json"


class _CountingStore:
    """Just what the per-scrape collectors read, with one daily count (the gauge has series only then)."""

    def counts_by_source(self) -> dict[str, int]:
        return {}

    def restrictions(self) -> list[object]:
        return []

    def today(self) -> str:
        return "2027-01-15"

    def daily_counts(self, day: str | None = None) -> list[DailyCount]:
        return [DailyCount("de", "2027-01-15", 3)]


def exported() -> dict[str, set[tuple[str, str]]]:
    """Sample name -> the (label, value) pairs it has, from a fresh process's exposition."""
    names: dict[str, set[tuple[str, str]]] = {}
    metrics = Metrics()
    for backend in BACKENDS:  # a process exports one backend's store series; the files serve either
        metrics.store_backend(backend)
    limits = parse_limits({"de": 1100, "*": 700})  # the daily limit's series exist only when configured
    metrics.daily_limits(limits)
    metrics.watch_register(lambda: _CountingStore(), lambda: limits)  # type: ignore[arg-type, return-value]
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels.items())
    return names


def check_expression(expr: str, names: dict[str, set[tuple[str, str]]]) -> list[str]:
    used = re.findall(r"\b(amzguard_[a-z_]+)(\{[^}]*\})?", expr)
    assert used, expr
    problems = []
    for name, matchers in used:
        if name not in names:
            problems.append(f"unknown metric {name}")
            continue
        for label, value in re.findall(r'(\w+)=~?"([^"$]*)"', matchers):
            if label != "instance" and (label, value) not in names[name]:
                problems.append(f"{name}: no series with {label}={value!r}")
    return problems


def test_alert_rules_use_real_metrics() -> None:
    names = exported()
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    assert {"AmzguardInternalErrors", "AmzguardTempfailing", "AmzguardConfigReloadFailed",
            "AmzguardRefusalsRising", "AmzguardStoreErrors", "AmzguardStoreSlow", "AmzguardSenderNotApproved",
            "AmzguardMessagingRestricted", "AmzguardDailyLimitReached"} <= {rule["alert"] for rule in rules}  # fmt: skip
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        if "amzguard_" in rule["expr"]:
            assert check_expression(rule["expr"], names) == [], rule["alert"]


def test_dashboard_uses_real_metrics() -> None:
    names = exported()
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        assert check_expression(expr, names) == [], expr
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
