"""The PostgreSQL backend: one database that every MTA of a fleet shares (``store.url``).

psycopg 3 with a psycopg_pool connection pool (Debian 12 packages both: python3-psycopg 3.1.7,
python3-psycopg-pool 3.1). The milter asks the store from libmilter's connection threads, but only while
holding the review lock (adapter.py), so it needs few connections: ``store.pool_size`` (default 4) covers
the lookups, the metrics scrape and the purge at once.

Never the reason mail waits too long: a connection is awaited at most ``store.connect_timeout`` seconds
(libpq's ``connect_timeout`` and the pool's wait), a statement runs at most ``store.statement_timeout``
seconds (the server's ``statement_timeout``, and TCP keepalives plus ``tcp_user_timeout`` so a vanished
host is noticed from the client side too). After a pool timeout the store fails fast for ``FAIL_FAST``
seconds, so messages queued behind the review lock do not each wait a full timeout while the database is
down. A database restart or failover is survived without restarting the milter: a statement that fails on
a connection the server closed is retried once on a fresh one (``pool.check()`` drops the other dead ones),
and a multi-host URL gets ``target_session_attrs=read-write`` so libpq connects to the new primary.

The schema is created and migrated only by ``amzguard store init|migrate`` (the milter's database user needs
no DDL rights); the milter refuses a schema that is missing, older or newer than the one it knows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from .base import SCHEMA_VERSION, SOURCES, SchemaError, SqlStore, StoreError

log = logging.getLogger("amzguard")
T = TypeVar("T")

FAIL_FAST = 1.0
"""Seconds after a connection could not be had in which further operations fail at once."""
PURGE_LOCK = 0x616D7A67  # "amzg": the advisory lock key of the purge and of migrations

RESTRICTION_TABLE = """
CREATE TABLE restriction (
    marketplace  text PRIMARY KEY,
    until        bigint NOT NULL,
    source       text NOT NULL,
    added_at     bigint NOT NULL
);
"""
COUNT_TABLE = """
CREATE TABLE proactive_count (
    marketplace  text NOT NULL,
    day          text NOT NULL,
    n            bigint NOT NULL,
    PRIMARY KEY (marketplace, day)
);
"""
SCHEMA = RESTRICTION_TABLE + COUNT_TABLE + f"""
CREATE TABLE amzguard_schema (version integer NOT NULL);
CREATE TABLE optout (
    buyer     text PRIMARY KEY,
    order_id  text,
    source    text NOT NULL,
    added_at  bigint NOT NULL
);
CREATE TABLE optout_count (
    source   text PRIMARY KEY,
    entries  bigint NOT NULL
);
CREATE TABLE review_sent (
    order_id  text PRIMARY KEY,
    buyer     text NOT NULL,
    sent_at   bigint NOT NULL,
    claim     text
);
CREATE INDEX review_sent_at ON review_sent (sent_at);
CREATE TABLE buyer_message (
    message_id   text PRIMARY KEY,
    buyer        text NOT NULL,
    received_at  bigint NOT NULL
);
CREATE INDEX buyer_message_at ON buyer_message (received_at);
CREATE FUNCTION amzguard_optout_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        UPDATE optout_count SET entries = entries - 1 WHERE source = OLD.source;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO optout_count (source, entries) VALUES (NEW.source, 1)
            ON CONFLICT (source) DO UPDATE SET entries = optout_count.entries + 1;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER optout_counted AFTER INSERT OR DELETE OR UPDATE OF source ON optout
    FOR EACH ROW EXECUTE FUNCTION amzguard_optout_count();
INSERT INTO optout_count (source, entries) VALUES {", ".join(f"('{s}', 0)" for s in SOURCES)};
INSERT INTO amzguard_schema (version) VALUES ({SCHEMA_VERSION});
"""
MIGRATIONS: dict[int, str] = {
    3: RESTRICTION_TABLE + "UPDATE amzguard_schema SET version = 3;",
    4: COUNT_TABLE + "UPDATE amzguard_schema SET version = 4;",
}
"""Script to reach a version from the one before; ``SCHEMA`` makes the current one in an empty database
(the first PostgreSQL schema was version 2: SQLite's version 1 never existed here)."""


def _psycopg() -> tuple[Any, Any]:
    try:
        import psycopg
        import psycopg_pool
    except ImportError:
        raise StoreError("store.url names PostgreSQL, but psycopg 3 and psycopg_pool are not installed "
                         "(Debian: apt install python3-psycopg python3-psycopg-pool; pip: "
                         "amzguard[postgresql])") from None  # fmt: skip
    return psycopg, psycopg_pool


def conninfo(url: str, password: str | None = None, connect_timeout: int = 3) -> tuple[str, str]:
    """The libpq connection string amzguard uses, and how to show it (without its password).

    ``url`` is a libpq URI or keyword string; what it sets wins over amzguard's defaults, except the
    password of ``store.password_file``. libpq itself reads PGPASSFILE/~/.pgpass and PGSERVICEFILE."""
    psycopg, _ = _psycopg()
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        params = {k: str(v) for k, v in conninfo_to_dict(url).items()}
    except psycopg.ProgrammingError as exc:
        raise StoreError(f"store.url: not a libpq connection string: {exc}") from None
    if password is not None:
        params["password"] = password
    params.setdefault("connect_timeout", str(connect_timeout))
    params.setdefault("application_name", "amzguard")
    # A vanished host (failover, a cut link) must be noticed within seconds, not TCP's ~15 minutes.
    params.setdefault("keepalives_idle", str(connect_timeout))
    params.setdefault("keepalives_interval", "1")
    params.setdefault("keepalives_count", "3")
    params.setdefault("tcp_user_timeout", str(connect_timeout * 3000))
    if "," in params.get("host", "") + params.get("hostaddr", ""):
        # Several hosts: connect to the one that takes writes (the primary), whichever it is now.
        params.setdefault("target_session_attrs", "read-write")
    shown = {k: v for k, v in params.items() if k == "host" or k == "port" or k == "dbname" or k == "user"}
    location = "postgresql: " + " ".join(f"{k}={v}" for k, v in shown.items())
    return make_conninfo(**params), location


class PostgresStore(SqlStore):
    """A connection pool on the shared database, opened at the first use."""

    backend = "postgresql"

    def __init__(
        self, url: str, retention_days: int = 730, *, password: str | None = None, connect_timeout: int = 3,
        statement_timeout: int = 2, pool_size: int = 4, clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self._conninfo, location = conninfo(url, password, connect_timeout)
        super().__init__(location, retention_days, clock)
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        self.pool_size = pool_size
        self._pool: Any = None
        self._pool_lock = threading.Lock()
        self._schema_seen: int | None = SCHEMA_VERSION
        """The schema version the newest pooled connection found (read when a connection is made)."""
        self._down_until = 0.0
        self._down_reason = ""

    # -- connections -------------------------------------------------------------------------------

    def _get_pool(self) -> Any:
        with self._pool_lock:
            if self._pool is None:
                _, psycopg_pool = _psycopg()
                # open=False and open(wait=False): the same on psycopg_pool 3.1 (Debian 12) and 3.2+, where
                # opening in the constructor is deprecated; no wait, so a down database does not block here.
                self._pool = psycopg_pool.ConnectionPool(
                    self._conninfo, open=False, configure=self._configure, min_size=1, max_size=self.pool_size,
                    timeout=self.connect_timeout, name="amzguard", kwargs={"autocommit": True},
                    reconnect_timeout=float(365 * 86400),  # keep trying: the milter outlives any outage
                )  # fmt: skip
                self._pool.open(wait=False)
            return self._pool

    def _configure(self, conn: Any) -> None:
        conn.execute(f"SET statement_timeout = {int(self.statement_timeout * 1000)}")
        self._schema_seen = _read_version(conn)

    def _run(self, action: Callable[[Any], T], write: bool, statements: int = 0) -> T:
        psycopg, psycopg_pool = _psycopg()
        if time.monotonic() < self._down_until:
            raise StoreError(f"{self.location}: {self._down_reason}")
        pool = self._get_pool()
        for attempt in (1, 2):
            conn = None
            try:
                with pool.connection() as conn:
                    if self._schema_seen != SCHEMA_VERSION:
                        raise _schema_error(self.location, self._schema_seen)
                    if not write or statements == 1:
                        # One statement is atomic by itself: BEGIN and COMMIT would be two more round
                        # trips (~0.6 ms of a review request's record).
                        return action(conn)
                    with conn.transaction():
                        return action(conn)
            except psycopg_pool.PoolTimeout:
                self._down_reason = f"no connection to the database within {self.connect_timeout} s"
                self._down_until = time.monotonic() + FAIL_FAST
                raise StoreError(f"{self.location}: {self._down_reason}") from None
            except psycopg.OperationalError as exc:
                lost = conn is not None and (conn.closed or getattr(conn, "broken", False))
                if lost and attempt == 1:
                    # The server closed it (a restart, a failover): the others in the pool likely too.
                    log.warning("%s: database connection lost (%s); retrying on a new one", self.location,
                                _first_line(exc))  # fmt: skip
                    pool.check()
                    continue
                raise StoreError(f"{self.location}: {_first_line(exc)}") from None
            except psycopg.Error as exc:
                raise StoreError(f"{self.location}: {_first_line(exc)}") from None
        raise AssertionError("unreachable")

    def _read(self, action: Callable[[Any], T]) -> T:
        return self._run(action, write=False)

    def _write(self, action: Callable[[Any], T], statements: int = 0) -> T:
        return self._run(action, write=True, statements=statements)

    @contextmanager
    def _snapshot(self, conn: Any) -> Iterator[Any]:
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield conn

    def _sql(self, text: str) -> str:
        return text.replace("?", "%s")

    def shutdown(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def check(self) -> None:
        """Connect and read the schema version afresh: a missing, older or newer schema is an error."""
        found = self._read(_read_version)
        self._schema_seen = found
        if found != SCHEMA_VERSION:
            raise _schema_error(self.location, found)

    # -- schema ------------------------------------------------------------------------------------

    def _direct(self) -> Any:
        """One connection outside the pool, for ``store init|migrate|status`` (no schema check)."""
        psycopg, _ = _psycopg()
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise StoreError(f"{self.location}: {_first_line(exc)}") from None
        return conn

    def schema_version(self) -> int | None:
        psycopg, _ = _psycopg()
        with self._direct() as conn:
            try:
                return _read_version(conn)
            except psycopg.Error as exc:
                raise StoreError(f"{self.location}: {_first_line(exc)}") from None

    def migrate(self) -> tuple[int | None, int]:
        """Create the schema or bring it up to date, under an advisory lock (two hosts may run it at once)."""
        psycopg, _ = _psycopg()
        with self._direct() as conn:
            try:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (PURGE_LOCK,))
                    found = _read_version(conn)
                    if found is not None and found > SCHEMA_VERSION:
                        raise _schema_error(self.location, found)
                    if found is None:
                        conn.execute(SCHEMA)
                    for version in range((found or SCHEMA_VERSION) + 1, SCHEMA_VERSION + 1):
                        conn.execute(MIGRATIONS[version])
            except psycopg.Error as exc:
                raise StoreError(f"{self.location}: {_first_line(exc)}") from None
        self._schema_seen = SCHEMA_VERSION
        return found, SCHEMA_VERSION

    def purge(self) -> int:
        """Forget old records; on one host at a time: a host that finds the advisory lock taken skips (the
        other host is doing the same work)."""
        cutoff, days = self._cutoff(), self._count_cutoff()

        def delete(conn: Any) -> int:
            if not conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (PURGE_LOCK,)).fetchone()[0]:
                return 0
            first = conn.execute("DELETE FROM review_sent WHERE sent_at < %s", (cutoff,)).rowcount
            first += conn.execute("DELETE FROM proactive_count WHERE day < %s", (days,)).rowcount
            return int(first) + int(conn.execute("DELETE FROM buyer_message WHERE received_at < %s", (cutoff,)).rowcount)

        return self._write(delete)


def _read_version(conn: Any) -> int | None:
    if conn.execute("SELECT to_regclass('amzguard_schema')").fetchone()[0] is None:
        return None
    row = conn.execute("SELECT max(version) FROM amzguard_schema").fetchone()
    return int(row[0]) if row and row[0] is not None else None


def _schema_error(location: str, found: int | None) -> SchemaError:
    if found is None:
        text = f"{location}: no amzguard schema in this database; run amzguard store init"
    elif found > SCHEMA_VERSION:
        text = f"{location}: store schema {found} is newer than this amzguard knows ({SCHEMA_VERSION}); upgrade amzguard"
    else:
        text = f"{location}: store schema {found} is older than this amzguard's ({SCHEMA_VERSION}); run amzguard store migrate"
    return SchemaError(text, found)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
