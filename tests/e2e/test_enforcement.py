"""amzguard on a real Postfix: what SMTP clients, sendmail(1) users, buyers and the shop really see.

Every buyer address here is made up. Messages carry a unique subject so each test finds its own mail among
the others sharing the module's Postfix.
"""

from __future__ import annotations

import re

from tests.e2e.conftest import REVIEW_SENDER, SHOP_SENDER, Stack, bounces_about, subject_of
from tests.e2e.harness import make_message, unique_token
from tests.support.milter_process import REVIEW_TOKEN

RELAY_BUYER = "q7x2k9m4p1z8w3v5@marketplace.amazon.de"
MARKED_BUYER = "blacklisted-40417@amazon.fr"
UNMARKED_BUYER = "40417@amazon.fr"
OWNER = "owner@shop.test"
PARTNER = "partner@example.org"  # an ordinary outside recipient: relayed to the sink
TAG_HEADER = "X-Amzguard-Channel"
REPLY_TEXT = "Amazon forbids e-mail about orders or shipping to buyers"




def dsn_address(value: str) -> str:
    """DSN address fields read ``rfc822; a@b`` or ``rfc822;a@b``; compare them without that difference."""
    return value.replace(" ", "").lower()


def unfolded(text: str) -> str:
    """Postfix wraps long DSN lines; compare text with its white space runs folded to one space."""
    return " ".join(text.split())


def sink_with_subject(stack: Stack, subject: str):
    return [m for m in stack.postfix.sink.messages() if subject_of(m.message) == subject]


def assert_no_buyer_got(stack: Stack, subject: str, *buyers: str) -> None:
    for message in sink_with_subject(stack, subject):
        for buyer in buyers:
            assert buyer.lower() not in [r.lower() for r in message.rcpts], (buyer, message.rcpts)




# -- SMTP path --------------------------------------------------------------------------------------


def test_smtp_single_buyer_refused_at_rcpt(stack: Stack) -> None:
    """From a sender that may not use the review channel, the refusal is certain at RCPT."""
    subject = unique_token("smtp-rcpt")
    offset = stack.postfix.log_offset()
    result = stack.postfix.smtp(SHOP_SENDER, [RELAY_BUYER], make_message(SHOP_SENDER, RELAY_BUYER, subject))
    code, text = result.rcpt_replies[RELAY_BUYER]
    assert code == 550
    assert text.startswith(f"5.7.1 <{RELAY_BUYER}>: {REPLY_TEXT}")
    assert result.data_reply is None  # nothing accepted, nothing queued
    stack.postfix.wait_log(r"milter-reject: RCPT from .*: 550 5\.7\.1 <q7x2k9m4p1z8w3v5@marketplace\.amazon\.de>",
                           after=offset)  # fmt: skip
    stack.milter.wait_log(f"NOQUEUE: from=<{SHOP_SENDER}> rcpt=<{RELAY_BUYER}> path=smtp stage=rcpt "
                          "channel=none decision=refuse reason=buyer-mail")  # fmt: skip
    assert stack.postfix.queue() == []
    assert sink_with_subject(stack, subject) == []


def test_smtp_single_buyer_refused_at_end_of_message(stack: Stack) -> None:
    """From the review sender without a tag: undecidable at RCPT, refused at end of data; never queued."""
    subject = unique_token("smtp-eom")
    offset = stack.postfix.log_offset()
    result = stack.postfix.smtp(REVIEW_SENDER, [MARKED_BUYER], make_message(REVIEW_SENDER, MARKED_BUYER, subject))
    assert result.rcpt_replies[MARKED_BUYER][0] == 250
    assert result.data_reply is not None
    code, text = result.data_reply
    assert code == 550 and text.startswith(f"5.7.1 <{MARKED_BUYER}>: {REPLY_TEXT}")
    stack.postfix.wait_log(r"milter-reject: END-OF-MESSAGE from .*: 5\.7\.1 <blacklisted-40417@amazon\.fr>",
                           after=offset)  # fmt: skip
    assert stack.postfix.queue() == []
    assert sink_with_subject(stack, subject) == []


def test_smtp_allowed_recipients(stack: Stack) -> None:
    subject = unique_token("smtp-allowed")
    result = stack.postfix.smtp(SHOP_SENDER, [OWNER, PARTNER], make_message(SHOP_SENDER, [OWNER, PARTNER], subject))
    assert result.queued, result
    stack.postfix.wait_mailbox("owner", predicate=lambda m: subject_of(m) == subject)
    [relayed] = stack.postfix.sink.wait_for(1, predicate=lambda m: subject_of(m.message) == subject)
    assert relayed.rcpts == [PARTNER]
    stack.postfix.wait_queue_empty()
    # No buyer, a sender outside the review channel: decided and accepted at DATA (docs/fast-path.md).
    stack.milter.wait_log(f"{result.queue_id}: from=<{SHOP_SENDER}> rcpt=<{PARTNER}> path=smtp stage=data "
                          "channel=none decision=deliver reason=not-buyer")  # fmt: skip


def test_smtp_mixed_refused_at_rcpt_others_receive(stack: Stack) -> None:
    subject = unique_token("smtp-mixed-rcpt")
    message = make_message(SHOP_SENDER, MARKED_BUYER, subject, extra_headers={"Bcc": OWNER})
    result = stack.postfix.smtp(SHOP_SENDER, [MARKED_BUYER, OWNER], message)
    assert result.rcpt_replies[MARKED_BUYER][0] == 550
    assert result.rcpt_replies[MARKED_BUYER][1].startswith(f"5.7.1 <{MARKED_BUYER}>: {REPLY_TEXT}")
    assert result.rcpt_replies[OWNER][0] == 250
    assert result.queued
    stack.postfix.wait_mailbox("owner", predicate=lambda m: subject_of(m) == subject)
    stack.postfix.wait_queue_empty()
    assert_no_buyer_got(stack, subject, MARKED_BUYER, UNMARKED_BUYER)


def test_smtp_mixed_refused_at_end_of_message_bounces_the_buyer(stack: Stack) -> None:
    """Accepted at RCPT (review sender), refused at end: others get it, the sender gets a DSN for the buyer."""
    subject = unique_token("smtp-mixed-eom")
    message = make_message(REVIEW_SENDER, [RELAY_BUYER, PARTNER], subject)
    offset = stack.postfix.log_offset()
    result = stack.postfix.smtp(REVIEW_SENDER, [RELAY_BUYER, PARTNER, OWNER], message, mail_options=["RET=HDRS"])
    assert result.queued, result
    [relayed] = stack.postfix.sink.wait_for(1, predicate=lambda m: subject_of(m.message) == subject)
    assert relayed.rcpts == [PARTNER]
    stack.postfix.wait_mailbox("owner", predicate=lambda m: subject_of(m) == subject)
    # The stand-in recipient is bounced by the shipped error: transport map ...
    stack.postfix.wait_log(
        r"postfix/error\[\d+\]: \w+: to=<q7x2k9m4p1z8w3v5=marketplace\.amazon\.de@buyer-mail\.amzguard\.invalid>, "
        r"relay=none, .*dsn=5\.7\.1, status=bounced \(Amazon forbids",
        after=offset,
    )
    # ... and the DSN names the buyer (Original-Recipient from the ORCPT amzguard set) and the reason.
    [bounce] = bounces_about(stack, "support", subject)
    [recipient] = bounce.recipients
    assert dsn_address(recipient["Original-Recipient"]) == f"rfc822;{RELAY_BUYER}"
    assert recipient["Status"] == "5.7.1" and REPLY_TEXT in unfolded(recipient["Diagnostic-Code"])
    stack.postfix.wait_queue_empty()
    assert_no_buyer_got(stack, subject, RELAY_BUYER)


# -- sendmail(1) path -------------------------------------------------------------------------------


def test_sendmail_single_buyer_bounces_to_the_shop(stack: Stack) -> None:
    subject = unique_token("local-single")
    offset = stack.postfix.log_offset()
    done = stack.postfix.sendmail(SHOP_SENDER, [MARKED_BUYER], make_message(SHOP_SENDER, MARKED_BUYER, subject))
    assert done.returncode == 0, done.stderr
    [bounce] = bounces_about(stack, "shop", subject)
    assert "Undelivered Mail Returned to Sender" in bounce.subject
    assert MARKED_BUYER in bounce.notification and REPLY_TEXT in unfolded(bounce.notification)
    [recipient] = bounce.recipients
    assert dsn_address(recipient["Final-Recipient"]) == f"rfc822;{MARKED_BUYER}"
    assert recipient["Action"] == "failed" and recipient["Status"] == "5.7.1"
    log = stack.postfix.log_since(offset)
    assert re.search(r"milter-reject: END-OF-MESSAGE from localhost\[127\.0\.0\.1\]: 5\.7\.1 <blacklisted-40417", log)
    assert "milter configuration error" not in log
    stack.postfix.wait_queue_empty()
    assert sink_with_subject(stack, subject) == []


def test_sendmail_mixed_recipients_are_refused_whole(stack: Stack) -> None:
    """On the sendmail(1) path amzguard cannot name the recipient Postfix queued (cleanup rewrote it before
    the milter saw it), so a delete is not certain: the message is refused whole and Postfix bounces it,
    naming every recipient. Nobody is told the buyer was refused while the buyer still gets it."""
    subject = unique_token("local-mixed")
    offset = stack.postfix.log_offset()
    message = make_message(SHOP_SENDER, RELAY_BUYER, subject, extra_headers={"Bcc": OWNER})
    done = stack.postfix.sendmail(SHOP_SENDER, [RELAY_BUYER, OWNER], message)
    assert done.returncode == 0, done.stderr
    [bounce] = bounces_about(stack, "shop", subject)
    assert sorted(dsn_address(r["Final-Recipient"]) for r in bounce.recipients) == sorted(
        [f"rfc822;{RELAY_BUYER}", f"rfc822;{OWNER}"]
    )
    for recipient in bounce.recipients:
        assert recipient["Status"] == "5.7.1" and REPLY_TEXT in unfolded(recipient["Diagnostic-Code"])
    assert "milter configuration error" not in stack.postfix.log_since(offset)
    stack.postfix.wait_queue_empty()
    assert [m for m in stack.postfix.mailbox("owner") if subject_of(m) == subject] == []
    assert sink_with_subject(stack, subject) == []


# -- review channel ---------------------------------------------------------------------------------


def review_message(to: list[str], subject: str, tag: str | None) -> bytes:
    extra = [(TAG_HEADER, tag)] if tag is not None else []
    return make_message(REVIEW_SENDER, to, subject, body="How was your order?\n", extra_headers=extra)


def test_review_channel_valid_token_reaches_buyers_unmarked_and_untagged(stack: Stack) -> None:
    subject = unique_token("review-ok")
    message = review_message([MARKED_BUYER, RELAY_BUYER], subject, f"review {REVIEW_TOKEN}")
    result = stack.postfix.smtp(REVIEW_SENDER, [MARKED_BUYER, RELAY_BUYER], message)
    assert result.queued, result
    [relayed] = stack.postfix.sink.wait_for(1, predicate=lambda m: subject_of(m.message) == subject)
    assert sorted(relayed.rcpts) == sorted([UNMARKED_BUYER, RELAY_BUYER])
    assert all(name.lower() != TAG_HEADER.lower() for name, _ in relayed.headers)
    assert REVIEW_TOKEN.encode() not in relayed.data
    stack.postfix.wait_queue_empty()
    stack.milter.wait_log(f"rcpt=<{MARKED_BUYER}> path=smtp stage=eom channel=review decision=deliver-unmarked")


def test_review_channel_via_sendmail(stack: Stack) -> None:
    subject = unique_token("review-local")
    done = stack.postfix.sendmail(REVIEW_SENDER, [MARKED_BUYER],
                                  review_message([MARKED_BUYER], subject, f"review {REVIEW_TOKEN}"))  # fmt: skip
    assert done.returncode == 0
    [relayed] = stack.postfix.sink.wait_for(1, predicate=lambda m: subject_of(m.message) == subject)
    assert relayed.rcpts == [UNMARKED_BUYER]
    assert TAG_HEADER.lower() not in [name.lower() for name, _ in relayed.headers]


def test_review_channel_wrong_or_missing_token_is_refused(stack: Stack) -> None:
    for tag in ("review not-the-right-token-123", None, REVIEW_TOKEN):
        subject = unique_token("review-bad")
        result = stack.postfix.smtp(REVIEW_SENDER, [RELAY_BUYER], review_message([RELAY_BUYER], subject, tag))
        assert result.data_reply is not None and result.data_reply[0] == 550, (tag, result)
        assert result.data_reply[1].startswith(f"5.7.1 <{RELAY_BUYER}>: {REPLY_TEXT}")
    assert stack.postfix.queue() == []


def test_review_tag_never_leaves_even_on_ordinary_mail(stack: Stack) -> None:
    """amzguard itself deletes the tag from the review mailer's mail to non-buyers (this stack has no
    header checks). Mail from other senders without buyers is accepted at DATA untouched; the shipped
    smtp_header_checks keep its tag in (tests/e2e/test_fastpath.py)."""
    subject = unique_token("tag-strip")
    message = make_message(REVIEW_SENDER, PARTNER, subject, extra_headers=[(TAG_HEADER, "review leaked-secret-0000")])
    assert stack.postfix.smtp(REVIEW_SENDER, [PARTNER], message).queued
    [relayed] = stack.postfix.sink.wait_for(1, predicate=lambda m: subject_of(m.message) == subject)
    assert b"leaked-secret" not in relayed.data


# -- milter outage ----------------------------------------------------------------------------------


def test_milter_down_tempfails_and_queued_mail_is_delivered_after_restart(stack: Stack) -> None:
    subject_smtp = unique_token("down-smtp")
    subject_local = unique_token("down-local")
    stack.milter.stop()
    try:
        offset = stack.postfix.log_offset()
        result = stack.postfix.smtp(SHOP_SENDER, [PARTNER], make_message(SHOP_SENDER, PARTNER, subject_smtp))
        tempfail = result.data_reply or result.rcpt_replies.get(PARTNER) or result.mail_reply
        assert tempfail is not None and tempfail[0] == 451, result
        assert tempfail[1].startswith("4.7.1")
        done = stack.postfix.sendmail(SHOP_SENDER, [PARTNER, MARKED_BUYER],
                                      make_message(SHOP_SENDER, [PARTNER, MARKED_BUYER], subject_local))  # fmt: skip
        assert done.returncode == 0
        stack.postfix.wait_log(r"warning: connect to Milter service unix:.*amzguard\.sock", after=offset)
        assert stack.postfix.queue() != []  # the local submission waits for the milter
        assert sink_with_subject(stack, subject_local) == []
    finally:
        stack.milter.start()
    stack.postfix.kick_pickup()
    stack.postfix.flush()
    # Judged after the restart: the buyer is refused, and on this path that refuses the message whole.
    [bounce] = bounces_about(stack, "shop", subject_local)
    assert len(bounce.recipients) == 2
    stack.postfix.wait_queue_empty(timeout=60)
    assert sink_with_subject(stack, subject_local) == []
