"""Smoke runs of the benchmarks, so bench/ does not rot. No timing is asserted: only that each bench
runs to the end, reports every row, and every figure is a positive number."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.pipeline import SETUPS

REPO = Path(__file__).resolve().parents[2]
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")

pytestmark = pytest.mark.bench


def _run(args: list[str], timeout: float) -> str:
    """Run a bench command; past ``timeout`` interrupt it (SIGINT) so that its own clean-up stops the
    Postfix instances, sinks and milters it started, instead of leaving them orphaned."""
    with subprocess.Popen(
        [sys.executable, "-m", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    ) as proc:  # fmt: skip
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            try:
                stdout, stderr = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                stdout, stderr = proc.communicate()
            raise AssertionError(f"{args} did not finish in {timeout} s:\n{stdout}\n{stderr}") from None
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{stdout}\n{stderr}"
    return stdout


def _tables(report: str) -> dict[str, list[tuple[str, list[float]]]]:
    """Each ``sessions=...`` table of the pipeline report: its rows as (setup label, numbers)."""
    labels = sorted((setup.label for setup in SETUPS), key=len, reverse=True)
    tables: dict[str, list[tuple[str, list[float]]]] = {}
    rows: list[tuple[str, list[float]]] | None = None
    for line in report.splitlines():
        if line.startswith("sessions="):
            rows = tables.setdefault(line, [])
        elif not line.strip():
            rows = None
        elif rows is not None:
            label = next((label for label in labels if line.strip().startswith(label + " ")), None)
            if label is not None:
                rest = line.strip()[len(label) :]
                rows.append((label, [float(x) for x in NUMBER.findall(rest.replace("-", " "))]))
    return tables


def _row_figures(report: str, label: str) -> list[list[float]]:
    """The numbers of every report line that starts with ``label`` and a space (ranges like 12-34 count as two)."""
    rows = []
    for line in report.splitlines():
        if line.strip().startswith(label + " "):
            rest = line.strip()[len(label) :]
            rows.append([float(x) for x in NUMBER.findall(rest.replace("-", " "))])
    return rows


def test_pipeline_smoke_reports_every_setup_with_positive_figures(tmp_path: Path) -> None:
    out = tmp_path / "pipeline.json"
    report = _run(["bench.pipeline", "--smoke", "--quiet", "--json", str(out)], timeout=300)

    data = json.loads(out.read_text())
    assert data["machine"]["cores"] >= 1
    assert sorted(data["setups"]) == sorted(setup.name for setup in SETUPS)
    for name, per_sessions in data["setups"].items():
        assert sorted(per_sessions) == ["10", "50"], name
        for sessions, figures in per_sessions.items():
            assert figures["accepted_per_s"] > 0 and figures["delivered_per_s"] > 0, (name, sessions)
            assert len(figures["samples"]) == 1

    tables = _tables(report)
    rates = [f"sessions={n}  {what} messages/s" for n in (10, 50) for what in ("accepted", "delivered")]
    cpu = [f"sessions={n}  milter CPU ms per message (user + system, all threads)" for n in (10, 50)]
    assert sorted(tables) == sorted(rates + cpu)
    for title in rates:
        assert [row[0] for row in tables[title]] == [setup.label for setup in SETUPS], title
        for label, figures in tables[title]:
            # median, min, max, then the ratios to no milter, both no-op pymilters and the C reference
            assert len(figures) == 7 and all(value > 0 for value in figures), (title, label, figures)
    for title in cpu:
        assert [row[0] for row in tables[title]] == [setup.label for setup in SETUPS if setup.milter], title
        for label, figures in tables[title]:
            # median, min, max, ratios to the no-op pymilter on the same socket and to the C reference
            assert len(figures) == 5 and all(value > 0 for value in figures), (title, label, figures)
    after = report.split("targets (medians of this run; ok or MISSED):")[1].splitlines()
    targets = [line for line in after if line.startswith("  s=")]
    assert len(targets) == 16 and all(line.endswith((" ok", " MISSED")) for line in targets), targets
    assert "cores" in report and "mix" in report
    # Review requests one at a time, SQLite and PostgreSQL, and the difference against the +2 ms target.
    assert sorted(data["review_ms"]) == ["amzguard-pg", "amzguard-unix"]
    assert all(len(values) >= 20 and min(values) > 0 for values in data["review_ms"].values())
    for label in ("amzguard, unix:", "amzguard, PostgreSQL"):
        [count, p50, p99] = _row_figures(report.split("review requests one at a time")[1], label)[0]
        assert count >= 20 and 0 < p50 <= p99, (label, count, p50, p99)
    assert re.search(r"review request p50: PostgreSQL - SQLite [+-]\d+\.\d+ ms \(ratio \d+\.\d+\), target", report)


def test_policy_and_register_smoke_report_every_row_with_positive_figures() -> None:
    report = _run(["bench", "--smoke", "--skip-pipeline"], timeout=300)

    rows = ("classify_recipient (mix)", "decision per message (mix)", "only allowed", "only buyer", "only review",
            "review, From: read", "review, approved senders")
    for label in rows:
        [figures] = _row_figures(report, label)
        assert len(figures) == 5 and all(value > 0 for value in figures), (label, figures)
    assert re.search(r"approved senders on a review request: p50 \d+\.\d\d x without", report)
    assert "opt-out register lookups: store bench.register_bench:SqliteRegister" in report  # the real store
    assert "opt-out register lookups: store bench.register_bench:PostgresRegister" in report  # both backends
    assert "register lookups, PostgreSQL (unix socket) beside SQLite, same run:" in report
    for size in ("1000", "10000"):
        [sqlite, postgres, both] = _row_figures(report, size)
        # build seconds may round to 0.00 for small sizes; lookups/s, p50, p99 must be positive
        for figures in (sqlite, postgres):
            assert len(figures) == 6 and all(value > 0 for value in figures[1:4]), (size, figures)
        # p50 and p99 of each, then the p50 ratio
        assert len(both) == 5 and all(value > 0 for value in both), (size, both)


def test_review_mix_smoke_with_content_rules_on_and_off(tmp_path: Path) -> None:
    out = tmp_path / "review.json"
    setups = "amzguard-unix,amzguard-nocontent"
    report = _run(["bench.pipeline", "--smoke", "--quiet", "--mix", "review", "--setups", setups, "--json", str(out)],
                  timeout=120)  # fmt: skip
    data = json.loads(out.read_text())
    assert data["mix_name"] == "review" and [s["name"] for s in data["mix"]] == ["order", "buyer-relay", "review"]
    assert sorted(data["setups"]) == sorted(setups.split(","))
    for name, per_sessions in data["setups"].items():
        for sessions, figures in per_sessions.items():
            assert figures["delivered_per_s"] > 0 and figures["milter_cpu_ms"] > 0, (name, sessions)
    assert "mix review" in report


def test_content_bench_smoke_reports_every_template() -> None:
    report = _run(["bench.content_bench", "--smoke"], timeout=120)
    for label in ("bench review-html (1.4 KB)", "en_marketing.eml", "5 MB PDF attached"):
        [figures] = _row_figures(report, label)
        # size KB, rules on us, rules off us, findings
        assert len(figures) >= 4 and all(value > 0 for value in figures[:3]), (label, figures)
