"""Approved senders on a real Postfix (issue 12 item 3): with ``buyers.approved_senders`` set, mail to a
buyer's relay address from a sender Seller Central has not approved is refused here, with the text that
says where to approve it, instead of by Amazon after it left the shop; approved mail is delivered as before.
Checked on both paths, in SMTP replies, the bounces, the sink and both logs. Addresses are made up."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from amzguard.config import DEFAULT_REASON_TEXTS
from amzguard.policy import Reason
from tests.e2e.conftest import REVIEW_SENDER, Stack, bounces_about, start_stack, stop_stack, subject_of
from tests.e2e.harness import make_message, smtp_transaction, unique_token
from tests.e2e.sendmail_harness import SendmailInstance, sendmail_stack
from tests.support.milter_process import REVIEW_TOKEN, MilterProcess, write_config

RELAY_BUYER = "m2q8x4k7z1w9p3v6@marketplace.amazon.de"
MARKED_BUYER = "blacklisted-60318@marketplace.amazon.fr"
UNMARKED_BUYER = "60318@marketplace.amazon.fr"
PARTNER = "partner@example.org"  # an ordinary outside recipient: relayed to the sink
NEWSLETTER = "news@shop.test"  # a sender of the shop that Seller Central has not approved
TAG = ("X-Amzguard-Channel", f"review {REVIEW_TOKEN}")
TEXT = DEFAULT_REASON_TEXTS[Reason.SENDER_NOT_APPROVED]
ORDERS = (f"306-1234567-{n:07d}" for n in itertools.count(7000001))


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # Channels open to every sender (no allowed_senders), so only the approved senders decide at RCPT.
    started = start_stack("approved", buyers={"approved_senders": [REVIEW_SENDER]},
                          channels={"review": {"enabled": True, "token": REVIEW_TOKEN}})  # fmt: skip
    yield started
    stop_stack(started)


def unfolded(text: str) -> str:
    return " ".join(text.split())




def sink_with_subject(stack: Stack, subject: str):
    return [m for m in stack.postfix.sink.messages() if subject_of(m.message) == subject]


def review_request(from_field: str, to: str | list[str], subject: str) -> bytes:
    return make_message(from_field, to, subject, body=f"How was your order {next(ORDERS)}? (invented wording)\n",
                        extra_headers=[TAG])  # fmt: skip


def bounce_about(stack: Stack, user: str, subject: str):
    [bounce] = bounces_about(stack, user, subject)
    return bounce


def test_an_unapproved_envelope_sender_is_refused_at_rcpt_the_others_receive(stack: Stack) -> None:
    subject = unique_token("approved-rcpt")
    message = review_request(NEWSLETTER, [RELAY_BUYER, PARTNER], subject)
    result = stack.postfix.smtp(NEWSLETTER, [RELAY_BUYER, PARTNER], message)
    code, text = result.rejected[RELAY_BUYER]
    assert code == 550 and unfolded(text) == f"5.7.1 <{RELAY_BUYER}>: {TEXT}"
    assert "Messaging Permissions" in TEXT
    assert result.accepted == [PARTNER] and result.queued, result
    [relayed] = stack.postfix.sink.wait_for(1, predicate=lambda m: subject_of(m.message) == subject)
    assert relayed.rcpts == [PARTNER]
    stack.milter.wait_log(f"rcpt=<{RELAY_BUYER}> path=smtp stage=rcpt channel=none decision=refuse "
                          "reason=sender-not-approved")  # fmt: skip
    stack.postfix.wait_queue_empty()


def test_an_unapproved_from_is_refused_at_end_of_data_on_smtp(stack: Stack) -> None:
    subject = unique_token("approved-from-smtp")
    result = stack.postfix.smtp(REVIEW_SENDER, [RELAY_BUYER], review_request(f"Shop News <{NEWSLETTER}>", RELAY_BUYER, subject))
    assert result.accepted == [RELAY_BUYER]  # the envelope sender is approved: nothing is certain at RCPT
    assert result.data_reply is not None and result.data_reply[0] == 550, result
    assert unfolded(result.data_reply[1]) == f"5.7.1 <{RELAY_BUYER}>: {TEXT}"
    stack.milter.wait_log(f"rcpt=<{RELAY_BUYER}> path=smtp stage=eom channel=review decision=refuse "
                          "reason=sender-not-approved")  # fmt: skip
    assert sink_with_subject(stack, subject) == []


def test_a_mixed_message_bounces_only_the_buyer_through_the_shipped_transport_map(stack: Stack) -> None:
    subject = unique_token("approved-mixed")
    offset = stack.postfix.log_offset()
    message = review_request(NEWSLETTER, [RELAY_BUYER, PARTNER], subject)
    result = stack.postfix.smtp(REVIEW_SENDER, [RELAY_BUYER, PARTNER], message, mail_options=["RET=HDRS"])
    assert result.queued, result
    [relayed] = stack.postfix.sink.wait_for(1, predicate=lambda m: subject_of(m.message) == subject)
    assert relayed.rcpts == [PARTNER]
    stack.postfix.wait_log(
        r"postfix/error\[\d+\]: \w+: to=<m2q8x4k7z1w9p3v6=marketplace\.amazon\.de@sender-not-approved\.amzguard"
        r"\.invalid>, .*dsn=5\.7\.1, status=bounced \(Sender not approved for Amazon buyers", after=offset)
    bounce = bounce_about(stack, "support", subject)
    [recipient] = bounce.recipients
    assert recipient["Status"] == "5.7.1" and TEXT in unfolded(recipient["Diagnostic-Code"])
    stack.postfix.wait_queue_empty()


def test_an_unapproved_from_via_sendmail_bounces_to_the_sender(stack: Stack) -> None:
    subject = unique_token("approved-from-local")
    done = stack.postfix.sendmail(REVIEW_SENDER, [MARKED_BUYER], review_request(NEWSLETTER, MARKED_BUYER, subject))
    assert done.returncode == 0, done.stderr
    bounce = bounce_about(stack, "support", subject)
    assert TEXT in unfolded(bounce.notification)
    assert [r["Status"] for r in bounce.recipients] == ["5.7.1"]
    stack.milter.wait_log(f"rcpt=<{MARKED_BUYER}> path=sendmail stage=eom channel=review decision=refuse "
                          "reason=sender-not-approved")  # fmt: skip
    stack.postfix.wait_queue_empty()
    assert sink_with_subject(stack, subject) == []


def test_a_sender_without_any_channel_is_still_order_mail(stack: Stack) -> None:
    """Approval makes no mail legitimate: untagged mail from the approved sender is buyer mail as before."""
    subject = unique_token("approved-untagged")
    result = stack.postfix.smtp(REVIEW_SENDER, [RELAY_BUYER], make_message(REVIEW_SENDER, RELAY_BUYER, subject))
    assert result.data_reply is not None and result.data_reply[0] == 550
    assert "Amazon forbids e-mail about orders" in unfolded(result.data_reply[1])
    stack.milter.wait_log(f"rcpt=<{RELAY_BUYER}> path=smtp stage=eom channel=none decision=refuse reason=buyer-mail")


@pytest.mark.parametrize("path", ["sendmail", "smtp"])
def test_an_approved_sender_is_delivered_unmarked(stack: Stack, path: str) -> None:
    subject = unique_token(f"approved-ok-{path}")
    message = review_request(f"Shop Support <{REVIEW_SENDER}>", MARKED_BUYER, subject)
    if path == "sendmail":
        done = stack.postfix.sendmail(REVIEW_SENDER, [MARKED_BUYER], message)
        assert done.returncode == 0, done.stderr
    else:
        assert stack.postfix.smtp(REVIEW_SENDER, [MARKED_BUYER], message).queued
    [relayed] = stack.postfix.sink.wait_for(1, predicate=lambda m: subject_of(m.message) == subject)
    assert relayed.rcpts == [UNMARKED_BUYER]
    assert relayed.message.get("X-Amzguard-Channel") is None
    stack.milter.wait_log(f"rcpt=<{MARKED_BUYER}> path={path} stage=eom channel=review decision=deliver-unmarked")
    stack.postfix.wait_queue_empty()


# -- behind Sendmail (every connection is SMTP there, so refusals at RCPT are legal as on Postfix's SMTP path)


def test_behind_sendmail_an_unapproved_sender_is_refused_and_an_approved_one_delivered() -> None:
    def amzguard_for(sendmail: SendmailInstance) -> MilterProcess:
        socket = f"unix:{sendmail.milter_socket}"
        config = write_config(sendmail.workdir / "amzguard.yml", socket, buyers={"approved_senders": [REVIEW_SENDER]},
                              channels={"review": {"enabled": True, "token": REVIEW_TOKEN}},
                              refusal={"mixed_recipients": "reject"})  # fmt: skip
        return MilterProcess(config, socket, sendmail.workdir / "amzguard.log")

    with sendmail_stack(amzguard_for) as stack:
        refused = unique_token("sm-approved-rcpt")
        result = smtp_transaction(stack.sendmail.port, NEWSLETTER, [RELAY_BUYER, PARTNER],
                                  review_request(NEWSLETTER, [RELAY_BUYER, PARTNER], refused))  # fmt: skip
        code, text = result.rcpt_replies[RELAY_BUYER]
        assert code == 550 and f"<{RELAY_BUYER}>: {TEXT}" in unfolded(text)
        assert stack.wait_relayed(refused)[0].rcpts == [PARTNER]
        stack.milter.wait_log(f"rcpt=<{RELAY_BUYER}> path=smtp stage=rcpt channel=none decision=refuse "
                              "reason=sender-not-approved")  # fmt: skip

        from_only = unique_token("sm-approved-from")
        result = smtp_transaction(stack.sendmail.port, REVIEW_SENDER, [RELAY_BUYER],
                                  review_request(NEWSLETTER, RELAY_BUYER, from_only))  # fmt: skip
        assert result.data_reply is not None and result.data_reply[0] == 550
        assert unfolded(result.data_reply[1]) == f"5.7.1 <{RELAY_BUYER}>: {TEXT}"

        delivered = unique_token("sm-approved-ok")
        result = smtp_transaction(stack.sendmail.port, REVIEW_SENDER, [MARKED_BUYER],
                                  review_request(REVIEW_SENDER, MARKED_BUYER, delivered))  # fmt: skip
        assert result.queued, result
        assert stack.wait_relayed(delivered)[0].rcpts == [UNMARKED_BUYER]
        assert stack.relayed(refused)[0].rcpts == [PARTNER] and stack.relayed(from_only) == []
