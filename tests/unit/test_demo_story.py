"""The demo's story is consistent data, and its judge notices every way a run can differ from it.

(That each promise holds on the real Postfix is tests/e2e/test_demo.py.)
"""

from __future__ import annotations

import dataclasses
import email
import re

import pytest

from amzguard.policy import Channel, Outcome as Decision, Reason
from demo.observe import Seen, build_message, mismatches
from demo.story import SECRET_PLACEHOLDER, STORY, TAG_HEADER, Step, Via

SECRET = "s3cret-for-the-unit-test-0001"


def test_steps_are_told_apart_by_key_and_subject() -> None:
    assert len({step.key for step in STORY}) == len(STORY)
    # The end-to-end test finds each step's mail, bounces included, by its subject.
    assert len({step.subject for step in STORY}) == len(STORY)


@pytest.mark.parametrize("step", STORY, ids=[step.key for step in STORY])
def test_each_promise_is_in_amzguards_vocabulary(step: Step) -> None:
    # One decision line per recipient amzguard sees (none for one Postfix refuses before it, e.g. by the
    # shipped transport map at RCPT).
    assert len(step.expect.decisions) <= len(step.to)
    for item in step.expect.decisions:
        fields = dict(re.findall(r"(\w+)=(\S+)", item))
        assert Channel(fields["channel"]) and Decision(fields["decision"]) and Reason(fields["reason"])
    assert step.expect.reply in (None, 250, 550) and (step.expect.reply is None) == (step.via is Via.SENDMAIL)
    for item in step.expect.delivered:
        assert item.split(":", 1)[0] in ("sink", "mailbox", "pipe"), item


@pytest.mark.parametrize("step", STORY, ids=[step.key for step in STORY])
def test_built_messages_carry_the_secret_not_the_placeholder(step: Step) -> None:
    message = email.message_from_bytes(build_message(step, SECRET))
    assert " ".join(str(message["Subject"]).split()) == step.subject
    assert SECRET_PLACEHOLDER.encode() not in build_message(step, SECRET)
    if any(name == TAG_HEADER for name, _ in step.headers):
        assert message[TAG_HEADER] == f"review {SECRET}"


def test_a_run_that_matches_the_story_has_no_mismatch() -> None:
    for step in STORY:
        expect = step.expect
        shuffled = dataclasses.replace(expect, decisions=tuple(reversed(expect.decisions)),
                                       delivered=tuple(x.upper() for x in expect.delivered))  # fmt: skip
        assert mismatches(step.expect, Seen(step.key, shuffled)) == []


CHANGES = {
    "reply": lambda o: 451 if o.reply != 451 else 250,
    "decisions": lambda o: o.decisions[1:] + ("channel=reply decision=refuse reason=no-order-id",),
    "delivered": lambda o: o.delivered + ("sink:someone@example.org",),
    "bounced": lambda o: o.bounced[1:] if o.bounced else ("shop:someone@example.org",),
    "learned": lambda o: o.learned[1:] if o.learned else ("someone@marketplace.amazon.de",),
}


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_each_difference_is_reported_by_name(field: str) -> None:
    for step in STORY:
        seen = Seen(step.key, dataclasses.replace(step.expect, **{field: CHANGES[field](step.expect)}))
        [line] = mismatches(step.expect, seen)
        assert line.startswith(f"{field}: promised ")


def test_problems_beside_the_outcome_are_differences_too() -> None:
    step = STORY[0]
    seen = Seen(step.key, step.expect, problems=["the review tag or its secret left the MTA: /x"])
    assert mismatches(step.expect, seen) == ["the review tag or its secret left the MTA: /x"]


def test_recipients_outside_the_to_header_are_named_where_each_path_looks() -> None:
    """``sendmail -t`` reads the recipients from the headers; an SMTP client names them only in RCPT."""
    [mixed] = [step for step in STORY if step.header_to and set(step.header_to) != set(step.to)]
    hidden = [rcpt for rcpt in mixed.to if rcpt not in mixed.header_to]
    over_smtp = email.message_from_bytes(build_message(dataclasses.replace(mixed, via=Via.SMTP), SECRET))
    assert over_smtp["Bcc"] is None and over_smtp["To"] == ", ".join(mixed.header_to)
    by_sendmail = email.message_from_bytes(build_message(dataclasses.replace(mixed, via=Via.SENDMAIL), SECRET))
    assert by_sendmail["Bcc"] == ", ".join(hidden)
