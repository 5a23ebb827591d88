"""The real milter process on its socket, driven through the milter protocol (PyPI miltertest)."""

from __future__ import annotations

import os
import stat
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from miltertest import constants as c

from amzguard.server import disable_nagle
from tests.e2e.harness import free_port
from tests.support.fake_mta import LOCAL_PEER, FakeMta
from tests.support.milter_process import REVIEW_TOKEN, MilterProcess, write_config

TAG = ("X-Amzguard-Channel", f"review {REVIEW_TOKEN}")
BUYER = "<q7x2k9m4p1z8w3v5@marketplace.amazon.de>"
MARKED = "<blacklisted-40417@amazon.fr>"
OWNER = "<owner@shop.test>"


def start(tmp_path: Path, name: str, prelude: str = "", **sections: object) -> MilterProcess:
    socket = f"unix:{tmp_path}/{name}.sock"
    config = write_config(tmp_path / f"{name}.yml", socket, **sections)
    return MilterProcess(config, socket, tmp_path / f"{name}.log", prelude).start()


@pytest.fixture(scope="module")
def milter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilterProcess]:
    proc = start(tmp_path_factory.mktemp("milter"), "review-on")
    yield proc
    assert proc.stop() == 0, proc.log_text()


def eom_kinds(replies) -> list[str]:
    return [reply.command for reply in replies]


def test_socket_is_not_world_writable(milter: MilterProcess) -> None:
    mode = os.stat(milter.socket[len("unix:"):]).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


def test_negotiates_only_what_it_uses(milter: MilterProcess) -> None:
    with FakeMta(milter.socket) as mta:
        expected = c.SMFIF_ADDRCPT | c.SMFIF_ADDRCPT_PAR | c.SMFIF_DELRCPT | c.SMFIF_CHGHDRS
        assert mta.actions == expected
        # no HELO, no EOH, no unknown commands; no replies for connect/MAIL/DATA/headers
        for flag in (c.SMFIP_NOHELO, c.SMFIP_NOEOH, c.SMFIP_NOUNKNOWN, c.SMFIP_NR_CONN,
                     c.SMFIP_NR_MAIL, c.SMFIP_NR_DATA, c.SMFIP_NR_HDR):  # fmt: skip
            assert mta.protocol & flag, hex(flag)
        assert not mta.protocol & c.SMFIP_NR_RCPT  # RCPT answers: it may refuse there
        # The review channel is on: bodies are offered (a review request's order id may be there), and
        # the milter answers each chunk so that it can tell the MTA to skip the rest.
        assert not mta.protocol & (c.SMFIP_NOBODY | c.SMFIP_NR_BODY)


def test_over_tcp_data_replies(tmp_path: Path) -> None:
    """Over inet: an unanswered DATA would let Nagle and delayed ACKs stall Postfix ~40 ms per message; the
    other no-reply steps travel in Postfix's buffer with the next packet that waits for a reply."""
    socket = f"inet:{free_port()}@127.0.0.1"
    config = write_config(tmp_path / "inet.yml", socket)
    with MilterProcess(config, socket, tmp_path / "inet.log") as proc, FakeMta(proc.socket) as mta:
        # (bodies are offered: the review channel is on, see test_negotiates_only_what_it_uses)
        for flag in (c.SMFIP_NOHELO, c.SMFIP_NOEOH, c.SMFIP_NOUNKNOWN):
            assert mta.protocol & flag, hex(flag)
        for flag in (c.SMFIP_NR_CONN, c.SMFIP_NR_MAIL, c.SMFIP_NR_HDR):
            assert mta.protocol & flag, hex(flag)
        assert not mta.protocol & c.SMFIP_NR_DATA
        assert not mta.protocol & c.SMFIP_NR_RCPT
        rcpts, eom = mta.message("<shop@shop.test>", [MARKED], headers=[TAG])
        log = proc.log_text()
    assert rcpts[MARKED].command == c.SMFIR_CONTINUE
    assert eom_kinds(eom) == [c.SMFIR_DELRCPT, c.SMFIR_ADDRCPT, c.SMFIR_CHGHEADER, c.SMFIR_ACCEPT]
    assert "listening on" in log and "TCP_NODELAY" not in log  # the listener was found and set


def test_nodelay_is_set_on_the_listener_of_that_port_only() -> None:
    """Each change at end of message is a packet Postfix does not answer; with Nagle on, each would wait
    for a delayed ACK. Connections inherit TCP_NODELAY from the listener libmilter opened."""
    with socket.create_server(("127.0.0.1", 0)) as ours, socket.create_server(("127.0.0.1", 0)) as other:
        assert disable_nagle(ours.getsockname()[1])
        with socket.create_connection(ours.getsockname()):  # held open while the server accepts
            accepted, _ = ours.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert ours.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert not other.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert not disable_nagle(free_port())


def test_other_recipient_is_accepted_unchanged(milter: MilterProcess) -> None:
    with FakeMta(milter.socket) as mta:
        rcpts, eom = mta.message("<shop@shop.test>", [OWNER], queue_id="4AAAAAAAA1")
    assert rcpts[OWNER].command == c.SMFIR_CONTINUE
    assert eom_kinds(eom) == [c.SMFIR_ACCEPT]
    milter.wait_log("4AAAAAAAA1: from=<shop@shop.test> rcpt=<owner@shop.test> path=smtp stage=eom "
                    "channel=none decision=deliver reason=not-buyer")  # fmt: skip


def test_buyer_only_is_rejected_at_end_of_message(milter: MilterProcess) -> None:
    with FakeMta(milter.socket) as mta:
        rcpts, eom = mta.message("<shop@shop.test>", [BUYER], queue_id="4AAAAAAAA2")
    assert rcpts[BUYER].command == c.SMFIR_CONTINUE  # a tag could still come: no refusal at RCPT
    assert eom_kinds(eom) == [c.SMFIR_REPLYCODE]
    assert eom[0].fields["smtpcode"] == "550"
    assert eom[0].fields["text"].startswith("5.7.1 <q7x2k9m4p1z8w3v5@marketplace.amazon.de>: Amazon forbids")
    milter.wait_log("4AAAAAAAA2: from=<shop@shop.test> rcpt=<q7x2k9m4p1z8w3v5@marketplace.amazon.de> "
                    "path=smtp stage=eom channel=none decision=refuse reason=buyer-mail")  # fmt: skip


def test_mixed_recipients_swap_the_buyer_for_a_bounce(milter: MilterProcess) -> None:
    with FakeMta(milter.socket) as mta:
        _, eom = mta.message("<shop@shop.test>", [MARKED, OWNER])
    assert eom_kinds(eom) == [c.SMFIR_DELRCPT, c.SMFIR_ADDRCPT_PAR, c.SMFIR_ACCEPT]
    assert eom[0].fields == {"rcpt": MARKED.strip("<>")}  # the text smtpd queued
    assert eom[1].fields == {
        "rcpt": "blacklisted-40417=amazon.fr@buyer-mail.amzguard.invalid",
        "args": ["ORCPT=rfc822;blacklisted-40417@amazon.fr"],
    }


def test_review_tag_unmarks_and_is_removed(milter: MilterProcess) -> None:
    with FakeMta(milter.socket) as mta:
        _, eom = mta.message("<shop@shop.test>", [MARKED, BUYER], headers=[TAG, ("Subject", "How was it?")])
    assert eom_kinds(eom) == [c.SMFIR_DELRCPT, c.SMFIR_ADDRCPT, c.SMFIR_CHGHEADER, c.SMFIR_ACCEPT]
    assert eom[1].fields == {"rcpt": "<40417@amazon.fr>"}
    assert eom[2].fields == {"index": 1, "name": "X-Amzguard-Channel", "value": ""}


@pytest.mark.parametrize("value", ["review wrong-token-0000000000", "", f"review {REVIEW_TOKEN[:-1]}"])
def test_bad_tag_is_untagged_and_still_removed(milter: MilterProcess, value: str) -> None:
    with FakeMta(milter.socket) as mta:
        _, eom = mta.message("<shop@shop.test>", [BUYER, OWNER], headers=[("X-Amzguard-Channel", value)])
    assert eom_kinds(eom) == [c.SMFIR_DELRCPT, c.SMFIR_ADDRCPT_PAR, c.SMFIR_CHGHEADER, c.SMFIR_ACCEPT]


def test_local_submission_is_never_refused_at_rcpt(tmp_path: Path) -> None:
    # No channel at all (reply and critical are on by default), so a buyer is refused at RCPT on SMTP.
    no_channels = {name: {"enabled": False} for name in ("review", "reply", "critical")}
    proc = start(tmp_path, "review-off", channels=no_channels)
    try:
        with FakeMta(proc.socket) as mta:
            rcpts, eom = mta.message("<shop@shop.test>", [BUYER], peer=("client.example.net", "192.0.2.7", 4025))
        assert rcpts[BUYER].command == c.SMFIR_REPLYCODE and rcpts[BUYER].fields["smtpcode"] == "550"
        assert eom == []
        with FakeMta(proc.socket) as mta:
            rcpts, eom = mta.message("shop@shop.test", ["q7x2k9m4p1z8w3v5@marketplace.amazon.de"], peer=LOCAL_PEER)
        assert all(reply is None or reply.command == c.SMFIR_CONTINUE for reply in rcpts.values())
        assert eom_kinds(eom) == [c.SMFIR_REPLYCODE] and eom[0].fields["smtpcode"] == "550"
        proc.wait_log("path=sendmail stage=eom channel=none decision=refuse reason=buyer-mail")
        proc.wait_log("NOQUEUE: from=<shop@shop.test> rcpt=<q7x2k9m4p1z8w3v5@marketplace.amazon.de> path=smtp "
                      "stage=rcpt channel=none decision=refuse reason=buyer-mail")  # fmt: skip
    finally:
        assert proc.stop() == 0


def test_odd_input_never_takes_the_process_down(milter: MilterProcess) -> None:
    odd_recipients = ["<>", "", "<\"unterminated@marketplace.amazon.de>", "<" + "a" * 5000 + "@x.example>",
                      "<@a,@b:blacklisted-1@amazon.fr>", "<\udcff@marketplace.amazon.de>"]  # fmt: skip
    with FakeMta(milter.socket) as mta:
        mta.connect()
        mta.mail("<>")
        for raw in odd_recipients:
            mta.rcpt(raw or "<>")
        mta.data()
        # (an empty header name is not sendable: libmilter itself drops such a connection)
        for name, value in [("X-Amzguard-Channel", "x" * 20000), ("Subject", "\udcfe" * 3)]:
            mta.header(name, value)
        replies = mta.eom()
    assert replies[-1].command in (c.SMFIR_REPLYCODE, c.SMFIR_ACCEPT)
    # a connection dropped mid-message
    mta = FakeMta(milter.socket)
    mta.connect()
    mta.mail("<shop@shop.test>")
    mta.rcpt(BUYER)
    mta.sock.close()
    # an aborted transaction followed by a clean one on the same connection
    with FakeMta(milter.socket) as mta:
        mta.connect()
        mta.mail("<shop@shop.test>")
        mta.rcpt(BUYER)
        mta.abort()
        mta.mail("<shop@shop.test>")
        mta.rcpt(OWNER)
        mta.data()
        mta.header("Subject", "after abort")
        assert eom_kinds(mta.eom()) == [c.SMFIR_ACCEPT]
    assert milter.alive()
    with FakeMta(milter.socket) as mta:
        _, eom = mta.message("<shop@shop.test>", [BUYER])
    assert eom_kinds(eom) == [c.SMFIR_REPLYCODE]


def test_error_in_a_header_is_answered_at_end_of_message(tmp_path: Path) -> None:
    # Fault injection from outside the product code: the header step fails on every field.
    prelude = "import amzguard.transaction as transaction\ntransaction.MAX_FIELDS_PER_HEADER = object()\n"
    proc = start(tmp_path, "faulty-header", prelude=prelude)
    try:
        with FakeMta(proc.socket) as mta:
            _, eom = mta.message("<shop@shop.test>", [OWNER], headers=[TAG])
        assert eom_kinds(eom) == [c.SMFIR_REPLYCODE] and eom[0].fields["smtpcode"] == "451"
        text = proc.wait_log("message not judged after failure in header callback")
        assert "internal error in header callback" in text and "TypeError" in text
        assert proc.alive()
    finally:
        assert proc.stop() == 0


@pytest.mark.parametrize(("on_error", "expected"), [("tempfail", c.SMFIR_REPLYCODE), ("accept", c.SMFIR_ACCEPT)])
def test_internal_error_gives_the_configured_answer(tmp_path: Path, on_error: str, expected: str) -> None:
    # Fault injection from outside the product code: the child's policy raises on every decision.
    prelude = (
        "import amzguard.policy as policy\n"
        "def broken(self, facts, recipient):\n"
        "    raise RuntimeError('injected fault')\n"
        "policy.Policy.decide = broken\n"
    )
    proc = start(tmp_path, f"faulty-{on_error}", prelude=prelude, milter={
        "socket": f"unix:{tmp_path}/faulty-{on_error}.sock", "on_error": on_error})  # fmt: skip
    try:
        for _ in range(3):
            with FakeMta(proc.socket) as mta:
                _, eom = mta.message("<shop@shop.test>", [OWNER])
            assert eom_kinds(eom) == [expected]
            if expected == c.SMFIR_REPLYCODE:
                assert eom[0].fields["smtpcode"] == "451"
                assert eom[0].fields["text"].startswith("4.7.1 ")
        text = proc.wait_log("RuntimeError: injected fault")
        assert "internal error in eom callback" in text and "Traceback (most recent call last)" in text
        assert proc.alive()
    finally:
        assert proc.stop() == 0
