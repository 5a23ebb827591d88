"""Smoke tests for the e2e harness: Postfix without amzguard.

They prove that the harness routes mail where the amzguard e2e tests expect
it (sink vs. local maildir), on both submission paths, and record what
Postfix itself does for unknown users, ``error:`` transport refusals and a
missing milter socket. One Postfix instance per scenario, module-scoped, so
the whole file runs in a few seconds.
"""

from __future__ import annotations

import email.message
import re
from collections.abc import Callable, Iterator

import pytest

from .harness import (
    PostfixInstance,
    SinkMessage,
    make_message,
    parse_bounce,
    running_postfix,
    unique_token,
)

REFUSED_REGEXP = r"/@refused\.amzguard\.invalid$/ error:5.7.1 test refusal"
REFUSED_RCPT = "x=amazon.fr@refused.amzguard.invalid"
ORIGINAL_RCPT = "blacklisted-1@amazon.fr"


@pytest.fixture(scope="module")
def pf() -> Iterator[PostfixInstance]:
    """Plain Postfix, no milter, with an ``error:`` transport for refused.amzguard.invalid."""
    with running_postfix(transport_regexp=REFUSED_REGEXP) as inst:
        yield inst


@pytest.fixture(scope="module")
def pf_unlisted_ok() -> Iterator[PostfixInstance]:
    """Like ``pf`` but smtpd accepts recipients that resolve to ``error:``.

    With the default ``smtpd_reject_unlisted_recipient = yes`` smtpd refuses
    such a recipient at RCPT time (no bounce), so this instance is needed to
    get an SMTP-submitted recipient with ORCPT into the queue and bounced.
    """
    with running_postfix(
        transport_regexp=REFUSED_REGEXP,
        extra_main_cf={"smtpd_reject_unlisted_recipient": "no"},
    ) as inst:
        yield inst


@pytest.fixture(scope="module")
def pf_dead_milter() -> Iterator[PostfixInstance]:
    """Postfix whose milter socket does not exist, default action tempfail."""
    with running_postfix(milter="unix:/nonexistent/sock", milter_default_action="tempfail") as inst:
        yield inst


def _by_subject(subject: str) -> Callable[[SinkMessage], bool]:
    return lambda m: m.message.get("Subject") == subject


def _returned_subject(msg: email.message.Message) -> str | None:
    """Subject of the original message attached to a bounce (None if not a bounce)."""
    if msg.get_content_type() != "multipart/report":
        return None
    returned = parse_bounce(msg).returned
    return None if returned is None else str(returned.get("Subject"))


# --------------------------------------------------------------------------- routing


def test_smtp_to_outside_address_lands_in_sink(pf: PostfixInstance) -> None:
    subject = unique_token("smtp-out")
    body = "first line\n.line starting with a dot\nlast line\n"
    msg = make_message("client@ext.test", "someone@outside.test", subject, body)

    res = pf.smtp("client@ext.test", ["someone@outside.test"], msg)

    assert res.mail_reply == (250, "2.1.0 Ok")
    assert res.rcpt_replies == {"someone@outside.test": (250, "2.1.5 Ok")}
    assert res.queued and res.queue_id, res
    (got,) = pf.sink.wait_for(1, predicate=_by_subject(subject))
    assert got.rcpts == ["someone@outside.test"]
    assert got.mail_from == "client@ext.test"
    assert got.orcpt("someone@outside.test") == "rfc822;someone@outside.test"
    assert got.message.get_payload() == body
    assert ("Subject", subject) in got.headers
    assert not any(name.startswith("X-Rcpt") for name, _ in got.headers)
    assert f"with ESMTP id {res.queue_id}" in got.message["Received"]
    line = pf.wait_delivered("someone@outside.test")
    assert line["qid"] == res.queue_id
    assert "relay=127.0.0.1[127.0.0.1]:%d" % pf.sink.port in line.group(0)


def test_swaks_to_outside_address_lands_in_sink(pf: PostfixInstance) -> None:
    subject = unique_token("swaks-out")
    cp = pf.swaks(["-f", "client@ext.test", "-t", "swaks@outside.test", "--header", f"Subject: {subject}"])

    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert re.search(r"^<-  250 2\.0\.0 Ok: queued as \w+$", cp.stdout, re.M), cp.stdout
    (got,) = pf.sink.wait_for(1, predicate=_by_subject(subject))
    assert got.rcpts == ["swaks@outside.test"] and got.mail_from == "client@ext.test"


def test_smtp_to_local_user_lands_in_mailbox(pf: PostfixInstance) -> None:
    subject = unique_token("smtp-local")
    res = pf.smtp("client@ext.test", ["owner@shop.test"], make_message("client@ext.test", "owner@shop.test", subject))

    assert res.queued, res
    (got,) = pf.wait_mailbox("owner", predicate=lambda m: m["Subject"] == subject)
    assert got["Delivered-To"] == "owner@shop.test"
    assert got["Return-Path"] == "<client@ext.test>"
    assert all(m.message["Subject"] != subject for m in pf.sink.messages())
    assert "relay=virtual" in pf.wait_delivered("owner@shop.test").group(0)


def test_sendmail_to_outside_address_lands_in_sink(pf: PostfixInstance) -> None:
    subject = unique_token("sendmail-out")
    off = pf.log_offset()
    cp = pf.sendmail("shop@shop.test", ["customer@outside.test"], make_message("shop@shop.test", "customer@outside.test", subject))

    assert cp.returncode == 0, cp
    (got,) = pf.sink.wait_for(1, predicate=_by_subject(subject))
    assert got.rcpts == ["customer@outside.test"]
    assert got.mail_from == "shop@shop.test"
    # Non-SMTP path: pickup logs the submitting uid, Received says "from userid 0".
    pf.wait_log(r"postfix/pickup\[\d+\]: \w+: uid=0 from=<shop@shop\.test>", after=off)
    assert "(Postfix, from userid 0)" in got.message["Received"]


def test_smtp_to_unknown_local_user_is_rejected(pf: PostfixInstance) -> None:
    subject = unique_token("smtp-unknown")
    off = pf.log_offset()
    res = pf.smtp("client@ext.test", ["nobody@shop.test"], make_message("client@ext.test", "nobody@shop.test", subject))

    code, text = res.rcpt_replies["nobody@shop.test"]
    assert code == 550
    assert text == "5.1.1 <nobody@shop.test>: Recipient address rejected: User unknown in virtual mailbox table"
    assert res.accepted == [] and res.data_reply is None
    pf.wait_log(r"NOQUEUE: reject: RCPT from localhost\[127\.0\.0\.1\]: 550 5\.1\.1 <nobody@shop\.test>", after=off)


def test_smtp_rcpt_routed_to_error_transport_is_rejected_at_rcpt(pf: PostfixInstance) -> None:
    """smtpd already refuses an ``error:``-routed recipient (no bounce on SMTP)."""
    res = pf.smtp(
        "shop@shop.test",
        [REFUSED_RCPT, "ok@outside.test"],
        make_message("shop@shop.test", ORIGINAL_RCPT, unique_token("smtp-refused")),
        rcpt_options={REFUSED_RCPT: [f"ORCPT=rfc822;{ORIGINAL_RCPT}"]},
    )
    assert res.rcpt_replies[REFUSED_RCPT] == (
        550,
        f"5.7.1 <{REFUSED_RCPT}>: Recipient address rejected: test refusal",
    )
    assert res.accepted == ["ok@outside.test"] and res.queued


# --------------------------------------------------------------------------- bounces


def test_sendmail_to_error_transport_bounces_to_sender(pf: PostfixInstance) -> None:
    subject = unique_token("sendmail-refused")
    off = pf.log_offset()
    cp = pf.sendmail("shop@shop.test", [REFUSED_RCPT], make_message("shop@shop.test", ORIGINAL_RCPT, subject))
    assert cp.returncode == 0, cp

    (bounce,) = pf.wait_mailbox("shop", predicate=lambda m: _returned_subject(m) == subject)
    assert bounce["Subject"] == "Undelivered Mail Returned to Sender"
    assert bounce["From"] == "Mail Delivery System <MAILER-DAEMON@mx.shop.test>"
    assert bounce["Return-Path"] == "<>"
    rep = parse_bounce(bounce)
    assert f"<{REFUSED_RCPT}>: test refusal" in rep.notification
    (rcpt,) = rep.recipients
    assert rcpt["Final-Recipient"] == f"rfc822; {REFUSED_RCPT}"
    assert rcpt["Original-Recipient"] == f"rfc822;{REFUSED_RCPT}"  # no ORCPT on this path
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "5.7.1"
    assert rcpt["Diagnostic-Code"] == "X-Postfix; test refusal"
    line = pf.wait_status(REFUSED_RCPT, "bounced", after=off)
    assert "relay=none" in line.group(0) and "dsn=5.7.1" in line.group(0)
    assert line["detail"] == "test refusal"
    pf.wait_log(rf"{line['qid']}: sender non-delivery notification: \w+", after=off)
    pf.wait_queue_empty()


def test_smtp_orcpt_is_shown_as_original_recipient_in_bounce(pf_unlisted_ok: PostfixInstance) -> None:
    pf = pf_unlisted_ok
    subject = unique_token("smtp-orcpt")
    off = pf.log_offset()
    res = pf.smtp(
        "shop@shop.test",
        [REFUSED_RCPT],
        make_message("shop@shop.test", ORIGINAL_RCPT, subject),
        rcpt_options={REFUSED_RCPT: [f"ORCPT=rfc822;{ORIGINAL_RCPT}"]},
    )
    assert res.rcpt_replies[REFUSED_RCPT] == (250, "2.1.5 Ok") and res.queued, res

    (bounce,) = pf.wait_mailbox("shop", predicate=lambda m: _returned_subject(m) == subject)
    rep = parse_bounce(bounce)
    # The human-readable part names the rewritten recipient, not the ORCPT.
    assert re.search(rf"^<{re.escape(REFUSED_RCPT)}>: test refusal$", rep.notification, re.M)
    assert ORIGINAL_RCPT not in rep.notification
    (rcpt,) = rep.recipients
    assert rcpt["Final-Recipient"] == f"rfc822; {REFUSED_RCPT}"
    assert rcpt["Original-Recipient"] == f"rfc822;{ORIGINAL_RCPT}"
    assert rcpt["Status"] == "5.7.1"
    assert rep.per_message["X-Postfix-Sender"] == "rfc822; shop@shop.test"
    assert rep.per_message["X-Postfix-Queue-ID"] == res.queue_id
    line = pf.wait_status(REFUSED_RCPT, "bounced", after=off)
    assert line["qid"] == res.queue_id
    assert ORIGINAL_RCPT not in line.group(0)  # the log line does not show the ORCPT either
    pf.wait_queue_empty()


# --------------------------------------------------------------------------- milter missing


def test_missing_milter_socket_tempfails_smtp_at_mail_from(pf_dead_milter: PostfixInstance) -> None:
    pf = pf_dead_milter
    off = pf.log_offset()
    res = pf.smtp("client@ext.test", ["someone@outside.test"], make_message("client@ext.test", "someone@outside.test", "x"))

    assert res.connect_reply is not None and res.connect_reply[0] == 220
    assert res.ehlo_reply is not None and res.ehlo_reply[0] == 250
    assert res.mail_reply == (451, "4.7.1 Service unavailable - try again later")
    assert res.rcpt_replies == {} and res.data_reply is None
    pf.wait_log(r"warning: connect to Milter service unix:/nonexistent/sock: No such file or directory", after=off)
    pf.wait_log(
        r"NOQUEUE: milter-reject: MAIL from localhost\[127\.0\.0\.1\]: 451 4\.7\.1 Service unavailable - try again later",
        after=off,
    )


def test_missing_milter_socket_keeps_sendmail_message_in_maildrop(pf_dead_milter: PostfixInstance) -> None:
    pf = pf_dead_milter
    subject = unique_token("sendmail-dead-milter")
    off = pf.log_offset()
    cp = pf.sendmail("shop@shop.test", ["customer@outside.test"], make_message("shop@shop.test", "customer@outside.test", subject))

    assert cp.returncode == 0, cp  # sendmail cannot know: the milter runs later, in cleanup
    pf.wait_log(
        r"postfix/cleanup\[\d+\]: \w+: milter-reject: CONNECT from localhost\[127\.0\.0\.1\]: "
        r"4\.7\.1 Service unavailable - try again later; from=<shop@shop\.test>",
        after=off,
    )
    entries = pf.queue_entries()
    assert [(e["queue_name"], e["sender"]) for e in entries] == [("maildrop", "shop@shop.test")]
    assert entries[0]["recipients"] == [{"address": "customer@outside.test"}]

    # Kicking pickup retries (and tempfails again); the message is still there.
    off2 = pf.log_offset()
    pf.flush()
    pf.wait_log(r"milter-reject: CONNECT .*from=<shop@shop\.test>", after=off2)
    assert [e["queue_name"] for e in pf.queue_entries()] == ["maildrop"]
    assert pf.sink.messages() == []
    pf.clear_queue()
    assert pf.queue() == []


# --------------------------------------------------------------------------- hygiene


def test_plain_instance_logged_no_warnings(pf: PostfixInstance) -> None:
    """Catches config mistakes (e.g. default alias_maps -> NIS warnings)."""
    pf.smtp("client@ext.test", ["hygiene@outside.test"], make_message("client@ext.test", "hygiene@outside.test", "h"))
    pf.wait_delivered("hygiene@outside.test")
    bad = [ln for ln in pf.maillog().splitlines() if re.search(r"\b(warning|error|fatal|panic):", ln)]
    assert bad == []
