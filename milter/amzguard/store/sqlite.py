"""The SQLite backend: one file, shared by the milter and the ``amzguard`` commands on one host.

Why SQLite (stdlib): the CLI and the ``optout learn`` pipe write while the milter reads, and the milter must
see every change at once without a restart or a reload. In WAL mode readers never wait for a writer, and
every lookup is a fresh read transaction, so it always sees the latest committed state; a lookup is one
indexed query on an open connection (microseconds). A file deleted or replaced while in use (a backup
copied over it) is noticed by its inode and refused with a clear error, never read half-old.

The file is created, and its schema created or migrated, when it is first opened (``make run`` and a single
host need no ``store init``); a schema newer than this amzguard knows is refused (``SchemaError``).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from .base import SCHEMA_VERSION, SOURCES, SchemaError, SqlStore, StoreError

log = logging.getLogger("amzguard")
T = TypeVar("T")

_COUNTS = "".join(f"INSERT OR IGNORE INTO optout_count (source, entries) VALUES ('{s}', 0);" for s in SOURCES)
_COUNT_TRIGGERS = """
CREATE TABLE IF NOT EXISTS optout_count (
    source   TEXT PRIMARY KEY,
    entries  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS optout_counted AFTER INSERT ON optout BEGIN
    INSERT INTO optout_count (source, entries) VALUES (NEW.source, 0) ON CONFLICT (source) DO NOTHING;
    UPDATE optout_count SET entries = entries + 1 WHERE source = NEW.source;
END;
CREATE TRIGGER IF NOT EXISTS optout_uncounted AFTER DELETE ON optout BEGIN
    UPDATE optout_count SET entries = entries - 1 WHERE source = OLD.source;
END;
CREATE TRIGGER IF NOT EXISTS optout_recounted AFTER UPDATE OF source ON optout BEGIN
    UPDATE optout_count SET entries = entries - 1 WHERE source = OLD.source;
    INSERT INTO optout_count (source, entries) VALUES (NEW.source, 0) ON CONFLICT (source) DO NOTHING;
    UPDATE optout_count SET entries = entries + 1 WHERE source = NEW.source;
END;
"""
SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS optout (
    buyer     TEXT PRIMARY KEY,
    order_id  TEXT,
    source    TEXT NOT NULL,
    added_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS review_sent (
    order_id  TEXT PRIMARY KEY,
    buyer     TEXT NOT NULL,
    sent_at   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS review_sent_at ON review_sent (sent_at);
CREATE TABLE IF NOT EXISTS buyer_message (
    message_id   TEXT PRIMARY KEY,
    buyer        TEXT NOT NULL,
    received_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS buyer_message_at ON buyer_message (received_at);
"""
RESTRICTION_TABLE = """
CREATE TABLE IF NOT EXISTS restriction (
    marketplace  TEXT PRIMARY KEY,
    until        INTEGER NOT NULL,
    source       TEXT NOT NULL,
    added_at     INTEGER NOT NULL
) WITHOUT ROWID;
"""
COUNT_TABLE = """
CREATE TABLE IF NOT EXISTS proactive_count (
    marketplace  TEXT NOT NULL,
    day          TEXT NOT NULL,
    n            INTEGER NOT NULL,
    PRIMARY KEY (marketplace, day)
) WITHOUT ROWID;
"""
MIGRATIONS: dict[int, str] = {
    # to version: the script from the version before (run in one transaction with the user_version bump)
    1: SCHEMA_V1,
    2: "ALTER TABLE review_sent ADD COLUMN claim TEXT;" + _COUNT_TRIGGERS + _COUNTS
    + "UPDATE optout_count SET entries = (SELECT count(*) FROM optout WHERE optout.source = optout_count.source);"
    + "INSERT OR IGNORE INTO optout_count (source, entries) SELECT source, count(*) FROM optout GROUP BY source;",
    3: RESTRICTION_TABLE,
    4: COUNT_TABLE,
}

BUSY_TIMEOUT = 2.0
"""Seconds a writer waits for another writer before giving up (readers never wait in WAL mode)."""
FILE_MODE = 0o660
"""The register holds buyer addresses: no access for other users; the group may be the pipe user's."""


class SqliteStore(SqlStore):
    """Thread-safe handle on the store file; each thread (in the milter: each MTA connection) gets its own
    SQLite connection, closed when that thread state ends."""

    backend = "sqlite"

    def __init__(
        self, path: Path, retention_days: int = 730, busy_timeout: float = BUSY_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        super().__init__(str(path), retention_days, clock)
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._file: tuple[int, int] | None = None
        """(device, inode) of the file when it was first opened."""
        self._file_lock = threading.Lock()

    # -- connections -------------------------------------------------------------------------------

    def _identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"{self.path}: {exc.strerror}") from None
        return (st.st_dev, st.st_ino)

    def _create_file(self) -> None:
        """Create a new store file readable only by owner and group; when run as root (an admin's CLI call),
        give it to the directory's owner, so the milter's user can still write it. Logged, because an
        empty register where one was expected (a mistyped path) must not go unnoticed."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            return
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot create the store: {exc.strerror}") from None
        log.warning("created a new, empty store at %s", self.path)
        try:
            os.fchmod(fd, FILE_MODE)  # not narrowed by the umask: the group may be the pipe user's
            if os.geteuid() == 0:
                parent = os.stat(self.path.parent)
                os.fchown(fd, parent.st_uid, parent.st_gid)
        finally:
            os.close(fd)

    def _open(self) -> sqlite3.Connection:
        if self._identity() is None:
            self._create_file()
        try:
            # Per Python thread state, which pymilter keeps per MTA connection; libmilter may run that
            # connection's callbacks on different OS threads, one at a time, hence no same-thread check.
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the store: {exc}") from None
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise SchemaError(f"{self.path}: store schema {version} is newer than this amzguard knows "
                                  f"({SCHEMA_VERSION}); upgrade amzguard", version)  # fmt: skip
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            if version < SCHEMA_VERSION:
                self._upgrade(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"{self.path}: {exc}") from None
        except StoreError:
            conn.close()
            raise
        return conn

    def _upgrade(self, conn: sqlite3.Connection) -> tuple[int, int]:
        """Bring the schema to ``SCHEMA_VERSION`` in one transaction (re-read under the write lock: another
        process may have done it meanwhile)."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            found = int(conn.execute("PRAGMA user_version").fetchone()[0])
            for version in range(found + 1, SCHEMA_VERSION + 1):
                for statement in _statements(MIGRATIONS[version]):
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if found < SCHEMA_VERSION and found:
            log.warning("%s: store schema migrated from %d to %d", self.path, found, SCHEMA_VERSION)
        return found, SCHEMA_VERSION

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection, after checking that the file is still the one first opened.

        A store file deleted or replaced under open connections must not be used: the open connections
        keep reading the old file, and SQLite would lay the old file's write-ahead log over the new one.
        """
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if self._file is not None and self._identity() != self._file:
            self._drop_connection()
            raise StoreError(
                f"{self.path}: the store file was deleted or replaced while in use; stop amzguard, remove the "
                f"stale {self.path.name}-wal and -shm files, and start it again (to change the register, use "
                "amzguard optout import/remove, never a file copy)"
            )
        if conn is not None:
            return conn
        conn = self._open()
        with self._file_lock:
            if self._file is None:
                self._file = self._identity()
        self._local.conn = conn
        return conn

    def _read(self, action: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return action(self._conn())
        except sqlite3.Error as exc:
            self._drop_connection()
            raise StoreError(f"{self.path}: {exc}") from None

    def _write(self, action: Callable[[sqlite3.Connection], T], statements: int = 0) -> T:
        def in_transaction(conn: sqlite3.Connection) -> T:
            # BEGIN IMMEDIATE takes the write lock up front, so a writer waits for another at the start
            # (busy timeout) instead of failing half-way.
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = action(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return self._read(in_transaction)

    @contextmanager
    def _snapshot(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._local.conn = None

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends)."""
        self._drop_connection()

    # -- schema ------------------------------------------------------------------------------------

    def schema_version(self) -> int | None:
        """The file's schema version; None when the file does not exist (reading never creates it)."""
        if self._identity() is None:
            return None
        try:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            try:
                return int(conn.execute("PRAGMA user_version").fetchone()[0]) or None
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from None

    def migrate(self) -> tuple[int | None, int]:
        """Create the file or bring its schema up to date; (version found, version now)."""
        found = self.schema_version()
        self.check()  # opening creates and migrates; a newer schema raises SchemaError
        return found, SCHEMA_VERSION


def _statements(script: str) -> Iterator[str]:
    """The statements of a migration script, whole (a trigger body holds semicolons of its own)."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                yield pending.strip()
            pending = ""
