"""Issue 9, item 6: faults found by reading the code, each driven through the milter protocol against the
real milter process (faults injected from outside the product code, by a prelude)."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import pytest
from miltertest import constants as c

from amzguard.adapter import Snapshot
from amzguard.config import parse_config
from amzguard.store import SqliteStore
from tests.support.fake_mta import LOCAL_PEER, SMTP_PEER, FakeMta
from tests.support.milter_process import REVIEW_TOKEN, MilterProcess, write_config

TAG = ("X-Amzguard-Channel", f"review {REVIEW_TOKEN}")
BUYER = "<q7x2k9m4p1z8w3v5@marketplace.amazon.de>"
BUYER_KEY = "q7x2k9m4p1z8w3v5@marketplace.amazon.de"
MARKED = "<blacklisted-40417@amazon.fr>"
OWNER = "<owner@shop.test>"


def start(tmp_path: Path, name: str, prelude: str, **sections: object) -> MilterProcess:
    socket = f"unix:{tmp_path}/{name}.sock"
    config = write_config(tmp_path / f"{name}.yml", socket, **sections)
    return MilterProcess(config, socket, tmp_path / f"{name}.log", prelude).start()


BROKEN_RCPT = (
    "import amzguard.adapter as adapter\n"
    "def broken(*args, **kwargs):\n"
    "    raise RuntimeError('injected rcpt fault')\n"
    "adapter.classify_recipient = broken\n"
)


@pytest.mark.parametrize(("peer", "at_rcpt"), [(LOCAL_PEER, c.SMFIR_CONTINUE), (SMTP_PEER, c.SMFIR_REPLYCODE)],
                         ids=["sendmail", "smtp"])  # fmt: skip
def test_error_at_rcpt_is_answered_where_legal(tmp_path: Path, peer: tuple[str, str, int], at_rcpt: str) -> None:
    """A tempfail at RCPT of a sendmail(1) submission is a Postfix milter configuration error (the
    message sits in the maildrop for ever): there the failure is answered at end of message."""
    proc = start(tmp_path, "broken-rcpt", BROKEN_RCPT)
    try:
        with FakeMta(proc.socket) as mta:
            rcpts, eom = mta.message("<shop@shop.test>", [OWNER], peer=peer)
        assert rcpts[OWNER].command == at_rcpt
        if at_rcpt == c.SMFIR_CONTINUE:
            assert [r.command for r in eom] == [c.SMFIR_REPLYCODE]
            assert eom[0].fields["smtpcode"] == "451"
        else:
            assert rcpts[OWNER].fields["smtpcode"] == "451"
        assert "RuntimeError: injected rcpt fault" in proc.wait_log("internal error in rcpt callback")
    finally:
        assert proc.stop() == 0


BROKEN_PURGE = (
    "import amzguard.store.sqlite as sqlite\n"
    "def broken(self):\n"
    "    raise sqlite.StoreError('injected purge fault')\n"
    "sqlite.SqliteStore.purge = broken\n"
)


def test_a_failed_purge_affects_no_message(tmp_path: Path) -> None:
    """The purge runs on a thread of its own (at start, then hourly), never in a message's callback: a
    tempfail there would make the shop retry a review request already recorded, refused then as a duplicate
    of itself. Its failure is logged and counted, and review requests go on."""
    store_path = tmp_path / "store.sqlite"
    proc = start(tmp_path, "broken-purge", BROKEN_PURGE, store={"path": str(store_path)})
    try:
        with FakeMta(proc.socket) as mta:
            _, eom = mta.message("<shop@shop.test>", [BUYER], headers=[TAG, ("Subject", "Order 305-1234567-7654321")])
        assert eom[-1].command == c.SMFIR_ACCEPT, eom
        assert SqliteStore(store_path).buyer_for_order("305-1234567-7654321") == BUYER_KEY
        assert "store purge failed: injected purge fault; no message is affected" in proc.wait_log(
            "injected purge fault")
        url = re.search(r"metrics on (http://\S+)", proc.wait_log("metrics on http://")).group(1)
        with urllib.request.urlopen(url, timeout=10) as response:
            assert 'amzguard_store_errors_total{backend="sqlite",operation="purge"} 1.0' in response.read().decode()
    finally:
        assert proc.stop() == 0


LOCK_CHECK = (
    "import amzguard.adapter as adapter\n"
    "def checked(name):\n"
    "    original = getattr(adapter.AmzguardMilter, name)\n"
    "    def call(self, *args):\n"
    "        if self.snapshot.store.review_lock.locked():\n"
    "            raise RuntimeError(f'review lock held while writing {name} to the MTA')\n"
    "        return original(self, *args)\n"
    "    return call\n"
    "for name in ('addrcpt', 'delrcpt', 'chgheader'):\n"
    "    setattr(adapter.AmzguardMilter, name, checked(name))\n"
)


def test_review_lock_is_not_held_while_writing_to_the_mta(tmp_path: Path) -> None:
    """The lock serialises look-up and record of review requests across connections; holding it while a
    slow MTA socket takes the edits would stall every other review request."""
    proc = start(tmp_path, "lock", LOCK_CHECK, store={"path": str(tmp_path / "store.sqlite")})
    try:
        with FakeMta(proc.socket) as mta:
            _, eom = mta.message("<shop@shop.test>", [MARKED, OWNER],
                                 headers=[TAG, ("Subject", "Order 305-1111111-2222222")])  # fmt: skip
        commands = [r.command for r in eom]
        assert commands == [c.SMFIR_DELRCPT, c.SMFIR_ADDRCPT, c.SMFIR_CHGHEADER, c.SMFIR_ACCEPT], (eom, proc.log_text())
    finally:
        assert proc.stop() == 0


def _config(tmp_path: Path, **store: object):
    return parse_config({"store": {"path": str(tmp_path / "store.sqlite"), **store},
                         "channels": {"review": {"enabled": True, "token": REVIEW_TOKEN}}})  # fmt: skip


def test_reload_changing_only_store_on_error_keeps_the_store_and_its_lock(tmp_path: Path) -> None:
    first = Snapshot.of(_config(tmp_path, on_error="tempfail"))
    kept = Snapshot.of(_config(tmp_path, on_error="continue"), previous=first)
    assert kept.store is first.store and kept.store.review_lock is first.store.review_lock
    moved = Snapshot.of(_config(tmp_path, on_error="continue", retention_days=30), previous=kept)
    assert moved.store is not kept.store
