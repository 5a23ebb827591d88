"""The store protocol, its errors and records, and the SQL both backends share.

The store is amzguard's memory: Amazon's opt-out register as the shop knows it, the review requests sent per
order, and the buyer messages seen (for the reply channel's thread check). Two backends speak one protocol
(``Store``): SQLite (sqlite.py, one file, the embedded default) and PostgreSQL (postgres.py, one database that
several MTAs share). The milter, ``amzguard optout``, ``explain`` and ``amzguard store`` use only the protocol.

Tables (all keys are ``address.buyer_key`` spellings: case folded, marker and ``+sub-address`` removed):

- ``optout(buyer, order_id, source, added_at)``: the register; entries stay until removed.
- ``optout_count(source, entries)``: the register's size per source, kept by triggers, so the metrics read
  three rows instead of counting a million (a ``count(*)`` of 1M rows: ~60 ms on SQLite, ~40 ms on
  PostgreSQL, per scrape).
- ``review_sent(order_id, buyer, sent_at, claim)``: one row per order that got its review request through
  amzguard. ``order_id`` is the primary key: the database, not a lock in one process, decides which of two
  review requests for one order is first (``_CLAIM_REVIEW``), so the rule holds across every host sharing it.
- ``buyer_message(message_id, buyer, received_at)``: messages buyers sent the shop, for the ``thread`` check.
- ``restriction(marketplace, until, source, added_at)``: Amazon's messaging restrictions per marketplace
  (``*``: all; policy/restriction.py), in force until ``until``; a few rows, read with every proactive message.
- ``proactive_count(marketplace, day, n)``: proactive messages let through per marketplace and UTC day
  (``YYYY-MM-DD``) for the daily limit (policy/limits.py); a row per marketplace and day, kept
  ``COUNT_DAYS`` days.

The last two are forgotten after ``store.retention_days``. Failures raise ``StoreError`` with the store's
location and the reason; what a message gets then is the caller's decision (``store.on_error``).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from ..policy import BuyerMessage, MessageFacts, ProactiveSent, ReviewSent, StoreQuestions, StoreRecord
from ..policy.limits import utc_day
from ..policy.restriction import Restriction

T = TypeVar("T")

SCHEMA_VERSION = 4
"""1: the SQLite tables of amzguard 0.x; 2: ``optout_count`` and ``review_sent.claim`` (both backends);
3: ``restriction``; 4: ``proactive_count``."""

COUNT_DAYS = 31
"""Days of ``proactive_count`` kept (today included): only today's row limits anything, the month before
lets an admin compare the volume with Amazon's figure; a row per marketplace and day, no buyer data."""

SOURCES = ("cli", "import", "notice")
"""How register entries come in: ``amzguard optout add``, ``optout import``, or learned by ``optout learn``."""

PURGE_INTERVAL = 3600.0
MAX_QUERY_KEYS = 200
"""Keys per query; a longer lookup (a message to many buyers) is split, well below both engines' limits."""


class StoreError(Exception):
    """The store cannot be opened, read or written; the message names the store and the reason."""


@dataclass(frozen=True, slots=True)
class OverLimit:
    """A marketplace the message would take over its daily limit."""

    marketplace: str
    day: str
    count: int
    """Proactive messages already counted that day."""
    adding: int
    """This message's (one per buyer)."""
    limit: int


class DailyLimitReached(Exception):
    """``record`` found the daily limit of some marketplace reached: nothing was recorded (neither count
    nor review request), so the message can be tempfailed and retried later as if never seen."""

    def __init__(self, over: tuple[OverLimit, ...]) -> None:
        super().__init__(", ".join(f"{o.marketplace} {o.count}+{o.adding}>{o.limit}" for o in over))
        self.over = over


class SchemaError(StoreError):
    """The store's schema is not the one this amzguard uses: newer (refuse to start), older or missing (run
    ``amzguard store migrate`` / ``init``)."""

    def __init__(self, message: str, found: int | None) -> None:
        super().__init__(message)
        self.found = found

    @property
    def newer(self) -> bool:
        return self.found is not None and self.found > SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class OptOut:
    buyer: str
    """``buyer_key`` of the address."""
    order_id: str | None = None
    source: str = "cli"
    """One of ``SOURCES``: how the entry came in."""
    added_at: int = 0


@dataclass(frozen=True, slots=True)
class ReviewRow:
    order_id: str
    buyer: str
    sent_at: int


@dataclass(frozen=True, slots=True)
class MessageRow:
    message_id: str
    buyer: str
    received_at: int


@dataclass(frozen=True, slots=True)
class DailyCount:
    marketplace: str
    day: str
    """UTC day, ``YYYY-MM-DD``."""
    count: int


@dataclass(frozen=True, slots=True)
class Counts:
    """What a bulk change did: ``changed`` rows, ``unchanged`` ones (already so)."""

    changed: int
    unchanged: int


@dataclass(frozen=True, slots=True)
class Status:
    """What ``amzguard store status`` prints."""

    backend: str
    location: str
    """Path or connection string without its password."""
    schema: int | None
    """None: not initialised."""
    register: dict[str, int]
    review_requests: int
    buyer_messages: int
    proactive_today: dict[str, int] = field(default_factory=dict)
    """Today's (UTC) proactive messages per marketplace, for the daily limit."""
    today: str = ""
    """That UTC day, ``YYYY-MM-DD``."""
    restrictions: tuple[Restriction, ...] = ()
    """Messaging restrictions in force now (``amzguard restriction list`` shows the ended ones too)."""


class Store(Protocol):
    """What every backend offers. Thread-safe: the milter calls it from libmilter's connection threads."""

    backend: str
    """``sqlite`` or ``postgresql``: the ``backend`` label of the store metrics."""
    location: str
    review_lock: threading.Lock
    """Held by the milter from looking up an order to recording it: two review requests for one order in
    this process wait for each other instead of both claiming it (the database decides between hosts)."""

    def check(self) -> None: ...
    def close(self) -> None: ...
    def shutdown(self) -> None: ...
    def answer(self, questions: StoreQuestions, facts: MessageFacts) -> MessageFacts: ...
    def opted_out(self, buyers: Iterable[str]) -> frozenset[str]: ...
    def reviewed_orders(self, order_ids: Iterable[str]) -> frozenset[str]: ...
    def thread_senders(self, message_ids: Iterable[str]) -> frozenset[str]: ...
    def buyer_for_order(self, order_id: str) -> str | None: ...
    def record(self, records: Iterable[StoreRecord]) -> frozenset[str]: ...
    def purge_if_due(self) -> int: ...
    def purge(self) -> int: ...
    def add(self, entries: Iterable[OptOut]) -> Counts: ...
    def remove(self, buyers: Iterable[str]) -> Counts: ...
    def counts_by_source(self) -> dict[str, int]: ...
    def entries(self) -> list[OptOut]: ...
    def review_rows(self) -> list[ReviewRow]: ...
    def message_rows(self) -> list[MessageRow]: ...
    def put_rows(self, reviews: Iterable[ReviewRow], messages: Iterable[MessageRow]) -> Counts: ...
    def restricted(self) -> frozenset[str]: ...
    def restrictions(self) -> list[Restriction]: ...
    def restrict(self, restrictions: Iterable[Restriction]) -> Counts: ...
    def lift(self, marketplaces: Iterable[str] | None) -> int: ...
    def daily_counts(self, day: str | None = None) -> list[DailyCount]: ...
    def today(self) -> str: ...
    def put_counts(self, rows: Iterable[DailyCount]) -> Counts: ...
    def schema_version(self) -> int | None: ...
    def migrate(self) -> tuple[int | None, int]: ...
    def status(self) -> Status: ...


# -- SQL both engines run (written with ? placeholders; the PostgreSQL backend turns them into %s) ----------

_CLAIM_REVIEW = (
    # One atomic statement decides which review request for an order is first, on every host at once: the
    # primary key makes a second INSERT conflict, and the conflicting row is taken over only when it is past
    # retention (not purged yet) or carries this very claim (a retry of our own statement after a lost
    # connection, whose first attempt may have committed). RETURNING says whether this call got the order.
    "INSERT INTO review_sent (order_id, buyer, sent_at, claim) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (order_id) DO UPDATE SET buyer = excluded.buyer, sent_at = excluded.sent_at, "
    "claim = excluded.claim WHERE review_sent.sent_at < ? OR review_sent.claim = excluded.claim "
    "RETURNING order_id"
)
_REMEMBER_MESSAGE = (
    "INSERT INTO buyer_message (message_id, buyer, received_at) VALUES (?, ?, ?) "
    "ON CONFLICT (message_id) DO UPDATE SET buyer = excluded.buyer, received_at = excluded.received_at"
)
# Bulk inserts: many rows per statement (BULK_ROWS), one round trip each; RETURNING names the rows added.
# Row by row, 10,000 opt-outs took 5.2 s on PostgreSQL over its unix socket (a round trip each).
_ADD_OPTOUT = "INSERT INTO optout (buyer, order_id, source, added_at) VALUES {rows} ON CONFLICT (buyer) DO NOTHING RETURNING buyer"
_PUT_REVIEW = "INSERT INTO review_sent (order_id, buyer, sent_at) VALUES {rows} ON CONFLICT (order_id) DO NOTHING RETURNING order_id"
_PUT_MESSAGE = ("INSERT INTO buyer_message (message_id, buyer, received_at) VALUES {rows} "
                "ON CONFLICT (message_id) DO NOTHING RETURNING message_id")  # fmt: skip
BULK_ROWS = 200
_RESTRICT = (
    # A second restriction for a marketplace extends the first, never shortens it (two notices, or a
    # copy from a store that knew an older one).
    "INSERT INTO restriction (marketplace, until, source, added_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (marketplace) DO UPDATE SET until = excluded.until, source = excluded.source, "
    "added_at = excluded.added_at WHERE restriction.until < excluded.until RETURNING marketplace"
)
_COUNT_PROACTIVE = (
    # The daily limit's check and increment in one statement, so it is atomic on every host at once: the
    # row of (marketplace, day) is created or raised by this message's count only if the sum stays within
    # the limit (the caller checked that the count alone does); no row back means the limit is reached.
    # On PostgreSQL a concurrent transaction waits for the row lock and then re-checks against the
    # committed sum (ON CONFLICT DO UPDATE in READ COMMITTED sees the latest version), so a fleet sharing
    # the database never goes over; rolling the transaction back takes the increment back too.
    # Cost, only with a limit set: a review request's record took 0.22 ms on PostgreSQL over its unix socket
    # and 0.53 ms with the count (one statement more, and BEGIN/COMMIT: two statements need a transaction);
    # SQLite 0.039 -> 0.072 ms (400 records each, measured).
    "INSERT INTO proactive_count (marketplace, day, n) VALUES (?, ?, ?) "
    "ON CONFLICT (marketplace, day) DO UPDATE SET n = proactive_count.n + excluded.n "
    "WHERE proactive_count.n + excluded.n <= ? RETURNING n"
)
_PUT_COUNT = (
    # store copy: a count is never lowered (a move to another store must not restart today's count).
    "INSERT INTO proactive_count (marketplace, day, n) VALUES (?, ?, ?) "
    "ON CONFLICT (marketplace, day) DO UPDATE SET n = excluded.n WHERE proactive_count.n < excluded.n "
    "RETURNING marketplace"
)
UNCAPPED = 2**62
"""The limit of a count recorded whatever the count (``ProactiveSent.limit`` None)."""


class SqlStore:
    """The store's logic over a DB-API connection; a backend supplies connections and transactions.

    ``_read(action)`` runs ``action(conn)`` on a connection that sees the latest committed state;
    ``_write(action)`` runs it in one transaction. Both raise ``StoreError`` for every database failure.
    """

    backend = "sql"

    def __init__(self, location: str, retention_days: int, clock: Callable[[], float]) -> None:
        self.location = location
        self.retention = retention_days * 86400
        self.clock = clock
        self.review_lock = threading.Lock()
        self._purge_lock = threading.Lock()
        self._last_purge = 0.0

    # -- what a backend provides ---------------------------------------------------------------------

    def _read(self, action: Callable[[Any], T]) -> T:
        raise NotImplementedError

    def _write(self, action: Callable[[Any], T], statements: int = 0) -> T:
        """``statements``: how many ``action`` runs, if known; one needs no transaction of its own."""
        raise NotImplementedError

    def _snapshot(self, conn: Any) -> AbstractContextManager[Any]:
        """Several reads on one snapshot (a lookup split into chunks)."""
        raise NotImplementedError

    def _sql(self, text: str) -> str:
        return text

    def close(self) -> None:
        """Give back this thread's connection (the milter: at the end of an MTA connection)."""

    def shutdown(self) -> None:
        """Close every connection (the process ends, or a reload replaced the store)."""
        self.close()

    def check(self) -> None:
        """Open the store or raise ``StoreError``: for a clear line at start-up."""
        self._read(lambda conn: conn.execute("SELECT entries FROM optout_count").fetchall())

    # -- lookups (the milter) ----------------------------------------------------------------------

    def _select_in(self, sql: str, values: Iterable[str], cutoff: int | None = None) -> frozenset[str]:
        values = tuple(dict.fromkeys(values))
        if not values:
            return frozenset()

        def select(conn: Any) -> frozenset[str]:
            found: set[str] = set()
            for start in range(0, len(values), MAX_QUERY_KEYS):
                chunk = values[start : start + MAX_QUERY_KEYS]
                params: tuple[object, ...] = (*chunk, cutoff) if cutoff is not None else chunk
                rows = conn.execute(self._sql(sql.format(marks=",".join("?" * len(chunk)))), params).fetchall()
                found.update(row[0] for row in rows)
            return frozenset(found)

        if len(values) <= MAX_QUERY_KEYS:
            return self._read(select)

        def in_snapshot(conn: Any) -> frozenset[str]:
            with self._snapshot(conn):
                return select(conn)

        return self._read(in_snapshot)

    def _cutoff(self) -> int:
        return int(self.clock() - self.retention)

    def answer(self, questions: StoreQuestions, facts: MessageFacts) -> MessageFacts:
        """The facts completed with what the policy asked of the store (see ``Policy.store_questions``).

        One statement for all questions (a UNION ALL), so one round trip: on PostgreSQL each costs
        ~0.3 ms, and a review request asks two (opt-outs, the order). A message to more keys than one
        statement takes is asked question by question."""
        buyers = tuple(dict.fromkeys(questions.buyer_keys))
        orders = (questions.order_id,) if questions.order_id else ()
        ids = tuple(dict.fromkeys(questions.message_ids))
        if len(buyers) + len(orders) + len(ids) > MAX_QUERY_KEYS:
            restricted = self.restricted() if questions.restrictions else frozenset()
            return replace(facts, opted_out=self.opted_out(buyers), reviewed_orders=self.reviewed_orders(orders),
                           thread_senders=self.thread_senders(ids), restricted=restricted)  # fmt: skip
        parts, params = [], []
        cutoff = self._cutoff()
        for tag, keys, sql in (
            ("o", buyers, "SELECT 'o', buyer FROM optout WHERE buyer IN ({marks})"),
            ("r", orders, "SELECT 'r', order_id FROM review_sent WHERE order_id IN ({marks}) AND sent_at >= ?"),
            ("t", ids, "SELECT 't', buyer FROM buyer_message WHERE message_id IN ({marks}) AND received_at >= ?"),
        ):
            if keys:
                parts.append(sql.format(marks=",".join("?" * len(keys))))
                params += [*keys, *([cutoff] if tag != "o" else [])]
        if questions.restrictions:
            parts.append("SELECT 'x', marketplace FROM restriction WHERE until > ?")
            params.append(int(self.clock()))
        found: dict[str, set[str]] = {"o": set(), "r": set(), "t": set(), "x": set()}
        if parts:
            statement = self._sql(" UNION ALL ".join(parts))
            for tag, value in self._read(lambda conn: conn.execute(statement, params).fetchall()):
                found[tag].add(value)
        return replace(facts, opted_out=frozenset(found["o"]), reviewed_orders=frozenset(found["r"]),
                       thread_senders=frozenset(found["t"]), restricted=frozenset(found["x"]))  # fmt: skip

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
        sql = self._sql("SELECT buyer FROM review_sent WHERE order_id = ?")
        row = self._read(lambda conn: conn.execute(sql, (order_id,)).fetchone())
        return str(row[0]) if row else None

    # -- records (the milter) ----------------------------------------------------------------------

    def record(self, records: Iterable[StoreRecord]) -> frozenset[str]:
        """Remember what the policy asked to remember, in one transaction; returns the orders of
        ``ReviewSent`` records that another message claimed first (then nothing is recorded: the caller
        judges again with those orders as reviewed).

        The claim token makes a retry after a lost connection idempotent: if the first attempt committed,
        the retry finds its own claim and succeeds instead of refusing the message as its own duplicate.
        (A daily count has no such token: that retry counts the message twice, which only holds later
        messages back earlier, never lets one over the limit.)

        ``ProactiveSent`` records are the daily limit's: if any marketplace would go over its limit,
        ``DailyLimitReached`` is raised and nothing is recorded, the review requests neither (else the
        retried message would be refused as its own duplicate). Orders taken are answered first: the
        caller judges again and the new judgement counts fewer buyers.

        The purge of old records (``purge_if_due``) is the caller's next step, in a transaction of its own:
        a purge that fails must not make a committed record look failed."""
        claimed: set[str] = set()
        unique: list[StoreRecord] = []
        for record in records:  # a request to two buyers of one order: the first buyer is the one kept
            if isinstance(record, ReviewSent):
                if record.order_id in claimed:
                    continue
                claimed.add(record.order_id)
            unique.append(record)
        records = tuple(unique)
        if not records:
            return frozenset()
        now = int(self.clock())
        cutoff = self._cutoff()
        claim = secrets.token_hex(8)
        claim_sql, remember_sql = self._sql(_CLAIM_REVIEW), self._sql(_REMEMBER_MESSAGE)
        count_sql = self._sql(_COUNT_PROACTIVE)
        read_sql = self._sql("SELECT n FROM proactive_count WHERE marketplace = ? AND day = ?")
        day = utc_day(now)

        class Taken(Exception):
            pass

        def write(conn: Any) -> frozenset[str]:
            taken: set[str] = set()
            over: list[OverLimit] = []
            for record in records:
                if isinstance(record, ReviewSent):
                    got = conn.execute(claim_sql, (record.order_id, record.buyer, now, claim, cutoff)).fetchone()
                    if got is None:
                        taken.add(record.order_id)
                elif isinstance(record, BuyerMessage):
                    conn.execute(remember_sql, (record.message_id, record.buyer, now))
                elif isinstance(record, ProactiveSent):
                    limit = UNCAPPED if record.limit is None else record.limit
                    fits = record.count <= limit
                    if fits and conn.execute(count_sql, (record.marketplace, day, record.count, limit)).fetchone():
                        continue
                    row = conn.execute(read_sql, (record.marketplace, day)).fetchone()
                    over.append(OverLimit(record.marketplace, day, int(row[0]) if row else 0, record.count, limit))
            if taken:
                raise Taken(frozenset(taken))  # rolls the whole transaction back
            if over:
                raise DailyLimitReached(tuple(over))  # the same
            return frozenset()

        try:
            return self._write(write, statements=len(records))
        except Taken as lost:
            return lost.args[0]  # type: ignore[no-any-return]

    def purge_if_due(self) -> int:
        """Forget review requests and buyer messages older than the retention period, at most hourly."""
        with self._purge_lock:
            if self.clock() - self._last_purge < PURGE_INTERVAL:
                return 0
            self._last_purge = self.clock()
        return self.purge()

    def _count_cutoff(self) -> str:
        """The first UTC day whose daily counts are kept (``COUNT_DAYS``)."""
        return utc_day(self.clock() - (COUNT_DAYS - 1) * 86400)

    def purge(self) -> int:
        cutoff, days = self._cutoff(), self._count_cutoff()
        first, second, third = (
            self._sql("DELETE FROM review_sent WHERE sent_at < ?"),
            self._sql("DELETE FROM buyer_message WHERE received_at < ?"),
            self._sql("DELETE FROM proactive_count WHERE day < ?"),
        )

        def delete(conn: Any) -> int:
            gone = int(conn.execute(first, (cutoff,)).rowcount) + int(conn.execute(second, (cutoff,)).rowcount)
            return gone + int(conn.execute(third, (days,)).rowcount)

        return self._write(delete)

    # -- the register (the CLI) --------------------------------------------------------------------

    def _insert_many(self, conn: Any, template: str, rows: list[tuple[object, ...]]) -> set[Any]:
        """Insert ``rows`` in statements of ``BULK_ROWS``; the first column of the rows added."""
        added: set[Any] = set()
        for start in range(0, len(rows), BULK_ROWS):
            chunk = rows[start : start + BULK_ROWS]
            marks = ",".join("(" + ",".join("?" * len(chunk[0])) + ")" for _ in chunk)
            params = [value for row in chunk for value in row]
            added.update(row[0] for row in conn.execute(self._sql(template.format(rows=marks)), params).fetchall())
        return added

    def add(self, entries: Iterable[OptOut]) -> Counts:
        """Add entries; an address already registered stays as it is, except that a missing order id is
        filled in. Idempotent."""
        entries = tuple(entries)
        now = int(self.clock())
        fill_sql = self._sql("UPDATE optout SET order_id = ? WHERE buyer = ? AND order_id IS NULL")

        def write(conn: Any) -> Counts:
            rows = [(e.buyer, e.order_id, e.source, e.added_at or now) for e in entries]
            added = self._insert_many(conn, _ADD_OPTOUT, rows)
            first: dict[str, OptOut] = {}
            for entry in entries:
                first.setdefault(entry.buyer, entry)
            for entry in entries:
                if entry.order_id and (entry.buyer not in added or first[entry.buyer].order_id is None):
                    conn.execute(fill_sql, (entry.order_id, entry.buyer))
            return Counts(changed=len(added), unchanged=len(entries) - len(added))

        return self._write(write)

    def remove(self, buyers: Iterable[str]) -> Counts:
        buyers = tuple(buyers)
        sql = self._sql("DELETE FROM optout WHERE buyer = ?")

        def write(conn: Any) -> Counts:
            removed = sum(int(conn.execute(sql, (buyer,)).rowcount) for buyer in buyers)
            return Counts(changed=removed, unchanged=len(buyers) - removed)

        return self._write(write)

    def counts_by_source(self) -> dict[str, int]:
        """Register entries per ``source``: three rows of ``optout_count``, read when Prometheus scrapes."""
        rows = self._read(lambda conn: conn.execute("SELECT source, entries FROM optout_count").fetchall())
        return {str(source): int(count) for source, count in rows}

    def entries(self) -> list[OptOut]:
        sql = "SELECT buyer, order_id, source, added_at FROM optout ORDER BY buyer"
        return [OptOut(*row) for row in self._read(lambda conn: conn.execute(sql).fetchall())]

    def review_rows(self) -> list[ReviewRow]:
        sql = "SELECT order_id, buyer, sent_at FROM review_sent ORDER BY order_id"
        return [ReviewRow(*row) for row in self._read(lambda conn: conn.execute(sql).fetchall())]

    def message_rows(self) -> list[MessageRow]:
        sql = "SELECT message_id, buyer, received_at FROM buyer_message ORDER BY message_id"
        return [MessageRow(*row) for row in self._read(lambda conn: conn.execute(sql).fetchall())]

    def put_rows(self, reviews: Iterable[ReviewRow], messages: Iterable[MessageRow]) -> Counts:
        """Copy review requests and buyer messages in, with their times (``store copy``); a row already
        present stays as it is, so a second copy changes nothing."""
        reviews, messages = tuple(reviews), tuple(messages)

        def write(conn: Any) -> Counts:
            changed = len(self._insert_many(conn, _PUT_REVIEW, [(r.order_id, r.buyer, r.sent_at) for r in reviews]))
            changed += len(self._insert_many(conn, _PUT_MESSAGE, [(m.message_id, m.buyer, m.received_at)
                                                                  for m in messages]))  # fmt: skip
            return Counts(changed=changed, unchanged=len(reviews) + len(messages) - changed)

        return self._write(write)

    # -- messaging restrictions (the CLI, optout learn, the metrics) -------------------------------------

    def restricted(self) -> frozenset[str]:
        """The marketplaces under a restriction now."""
        sql = self._sql("SELECT marketplace FROM restriction WHERE until > ?")
        now = int(self.clock())
        return frozenset(row[0] for row in self._read(lambda conn: conn.execute(sql, (now,)).fetchall()))

    def restrictions(self) -> list[Restriction]:
        """Every restriction row, ended ones too (``restriction list`` shows them; ``lift`` removes them)."""
        sql = "SELECT marketplace, until, source, added_at FROM restriction ORDER BY marketplace"
        return [Restriction(*row) for row in self._read(lambda conn: conn.execute(sql).fetchall())]

    def restrict(self, restrictions: Iterable[Restriction]) -> Counts:
        """Record restrictions; one that ends later than the one recorded replaces it (``changed``)."""
        rows = tuple(restrictions)
        now = int(self.clock())
        sql = self._sql(_RESTRICT)

        def write(conn: Any) -> Counts:
            changed = sum(conn.execute(sql, (r.marketplace, r.until, r.source, r.added_at or now)).fetchone()
                          is not None for r in rows)  # fmt: skip
            return Counts(changed=changed, unchanged=len(rows) - changed)

        return self._write(write)

    def lift(self, marketplaces: Iterable[str] | None) -> int:
        """Remove the restrictions of ``marketplaces`` (None: all); how many rows went."""
        names = None if marketplaces is None else tuple(marketplaces)

        def write(conn: Any) -> int:
            if names is None:
                return int(conn.execute("DELETE FROM restriction").rowcount)
            sql = self._sql("DELETE FROM restriction WHERE marketplace = ?")
            return sum(int(conn.execute(sql, (name,)).rowcount) for name in names)

        return self._write(write)

    # -- the daily limit's counts (the metrics, store status, store copy) ---------------------------

    def daily_counts(self, day: str | None = None) -> list[DailyCount]:
        """The counts of ``day`` (``YYYY-MM-DD``; None: every day kept), by day and marketplace."""
        sql = "SELECT marketplace, day, n FROM proactive_count"
        params: tuple[str, ...] = ()
        if day is not None:
            sql, params = self._sql(sql + " WHERE day = ?"), (day,)
        rows = self._read(lambda conn: conn.execute(sql + " ORDER BY day, marketplace", params).fetchall())
        return [DailyCount(str(m), str(d), int(n)) for m, d, n in rows]

    def today(self) -> str:
        """The store's UTC day now (its clock: the milter's, a test's)."""
        return utc_day(self.clock())

    def put_counts(self, rows: Iterable[DailyCount]) -> Counts:
        """Copy daily counts in (``store copy``); a count already higher stays (``unchanged``)."""
        rows = tuple(rows)
        sql = self._sql(_PUT_COUNT)

        def write(conn: Any) -> Counts:
            changed = sum(conn.execute(sql, (r.marketplace, r.day, r.count)).fetchone() is not None for r in rows)
            return Counts(changed=changed, unchanged=len(rows) - changed)

        return self._write(write)

    def status(self) -> Status:
        version = self.schema_version()
        if version is None or version < SCHEMA_VERSION:
            return Status(self.backend, self.location, version, {}, 0, 0)

        def read(conn: Any) -> tuple[int, int]:
            reviews = conn.execute("SELECT count(*) FROM review_sent").fetchone()[0]
            return int(reviews), int(conn.execute("SELECT count(*) FROM buyer_message").fetchone()[0])

        reviews, messages = self._read(read)
        day = self.today()
        today = {row.marketplace: row.count for row in self.daily_counts(day)}
        now = int(self.clock())
        in_force = tuple(r for r in self.restrictions() if r.in_force(now))
        return Status(self.backend, self.location, version, self.counts_by_source(), reviews, messages, today, day,
                      in_force)  # fmt: skip

    def schema_version(self) -> int | None:
        raise NotImplementedError

    def migrate(self) -> tuple[int | None, int]:
        raise NotImplementedError

