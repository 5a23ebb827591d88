"""Issue 13 on a real Postfix: mail without buyers leaves the milter at DATA, on both submission paths.

What is checked is what really happened: Postfix's own account of whether it sent the message to the
milter (cleanup runs with -v and logs ``milter8_message: message to milter`` for each message whose
header fields, body and end of message it sends to a milter; on the sendmail(1) path, where cleanup
itself talks to the milter, ``milter8_message: skip message to milter`` for one accepted at DATA; on the
SMTP path smtpd hands cleanup only milters still active, so cleanup logs ``receive 0 milters`` and
sends nothing), amzguard's decision lines, the SMTP replies, and what reached the sink or a local
mailbox. The shipped header checks are installed, as docs/fast-path.md tells an admin to.
All addresses are made up.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import REPO, REVIEW_SENDER, REVIEW_SENDER_CHANNELS, SHOP_SENDER, Stack, start_stack, stop_stack
from tests.e2e.harness import SinkMessage, _normalize_crlf, make_message, unique_token
from tests.support.milter_process import REVIEW_TOKEN

HEADER_CHECKS = f"regexp:{REPO / 'etc' / 'postfix' / 'amzguard-header-checks.regexp'}"
TAG = ("X-Amzguard-Channel", f"review {REVIEW_TOKEN}")
PARTNER = "partner@example.org"
OUTSIDE = "orders@mailer.example"
"""A shop system sending from an outside domain: its bounces leave by SMTP and reach the sink."""
OWNER = "owner@shop.test"
BUYER = "q7x2k9m4p1z8w3v5@marketplace.amazon.de"
MARKED = "blacklisted-40417@amazon.fr"
SKIPPED = "milter8_message: skip message to milter"
SENT = "milter8_message: message to milter"
ODD_HEADERS = [
    ("X-Order", "302-1234567-7654321"),
    ("Subject-Note", "  folded\r\n\tcontinuation line"),
    ("X-Empty", ""),
    ("Reply-To", "Example Shop <help@shop.test>"),
]
"""Header fields that a milter's header edits would disturb if it made any (a folded and an empty one)."""


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    started = start_stack(
        "fast",
        channels=REVIEW_SENDER_CHANNELS,
        main_cf={
            "cleanup_service_name": "vcleanup",
            "smtp_header_checks": HEADER_CHECKS,
            "smtp_nested_header_checks": HEADER_CHECKS,
        },
        extra_master_cf="vcleanup  unix  n       -       n       -       0       cleanup -v\n",
    )
    yield started
    stop_stack(started)


def subject_of(message: SinkMessage) -> str:
    return str(message.message.get("Subject", ""))


def milter_handoffs(stack: Stack, offset: int) -> tuple[int, int]:
    """(messages cleanup skipped for a milter that accepted at DATA (sendmail(1) path), messages whose
    content it sent to the milter) in the log since ``offset``."""
    log = stack.postfix.log_since(offset)
    return log.count(SKIPPED), log.count(SENT)


def stages(stack: Stack, queue_id: str) -> set[str]:
    text = stack.milter.wait_log(f"{queue_id}: from=")
    return set(re.findall(rf"^amzguard\[\d+\]: {queue_id}: from=.* stage=(\w+) ", text, re.M))


def header_fields(head: str) -> list[tuple[str, str]]:
    """(name, value) per header field of a header block with LF line ends; folded lines kept in the value."""
    fields: list[tuple[str, str]] = []
    for line in head.split("\n"):
        if line[:1] in (" ", "\t"):
            name, value = fields[-1]
            fields[-1] = (name, f"{value}\n{line}")
        else:
            name, _, value = line.partition(":")
            fields.append((name, value[1:] if value.startswith(" ") else value))
    return fields


def sent_headers(message: bytes) -> list[tuple[str, str]]:
    return header_fields(_normalize_crlf(message).split(b"\r\n\r\n", 1)[0].decode().replace("\r\n", "\n"))


def received_headers(copy: SinkMessage) -> list[tuple[str, str]]:
    return header_fields(copy.data.split(b"\n\n", 1)[0].decode())


@pytest.mark.parametrize("path", ["smtp", "sendmail"])
def test_ordinary_mail_leaves_at_data_with_its_headers_untouched_but_the_tag(stack: Stack, path: str) -> None:
    postfix = stack.postfix
    subject = unique_token(f"fast-{path}")
    message = make_message(SHOP_SENDER, [PARTNER], subject, body="Order shipped.\n", extra_headers=[*ODD_HEADERS, TAG])
    offset = postfix.log_offset()
    if path == "smtp":
        result = postfix.smtp(SHOP_SENDER, [PARTNER], message)
        assert result.queued, result
        queue_id = result.queue_id
    else:
        assert postfix.sendmail(SHOP_SENDER, [PARTNER], message).returncode == 0
        queue_id = postfix.wait_log(r"(\w+): message-id=", after=offset).group(1)
    [copy] = postfix.sink.wait_for(1, predicate=lambda m: subject_of(m) == subject)
    assert stages(stack, queue_id) == {"data"}
    assert milter_handoffs(stack, offset) == ((0, 0) if path == "smtp" else (1, 0))
    if path == "smtp":
        assert "receive 0 milters" in postfix.log_since(offset)
    assert REVIEW_TOKEN.encode() not in copy.raw  # the shipped smtp_header_checks took the tag out
    expected = [field for field in sent_headers(message) if field[0] != TAG[0]]
    got = [field for field in received_headers(copy) if field[0] != "Received"]
    assert got == expected
    assert copy.data.split(b"\n\n", 1)[1].startswith(b"Order shipped.\n")


def test_a_tag_in_a_bounce_of_mail_without_buyers_never_reaches_the_sink(stack: Stack) -> None:
    """The nested header checks: a bounce that attaches the original (a stand-in address the shipped
    transport map bounces) leaves by SMTP without the tag."""
    postfix = stack.postfix
    subject = unique_token("fast-bounce")
    stand_in = "x=example.org@buyer-mail.amzguard.invalid"
    message = make_message(OUTSIDE, [stand_in], subject, extra_headers=[TAG])
    offset = postfix.log_offset()
    assert postfix.sendmail(OUTSIDE, [stand_in], message).returncode == 0
    [bounce] = postfix.sink.wait_for(1, predicate=lambda m: m.mail_from == "" and subject.encode() in m.raw)
    assert milter_handoffs(stack, offset)[1] == 0  # the original was accepted at DATA
    assert REVIEW_TOKEN.encode() not in bounce.raw
    assert b"message/rfc822" in bounce.raw


def test_a_local_mailbox_of_the_shop_sees_a_tag_on_mail_without_buyers(stack: Stack) -> None:
    """The documented limit (docs/fast-path.md): local and virtual delivery run no header checks, and a
    sender that may use no tagged channel is accepted at DATA, so its mail keeps a tag it carries."""
    postfix = stack.postfix
    subject = unique_token("fast-local")
    offset = postfix.log_offset()
    assert postfix.smtp(SHOP_SENDER, [OWNER], make_message(SHOP_SENDER, [OWNER], subject, extra_headers=[TAG])).queued
    [delivered] = postfix.wait_mailbox("owner", predicate=lambda m: str(m.get("Subject")) == subject)
    assert milter_handoffs(stack, offset) == (0, 0)
    assert delivered.get_all(TAG[0]) == [TAG[1]]


def test_the_review_mailer_keeps_going_to_end_of_message_so_its_tag_is_deleted_everywhere(stack: Stack) -> None:
    postfix = stack.postfix
    subject = unique_token("fast-review-local")
    offset = postfix.log_offset()
    message = make_message(REVIEW_SENDER, [OWNER], subject, extra_headers=[TAG])
    assert postfix.sendmail(REVIEW_SENDER, [OWNER], message).returncode == 0
    [delivered] = postfix.wait_mailbox("owner", predicate=lambda m: str(m.get("Subject")) == subject)
    assert milter_handoffs(stack, offset) == (0, 1)
    assert delivered.get_all(TAG[0]) is None


@contextlib.contextmanager
def smtp_connection(stack: Stack) -> Iterator[smtplib.SMTP]:
    client = smtplib.SMTP("127.0.0.1", stack.postfix.smtp_port, timeout=30)
    try:
        client.ehlo("client.test")
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.quit()


def transaction(client: smtplib.SMTP, sender: str, rcpts: list[str], message: bytes) -> tuple[dict[str, int], tuple[int, str]]:
    """One transaction on an open connection: RCPT codes and the reply to the message (RSET after)."""
    assert client.mail(sender)[0] == 250
    codes = {rcpt: client.rcpt(rcpt)[0] for rcpt in rcpts}
    if not any(code == 250 for code in codes.values()):
        client.rset()
        return codes, (0, "")
    try:
        code, text = client.data(_normalize_crlf(message))
    except smtplib.SMTPDataError as exc:
        code, text = exc.smtp_code, exc.smtp_error
    client.rset()
    return codes, (code, text.decode() if isinstance(text, bytes) else text)


def test_one_connection_mixing_ordinary_and_buyer_mail_judges_each_message(stack: Stack) -> None:
    """smtpd sends a milter abort after each message and every callback again for the next: a message
    accepted at DATA leaves nothing behind, and buyer mail after it is judged in full."""
    postfix = stack.postfix
    tag = unique_token("fast-mixed")
    offset = postfix.log_offset()
    replies = []
    with smtp_connection(stack) as client:
        plan = [
            (SHOP_SENDER, [PARTNER], []),  # 1 ordinary: accepted at DATA
            (SHOP_SENDER, [BUYER, PARTNER], []),  # 2 buyer refused at RCPT, the partner's copy at DATA
            (REVIEW_SENDER, [MARKED, PARTNER], [TAG]),  # 3 review request: end of message, unmarked, tag deleted
            (REVIEW_SENDER, [BUYER], []),  # 4 untagged to a buyer: refused at end of message
            (SHOP_SENDER, [PARTNER], [TAG]),  # 5 ordinary again: accepted at DATA
        ]
        for index, (sender, rcpts, extra) in enumerate(plan, 1):
            message = make_message(sender, rcpts, f"{tag}-{index}", extra_headers=extra)
            replies.append(transaction(client, sender, rcpts, message))
    assert [codes for codes, _ in replies] == [
        {PARTNER: 250}, {BUYER: 550, PARTNER: 250}, {MARKED: 250, PARTNER: 250}, {BUYER: 250}, {PARTNER: 250},
    ]  # fmt: skip
    assert [reply[0] for _, reply in replies] == [250, 250, 250, 550, 250]
    queue_ids = [re.search(r"queued as (\w+)", text).group(1) for _, (code, text) in replies if code == 250]
    assert [stages(stack, queue_id) for queue_id in queue_ids] == [{"data"}, {"data"}, {"eom"}, {"data"}]
    copies = postfix.sink.wait_for(4, predicate=lambda m: subject_of(m).startswith(tag))
    by_subject = {subject_of(copy): copy for copy in copies}
    assert sorted(by_subject) == [f"{tag}-{n}" for n in (1, 2, 3, 5)]
    assert by_subject[f"{tag}-2"].rcpts == [PARTNER]
    assert sorted(by_subject[f"{tag}-3"].rcpts) == sorted(["40417@amazon.fr", PARTNER])
    assert all(REVIEW_TOKEN.encode() not in copy.raw for copy in copies)
    postfix.wait_queue_empty()
    assert milter_handoffs(stack, offset) == (0, 2)  # SMTP: the three accepted at DATA never reach cleanup's milter
