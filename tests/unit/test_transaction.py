"""The one transaction object, driven as the adapter, explain and lint drive it, with a fake store."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from amzguard.address import parse_address
from amzguard.config import DEFAULT_REASON_TEXTS, parse_config
from amzguard.content import ContentAction, ContentRule, split_message
from amzguard.policy import (
    Channel,
    DeleteHeader,
    MessageFacts,
    Mode,
    Outcome,
    Policy,
    Reason,
    ReviewSent,
    StoreQuestions,
    SubmissionPath,
)
from amzguard.transaction import Transaction

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "content"
TOKEN = "fixture-review-token-0123456789"
BUYER = "q7x2m4k9z1bc3de@marketplace.amazon.com"


def policy(**content: object) -> Policy:
    data: dict[str, object] = {"channels": {"review": {"enabled": True, "token": TOKEN}}}
    if content:
        data["content"] = content
    return Policy.from_settings(parse_config(data).policy)


class FakeStore:
    """Answers like OptOutStore.answer, from sets; remembers what it was asked."""

    def __init__(self, opted_out: set[str] = frozenset(), reviewed: set[str] = frozenset()) -> None:
        self.opted_out, self.reviewed = set(opted_out), set(reviewed)
        self.asked: list[StoreQuestions] = []

    def answer(self, questions: StoreQuestions, facts: MessageFacts) -> MessageFacts:
        self.asked.append(questions)
        return dataclasses.replace(
            facts,
            opted_out=frozenset(k for k in questions.buyer_keys if k in self.opted_out),
            reviewed_orders=frozenset({questions.order_id} & self.reviewed) if questions.order_id else frozenset(),
        )


def drive(pol: Policy, name: str, to: str = BUYER, store: FakeStore | None = None, chunk: int = 64 * 1024):
    """What the adapter does with one message file; returns the transaction and its judgement."""
    headers, body, _ = split_message((FIXTURES / name).read_bytes())
    sender = next(h.value for h in headers if h.name == "From").split("<")[-1].rstrip(">")
    trx = Transaction(pol, SubmissionPath.SMTP, parse_address(f"<{sender}>"))
    assert trx.rcpt(f"<{to}>") is None
    for field in headers:
        trx.header(field.name, field.value.encode())
    chunks_read = 0
    if trx.wants_body():
        for start in range(0, len(body), chunk):
            chunks_read += 1
            if not trx.body(body[start : start + chunk]):
                break
    questions = trx.questions()
    answered = store.answer(questions, trx.facts()) if store is not None and questions else None
    return trx, trx.judge(answered), chunks_read


def test_clean_review_request_is_granted_and_recorded() -> None:
    store = FakeStore()
    trx, judgement, _ = drive(policy(), "en_plain_review.eml", store=store)
    [decision] = judgement.decisions
    assert (decision.outcome, decision.reason, decision.channel) == (Outcome.DELIVER, Reason.CHANNEL, Channel.REVIEW)
    assert decision.findings == () and judgement.body_read
    assert judgement.records == (ReviewSent("302-1234567-1234567", BUYER),)
    assert store.asked == [StoreQuestions(buyer_keys=(BUYER,), order_id="302-1234567-1234567", restrictions=True)]
    assert judgement.plan is not None and judgement.plan.reject is None


def test_marketing_template_is_refused_for_its_content_and_not_recorded() -> None:
    _, judgement, _ = drive(policy(), "en_marketing.eml", store=FakeStore())
    [decision] = judgement.decisions
    assert (decision.outcome, decision.reason, decision.channel) == (Outcome.REFUSE, Reason.CONTENT, Channel.REVIEW)
    assert judgement.plan is not None and judgement.plan.reject is not None
    assert judgement.plan.reject.text.startswith(f"<{BUYER}>: {DEFAULT_REASON_TEXTS[Reason.CONTENT]}: ")
    assert judgement.records == ()
    assert {f.rule for f in judgement.findings} >= {ContentRule.TRACKING_PIXEL, ContentRule.LIST_UNSUBSCRIBE}


def test_a_vetoed_buyer_keeps_its_veto_and_content_is_not_judged() -> None:
    _, judgement, _ = drive(policy(), "en_marketing.eml", store=FakeStore(opted_out={BUYER}))
    [decision] = judgement.decisions
    assert decision.reason is Reason.OPTED_OUT and decision.findings == () and judgement.findings == ()


def test_list_unsubscribe_removed_from_a_delivered_reply() -> None:
    _, judgement, _ = drive(policy(), "en_reply_list_unsubscribe.eml")
    [decision] = judgement.decisions
    assert (decision.outcome, decision.channel) == (Outcome.DELIVER, Channel.REPLY)
    assert judgement.plan is not None
    assert DeleteHeader("List-Unsubscribe", 1) in judgement.plan.changes
    refusing = policy(rules={"list_unsubscribe": "refuse"})
    _, judgement, _ = drive(refusing, "en_reply_list_unsubscribe.eml")
    assert judgement.decisions[0].reason is Reason.CONTENT


def test_missing_order_id_logs_by_default_and_refuses_as_no_order_id_when_asked() -> None:
    _, judgement, _ = drive(policy(), "en_critical_no_order_id.eml")
    [decision] = judgement.decisions
    assert (decision.outcome, decision.channel) == (Outcome.DELIVER, Channel.CRITICAL)
    assert [(f.rule, f.action) for f in decision.findings] == [(ContentRule.MISSING_ORDER_ID, ContentAction.LOG)]
    _, judgement, _ = drive(policy(rules={"missing_order_id": "refuse"}), "en_critical_no_order_id.eml")
    assert judgement.decisions[0].reason is Reason.NO_ORDER_ID
    assert judgement.plan is not None and judgement.plan.reject is not None
    assert DEFAULT_REASON_TEXTS[Reason.NO_ORDER_ID] in judgement.plan.reject.text


def test_body_read_only_for_granted_buyers_and_only_as_far_as_needed() -> None:
    # Not a buyer: no channel grants anything, no body is read.
    trx, judgement, chunks = drive(policy(), "en_marketing.eml", to="owner@shop.test")
    assert chunks == 0 and not judgement.body_read and judgement.findings == ()
    # Rules off and the order id in the subject: nothing needs the body.
    off = {rule.value.replace("-", "_"): "off" for rule in ContentRule}
    _, judgement, chunks = drive(policy(rules=off), "en_plain_review.eml")
    assert chunks == 0 and not judgement.body_read
    # Attachment rules off: the text is read up to max_bytes, then the rest is skipped.
    text_only = policy(max_bytes=4096, rules={"attachment_size": "off", "attachment_type": "off"})
    _, judgement, chunks = drive(text_only, "en_attachments.eml", chunk=512)
    assert judgement.body_read and judgement.truncated and chunks < 12
    # With the attachment rules on every chunk is measured.
    _, judgement, chunks = drive(policy(max_bytes=4096), "en_attachments.eml", chunk=512)
    size = len(split_message((FIXTURES / "en_attachments.eml").read_bytes())[1])
    assert chunks == -(-size // 512)


def test_header_lines_follow_folded_fields() -> None:
    pol = policy()
    raw = (FIXTURES / "en_marketing.eml").read_bytes()
    headers, _, _ = split_message(raw)
    trx = Transaction(pol, SubmissionPath.SMTP, parse_address("<shop@shop.example>"))
    trx.rcpt(f"<{BUYER}>")
    for field in headers:
        trx.header(field.name, field.value)  # no lines given: counted from the folded values
    assert [(h.name, h.line) for h in trx.headers if h.name.startswith("List-")] == [
        ("List-Unsubscribe", 8), ("List-Unsubscribe-Post", 10)
    ]  # fmt: skip
    # Without a buyer recipient the content rules' fields are not even kept (only the channels' are).
    other = Transaction(pol, SubmissionPath.SMTP, parse_address("<shop@shop.example>"))
    other.rcpt("<owner@shop.test>")
    for field in headers:
        other.header(field.name, field.value)
    assert {h.name.casefold() for h in other.headers} <= pol.channel_headers()
    assert other.header_counts["list-unsubscribe"] == 1  # still counted


def test_monitor_mode_reports_findings_and_changes_nothing() -> None:
    data = {"mode": "monitor", "channels": {"review": {"enabled": True, "token": TOKEN}}}
    pol = Policy.from_settings(parse_config(data).policy)
    assert pol.settings.mode is Mode.MONITOR
    _, judgement, _ = drive(pol, "en_marketing.eml")
    assert judgement.decisions[0].reason is Reason.CONTENT and judgement.findings
    assert judgement.plan is not None and judgement.plan.reject is None and judgement.plan.changes == ()


def test_without_a_body_the_subject_is_still_judged() -> None:
    # explain has header fields only: an emoji in the subject of a granted reply is refused there too.
    trx = Transaction(policy(), SubmissionPath.SMTP, parse_address("<shop@shop.test>"))
    trx.rcpt(f"<{BUYER}>")
    trx.header("In-Reply-To", "<q1@marketplace.amazon.com>")
    trx.header("Subject", "=?utf-8?b?" + "UmU6IPCfmIAgeW91ciBwYXJjZWw=" + "?=")  # "Re: 😀 your parcel"
    judgement = trx.judge()
    [decision] = judgement.decisions
    assert (decision.reason, decision.channel) == (Reason.CONTENT, Channel.REPLY) and not judgement.body_read
    assert [f.evidence for f in decision.findings] == ["emoji \U0001f600 (grinning face) in the subject"]
