"""The store: Amazon's opt-out register as the shop knows it, and what amzguard must remember about review
requests and buyer messages. One SQLite file, shared by the milter and the ``amzguard optout`` commands.

Why SQLite (stdlib): the CLI and the ``optout learn`` pipe write while the milter reads, and the milter must
see every change at once without a restart or a reload. In WAL mode readers never wait for a writer, and
every lookup is a fresh read transaction, so it always sees the latest committed state; a lookup is one
indexed query on an open connection (microseconds). A file deleted or replaced while in use (a backup
copied over it) is noticed by its inode and refused with a clear error, never read half-old.

Tables (all keys are ``address.buyer_key`` spellings: case folded, marker and ``+sub-address`` removed):

- ``optout(buyer, order_id, source, added_at)``: the register; entries stay until removed.
- ``review_sent(order_id, buyer, sent_at)``: one row per order that got its review request through
  amzguard: refuses a second request and resolves Amazon's opt-out notices, which may name only the order.
- ``buyer_message(message_id, buyer, received_at)``: messages buyers sent the shop through this MTA, for the
  reply channel's ``thread`` check.

The last two are forgotten after ``store.retention_days``. Failures raise ``StoreError`` with the file and
the reason; what a message gets then is the caller's decision (``store.on_error``).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from .policy import BuyerMessage, MessageFacts, ReviewSent, StoreQuestions, StoreRecord

log = logging.getLogger("amzguard")
T = TypeVar("T")

SCHEMA_VERSION = 1
SCHEMA = """
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

BUSY_TIMEOUT = 2.0
"""Seconds a writer waits for another writer before giving up (readers never wait in WAL mode)."""
PURGE_INTERVAL = 3600.0
FILE_MODE = 0o660
"""The register holds buyer addresses: no access for other users; the group may be the pipe user's."""
MAX_QUERY_KEYS = 200
"""Keys per query; a longer lookup (a message to many buyers) is split, well below SQLite's limit."""


SOURCES = ("cli", "import", "notice")
"""How register entries come in: ``amzguard optout add``, ``optout import``, or learned by ``optout learn``."""


class StoreError(Exception):
    """The store cannot be opened, read or written; the message names the file and the reason."""


@dataclass(frozen=True, slots=True)
class OptOut:
    buyer: str
    """``buyer_key`` of the address."""
    order_id: str | None = None
    source: str = "cli"
    """One of ``SOURCES``: how the entry came in."""
    added_at: int = 0


@dataclass(frozen=True, slots=True)
class Counts:
    """What a bulk change did: ``changed`` rows, ``unchanged`` ones (already so)."""

    changed: int
    unchanged: int


class OptOutStore:
    """Thread-safe handle on the store file; each thread (in the milter: each MTA connection) gets its own
    SQLite connection, closed when that thread state ends."""

    def __init__(
        self, path: Path, retention_days: int = 730, busy_timeout: float = BUSY_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.path = Path(path)
        self.retention = retention_days * 86400
        self.busy_timeout = busy_timeout
        self.clock = clock
        self.review_lock = threading.Lock()
        """Held by the milter from looking up an order to recording it, so two review requests for one
        order in flight at once cannot both pass."""
        self._local = threading.local()
        self._file: tuple[int, int] | None = None
        """(device, inode) of the file when it was first opened."""
        self._file_lock = threading.Lock()
        self._purge_lock = threading.Lock()
        self._last_purge = 0.0

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
                raise StoreError(f"{self.path}: store schema {version} is newer than this amzguard ({SCHEMA_VERSION})")
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            if version < SCHEMA_VERSION:
                conn.executescript(f"BEGIN IMMEDIATE;{SCHEMA}PRAGMA user_version={SCHEMA_VERSION};COMMIT;")
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"{self.path}: {exc}") from None
        except StoreError:
            conn.close()
            raise
        return conn

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

    def _run(self, action: Callable[[sqlite3.Connection], object]) -> object:
        try:
            return action(self._conn())
        except sqlite3.Error as exc:
            self._drop_connection()
            raise StoreError(f"{self.path}: {exc}") from None

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

    def check(self) -> None:
        """Open the store (creating it if missing) or raise ``StoreError``: for a clear line at start-up."""
        self._run(lambda conn: conn.execute("SELECT count(*) FROM optout").fetchone())

    # -- lookups (the milter) ----------------------------------------------------------------------

    def _select_in(self, sql: str, values: Iterable[str], cutoff: int | None = None) -> frozenset[str]:
        values = tuple(dict.fromkeys(values))
        if not values:
            return frozenset()

        def select(conn: sqlite3.Connection) -> frozenset[str]:
            found: set[str] = set()
            for start in range(0, len(values), MAX_QUERY_KEYS):
                chunk = values[start : start + MAX_QUERY_KEYS]
                params: tuple[object, ...] = (*chunk, cutoff) if cutoff is not None else chunk
                rows = conn.execute(sql.format(marks=",".join("?" * len(chunk))), params).fetchall()
                found.update(row[0] for row in rows)
            return frozenset(found)

        if len(values) <= MAX_QUERY_KEYS:
            return self._run(select)  # type: ignore[return-value]
        return self._run(lambda conn: _in_read_transaction(conn, select))  # type: ignore[return-value]

    def _cutoff(self) -> int:
        return int(self.clock() - self.retention)

    def answer(self, questions: StoreQuestions, facts: MessageFacts) -> MessageFacts:
        """The facts completed with what the policy asked of the store (see ``Policy.store_questions``)."""
        return replace(
            facts,
            opted_out=self.opted_out(questions.buyer_keys),
            reviewed_orders=self.reviewed_orders([questions.order_id] if questions.order_id else []),
            thread_senders=self.thread_senders(questions.message_ids),
        )

    def opted_out(self, buyers: Iterable[str]) -> frozenset[str]:
        """Those of ``buyers`` (register keys) that are in the register."""
        return self._select_in("SELECT buyer FROM optout WHERE buyer IN ({marks})", buyers)

    def reviewed_orders(self, order_ids: Iterable[str]) -> frozenset[str]:
        """Those of ``order_ids`` that already had a review request within the retention period."""
        return self._select_in(
            "SELECT order_id FROM review_sent WHERE order_id IN ({marks}) AND sent_at >= ?", order_ids, self._cutoff()
        )

    def thread_senders(self, message_ids: Iterable[str]) -> frozenset[str]:
        """The buyers who sent any of ``message_ids`` to the shop within the retention period."""
        return self._select_in(
            "SELECT buyer FROM buyer_message WHERE message_id IN ({marks}) AND received_at >= ?",
            message_ids, self._cutoff(),
        )  # fmt: skip

    def buyer_for_order(self, order_id: str) -> str | None:
        """The buyer that got the review request for ``order_id`` (to resolve an opt-out notice)."""
        row = self._run(
            lambda conn: conn.execute("SELECT buyer FROM review_sent WHERE order_id = ?", (order_id,)).fetchone()
        )
        return row[0] if row else None  # type: ignore[index]

    # -- records (the milter) ----------------------------------------------------------------------

    def record(self, records: Iterable[StoreRecord]) -> None:
        """Remember what the policy asked to remember, in one transaction.

        The purge of old records (``purge_if_due``) is the caller's next step, in a transaction of its
        own: a purge that fails must not make a committed record look failed (a retried review request
        would then be refused as a duplicate of itself)."""
        records = tuple(records)
        if not records:
            return
        now = int(self.clock())

        def write(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                for record in records:
                    if isinstance(record, ReviewSent):
                        conn.execute(
                            "INSERT OR IGNORE INTO review_sent (order_id, buyer, sent_at) VALUES (?, ?, ?)",
                            (record.order_id, record.buyer, now),
                        )
                    elif isinstance(record, BuyerMessage):
                        conn.execute(
                            "INSERT OR REPLACE INTO buyer_message (message_id, buyer, received_at) VALUES (?, ?, ?)",
                            (record.message_id, record.buyer, now),
                        )

        self._run(write)

    def purge_if_due(self) -> int:
        """Forget review requests and buyer messages older than the retention period, at most hourly."""
        with self._purge_lock:
            if self.clock() - self._last_purge < PURGE_INTERVAL:
                return 0
            self._last_purge = self.clock()
        return self.purge()

    def purge(self) -> int:
        cutoff = self._cutoff()

        def delete(conn: sqlite3.Connection) -> int:
            with _transaction(conn):
                first = conn.execute("DELETE FROM review_sent WHERE sent_at < ?", (cutoff,)).rowcount
                return first + conn.execute("DELETE FROM buyer_message WHERE received_at < ?", (cutoff,)).rowcount

        return int(self._run(delete))  # type: ignore[call-overload]

    # -- the register (the CLI) --------------------------------------------------------------------

    def add(self, entries: Iterable[OptOut]) -> Counts:
        """Add entries; an address already registered stays as it is, except that a missing order id is
        filled in. Idempotent."""
        entries = tuple(entries)
        now = int(self.clock())

        def write(conn: sqlite3.Connection) -> Counts:
            added = 0
            with _transaction(conn):
                for entry in entries:
                    cursor = conn.execute(
                        "INSERT OR IGNORE INTO optout (buyer, order_id, source, added_at) VALUES (?, ?, ?, ?)",
                        (entry.buyer, entry.order_id, entry.source, entry.added_at or now),
                    )
                    if cursor.rowcount:
                        added += 1
                    elif entry.order_id:
                        conn.execute(
                            "UPDATE optout SET order_id = ? WHERE buyer = ? AND order_id IS NULL",
                            (entry.order_id, entry.buyer),
                        )
            return Counts(changed=added, unchanged=len(entries) - added)

        return self._run(write)  # type: ignore[return-value]

    def remove(self, buyers: Iterable[str]) -> Counts:
        buyers = tuple(buyers)

        def write(conn: sqlite3.Connection) -> Counts:
            removed = 0
            with _transaction(conn):
                for buyer in buyers:
                    removed += conn.execute("DELETE FROM optout WHERE buyer = ?", (buyer,)).rowcount
            return Counts(changed=removed, unchanged=len(buyers) - removed)

        return self._run(write)  # type: ignore[return-value]

    def counts_by_source(self) -> dict[str, int]:
        """Register entries per ``source`` (one scan; for the metrics, read when Prometheus scrapes)."""
        rows = self._run(lambda conn: conn.execute("SELECT source, count(*) FROM optout GROUP BY source").fetchall())
        return {str(source): int(count) for source, count in rows}  # type: ignore[union-attr]

    def entries(self) -> list[OptOut]:
        rows = self._run(
            lambda conn: conn.execute("SELECT buyer, order_id, source, added_at FROM optout ORDER BY buyer").fetchall()
        )
        return [OptOut(*row) for row in rows]  # type: ignore[union-attr]


def _in_read_transaction(conn: sqlite3.Connection, action: Callable[[sqlite3.Connection], T]) -> T:
    """Run several queries on one snapshot of the store (a lookup split into chunks)."""
    conn.execute("BEGIN")
    try:
        return action(conn)
    finally:
        conn.execute("COMMIT")


class _transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (rollback on error): takes the write lock up front, so a writer
    waits for another at the start (busy timeout) instead of failing half-way."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")
