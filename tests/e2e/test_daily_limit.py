"""The daily limit of proactive messages (``limits.proactive_per_day``) on a real Postfix, both paths.

The milter runs under libfaketime (tests/support/faketime.py) with its wall clock set to noon UTC, so the
test never straddles a real midnight, and moved a day ahead to show the limit's reset: nothing sleeps.
Every buyer address and order id here is made up.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import REVIEW_SENDER, REVIEW_SENDER_CHANNELS, Stack, start_stack, stop_stack
from tests.e2e.harness import make_message, smtp_transaction, unique_token
from tests.e2e.sendmail_harness import SendmailInstance, sendmail_stack
from tests.support.faketime import FakeTimeMilter
from tests.support.milter_process import REVIEW_TOKEN, write_config

from amzguard.policy import utc_day
from amzguard.store import DailyCount, SqliteStore

TAG_HEADER = "X-Amzguard-Channel"
LIMIT = 2
DAY = 86400


def buyer(n: int, tld: str = "de") -> str:
    return f"lim{n:02d}x7k2m9q4p1z8@marketplace.amazon.{tld}"


def order_id() -> str:
    digits = str(uuid.uuid4().int)[:17]
    return f"{digits[:3]}-{digits[3:10]}-{digits[10:17]}"


def review_request(to: str, order: str) -> tuple[str, bytes]:
    subject = f"Your order {order}: how was it? {unique_token('lim')}"
    return subject, make_message(REVIEW_SENDER, to, subject, body="How was your order?\n",
                                 extra_headers=[(TAG_HEADER, f"review {REVIEW_TOKEN}")])  # fmt: skip


@pytest.fixture()
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    started = start_stack(request.node.name[:16], channels=REVIEW_SENDER_CHANNELS, milter_class=FakeTimeMilter,
                          limits={"proactive_per_day": {"de": LIMIT}})  # fmt: skip
    noon = (int(time.time()) // DAY) * DAY + DAY // 2
    milter = started.milter
    assert isinstance(milter, FakeTimeMilter)
    milter.set_time(noon)
    yield started
    stop_stack(started)


def subject_of(message) -> str:  # type: ignore[no-untyped-def]
    return " ".join(str(message["Subject"]).split())


def at_sink(stack: Stack, subject: str) -> list:  # type: ignore[type-arg]
    return [m for m in stack.postfix.sink.messages() if subject_of(m.message) == subject]


def test_over_the_limit_waits_on_both_paths_and_goes_out_the_next_utc_day(stack: Stack) -> None:
    milter = stack.milter
    assert isinstance(milter, FakeTimeMilter)
    postfix = stack.postfix
    store = SqliteStore(stack.workdir / "amzguard.sqlite")
    day_one = utc_day(time.time() + milter.offset)
    orders = [order_id() for _ in range(4)]
    sent = [review_request(buyer(n), orders[n]) for n in range(4)]

    # Two review requests fit the limit of 2 for de.
    for n in range(LIMIT):
        result = postfix.smtp(REVIEW_SENDER, [buyer(n)], sent[n][1])
        assert result.queued, result
    for n in range(LIMIT):
        [got] = postfix.sink.wait_for(1, predicate=lambda m, s=sent[n][0]: subject_of(m.message) == s)
        assert got.rcpts == [buyer(n)]

    # The third: 451 at end of data on SMTP; nothing recorded, neither count nor review request.
    offset = postfix.log_offset()
    third = postfix.smtp(REVIEW_SENDER, [buyer(2)], sent[2][1])
    assert third.data_reply is not None and third.data_reply[0] == 451, third
    assert third.data_reply[1] == ("4.7.1 daily limit of 2 proactive messages to Amazon marketplace de reached "
                                   "(2 today, UTC); held for a later retry (amzguard)")  # fmt: skip
    milter.wait_log(f"daily limit reached: marketplace=de day={day_one} count=2 adding=1 limit=2: message "
                    "tempfailed, the MTA retries it later")  # fmt: skip
    assert store.reviewed_orders(orders) == set(orders[:LIMIT])
    assert store.daily_counts() == [DailyCount("de", day_one, LIMIT)]

    # The fourth through sendmail(1), as PHP mail() sends it: cleanup's milter tempfail keeps the file in
    # maildrop (Postfix pickup.c: only CLEANUP_STAT_BAD|CLEANUP_STAT_RCPT remove it), no bounce.
    done = postfix.sendmail(REVIEW_SENDER, [buyer(3)], sent[3][1])
    assert done.returncode == 0, done.stderr
    postfix.wait_log(r"milter-reject: END-OF-MESSAGE from localhost\[127\.0\.0\.1\]: 4\.7\.1 daily limit of 2 "
                     r"proactive messages to Amazon marketplace de reached", after=offset)  # fmt: skip
    queued = postfix.queue_entries()
    assert [entry["queue_name"] for entry in queued] == ["maildrop"], queued
    assert at_sink(stack, sent[2][0]) == at_sink(stack, sent[3][0]) == []
    assert postfix.mailbox("support") == []  # no bounce to the review mailer
    assert store.reviewed_orders(orders) == set(orders[:LIMIT])
    held = milter.metric("amzguard_daily_limit_tempfailed_total", marketplace="de", mode="enforce")
    assert held >= 2  # pickup may have retried the maildrop file on its own timer meanwhile
    assert milter.metric("amzguard_proactive_messages_today", marketplace="de") == LIMIT
    assert milter.metric("amzguard_proactive_daily_limit", marketplace="de") == LIMIT

    # The next UTC day: the client's retry is delivered, and pickup's next scan delivers the maildrop file.
    milter.advance(DAY)
    day_two = utc_day(time.time() + milter.offset)
    retry = postfix.smtp(REVIEW_SENDER, [buyer(2)], sent[2][1])
    assert retry.queued, retry
    postfix.kick_pickup()
    for n in (2, 3):
        [got] = postfix.sink.wait_for(1, predicate=lambda m, s=sent[n][0]: subject_of(m.message) == s)
        assert got.rcpts == [buyer(n)]
    postfix.wait_queue_empty()
    assert postfix.mailbox("support") == []
    assert store.reviewed_orders(orders) == set(orders)
    assert store.daily_counts() == [DailyCount("de", day_one, LIMIT), DailyCount("de", day_two, LIMIT)]
    milter.wait_log(f"rcpt=<{buyer(3)}> path=sendmail stage=eom channel=review decision=deliver")


def test_replies_and_other_marketplaces_pass_while_the_limit_holds(stack: Stack) -> None:
    postfix = stack.postfix
    for n in range(LIMIT):
        assert postfix.smtp(REVIEW_SENDER, [buyer(n)], review_request(buyer(n), order_id())[1]).queued
    over_subject, over = review_request(buyer(5), order_id())
    assert postfix.smtp(REVIEW_SENDER, [buyer(5)], over).data_reply[0] == 451  # type: ignore[index]
    # A reply in the buyer's thread is no proactive message: never counted, never held.
    reply_subject = unique_token("Re: your question")
    reply = make_message(REVIEW_SENDER, buyer(0), reply_subject,
                         extra_headers=[("In-Reply-To", "<0100018c.77ab@marketplace.amazon.de>")])  # fmt: skip
    assert postfix.smtp(REVIEW_SENDER, [buyer(0)], reply).queued
    # A critical message is proactive: held like a review request.
    critical = make_message(REVIEW_SENDER, buyer(6), f"[Important] delivery address {unique_token('c')}")
    assert postfix.smtp(REVIEW_SENDER, [buyer(6)], critical).data_reply[0] == 451  # type: ignore[index]
    # co.uk has no limit here (no "*" entry): not counted, not held.
    uk_subject, uk = review_request(buyer(7, "co.uk"), order_id())
    assert postfix.smtp(REVIEW_SENDER, [buyer(7, "co.uk")], uk).queued
    for subject in (reply_subject, uk_subject):
        postfix.sink.wait_for(1, predicate=lambda m, s=subject: subject_of(m.message) == s)
    assert at_sink(stack, over_subject) == []
    store = SqliteStore(stack.workdir / "amzguard.sqlite")
    assert [(row.marketplace, row.count) for row in store.daily_counts()] == [("de", LIMIT)]


# -- behind Sendmail: its MSP queues what the MTA tempfails, and offers it again on its next queue run -------


def test_behind_sendmail_over_the_limit_waits_in_the_msp_queue_until_the_next_utc_day() -> None:
    def amzguard_for(sendmail: SendmailInstance) -> FakeTimeMilter:
        socket = f"unix:{sendmail.milter_socket}"
        config = write_config(sendmail.workdir / "amzguard.yml", socket, channels=REVIEW_SENDER_CHANNELS,
                              refusal={"mixed_recipients": "reject"}, limits={"proactive_per_day": {"de": 1}})  # fmt: skip
        return FakeTimeMilter(config, socket, sendmail.workdir / "amzguard.log")

    with sendmail_stack(amzguard_for) as stack:
        milter = stack.milter
        assert isinstance(milter, FakeTimeMilter)
        milter.set_time((int(time.time()) // DAY) * DAY + DAY // 2)  # noon UTC: no real midnight in between
        first, message = review_request(buyer(40), order_id())
        assert smtp_transaction(stack.sendmail.port, REVIEW_SENDER, [buyer(40)], message).queued
        stack.wait_relayed(first)

        second, message = review_request(buyer(41), order_id())
        result = smtp_transaction(stack.sendmail.port, REVIEW_SENDER, [buyer(41)], message)
        assert result.data_reply is not None and result.data_reply[0] == 451, result
        assert "daily limit of 1 proactive messages to Amazon marketplace de reached" in result.data_reply[1]
        stack.sendmail.syslog.wait(r"Milter: data, reject=451 4\.7\.1 daily limit of 1 proactive messages")

        # sendmail -t (PHP mail()): the MSP hands it to the MTA, gets the 451 and keeps it; no bounce.
        third, message = review_request(buyer(42), order_id())
        assert stack.sendmail.submit(message, REVIEW_SENDER) == 0
        stack.milter.wait_log("daily limit reached: marketplace=de")
        assert len(stack.sendmail.client_queue()) == 1
        assert stack.relayed(second) == [] and stack.relayed(third) == []

        milter.advance(DAY)  # the next UTC day: the count starts again
        assert stack.sendmail.run_client_queue() == 0
        [relayed] = stack.wait_relayed(third)
        assert relayed.rcpts == [buyer(42)]
        assert stack.sendmail.client_queue() == []
        assert not [m for m in stack.sink.messages() if "Returned mail" in str(m.message.get("Subject", ""))]
