"""Mail without buyers is accepted at DATA (issue 13), through the milter protocol on the real milter process.

What Postfix then does (no header, body or end-of-message events) is checked on a real Postfix in
tests/e2e/test_fastpath.py; here: what amzguard negotiates and answers, per message of one connection.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from miltertest import constants as c

from tests.support.fake_mta import LOCAL_PEER, FakeMta
from tests.support.milter_process import REVIEW_TOKEN, MilterProcess, write_config

REVIEWER = "<review@shop.test>"
SHOP = "<shop@shop.test>"
TAG = ("X-Amzguard-Channel", f"review {REVIEW_TOKEN}")
BUYER = "<q7x2k9m4p1z8w3v5@marketplace.amazon.de>"
MARKED = "<blacklisted-40417@amazon.fr>"
OWNER = "<owner@shop.test>"
PARTNER = "<partner@example.org>"
ONLY_REVIEWER = {"allowed_senders": ["review@shop.test"]}
CHANNELS = {
    "review": {"enabled": True, "token": REVIEW_TOKEN, **ONLY_REVIEWER},
    "reply": ONLY_REVIEWER,
    "critical": ONLY_REVIEWER,
}


def start(tmp_path: Path, name: str, **sections: object) -> MilterProcess:
    socket = f"unix:{tmp_path}/{name}.sock"
    config = write_config(tmp_path / f"{name}.yml", socket, **sections)
    return MilterProcess(config, socket, tmp_path / f"{name}.log").start()


@pytest.fixture(scope="module")
def milter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilterProcess]:
    proc = start(tmp_path_factory.mktemp("fastpath"), "fast", channels=CHANNELS)
    yield proc
    assert proc.stop() == 0, proc.log_text()


def kinds(replies) -> list[str]:
    return [reply.command for reply in replies]


def test_data_answers_on_unix_when_the_fast_path_is_possible(milter: MilterProcess) -> None:
    with FakeMta(milter.socket) as mta:
        assert not mta.protocol & c.SMFIP_NR_DATA  # DATA must answer to accept there
        for flag in (c.SMFIP_NR_CONN, c.SMFIP_NR_MAIL, c.SMFIP_NR_HDR):
            assert mta.protocol & flag, hex(flag)


@pytest.mark.parametrize("peer", [None, LOCAL_PEER], ids=["smtp", "sendmail"])
def test_mail_without_buyers_is_accepted_at_data(milter: MilterProcess, peer) -> None:
    queue_id = "4FAST00001" if peer is None else "4FAST00002"
    path = "smtp" if peer is None else "sendmail"
    with FakeMta(milter.socket) as mta:
        mta.connect(*(() if peer is None else (peer,)))
        mta.mail(SHOP)
        assert mta.rcpt(OWNER).command == c.SMFIR_CONTINUE
        assert mta.rcpt(PARTNER).command == c.SMFIR_CONTINUE
        mta.macros(c.SMFIC_DATA, i=queue_id)
        assert mta.data().command == c.SMFIR_ACCEPT
    for rcpt in ("owner@shop.test", "partner@example.org"):
        milter.wait_log(f"{queue_id}: from=<shop@shop.test> rcpt=<{rcpt}> path={path} stage=data channel=none "
                        "decision=deliver reason=not-buyer")  # fmt: skip


def test_mail_that_may_carry_the_secret_goes_to_end_of_message(milter: MilterProcess) -> None:
    """The review mailer's mail to a non-buyer may carry the tag: only end of message deletes it."""
    with FakeMta(milter.socket) as mta:
        rcpts, replies = mta.message(REVIEWER, [OWNER], headers=[TAG], queue_id="4FAST00003")
    assert rcpts[OWNER].command == c.SMFIR_CONTINUE
    assert kinds(replies) == [c.SMFIR_CHGHEADER, c.SMFIR_ACCEPT]
    milter.wait_log("4FAST00003: from=<review@shop.test> rcpt=<owner@shop.test> path=smtp stage=eom")


def test_a_bounce_goes_to_end_of_message_where_its_body_is_searched_for_the_secret(milter: MilterProcess) -> None:
    with FakeMta(milter.socket) as mta:
        rcpts, replies = mta.message("<>", [PARTNER], body=f"the original: X-Amzguard-Channel: review {REVIEW_TOKEN}\r\n",
                                     queue_id="4FAST00005")  # fmt: skip
    assert kinds(replies) == [c.SMFIR_REPLYCODE] and replies[0].fields["smtpcode"] == "550"


@pytest.mark.parametrize("version", ["8.17.1.9", None], ids=["sendmail", "unknown-mta"])
def test_only_behind_postfix(milter: MilterProcess, version: str | None) -> None:
    """Sendmail has no shipped header checks to take a tag out of mail accepted at DATA: end of message."""
    with FakeMta(milter.socket) as mta:
        mta.connect(version=version)
        mta.mail(SHOP)
        assert mta.rcpt(OWNER).command == c.SMFIR_CONTINUE
        assert mta.data().command == c.SMFIR_CONTINUE


def test_buyer_recipient_on_sendmail_path_goes_to_end_of_message(milter: MilterProcess) -> None:
    with FakeMta(milter.socket) as mta:
        rcpts, replies = mta.message(SHOP, [OWNER, BUYER], peer=LOCAL_PEER, queue_id="4FAST00004")
    assert kinds(replies) == [c.SMFIR_REPLYCODE]  # refused whole on this path (see docs/recipients.md)
    milter.wait_log("4FAST00004: from=<shop@shop.test> rcpt=<q7x2k9m4p1z8w3v5@marketplace.amazon.de> "
                    "path=sendmail stage=eom channel=none decision=refuse reason=buyer-mail")  # fmt: skip


def test_one_connection_mixing_ordinary_and_buyer_mail(milter: MilterProcess) -> None:
    """Each message is judged on its own: a fast-pathed one leaves no state for the next, and the
    recipients Postfix refused at RCPT do not count as buyers still in the envelope."""
    with FakeMta(milter.socket) as mta:
        _, first = mta.message(SHOP, [OWNER], queue_id="4FAST00011")
        mta.abort()  # smtpd's mail_reset after every message
        rcpts, second = mta.message(REVIEWER, [MARKED, OWNER], headers=[TAG], queue_id="4FAST00012")
        mta.abort()
        rcpts_third, third = mta.message(SHOP, [BUYER, PARTNER], queue_id="4FAST00013")
        mta.abort()
        _, fourth = mta.message(REVIEWER, [BUYER], queue_id="4FAST00014")
        mta.abort()
        _, fifth = mta.message(SHOP, [PARTNER], queue_id="4FAST00015")
    assert kinds(first) == [c.SMFIR_ACCEPT] and first[0].command == c.SMFIR_ACCEPT
    assert rcpts[MARKED].command == c.SMFIR_CONTINUE
    assert kinds(second) == [c.SMFIR_DELRCPT, c.SMFIR_ADDRCPT, c.SMFIR_CHGHEADER, c.SMFIR_ACCEPT]
    # the shop's buyer mail is refused at RCPT; what is left has no buyer: accepted at DATA
    assert rcpts_third[BUYER].command == c.SMFIR_REPLYCODE
    assert kinds(third) == [c.SMFIR_ACCEPT]
    assert kinds(fourth) == [c.SMFIR_REPLYCODE]  # untagged from the review mailer: refused at eom
    assert kinds(fifth) == [c.SMFIR_ACCEPT]
    log = milter.wait_log("4FAST00015: ")
    for queue_id, stage in [("4FAST00011", "data"), ("4FAST00012", "eom"), ("4FAST00013", "data"),
                            ("4FAST00014", "eom"), ("4FAST00015", "data")]:  # fmt: skip
        assert f"{queue_id}: " in log and all(
            f"stage={stage}" in line for line in log.splitlines() if f"{queue_id}: " in line and "stage=" in line
        ), queue_id
    assert "from=<shop@shop.test> rcpt=<q7x2k9m4p1z8w3v5@marketplace.amazon.de> path=smtp stage=rcpt" in log


@pytest.mark.parametrize(
    "channels",
    [
        {"review": {"enabled": True, "token": REVIEW_TOKEN}},  # any sender may carry the secret
        {"review": {"enabled": False}, "reply": {"check": "thread"}},  # buyers' mail to the shop is recorded
    ],
    ids=["review-open-to-all", "reply-thread"],
)
def test_no_fast_path_when_a_rule_reads_mail_without_buyers(tmp_path: Path, channels: dict) -> None:
    proc = start(tmp_path, "slow", channels=channels)
    try:
        with FakeMta(proc.socket) as mta:
            assert mta.protocol & c.SMFIP_NR_DATA  # nothing to decide at DATA: it stays no-reply
            _, replies = mta.message(SHOP, [OWNER], queue_id="4SLOW00001")
        assert kinds(replies) == [c.SMFIR_ACCEPT]
        proc.wait_log("4SLOW00001: from=<shop@shop.test> rcpt=<owner@shop.test> path=smtp stage=eom")
    finally:
        assert proc.stop() == 0, proc.log_text()


def test_monitor_mode_takes_the_fast_path_too(tmp_path: Path) -> None:
    proc = start(tmp_path, "monitor", channels=CHANNELS, mode="monitor")
    try:
        with FakeMta(proc.socket) as mta:
            _, replies = mta.message(SHOP, [OWNER], queue_id="4MON000001")
        assert kinds(replies) == [c.SMFIR_ACCEPT]
        proc.wait_log("4MON000001: from=<shop@shop.test> rcpt=<owner@shop.test> path=smtp stage=data "
                      "channel=none decision=would-deliver reason=not-buyer")  # fmt: skip
    finally:
        assert proc.stop() == 0, proc.log_text()
