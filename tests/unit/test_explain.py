"""``amzguard explain``: the milter's decisions for given addresses, through the same policy calls."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from amzguard.cli import main
from amzguard.store import OptOut, SqliteStore
from amzguard.policy import ReviewSent

TOKEN = "t3st-review-token-7Qx9Lm2"
TAG = f"X-Amzguard-Channel: review {TOKEN}"


def write(tmp_path: Path, **data: object) -> str:
    only_support = {"allowed_senders": ["support@shop.test"]}
    base: dict[str, object] = {
        "channels": {"review": {"enabled": True, "token": TOKEN, **only_support},
                     "reply": only_support, "critical": only_support}  # fmt: skip
    }
    base.update(data)
    path = tmp_path / "amzguard.yml"
    path.write_text(yaml.safe_dump(base))
    return str(path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    code = main(["explain", *argv])
    return code, capsys.readouterr().out.splitlines()


def test_refused_at_rcpt_for_a_sender_without_channel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "-c", write(tmp_path), "--sender", "shop@shop.test",
                    "q7x2k9m4p1z8w3v5@marketplace.amazon.de", "owner@shop.test")  # fmt: skip
    assert code == 0
    assert out[0] == "sender <shop@shop.test>, path smtp, mode enforce"
    assert out[1] == ("<q7x2k9m4p1z8w3v5@marketplace.amazon.de>: refuse at RCPT TO "
                      "(reason buyer-mail, channel none)")  # fmt: skip
    assert out[2].startswith("  buyer: Amazon relay domain (marketplace.amazon.de); no channel is open")
    assert out[3] == "<owner@shop.test>: deliver at end of message (reason not-buyer, channel none)"
    assert out[-1] == "message: accepted unchanged"


def test_review_tag_unmarks_and_strips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out = run(capsys, "-c", write(tmp_path), "--sender", "support@shop.test", "--header", TAG,
                 "blacklisted-40417@amazon.fr")  # fmt: skip
    assert out[1] == "<blacklisted-40417@amazon.fr>: deliver-unmarked at end of message (reason channel, channel review)"
    assert "delivered to <40417@amazon.fr>" in out[2]
    # The content rules judge what the channel lets through; without a body only what the headers show.
    assert out[3:5] == [
        "content: log missing-order-id: no order id (NNN-NNNNNNN-NNNNNNN) in the subject or the text",
        "note: explain has no body: content rules that read it were not run (amzguard lint FILE.eml runs them)",
    ]
    assert out[5:] == [
        "message: accepted with these changes:",
        "  delete recipient blacklisted-40417@amazon.fr",
        "  add recipient <40417@amazon.fr>",
        "  delete header X-Amzguard-Channel (field 1)",
    ]


def test_wrong_secret_on_the_sendmail_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out = run(capsys, "-c", write(tmp_path), "--sendmail", "--sender", "support@shop.test",
                 "--header", "X-Amzguard-Channel: review not-the-secret-0000", "blacklisted-40417@amazon.fr")  # fmt: skip
    assert out[0] == "sender <support@shop.test>, path sendmail, mode enforce"
    assert out[1].endswith("refuse at end of message (reason buyer-mail, channel none)")
    assert "tag with a wrong secret: review" in out[2]
    assert out[3].startswith("message: refused whole: 550 5.7.1 <blacklisted-40417@amazon.fr>: Amazon forbids")


def test_sendmail_path_never_refuses_at_rcpt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out = run(capsys, "-c", write(tmp_path), "--sendmail", "--sender", "shop@shop.test",
                 "q7x2k9m4p1z8w3v5@marketplace.amazon.de")  # fmt: skip
    assert "refuse at end of message" in out[1]


def test_monitor_mode_says_would(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out = run(capsys, "-c", write(tmp_path, mode="monitor"), "--sender", "shop@shop.test",
                 "q7x2k9m4p1z8w3v5@marketplace.amazon.de")  # fmt: skip
    assert out[1].endswith("would refuse at RCPT TO (reason buyer-mail, channel none)")
    assert out[-1].startswith("message: mode is monitor")


def test_everything_refused_at_rcpt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out = run(capsys, "-c", write(tmp_path), "q7x2k9m4p1z8w3v5@marketplace.amazon.de")
    assert out[0].startswith("sender <>")
    assert out[-1] == "message: every recipient is refused at RCPT TO; nothing is accepted"


def test_bad_header_and_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "-c", write(tmp_path), "--header", "no colon", "x@y.example"]) == 2
    assert "expected 'Name: value'" in capsys.readouterr().err
    (tmp_path / "broken.yml").write_text("mode: loud\n")
    assert main(["explain", "-c", str(tmp_path / "broken.yml"), "x@y.example"]) == 2
    assert "mode: expected 'enforce' or 'monitor'" in capsys.readouterr().err


def test_order_id_and_store_answers_as_in_the_milter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """explain reads the order id from the subject and asks an existing store what the milter would ask."""
    store_path = tmp_path / "store.sqlite"
    only_support = {"allowed_senders": ["support@shop.test"]}
    config = write(tmp_path, store={"path": str(store_path)}, channels={
        "review": {"enabled": True, "token": TOKEN, "missing_order_id": "refuse", **only_support},
        "reply": only_support, "critical": only_support})  # fmt: skip
    review = ["-c", config, "--sender", "support@shop.test", "--header", TAG]

    # No store yet: the order id in the subject is enough to pass; nothing is created by explaining.
    _, out = run(capsys, *review, "--header", "Subject: How was order 303-1234567-7654321?", "blacklisted-40417@amazon.fr")
    assert out[1].startswith("<blacklisted-40417@amazon.fr>: deliver-unmarked at end of message")
    assert out[2].endswith("; the store does not exist yet, so no opt-out or earlier review request was consulted")
    assert not store_path.exists()
    _, out = run(capsys, *review, "--header", "Subject: How was it?", "blacklisted-40417@amazon.fr")
    assert out[1].startswith("<blacklisted-40417@amazon.fr>: refuse at end of message (reason no-order-id")

    store = SqliteStore(store_path)
    store.add([OptOut("40417@amazon.fr")])
    store.record([ReviewSent("303-1111111-2222222", "q7x2k9m4p1z8w3v5@marketplace.amazon.de")])
    _, out = run(capsys, *review, "--header", "Subject: Order 303-1234567-7654321", "blacklisted-40417@amazon.fr")
    assert out[1] == ("<blacklisted-40417@amazon.fr>: refuse at end of message (reason opted-out, channel review)")
    assert out[2].endswith("a review request (order 303-1234567-7654321) refused: opted-out")
    _, out = run(capsys, *review, "--header", "Subject: Order 303-1111111-2222222",
                 "q7x2k9m4p1z8w3v5@marketplace.amazon.de")  # fmt: skip
    assert out[1].startswith("<q7x2k9m4p1z8w3v5@marketplace.amazon.de>: refuse at end of message"
                             " (reason duplicate-review")  # fmt: skip


def test_routing_form_is_judged_as_the_milter_does_without_rcpt_addr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """explain cannot ask Postfix for {rcpt_addr}: a buyer in a routing form is refused as unresolved-route
    even with a valid tag, and the output says why the milter on the SMTP path may judge otherwise."""
    _, out = run(capsys, "-c", write(tmp_path), "--sender", "support@shop.test", "--header", TAG,
                 "x%marketplace.amazon.de@localhost", "owner@shop.test")  # fmt: skip
    assert out[1] == "<x%marketplace.amazon.de@localhost>: refuse at RCPT TO (reason unresolved-route, channel none)"
    assert "routing form whose destination is not certain" in out[2]
    assert any(line.startswith("note: on the SMTP path the milter judges the address Postfix itself resolved")
               for line in out)  # fmt: skip


def test_an_unapproved_sender_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path, buyers={"approved_senders": {"de": ["support@shop.test"]}},
                   channels={"review": {"enabled": True, "token": TOKEN}})  # fmt: skip
    _, out = run(capsys, "-c", config, "--sender", "news@shop.test", "q7x2k9m4p1z8w3v5@marketplace.amazon.de")
    assert out[1] == ("<q7x2k9m4p1z8w3v5@marketplace.amazon.de>: refuse at RCPT TO "
                      "(reason sender-not-approved, channel none)")  # fmt: skip
    assert "envelope sender <news@shop.test> is not in buyers.approved_senders" in out[2]
    _, out = run(capsys, "-c", config, "--sender", "support@shop.test", "--header", TAG,
                 "--header", "From: Shop <news@shop.test>", "q7x2k9m4p1z8w3v5@marketplace.amazon.de")  # fmt: skip
    assert out[1].endswith("refuse at end of message (reason sender-not-approved, channel review)")
    assert "or From: (Shop <news@shop.test>) is not in buyers.approved_senders" in out[2]
    # A buyer of a marketplace nothing is approved for is not checked.
    _, out = run(capsys, "-c", config, "--sender", "news@shop.test", "--header", TAG, "40417@marketplace.amazon.fr")
    assert out[1].startswith("<40417@marketplace.amazon.fr>: deliver at end of message (reason channel")


def test_a_restriction_and_the_daily_limit_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import time

    from amzguard.policy import ProactiveSent
    from amzguard.policy.restriction import Restriction

    store_path = tmp_path / "store.sqlite"
    config = write(tmp_path, store={"path": str(store_path)}, limits={"proactive_per_day": {"de": 2}})
    review = ["-c", config, "--sender", "support@shop.test", "--header", TAG,
              "--header", "Subject: How was order 303-1234567-7654321?"]  # fmt: skip
    de_buyer, fr_buyer = "q7x2k9m4p1z8w3v5@marketplace.amazon.de", "40417@marketplace.amazon.fr"
    _, out = run(capsys, *review, de_buyer)
    assert "daily limit: de 2 a day; today's count not read (no store)" in out
    store = SqliteStore(store_path)
    store.record([ProactiveSent("de", 1, None)])
    _, out = run(capsys, *review, de_buyer)
    assert "daily limit: de 1 of 2 sent today (UTC), this message adds 1: fits" in out
    store.record([ProactiveSent("de", 1, None)])
    _, out = run(capsys, *review, de_buyer)
    assert ("daily limit: de 2 of 2 sent today (UTC), this message adds 1: the milter would hold the message "
            "(451 4.7.1) until a later UTC day") in out  # fmt: skip
    _, out = run(capsys, *review, fr_buyer)
    assert not [line for line in out if line.startswith("daily limit")]  # fr has no limit
    now = int(time.time())
    store.restrict([Restriction("fr", now + 86400, "cli", now)])
    _, out = run(capsys, *review, fr_buyer)
    assert out[1] == f"<{fr_buyer}>: refuse at end of message (reason messaging-restricted, channel review)"
    assert "Amazon restricted this account from proactive messages to this marketplace" in out[2]
    assert store.daily_counts(store.today())[0].count == 2  # explaining recorded nothing
