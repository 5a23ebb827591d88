"""One conformance suite, run against both backends: SQLite (a file) and PostgreSQL (a database of the
session's throwaway cluster). What the milter, ``optout`` and ``store copy`` rely on must hold on both:
register semantics, review claims decided by the store, retention, counts, copies, schema refusal, and
several processes deciding one order at once. Buyer addresses are made up."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amzguard.address import parse_address
from amzguard.policy import BuyerMessage, MessageFacts, ReviewSent, StoreQuestions, SubmissionPath
from amzguard.store import SCHEMA_VERSION, MessageRow, OptOut, ReviewRow, SchemaError, Store, open_location
from amzguard.policy.restriction import ALL, Restriction
from amzguard.store import postgres
from amzguard.store import sqlite as sqlite_store
from amzguard.store import COUNT_DAYS, DailyCount, DailyLimitReached, OverLimit
from amzguard.policy import ProactiveSent, utc_day
from amzguard.store.postgres import PostgresStore
from amzguard.store.sqlite import SqliteStore
from tests.support.postgres import PASSWORD, PostgresCluster

BUYER = "q7x2k9m4p1z8w3v5@marketplace.amazon.de"
CONFIG = Path(__file__).resolve().parents[2] / "etc" / "amzguard.yml"
ORDER = "302-1234567-7654321"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


Factory = Callable[..., Store]


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a fresh, initialised store lives: a file path or a libpq keyword string."""
    if request.param == "sqlite":
        return str(tmp_path / "s.sqlite")
    cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
    url = cluster.socket_url(cluster.new_database())
    PostgresStore(url).migrate()
    return url


@pytest.fixture
def make(location: str) -> Factory:
    opened: list[Store] = []

    def factory(retention_days: int = 730, clock: Callable[[], float] | None = None) -> Store:
        kwargs = {"clock": clock} if clock else {}
        store: Store = (PostgresStore if "=" in location else SqliteStore)(location, retention_days, **kwargs)
        opened.append(store)
        return store

    yield factory  # type: ignore[misc]
    for store in opened:
        store.shutdown()


def test_register_is_idempotent_and_counted(make: Factory) -> None:
    store = make()
    assert store.add([OptOut(BUYER), OptOut("a@marketplace.amazon.fr")]).changed == 2
    again = store.add([OptOut(BUYER, order_id=ORDER, source="notice")])
    assert (again.changed, again.unchanged) == (0, 1)
    [first, second] = store.entries()
    assert (first.buyer, second.buyer) == ("a@marketplace.amazon.fr", BUYER)
    assert second.order_id == ORDER and second.source == "cli"  # order filled in, the entry otherwise kept
    assert store.opted_out([BUYER, "other@marketplace.amazon.de"]) == {BUYER}
    removed = store.remove([BUYER, BUYER, "never@marketplace.amazon.de"])
    assert (removed.changed, removed.unchanged) == (1, 2)
    assert store.opted_out([BUYER]) == frozenset()


def test_review_records_and_retention(make: Factory) -> None:
    clock = Clock()
    store = make(retention_days=10, clock=clock)
    assert store.record([ReviewSent(ORDER, BUYER), BuyerMessage("m1@mail.example", BUYER)]) == frozenset()
    # The second claim on the order loses, and nothing of its transaction is kept.
    assert store.record([ReviewSent(ORDER, "someone-else@marketplace.amazon.de"),
                         BuyerMessage("m9@mail.example", BUYER)]) == {ORDER}  # fmt: skip
    assert store.thread_senders(["m9@mail.example"]) == frozenset()
    assert store.reviewed_orders([ORDER, "028-0000000-0000000"]) == {ORDER}
    assert store.buyer_for_order(ORDER) == BUYER
    assert store.thread_senders(["m1@mail.example", "m2@mail.example"]) == {BUYER}
    clock.now += 11 * 86400
    assert store.reviewed_orders([ORDER]) == frozenset()  # expired, even before it is purged
    assert store.thread_senders(["m1@mail.example"]) == frozenset()
    # An expired claim not purged yet does not block a new review request for the order.
    assert store.record([ReviewSent(ORDER, "later@marketplace.amazon.de")]) == frozenset()
    assert store.buyer_for_order(ORDER) == "later@marketplace.amazon.de"
    assert store.purge() == 1  # the buyer message; the review request is fresh again
    assert store.thread_senders(["m1@mail.example"]) == frozenset()


def test_many_keys_are_looked_up_in_chunks(make: Factory) -> None:
    store = make()
    keys = [f"b{i:04d}@marketplace.amazon.de" for i in range(450)]  # more than MAX_QUERY_KEYS twice
    store.add(OptOut(k) for k in keys[::3])
    assert store.opted_out(keys) == frozenset(keys[::3])


def test_counts_follow_every_change(make: Factory) -> None:
    store = make()
    assert store.counts_by_source() == {"cli": 0, "import": 0, "notice": 0}
    store.add([OptOut("a@x.test"), OptOut("b@x.test", source="import"), OptOut("c@x.test", source="notice")])
    store.add([OptOut("d@x.test", source="notice"), OptOut("a@x.test", source="import")])  # a: kept as cli
    assert store.counts_by_source() == {"cli": 1, "import": 1, "notice": 2}
    store.remove(["c@x.test", "a@x.test", "zz@x.test"])
    assert store.counts_by_source() == {"cli": 0, "import": 1, "notice": 1}


def test_status_and_schema(make: Factory) -> None:
    store = make()
    store.add([OptOut(BUYER, source="notice")])
    store.record([ReviewSent(ORDER, BUYER), BuyerMessage("m@x.test", BUYER)])
    status = store.status()
    assert (status.schema, status.register["notice"], status.review_requests, status.buyer_messages) == (
        SCHEMA_VERSION, 1, 1, 1)
    assert store.migrate() == (SCHEMA_VERSION, SCHEMA_VERSION)  # idempotent
    assert "password" not in status.location


def test_copy_is_complete_and_idempotent(make: Factory, tmp_path: Path) -> None:
    """What ``store copy`` moves, kept exactly: opt-outs with source, order and time; review requests and
    buyer messages with their times. A second copy changes nothing."""
    source = SqliteStore(tmp_path / "from.sqlite")
    source.add([OptOut(BUYER, ORDER, "notice", 1_700_000_000), OptOut("b@x.test", None, "import", 1_700_000_001)])
    source.put_rows([ReviewRow(ORDER, BUYER, 1_700_000_002)], [MessageRow("m@x.test", BUYER, 1_700_000_003)])
    target = make()
    for _ in range(2):
        assert target.add(source.entries()).changed in (2, 0)
        target.put_rows(source.review_rows(), source.message_rows())
    assert target.entries() == source.entries()
    assert target.review_rows() == source.review_rows()
    assert target.message_rows() == source.message_rows()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["add", "remove"]), st.sampled_from(["a@x", "b@x", "c@x"]),
                          st.sampled_from(["cli", "import", "notice"])), max_size=12))  # fmt: skip
def test_register_matches_a_model(make: Factory, ops: list[tuple[str, str, str]]) -> None:
    store = make()
    store.remove(["a@x", "b@x", "c@x"])
    model: dict[str, str] = {}
    for op, buyer, source in ops:
        if op == "add":
            store.add([OptOut(buyer, source=source)])
            model.setdefault(buyer, source)
        else:
            store.remove([buyer])
            model.pop(buyer, None)
    assert {e.buyer: e.source for e in store.entries()} == model
    expected = {s: sum(1 for v in model.values() if v == s) for s in ("cli", "import", "notice")}
    assert store.counts_by_source() == expected


def test_one_claim_per_order_among_threads(make: Factory) -> None:
    """Without the milter's in-process lock: the store alone decides, one winner per order."""
    store = make()
    orders = [f"302-0000000-{i:07d}" for i in range(20)]
    wins: list[str] = []
    barrier = threading.Barrier(4)

    def claim(n: int) -> None:
        barrier.wait()
        for order in orders:
            if not store.record([ReviewSent(order, f"t{n}@x.test")]):
                wins.append(order)
        store.close()

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(wins) == orders


CLAIMER = """
import sys
from amzguard.policy import ReviewSent
from amzguard.store import open_location
store = open_location(sys.argv[1])
won = [o for o in sys.argv[3:] if not store.record([ReviewSent(o, sys.argv[2])])]
store.shutdown()
print(" ".join(won))
"""


def test_one_claim_per_order_among_processes(location: str) -> None:
    """Two hosts are two processes: each order is claimed by exactly one of four."""
    orders = [f"303-0000000-{i:07d}" for i in range(30)]
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, location, f"p{n}@x.test", *orders],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(4)]  # fmt: skip
    won: list[str] = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        won += out.split()
    assert sorted(won) == orders
    store = open_location(location)
    assert len(store.review_rows()) == len(orders)
    store.shutdown()


def test_postgres_schema_missing_older_or_newer_is_refused(pg_cluster: PostgresCluster) -> None:
    url = pg_cluster.socket_url(pg_cluster.new_database())
    store = PostgresStore(url)
    try:
        with pytest.raises(SchemaError, match="no amzguard schema in this database; run amzguard store init"):
            store.check()
        assert store.migrate() == (None, SCHEMA_VERSION)
        store.check()
        pg_cluster.psql("UPDATE amzguard_schema SET version = 99", url.split("dbname=")[1].split()[0])
        with pytest.raises(SchemaError, match="schema 99 is newer than this amzguard knows") as caught:
            store.check()
        assert caught.value.newer
        with pytest.raises(SchemaError, match="newer"):
            store.migrate()
    finally:
        store.shutdown()


def test_postgres_password_file_and_passfile(pg_cluster: PostgresCluster, tmp_path: Path) -> None:
    """TCP needs the password: from amzguard's password argument, or from libpq's own passfile."""
    dbname = pg_cluster.new_database()
    PostgresStore(pg_cluster.socket_url(dbname)).migrate()
    with_password = PostgresStore(pg_cluster.tcp_url(dbname), password=PASSWORD)
    assert with_password.opted_out([BUYER]) == frozenset()
    with_password.shutdown()
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{pg_cluster.port}:{dbname}:amzguard:{PASSWORD}\n")
    passfile.chmod(0o600)
    via_passfile = PostgresStore(pg_cluster.tcp_url(dbname) + f"?passfile={passfile}")
    assert via_passfile.opted_out([BUYER]) == frozenset()
    via_passfile.shutdown()
    wrong = PostgresStore(pg_cluster.tcp_url(dbname), password="not-the-password", connect_timeout=2)
    with pytest.raises(Exception, match="password authentication failed|no connection to the database"):
        wrong.check()
    wrong.shutdown()


@pytest.mark.parametrize("many", [False, True], ids=["one-statement", "question-by-question"])
def test_answer_asks_everything_at_once_and_agrees_with_the_single_questions(make: Factory, many: bool) -> None:
    from amzguard.address import parse_address
    from amzguard.policy import MessageFacts, StoreQuestions, SubmissionPath

    store = make()
    store.add([OptOut(BUYER), OptOut("x@marketplace.amazon.fr")])
    store.record([ReviewSent(ORDER, BUYER), BuyerMessage("<m1@buyer.example>", BUYER)])
    store.restrict([Restriction("de", int(store.clock()) + 60), Restriction("fr", int(store.clock()) - 1)])
    extra = tuple(f"k{i}@marketplace.amazon.de" for i in range(250)) if many else ()
    questions = StoreQuestions(buyer_keys=(BUYER, "y@marketplace.amazon.fr", *extra), order_id=ORDER,
                               message_ids=("<m1@buyer.example>", "<m2@buyer.example>"), restrictions=True)  # fmt: skip
    facts = store.answer(questions, MessageFacts(sender=parse_address("<s@shop.test>"), path=SubmissionPath.SMTP))
    assert (facts.opted_out, facts.reviewed_orders, facts.thread_senders) == ({BUYER}, {ORDER}, {BUYER})
    assert facts.restricted == {"de"} == store.restricted()
    assert facts.opted_out == store.opted_out(questions.buyer_keys)
    nothing = store.answer(StoreQuestions(order_id="028-0000000-0000000"),
                           MessageFacts(sender=parse_address("<s@shop.test>"), path=SubmissionPath.SMTP))  # fmt: skip
    assert (nothing.opted_out, nothing.reviewed_orders, nothing.thread_senders) == (frozenset(),) * 3


# -- messaging restrictions (issue 12 item 4) ---------------------------------------------------------


def test_restrictions_hold_until_they_end_extend_and_clear(make: Factory) -> None:
    clock = Clock()
    store = make(clock=clock)
    now = int(clock.now)
    assert store.restrict([Restriction("de", now + 100), Restriction(ALL, now + 50, "notice")]).changed == 2
    assert store.restricted() == {"de", ALL}
    shorter = store.restrict([Restriction("de", now + 10)])  # a shorter one never shortens it
    assert (shorter.changed, shorter.unchanged) == (0, 1)
    assert store.restrict([Restriction("de", now + 200, "notice")]).changed == 1
    assert [(r.marketplace, r.until, r.source) for r in store.restrictions()] == [
        (ALL, now + 50, "notice"), ("de", now + 200, "notice")]
    clock.now += 60
    assert store.restricted() == {"de"}  # the one for all ended (its row stays until cleared)
    questions = StoreQuestions(restrictions=True)
    facts = MessageFacts(sender=parse_address("<s@shop.test>"), path=SubmissionPath.SMTP)
    assert store.answer(questions, facts).restricted == {"de"}
    assert store.answer(StoreQuestions(order_id=ORDER), facts).restricted == frozenset()  # not asked
    assert store.lift(["fr", "de"]) == 1
    assert store.restricted() == frozenset()
    assert store.lift(None) == 1 and store.restrictions() == []


def test_a_restriction_recorded_by_one_host_holds_on_another(make: Factory) -> None:
    """Fleet: two handles on one store (two hosts) see each other's restrictions at once."""
    first, second = make(), make()
    first.restrict([Restriction("co.uk", int(first.clock()) + 3600)])
    assert second.restricted() == {"co.uk"}
    second.lift(["co.uk"])
    assert first.restricted() == frozenset()


def test_store_copy_takes_restrictions(make: Factory, location: str, tmp_path: Path) -> None:
    source = SqliteStore(tmp_path / "from.sqlite")
    source.restrict([Restriction("de", 1_900_000_000, "notice", 1_800_000_000)])
    for _ in range(2):  # idempotent
        done = subprocess.run([sys.executable, "-m", "amzguard", "-c", str(CONFIG), "store", "copy", "--from",
                               str(source.path), "--to", location], capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr
    assert make().restrictions() == source.restrictions()


@pytest.mark.parametrize("version", [2, 3])
def test_postgres_older_schema_is_migrated_to_the_current_one(pg_cluster: PostgresCluster, version: int) -> None:
    database = pg_cluster.new_database()
    url = pg_cluster.socket_url(database)
    old = postgres.SCHEMA.replace(postgres.COUNT_TABLE, "").replace(f"VALUES ({SCHEMA_VERSION});",
                                                                     f"VALUES ({version});")  # fmt: skip
    if version < 3:
        old = old.replace(postgres.RESTRICTION_TABLE, "")
    store = PostgresStore(url, clock=Clock(NOON))
    with store._direct() as conn:
        conn.execute(old)
        conn.execute("INSERT INTO review_sent (order_id, buyer, sent_at) VALUES (%s, %s, %s)", (ORDER, BUYER, NOON))
    try:
        with pytest.raises(SchemaError, match=f"schema {version} is older"):
            store.check()
        assert store.migrate() == (version, SCHEMA_VERSION)
        store.check()
        assert store.reviewed_orders([ORDER]) == {ORDER}
        assert store.restrict([Restriction("de", 2_000_000_000)]).changed == 1
        assert store.record([ProactiveSent("de", 1, 1)]) == frozenset()
    finally:
        store.shutdown()


# -- the daily limit's counts (issue 12 item 7) -------------------------------------------------------

NOON = 1_800_000_000 // 86400 * 86400 + 43200
"""Noon UTC of 2027-01-15: a day away from both midnights."""


def test_limit_exactly_reached_fits_one_more_does_not(make: Factory) -> None:
    store = make(clock=Clock(NOON))
    day = utc_day(NOON)
    assert store.record([ProactiveSent("de", 2, 3)]) == frozenset()
    assert store.record([ProactiveSent("de", 1, 3)]) == frozenset()  # exactly the limit: fits
    with pytest.raises(DailyLimitReached) as reached:
        store.record([ProactiveSent("de", 1, 3)])
    assert reached.value.over == (OverLimit("de", day, 3, 1, 3),)
    assert store.daily_counts() == [DailyCount("de", day, 3)]
    assert store.record([ProactiveSent("fr", 1, 3)]) == frozenset()  # each marketplace counts alone
    assert store.daily_counts(day) == [DailyCount("de", day, 3), DailyCount("fr", day, 1)]
    assert store.status().proactive_today == {"de": 3, "fr": 1}


def test_a_message_over_the_limit_records_nothing(make: Factory) -> None:
    """All or nothing: neither the counts of the other marketplaces nor the review request."""
    store = make(clock=Clock(NOON))
    store.record([ProactiveSent("fr", 1, 1)])
    with pytest.raises(DailyLimitReached) as reached:
        store.record([ReviewSent(ORDER, BUYER), BuyerMessage("<m@buyer.example>", BUYER),
                      ProactiveSent("de", 1, 5), ProactiveSent("fr", 1, 1)])  # fmt: skip
    assert [o.marketplace for o in reached.value.over] == ["fr"]
    assert store.reviewed_orders([ORDER]) == frozenset()
    assert store.thread_senders(["<m@buyer.example>"]) == frozenset()
    assert [(c.marketplace, c.count) for c in store.daily_counts()] == [("fr", 1)]
    # A message to more buyers than the limit never fits, even on a fresh day (it waits, then bounces).
    with pytest.raises(DailyLimitReached) as too_many:
        store.record([ProactiveSent("it", 3, 2)])
    assert too_many.value.over[0].count == 0 and too_many.value.over[0].adding == 3
    assert store.record([ReviewSent(ORDER, BUYER), ProactiveSent("de", 1, 5)]) == frozenset()
    assert store.reviewed_orders([ORDER]) == {ORDER}


def test_an_order_taken_is_answered_before_the_limit(make: Factory) -> None:
    """The caller judges again with the order as a duplicate; that judgement counts one buyer less."""
    store = make(clock=Clock(NOON))
    store.record([ReviewSent(ORDER, BUYER)])
    store.record([ProactiveSent("de", 1, 1)])
    assert store.record([ReviewSent(ORDER, "other@marketplace.amazon.de"), ProactiveSent("de", 1, 1)]) == {ORDER}
    assert store.daily_counts()[0].count == 1


def test_counts_start_again_each_utc_day_and_uncapped_counts_go_over(make: Factory) -> None:
    clock = Clock(NOON - 43200 + 86399)  # 23:59:59 UTC
    store = make(clock=clock)
    first = store.today()
    store.record([ProactiveSent("de", 1, 1)])
    clock.now += 1  # 00:00:00 UTC: a new day
    assert store.today() == utc_day(clock.now) != first
    store.record([ProactiveSent("de", 1, 1)])
    store.record([ProactiveSent("de", 4, None)])  # monitor mode: counted whatever the limit
    assert store.daily_counts() == [DailyCount("de", first, 1), DailyCount("de", store.today(), 5)]


def test_old_days_are_purged_with_the_retention_purge(make: Factory) -> None:
    clock = Clock(NOON)
    store = make(clock=clock)
    for _ in range(COUNT_DAYS + 1):
        store.record([ProactiveSent("de", 1, 10)])
        clock.now += 86400
    clock.now -= 86400  # the last day counted is today
    store.purge()
    days = [c.day for c in store.daily_counts()]
    assert len(days) == COUNT_DAYS and days[-1] == store.today() and days[0] == utc_day(NOON + 86400)


def test_concurrent_takers_never_exceed_the_limit(make: Factory) -> None:
    """Six hosts (six store handles, each its own connections) race for one marketplace's day."""
    limit, hosts, tries = 17, 6, 10
    clock = Clock(NOON)
    stores = [make(clock=clock) for _ in range(hosts)]
    wins: list[int] = []
    barrier = threading.Barrier(hosts)

    def take(n: int) -> None:
        barrier.wait()
        for attempt in range(tries):
            try:
                stores[n].record([ReviewSent(f"302-{n:07d}-{attempt:07d}", f"b{n}@x.test"),
                                  ProactiveSent("de", 1, limit)])  # fmt: skip
            except DailyLimitReached:
                continue
            wins.append(n)
        stores[n].close()

    threads = [threading.Thread(target=take, args=(n,)) for n in range(hosts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(wins) == limit
    assert stores[0].daily_counts() == [DailyCount("de", utc_day(NOON), limit)]
    assert len(stores[0].review_rows()) == limit  # a review request only with its count


def test_store_copy_takes_daily_counts_and_never_lowers_one(make: Factory, location: str, tmp_path: Path) -> None:
    source = SqliteStore(tmp_path / "from.sqlite", clock=Clock(NOON))
    source.record([ProactiveSent("de", 5, 10)])
    source.record([ProactiveSent("fr", 1, 10)])
    target = make(clock=Clock(NOON))
    target.record([ProactiveSent("fr", 3, 10)])
    for _ in range(2):  # idempotent
        done = subprocess.run([sys.executable, "-m", "amzguard", "-c", str(CONFIG), "store", "copy", "--from",
                               str(source.path), "--to", location], capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr
    day = utc_day(NOON)
    assert target.daily_counts() == [DailyCount("de", day, 5), DailyCount("fr", day, 3)]


def test_sqlite_schema_3_is_migrated_to_4(tmp_path: Path) -> None:
    path = tmp_path / "v3.sqlite"
    with sqlite3.connect(path) as conn:
        for version in (1, 2, 3):
            for statement in sqlite_store._statements(sqlite_store.MIGRATIONS[version]):
                conn.execute(statement)
        conn.execute("PRAGMA user_version=3")
        conn.execute("INSERT INTO review_sent (order_id, buyer, sent_at) VALUES (?, ?, ?)", (ORDER, BUYER, NOON))
    store = SqliteStore(path, clock=Clock(NOON))
    assert store.schema_version() == 3
    assert store.migrate() == (3, SCHEMA_VERSION) == (3, 4)
    assert store.reviewed_orders([ORDER]) == {ORDER}
    assert store.record([ProactiveSent("de", 1, 1)]) == frozenset()
