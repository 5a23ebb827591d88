"""Suite-wide rules, and session fixtures shared by every test directory: the throwaway PostgreSQL
cluster (tests/support/postgres.py).

Under CI (``CI`` set, as ``.ci/run`` is started) a skipped test is a failure: every prerequisite a test
needs (root, Postfix, the private Sendmail, systemd-nspawn, PostgreSQL) is installed by ``make test``
itself, so a skip there means a check silently did not run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.postgres import PostgresCluster


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"skipped under CI (a skip there is a check that did not run): {reason}"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """One cluster for the whole run (initdb + start: ~2 s); each test takes a database of its own."""
    cluster = PostgresCluster().start()
    try:
        yield cluster
    finally:
        cluster.destroy()
