"""The visible To: follows the unmarked envelope on a real Postfix (issue 12 item 2): a tagged review request
to a marked buyer address, through sendmail(1) and over SMTP, arrives at the sink with the envelope and the
To: field both unmarked, the display name and the other address kept. Addresses are made up."""

from __future__ import annotations

from collections.abc import Iterator
from email.utils import getaddresses

import pytest

from tests.e2e.conftest import REVIEW_SENDER, REVIEW_SENDER_CHANNELS, Stack, start_stack, stop_stack
from tests.e2e.harness import make_message, unique_token
from tests.support.milter_process import REVIEW_TOKEN

MARKED_BUYER = "blacklisted-k4m9q2x7z1w8@marketplace.amazon.de"
UNMARKED_BUYER = "k4m9q2x7z1w8@marketplace.amazon.de"
OTHER = "other@shop.example"
TAG_HEADER = "X-Amzguard-Channel"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    started = start_stack("visible-to", channels=REVIEW_SENDER_CHANNELS)
    yield started
    stop_stack(started)


ORDERS = {"sendmail": "305-1234567-7654321", "smtp": "305-1234567-7654322"}
"""One per path: the second review request for an order is refused (one per order)."""


def review_request(subject: str, order: str) -> bytes:
    return make_message(REVIEW_SENDER, f'"Max M." <{MARKED_BUYER}>, {OTHER}', subject,
                        body=f"How was your order {order}? (invented wording)\n",
                        extra_headers=[(TAG_HEADER, f"review {REVIEW_TOKEN}"),
                                       ("Cc", f"{MARKED_BUYER} (Max)")])  # fmt: skip


@pytest.mark.parametrize("path", ["sendmail", "smtp"])
def test_to_and_cc_follow_the_unmarked_envelope(stack: Stack, path: str) -> None:
    subject = unique_token(f"visible-to-{path}")
    message = review_request(subject, ORDERS[path])
    if path == "sendmail":
        done = stack.postfix.sendmail(REVIEW_SENDER, [MARKED_BUYER], message)
        assert done.returncode == 0, done.stderr
    else:
        result = stack.postfix.smtp(REVIEW_SENDER, [MARKED_BUYER], message)
        assert result.queued, result
    [relayed] = stack.postfix.sink.wait_for(1, predicate=lambda m: str(m.message.get("Subject", "")) == subject)
    assert relayed.rcpts == [UNMARKED_BUYER]
    # Postfix's own Received: line says "for <marked>" on the SMTP path (one recipient); every other
    # field and the body no longer name the marked address.
    assert [name for name, value in relayed.headers if MARKED_BUYER in value] in ([], ["Received"])
    assert MARKED_BUYER not in relayed.message.get_payload()
    to_fields = relayed.message.get_all("To")
    assert len(to_fields) == 1
    assert getaddresses(to_fields) == [("Max M.", UNMARKED_BUYER), ("", OTHER)]
    assert '"Max M." <' in to_fields[0]  # the display name as it was written, quotes included
    [cc] = relayed.message.get_all("Cc")
    assert " ".join(cc.split()) == f"{UNMARKED_BUYER} (Max)"
    stack.milter.wait_log(f"rcpt=<{MARKED_BUYER}> path={path} stage=eom channel=review decision=deliver-unmarked")
    stack.postfix.wait_queue_empty()


def test_a_folded_to_keeps_its_folding_and_an_unsafe_cc_stays_as_it_was(stack: Stack) -> None:
    subject = unique_token("visible-to-folded")
    folded_to = f'"Max M."\r\n\t<{MARKED_BUYER}>,\r\n {OTHER}'
    split_cc = "Max <blacklisted-k4m9q2x7z1w8@\r\n marketplace.amazon.de>"  # a fold inside the address
    message = make_message(REVIEW_SENDER, "placeholder@shop.example", subject,
                           body="How was your order 305-1234567-7654323? (invented wording)\n",
                           extra_headers=[(TAG_HEADER, f"review {REVIEW_TOKEN}"), ("Cc", split_cc)])  # fmt: skip
    message = message.replace(b"To: placeholder@shop.example", f"To: {folded_to}".encode())
    done = stack.postfix.sendmail(REVIEW_SENDER, [MARKED_BUYER], message)
    assert done.returncode == 0, done.stderr
    [relayed] = stack.postfix.sink.wait_for(1, predicate=lambda m: str(m.message.get("Subject", "")) == subject)
    assert relayed.rcpts == [UNMARKED_BUYER]
    assert f'To: "Max M."\n\t<{UNMARKED_BUYER}>,\n {OTHER}\n'.encode() in relayed.data
    assert b"Cc: Max <blacklisted-k4m9q2x7z1w8@\n marketplace.amazon.de>\n" in relayed.data
    stack.milter.wait_log("visible Cc[1] kept unchanged: names the marked address but cannot be rewritten safely")
    stack.postfix.wait_queue_empty()
