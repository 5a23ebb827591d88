"""``channels.review.recognise`` through the milter protocol against the real milter process: the SASL
login arrives as ``{auth_authen}`` at MAIL FROM (Postfix's default milter_mail_macros), the client as the
connect callback's address; a missing macro means "not met" (refused as order mail), logged once, no crash.
Addresses, logins and subjects are made up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from miltertest import constants as c

from tests.support.fake_mta import LOCAL_PEER, SMTP_PEER, FakeMta
from tests.support.milter_process import MilterProcess, write_config

BUYER = "<q7x2k9m4p1z8w3v5@marketplace.amazon.de>"
TOOL = "review-tool"
ORDERS = iter(f"302-1234567-{n:07d}" for n in range(1, 1000))
ENTRIES = [{"sasl_login": TOOL}, {"client": "192.0.2.0/24", "sender": "www-data@shop.test"}]


@pytest.fixture(scope="module")
def milter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilterProcess]:
    tmp = tmp_path_factory.mktemp("recognise")
    socket = f"unix:{tmp}/m.sock"
    channels = {"review": {"enabled": True, "recognise": ENTRIES},  # no secret: the tag is off
                "reply": {"enabled": False}, "critical": {"enabled": False}}  # fmt: skip
    proc = MilterProcess(write_config(tmp / "m.yml", socket, channels=channels), socket, tmp / "m.log").start()
    yield proc
    assert proc.stop() == 0


def send(milter: MilterProcess, sender: str, login: str | None, peer=SMTP_PEER):
    """One message; the RCPT reply and the final reply (None when refused at RCPT)."""
    with FakeMta(milter.socket) as mta:
        mta.connect(peer)
        if login is not None:
            mta.macros(c.SMFIC_MAIL, **{"{auth_authen}": login})
        mta.mail(sender)
        rcpt = mta.rcpt(BUYER)
        if rcpt is not None and rcpt.command == c.SMFIR_REPLYCODE:
            return rcpt, None
        mta.macros(c.SMFIC_DATA, i="4XRECOG1")
        mta.data()
        for name, value in [("From", sender), ("Subject", f"Wie war Ihre Bestellung {next(ORDERS)}?")]:
            mta.header(name, value)
        mta.eoh()
        mta.body("Wie zufrieden sind Sie? (invented wording)\r\n")
        return rcpt, mta.eom("4XRECOG1")[-1]


def test_sasl_login_recognises_and_a_missing_or_wrong_login_is_refused_at_rcpt(milter: MilterProcess) -> None:
    rcpt, final = send(milter, "tool@shop.test", TOOL)
    assert rcpt is None or rcpt.command == c.SMFIR_CONTINUE
    assert final is not None and final.command in (c.SMFIR_ACCEPT, c.SMFIR_CONTINUE), final
    assert "recognised_by=sasl" in milter.wait_log("recognised_by=sasl")
    for login in (None, "someone-else", ""):
        rcpt, final = send(milter, "tool@shop.test", login)
        assert final is None and rcpt is not None and rcpt.fields["smtpcode"] == "550", (login, rcpt)
    log = milter.wait_log("no {auth_authen} at MAIL FROM")
    assert log.count("no {auth_authen} at MAIL FROM") == 1  # once per process, not per message


def test_client_network_and_sender_together(milter: MilterProcess) -> None:
    _, final = send(milter, "www-data@shop.test", None, peer=("shop.example", "192.0.2.80", 41000))
    assert final is not None and final.command in (c.SMFIR_ACCEPT, c.SMFIR_CONTINUE), final
    assert "recognised_by=client+sender" in milter.wait_log("recognised_by=client+sender")
    rcpt, final = send(milter, "www-data@shop.test", None, peer=("elsewhere.example", "198.51.100.80", 41000))
    assert final is None and rcpt is not None and rcpt.fields["smtpcode"] == "550"


def test_the_sendmail_path_has_no_client_even_from_loopback(milter: MilterProcess) -> None:
    """cleanup(8) reports every local submission as localhost/127.0.0.1 port 0: no client entry may meet it
    (here: none would anyway, but neither does a login macro an MTA might send)."""
    rcpt, final = send(milter, "www-data@shop.test", TOOL, peer=LOCAL_PEER)
    assert rcpt is None or rcpt.command == c.SMFIR_CONTINUE  # never refused at RCPT on that path
    assert final is not None and final.command == c.SMFIR_REPLYCODE and final.fields["smtpcode"] == "550", final
    assert "only sender and subject entries" in milter.wait_log("only sender and subject entries")
