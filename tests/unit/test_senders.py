"""Approved senders in the pure policy (issue 12 item 3): what ``buyers.approved_senders`` approves, per
marketplace, for the envelope sender and the From: field, and that a refusal at RCPT is never one the end of
message would not also give. Addresses are made up."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amzguard.address import parse_address
from amzguard.config import ConfigError, parse_config
from amzguard.policy import Channel, Outcome, Reason, SubmissionPath
from amzguard.policy.senders import (
    NO_APPROVED_SENDERS,
    ApprovedSenders,
    envelope_approved,
    _SIMPLE_FROM,
    from_mailboxes,
    listed,
    parse_approved,
    parsed_from_mailboxes,
    sender_approved,
)
from amzguard.transaction import Transaction
from tests.unit.test_channels import AMAZON_REF, BUYER, MARKED, TAG, facts, make_policy, rcpt, verdict

SHOP = "shop@shop.test"
FR_BUYER = "<k3m9x2q7p1z8w4v5@marketplace.amazon.fr>"
MARKED_DE = "<blacklisted-q7x2k9m4p1z8w3v5@marketplace.amazon.de>"
MARKED_ELSEWHERE = "<blacklisted-40417@shop-customers.test>"
"""A marked address at no Amazon domain: once unmarked it is an ordinary mailbox Amazon never sees."""


def approved(value: object) -> ApprovedSenders:
    return parse_config({"buyers": {"approved_senders": value}}).policy.approved_senders


def policy_with(value: object):
    return make_policy(approved_senders=approved(value))


def from_(value: str) -> tuple[str, str]:
    return ("From", value)


# -- the config value --------------------------------------------------------------------------------------


def test_a_list_approves_for_every_marketplace_a_mapping_per_marketplace() -> None:
    assert approved(["Shop@Shop.TEST", "@mailer.test", "shop@shop.test"]) == ApprovedSenders(
        everywhere=("shop@shop.test", "@mailer.test"))
    mapping = approved({"*": [SHOP], "de": ["@shop.de"], "amazon.fr": ["fr@shop.test"], "DE": ["x@shop.de"]})
    assert mapping.everywhere == (SHOP,)
    assert dict(mapping.by_marketplace) == {"de": ("@shop.de", "x@shop.de"), "fr": ("fr@shop.test",)}
    assert mapping.entries_for("de") == (SHOP, "@shop.de", "x@shop.de") and mapping.entries_for("it") == (SHOP,)
    assert approved([]) == NO_APPROVED_SENDERS and not approved([]).active()
    assert parse_approved({}) == NO_APPROVED_SENDERS


@pytest.mark.parametrize("value", [["shop"], ["a@b@c"], "shop@shop.test", {"germany": [SHOP]}, {"de": SHOP},
                                   {"de": ["nope"]}, [1], {"*": None}])  # fmt: skip
def test_a_bad_value_is_a_config_error_naming_the_key(value: object) -> None:
    with pytest.raises(ConfigError, match="buyers.approved_senders: expected a list of 'user@domain'"):
        approved(value)


def test_the_default_is_off() -> None:
    assert not parse_config({}).policy.approved_senders.active()


# -- addresses -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("address", "entries", "expected"), [
    ("<shop@shop.test>", (SHOP,), True),
    ("<SHOP@Shop.Test>", (SHOP,), True),            # letter case of neither part matters
    ("<other@shop.test>", (SHOP,), False),
    ("<other@shop.test>", ("@shop.test",), True),   # @domain: any user of that domain
    ("<shop@mail.shop.test>", ("@shop.test",), False),  # but not its subdomains
    ("<shop@shop.test.>", (SHOP,), True),           # the root dot is the same domain
    ("<>", ("@shop.test",), False),                 # the null sender is never approved
    ("<shop>", ("@shop.test",), False),
])  # fmt: skip
def test_listed(address: str, entries: tuple[str, ...], expected: bool) -> None:
    assert listed(parse_address(address), entries) is expected


def test_from_needs_exactly_one_field_with_readable_mailboxes() -> None:
    assert [a.text() for a in from_mailboxes(['"Shop" <shop@shop.test>'])] == [SHOP]  # type: ignore[union-attr]
    assert [a.text() for a in from_mailboxes(["a@shop.test, b@shop.test"])] == ["a@shop.test", "b@shop.test"]  # type: ignore[union-attr]
    assert from_mailboxes([]) is None
    assert from_mailboxes([SHOP, SHOP]) is None  # two From: fields (RFC 5322 allows one)
    assert from_mailboxes(["Shop Team"]) is None
    assert from_mailboxes(["undisclosed:;"]) is None


# -- the policy ---------------------------------------------------------------------------------------------


def test_an_approved_sender_passes_and_any_other_is_refused_whatever_channel() -> None:
    policy = policy_with(["@shop.test"])
    assert verdict(policy, facts([TAG, from_(f"Shop <{SHOP}>")])) == (Outcome.DELIVER, Reason.CHANNEL, Channel.REVIEW)
    refused = Outcome.REFUSE, Reason.SENDER_NOT_APPROVED
    assert verdict(policy, facts([TAG, from_("shop@other.test")]))[:2] == refused  # From: not approved
    assert verdict(policy, facts([TAG, from_(SHOP)], sender="<bounce@mailer.test>")) == (*refused, Channel.REVIEW)
    assert verdict(policy, facts([TAG])) == (*refused, Channel.REVIEW)  # no From: at all
    assert verdict(policy, facts([AMAZON_REF, from_("x@other.test")])) == (*refused, Channel.REPLY)
    critical = facts([("Subject", "[Important] your delivery address"), from_("x@other.test")])
    assert verdict(policy, critical) == (*refused, Channel.CRITICAL)


def test_it_holds_only_for_relay_recipients_a_channel_grants() -> None:
    policy = policy_with(["@approved.test"])
    unapproved = facts([TAG, from_(SHOP)])
    assert verdict(policy, unapproved, "<owner@shop.test>") == (Outcome.DELIVER, Reason.NOT_BUYER, Channel.NONE)
    # A marked address at no Amazon domain is delivered unmarked to a mailbox Amazon never sees.
    assert verdict(policy, unapproved, MARKED_ELSEWHERE) == (Outcome.DELIVER_UNMARKED, Reason.CHANNEL, Channel.REVIEW)
    assert verdict(policy, unapproved, MARKED_DE)[1] is Reason.SENDER_NOT_APPROVED  # marked at a relay domain
    # Buyer mail no channel grants stays buyer mail: the sender does not make it legitimate.
    assert verdict(policy, facts([from_(SHOP)])) == (Outcome.REFUSE, Reason.BUYER_MAIL, Channel.NONE)


def test_per_marketplace_and_a_marketplace_without_entries_is_not_checked() -> None:
    policy = policy_with({"de": ["@shop.de"]})
    from_de = facts([TAG, from_("review@shop.de")], sender="<review@shop.de>")
    from_shop = facts([TAG, from_(SHOP)])
    assert verdict(policy, from_de)[1] is Reason.CHANNEL
    assert verdict(policy, from_shop)[1] is Reason.SENDER_NOT_APPROVED  # BUYER is a de buyer
    assert verdict(policy, from_shop, FR_BUYER)[1] is Reason.CHANNEL  # nothing approved for fr: not checked
    everywhere = policy_with({"*": [SHOP], "de": ["@shop.de"]})
    assert verdict(everywhere, from_shop)[1] is Reason.CHANNEL and verdict(everywhere, from_de)[1] is Reason.CHANNEL
    assert verdict(everywhere, from_de, FR_BUYER)[1] is Reason.SENDER_NOT_APPROVED  # fr: only the * entries


def test_at_rcpt_only_on_the_smtp_path_and_only_after_some_channel_is_open() -> None:
    policy = policy_with(["@shop.test"])
    sender = parse_address("<bounce@mailer.test>")
    at_rcpt = policy.decide_at_rcpt(sender, rcpt(BUYER), SubmissionPath.SMTP)
    assert at_rcpt is not None and (at_rcpt.outcome, at_rcpt.reason, at_rcpt.channel) == (
        Outcome.REFUSE, Reason.SENDER_NOT_APPROVED, Channel.NONE)
    assert policy.decide_at_rcpt(sender, rcpt(BUYER), SubmissionPath.LOCAL) is None  # judged at end instead
    assert policy.decide_at_rcpt(parse_address(f"<{SHOP}>"), rcpt(BUYER), SubmissionPath.SMTP) is None
    closed = make_policy(reply={"allowed_senders": (SHOP,)}, critical={"allowed_senders": (SHOP,)},
                         review={"allowed_senders": (SHOP,)}, approved_senders=approved(["@shop.test"]))
    refused = closed.decide_at_rcpt(sender, rcpt(BUYER), SubmissionPath.SMTP)
    assert refused is not None and refused.reason is Reason.BUYER_MAIL  # no channel open: buyer mail


def test_the_transaction_reads_from_only_when_the_check_is_on() -> None:
    assert "from" in policy_with(["@shop.test"]).wanted_headers()
    assert "from" not in make_policy().wanted_headers()
    trx = Transaction(policy_with(["@shop.test"]), SubmissionPath.LOCAL, parse_address(f"<{SHOP}>"))
    assert trx.rcpt(BUYER) is None
    for name, value in (TAG, ("From", "Shop <shop@shop.test>"), ("Subject", "Your order 302-1234567-7654321")):
        trx.header(name, value)
    [decision] = trx.judge().decisions
    assert (decision.outcome, decision.reason) == (Outcome.DELIVER, Reason.CHANNEL)


# -- properties ---------------------------------------------------------------------------------------------

LOCALS = st.sampled_from(["shop", "Shop", "review", "bounce+x7", ""])
DOMAINS = st.sampled_from(["shop.test", "SHOP.test", "mailer.test", "mail.shop.test", "shop.de", ""])
ADDRESSES = st.builds(lambda local, domain: f"{local}@{domain}" if domain else local, LOCALS, DOMAINS)
ENTRIES = st.lists(st.one_of(ADDRESSES.filter(lambda a: "@" in a and not a.startswith("@") and not a.endswith("@")),
                             DOMAINS.filter(bool).map(lambda d: "@" + d)), max_size=3)  # fmt: skip
BUYERS = st.sampled_from([BUYER, FR_BUYER, MARKED, MARKED_DE, MARKED_ELSEWHERE, "<owner@shop.test>"])
MARKETPLACE_KEYS = st.sampled_from(["*", "de", "fr", "co.uk"])


@given(
    st.one_of(ENTRIES, st.dictionaries(MARKETPLACE_KEYS, ENTRIES, max_size=3)),
    ADDRESSES,
    st.lists(ADDRESSES, max_size=2),
    BUYERS,
)
def test_a_refusal_at_rcpt_is_one_the_end_of_message_gives_too(value, sender: str, froms: list[str], buyer: str) -> None:
    """Refusing at RCPT must be certain: whatever From: the message turns out to have, an envelope sender
    refused there is refused at the end of message too (and approval at the end needs it approved)."""
    settings = approved(value)
    envelope = parse_address(f"<{sender}>")
    recipient = rcpt(buyer)
    whole = sender_approved(settings, envelope, [", ".join(froms)] if froms else [], recipient)
    if not envelope_approved(settings, envelope, recipient):
        assert not whole
    if whole and settings.checks(recipient):
        assert all(listed(envelope, entries) for entries in settings.checks(recipient))


FROM_ALPHABET = st.sampled_from(list('ab Z.-_+=?"\\,;:<>@()[]\t') + ["ü", "=?utf-8?q?M=C3=BCller?="])
FROM_VALUES = st.one_of(
    st.lists(FROM_ALPHABET, max_size=30).map("".join),
    st.builds(lambda name, local, domain, quoted: f'{chr(34) * quoted}{name}{chr(34) * quoted} <{local}@{domain}>',
              st.lists(FROM_ALPHABET, max_size=12).map("".join), LOCALS.filter(bool), DOMAINS.filter(bool), st.booleans()),
    st.builds(lambda local, domain: f"{local}@{domain}", LOCALS.filter(bool), DOMAINS.filter(bool)),
)  # fmt: skip


@given(FROM_VALUES)
def test_the_quick_from_reading_agrees_with_email_utils(value: str) -> None:
    """The common From: shapes are read without email.utils (policy/senders.py ``_SIMPLE_FROM``): where that
    reading applies, it gives what email.utils' parser gives."""
    if _SIMPLE_FROM.fullmatch(value):
        assert from_mailboxes([value]) == parsed_from_mailboxes(value), value


def test_a_channel_sender_no_list_approves_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    """Contrary config: a channel's allowed sender or a recognise entry's sender that approved_senders never
    approves could never write to a relay buyer; parsing says so (check-config and the milter's start)."""
    from amzguard.policy.senders import unapproved

    settings = approved({"de": ["@shop.test"], "*": ["x@other.test"]})
    assert unapproved(settings, ("a@SHOP.test", "@shop.test", "x@other.test", "b@mailer.test", "@other.test")) == (
        "b@mailer.test", "@other.test")  # @other.test: only one of its users is approved
    assert unapproved(NO_APPROVED_SENDERS, ("b@mailer.test",)) == ()  # the check is off: nothing contrary
    with caplog.at_level("WARNING", logger="amzguard.config"):
        parse_config({"buyers": {"approved_senders": ["@shop.test"]},
                      "channels": {"critical": {"allowed_senders": ["ops@mailer.test"]},
                                   "review": {"enabled": True, "recognise": [{"sender": "news@other.test",
                                                                               "subject": "Review *"}]}}})  # fmt: skip
    assert [r.getMessage() for r in caplog.records] == [
        "<config>: channels.critical.allowed_senders: ops@mailer.test is in no list of buyers.approved_senders: its "
        "mail to buyers' relay addresses is refused (sender-not-approved)",
        "<config>: channels.review.recognise[0].sender: news@other.test is in no list of buyers.approved_senders: its "
        "mail to buyers' relay addresses is refused (sender-not-approved)",
    ]
