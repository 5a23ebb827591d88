"""``amzguard optout …`` as a process on a real database file: counts, idempotence, formats, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from amzguard.store import OptOut, SqliteStore
from amzguard.policy import ReviewSent

NOTICES = Path(__file__).resolve().parents[1] / "fixtures" / "notices"


class Cli:
    def __init__(self, tmp_path: Path) -> None:
        self.db = tmp_path / "var" / "store.sqlite"
        self.db.parent.mkdir()
        self.config = tmp_path / "amzguard.yml"
        self.config.write_text("store:\n  path: var/store.sqlite\n")  # relative to the config file

    def __call__(self, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "amzguard", "optout", args[0], "-c", str(self.config), *args[1:]],
            input=stdin, capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


@pytest.fixture()
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def test_add_remove_list_are_idempotent_and_counted(cli: Cli) -> None:
    done = cli("add", "Q7X2K9M4P1Z8W3V5+case9@marketplace.amazon.de", "<blacklisted-40417@amazon.fr>")
    assert (done.returncode, done.stdout) == (0, "added 2, already registered 0, skipped 0\n")
    assert "created a new, empty store" in done.stderr
    assert cli.db.stat().st_mode & 0o777 == 0o660  # buyer addresses: nothing for other users
    done = cli("add", "q7x2k9m4p1z8w3v5@marketplace.amazon.de", "not-an-address", "--order", "302-1234567-7654321")
    assert done.returncode == 1
    assert done.stdout == "added 0, already registered 1, skipped 1\n"
    assert "skipped argument 'not-an-address': 'not-an-address' is not an e-mail address" in done.stderr
    listed = cli("list")
    assert listed.stdout == "40417@amazon.fr\nq7x2k9m4p1z8w3v5@marketplace.amazon.de\n"
    assert listed.stderr.strip() == "2 opted-out buyers"
    assert cli("remove", "BLACKLISTED-40417@AMAZON.FR", "x@marketplace.amazon.de").stdout == (
        "removed 1, not registered 1, skipped 0\n"
    )
    assert cli("remove", "blacklisted-40417@amazon.fr").stdout == "removed 0, not registered 1, skipped 0\n"
    assert cli("add", "--order", "123-bad", "a@marketplace.amazon.de").returncode == 1
    bad = cli("add", "--order", "123-bad", "a@marketplace.amazon.de")
    assert "'123-bad' is not an order id" in bad.stderr


def test_export_and_import_round_trip_in_both_formats(cli: Cli, tmp_path: Path) -> None:
    cli("add", "blacklisted-40417@amazon.fr", "q7x2k9m4p1z8w3v5@marketplace.amazon.de")
    cli("add", "--order", "302-1234567-7654321", "a1a1@marketplace.amazon.com")
    exported = cli("export")
    lines = exported.stdout.splitlines()
    assert lines[0] == "address,order_id,source,added_at"
    assert lines[1].startswith("40417@amazon.fr,,cli,20") and lines[1].endswith("Z")
    assert lines[2].startswith("a1a1@marketplace.amazon.com,302-1234567-7654321,cli,")
    assert exported.stderr.strip() == "exported 3 opted-out buyers"
    csv_file = tmp_path / "register.csv"
    csv_file.write_text(exported.stdout)
    plain = cli("export", "--format", "lines").stdout
    assert plain.splitlines() == [line.split(",")[0] for line in lines[1:]]
    for address in plain.split():
        cli("remove", address)
    done = cli("import", str(csv_file))
    assert (done.returncode, done.stdout) == (0, f"imported {csv_file}: added 3, already registered 0, skipped 0\n")
    assert cli("import", str(csv_file)).stdout.endswith("added 0, already registered 3, skipped 0\n")
    assert [e.order_id for e in SqliteStore(cli.db).entries()] == [None, "302-1234567-7654321", None]
    # one address a line from stdin, with comments, blank lines and garbage
    text = (b"# help desk 'blocked customers'\n\n"
            b"z9z9@marketplace.amazon.it\nq7x2k9m4p1z8w3v5@marketplace.amazon.de\nfoo\n")  # fmt: skip
    done = cli("import", "-", stdin=text)
    assert done.returncode == 1
    assert done.stdout == "imported -: added 1, already registered 1, skipped 1\n"
    assert "skipped line 5: 'foo' is not an e-mail address" in done.stderr


def test_import_csv_with_other_columns_and_without_header(cli: Cli, tmp_path: Path) -> None:
    with_header = tmp_path / "helpdesk.csv"
    with_header.write_text("Name,E-Mail,Order_ID\nErika,e1@marketplace.amazon.de,028-1111111-2222222\n")
    # the header names the columns: e-mail and order_id are read wherever they are
    done = cli("import", str(with_header))
    assert done.stdout.endswith("added 1, already registered 0, skipped 0\n")
    headerless = tmp_path / "plain.csv"
    headerless.write_text("e2@marketplace.amazon.de,028-3333333-4444444\ne3@marketplace.amazon.de,\n")
    assert cli("import", str(headerless)).stdout.endswith("added 2, already registered 0, skipped 0\n")
    entries = {e.buyer: e.order_id for e in SqliteStore(cli.db).entries()}
    assert entries["e1@marketplace.amazon.de"] == "028-1111111-2222222"
    assert entries["e2@marketplace.amazon.de"] == "028-3333333-4444444"
    proper = tmp_path / "proper.csv"
    proper.write_text("email,order_id\ne4@marketplace.amazon.de,028-5555555-6666666\n")
    assert cli("import", str(proper)).stdout.endswith("added 1, already registered 0, skipped 0\n")
    missing = cli("import", str(tmp_path / "missing.csv"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr


def test_learn_from_files_and_stdin(cli: Cli) -> None:
    SqliteStore(cli.db).record([
        ReviewSent("302-1000001-2000001", "a1a1a1a1a1a1a1a1@marketplace.amazon.com"),
        ReviewSent("302-1000002-2000002", "b2b2b2b2b2b2b2b2@marketplace.amazon.de"),
    ])  # fmt: skip
    done = cli("learn", str(NOTICES / "en_order_only.eml"), str(NOTICES / "en_with_original.eml"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "learned: a1a1a1a1a1a1a1a1@marketplace.amazon.com (order 302-1000001-2000001, notice in en, "
        "order id resolved through the review requests sent)",
        "learned: x9y8z7w6v5u4t3s2@marketplace.amazon.co.uk (order 026-1000006-2000006, notice in en, "
        "address in the notice)",
        "learned 2 (new 2, already registered 0), unresolved 0, not recognised 0, shared address not registered 0",
    ]
    piped = cli("learn", stdin=b"From MAILER-DAEMON Mon Nov 23 08:00:00 2026\n"
                + (NOTICES / "de_order_only.eml").read_bytes())  # fmt: skip
    assert piped.returncode == 0
    assert piped.stdout.startswith("learned: b2b2b2b2b2b2b2b2@marketplace.amazon.de (order 302-1000002-2000002")
    again = cli("learn", str(NOTICES / "en_order_only.eml"))
    assert again.stdout.startswith("already registered: a1a1a1a1a1a1a1a1@marketplace.amazon.com")
    assert again.returncode == 0
    assert len(SqliteStore(cli.db).entries()) == 3


def test_learn_accepts_what_it_cannot_learn_and_says_so(cli: Cli) -> None:
    # As a pipe transport, a non-zero exit would bounce the message to its sender, usually Amazon.
    done = cli("learn", str(NOTICES / "not_a_notice.eml"), str(NOTICES / "en_unresolved.eml"))
    assert done.returncode == 0, done.stderr
    assert ("amzguard: warning: not an opt-out notice: <notice-en-5@amazon.example>; accepted and dropped "
            "(optout.learn.keep_unknown is not set)\n") in done.stderr  # fmt: skip
    assert ("amzguard: warning: unresolved opt-out notice <notice-en-4@amazon.example> (in en): order "
            "302-9999999-9999999 is not among the review requests amzguard remembers, and no address") in done.stderr
    assert done.stdout.strip() == ("learned 0 (new 0, already registered 0), unresolved 1, not recognised 1, "
                                  "shared address not registered 0")
    empty = cli("learn", stdin=b"")
    assert empty.returncode == 0 and "amzguard: warning: no message in the input" in empty.stderr
    assert SqliteStore(cli.db).entries() == []


def test_the_shared_business_address_is_never_registered(cli: Cli) -> None:
    """Amazon Business buyers may all appear as no-reply-amazon-iba-buyer@marketplace.amazon.<tld>: one
    buyer's opt-out must not silence the others (issue 12). Learned, added or imported: never a row; the
    notice is still accepted (exit 0), so Postfix's pipe does not bounce it to Amazon."""
    learned = cli("learn", str(NOTICES / "en_shared_business_address.eml"))
    assert learned.returncode == 0, learned.stderr
    assert ("amzguard: warning: opt-out notice <notice-en-iba@amazon.example> names "
            "no-reply-amazon-iba-buyer@marketplace.amazon.de, the address Amazon Business buyers share (order "
            "302-1000011-2000011): not registered") in learned.stderr  # fmt: skip
    assert learned.stdout.strip().endswith("not recognised 0, shared address not registered 1")
    added = cli("add", "NO-REPLY-AMAZON-IBA-BUYER@marketplace.amazon.com", "blacklisted-no-reply-amazon-iba-buyer@marketplace.amazon.fr",
                "q7x2k9m4p1z8w3v5@marketplace.amazon.de")  # fmt: skip
    assert added.returncode == 1  # some input skipped, named on stderr
    assert added.stdout == "added 1, already registered 0, skipped 2\n"
    assert added.stderr.count("is the address Amazon Business buyers share") == 2
    assert [e.buyer for e in SqliteStore(cli.db).entries()] == ["q7x2k9m4p1z8w3v5@marketplace.amazon.de"]
    # One an older version registered can still be removed.
    SqliteStore(cli.db).add([OptOut("no-reply-amazon-iba-buyer@marketplace.amazon.de", source="cli")])
    removed = cli("remove", "no-reply-amazon-iba-buyer@marketplace.amazon.de")
    assert (removed.returncode, removed.stdout) == (0, "removed 1, not registered 0, skipped 0\n")
    # On a shop domain the same local part is an ordinary address (not Amazon's shared one).
    assert cli("add", "no-reply-amazon-iba-buyer@shop.test").stdout == "added 1, already registered 0, skipped 0\n"


def test_learn_keeps_what_it_cannot_learn_in_the_configured_directory(cli: Cli, tmp_path: Path) -> None:
    keep = tmp_path / "unknown"
    keep.mkdir()
    cli.config.write_text(f"store:\n  path: var/store.sqlite\noptout:\n  learn:\n    keep_unknown: {keep}\n")
    raw = (NOTICES / "not_a_notice.eml").read_bytes()
    done = cli("learn", stdin=raw)
    assert done.returncode == 0, done.stderr
    [kept] = list(keep.iterdir())
    assert kept.suffix == ".eml" and f"; kept as {kept}" in done.stderr
    assert kept.read_bytes().replace(b"\r\n", b"\n") == raw.replace(b"\r\n", b"\n")
    assert kept.stat().st_mode & 0o777 == 0o640
    # A learned notice is not kept.
    SqliteStore(cli.db).record([ReviewSent("302-1000001-2000001", "a1a1a1a1a1a1a1a1@marketplace.amazon.com")])
    assert cli("learn", str(NOTICES / "en_order_only.eml")).returncode == 0
    assert len(list(keep.iterdir())) == 1
    # A directory that cannot take the message: the pipe must keep it and retry, not lose it.
    cli.config.write_text(f"store:\n  path: var/store.sqlite\noptout:\n  learn:\n    keep_unknown: {keep}/gone\n")
    failed = cli("learn", stdin=raw)
    assert failed.returncode == 75
    assert "cannot keep the message in" in failed.stderr and "No such file or directory" in failed.stderr


def test_config_before_the_subcommand(cli: Cli) -> None:
    cli("add", "q7x2k9m4p1z8w3v5@marketplace.amazon.de")
    for argv in (["-c", str(cli.config), "optout", "list"], ["--config", str(cli.config), "optout", "list"],
                 ["-c", "/nonexistent.yml", "optout", "list", "-c", str(cli.config)]):  # fmt: skip
        done = subprocess.run([sys.executable, "-m", "amzguard", *argv], capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
        assert (done.returncode, done.stdout) == (0, "q7x2k9m4p1z8w3v5@marketplace.amazon.de\n"), argv


def test_unusable_store_is_a_temporary_failure(cli: Cli, tmp_path: Path) -> None:
    cli.config.write_text(f"store:\n  path: {tmp_path}/no/such/dir/store.sqlite\n")
    done = cli("learn", str(NOTICES / "en_order_only.eml"))
    assert done.returncode == 75  # EX_TEMPFAIL: Postfix's pipe keeps the notice and retries
    assert "opt-out store unavailable" in done.stderr and "cannot create the store" in done.stderr
    assert cli("list").returncode == 75


def test_config_error_makes_learn_a_temporary_failure(cli: Cli) -> None:
    cli.config.write_text("store:\n  pathh: x\n")
    done = cli("learn", str(NOTICES / "en_order_only.eml"))
    assert done.returncode == 75 and "store.pathh: unknown key" in done.stderr
    assert cli("list").returncode == 2
