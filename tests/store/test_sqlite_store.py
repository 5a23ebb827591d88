"""What only the SQLite backend has, on real files: the file itself (mode, WAL, replaced or deleted in use,
not a database), its schema migration, locking, and one writer with concurrent readers (threads and
processes). What both backends share is in test_conformance.py. Buyer addresses are made up."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from amzguard.store import SCHEMA_VERSION, OptOut, SchemaError, StoreError
from amzguard.store.sqlite import FILE_MODE, SCHEMA_V1, SqliteStore
from amzguard.policy import ReviewSent

BUYER = "q7x2k9m4p1z8w3v5@marketplace.amazon.de"
ORDER = "302-1234567-7654321"


def test_new_file_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    SqliteStore(path).check()
    assert path.stat().st_mode & 0o777 == FILE_MODE == 0o660
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


@pytest.mark.parametrize("how", ["replaced", "deleted"])
def test_a_file_replaced_or_deleted_in_use_is_refused_not_read_half_old(tmp_path: Path, how: str) -> None:
    path = tmp_path / "s.sqlite"
    store = SqliteStore(path)
    store.add([OptOut(BUYER)])
    if how == "replaced":
        other = SqliteStore(tmp_path / "backup.sqlite")
        other.add([OptOut("restored@marketplace.amazon.de")])
        other.close()
        os.replace(tmp_path / "backup.sqlite", path)
    else:
        path.unlink()
    for _ in range(2):  # every later lookup too, in this thread and in others
        with pytest.raises(StoreError, match="deleted or replaced while in use; stop amzguard"):
            store.opted_out([BUYER])
    errors: list[Exception] = []
    thread = threading.Thread(target=lambda: _catch(errors, lambda: store.opted_out([BUYER])))
    thread.start()
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], StoreError)


def _catch(errors: list[Exception], action) -> None:
    try:
        action()
    except Exception as exc:  # noqa: BLE001 - handed to the test thread
        errors.append(exc)


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "no" / "such" / "dir" / "s.sqlite")
    with pytest.raises(StoreError, match=r"no/such/dir/s.sqlite: cannot create the store: No such file"):
        store.opted_out([BUYER])
    # It works once the directory exists: no restart needed.
    (tmp_path / "no" / "such" / "dir").mkdir(parents=True)
    assert store.opted_out([BUYER]) == frozenset()


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    path.write_bytes(b"this is not a database, it is a text file\n" * 200)
    with pytest.raises(StoreError, match="s.sqlite: .*not a database"):
        SqliteStore(path).opted_out([BUYER])


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(SchemaError, match="schema 99 is newer than this amzguard knows"):
        SqliteStore(path).check()


def test_a_version_1_file_is_migrated_on_open_keeping_everything(tmp_path: Path) -> None:
    """amzguard before the PostgreSQL backend wrote schema 1; opening it adds the claim column and the
    register counts (from the rows already there) in one transaction."""
    path = tmp_path / "s.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA_V1 + "PRAGMA user_version=1;")
        conn.execute("INSERT INTO optout VALUES (?, NULL, 'notice', 1)", (BUYER,))
        conn.execute("INSERT INTO optout VALUES ('b@marketplace.amazon.fr', NULL, 'cli', 1)")
        conn.execute("INSERT INTO review_sent VALUES (?, ?, ?)", (ORDER, BUYER, 1_800_000_000))
    store = SqliteStore(path, clock=lambda: 1_800_000_100.0)
    assert store.schema_version() == 1
    assert store.migrate() == (1, SCHEMA_VERSION)
    assert store.restrictions() == []
    assert store.counts_by_source() == {"cli": 1, "import": 0, "notice": 1}
    assert store.reviewed_orders([ORDER]) == {ORDER}
    assert store.record([ReviewSent(ORDER, "other@marketplace.amazon.de")]) == {ORDER}  # still taken


def test_a_locked_store_fails_writers_after_the_busy_timeout_but_not_readers(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = SqliteStore(path, busy_timeout=0.2)
    store.add([OptOut(BUYER)])
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        assert store.opted_out([BUYER]) == {BUYER}  # WAL: a reader never waits for the writer
        with pytest.raises(StoreError, match="database is locked"):
            store.record([ReviewSent(ORDER, BUYER)])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    store.record([ReviewSent(ORDER, BUYER)])  # and it recovers
    assert store.reviewed_orders([ORDER]) == {ORDER}


# -- one writer, concurrent readers --------------------------------------------------------------------

ROUNDS = 300


def _key(i: int) -> str:
    return f"buyer{i:04d}@marketplace.amazon.de"


WRITER = f"""
import sys
from amzguard.store import OptOut
from amzguard.store.sqlite import SqliteStore
from amzguard.policy import ReviewSent
store = SqliteStore(sys.argv[1])
for i in range({ROUNDS}):
    key = f"buyer{{i:04d}}@marketplace.amazon.de"
    store.add([OptOut(key, source="test")])
    store.record([ReviewSent(f"302-0000000-{{i:07d}}", key)])
print("wrote", {ROUNDS})
"""

READER = f"""
import sys, time
from amzguard.store.sqlite import SqliteStore
store = SqliteStore(sys.argv[1])
keys = [f"buyer{{i:04d}}@marketplace.amazon.de" for i in range({ROUNDS})]
seen, reads, deadline = 0, 0, time.monotonic() + 120
while seen < {ROUNDS} and time.monotonic() < deadline:
    found = store.opted_out(keys)
    reads += 1
    # The writer adds in order, one per transaction: a reader sees a prefix, never less than before.
    assert found == set(keys[:len(found)]), "not a prefix"
    assert len(found) >= seen, "went backwards"
    seen = len(found)
print("reader", seen, reads)
"""


def _run_python(code: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    if not args:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    return proc


def test_one_writer_and_concurrent_readers(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = SqliteStore(path)
    store.check()
    readers = [_run_python(READER, str(path)) for _ in range(2)]
    errors: list[BaseException] = []
    seen: list[int] = []

    def read_in_thread() -> None:
        keys = [_key(i) for i in range(ROUNDS)]
        last = 0
        deadline = time.monotonic() + 120
        try:
            while last < ROUNDS and time.monotonic() < deadline:
                found = store.opted_out(keys)  # this thread's own connection
                assert found == set(keys[: len(found)]) and len(found) >= last
                last = len(found)
                orders = store.reviewed_orders([f"302-0000000-{i:07d}" for i in range(ROUNDS)])
                assert len(orders) >= last - 1  # the order row follows its opt-out row
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)
        seen.append(last)

    threads = [threading.Thread(target=read_in_thread) for _ in range(3)]
    for thread in threads:
        thread.start()
    writer = _run_python(WRITER, str(path))
    out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    for thread in threads:
        thread.join(130)
    assert errors == []
    assert seen == [ROUNDS] * 3
    for reader in readers:
        out, err = reader.communicate(timeout=130)
        assert reader.returncode == 0, err
        assert out.split()[:2] == ["reader", str(ROUNDS)]
    assert len(store.entries()) == ROUNDS


def test_concurrent_first_opens_create_one_store(tmp_path: Path) -> None:
    path = tmp_path / "fresh.sqlite"
    code = (
        "import sys\nfrom amzguard.store import OptOut\nfrom amzguard.store.sqlite import SqliteStore\n"
        "SqliteStore(sys.argv[1]).add([OptOut(sys.argv[2])])\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), _key(i)], stderr=subprocess.PIPE, text=True)
             for i in range(4)]  # fmt: skip
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    assert {entry.buyer for entry in SqliteStore(path).entries()} == {_key(i) for i in range(4)}
