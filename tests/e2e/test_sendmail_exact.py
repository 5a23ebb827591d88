"""amzguard behind a real Sendmail judges where Sendmail routes a recipient (issue 16), spelling by spelling.

The spellings and what Sendmail does with them are tests/fixtures/sendmail_recipients.tsv (checked against
the same Sendmail by test_sendmail_routes.py). Sendmail's local mailer here is /bin/false, so a local
recipient makes Sendmail bounce the message itself: that bounce must not carry the review secret. All
addresses and order ids are made up.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.e2e.conftest import REVIEW_SENDER
from tests.e2e.harness import SinkMessage, SmtpResult, make_message, unique_token
from tests.e2e.sendmail_harness import SendmailInstance, SendmailStack, sendmail_stack, smtp_exact
from tests.e2e.test_sendmail import amzguard_for
from tests.e2e.test_sendmail_routes import envelope_rcpts
from tests.support.milter_process import REVIEW_TOKEN, MilterProcess
from tests.unit.test_sendmail_route import ROWS, Row

SHOP = "shop@shop.test"
PARTNER = "partner@example.org"
LOCAL_USER = "root@mx.shop.test"
TAG = ("X-Amzguard-Channel", f"review {REVIEW_TOKEN}")
BUYER_TEXT = "Amazon forbids e-mail about orders or shipping to buyers"
REFUSED = [row for row in ROWS if row.kind in ("buyer", "unresolved")]
GRANTABLE = [row for row in ROWS if row.kind == "buyer"]
FAILING_LOCAL_MAILER = ("define(`LOCAL_MAILER_PATH', `/bin/false')dnl",)
"""Local delivery fails permanently (exit 1: "unknown mailer error"), so Sendmail bounces it itself."""

_orders = iter(range(1000001, 9999999))


def order_id() -> str:
    return f"305-{next(_orders):07d}-4000001"


def unmarked(row: Row) -> str:
    """Where a granted review request to this spelling must go: Sendmail's relay address, marker removed
    (amzguard writes the unmarked address unquoted where its local part needs no quotes)."""
    assert row.addr is not None
    if "blacklisted-" not in row.addr:
        return row.addr  # delivered as Sendmail relays it
    address = row.addr.replace("blacklisted-", "")
    quoted = re.fullmatch(r'"([A-Za-z0-9.+-]+)"(@.*)', address)
    return "".join(quoted.groups()) if quoted else address


@dataclass
class Sent:
    result: SmtpResult
    msgid: str

    def queue_id(self, stack: SendmailStack) -> str:
        """Sendmail's queue id of the transaction (also for a message it refused at end of data)."""
        match = stack.sendmail.syslog.wait(rf"(\w+): from=<[^>]*>, .*msgid=<{re.escape(self.msgid)}>")
        return match.group(1)


def send(stack: SendmailStack, sender: str, rcpts: list[str], subject: str, tagged: bool = False,
         body: str = "How was your order?\n") -> Sent:  # fmt: skip
    message = make_message(sender, [PARTNER], subject, body=body, extra_headers=[TAG] if tagged else [])
    msgid = re.search(rb"Message-ID: <([^>]+)>", message).group(1).decode()
    return Sent(smtp_exact(stack.sendmail.port, sender, [f"<{rcpt}>" for rcpt in rcpts], message), msgid)


def accepted(sent: Sent) -> None:
    assert sent.result.queued, sent.result


def decision(stack: SendmailStack, sent: Sent, fields: str) -> None:
    """Wait for amzguard's decision line of this transaction with these fields after the address."""
    queue = sent.queue_id(stack)
    pattern = re.compile(rf"^.*{queue}: from=<[^>]*> rcpt=<.*> {fields}$", re.MULTILINE)
    deadline = time.monotonic() + 20
    while not pattern.search(stack.milter.log_text()):
        assert time.monotonic() < deadline, f"no {pattern.pattern!r} in:\n{stack.milter.log_text()[-3000:]}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def stack() -> Iterator[SendmailStack]:
    with sendmail_stack(amzguard_for, mc_before=FAILING_LOCAL_MAILER) as started:
        yield started


def test_shop_mail_to_every_spelling(stack: SendmailStack) -> None:
    """Shop mail to each spelling beside a partner: every buyer spelling refused at RCPT (the partner still
    gets the message), what Sendmail refuses itself refused by Sendmail, the rest accepted."""
    sent = []
    for row in ROWS:
        subject = unique_token("sm-spelling")
        sent.append((row, subject, send(stack, SHOP, [row.rcpt, PARTNER], subject)))
    for row, subject, sent_ in sent:
        code, text = sent_.result.rcpt_replies[f"<{row.rcpt}>"]
        accepted(sent_)
        if row.kind in ("buyer", "unresolved"):
            assert code == 550 and text.startswith("5.7.1 "), (row, code, text)
            reason = "unresolved-route" if row.kind == "unresolved" else "buyer-mail"
            decision(stack, sent_, f"path=smtp stage=rcpt channel=none decision=refuse reason={reason}")
        else:
            assert code == row.reply, (row, code, text)
        relayed = [rcpt for m in stack.wait_relayed(subject) for rcpt in envelope_rcpts(m)]
        assert relayed == [PARTNER], row


@pytest.mark.parametrize("row", GRANTABLE, ids=[row.rcpt for row in GRANTABLE])
def test_granted_review_request_reaches_the_right_mailbox(stack: SendmailStack, row: Row) -> None:
    """A tagged review request to any buyer spelling goes to the mailbox Sendmail routes it to (marker
    removed), once, without the tag."""
    subject = unique_token("sm-review") + f" order {order_id()}"
    sent = send(stack, REVIEW_SENDER, [row.rcpt], subject, tagged=True)
    accepted(sent)
    [relayed] = stack.wait_relayed(subject)
    assert envelope_rcpts(relayed) == [unmarked(row)]
    assert relayed.message.get_all(TAG[0]) is None and REVIEW_TOKEN.encode() not in relayed.raw
    outcome = "deliver-unmarked" if "blacklisted-" in row.rcpt else "deliver"
    decision(stack, sent, f"path=smtp stage=eom channel=review decision={outcome} reason=channel recognised_by=tag")


@pytest.mark.parametrize("row", [r for r in ROWS if r.kind == "unresolved"], ids=lambda r: r.rcpt)
def test_review_request_to_a_still_routed_address_is_refused(stack: SendmailStack, row: Row) -> None:
    """Sendmail relays ``x%marketplace.amazon.de@partner.example`` as it is: the next hop may unwrap it to
    the buyer, so amzguard refuses it at RCPT even from the review sender (no tag can grant it), and
    Sendmail sends no DSN."""
    subject = unique_token("sm-routed") + f" order {order_id()}"
    sent = send(stack, REVIEW_SENDER, [row.rcpt, PARTNER], subject, tagged=True)
    code, text = sent.result.rcpt_replies[f"<{row.rcpt}>"]
    assert code == 550 and "routing form" in text, text
    accepted(sent)
    decision(stack, sent, "path=smtp stage=rcpt channel=none decision=refuse reason=unresolved-route")
    assert envelope_rcpts(stack.wait_relayed(subject)[0]) == [PARTNER]
    assert not [m for m in stack.sink.messages() if is_bounce_of(m, subject)]


def test_mixed_review_request_partner_and_buyer_each_get_their_copy(stack: SendmailStack) -> None:
    """A granted review request to a quoted marked buyer and a partner: Sendmail's delete (the envrcpt text)
    removes the marked address, the buyer gets the unmarked one, the partner its copy."""
    subject = unique_token("sm-mixed") + f" order {order_id()}"
    accepted(send(stack, REVIEW_SENDER, ['"blacklisted-40417"@amazon.fr', PARTNER], subject, tagged=True))
    [relayed] = stack.wait_relayed(subject)
    assert sorted(envelope_rcpts(relayed)) == ["40417@amazon.fr", PARTNER]
    assert REVIEW_TOKEN.encode() not in relayed.raw


def assert_refused_without_dsn(stack: SendmailStack, sent: Sent, subject: str) -> None:
    """Sendmail refused the transaction at end of data (the milter's reply), queued nothing of it and
    mailed no DSN for it (other tests' local bounces may be in the queue meanwhile)."""
    queue = sent.queue_id(stack)
    stack.sendmail.syslog.wait(rf"{queue}: Milter: data, reject=550 5\.7\.1")
    assert not [name for name in stack.sendmail.queue() if name == f"qf{queue}"]
    assert not re.search(rf"{queue}: .*DSN:", stack.sendmail.syslog.text())
    assert not [m for m in stack.sink.messages() if is_bounce_of(m, subject) or subject.encode() in m.raw]


def test_ungranted_mixed_message_is_refused_whole_without_a_bounce(stack: SendmailStack) -> None:
    """Untagged mail from the review sender to a buyer spelling and a partner: undecided at RCPT, refused
    whole at end of data (mixed_recipients: reject); Sendmail answers the client and bounces nothing."""
    subject = unique_token("sm-mixed-refused")
    sent = send(stack, REVIEW_SENDER, ['"q7x@marketplace.amazon.de"', PARTNER], subject)
    result = sent.result
    assert result.rcpt_replies['<"q7x@marketplace.amazon.de">'][0] == 250
    assert result.data_reply is not None and result.data_reply[0] == 550, result
    assert BUYER_TEXT in result.data_reply[1]
    assert_refused_without_dsn(stack, sent, subject)


def test_refused_review_request_leaves_no_bounce_with_the_secret(stack: SendmailStack) -> None:
    """A second review request for one order is refused at end of data: 5xx to the client, no DSN from
    Sendmail (the sender is outside: a DSN would leave the machine), nothing queued, no secret logged."""
    order = order_id()
    accepted(send(stack, REVIEW_SENDER, ['"blacklisted-40418@amazon.fr"'], unique_token("sm-first") + f" {order}",
                  tagged=True))  # fmt: skip
    subject = unique_token("sm-second") + f" {order}"
    second = send(stack, REVIEW_SENDER, ["@a.example:blacklisted-40418@amazon.fr"], subject, tagged=True)
    assert second.result.data_reply is not None and second.result.data_reply[0] == 550, second.result
    decision(stack, second, "path=smtp stage=eom channel=review decision=refuse reason=duplicate-review recognised_by=tag")
    assert_refused_without_dsn(stack, second, subject)
    assert REVIEW_TOKEN not in stack.sendmail.syslog.text()


def is_bounce_of(message: SinkMessage, subject: str) -> bool:
    return message.mail_from == "" and subject.encode() in message.raw


def test_sendmail_bounce_of_a_review_request_holds_no_secret(stack: SendmailStack) -> None:
    """A granted review request that also names a local user whose delivery fails: Sendmail itself bounces
    that recipient to the (outside) sender with the message attached; the attached copy is the one amzguard
    took the tag out of."""
    subject = unique_token("sm-bounce") + f" order {order_id()}"
    sent = send(stack, REVIEW_SENDER, ["blacklisted-40419@amazon.fr", LOCAL_USER], subject, tagged=True)
    accepted(sent)
    queue = sent.queue_id(stack)
    [relayed] = stack.wait_relayed(subject)
    assert envelope_rcpts(relayed) == ["40419@amazon.fr"]
    stack.sendmail.syslog.wait(rf"{queue}: .*DSN: ")
    [bounce] = stack.sink.wait_for(1, predicate=lambda m: is_bounce_of(m, subject))
    assert bounce.rcpts == [REVIEW_SENDER]
    assert b"root@mx.shop.test" in bounce.raw and subject.encode() in bounce.raw  # it does attach the message
    assert REVIEW_TOKEN.encode() not in bounce.raw and TAG[0].encode() not in bounce.raw


@pytest.fixture(scope="module")
def bare_stack() -> Iterator[SendmailStack]:
    """A site whose own .mc overrides the snippet's RCPT macro list after including it (v still sent)."""
    lists = ("define(`confMILTER_MACROS_CONNECT', `j, _, v')dnl", "define(`confMILTER_MACROS_ENVRCPT', `i')dnl")
    with sendmail_stack(amzguard_for, mc_after=lists) as started:
        yield started


def test_without_sendmails_rcpt_macros_buyers_are_refused_whatever_the_channel(bare_stack: SendmailStack) -> None:
    """Fail closed: without {rcpt_mailer}/{rcpt_addr} amzguard cannot know where Sendmail routes, so a buyer
    by any reading is refused even with a valid tag; other recipients still get the message."""
    subject = unique_token("sm-bare") + f" order {order_id()}"
    sent = send(bare_stack, REVIEW_SENDER, ["blacklisted-40420@amazon.fr", PARTNER], subject, tagged=True)
    code, text = sent.result.rcpt_replies["<blacklisted-40420@amazon.fr>"]
    assert code == 550 and "routing form" in text, text
    accepted(sent)
    decision(bare_stack, sent, "path=smtp stage=rcpt channel=none decision=refuse reason=unresolved-route")
    assert envelope_rcpts(bare_stack.wait_relayed(subject)[0]) == [PARTNER]
    bare_stack.milter.wait_log("Sendmail sent no {rcpt_mailer}/{rcpt_addr}")
    subject = unique_token("sm-bare-partner")
    sent = send(bare_stack, SHOP, [PARTNER], subject)
    accepted(sent)
    decision(bare_stack, sent, "path=smtp stage=eom channel=none decision=deliver reason=not-buyer")


def bouncing_amzguard(sendmail: SendmailInstance) -> MilterProcess:
    return amzguard_for(sendmail, refusal={"mixed_recipients": "bounce"})


@pytest.fixture(scope="module", params=["sendmail", "unknown"])
def bounce_stack(request: pytest.FixtureRequest) -> Iterator[tuple[str, SendmailStack]]:
    """mixed_recipients: bounce, behind a Sendmail that says it is one (v) and one that does not."""
    lists = () if request.param == "sendmail" else ("define(`confMILTER_MACROS_CONNECT', `j, _')dnl",)
    with sendmail_stack(bouncing_amzguard, mc_after=lists) as started:
        yield request.param, started


def test_mixed_refusal_by_delete_only_where_the_delete_is_certain(bounce_stack: tuple[str, SendmailStack]) -> None:
    """A buyer refused in a mixed message is deleted (and a stand-in added) only where amzguard knows the
    MTA is Sendmail, whose delete matches the envrcpt text; an MTA that did not say which it is gets the
    whole message refused instead, so no sender is told of a refusal that did not happen."""
    mta, stack = bounce_stack
    subject = unique_token("sm-bounce-mode")
    sent = send(stack, REVIEW_SENDER, ['"x@marketplace.amazon.de"@[127.0.0.1]', PARTNER], subject)
    if mta == "unknown":
        assert sent.result.data_reply is not None and sent.result.data_reply[0] == 550, sent.result
        assert stack.relayed(subject) == []
        return
    accepted(sent)
    [relayed] = stack.wait_relayed(subject)
    assert sorted(envelope_rcpts(relayed)) == [PARTNER, "x=marketplace.amazon.de@buyer-mail.amzguard.invalid"]


def test_msp_bounce_of_a_refused_review_request_is_refused(stack: SendmailStack) -> None:
    """``sendmail -t`` (PHP's mail()) goes through Sendmail's MSP, which mails its own DSN, original
    attached, when the MTA refuses a message. A second review request for one order submitted that way:
    the MSP exits 69, and its DSN, which carries the tag with the secret, is refused by amzguard instead of
    leaving for the outside sender."""
    order = order_id()
    first = make_message(REVIEW_SENDER, ["blacklisted-50001@amazon.fr"], unique_token("msp-1") + f" {order}",
                         extra_headers=[TAG])  # fmt: skip
    assert stack.sendmail.submit(first, REVIEW_SENDER) == 0
    subject = unique_token("msp-2") + f" {order}"
    second = make_message(REVIEW_SENDER, ["blacklisted-50001@amazon.fr"], subject, extra_headers=[TAG])
    assert stack.sendmail.submit(second, REVIEW_SENDER) == 69
    stack.milter.wait_log("reason=duplicate-review")
    stack.milter.wait_log("from=<> bounce carries the review channel's secret")
    stack.sendmail.syslog.wait(r"Milter: data, reject=550 5\.7\.1 bounce carries amzguard's review secret")
    assert not [m for m in stack.sink.messages() if REVIEW_TOKEN.encode() in m.raw]
    assert not [m for m in stack.sink.messages() if is_bounce_of(m, subject)]
    # The MSP then tries postmaster (a double bounce, refused alike: it too carries the secret) and keeps
    # what it could not deliver: the secret stays on this machine.
    stack.sendmail.syslog.wait(r"savemail: cannot save rejected email anywhere")
