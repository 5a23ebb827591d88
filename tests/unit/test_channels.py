"""The channels of issue 4 in the pure policy: reply, critical, and the review channel's vetoes (opt-out,
one request per order, missing order id), plus what the policy asks of and tells the store."""

from __future__ import annotations

import dataclasses

import pytest

from amzguard.address import BuyerPatterns, buyer_key, classify_recipient, parse_address, recipient_keys
from amzguard.config import (
    DEFAULT_MARKED_PREFIXES,
    DEFAULT_REASON_TEXTS,
    DEFAULT_RELAY_DOMAINS,
    DEFAULT_REPLY_TEXT,
    parse_config,
)
from amzguard.content import ContentAction, ContentRule, ContentSettings
from amzguard.policy import (
    AddRecipient,
    BuyerMessage,
    Channel,
    DeleteRecipient,
    MessageFacts,
    Outcome,
    Policy,
    Reason,
    ReplyCheck,
    ReviewSent,
    StoreQuestions,
    SubmissionPath,
    message_ids,
)

TOKEN = "s3cret-Token-0123456789"
TAG = ("X-Amzguard-Channel", f"review {TOKEN}")
PATTERNS = BuyerPatterns(marked_prefixes=DEFAULT_MARKED_PREFIXES, relay_domains=DEFAULT_RELAY_DOMAINS)
BUYER = "<q7x2k9m4p1z8w3v5@marketplace.amazon.de>"
BUYER_KEY = "q7x2k9m4p1z8w3v5@marketplace.amazon.de"
MARKED = "<blacklisted-40417@amazon.fr>"
ORDER = "302-1234567-7654321"
AMAZON_REF = ("In-Reply-To", "<0102018c3f.5e1a-4d2b@marketplace.amazon.de>")


BASE = parse_config({"channels": {"review": {"enabled": True, "token": TOKEN}}}).policy


def make_policy(
    review: dict | None = None, reply: dict | None = None, critical: dict | None = None, **changes: object
) -> Policy:
    settings = dataclasses.replace(
        BASE,
        review=dataclasses.replace(BASE.review, **(review or {})),
        reply=dataclasses.replace(BASE.reply, **(reply or {})),
        critical=dataclasses.replace(BASE.critical, **(critical or {})),
    )
    return Policy.from_settings(dataclasses.replace(settings, **changes))


def facts(headers=(), sender="<shop@shop.test>", **known: object) -> MessageFacts:
    return MessageFacts(sender=parse_address(sender), path=SubmissionPath.SMTP, headers=tuple(headers), **known)


def rcpt(raw: str):
    return classify_recipient(raw, PATTERNS, smtp=True)


def verdict(policy: Policy, message: MessageFacts, raw: str = BUYER) -> tuple[Outcome, Reason, Channel]:
    decision = policy.decide(message, rcpt(raw))
    return decision.outcome, decision.reason, decision.channel


DELIVER_REPLY = (Outcome.DELIVER, Reason.CHANNEL, Channel.REPLY)
DELIVER_CRITICAL = (Outcome.DELIVER, Reason.CHANNEL, Channel.CRITICAL)
DELIVER_REVIEW = (Outcome.DELIVER, Reason.CHANNEL, Channel.REVIEW)
REFUSED = (Outcome.REFUSE, Reason.BUYER_MAIL, Channel.NONE)


# -- buyer keys ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("<Q7X2K9M4P1Z8W3V5@Marketplace.Amazon.DE>", BUYER_KEY),
        ("q7x2k9m4p1z8w3v5+CASE-0042@marketplace.amazon.de", BUYER_KEY),
        ("<blacklisted-q7x2k9m4p1z8w3v5@marketplace.amazon.de>", BUYER_KEY),
        ("<BLACKLISTED-q7x2k9m4p1z8w3v5+7@marketplace.amazon.de.>", BUYER_KEY),
        ("<blacklisted-12345@amazon.fr>", "12345@amazon.fr"),
        ("<blacklisted-@amazon.fr>", ""),
        ("<+only@marketplace.amazon.de>", ""),
        ("<>", ""),
    ],
)
def test_buyer_key(raw: str, key: str) -> None:
    assert buyer_key(parse_address(raw), DEFAULT_MARKED_PREFIXES) == key


def test_recipient_keys_cover_routed_forms() -> None:
    keys = recipient_keys(rcpt("<q7x2k9m4p1z8w3v5%marketplace.amazon.de@shop.test>"), DEFAULT_MARKED_PREFIXES)
    assert BUYER_KEY in keys


# -- reply channel -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([AMAZON_REF], DELIVER_REPLY),
        ([("References", "<a1@shop.test> <0102018c3f@M.MARKETPLACE.AMAZON.CO.JP>")], DELIVER_REPLY),
        ([("References", "0102018c3f@marketplace.amazon.com")], DELIVER_REPLY),  # bare id, old mailers
        ([("In-Reply-To", "<x@shop.test>")], REFUSED),
        ([("In-Reply-To", "<x@notmarketplace.amazon.de>")], REFUSED),
        ([("In-Reply-To", "<x@marketplace.amazon.de.evil.test>")], REFUSED),
        ([("In-Reply-To", "marketplace.amazon.de")], REFUSED),
        ([("In-Reply-To", "")], REFUSED),
        ([("X-In-Reply-To", "<x@marketplace.amazon.de>")], REFUSED),
        ([("Subject", "Re: your order")], REFUSED),  # a subject alone makes no reply
        ([], REFUSED),
    ],
)
def test_reply_reference_check(headers, expected) -> None:
    assert verdict(make_policy(), facts(headers)) == expected


def test_reply_to_a_marked_address_is_unmarked() -> None:
    assert verdict(make_policy(), facts([AMAZON_REF]), MARKED) == (Outcome.DELIVER_UNMARKED, Reason.CHANNEL,
                                                                   Channel.REPLY)  # fmt: skip


def test_reply_reference_domains_replace_the_relay_domains() -> None:
    policy = make_policy(reply={"reference_domains": ("mail.amazon.example",)})
    assert verdict(policy, facts([("In-Reply-To", "<a@x.mail.amazon.example>")])) == DELIVER_REPLY
    assert verdict(policy, facts([AMAZON_REF])) == REFUSED


def test_reply_subject_prefixes() -> None:
    policy = make_policy(reply={"subject_prefixes": ("Re:", "AW:")})
    assert verdict(policy, facts([AMAZON_REF, ("Subject", "aw: Lieferung")])) == DELIVER_REPLY
    assert verdict(policy, facts([AMAZON_REF, ("Subject", "=?utf-8?q?RE:_Versand?=")])) == DELIVER_REPLY
    assert verdict(policy, facts([AMAZON_REF, ("Subject", "Your order shipped (Re: order)")])) == REFUSED
    assert verdict(policy, facts([AMAZON_REF])) == REFUSED


def test_reply_thread_check_needs_the_buyers_own_message() -> None:
    policy = make_policy(reply={"check": ReplyCheck.THREAD})
    reference = ("In-Reply-To", "<msg-1@mail.example>")
    assert verdict(policy, facts([reference], thread_senders=frozenset({BUYER_KEY}))) == DELIVER_REPLY
    # another buyer's thread, no thread, or an Amazon-looking reference without a recorded message: refused
    assert verdict(policy, facts([reference], thread_senders=frozenset({"other@marketplace.amazon.de"}))) == REFUSED
    assert verdict(policy, facts([], thread_senders=frozenset({BUYER_KEY}))) == REFUSED
    assert verdict(policy, facts([AMAZON_REF])) == REFUSED
    # the buyer's address with a case-id sub-address is the same buyer
    raw = "<q7x2k9m4p1z8w3v5+case1@marketplace.amazon.de>"
    assert verdict(policy, facts([reference], thread_senders=frozenset({BUYER_KEY})), raw) == DELIVER_REPLY


def test_reply_channel_off_and_sender_list() -> None:
    assert verdict(make_policy(reply={"enabled": False}), facts([AMAZON_REF])) == REFUSED
    policy = make_policy(reply={"allowed_senders": ("@helpdesk.shop.test",)})
    assert verdict(policy, facts([AMAZON_REF], sender="<agent@helpdesk.shop.test>")) == DELIVER_REPLY
    assert verdict(policy, facts([AMAZON_REF], sender="<shop@shop.test>")) == REFUSED


def test_message_ids() -> None:
    assert message_ids("<a@b> <c@d>") == ["a@b", "c@d"]
    assert message_ids('"x" <a@b> (comment)') == ["a@b"]
    assert message_ids("a@b, c@d") == ["a@b", "c@d"]
    assert message_ids("<no-at-sign>") == []


# -- critical channel ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("[Important] delivery appointment needed", DELIVER_CRITICAL),
        ("Delivery appointment [IMPORTANT]", DELIVER_CRITICAL),
        ("Your address is incomplete [important] order 302-1234567-7654321", DELIVER_CRITICAL),
        ("=?UTF-8?Q?=5BImportant=5D_Lieferadresse_unvollst=C3=A4ndig?=", DELIVER_CRITICAL),
        ("[Wichtig] Liefertermin abstimmen", DELIVER_CRITICAL),
        ("Lieferadresse unvollständig [WICHTIG]", DELIVER_CRITICAL),
        ("=?ISO-8859-1?Q?=5Bwichtig=5D_Adresse_pr=FCfen?=", DELIVER_CRITICAL),
        ("Wichtig: Lieferung", REFUSED),
        ("Important: delivery", REFUSED),
        ("[ Important ] delivery", REFUSED),
        ("(Important) delivery", REFUSED),
        ("Important delivery", REFUSED),
        ("", REFUSED),
    ],
)
def test_critical_marker(subject: str, expected) -> None:
    assert verdict(make_policy(), facts([("Subject", subject)])) == expected


def test_critical_channel_off_custom_marker_and_sender_list() -> None:
    subject = [("Subject", "[Important] delivery")]
    assert verdict(make_policy(critical={"enabled": False}), facts(subject)) == REFUSED
    custom = make_policy(critical={"markers": ("[Wichtig]",)})
    assert verdict(custom, facts([("Subject", "[WICHTIG] Lieferung")])) == DELIVER_CRITICAL
    assert verdict(custom, facts(subject)) == REFUSED
    several = make_policy(critical={"markers": ("[Important]", "[Importante]")})
    assert verdict(several, facts([("Subject", "[importante] consegna")])) == DELIVER_CRITICAL
    assert verdict(several, facts(subject)) == DELIVER_CRITICAL
    limited = make_policy(critical={"allowed_senders": ("orders@shop.test",)})
    assert verdict(limited, facts(subject, sender="<orders@shop.test>")) == DELIVER_CRITICAL
    assert verdict(limited, facts(subject)) == REFUSED


# -- review channel vetoes and opt-outs -------------------------------------------------------------------


def test_opted_out_buyer_gets_replies_and_critical_but_no_review_request() -> None:
    policy = make_policy()
    opted = frozenset({BUYER_KEY})
    review = facts([TAG, ("Subject", f"How was order {ORDER}?")], order_id=ORDER, opted_out=opted)
    assert verdict(policy, review) == (Outcome.REFUSE, Reason.OPTED_OUT, Channel.REVIEW)
    assert verdict(policy, facts([AMAZON_REF], opted_out=opted)) == DELIVER_REPLY
    assert verdict(policy, facts([("Subject", "[Important] address")], opted_out=opted)) == DELIVER_CRITICAL
    # A review request stays one even dressed as a reply or a critical message.
    dressed = facts([TAG, AMAZON_REF, ("Subject", "[Important] review")], order_id=ORDER, opted_out=opted)
    assert verdict(policy, dressed) == (Outcome.REFUSE, Reason.OPTED_OUT, Channel.REVIEW)


def test_opt_out_matches_every_spelling_of_the_buyer() -> None:
    policy = make_policy()
    opted = frozenset({"40417@amazon.fr"})
    for raw in (MARKED, "<BLACKLISTED-40417@AMAZON.FR>", "<Blacklisted-40417+x@amazon.fr>"):
        assert verdict(policy, facts([TAG], order_id=ORDER, opted_out=opted), raw)[1] is Reason.OPTED_OUT, raw


def test_one_review_request_per_order() -> None:
    policy = make_policy()
    assert verdict(policy, facts([TAG], order_id=ORDER)) == DELIVER_REVIEW
    repeated = facts([TAG], order_id=ORDER, reviewed_orders=frozenset({ORDER}))
    assert verdict(policy, repeated) == (Outcome.REFUSE, Reason.DUPLICATE_REVIEW, Channel.REVIEW)
    assert verdict(make_policy(review={"one_per_order": False}), repeated) == DELIVER_REVIEW


def test_missing_order_id_is_no_channel_veto() -> None:
    # A missing order id is the content rule missing-order-id (tests/unit/test_transaction.py); the channel
    # itself grants, and one-per-order cannot apply without an id.
    assert verdict(make_policy(), facts([TAG])) == DELIVER_REVIEW
    assert verdict(make_policy(), facts([TAG], reviewed_orders=frozenset({ORDER}))) == DELIVER_REVIEW


# -- order id reading ---------------------------------------------------------------------------------


def test_order_id_is_read_only_from_tagged_review_requests() -> None:
    policy = make_policy()
    subject = ("Subject", f"Your order {ORDER}")
    assert policy.read_order_id(facts([TAG, subject])).order_id == ORDER
    assert policy.read_order_id(facts([subject])).order_id is None
    body = f"Thank you for order {ORDER}.\r\n".encode()
    assert policy.read_order_id(facts([TAG, ("Subject", "Your opinion")]), body).order_id == ORDER
    # the subject wins over the body
    other = "028-7654321-1234567"
    assert policy.read_order_id(facts([TAG, subject]), f"order {other}".encode()).order_id == ORDER


def test_body_is_wanted_only_for_tagged_requests_without_an_id_in_the_subject() -> None:
    policy = make_policy()
    assert policy.wants_body_step()
    assert policy.wants_body(facts([TAG, ("Subject", "Your opinion")]))
    assert not policy.wants_body(facts([TAG, ("Subject", f"Order {ORDER}")]))
    assert not policy.wants_body(facts([("Subject", "Your opinion")]))
    # Without the review channel the body is still wanted for the content rules of the other channels;
    # with no body rule on (or no channel on) the body step can go for the whole connection.
    assert make_policy(review={"enabled": False}).wants_body_step()
    no_body_rules = ContentSettings(actions=tuple((rule, ContentAction.OFF) for rule in ContentRule))
    assert not make_policy(review={"enabled": False}, content=no_body_rules).wants_body_step()
    no_channel = make_policy(review={"enabled": False}, reply={"enabled": False}, critical={"enabled": False})
    assert not no_channel.wants_body_step()
    assert no_channel.wanted_headers() == {"x-amzguard-channel"}
    assert {"subject", "content-type", "list-unsubscribe"} <= policy.wanted_headers()


# -- the store's questions and records -------------------------------------------------------------------


def test_store_questions() -> None:
    policy = make_policy()
    recipients = [rcpt(BUYER), rcpt(MARKED), rcpt("<owner@shop.test>")]
    asked = policy.store_questions(facts([TAG], order_id=ORDER), recipients)
    assert asked == StoreQuestions(buyer_keys=(BUYER_KEY, "40417@amazon.fr"), order_id=ORDER, restrictions=True)
    # untagged mail, or no buyer among the recipients: nothing to look up
    assert not policy.store_questions(facts([AMAZON_REF]), recipients)
    assert not policy.store_questions(facts([TAG], order_id=ORDER), [rcpt("<owner@shop.test>")])
    thread = make_policy(reply={"check": ReplyCheck.THREAD})
    asked = thread.store_questions(facts([("References", "<a@x> <b@y>")]), [rcpt(BUYER)])
    assert asked == StoreQuestions(message_ids=("a@x", "b@y"))
    no_dedupe = make_policy(review={"one_per_order": False})
    assert no_dedupe.store_questions(facts([TAG], order_id=ORDER), [rcpt(BUYER)]).order_id is None


def test_store_records_for_review_requests() -> None:
    policy = make_policy()
    message = facts([TAG], order_id=ORDER)
    decisions = [policy.decide(message, rcpt(raw)) for raw in (MARKED, "<owner@shop.test>")]
    assert policy.store_records(message, decisions) == (ReviewSent(ORDER, "40417@amazon.fr"),)
    refused = facts([TAG], order_id=ORDER, opted_out=frozenset({BUYER_KEY}))
    assert policy.store_records(refused, [policy.decide(refused, rcpt(BUYER))]) == ()
    no_id = facts([TAG])
    assert policy.store_records(no_id, [policy.decide(no_id, rcpt(BUYER))]) == ()


def test_store_records_inbound_buyer_messages_only_in_thread_mode() -> None:
    inbound = facts(
        [("From", "Erika - Amazon Marketplace <Q7X2K9M4P1Z8W3V5@marketplace.amazon.de>"),
         ("Message-ID", "<msg-1@mail.example>")],
        sender="<bounces@amazonses.example>",
    )  # fmt: skip
    thread = make_policy(reply={"check": ReplyCheck.THREAD})
    decisions = [thread.decide(inbound, rcpt("<support@shop.test>"))]
    assert thread.store_records(inbound, decisions) == (BuyerMessage("msg-1@mail.example", BUYER_KEY),)
    assert make_policy().store_records(inbound, decisions) == ()
    not_a_buyer = dataclasses.replace(inbound, headers=(("From", "x@shop.test"), ("Message-ID", "<m@x>")))
    assert thread.store_records(not_a_buyer, decisions) == ()
    for_buyers = [thread.decide(inbound, rcpt(BUYER))]
    assert thread.store_records(inbound, for_buyers) == ()  # not mail to the shop


def test_wanted_headers_follow_the_channels() -> None:
    wanted = make_policy(reply={"check": ReplyCheck.THREAD, "subject_prefixes": ("Re:",)}).wanted_headers()
    assert {"x-amzguard-channel", "subject", "in-reply-to", "references", "from", "message-id",
            "content-type", "content-transfer-encoding"} <= wanted  # fmt: skip
    bare = make_policy(review={"enabled": False}, reply={"enabled": False}, critical={"enabled": False})
    assert bare.wanted_headers() == frozenset({"x-amzguard-channel"})


# -- refusal texts and bounce addresses per reason -------------------------------------------------------


def test_each_reason_has_its_own_text_and_bounce_domain() -> None:
    policy = make_policy()
    message = facts([TAG], order_id=ORDER, opted_out=frozenset({BUYER_KEY}), reviewed_orders=frozenset({ORDER}))
    decisions = tuple(policy.decide(message, rcpt(raw)) for raw in (BUYER, "<owner@shop.test>"))
    plan = policy.plan(message, decisions, {})
    assert plan.changes[:2] == (
        DeleteRecipient(BUYER.strip("<>")),
        AddRecipient("q7x2k9m4p1z8w3v5=marketplace.amazon.de@opted-out.amzguard.invalid",
                     (f"ORCPT=rfc822;{BUYER_KEY}",)),  # fmt: skip
    )
    alone = policy.plan(message, decisions[:1], {})
    assert alone.reject is not None
    assert alone.reject.text == f"<{BUYER_KEY}>: {DEFAULT_REASON_TEXTS[Reason.OPTED_OUT]}"


def test_whole_message_refusal_groups_recipients_by_reason() -> None:
    policy = make_policy()
    message = facts([TAG], order_id=ORDER, opted_out=frozenset({BUYER_KEY}))
    decisions = tuple(policy.decide(message, rcpt(raw)) for raw in (BUYER, "<blacklisted-@amazon.fr>"))
    plan = policy.plan(message, decisions, {})
    assert plan.reject is not None
    assert plan.reject.text.startswith(f"<{BUYER_KEY}>: {DEFAULT_REASON_TEXTS[Reason.OPTED_OUT]}; "
                                       f"<blacklisted-@amazon.fr>: {DEFAULT_REPLY_TEXT}")  # fmt: skip
