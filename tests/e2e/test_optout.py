"""Opt-outs, replies, critical messages and one review request per order on a real Postfix.

The register is filled with the real ``amzguard optout`` CLI and, through a Postfix ``pipe`` transport, from
an Amazon opt-out notice mailed to the shop, exactly as docs/operating.md wires it. Every address, order id and
notice is made up.
"""

from __future__ import annotations

import os
import pwd
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from amzguard.config import DEFAULT_REASON_TEXTS
from amzguard.store import SqliteStore
from amzguard.policy import Reason
from tests.e2e.conftest import REPO, REVIEW_SENDER, SHOP_SENDER, Stack, start_stack, stop_stack
from tests.e2e.harness import make_message, parse_bounce, unique_token
from tests.support.installed_copy import SYSTEM_PYTHON, install_world_readable
from tests.support.milter_process import REVIEW_TOKEN

NOTICES = REPO / "tests" / "fixtures" / "notices"
TAG = ("X-Amzguard-Channel", f"review {REVIEW_TOKEN}")
OPTED_OUT = "h8h8h8h8h8h8h8h8@marketplace.amazon.co.uk"
MARKED_OPTED_OUT = "blacklisted-77001@amazon.fr"
BUYER = "k2k2k2k2k2k2k2k2@marketplace.amazon.de"
OWNER = "owner@shop.test"
LEARN_ADDRESS = "optout@learn.shop.test"
OPTED_OUT_TEXT = DEFAULT_REASON_TEXTS[Reason.OPTED_OUT]
DUPLICATE_TEXT = DEFAULT_REASON_TEXTS[Reason.DUPLICATE_REVIEW]
NO_ORDER_TEXT = DEFAULT_REASON_TEXTS[Reason.NO_ORDER_ID]

def _pipe_service() -> str:
    """The shipped master.cf service (etc/postfix/amzguard-master.cf) as the test runs it: as nobody, on a
    world-readable copy of this checkout's amzguard (the test venv and a checkout under /root are out of
    nobody's reach), with the pipe's own config (below)."""
    shipped = (REPO / "etc" / "postfix" / "amzguard-master.cf").read_text().splitlines()
    text = "".join(line + "\n" for line in shipped if not line.startswith("#"))
    for production, here in (("user=amzguard", "user=nobody"), ("/usr/bin/amzguard", "{workdir}/pipe/bin/amzguard"),
                             ("/etc/amzguard/amzguard.yml", "{workdir}/learn.yml")):  # fmt: skip
        assert production in text, production
        text = text.replace(production, here)
    return text


PIPE_SERVICE = _pipe_service()
# The pipe's own config: the milter's store, and its lines to a syslog socket of the test's (the milter
# itself logs to stderr, which the harness reads), the mail it cannot learn from kept in unknown/.
LEARN_CONFIG = """\
store:
  path: store/amzguard.sqlite
logging:
  target: syslog
  syslog_socket: {workdir}/syslog.sock
optout:
  learn:
    keep_unknown: {workdir}/unknown
"""


def _system_python_can_run_amzguard() -> bool:
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return False
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import yaml, sqlite3, enum; enum.StrEnum"], capture_output=True)
    return probe.returncode == 0


def _prepare(workdir: Path) -> None:
    """The store's directory belongs to the pipe's user; the milter (root here) gives files it creates
    there to the directory's owner, so both can write (as the milter's user would in production)."""
    nobody = pwd.getpwnam("nobody")
    for name in ("store", "unknown"):
        (workdir / name).mkdir(mode=0o770)
        os.chown(workdir / name, nobody.pw_uid, nobody.pw_gid)
    (workdir / "learn.yml").write_text(LEARN_CONFIG.format(workdir=workdir))
    install_world_readable(workdir / "pipe")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    if not _system_python_can_run_amzguard():
        pytest.fail(f"{SYSTEM_PYTHON} with PyYAML is needed to run `optout learn` as the pipe user (make test installs python3-yaml)")
    started = start_stack(
        "optout",
        prepare=_prepare,
        transport_maps=f"inline:{{ {LEARN_ADDRESS}=amzguard-optout: }}",
        extra_master_cf=PIPE_SERVICE,
        channels={"review": {"enabled": True, "token": REVIEW_TOKEN, "allowed_senders": [REVIEW_SENDER],
                             "missing_order_id": "refuse"}},  # fmt: skip
        store={"path": "store/amzguard.sqlite"},
    )
    yield started
    stop_stack(started)


def store_of(stack: Stack) -> SqliteStore:
    return SqliteStore(stack.workdir / "store" / "amzguard.sqlite")


def optout_cli(stack: Stack, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "amzguard", "optout", args[0], "-c", str(stack.workdir / "amzguard.yml"), *args[1:]],
        input=stdin, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


@pytest.fixture(scope="module")
def registered(stack: Stack) -> None:
    done = optout_cli(stack, "add", OPTED_OUT.upper(), MARKED_OPTED_OUT)
    assert done.stdout == "added 2, already registered 0, skipped 0\n", done.stderr


def subject_of(message) -> str:
    return str(message.get("Subject", ""))


def sink_with_subject(stack: Stack, subject: str):
    return [m for m in stack.postfix.sink.messages() if subject_of(m.message) == subject]


def review(to: str | list[str], subject: str, body: str = "How was your order?\n") -> bytes:
    return make_message(REVIEW_SENDER, to, subject, body=body, extra_headers=[TAG])


def unfolded(text: str) -> str:
    return " ".join(text.split())


# -- the opt-out register ---------------------------------------------------------------------------


def test_opted_out_buyer_refused_for_review_on_smtp(stack: Stack, registered: None) -> None:
    subject = unique_token("optout-review") + " order 302-2000001-3000001"
    offset = stack.postfix.log_offset()
    result = stack.postfix.smtp(REVIEW_SENDER, [OPTED_OUT], review(OPTED_OUT, subject))
    assert result.data_reply is not None
    code, text = result.data_reply
    assert code == 550 and unfolded(text) == f"5.7.1 <{OPTED_OUT}>: {OPTED_OUT_TEXT}"
    stack.postfix.wait_log(r"milter-reject: END-OF-MESSAGE from .*: 5\.7\.1 <h8h8h8h8h8h8h8h8@", after=offset)
    stack.milter.wait_log(f"rcpt=<{OPTED_OUT}> path=smtp stage=eom channel=review decision=refuse reason=opted-out")
    assert stack.postfix.queue() == [] and sink_with_subject(stack, subject) == []
    assert store_of(stack).buyer_for_order("302-2000001-3000001") is None


def test_opted_out_marked_buyer_on_sendmail_refuses_the_request_whole(stack: Stack, registered: None) -> None:
    """sendmail(1) path: no delete is certain there, so a review request with an opted-out buyer is bounced
    whole to the shop, naming every recipient, the reason in each; nothing is recorded for the order."""
    subject = unique_token("optout-mixed") + " order 302-2000002-3000002"
    message = make_message(REVIEW_SENDER, [MARKED_OPTED_OUT, BUYER], subject, extra_headers=[TAG])
    done = stack.postfix.sendmail(REVIEW_SENDER, [MARKED_OPTED_OUT, BUYER], message)
    assert done.returncode == 0, done.stderr

    def is_ours(msg) -> bool:
        returned = parse_bounce(msg).returned if msg.get_content_type() == "multipart/report" else None
        return returned is not None and subject_of(returned) == subject

    [bounce] = [parse_bounce(m) for m in stack.postfix.wait_mailbox("support", predicate=is_ours)]
    assert sorted(r["Final-Recipient"].replace(" ", "") for r in bounce.recipients) == sorted(
        [f"rfc822;{MARKED_OPTED_OUT}", f"rfc822;{BUYER}"]
    )
    for recipient in bounce.recipients:
        assert recipient["Status"] == "5.7.1" and OPTED_OUT_TEXT in unfolded(recipient["Diagnostic-Code"])
    assert TAG[1] not in bounce.returned.as_string()  # the tag was deleted before the refusal
    stack.postfix.wait_queue_empty()
    assert sink_with_subject(stack, subject) == []
    assert store_of(stack).buyer_for_order("302-2000002-3000002") is None


def test_opted_out_buyer_still_gets_replies_and_critical_messages(stack: Stack, registered: None) -> None:
    reply_subject = unique_token("Re: your question")
    reply = make_message("support@shop.test", OPTED_OUT, reply_subject,
                         extra_headers=[("In-Reply-To", "<0100018c.77aa@marketplace.amazon.co.uk>")])  # fmt: skip
    assert stack.postfix.smtp("support@shop.test", [OPTED_OUT], reply).queued
    # With missing_order_id: refuse (this module's config) a critical message needs its order id too:
    # the old channels.review key now sets the content rule, which covers every proactive message.
    critical_subject = unique_token("[IMPORTANT] delivery appointment") + " order 302-2000009-3000009"
    critical = make_message(SHOP_SENDER, MARKED_OPTED_OUT, critical_subject)
    assert stack.postfix.sendmail(SHOP_SENDER, [MARKED_OPTED_OUT], critical).returncode == 0
    [got_reply] = stack.postfix.sink.wait_for(1, predicate=lambda m: subject_of(m.message) == reply_subject)
    assert got_reply.rcpts == [OPTED_OUT]
    [got_critical] = stack.postfix.sink.wait_for(1, predicate=lambda m: subject_of(m.message) == critical_subject)
    assert got_critical.rcpts == ["77001@amazon.fr"]  # marker removed, as for every channel
    stack.milter.wait_log(f"rcpt=<{OPTED_OUT}> path=smtp stage=eom channel=reply decision=deliver reason=channel")
    stack.milter.wait_log(f"rcpt=<{MARKED_OPTED_OUT}> path=sendmail stage=eom channel=critical "
                          "decision=deliver-unmarked reason=channel")  # fmt: skip
    # An order mail that is neither is still refused.
    plain = stack.postfix.smtp(SHOP_SENDER, [OPTED_OUT], make_message(SHOP_SENDER, OPTED_OUT, unique_token("shipped")))
    refusal = plain.data_reply or plain.rcpt_replies[OPTED_OUT]
    assert refusal[0] == 550 and "Amazon forbids e-mail about orders" in unfolded(refusal[1])


@pytest.mark.parametrize("path", ["smtp", "sendmail"])
def test_german_critical_marker_passes_an_opt_out(stack: Stack, registered: None, path: str) -> None:
    """[Wichtig], the marker Amazon's German help page names, is a default marker beside [Important] (issue 12)."""
    subject = unique_token("[Wichtig] Liefertermin abstimmen") + " Bestellung 302-2000010-3000010"
    message = make_message(SHOP_SENDER, MARKED_OPTED_OUT, subject)
    if path == "smtp":
        assert stack.postfix.smtp(SHOP_SENDER, [MARKED_OPTED_OUT], message).queued
    else:
        assert stack.postfix.sendmail(SHOP_SENDER, [MARKED_OPTED_OUT], message).returncode == 0
    [got] = stack.postfix.sink.wait_for(1, predicate=lambda m: subject_of(m.message) == subject)
    assert got.rcpts == ["77001@amazon.fr"]
    stack.milter.wait_log(f"rcpt=<{MARKED_OPTED_OUT}> path={path} stage=eom channel=critical "
                          "decision=deliver-unmarked reason=channel")  # fmt: skip
    # Without a marker the same message is order mail.
    plain = unique_token("Liefertermin abstimmen") + " Bestellung 302-2000010-3000010"
    refused = stack.postfix.smtp(SHOP_SENDER, [MARKED_OPTED_OUT], make_message(SHOP_SENDER, MARKED_OPTED_OUT, plain))
    assert (refused.data_reply or refused.rcpt_replies[MARKED_OPTED_OUT])[0] == 550


def test_register_change_applies_without_restart(stack: Stack) -> None:
    buyer = "m5m5m5m5m5m5m5m5@marketplace.amazon.it"
    assert optout_cli(stack, "add", buyer).returncode == 0
    first = stack.postfix.smtp(REVIEW_SENDER, [buyer], review(buyer, unique_token("live") + " 302-2000003-3000003"))
    assert first.data_reply is not None and first.data_reply[0] == 550
    assert optout_cli(stack, "remove", buyer).stdout.startswith("removed 1")
    subject = unique_token("live") + " 302-2000003-3000003"
    assert stack.postfix.smtp(REVIEW_SENDER, [buyer], review(buyer, subject)).queued
    stack.postfix.sink.wait_for(1, predicate=lambda m: subject_of(m.message) == subject)


# -- one review request per order -------------------------------------------------------------------


def test_second_review_request_for_an_order_is_refused(stack: Stack) -> None:
    order = "302-2000004-3000004"
    first_subject = unique_token("review-1")
    body = f"Dear customer,\nhow happy are you with order {order}?\n"
    first = stack.postfix.smtp(REVIEW_SENDER, [BUYER], review(BUYER, first_subject, body))
    assert first.queued, first
    stack.postfix.sink.wait_for(1, predicate=lambda m: subject_of(m.message) == first_subject)
    assert store_of(stack).buyer_for_order(order) == BUYER
    stack.milter.wait_log(f"{first.queue_id}: review request for order {order}")
    # The same order again, from the sendmail path, to a differently spelt buyer address: bounced.
    second_subject = unique_token("review-2") + f" {order}"
    done = stack.postfix.sendmail(REVIEW_SENDER, [BUYER.upper()], review(BUYER.upper(), second_subject))
    assert done.returncode == 0

    def is_ours(msg) -> bool:
        returned = parse_bounce(msg).returned if msg.get_content_type() == "multipart/report" else None
        return returned is not None and subject_of(returned) == second_subject

    [bounce] = [parse_bounce(m) for m in stack.postfix.wait_mailbox("support", predicate=is_ours)]
    assert DUPLICATE_TEXT in unfolded(bounce.notification)
    assert bounce.recipients[0]["Status"] == "5.7.1"
    # And on SMTP the client is told at once.
    third = stack.postfix.smtp(REVIEW_SENDER, [BUYER], review(BUYER, unique_token("review-3"), body))
    assert third.data_reply is not None
    assert third.data_reply[0] == 550 and unfolded(third.data_reply[1]) == f"5.7.1 <{BUYER}>: {DUPLICATE_TEXT}"
    stack.postfix.wait_queue_empty()
    assert sink_with_subject(stack, second_subject) == []


def test_review_request_without_order_id_is_refused_when_configured(stack: Stack) -> None:
    result = stack.postfix.smtp(REVIEW_SENDER, [BUYER], review(BUYER, unique_token("no-order"), "Thanks!\n"))
    assert result.data_reply is not None
    assert result.data_reply[0] == 550 and unfolded(result.data_reply[1]) == f"5.7.1 <{BUYER}>: {NO_ORDER_TEXT}"


# -- learning from Amazon's notice through a pipe transport ---------------------------------------------


def test_notice_mailed_to_the_pipe_transport_registers_the_buyer(stack: Stack) -> None:
    buyer = "n6n6n6n6n6n6n6n6@marketplace.amazon.com"
    order = "302-1000001-2000001"  # the order the English fixture names
    sent = unique_token("review") + f" order {order}"
    assert stack.postfix.smtp(REVIEW_SENDER, [buyer], review(buyer, sent)).queued
    stack.postfix.sink.wait_for(1, predicate=lambda m: subject_of(m.message) == sent)
    # Amazon's notice names only the order; the milter remembered which buyer got its review request.
    offset = stack.postfix.log_offset()
    notice = (NOTICES / "en_order_only.eml").read_bytes()
    assert stack.postfix.smtp("seller-notification@amazon.example", [LEARN_ADDRESS], notice).queued
    stack.postfix.wait_log(r"to=<optout@learn\.shop\.test>, relay=amzguard-optout, .*status=sent", after=offset)
    [entry] = [e for e in store_of(stack).entries() if e.buyer == buyer]
    assert (entry.order_id, entry.source) == (order, "notice")
    # From now on the buyer gets no review request, for any order.
    later = stack.postfix.smtp(REVIEW_SENDER, [buyer], review(buyer, unique_token("later") + " 302-2000005-3000005"))
    assert later.data_reply is not None and later.data_reply[0] == 550
    assert OPTED_OUT_TEXT in unfolded(later.data_reply[1])


def test_mail_to_the_pipe_that_is_no_notice_is_accepted_logged_and_kept(stack: Stack) -> None:
    # Bouncing it would send backscatter to whoever wrote to the learn address: Amazon, usually.
    syslog = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    syslog_path = stack.workdir / "syslog.sock"
    syslog.bind(str(syslog_path))
    syslog_path.chmod(0o666)  # the pipe runs as nobody
    try:
        offset = stack.postfix.log_offset()
        forwarded = (NOTICES / "not_a_notice.eml").read_bytes()
        assert stack.postfix.sendmail(OWNER, [LEARN_ADDRESS], forwarded).returncode == 0
        stack.postfix.wait_log(r"to=<optout@learn\.shop\.test>, relay=amzguard-optout, .*status=sent", after=offset)
        line = _wait_datagram(syslog, "not an opt-out notice: <notice-en-5@amazon.example>")
    finally:
        syslog.close()
        syslog_path.unlink()
    # facility mail (2) * 8 + warning (4) = <20>; the RFC 3164 form glibc's syslog(3) sends to /dev/log.
    match = re.fullmatch(r"<20>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d amzguard\[\d+\]: warning: not an opt-out "
                         r"notice: <notice-en-5@amazon\.example>; kept as (?P<kept>\S+\.eml)", line)  # fmt: skip
    assert match, line
    kept = Path(match["kept"])
    assert kept.parent == stack.workdir / "unknown"
    assert b"Message-ID: <notice-en-5@amazon.example>" in kept.read_bytes()
    stack.postfix.wait_queue_empty()
    bounced = [m for m in stack.postfix.mailbox("owner") if m.get_content_type() == "multipart/report"]
    assert not [m for m in bounced if "notice-en-5@amazon.example" in m.as_string()]
    assert "status=bounced" not in stack.postfix.log_since(offset)


def _wait_datagram(sock: socket.socket, wanted: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            text = sock.recv(65536).decode("utf-8", "replace")
        except TimeoutError:
            break
        seen.append(text)
        if wanted in text:
            return text
    raise AssertionError(f"no syslog line with {wanted!r}; got {seen}")


# -- Amazon's messaging restriction (issue 12 item 4) ---------------------------------------------------


def test_restriction_notice_through_the_pipe_refuses_review_requests_until_cleared(stack: Stack) -> None:
    """An (invented) restriction notice from amazon.de mailed to the learn address restricts the de
    marketplace: the next review request to a de buyer is refused (messaging-restricted), a reply to that
    buyer passes, a review request to another marketplace passes; ``restriction clear`` lifts it."""
    buyer, uk_buyer = "r5r5r5r5r5r5r5r5@marketplace.amazon.de", "u5u5u5u5u5u5u5u5@marketplace.amazon.co.uk"
    restricted_text = DEFAULT_REASON_TEXTS[Reason.MESSAGING_RESTRICTED]
    config = str(stack.workdir / "amzguard.yml")
    try:
        offset = stack.postfix.log_offset()
        notice = (NOTICES / "restriction_de.eml").read_bytes()
        assert stack.postfix.smtp("seller-notification@amazon.de", [LEARN_ADDRESS], notice).queued
        stack.postfix.wait_log(r"to=<optout@learn\.shop\.test>, relay=amzguard-optout, .*status=sent", after=offset)
        assert [(r.marketplace, r.source) for r in store_of(stack).restrictions()] == [("de", "notice")]
        refused = stack.postfix.smtp(REVIEW_SENDER, [buyer], review(buyer, unique_token("restricted") + " 302-2000011-3000011"))
        assert refused.data_reply is not None and refused.data_reply[0] == 550
        assert unfolded(refused.data_reply[1]) == f"5.7.1 <{buyer}>: {restricted_text}"
        stack.milter.wait_log(f"rcpt=<{buyer}> path=smtp stage=eom channel=review decision=refuse "
                              "reason=messaging-restricted")  # fmt: skip
        reply_subject = unique_token("Re: your question")
        reply = make_message("support@shop.test", buyer, reply_subject,
                             extra_headers=[("In-Reply-To", "<0100018c.99bb@marketplace.amazon.de>")])  # fmt: skip
        assert stack.postfix.smtp("support@shop.test", [buyer], reply).queued
        stack.postfix.sink.wait_for(1, predicate=lambda m: subject_of(m.message) == reply_subject)
        uk = unique_token("uk review") + " 302-2000012-3000012"
        assert stack.postfix.smtp(REVIEW_SENDER, [uk_buyer], review(uk_buyer, uk)).queued
        stack.postfix.sink.wait_for(1, predicate=lambda m: subject_of(m.message) == uk)
        cleared = subprocess.run([sys.executable, "-m", "amzguard", "-c", config, "restriction", "clear"],
                                 capture_output=True, text=True, timeout=60)  # fmt: skip
        assert (cleared.returncode, cleared.stdout) == (0, "cleared 1\n"), cleared.stderr
        later = unique_token("after clear") + " 302-2000013-3000013"
        assert stack.postfix.smtp(REVIEW_SENDER, [buyer], review(buyer, later)).queued
        stack.postfix.sink.wait_for(1, predicate=lambda m: subject_of(m.message) == later)
    finally:
        store_of(stack).lift(None)
