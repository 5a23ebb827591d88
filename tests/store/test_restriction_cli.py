"""``amzguard restriction list|add|clear`` and restrictions learned by ``optout learn`` from (invented)
notices, through the real command line on a SQLite store (the store semantics on both backends:
test_conformance.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from amzguard.policy.restriction import ALL
from amzguard.store import SqliteStore

NOTICES = Path(__file__).resolve().parents[1] / "fixtures" / "notices"


def amzguard(config: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "amzguard", "-c", str(config), *args], input=stdin,
                          capture_output=True, timeout=120, check=False)  # fmt: skip
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def setup(tmp_path: Path, extra: str = "") -> tuple[Path, SqliteStore]:
    config = tmp_path / "amzguard.yml"
    config.write_text(f"store:\n  path: {tmp_path}/s.sqlite\n{extra}")
    return config, SqliteStore(tmp_path / "s.sqlite")


def test_add_list_clear(tmp_path: Path) -> None:
    config, store = setup(tmp_path)
    added = amzguard(config, "restriction", "add", "--marketplace", "amazon.de", "--days", "5")
    assert added.returncode == 0 and added.stdout.startswith("restriction de until "), added
    assert amzguard(config, "restriction", "add").returncode == 0  # all, restriction.days (30)
    [every, de] = store.restrictions()
    assert (every.marketplace, de.marketplace, every.source) == (ALL, "de", "cli")
    assert abs(de.until - (time.time() + 5 * 86400)) < 120 and abs(every.until - (time.time() + 30 * 86400)) < 120
    again = amzguard(config, "restriction", "add", "--marketplace", "de", "--days", "1")
    assert "already holds longer" in again.stdout
    listed = amzguard(config, "restriction", "list")
    assert [line.split("\t")[0::2] for line in listed.stdout.splitlines()] == [[ALL, "cli"], ["de", "cli"]]
    assert "2 restriction(s) in force" in listed.stderr
    cleared = amzguard(config, "restriction", "clear", "--marketplace", "de")
    assert (cleared.returncode, cleared.stdout) == (0, "cleared 1\n")
    assert amzguard(config, "restriction", "clear").stdout == "cleared 1\n"
    assert store.restrictions() == []


def test_bad_input_changes_nothing(tmp_path: Path) -> None:
    config, store = setup(tmp_path)
    bad = amzguard(config, "restriction", "add", "--marketplace", "not a marketplace")
    assert bad.returncode == 2 and "not a marketplace" in bad.stderr
    assert amzguard(config, "restriction", "add", "--days", "0").returncode == 2
    assert amzguard(config, "restriction", "clear", "--marketplace", "x y").returncode == 2
    assert store.restrictions() == []


def test_an_unusable_store_is_a_tempfail(tmp_path: Path) -> None:
    config = tmp_path / "amzguard.yml"
    config.write_text(f"store:\n  path: {tmp_path}/missing-dir/s.sqlite\n")
    done = amzguard(config, "restriction", "add")
    assert done.returncode == 75 and "store unavailable" in done.stderr


def test_learn_records_a_restriction_per_marketplace_or_for_all(tmp_path: Path) -> None:
    config, store = setup(tmp_path, "restriction:\n  days: 7\n")
    done = amzguard(config, "optout", "learn", str(NOTICES / "restriction_de.eml"),
                    str(NOTICES / "restriction_unnamed.eml"), str(NOTICES / "en_order_only.eml"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "restriction recorded: de for 7 days" in done.stdout
    assert f"restriction recorded: {ALL} for 7 days" in done.stdout
    assert "restriction notices 2" in done.stdout
    assert {(r.marketplace, r.source) for r in store.restrictions()} == {("de", "notice"), (ALL, "notice")}
    assert all(abs(r.until - (time.time() + 7 * 86400)) < 120 for r in store.restrictions())


def test_learn_reads_the_configured_wording(tmp_path: Path) -> None:
    config, store = setup(tmp_path, "restriction:\n  notice_phrases: ['Ihr Konto darf vorerst keine Nachrichten']\n")
    german = (b"From: notices@amazon.de\nSubject: invented\nMessage-ID: <x@invented.example>\n\n"
              b"Ihr Konto darf  vorerst keine Nachrichten senden (invented wording).\n")  # fmt: skip
    assert amzguard(config, "optout", "learn", stdin=german).returncode == 0
    assert [r.marketplace for r in store.restrictions()] == ["de"]
    # The English default is replaced, so the English notice is not a restriction notice now.
    done = amzguard(config, "optout", "learn", str(NOTICES / "restriction_unnamed.eml"))
    assert "not recognised 1" in done.stdout and len(store.restrictions()) == 1
