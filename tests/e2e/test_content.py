"""Content rules on a real Postfix, on both paths: what reaches a buyer must also pass Amazon.

The messages are the made-up fixture files that ``amzguard lint`` and the milter test judge
(tests/fixtures/content), with a unique subject and order id per test so each finds its own message;
``amzguard lint`` runs on the very bytes sent and must announce what Postfix then does.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from amzguard.config import DEFAULT_REASON_TEXTS
from amzguard.policy import Reason
from tests.e2e.conftest import REVIEW_SENDER, Stack, start_stack, stop_stack
from tests.e2e.harness import parse_bounce, unique_token

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "content"
FIXTURE_TOKEN = "fixture-review-token-0123456789"
BUYER = "q7x2m4k9z1bc3de@marketplace.amazon.com"
CONTENT_TEXT = DEFAULT_REASON_TEXTS[Reason.CONTENT]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # Room for a message with more than 10 MB of attachments (Postfix's own default limit is 10240000).
    started = start_stack("content", channels={"review": {"enabled": True, "token": FIXTURE_TOKEN}},
                          main_cf={"message_size_limit": "40000000"})  # fmt: skip
    yield started
    stop_stack(started)


def fixture(name: str, subject: str, order: str | None = None) -> bytes:
    """The fixture with its Subject replaced (and its order id, so one-per-order never interferes)."""
    raw = (FIXTURES / name).read_bytes()
    raw = re.sub(rb"(?m)^Subject: .*\r$", b"Subject: " + subject.encode() + b"\r", raw, count=1)
    if order is not None:
        raw = re.sub(rb"\d{3}-\d{7}-\d{7}", order.encode(), raw)
    return raw


def unique_order() -> str:
    digits = str(uuid.uuid4().int)[:16]
    return f"3{digits[:2]}-{digits[2:9]}-{digits[9:16]}"


def lint(stack: Stack, raw: bytes, *options: str) -> tuple[int, dict]:
    done = subprocess.run(
        [sys.executable, "-m", "amzguard", "lint", "-c", str(stack.milter.config), "--format", "json",
         "--sender", REVIEW_SENDER, "--to", BUYER, *options, "-"],
        input=raw, capture_output=True, timeout=60,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr
    [result] = json.loads(done.stdout)
    return done.returncode, result


def subject_of(message) -> str:
    return " ".join(str(message.get("Subject", "")).split())


def in_sink(stack: Stack, subject: str):
    return stack.postfix.sink.wait_for(1, predicate=lambda m: subject_of(m.message) == subject)


def test_clean_review_request_is_delivered(stack: Stack) -> None:
    order = unique_order()
    subject = f"Your order {order} at Example Shop {unique_token('clean')}"
    raw = fixture("en_plain_review.eml", subject, order)
    status, result = lint(stack, raw)
    assert status == 0 and result["clean"], result
    sent = stack.postfix.smtp(REVIEW_SENDER, [BUYER], raw)
    assert sent.queued, sent
    [got] = in_sink(stack, subject)
    assert got.rcpts == [BUYER]
    assert got.message.get("X-Amzguard-Channel") is None  # the tag never leaves
    assert "a review on Amazon" in got.message.get_payload()
    stack.milter.wait_log(f"{sent.queue_id}: from=<{REVIEW_SENDER}> rcpt=<{BUYER}> path=smtp stage=eom "
                          "channel=review decision=deliver reason=channel")  # fmt: skip


def test_marketing_template_refused_on_smtp_with_its_reason(stack: Stack) -> None:
    order = unique_order()
    raw = fixture("en_marketing.eml", unique_token("sale"), order)
    status, result = lint(stack, raw)
    assert status == 1 and result["recipients"][0]["reason"] == "content"
    sent = stack.postfix.smtp(REVIEW_SENDER, [BUYER], raw)
    assert sent.data_reply is not None
    code, text = sent.data_reply
    text = " ".join(text.split())
    assert code == 550 and text == f"5.7.1 {result['refused_whole']}"
    assert text.startswith(f"5.7.1 <{BUYER}>: {CONTENT_TEXT}: unsubscribe-link: opt-out link to https://shop.example/")
    assert "tracking-pixel: image of 1x1 px from https://track.mailer.example/open/abc123.gif" in text
    assert stack.postfix.queue() == []
    stack.milter.wait_log(f"rcpt=<{BUYER}> path=smtp stage=eom channel=review decision=refuse reason=content recognised_by=tag "
                          "content=[remove list-unsubscribe: List-Unsubscribe header;")  # fmt: skip


def test_marketing_template_bounced_on_sendmail_with_its_reason(stack: Stack) -> None:
    order = unique_order()
    subject = unique_token("sale-sendmail")
    raw = fixture("en_marketing.eml", subject, order)
    status, result = lint(stack, raw, "--sendmail")
    assert status == 1
    done = stack.postfix.sendmail(REVIEW_SENDER, [BUYER], raw)
    assert done.returncode == 0, done.stderr

    def ours(message) -> bool:
        if message.get_content_type() != "multipart/report":
            return False
        returned = parse_bounce(message).returned
        return returned is not None and subject_of(returned) == subject

    [bounce] = [parse_bounce(m) for m in stack.postfix.wait_mailbox("support", predicate=ours)]
    [recipient] = bounce.recipients
    diagnostic = " ".join(recipient["Diagnostic-Code"].split())
    assert recipient["Status"] == "5.7.1"
    assert CONTENT_TEXT in diagnostic and "unsubscribe-link: opt-out link to" in diagnostic
    assert bounce.returned is not None and bounce.returned.get("X-Amzguard-Channel") is None
    assert not [m for m in stack.postfix.sink.messages() if subject_of(m.message) == subject]


def test_list_unsubscribe_removed_from_a_delivered_reply(stack: Stack) -> None:
    subject = f"Re: Question about your order {unique_token('reply')}"
    raw = fixture("en_reply_list_unsubscribe.eml", subject)
    status, result = lint(stack, raw)
    assert result["removed_headers"] == ["List-Unsubscribe"] and result["refused_whole"] is None
    sent = stack.postfix.smtp(REVIEW_SENDER, [BUYER], raw)
    assert sent.queued, sent
    [got] = in_sink(stack, subject)
    assert got.rcpts == [BUYER]
    assert got.message.get("List-Unsubscribe") is None
    assert got.message.get("In-Reply-To") == "<buyer-question-1@marketplace.amazon.com>"
    stack.milter.wait_log(f"{sent.queue_id}: from=<{REVIEW_SENDER}> rcpt=<{BUYER}> path=smtp stage=eom "
                          "channel=reply decision=deliver reason=channel content=[remove list-unsubscribe")  # fmt: skip


def test_oversized_attachment_refused(stack: Stack) -> None:
    subject = f"Re: the manual {unique_token('big')}"
    blob = base64.encodebytes(bytes(10_300_000)).replace(b"\n", b"\r\n")
    raw = (
        f"From: support@shop.test\r\nTo: {BUYER}\r\nSubject: {subject}\r\n"
        "In-Reply-To: <buyer-manual@marketplace.amazon.com>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="big"\r\n\r\n--big\r\nContent-Type: text/plain\r\n\r\n'
        "Here is the manual you asked for.\r\n--big\r\nContent-Type: application/pdf\r\n"
        "Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=manual.pdf\r\n\r\n"
    ).encode() + blob + b"--big--\r\n"
    status, result = lint(stack, raw)
    assert [f["rule"] for f in result["findings"]] == ["attachment-size"]
    sent = stack.postfix.smtp(REVIEW_SENDER, [BUYER], raw, timeout=120)
    assert sent.data_reply is not None
    code, text = sent.data_reply
    assert code == 550
    assert " ".join(text.split()).endswith("attachment-size: attachments of 10.3 MB in total (1 parts; limit 10.0 MB)")
    assert " ".join(text.split()) == f"5.7.1 {result['refused_whole']}"
