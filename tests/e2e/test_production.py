"""amzguard in production on a real Postfix: metrics scraped over HTTP, monitor mode, reload under load.

Each test starts its own Postfix + amzguard so that counters start at 0 and equal what the test sent.
All buyer addresses are made up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import yaml

from tests.e2e.conftest import REVIEW_SENDER, REVIEW_SENDER_CHANNELS, SHOP_SENDER, Stack, start_stack, stop_stack
from tests.e2e.harness import make_message, unique_token
from tests.support.milter_process import REVIEW_TOKEN

BUYER = "q7x2k9m4p1z8w3v5@marketplace.amazon.de"
MARKED = "blacklisted-40417@amazon.fr"
UNMARKED = "40417@amazon.fr"
OWNER = "owner@shop.test"
PARTNER = "partner@example.org"
TAG = ("X-Amzguard-Channel", f"review {REVIEW_TOKEN}")


def subject_of(message) -> str:
    return str(message.get("Subject", ""))


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    sections = getattr(request, "param", {})
    started = start_stack("prod", channels=REVIEW_SENDER_CHANNELS, **sections)
    yield started
    stop_stack(started)


def test_metrics_count_what_was_sent(stack: Stack) -> None:
    postfix, milter = stack.postfix, stack.milter
    # 1. SMTP, buyer only, sender without channel: refused at RCPT, the transaction is rejected
    refused = postfix.smtp(SHOP_SENDER, [BUYER], make_message(SHOP_SENDER, BUYER, unique_token("m1")))
    assert refused.rcpt_replies[BUYER][0] == 550
    # 2. SMTP, two ordinary recipients: accepted unchanged
    assert postfix.smtp(SHOP_SENDER, [OWNER, PARTNER], make_message(SHOP_SENDER, [OWNER, PARTNER], "m2")).queued
    # 3. SMTP review mailer, tagged, marked buyer + owner: modified (unmarked, tag deleted)
    tagged = make_message(REVIEW_SENDER, [MARKED, OWNER], "m3", extra_headers=[TAG])
    assert postfix.smtp(REVIEW_SENDER, [MARKED, OWNER], tagged).queued
    # 4. SMTP review mailer, wrong secret, buyer + partner: modified (buyer swapped for a bounce), bad token
    wrong = make_message(REVIEW_SENDER, [BUYER, PARTNER], "m4", extra_headers=[("X-Amzguard-Channel", "review nope-nope-nope-0")])
    assert postfix.smtp(REVIEW_SENDER, [BUYER, PARTNER], wrong).queued
    # 5. sendmail(1), marked buyer only: rejected at end of message (Postfix bounces it to the shop)
    offset = postfix.log_offset()
    assert postfix.sendmail(SHOP_SENDER, [MARKED], make_message(SHOP_SENDER, MARKED, "m5")).returncode == 0
    postfix.wait_log(r"milter-reject: END-OF-MESSAGE from localhost\[127\.0\.0\.1\]: 5\.7\.1", after=offset)
    milter.wait_log("path=sendmail stage=eom channel=none decision=refuse reason=buyer-mail")
    postfix.wait_queue_empty(timeout=30)

    def counted(name: str, **labels: str) -> float:
        return milter.metric(name, **labels)

    messages = {key: value for key, value in milter.scrape().items() if key[0] == "amzguard_messages_total"}
    expected_messages = {
        ("rejected", "smtp"): 1, ("accepted", "smtp"): 1, ("modified", "smtp"): 2, ("rejected", "sendmail"): 1,
    }  # fmt: skip
    for (_, labels), value in messages.items():
        label = dict(labels)
        assert value == expected_messages.get((label["result"], label["path"]), 0), (label, value)
    enforce = {"mode": "enforce"}
    assert counted("amzguard_recipients_total", decision="refuse", reason="buyer-mail", channel="none", **enforce) == 3
    assert counted("amzguard_recipients_total", decision="deliver", reason="not-buyer", channel="none", **enforce) == 4
    assert counted("amzguard_recipients_total", decision="deliver-unmarked", reason="channel", channel="review",
                   **enforce) == 1  # fmt: skip
    assert sum(v for k, v in milter.scrape().items() if k[0] == "amzguard_recipients_total") == 8
    assert counted("amzguard_channel_tags_bad_token_total", channel="review") == 1
    # message 2 has no buyer: accepted at DATA (the shop's sender may use no tagged channel)
    assert counted("amzguard_decision_duration_seconds_count", stage="data") == 1
    assert counted("amzguard_decision_duration_seconds_count", stage="eom") == 3
    assert counted("amzguard_decision_duration_seconds_count", stage="rcpt") == 8
    assert all(v == 0 for k, v in milter.scrape().items() if k[0] == "amzguard_errors_total")
    assert counted("amzguard_config_reloads_total", result="failure") == 0
    assert counted("amzguard_mode", mode="enforce") == 1


@pytest.mark.parametrize("stack", [{"mode": "monitor"}], indirect=True)
def test_monitor_mode_changes_nothing(stack: Stack) -> None:
    postfix, milter = stack.postfix, stack.milter
    offset = postfix.log_offset()
    subject = unique_token("monitor")
    # would be refused at RCPT, at end of message, unmarked and stripped: all pass untouched
    at_rcpt = postfix.smtp(SHOP_SENDER, [BUYER], make_message(SHOP_SENDER, BUYER, f"{subject}-1"))
    assert at_rcpt.rcpt_replies[BUYER][0] == 250 and at_rcpt.queued
    mixed = postfix.smtp(REVIEW_SENDER, [BUYER, PARTNER], make_message(REVIEW_SENDER, [BUYER, PARTNER], f"{subject}-2"))
    assert mixed.queued
    tagged = make_message(REVIEW_SENDER, MARKED, f"{subject}-3", extra_headers=[TAG])
    assert postfix.smtp(REVIEW_SENDER, [MARKED], tagged).queued
    assert postfix.sendmail(SHOP_SENDER, [MARKED], make_message(SHOP_SENDER, MARKED, f"{subject}-4")).returncode == 0
    relayed = postfix.sink.wait_for(4, timeout=30, predicate=lambda m: subject_of(m.message).startswith(subject))
    by_subject = {subject_of(m.message): m for m in relayed}
    assert by_subject[f"{subject}-1"].rcpts == [BUYER]
    assert sorted(by_subject[f"{subject}-2"].rcpts) == sorted([BUYER, PARTNER])
    assert by_subject[f"{subject}-3"].rcpts == [MARKED]  # not unmarked
    assert by_subject[f"{subject}-3"].message.get(TAG[0]) == TAG[1]  # tag not deleted
    assert by_subject[f"{subject}-4"].rcpts == [MARKED]
    postfix.wait_queue_empty(timeout=30)
    log = postfix.log_since(offset)
    assert "milter-reject" not in log and "amzguard.invalid" not in log and "status=bounced" not in log
    assert postfix.mailbox("shop") == [] and postfix.mailbox("support") == []  # no bounce anywhere
    milter.wait_log(f"from=<{SHOP_SENDER}> rcpt=<{BUYER}> path=smtp stage=rcpt channel=none "
                    "decision=would-refuse reason=buyer-mail")  # fmt: skip
    milter.wait_log(f"rcpt=<{MARKED}> path=smtp stage=eom channel=review decision=would-deliver-unmarked")
    milter.wait_log(f"from=<{SHOP_SENDER}> rcpt=<{MARKED}> path=sendmail stage=eom channel=none "
                    "decision=would-refuse reason=buyer-mail")  # fmt: skip
    monitor = {"mode": "monitor"}
    assert milter.metric("amzguard_recipients_total", decision="refuse", reason="buyer-mail", channel="none",
                         **monitor) == 3  # fmt: skip
    assert milter.metric("amzguard_messages_total", result="accepted", path="smtp") == 3
    assert milter.metric("amzguard_messages_total", result="accepted", path="sendmail") == 1
    assert milter.metric("amzguard_messages_total", result="rejected", path="smtp") == 0
    assert milter.metric("amzguard_mode", mode="monitor") == 1


def test_reload_while_mail_flows(stack: Stack) -> None:
    postfix, milter = stack.postfix, stack.milter
    subject = unique_token("flow")
    results: list[bool] = []
    stop = threading.Event()

    def send_continuously() -> None:
        for number in range(200):  # bounded; stops as soon as the test is done reloading
            if stop.is_set():
                return
            result = postfix.smtp(SHOP_SENDER, [OWNER], make_message(SHOP_SENDER, OWNER, f"{subject}-{number}"))
            results.append(result.queued)

    sender = threading.Thread(target=send_continuously)
    sender.start()
    try:
        original = yaml.safe_load(milter.config.read_text())
        milter.config.write_text(yaml.safe_dump({**original, "mode": "monitor"}))
        milter.reload()
        milter.wait_log("configuration reloaded from")
        # after the good reload: a buyer is no longer refused (monitor)
        monitored = postfix.smtp(SHOP_SENDER, [BUYER], make_message(SHOP_SENDER, BUYER, unique_token("after")))
        assert monitored.rcpt_replies[BUYER][0] == 250
        milter.config.write_text("mode: monitor\nmilter: {socket_mode: 0666}\n")  # broken: world-writable
        milter.reload()
        milter.wait_log("reload failed, keeping the running configuration")
        still = postfix.smtp(SHOP_SENDER, [BUYER], make_message(SHOP_SENDER, BUYER, unique_token("broken")))
        assert still.rcpt_replies[BUYER][0] == 250  # the running (monitor) config is kept
        milter.config.write_text(yaml.safe_dump(original))
        milter.reload()
        deadline = time.monotonic() + 20
        while milter.log_text().count("configuration reloaded from") < 2:
            assert time.monotonic() < deadline, milter.log_text()
            time.sleep(0.05)
        enforced = postfix.smtp(SHOP_SENDER, [BUYER], make_message(SHOP_SENDER, BUYER, unique_token("enforced")))
        assert enforced.rcpt_replies[BUYER][0] == 550
    finally:
        stop.set()
        sender.join(120)
    assert results and all(results), results  # no message tempfailed or lost across three reloads
    postfix.wait_mailbox("owner", count=len(results), timeout=60,
                         predicate=lambda m: subject_of(m).startswith(subject))  # fmt: skip
    assert milter.metric("amzguard_config_reloads_total", result="success") == 2
    assert milter.metric("amzguard_config_reloads_total", result="failure") == 1
    assert milter.metric("amzguard_config_last_reload_successful") == 1
    assert milter.metric("amzguard_mode", mode="enforce") == 1
    assert "milter.socket_mode: expected a quoted octal mode" in milter.log_text()
