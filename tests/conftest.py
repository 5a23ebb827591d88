"""Session fixtures shared by every test directory: the throwaway PostgreSQL cluster (tests/support/postgres.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.postgres import PostgresCluster


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """One cluster for the whole run (initdb + start: ~2 s); each test takes a database of its own."""
    cluster = PostgresCluster().start()
    try:
        yield cluster
    finally:
        cluster.destroy()
