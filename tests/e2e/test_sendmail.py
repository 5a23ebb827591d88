"""amzguard behind a real Sendmail, wired with the shipped etc/sendmail/amzguard.mc.

On Sendmail every connection a milter sees is SMTP (local submissions reach the MTA through the MSP over
SMTP to localhost), so refusals at RCPT are legal there and happen as on Postfix's SMTP path. All buyer
addresses are made up.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import REVIEW_SENDER, REVIEW_SENDER_CHANNELS
from tests.e2e.harness import Sink, make_message, smtp_transaction, unique_token
from tests.e2e.sendmail_harness import SendmailInstance, SendmailUnavailable, sendmail_root
from tests.support.milter_process import REVIEW_TOKEN, MilterProcess, write_config

BUYER = "q7x2k9m4p1z8w3v5@marketplace.amazon.de"
MARKED = "blacklisted-40417@amazon.fr"
UNMARKED = "40417@amazon.fr"
PARTNER = "partner@example.org"
SHOP = "shop@shop.test"
TAG = ("X-Amzguard-Channel", f"review {REVIEW_TOKEN}")
REPLY = "Amazon forbids e-mail about orders or shipping to buyers"


@dataclass
class SendmailStack:
    sendmail: SendmailInstance
    milter: MilterProcess
    sink: Sink

    def smtp(self, sender: str, rcpts: list[str], subject: str, headers: list[tuple[str, str]] = ()):
        message = make_message(sender, rcpts, subject, extra_headers=list(headers))
        return smtp_transaction(self.sendmail.port, sender, rcpts, message)

    def relayed(self, subject: str):
        return [m for m in self.sink.messages() if str(m.message.get("Subject")) == subject]


@pytest.fixture(scope="module")
def stack() -> Iterator[SendmailStack]:
    try:
        sendmail_root()
    except SendmailUnavailable as exc:
        pytest.skip(f"no private Sendmail on this machine: {exc}")
    sink = Sink(Path("/tmp") / unique_token("amzguard-sendmail-sink")).start()
    sendmail: SendmailInstance | None = None
    milter: MilterProcess | None = None
    try:
        sendmail = SendmailInstance(sink.port)
        socket_path = sendmail.milter_socket
        config = write_config(
            sendmail.workdir / "amzguard.yml",
            f"unix:{socket_path}",
            channels=REVIEW_SENDER_CHANNELS,
            refusal={"mixed_recipients": "reject"},  # the setting the snippet recommends for Sendmail
        )
        milter = MilterProcess(config, f"unix:{socket_path}", sendmail.workdir / "amzguard.log").start()
        sendmail.start()
        yield SendmailStack(sendmail=sendmail, milter=milter, sink=sink)
    finally:
        if sendmail is not None:
            log = sendmail.workdir / "amzguard.log"
            if milter is not None:
                milter.stop()
            if log.exists():
                shutil.copy(log, sink.directory.parent / f"{sink.directory.name}-amzguard.log")
            sendmail.stop()
        sink.stop()
        shutil.rmtree(sink.directory, ignore_errors=True)


def test_buyer_refused_at_rcpt(stack: SendmailStack) -> None:
    subject = unique_token("sm-refused")
    result = stack.smtp(SHOP, [BUYER, PARTNER], subject)
    code, text = result.rcpt_replies[BUYER]
    assert code == 550 and text.startswith(f"5.7.1 <{BUYER}>... <{BUYER}>: {REPLY}")
    assert result.rcpt_replies[PARTNER][0] == 250 and result.queued
    [relayed] = stack.sink.wait_for(1, predicate=lambda m: str(m.message.get("Subject")) == subject)
    assert relayed.rcpts == [PARTNER]
    stack.sendmail.syslog.wait(rf"Milter: to=<{BUYER}>, reject=550 5\.7\.1 <{BUYER}>: {REPLY}")
    stack.sendmail.syslog.wait(rf"to=<{PARTNER}>, .*mailer=relay, .*stat=Sent")
    stack.milter.wait_log(f"from=<{SHOP}> rcpt=<{BUYER}> path=smtp stage=rcpt channel=none decision=refuse "
                          "reason=buyer-mail")  # fmt: skip


def test_other_recipient_allowed(stack: SendmailStack) -> None:
    subject = unique_token("sm-allowed")
    result = stack.smtp(SHOP, [PARTNER], subject)
    assert result.queued, result
    [relayed] = stack.sink.wait_for(1, predicate=lambda m: str(m.message.get("Subject")) == subject)
    assert relayed.rcpts == [PARTNER]
    queue_id = result.data_reply[1].split()[1]
    stack.milter.wait_log(f"{queue_id}: from=<{SHOP}> rcpt=<{PARTNER}> path=smtp stage=eom channel=none "
                          "decision=deliver reason=not-buyer")  # fmt: skip


def test_review_channel_unmarks_and_strips_the_tag(stack: SendmailStack) -> None:
    subject = unique_token("sm-review")
    result = stack.smtp(REVIEW_SENDER, [MARKED], subject, headers=[TAG])
    assert result.queued, result
    [relayed] = stack.sink.wait_for(1, predicate=lambda m: str(m.message.get("Subject")) == subject)
    assert relayed.rcpts == [UNMARKED]
    assert relayed.message.get_all(TAG[0]) is None  # the secret never leaves the MTA
    assert REVIEW_TOKEN.encode() not in relayed.raw
    queue_id = result.data_reply[1].split()[1]
    stack.sendmail.syslog.wait(rf"{queue_id}: to=<{UNMARKED}>, .*stat=Sent")
    assert REVIEW_TOKEN not in stack.sendmail.syslog.text()  # the snippet's milter log level keeps it out
    stack.milter.wait_log(f"{queue_id}: from=<{REVIEW_SENDER}> rcpt=<{MARKED}> path=smtp stage=eom "
                          "channel=review decision=deliver-unmarked reason=channel")  # fmt: skip


def test_untagged_mail_from_the_review_sender_refused_at_end_of_data(stack: SendmailStack) -> None:
    subject = unique_token("sm-untagged")
    result = stack.smtp(REVIEW_SENDER, [MARKED, PARTNER], subject)
    assert result.rcpt_replies[MARKED][0] == 250  # a tag could still come: undecided at RCPT
    code, text = result.data_reply
    assert code == 550 and text.startswith(f"5.7.1 <{MARKED}>: {REPLY}")  # mixed_recipients: reject
    stack.sendmail.syslog.wait(rf"Milter: data, reject=550 5\.7\.1 <{MARKED}>: {REPLY}")
    assert stack.relayed(subject) == []
    assert stack.sendmail.queue() == []
