"""The milter process with the store: body reading for review requests, opt-outs, one request per order, and a
store that cannot be used. Driven over the milter protocol like the MTA would (PyPI miltertest)."""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from miltertest import constants as c

from amzguard.config import DEFAULT_REASON_TEXTS
from amzguard.store import OptOut, SqliteStore
from amzguard.policy import Reason
from tests.support.fake_mta import LOCAL_PEER, FakeMta
from tests.support.milter_process import REVIEW_TOKEN, MilterProcess, write_config

TAG = ("X-Amzguard-Channel", f"review {REVIEW_TOKEN}")
BUYER = "<q7x2k9m4p1z8w3v5@marketplace.amazon.de>"
BUYER_KEY = "q7x2k9m4p1z8w3v5@marketplace.amazon.de"
OPTED = "<blacklisted-90210@amazon.it>"
OPTED_KEY = "90210@amazon.it"
OWNER = "<owner@shop.test>"


def start(tmp_path: Path, name: str, **sections: object) -> MilterProcess:
    socket = f"unix:{tmp_path}/{name}.sock"
    config = write_config(tmp_path / f"{name}.yml", socket, **sections)
    return MilterProcess(config, socket, tmp_path / f"{name}.log").start()


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("optout-milter")


@pytest.fixture(scope="module")
def milter(store_dir: Path) -> Iterator[MilterProcess]:
    SqliteStore(store_dir / "store.sqlite").add([OptOut(OPTED_KEY)])
    proc = start(store_dir, "optout", store={"path": str(store_dir / "store.sqlite")})
    yield proc
    assert proc.stop() == 0, proc.log_text()


@pytest.fixture()
def store(store_dir: Path) -> SqliteStore:
    return SqliteStore(store_dir / "store.sqlite")


def eom_reply(eom) -> tuple[str, str]:
    *edits, reply = eom
    assert reply.command == c.SMFIR_REPLYCODE, eom
    # A refused tagged message loses its tag first (a bounce of it must not carry the secret).
    assert all(edit.command == c.SMFIR_CHGHEADER for edit in edits), eom
    return reply.fields["smtpcode"], reply.fields["text"]


def test_untagged_mail_skips_its_body(milter: MilterProcess) -> None:
    with FakeMta(milter.socket) as mta:
        _, eom = mta.message("<shop@shop.test>", [OWNER], body=["chunk one\r\n", "chunk two\r\n"])
        assert [reply.command for reply in mta.body_replies] == [c.SMFIR_SKIP]
    assert [reply.command for reply in eom] == [c.SMFIR_ACCEPT]


def test_review_request_order_id_from_a_later_body_chunk_then_duplicate_refused(
    milter: MilterProcess, store: SqliteStore
) -> None:
    order = "303-1111111-2222222"
    body = ["Dear customer,\r\n" * 200, f"how was order {order}?\r\n", "Regards\r\n"]
    with FakeMta(milter.socket) as mta:
        _, eom = mta.message("<reviews@shop.test>", [BUYER], headers=[TAG, ("Subject", "Your opinion")], body=body,
                             queue_id="4REVIEW0001")  # fmt: skip
        assert [reply.command for reply in mta.body_replies] == [c.SMFIR_CONTINUE] * 3  # read to the end
    assert eom[-1].command == c.SMFIR_ACCEPT
    assert store.buyer_for_order(order) == BUYER_KEY
    milter.wait_log(f"4REVIEW0001: review request for order {order}")
    # The same order again, id now in the subject, base64 body: refused with its own text.
    with FakeMta(milter.socket) as mta:
        _, eom = mta.message("<reviews@shop.test>", [BUYER], headers=[TAG, ("Subject", f"Order {order}")],
                             body=base64.encodebytes(b"again").decode(), queue_id="4REVIEW0002")  # fmt: skip
        assert [reply.command for reply in mta.body_replies] == [c.SMFIR_SKIP]  # id in subject: no body read
    code, text = eom_reply(eom)
    assert code == "550"
    assert text == f"5.7.1 <{BUYER_KEY}>: {DEFAULT_REASON_TEXTS[Reason.DUPLICATE_REVIEW]}"
    milter.wait_log(f"4REVIEW0002: from=<reviews@shop.test> rcpt=<{BUYER_KEY}> path=smtp stage=eom "
                    "channel=review decision=refuse reason=duplicate-review")  # fmt: skip


def test_opted_out_buyer_gets_reply_and_critical_but_no_review(milter: MilterProcess, store: SqliteStore) -> None:
    review = [TAG, ("Subject", "Order 303-3333333-4444444: your opinion")]
    for peer in (None, LOCAL_PEER):
        with FakeMta(milter.socket) as mta:
            kwargs = {"peer": peer} if peer else {}
            _, eom = mta.message("<reviews@shop.test>", [OPTED], headers=review, **kwargs)
        code, text = eom_reply(eom)
        assert code == "550"
        assert text == f"5.7.1 <blacklisted-90210@amazon.it>: {DEFAULT_REASON_TEXTS[Reason.OPTED_OUT]}"
    assert store.buyer_for_order("303-3333333-4444444") is None  # a refused request is not recorded
    # Mixed recipients: the others get it, the buyer is swapped for the opted-out stand-in.
    with FakeMta(milter.socket) as mta:
        _, eom = mta.message("<reviews@shop.test>", [OPTED, OWNER], headers=review)
    assert [reply.command for reply in eom][:2] == [c.SMFIR_DELRCPT, c.SMFIR_ADDRCPT_PAR]
    assert eom[1].fields["rcpt"] == "blacklisted-90210=amazon.it@opted-out.amzguard.invalid"
    for headers in ([("In-Reply-To", "<c0ffee.1@marketplace.amazon.it>")], [("Subject", "[IMPORTANT] address")]):
        with FakeMta(milter.socket) as mta:
            _, eom = mta.message("<support@shop.test>", [OPTED], headers=headers)
        assert [reply.command for reply in eom] == [c.SMFIR_DELRCPT, c.SMFIR_ADDRCPT, c.SMFIR_ACCEPT], headers
        assert eom[1].fields["rcpt"] == "<90210@amazon.it>"


def test_register_changes_apply_without_restart(milter: MilterProcess, store: SqliteStore) -> None:
    buyer = "<k4k4k4k4k4k4k4k4@marketplace.amazon.it>"
    headers = [TAG, ("Subject", "Order 303-5555555-6666666")]
    store.add([OptOut("k4k4k4k4k4k4k4k4@marketplace.amazon.it")])
    with FakeMta(milter.socket) as mta:
        _, eom = mta.message("<reviews@shop.test>", [buyer], headers=headers)
    assert eom_reply(eom)[0] == "550"
    store.remove(["k4k4k4k4k4k4k4k4@marketplace.amazon.it"])
    with FakeMta(milter.socket) as mta:
        _, eom = mta.message("<reviews@shop.test>", [buyer], headers=headers)
    assert eom[-1].command == c.SMFIR_ACCEPT


def test_without_review_channel_no_body_is_negotiated(tmp_path: Path) -> None:
    with start(tmp_path, "no-review", channels={"review": {"enabled": False}}) as proc:
        with FakeMta(proc.socket) as mta:
            assert mta.protocol & c.SMFIP_NOBODY


def test_unusable_store_tempfails_only_what_needs_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "store.sqlite"
    with start(tmp_path, "broken", store={"path": str(missing)}) as proc:
        proc.wait_log(f"opt-out store unavailable: {missing}: cannot create the store")
        with FakeMta(proc.socket) as mta:
            _, eom = mta.message("<reviews@shop.test>", [BUYER], headers=[TAG, ("Subject", "303-1-1")],
                                 queue_id="4BROKEN001")  # fmt: skip
        assert eom_reply(eom) == ("451", "4.7.1 amzguard opt-out store unavailable, try again later")
        proc.wait_log(f"4BROKEN001: opt-out store unavailable (lookup): {missing}: cannot create the store: "
                      "No such file or directory; message tempfailed (store.on_error=tempfail)")  # fmt: skip
        with FakeMta(proc.socket) as mta:  # ordinary mail and refusals never touch the store
            _, eom = mta.message("<shop@shop.test>", [OWNER, BUYER])
        assert [reply.command for reply in eom][-1] == c.SMFIR_ACCEPT
        # Once the directory exists, the store is created and used without a restart.
        missing.parent.mkdir()
        with FakeMta(proc.socket) as mta:
            _, eom = mta.message("<reviews@shop.test>", [BUYER], headers=[TAG, ("Subject", "303-7777777-8888888")])
        assert eom[-1].command == c.SMFIR_ACCEPT
        assert SqliteStore(missing).buyer_for_order("303-7777777-8888888") == BUYER_KEY


def test_unusable_store_with_on_error_continue(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "store.sqlite"
    with start(tmp_path, "continue", store={"path": str(missing), "on_error": "continue"}) as proc:
        with FakeMta(proc.socket) as mta:
            _, eom = mta.message("<reviews@shop.test>", [BUYER], headers=[TAG, ("Subject", "303-9999999-0000000")],
                                 queue_id="4CONTINUE1")  # fmt: skip
        assert eom[-1].command == c.SMFIR_ACCEPT
        proc.wait_log("4CONTINUE1: opt-out store unavailable (lookup)")
        proc.wait_log("message judged without it (store.on_error=continue)")


def test_thread_check_needs_the_buyers_message_to_have_passed(tmp_path: Path) -> None:
    sections = {"store": {"path": str(tmp_path / "store.sqlite")},
                "channels": {"review": {"enabled": False}, "reply": {"check": "thread"}}}  # fmt: skip
    with start(tmp_path, "thread", **sections) as proc:
        reply = [("In-Reply-To", "<buyer-msg-1@mail.marketplace.example>"), ("Subject", "Re: delivery")]
        with FakeMta(proc.socket) as mta:  # no buyer message seen yet: a reference alone is not enough
            _, eom = mta.message("<support@shop.test>", [BUYER], headers=reply)
        assert eom_reply(eom)[0] == "550"
        inbound = [("From", f"Max - Amazon Marketplace {BUYER.upper()}"),
                   ("Message-ID", "<buyer-msg-1@mail.marketplace.example>")]  # fmt: skip
        with FakeMta(proc.socket) as mta:
            _, eom = mta.message("<bounce-1@amazonses.example>", ["<support@shop.test>"], headers=inbound,
                                 base_headers=(("Date", "Sun, 22 Nov 2026 10:00:00 +0000"),))  # fmt: skip
        assert eom[-1].command == c.SMFIR_ACCEPT
        with FakeMta(proc.socket) as mta:
            _, eom = mta.message("<support@shop.test>", [BUYER], headers=reply)
        assert eom[-1].command == c.SMFIR_ACCEPT
        other_buyer = "<zz9zz9zz9zz9zz9z@marketplace.amazon.de>"
        with FakeMta(proc.socket) as mta:  # the same thread does not open the door to another buyer
            _, eom = mta.message("<support@shop.test>", [other_buyer], headers=reply)
        assert eom_reply(eom)[0] == "550"


def test_unusable_store_in_monitor_mode_changes_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "store.sqlite"
    with start(tmp_path, "monitor", mode="monitor", store={"path": str(missing)}) as proc:
        with FakeMta(proc.socket) as mta:
            _, eom = mta.message("<reviews@shop.test>", [BUYER], headers=[TAG, ("Subject", "303-1212121-3434343")],
                                 queue_id="4MONITOR01")  # fmt: skip
        assert [reply.command for reply in eom] == [c.SMFIR_ACCEPT]
        proc.wait_log("4MONITOR01: opt-out store unavailable (lookup)")
        proc.wait_log("message judged without it (store.on_error=tempfail)")


def test_store_locked_by_another_process_tempfails_review_requests_only(tmp_path: Path) -> None:
    """Another process holds the store's write lock past the busy timeout (a long import, a backup tool):
    a review request, which must be recorded, waits (451, the MTA retries); other mail is not held up."""
    path = tmp_path / "store.sqlite"
    SqliteStore(path).add([OptOut(OPTED_KEY)])
    with start(tmp_path, "locked", store={"path": str(path)}) as proc:
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            with FakeMta(proc.socket) as mta:
                _, eom = mta.message("<reviews@shop.test>", [BUYER], headers=[TAG, ("Subject", "303-1111111-2222222")],
                                     queue_id="4LOCKED01")  # fmt: skip
            assert eom_reply(eom) == ("451", "4.7.1 amzguard opt-out store unavailable, try again later")
            proc.wait_log("4LOCKED01: opt-out store unavailable (record)")  # WAL: readers pass, the write waits
            with FakeMta(proc.socket) as mta:
                _, eom = mta.message("<shop@shop.test>", [OWNER, BUYER])
            assert eom[-1].command == c.SMFIR_ACCEPT  # untagged mail never waits for the store
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        with FakeMta(proc.socket) as mta:  # the retry after the lock is gone passes
            _, eom = mta.message("<reviews@shop.test>", [BUYER], headers=[TAG, ("Subject", "303-1111111-2222222")])
        assert eom[-1].command == c.SMFIR_ACCEPT
        assert proc.alive()
