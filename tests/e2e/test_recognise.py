"""Review requests without the tag on a real Postfix (issue 12 item 1): (a) a shop plugin that sends through
PHP ``mail()`` (Postfix's sendmail(1) with ``-t -i -f``), recognised by envelope sender + subject pattern;
(b) a review tool that logs in with its own SMTP account (SASL through a throwaway Dovecot, sasl.py),
recognised by its login. Asserted on the sink, the bounces, SMTP replies and both logs. Buyers, users,
passwords and wording are made up."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import REVIEW_SENDER, Stack, bounces_about, start_stack, stop_stack, subject_of
from tests.e2e.harness import make_message, make_workdir, unique_token
from tests.e2e.sasl import DovecotSasl

MARKED_BUYER = "blacklisted-q7x2k9m4p1z8w3v5@marketplace.amazon.de"
UNMARKED_BUYER = "q7x2k9m4p1z8w3v5@marketplace.amazon.de"
RELAY_BUYER = "r8y3l0n5q2a9x4w6@marketplace.amazon.de"
TOOL_SENDER = "reviews@shop.test"
TOOL_LOGIN, TOOL_PASSWORD = "review-tool", "made-up-pass-1"
STAFF_LOGIN, STAFF_PASSWORD = "shop-staff", "made-up-pass-2"
PLUGIN_SUBJECT = "Ihre Meinung zu Ihrer Bestellung *"
BODY = "Wie zufrieden sind Sie mit Ihrer Bestellung? (invented wording)\n"
ORDERS = iter(f"305-7654321-{n:07d}" for n in range(1, 10_000))


@pytest.fixture(scope="module")
def dovecot() -> Iterator[DovecotSasl]:
    workdir = make_workdir("amzguard-sasl-")
    started = DovecotSasl(workdir, {TOOL_LOGIN: TOOL_PASSWORD, STAFF_LOGIN: STAFF_PASSWORD}).start()
    yield started
    started.remove()
    workdir.rmdir()


@pytest.fixture(scope="module")
def stack(dovecot: DovecotSasl) -> Iterator[Stack]:
    # No secret: the tag is off, the two entries are the only ways in. Reply and critical are bounded to
    # the shop's support address, so that mail nothing can grant is refused at RCPT on SMTP.
    only_support = {"allowed_senders": [REVIEW_SENDER]}
    channels = {
        "review": {"enabled": True, "recognise": [{"sender": REVIEW_SENDER, "subject": PLUGIN_SUBJECT},
                                                  {"sasl_login": TOOL_LOGIN}]},
        "reply": only_support,
        "critical": only_support,
    }  # fmt: skip
    started = start_stack("recognise", channels=channels, main_cf=dovecot.postfix_settings())
    yield started
    stop_stack(started)




def sink_with_subject(stack: Stack, subject: str):
    return [m for m in stack.postfix.sink.messages() if subject_of(m.message) == subject]


def bounce_about(stack: Stack, user: str, subject: str):
    [bounce] = bounces_about(stack, user, subject)
    return bounce


def php_mail(stack: Stack, subject: str, to: str = MARKED_BUYER, sender: str = REVIEW_SENDER) -> None:
    """As PHP's mail() with a fifth parameter "-f sender" runs Postfix: ``sendmail -t -i -f sender``."""
    message = make_message(sender, to, subject, body=BODY)
    done = stack.postfix.sendmail(sender, [], message, extra_args=("-t", "-i"))
    assert done.returncode == 0, done.stderr


# -- (a) the plugin through PHP mail(): sender + subject -----------------------------------------------------


def test_plugin_request_is_delivered_unmarked_and_a_second_for_the_order_bounces(stack: Stack) -> None:
    order = next(ORDERS)
    subject = f"Ihre Meinung zu Ihrer Bestellung {order}"
    php_mail(stack, subject)
    [relayed] = stack.postfix.sink.wait_for(1, predicate=lambda m: subject_of(m.message) == subject)
    assert relayed.rcpts == [UNMARKED_BUYER]
    stack.milter.wait_log(f"rcpt=<{MARKED_BUYER}> path=sendmail stage=eom channel=review "
                          "decision=deliver-unmarked reason=channel recognised_by=sender+subject")  # fmt: skip
    stack.postfix.wait_queue_empty()

    again = f"Ihre Meinung zu Ihrer Bestellung {order} (erinnerung)"
    php_mail(stack, again)
    bounce = bounce_about(stack, "support", again)
    [recipient] = bounce.recipients
    assert recipient["Status"] == "5.7.1" and "already had its review request" in " ".join(bounce.notification.split())
    stack.milter.wait_log("decision=refuse reason=duplicate-review recognised_by=sender+subject")
    stack.postfix.wait_queue_empty()
    assert sink_with_subject(stack, again) == []


@pytest.mark.parametrize("case", ["other-subject", "other-sender"])
def test_plugin_entry_needs_both_sender_and_subject(stack: Stack, case: str) -> None:
    order = next(ORDERS)
    if case == "other-subject":
        subject, sender, mailbox = f"Ihre Bestellung {order} wurde versandt", REVIEW_SENDER, "support"
    else:
        subject, sender, mailbox = f"Ihre Meinung zu Ihrer Bestellung {order}", "shop@shop.test", "shop"
    php_mail(stack, subject, to=RELAY_BUYER, sender=sender)
    bounce = bounce_about(stack, mailbox, subject)
    assert [r["Status"] for r in bounce.recipients] == ["5.7.1"]
    stack.milter.wait_log(f"rcpt=<{RELAY_BUYER}> path=sendmail stage=eom channel=none decision=refuse reason=buyer-mail")
    stack.postfix.wait_queue_empty()
    assert sink_with_subject(stack, subject) == []


# -- (b) the review tool with its own SMTP account: SASL login -------------------------------------------------


def swaks(stack: Stack, subject: str, login: str | None = None, password: str = "") -> str:
    auth = ["--auth", "PLAIN", "--auth-user", login, "--auth-password", password] if login else []
    done = stack.postfix.swaks(["--from", TOOL_SENDER, "--to", RELAY_BUYER, "--header", f"Subject: {subject}",
                                "--body", BODY, "--ehlo", "tool.shop.test", *auth])  # fmt: skip
    return done.stdout


def test_review_tool_logged_in_is_delivered(stack: Stack) -> None:
    subject = f"How was your order {next(ORDERS)}?"
    transcript = swaks(stack, subject, TOOL_LOGIN, TOOL_PASSWORD)
    assert re.search(r"<-\s+235 2\.7\.0 ", transcript), transcript  # authenticated
    [relayed] = stack.postfix.sink.wait_for(1, predicate=lambda m: subject_of(m.message) == subject)
    assert relayed.rcpts == [RELAY_BUYER]
    stack.postfix.wait_log(rf"sasl_method=PLAIN, sasl_username={TOOL_LOGIN}")
    stack.milter.wait_log(f"rcpt=<{RELAY_BUYER}> path=smtp stage=eom channel=review decision=deliver "
                          "reason=channel recognised_by=sasl")  # fmt: skip


@pytest.mark.parametrize("login", [None, STAFF_LOGIN], ids=["no-login", "other-login"])
def test_without_the_tools_login_it_is_order_mail_refused_at_rcpt(stack: Stack, login: str | None) -> None:
    subject = f"How was your order {next(ORDERS)}?"
    transcript = swaks(stack, subject, login, STAFF_PASSWORD)
    assert re.search(rf"<\*\* 550 5\.7\.1 <{re.escape(RELAY_BUYER)}>: Amazon forbids e-mail", transcript), transcript
    stack.milter.wait_log(f"rcpt=<{RELAY_BUYER}> path=smtp stage=rcpt channel=none decision=refuse reason=buyer-mail")
    assert sink_with_subject(stack, subject) == []


def test_a_wrong_password_never_authenticates(stack: Stack) -> None:
    subject = f"How was your order {next(ORDERS)}?"
    transcript = swaks(stack, subject, TOOL_LOGIN, "not-the-password")
    assert re.search(r"<\*\* 535 ", transcript), transcript
    assert sink_with_subject(stack, subject) == []
