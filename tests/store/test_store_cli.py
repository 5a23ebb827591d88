"""``amzguard store init|migrate|status|copy`` as processes, on a SQLite file and the session's PostgreSQL
cluster; and the milter refusing a schema newer than it knows. Buyer addresses are made up."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from amzguard.policy import BuyerMessage, ProactiveSent, ReviewSent
from amzguard.store import SCHEMA_VERSION, OptOut, open_location
from amzguard.store.sqlite import SqliteStore
from tests.support.postgres import PASSWORD, PostgresCluster

BUYERS = [f"b{i:02d}x7k2m9@marketplace.amazon.de" for i in range(12)]
ORDERS = [f"302-12345{i:02d}-7654321" for i in range(12)]


def amzguard(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "amzguard", "-c", str(config), *args], capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip


def populated_sqlite(path: Path) -> SqliteStore:
    store = SqliteStore(path)
    store.add([OptOut(BUYERS[0], ORDERS[0], "notice", 1_700_000_000), OptOut(BUYERS[1], None, "import", 1_700_000_001),
               OptOut(BUYERS[2], None, "cli", 1_700_000_002)])  # fmt: skip
    store.record([ReviewSent(order, buyer) for order, buyer in zip(ORDERS[3:9], BUYERS[3:9])])
    store.record([BuyerMessage(f"<m{i}@buyer.example>", BUYERS[i]) for i in range(9, 12)])
    store.record([ProactiveSent("de", 4, None), ProactiveSent("co.uk", 1, None)])  # today's daily-limit counts
    return store


def answers(location: str) -> tuple[object, ...]:
    """What the milter and optout learn would be told, for every key there is and some there are not."""
    store = open_location(location)
    try:
        return (
            store.opted_out(BUYERS + ["nobody@marketplace.amazon.de"]),
            store.reviewed_orders(ORDERS),
            store.thread_senders([f"<m{i}@buyer.example>" for i in range(14)]),
            tuple(store.buyer_for_order(order) for order in ORDERS),
            store.entries(), store.review_rows(), store.message_rows(), store.counts_by_source(),
            store.daily_counts(),
        )  # fmt: skip
    finally:
        store.shutdown()


def test_copy_from_sqlite_to_postgresql_gives_identical_answers(tmp_path: Path, pg_cluster: PostgresCluster) -> None:
    populated_sqlite(tmp_path / "old.sqlite")
    dbname = pg_cluster.new_database()
    password_file = tmp_path / "db-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o640)
    config = tmp_path / "amzguard.yml"
    config.write_text(f"store:\n  url: {pg_cluster.tcp_url(dbname)}\n  password_file: db-password\n")
    status = amzguard(config, "store", "status")
    assert status.returncode == 1 and "schema: none (run amzguard store init)" in status.stdout, status
    done = amzguard(config, "store", "copy", "--from", f"sqlite:{tmp_path / 'old.sqlite'}")
    assert done.returncode == 0, done.stderr
    assert "opt-outs 3 added, 0 already there; review requests and buyer messages 9 added" in done.stdout
    assert "password" not in done.stdout + done.stderr and PASSWORD not in done.stdout + done.stderr
    again = amzguard(config, "store", "copy", "--from", str(tmp_path / "old.sqlite"))
    assert "opt-outs 0 added, 3 already there; review requests and buyer messages 0 added, 9 already" in again.stdout
    assert answers(pg_cluster.socket_url(dbname)) == answers(str(tmp_path / "old.sqlite"))
    status = amzguard(config, "store", "status")
    assert status.returncode == 0, status.stderr
    assert f"backend: postgresql\nlocation: postgresql: user=amzguard dbname={dbname} host=127.0.0.1" in status.stdout
    assert f"schema: {SCHEMA_VERSION}" in status.stdout
    assert "opt-outs: 3 (cli 1, import 1, notice 1)\nreview requests: 6\nbuyer messages: 3" in status.stdout
    # The status names the UTC day it shows (the counts were made today, unless midnight passed meanwhile).
    day = re.search(r"^proactive messages today \((\d{4}-\d\d-\d\d) UTC, daily limit\): (.*)$", status.stdout, re.M)
    assert day, status.stdout
    made = [c for c in SqliteStore(tmp_path / "old.sqlite").daily_counts() if c.day == day[1]]
    assert day[2] == (", ".join(f"{c.marketplace} {c.count}" for c in made) or "none")
    # And back again, into a new SQLite file: the same answers.
    back = amzguard(config, "store", "copy", "--to", str(tmp_path / "back.sqlite"))
    assert back.returncode == 0, back.stderr
    assert answers(str(tmp_path / "back.sqlite")) == answers(str(tmp_path / "old.sqlite"))


def test_init_and_migrate_are_idempotent(tmp_path: Path, pg_cluster: PostgresCluster) -> None:
    url = pg_cluster.socket_url(pg_cluster.new_database())
    config = tmp_path / "amzguard.yml"
    config.write_text(f"store:\n  url: '{url}'\n")
    first = amzguard(config, "store", "init")
    assert (first.returncode, first.stdout.split(": schema ")[-1]) == (0, f"{SCHEMA_VERSION} created\n"), first
    for command in ("init", "migrate"):
        done = amzguard(config, "store", command)
        assert (done.returncode, done.stdout.split(": schema ")[-1]) == (0, f"{SCHEMA_VERSION}, up to date\n")


def test_unreachable_database_is_a_tempfail(tmp_path: Path, pg_cluster: PostgresCluster) -> None:
    config = tmp_path / "amzguard.yml"
    config.write_text(f"store:\n  url: 'host={tmp_path} port=1 dbname=none user=amzguard'\n")
    done = amzguard(config, "optout", "add", BUYERS[0])
    assert done.returncode == 75 and "opt-out store unavailable: postgresql: " in done.stderr, done


def test_milter_refuses_to_start_on_a_newer_schema(tmp_path: Path, pg_cluster: PostgresCluster) -> None:
    dbname = pg_cluster.new_database()
    url = pg_cluster.socket_url(dbname)
    open_location(url).migrate()
    pg_cluster.psql("UPDATE amzguard_schema SET version = 99", dbname)
    config = tmp_path / "amzguard.yml"
    config.write_text(f"milter:\n  socket: unix:{tmp_path}/s.sock\nchannels:\n  review:\n    enabled: true\n"
                      f"    token: t3st-review-token-7Qx9Lm2\nstore:\n  url: '{url}'\nmetrics:\n  enabled: false\n")
    done = amzguard(config, "run")
    assert done.returncode == 1
    assert "refusing to start: postgresql: " in done.stderr
    assert f"store schema 99 is newer than this amzguard knows ({SCHEMA_VERSION}); upgrade amzguard" in done.stderr


def test_milter_refuses_to_start_on_a_store_url_libpq_cannot_read(tmp_path: Path) -> None:
    config = tmp_path / "amzguard.yml"
    config.write_text(f"milter:\n  socket: unix:{tmp_path}/s.sock\nchannels:\n  review:\n    enabled: true\n"
                      "    token: t3st-review-token-7Qx9Lm2\nstore:\n  url: 'host=db dbname'\nmetrics:\n  enabled: false\n")
    done = amzguard(config, "run")
    assert done.returncode == 1
    assert "refusing to start: store.url: not a libpq connection string" in done.stderr, done.stderr


def test_status_shows_the_restrictions_in_force(tmp_path: Path) -> None:
    import time

    from amzguard.policy.restriction import Restriction

    store = populated_sqlite(tmp_path / "amzguard.sqlite")
    config = tmp_path / "amzguard.yml"
    config.write_text("store:\n  path: amzguard.sqlite\n")
    status = amzguard(config, "store", "status")
    assert status.returncode == 0 and "messaging restrictions in force: none\n" in status.stdout, status
    now = int(time.time())
    store.restrict([Restriction("de", now + 3 * 86400, "notice", now), Restriction("fr", now - 60, "cli", now - 86400)])
    status = amzguard(config, "store", "status")
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 3 * 86400))
    assert f"messaging restrictions in force: de until {until}\n" in status.stdout, status.stdout  # fr ended
