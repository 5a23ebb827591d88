"""Issue 9 regression cases: every spelling, rewrite and bounce class on a real Postfix, on both paths.

Postfix decides where an address goes; these cases check what really happened (SMTP replies, the sink,
bounces, the maillog, amzguard's decision lines) for the spellings that once slipped past amzguard:

1. whole-address quoting and an escaped ``@``;
2. routing forms nested deeper than one level and ``@`` in the local part, with a local right-hand side
   (``localhost`` in mydestination, the ``[127.0.0.1]`` literal of the host), a virtual one (``shop.test``,
   not local to the resolver) and a remote one;
3. recipients that Postfix rewrote before the milter saw them (deletes that must really delete);
4. the review secret in a bounce.

The shipped transport map is installed. The review mailer may also send from an outside address, so that
the bounces of its refused messages leave the machine (they are relayed to the sink) and can be searched
for the secret. All addresses and order ids are made up.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from amzguard.store import OptOut, SqliteStore
from tests.e2e.conftest import REPO, REVIEW_SENDER, SHOP_SENDER, Stack, start_stack, stop_stack
from tests.e2e.harness import SinkMessage, make_message, parse_bounce, unique_token
from tests.support.milter_process import REVIEW_TOKEN

OUTSIDE_REVIEWER = "reviews@mailer.example"
"""The review mailer of a shop whose mail leaves through this MTA from an outside domain."""
PARTNER = "partner@example.org"
TAG = ("X-Amzguard-Channel", f"review {REVIEW_TOKEN}")
RELAYED = "q7x@marketplace.amazon.de"
OPTED_OUT_MARKED = '"blacklisted-20@amazon.fr"'
"""A marked buyer spelled as one quoted string; its register key is 20@amazon.fr."""
OPTED_OUT_KEY = "20@amazon.fr"

CANONICAL = "alias45@mx.shop.test"
CANONICAL_TO = "blacklisted-45@amazon.fr"
"""A recipient_canonical_maps entry: cleanup maps the address before the milter sees it."""

_CHANNELS = {
    "review": {"enabled": True, "token": REVIEW_TOKEN, "allowed_senders": [REVIEW_SENDER, OUTSIDE_REVIEWER]},
    "reply": {"allowed_senders": [REVIEW_SENDER]},
    "critical": {"allowed_senders": [REVIEW_SENDER]},
}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    main_cf = {"mydestination": "localhost", "recipient_canonical_maps": f"inline:{{ {CANONICAL}={CANONICAL_TO} }}"}
    started = start_stack("exact", channels=_CHANNELS, main_cf=main_cf)
    SqliteStore(started.workdir / "amzguard.sqlite").add([OptOut(OPTED_OUT_KEY)])
    yield started
    stop_stack(started)


# -- helpers ----------------------------------------------------------------------------------------


def subject_of(message) -> str:
    return str(message.get("Subject", ""))


def copies(stack: Stack, subject: str) -> list[SinkMessage]:
    """What the sink received of the message itself (bounces have a subject of their own)."""
    return [m for m in stack.postfix.sink.messages() if subject_of(m.message) == subject]


def relayed_to(stack: Stack, subject: str, rcpts: int = 1) -> list[str]:
    """Every envelope recipient the sink got the message for (lower case), once it has ``rcpts`` of them
    (Postfix may relay them in one transaction or in several)."""
    deadline = time.monotonic() + 20
    while True:
        found = sorted(r.lower() for m in copies(stack, subject) for r in m.rcpts)
        if len(found) >= rcpts or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def returned_subject(message) -> str | None:
    if message.get_content_type() != "multipart/report":
        return None
    returned = parse_bounce(message).returned
    return subject_of(returned) if returned is not None else None


def outside_bounce(stack: Stack, subject: str) -> SinkMessage:
    """The DSN about ``subject`` that Postfix relayed to the outside review mailer."""
    [bounce] = stack.postfix.sink.wait_for(
        1, predicate=lambda m: m.mail_from == "" and returned_subject(m.message) == subject)
    assert bounce.rcpts == [OUTSIDE_REVIEWER]
    return bounce


def local_bounce(stack: Stack, user: str, subject: str):
    [bounce] = stack.postfix.wait_mailbox(user, predicate=lambda m: returned_subject(m) == subject)
    return parse_bounce(bounce)


def assert_no_secret(raw: bytes) -> None:
    assert REVIEW_TOKEN.encode() not in raw
    assert b"X-Amzguard-Channel" not in raw


def wait_decision(stack: Stack, rcpt: str, path: str, stage: str, decision: str, reason: str) -> None:
    """Poll amzguard's log for the decision line of ``rcpt`` (any channel)."""
    pattern = re.compile(rf"rcpt=<{re.escape(rcpt)}> path={path} stage={stage} channel=\S+ "
                         rf"decision={decision} reason={reason}\b")  # fmt: skip
    deadline = time.monotonic() + 10
    while not pattern.search(stack.milter.log_text()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {pattern.pattern!r} in amzguard's log:\n{stack.milter.log_text()[-3000:]}")
        time.sleep(0.05)


def order_subject(prefix: str, order: str) -> str:
    return f"{unique_token(prefix)} order {order}"


# -- classes 1 and 2: what amzguard judges is where Postfix routes ----------------------------------

# (RCPT spelling, the address amzguard judges and logs, reason on the SMTP path)
SMTP_SPELLINGS = [
    ('"q7x@marketplace.amazon.de"', RELAYED, "buyer-mail"),
    ("q7x\\@marketplace.amazon.de", RELAYED, "buyer-mail"),
    ("x@marketplace.amazon.de@[127.0.0.1]", "x@marketplace.amazon.de", "buyer-mail"),  # local literal
    ("x%marketplace.amazon.de%localhost@localhost", "x@marketplace.amazon.de", "buyer-mail"),
    ("localhost!marketplace.amazon.de!x@localhost", "x@marketplace.amazon.de", "buyer-mail"),
    ("@a.example:q7x@marketplace.amazon.de", RELAYED, "buyer-mail"),
    ("q7x@marketplace.amazon.de.", RELAYED, "buyer-mail"),
    ("Q7X@Marketplace.AMAZON.de", "Q7X@marketplace.amazon.de", "buyer-mail"),
    # shop.test is a virtual domain: the resolver does not strip it, and smtpd refuses the unknown mailbox
    # itself before the milter is asked (None: no decision of amzguard's).
    ("x%marketplace.amazon.de%shop.test@shop.test", None, None),
    ("shop.test!marketplace.amazon.de!x@shop.test", None, None),
    # A remote right-hand side: Postfix relays these as they are; where they end up is the remote
    # host's choice, so amzguard fails closed.
    ('"x@marketplace.amazon.de"@example.org', None, "unresolved-route"),
    ("x%marketplace.amazon.de@example.org", None, "unresolved-route"),
    ("marketplace.amazon.de!x@example.org", None, "unresolved-route"),
]


@pytest.mark.parametrize(("spelling", "judged", "reason"), SMTP_SPELLINGS, ids=[s for s, _, _ in SMTP_SPELLINGS])
def test_smtp_buyer_spellings_are_refused_at_rcpt_others_get_their_copy(
    stack: Stack, spelling: str, judged: str | None, reason: str | None
) -> None:
    subject = unique_token("exact-smtp")
    rcpt = f"<{spelling}>"
    message = make_message(SHOP_SENDER, [PARTNER], subject)
    result = stack.postfix.smtp(SHOP_SENDER, [rcpt, PARTNER], message, verbatim=True)
    assert result.rcpt_replies[rcpt][0] == 550, result
    assert result.rcpt_replies[PARTNER][0] == 250 and result.queued, result
    assert relayed_to(stack, subject) == [PARTNER]
    if reason is None:
        assert "User unknown in virtual mailbox table" in result.rcpt_replies[rcpt][1]
    elif judged is not None:
        wait_decision(stack, judged, "smtp", "rcpt", "refuse", reason)
    else:
        stack.milter.wait_log(f"path=smtp stage=rcpt channel=none decision=refuse reason={reason}")


# (sendmail(1) argument, the address amzguard judges, reason)
SENDMAIL_SPELLINGS = [
    ('"q7x@marketplace.amazon.de"', RELAYED, "buyer-mail"),
    ("q7x\\@marketplace.amazon.de", RELAYED, "buyer-mail"),
    ("q7x@marketplace.amazon.de.", RELAYED, "buyer-mail"),
    ("@a.example:q7x@marketplace.amazon.de", RELAYED, "buyer-mail"),
    ("x@marketplace.amazon.de@[127.0.0.1]", None, "unresolved-route"),
    ("x%marketplace.amazon.de%localhost@localhost", None, "unresolved-route"),
    ("localhost!marketplace.amazon.de!x@localhost", None, "unresolved-route"),
]


@pytest.mark.parametrize(("spelling", "judged", "reason"), SENDMAIL_SPELLINGS,
                         ids=[s for s, _, _ in SENDMAIL_SPELLINGS])  # fmt: skip
def test_sendmail_buyer_spellings_refuse_the_message_whole(
    stack: Stack, spelling: str, judged: str | None, reason: str
) -> None:
    """sendmail(1) path: the buyer is refused, and since no delete is certain there, the whole message is
    bounced to the shop, naming every recipient: nobody got a copy, so naming the buyer is true."""
    subject = unique_token("exact-sendmail")
    done = stack.postfix.sendmail(SHOP_SENDER, [spelling, PARTNER], make_message(SHOP_SENDER, [PARTNER], subject))
    assert done.returncode == 0, done.stderr
    bounce = local_bounce(stack, "shop", subject)
    assert len(bounce.recipients) == 2
    assert all(r["Action"] == "failed" and r["Status"] == "5.7.1" for r in bounce.recipients)
    if judged is not None:
        wait_decision(stack, judged, "sendmail", "eom", "refuse", reason)
    else:
        stack.milter.wait_log(f"path=sendmail stage=eom channel=none decision=refuse reason={reason}")
    stack.postfix.wait_log(r"milter-reject: END-OF-MESSAGE from localhost\[127\.0\.0\.1\]: 5\.7\.1 ")
    assert copies(stack, subject) == []


def test_sendmail_t_buyer_in_the_header_refuses_the_message_whole(stack: Stack) -> None:
    subject = unique_token("exact-t")
    message = make_message(SHOP_SENDER, ['"q7x@marketplace.amazon.de"', PARTNER], subject)
    done = stack.postfix.sendmail(SHOP_SENDER, [], message, extra_args=("-t", "-i"))
    assert done.returncode == 0, done.stderr
    bounce = local_bounce(stack, "shop", subject)
    assert len(bounce.recipients) == 2
    wait_decision(stack, RELAYED, "sendmail", "eom", "refuse", "buyer-mail")
    assert copies(stack, subject) == []


def test_quoted_marked_buyer_with_a_valid_tag_meets_the_opt_out_on_both_paths(stack: Stack) -> None:
    """Class 1: ``"blacklisted-20@amazon.fr"`` once had an empty register key, so the opt-out was skipped."""
    subject = order_subject("exact-optout-smtp", "302-9000001-0000001")
    rcpt = f"<{OPTED_OUT_MARKED}>"
    message = make_message(REVIEW_SENDER, [OPTED_OUT_MARKED], subject, extra_headers=[TAG])
    result = stack.postfix.smtp(REVIEW_SENDER, [rcpt], message, verbatim=True)
    assert result.data_reply is not None and result.data_reply[0] == 550, result
    wait_decision(stack, "blacklisted-20@amazon.fr", "smtp", "eom", "refuse", "opted-out")

    subject = order_subject("exact-optout-sendmail", "302-9000001-0000002")
    message = make_message(REVIEW_SENDER, [OPTED_OUT_MARKED], subject, extra_headers=[TAG])
    assert stack.postfix.sendmail(REVIEW_SENDER, [OPTED_OUT_MARKED], message).returncode == 0
    bounce = local_bounce(stack, "support", subject)
    assert "opted out" in " ".join(bounce.notification.split())
    wait_decision(stack, "blacklisted-20@amazon.fr", "sendmail", "eom", "refuse", "opted-out")
    assert copies(stack, subject) == []


def test_one_review_request_per_order_whatever_the_spelling(stack: Stack) -> None:
    order = "302-9000002-0000001"
    first = order_subject("exact-first", order)
    rcpt = "<x%marketplace.amazon.de%localhost@localhost>"  # Postfix resolves it: the channel grants
    message = make_message(REVIEW_SENDER, [rcpt], first, extra_headers=[TAG])
    result = stack.postfix.smtp(REVIEW_SENDER, [rcpt], message, verbatim=True)
    assert result.queued, result
    assert relayed_to(stack, first) == ["x@marketplace.amazon.de"]
    wait_decision(stack, "x@marketplace.amazon.de", "smtp", "eom", "deliver", "channel")
    assert SqliteStore(stack.workdir / "amzguard.sqlite").buyer_for_order(order) == "x@marketplace.amazon.de"

    for spelling in ("<localhost!marketplace.amazon.de!X@localhost>", '<"x@marketplace.amazon.de">'):
        again = order_subject("exact-again", order)
        message = make_message(REVIEW_SENDER, [spelling], again, extra_headers=[TAG])
        result = stack.postfix.smtp(REVIEW_SENDER, [spelling], message, verbatim=True)
        assert result.data_reply is not None and result.data_reply[0] == 550, (spelling, result)
        assert copies(stack, again) == []
    again = order_subject("exact-again-sendmail", order)
    message = make_message(REVIEW_SENDER, ["x\\@marketplace.amazon.de"], again, extra_headers=[TAG])
    assert stack.postfix.sendmail(REVIEW_SENDER, ["x\\@marketplace.amazon.de"], message).returncode == 0
    bounce = local_bounce(stack, "support", again)
    assert "one per order" in " ".join(bounce.notification.split())
    assert copies(stack, again) == []


def test_routed_buyer_on_sendmail_is_refused_as_unresolved_even_with_a_tag(stack: Stack) -> None:
    subject = order_subject("exact-unresolved", "302-9000003-0000001")
    spelling = "x%marketplace.amazon.de%localhost@localhost"
    message = make_message(REVIEW_SENDER, [spelling], subject, extra_headers=[TAG])
    assert stack.postfix.sendmail(REVIEW_SENDER, [spelling], message).returncode == 0
    bounce = local_bounce(stack, "support", subject)
    assert "routing form" in " ".join(bounce.notification.split())
    stack.milter.wait_log("path=sendmail stage=eom channel=none decision=refuse reason=unresolved-route")
    assert_no_secret(bounce.returned.as_bytes())
    assert copies(stack, subject) == []


def test_marked_routed_buyer_granted_by_the_channel_is_delivered_unmarked(stack: Stack) -> None:
    """Item 6: ``amazon.fr!blacklisted-31@localhost`` (Postfix: blacklisted-31@amazon.fr) was refused as
    marker-only; the resolved address is judged now, and its unmarked form delivered."""
    subject = order_subject("exact-marked-routed", "302-9000004-0000001")
    rcpt = "<amazon.fr!blacklisted-31@localhost>"
    message = make_message(REVIEW_SENDER, [rcpt], subject, extra_headers=[TAG])
    result = stack.postfix.smtp(REVIEW_SENDER, [rcpt], message, verbatim=True)
    assert result.queued, result
    assert relayed_to(stack, subject) == ["31@amazon.fr"]
    wait_decision(stack, "blacklisted-31@amazon.fr", "smtp", "eom", "deliver-unmarked", "channel")


# -- class 3: a delete really deletes ---------------------------------------------------------------

SMTP_REWRITTEN = [
    "<@a.example:q7x@marketplace.amazon.de>",
    "<q7x@marketplace.amazon.de.>",
    "<Q7X@Marketplace.AMAZON.de>",
    '<"q7x"@marketplace.amazon.de>',
    "<q7x\\@marketplace.amazon.de>",
]


@pytest.mark.parametrize("rcpt", SMTP_REWRITTEN)
def test_smtp_refused_buyer_is_really_removed_and_only_then_bounced(stack: Stack, rcpt: str) -> None:
    """Undecided at RCPT (the review sender, untagged), refused at end of message: the buyer is deleted
    (the text smtpd queued) and swapped for the stand-in that bounces; the partner gets the message."""
    subject = unique_token("exact-delete")
    offset = stack.postfix.log_offset()
    message = make_message(REVIEW_SENDER, [PARTNER], subject)
    result = stack.postfix.smtp(REVIEW_SENDER, [rcpt, PARTNER], message, verbatim=True)
    assert result.rcpt_replies[rcpt][0] == 250 and result.queued, result
    assert relayed_to(stack, subject) == [PARTNER]
    bounce = local_bounce(stack, "support", subject)
    [refused] = bounce.recipients
    assert refused["Final-Recipient"].lower().replace(" ", "").endswith("@buyer-mail.amzguard.invalid")
    queue_id = result.queue_id
    stack.postfix.wait_removed(queue_id, after=offset)
    delivered = re.findall(rf"{queue_id}: to=<([^>]*)>.*status=sent", stack.postfix.log_since(offset))
    assert delivered == [PARTNER]  # the buyer's copy really is gone, not merely reported so


MARKED_REWRITTEN = ["blacklisted-41@amazon.fr.", '"blacklisted-41"@amazon.fr', "BLACKLISTED-41@amazon.fr"]


@pytest.mark.parametrize("spelling", MARKED_REWRITTEN)
def test_sendmail_review_to_a_rewritten_marked_buyer_delivers_only_unmarked(stack: Stack, spelling: str) -> None:
    subject = order_subject("exact-unmark", f"302-9000005-{MARKED_REWRITTEN.index(spelling):07d}")
    message = make_message(REVIEW_SENDER, [spelling], subject, extra_headers=[TAG])
    offset = stack.postfix.log_offset()
    assert stack.postfix.sendmail(REVIEW_SENDER, [spelling], message).returncode == 0
    assert relayed_to(stack, subject) == ["41@amazon.fr"]
    queue_id = stack.postfix.wait_log(r"(\w+): to=<41@amazon\.fr>.*status=sent", after=offset).group(1)
    stack.postfix.wait_removed(queue_id, after=offset)
    assert re.findall(rf"{queue_id}: to=<([^>]*)>", stack.postfix.log_since(offset)) == ["41@amazon.fr"]
    [copy] = copies(stack, subject)
    assert_no_secret(copy.raw)


def test_sendmail_t_review_to_a_marked_buyer_with_a_trailing_dot(stack: Stack) -> None:
    subject = order_subject("exact-unmark-t", "302-9000006-0000001")
    message = make_message(REVIEW_SENDER, ["blacklisted-42@amazon.fr."], subject, extra_headers=[TAG])
    offset = stack.postfix.log_offset()
    assert stack.postfix.sendmail(REVIEW_SENDER, [], message, extra_args=("-t", "-i")).returncode == 0
    assert relayed_to(stack, subject) == ["42@amazon.fr"]
    queue_id = stack.postfix.wait_log(r"(\w+): to=<42@amazon\.fr>.*status=sent", after=offset).group(1)
    stack.postfix.wait_removed(queue_id, after=offset)
    assert re.findall(rf"{queue_id}: to=<([^>]*)>", stack.postfix.log_since(offset)) == ["42@amazon.fr"]


def test_sendmail_source_routed_marked_buyer_keeps_its_marked_copy_only_off_amazon(stack: Stack) -> None:
    """What remains on the sendmail(1) path (docs/recipients.md): cleanup dropped the source route before
    the milter saw the address, so no delete names the queued text; the marked copy goes to the marked
    address (no relay address), the buyer gets the unmarked one, and neither carries the secret."""
    subject = order_subject("exact-unmark-route", "302-9000007-0000001")
    spelling = "@a.example:blacklisted-43@amazon.fr"
    message = make_message(REVIEW_SENDER, ["blacklisted-43@amazon.fr"], subject, extra_headers=[TAG])
    assert stack.postfix.sendmail(REVIEW_SENDER, [spelling], message).returncode == 0
    assert relayed_to(stack, subject, rcpts=2) == ["43@amazon.fr", "blacklisted-43@amazon.fr"]
    for copy in copies(stack, subject):
        assert_no_secret(copy.raw)


def test_sendmail_canonical_mapped_marked_buyer_keeps_its_marked_copy_only_off_amazon(stack: Stack) -> None:
    """The other case docs/recipients.md names: the milter sees the canonical result, the queue keeps the
    address as given, so the marked copy stays; the buyer still gets only the unmarked one."""
    subject = order_subject("exact-unmark-canonical", "302-9000007-0000002")
    message = make_message(REVIEW_SENDER, [CANONICAL], subject, extra_headers=[TAG])
    assert stack.postfix.sendmail(REVIEW_SENDER, [CANONICAL], message).returncode == 0
    assert relayed_to(stack, subject, rcpts=2) == ["45@amazon.fr", "blacklisted-45@amazon.fr"]
    wait_decision(stack, CANONICAL_TO, "sendmail", "eom", "deliver-unmarked", "channel")
    for copy in copies(stack, subject):
        assert_no_secret(copy.raw)


# -- class 4: the secret never in a bounce ----------------------------------------------------------


def test_sendmail_refused_review_request_bounces_without_the_secret(stack: Stack) -> None:
    subject = order_subject("exact-secret", "302-9000008-0000001")
    message = make_message(OUTSIDE_REVIEWER, [OPTED_OUT_MARKED, PARTNER], subject, extra_headers=[TAG, TAG])
    done = stack.postfix.sendmail(OUTSIDE_REVIEWER, [OPTED_OUT_MARKED, PARTNER], message)
    assert done.returncode == 0, done.stderr
    bounce = outside_bounce(stack, subject)
    assert_no_secret(bounce.raw)
    report = parse_bounce(bounce.message)
    assert report.returned is not None and subject_of(report.returned) == subject  # the original is attached
    assert len(report.recipients) == 2  # refused whole: nobody got it, and the bounce says so
    assert copies(stack, subject) == []


def test_sendmail_duplicate_review_request_bounces_without_the_secret(stack: Stack) -> None:
    order = "302-9000009-0000001"
    first = order_subject("exact-secret-first", order)
    message = make_message(OUTSIDE_REVIEWER, ["m5m5m5@marketplace.amazon.it"], first, extra_headers=[TAG])
    assert stack.postfix.smtp(OUTSIDE_REVIEWER, ["m5m5m5@marketplace.amazon.it"], message).queued
    assert relayed_to(stack, first) == ["m5m5m5@marketplace.amazon.it"]
    again = order_subject("exact-secret-again", order)
    message = make_message(OUTSIDE_REVIEWER, ["M5M5M5@marketplace.amazon.it."], again, extra_headers=[TAG])
    assert stack.postfix.sendmail(OUTSIDE_REVIEWER, ["M5M5M5@marketplace.amazon.it."], message).returncode == 0
    bounce = outside_bounce(stack, again)
    assert_no_secret(bounce.raw)
    assert "one per order" in " ".join(parse_bounce(bounce.message).notification.split())


def test_smtp_refused_review_request_is_answered_to_the_client_and_never_bounced(stack: Stack) -> None:
    subject = order_subject("exact-secret-smtp", "302-9000010-0000001")
    rcpt = f"<{OPTED_OUT_MARKED}>"
    offset = stack.postfix.log_offset()
    message = make_message(OUTSIDE_REVIEWER, [OPTED_OUT_MARKED], subject, extra_headers=[TAG])
    result = stack.postfix.smtp(OUTSIDE_REVIEWER, [rcpt], message, verbatim=True)
    assert result.data_reply is not None and result.data_reply[0] == 550, result
    match = stack.postfix.wait_log(r"(\w+): milter-reject: END-OF-MESSAGE from .*from=<reviews@mailer\.example>",
                                   after=offset)  # fmt: skip
    # smtpd refused the message in the session: nothing was queued, so there is nothing to bounce.
    assert stack.postfix.queue() == []
    assert f"{match.group(1)}: sender non-delivery notification" not in stack.postfix.log_since(offset)


def test_smtp_mixed_refusal_bounce_carries_no_secret(stack: Stack) -> None:
    """SMTP, refusal.mixed_recipients bounce: the partner gets the message, the refused buyer's stand-in is
    bounced by the error: transport from the queue file the milter edited: no tag in that bounce."""
    subject = order_subject("exact-secret-mixed", "302-9000011-0000001")
    rcpt = f"<{OPTED_OUT_MARKED}>"
    message = make_message(OUTSIDE_REVIEWER, [OPTED_OUT_MARKED, PARTNER], subject, extra_headers=[TAG])
    result = stack.postfix.smtp(OUTSIDE_REVIEWER, [rcpt, PARTNER], message, verbatim=True)
    assert result.queued, result
    assert relayed_to(stack, subject) == [PARTNER]
    bounce = outside_bounce(stack, subject)
    assert_no_secret(bounce.raw)
    [refused] = parse_bounce(bounce.message).recipients
    assert refused["Final-Recipient"].replace(" ", "").endswith("@opted-out.amzguard.invalid")
    for copy in copies(stack, subject):
        assert_no_secret(copy.raw)


# -- the shipped header checks: defence in depth for mail that leaves by SMTP -----------------------

HEADER_CHECKS = REPO / "etc" / "postfix" / "amzguard-header-checks.regexp"


def test_header_checks_keep_the_tag_from_leaving_even_in_monitor_mode() -> None:
    """Monitor mode strips nothing; the shipped header checks still keep the tag from leaving by SMTP,
    in the message and in a bounce that attaches it (nested header checks)."""
    checks = f"regexp:{HEADER_CHECKS}"
    started = start_stack("exact-hc", channels=_CHANNELS, mode="monitor",
                          main_cf={"smtp_header_checks": checks, "smtp_nested_header_checks": checks})  # fmt: skip
    try:
        subject = unique_token("exact-hc")
        message = make_message(OUTSIDE_REVIEWER, [PARTNER], subject, extra_headers=[TAG])
        assert started.postfix.smtp(OUTSIDE_REVIEWER, [PARTNER], message).queued
        [copy] = started.postfix.sink.wait_for(1, predicate=lambda m: subject_of(m.message) == subject)
        assert_no_secret(copy.raw)
        bounced = unique_token("exact-hc-bounce")
        # A recipient the shipped transport map bounces: the DSN to the outside sender attaches the original.
        stand_in = "x=example.org@buyer-mail.amzguard.invalid"
        message = make_message(OUTSIDE_REVIEWER, [stand_in], bounced, extra_headers=[TAG])
        done = started.postfix.sendmail(OUTSIDE_REVIEWER, [stand_in], message)
        assert done.returncode == 0, done.stderr
        [bounce] = started.postfix.sink.wait_for(
            1, predicate=lambda m: m.mail_from == "" and returned_subject(m.message) == bounced)
        assert_no_secret(bounce.raw)
    finally:
        stop_stack(started)


def test_header_checks_file_names_the_tag() -> None:
    lines = [line for line in Path(HEADER_CHECKS).read_text().splitlines() if line and not line.startswith("#")]
    assert lines == ["/^X-Amzguard-Channel:/ IGNORE"]
