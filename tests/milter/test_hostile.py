"""Hostile or unusual milter-protocol traffic: the process stays up and answers every later connection right."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest
from miltertest import constants as c

from tests.support.fake_mta import LOCAL_PEER, FakeMta
from tests.support.milter_process import REVIEW_TOKEN, MilterProcess, write_config

BUYER = "<q7x2k9m4p1z8w3v5@marketplace.amazon.de>"
OWNER = "<owner@shop.test>"
TAG = "X-Amzguard-Channel"


@pytest.fixture(scope="module")
def milter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilterProcess]:
    tmp = tmp_path_factory.mktemp("hostile")
    socket_spec = f"unix:{tmp}/hostile.sock"
    proc = MilterProcess(write_config(tmp / "c.yml", socket_spec), socket_spec, tmp / "milter.log").start()
    yield proc
    assert proc.stop() == 0, proc.log_text()
    assert "Traceback" not in proc.log_text()


def assert_still_serves(milter: MilterProcess) -> None:
    """A fresh, ordinary transaction still gets the right answers."""
    assert milter.alive()
    with FakeMta(milter.socket) as mta:
        rcpts, eom = mta.message("<shop@shop.test>", [BUYER, OWNER])
    assert [r.command for r in eom] == [c.SMFIR_DELRCPT, c.SMFIR_ADDRCPT_PAR, c.SMFIR_ACCEPT]


def test_no_macros_at_all(milter: MilterProcess) -> None:
    with FakeMta(milter.socket) as mta:
        _, eom = mta.message("<shop@shop.test>", [BUYER], queue_id=None)
    assert eom[-1].command == c.SMFIR_REPLYCODE and eom[-1].fields["smtpcode"] == "550"
    milter.wait_log("NOQUEUE: from=<shop@shop.test> rcpt=<q7x2k9m4p1z8w3v5@marketplace.amazon.de> path=smtp "
                    "stage=eom")  # fmt: skip
    assert_still_serves(milter)


def test_null_sender_as_in_bounces(milter: MilterProcess) -> None:
    with FakeMta(milter.socket) as mta:
        _, eom = mta.message("<>", [OWNER, BUYER], peer=LOCAL_PEER)
    # sendmail(1) path: a delete is not certain to match what Postfix queued, so the message is refused whole.
    assert [r.command for r in eom] == [c.SMFIR_REPLYCODE]
    milter.wait_log("from=<> rcpt=<owner@shop.test> path=sendmail stage=eom channel=none decision=deliver")


def test_a_thousand_recipients(milter: MilterProcess) -> None:
    buyers = [f"<b{i:04d}x@marketplace.amazon.fr>" for i in range(500)]
    others = [f"<user{i:04d}@partner.example>" for i in range(500)]
    with FakeMta(milter.socket) as mta:
        rcpts, eom = mta.message("<shop@shop.test>", [*buyers, *others])
    assert all(reply.command == c.SMFIR_CONTINUE for reply in rcpts.values())
    deleted = [r.fields["rcpt"] for r in eom if r.command == c.SMFIR_DELRCPT]
    added = [r.fields["rcpt"] for r in eom if r.command == c.SMFIR_ADDRCPT_PAR]
    assert sorted(deleted) == sorted(b[1:-1] for b in buyers)  # as smtpd queued them: without <>
    assert len(added) == 500 and all(a.endswith("@buyer-mail.amzguard.invalid") for a in added)
    assert eom[-1].command == c.SMFIR_ACCEPT
    assert_still_serves(milter)


def test_long_8bit_folded_and_duplicated_headers(milter: MilterProcess) -> None:
    headers = [
        ("Subject", "\udcfc\udce4\udcf6 " * 3000),  # 8-bit Latin-1 octets, not UTF-8, 12k long
        ("X-Long", "x" * 60000),
        (TAG, f"review\r\n\t{REVIEW_TOKEN}"),  # folded, still valid
        (TAG, "review \udcff\udcfe"),
        ("x-amzguard-channel", f"review {REVIEW_TOKEN}"),
    ]
    with FakeMta(milter.socket) as mta:
        _, eom = mta.message("<shop@shop.test>", [BUYER], headers=headers)
    assert [r.command for r in eom] == [c.SMFIR_CHGHEADER] * 3 + [c.SMFIR_ACCEPT]
    assert [r.fields["index"] for r in eom[:3]] == [3, 2, 1]
    assert_still_serves(milter)


def test_many_tag_headers_are_all_removed(milter: MilterProcess) -> None:
    headers = [(TAG, f"review wrong-{i:06d}-0000000") for i in range(120)]
    with FakeMta(milter.socket) as mta:
        _, eom = mta.message("<shop@shop.test>", [OWNER], headers=headers)
    deletions = [r.fields["index"] for r in eom if r.command == c.SMFIR_CHGHEADER]
    assert deletions == list(range(120, 0, -1))


@pytest.mark.parametrize("stage", ["connect", "mail", "rcpt", "header", "eom-sent"])
def test_connection_dropped_mid_message(milter: MilterProcess, stage: str) -> None:
    mta = FakeMta(milter.socket)
    mta.connect()
    if stage != "connect":
        mta.mail("<shop@shop.test>")
    if stage in ("rcpt", "header", "eom-sent"):
        mta.rcpt(BUYER)
        mta.data()
    if stage in ("header", "eom-sent"):
        mta.header("Subject", "cut off")
    if stage == "eom-sent":
        mta.conn._send(c.SMFIC_BODYEOB)
    mta.sock.close()
    assert_still_serves(milter)


def test_abort_between_messages_resets_state(milter: MilterProcess) -> None:
    with FakeMta(milter.socket) as mta:
        mta.connect()
        mta.mail("<shop@shop.test>")
        mta.rcpt(BUYER)
        mta.data()
        mta.header(TAG, f"review {REVIEW_TOKEN}")
        mta.abort()
        # The next message on the same connection must not inherit the buyer or the tag.
        mta.mail("<shop@shop.test>")
        mta.rcpt(OWNER)
        mta.data()
        mta.header("Subject", "second")
        assert [r.command for r in mta.eom()] == [c.SMFIR_ACCEPT]
        mta.mail("<shop@shop.test>")
        mta.rcpt(BUYER)
        mta.data()
        mta.header("Subject", "third, untagged")
        assert mta.eom()[-1].fields["smtpcode"] == "550"


def test_garbage_bytes_on_the_socket(milter: MilterProcess) -> None:
    for payload in (b"\x00\x00\x00\x05Zjunk", b"\xff" * 64, struct.pack(">I", 2**31) + b"O", b"GET / HTTP/1.0\r\n\r\n"):
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.settimeout(5)
        raw.connect(milter.socket[len("unix:"):])
        raw.sendall(payload)
        raw.close()
    assert_still_serves(milter)
