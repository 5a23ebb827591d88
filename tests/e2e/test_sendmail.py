"""amzguard behind a real Sendmail, wired with the shipped etc/sendmail/amzguard.mc.

On Sendmail every connection a milter sees is SMTP (local submissions reach the MTA through the MSP over
SMTP to localhost), so refusals at RCPT are legal there and happen as on Postfix's SMTP path. All buyer
addresses are made up.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.conftest import REVIEW_SENDER, REVIEW_SENDER_CHANNELS
from tests.e2e.harness import make_message, smtp_transaction, unique_token
from tests.e2e.sendmail_harness import SendmailInstance, SendmailStack, sendmail_stack
from tests.support.milter_process import REVIEW_TOKEN, MilterProcess, write_config

BUYER = "q7x2k9m4p1z8w3v5@marketplace.amazon.de"
MARKED = "blacklisted-40417@amazon.fr"
UNMARKED = "40417@amazon.fr"
PARTNER = "partner@example.org"
SHOP = "shop@shop.test"
TAG = ("X-Amzguard-Channel", f"review {REVIEW_TOKEN}")
REPLY = "Amazon forbids e-mail about orders or shipping to buyers"


def smtp(stack: SendmailStack, sender: str, rcpts: list[str], subject: str, headers: list[tuple[str, str]] = ()):
    message = make_message(sender, rcpts, subject, extra_headers=list(headers))
    return smtp_transaction(stack.sendmail.port, sender, rcpts, message)


def amzguard_for(sendmail: SendmailInstance, **sections: object) -> MilterProcess:
    """amzguard configured for a private Sendmail: its socket and files in the instance's directory."""
    socket = f"unix:{sendmail.milter_socket}"
    sections = {"channels": REVIEW_SENDER_CHANNELS,
                "refusal": {"mixed_recipients": "reject"},  # the setting the snippet recommends for Sendmail
                **sections}  # fmt: skip
    config = write_config(sendmail.workdir / "amzguard.yml", socket, **sections)
    return MilterProcess(config, socket, sendmail.workdir / "amzguard.log")


@pytest.fixture(scope="module")
def stack() -> Iterator[SendmailStack]:
    with sendmail_stack(amzguard_for) as started:
        yield started


def test_buyer_refused_at_rcpt(stack: SendmailStack) -> None:
    subject = unique_token("sm-refused")
    result = smtp(stack, SHOP, [BUYER, PARTNER], subject)
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
    result = smtp(stack, SHOP, [PARTNER], subject)
    assert result.queued, result
    [relayed] = stack.sink.wait_for(1, predicate=lambda m: str(m.message.get("Subject")) == subject)
    assert relayed.rcpts == [PARTNER]
    queue_id = result.data_reply[1].split()[1]
    stack.milter.wait_log(f"{queue_id}: from=<{SHOP}> rcpt=<{PARTNER}> path=smtp stage=eom channel=none "
                          "decision=deliver reason=not-buyer")  # fmt: skip


def test_review_channel_unmarks_and_strips_the_tag(stack: SendmailStack) -> None:
    subject = unique_token("sm-review")
    result = smtp(stack, REVIEW_SENDER, [MARKED], subject, headers=[TAG])
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
    result = smtp(stack, REVIEW_SENDER, [MARKED, PARTNER], subject)
    assert result.rcpt_replies[MARKED][0] == 250  # a tag could still come: undecided at RCPT
    code, text = result.data_reply
    assert code == 550 and text.startswith(f"5.7.1 <{MARKED}>: {REPLY}")  # mixed_recipients: reject
    stack.sendmail.syslog.wait(rf"Milter: data, reject=550 5\.7\.1 <{MARKED}>: {REPLY}")
    assert stack.relayed(subject) == []
    assert stack.sendmail.queue() == []


def test_the_visible_to_and_cc_follow_the_unmarked_envelope(stack: SendmailStack) -> None:
    """Issue 12 item 2 behind Sendmail: smfi_chgheader rewrites only the marked address token of To:/Cc:
    (display name and the other address kept), as on Postfix."""
    subject = unique_token("sm-visible-to")
    headers = [TAG, ("Cc", f"{MARKED} (Max)")]
    message = make_message(REVIEW_SENDER, f'"Max M." <{MARKED}>, {PARTNER}', subject, extra_headers=headers)
    result = smtp_transaction(stack.sendmail.port, REVIEW_SENDER, [MARKED], message)
    assert result.queued, result
    [relayed] = stack.sink.wait_for(1, predicate=lambda m: str(m.message.get("Subject")) == subject)
    assert relayed.rcpts == [UNMARKED]
    assert [" ".join(v.split()) for v in relayed.message.get_all("To")] == [f'"Max M." <{UNMARKED}>, {PARTNER}']
    assert [" ".join(v.split()) for v in relayed.message.get_all("Cc")] == [f"{UNMARKED} (Max)"]
    # Sendmail's own Received: may name the envelope recipient; no other field does.
    assert [name for name, value in relayed.headers if MARKED in value] in ([], ["Received"])
    queue_id = result.data_reply[1].split()[1]
    stack.milter.wait_log(f"{queue_id}: from=<{REVIEW_SENDER}> rcpt=<{MARKED}> path=smtp stage=eom "
                          "channel=review decision=deliver-unmarked reason=channel")  # fmt: skip
