"""``possible_decisions()`` (the label sets the metrics pre-create) holds every decision the policy takes,
the content rules' refusals after it included (the transaction), and each of its combinations does occur."""

from __future__ import annotations

import itertools
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amzguard.address import classify_recipient, parse_address
from amzguard.config import parse_config
from amzguard.policy import MessageFacts, Policy, SubmissionPath, possible_decisions
from amzguard.transaction import Transaction

TOKEN = "decision-space-token-01234"
ORDER = "302-1234567-7654321"
RECIPIENTS = ["<owner@shop.test>", "<q7x2k9m4p1z8w3v5@marketplace.amazon.de>", "<blacklisted-40417@amazon.fr>",
              "<blacklisted-@amazon.fr>", "<Blacklisted-Q7@Marketplace.Amazon.DE>",
              # a routing form without {rcpt_addr}, and a marked buyer whose queued spelling is unknown
              "<x%marketplace.amazon.de@shop.test>", "<(c)blacklisted-40417@amazon.fr>"]  # fmt: skip
HEADERS = [
    ("X-Amzguard-Channel", f"review {TOKEN}"),
    ("X-Amzguard-Channel", "review wrong-token-0123456789"),
    ("Subject", f"[Important] your order {ORDER}"),
    ("Subject", f"Re: order {ORDER}"),
    ("Subject", "Your order shipped"),
    ("In-Reply-To", "<0102018c3f.5e1a@marketplace.amazon.de>"),
    ("References", "<thread-1@shop.test>"),
    # For the content rules: an emoji refuses whatever channel grants it (content), a critical message
    # without an order id is refused as no-order-id when missing_order_id is refuse.
    ("Subject", f"[Important] Re: order {ORDER} \N{PARTY POPPER}"),
    ("Subject", "[Important] your delivery address"),
]
KEYS = ["q7x2k9m4p1z8w3v5@marketplace.amazon.de", "40417@amazon.fr", "q7@marketplace.amazon.de"]


def policy(missing_order_id: str, check: str) -> Policy:
    channels = {"review": {"enabled": True, "token": TOKEN, "missing_order_id": missing_order_id},
                "reply": {"check": check}}  # fmt: skip
    return Policy.from_settings(parse_config({"channels": channels}).policy)


POLICIES = [policy(m, c) for m in ("allow", "refuse") for c in ("reference", "thread")]
# Review requests recognised without the tag (no secret: the tag is off): the same decisions, no new ones.
POLICIES.append(Policy.from_settings(parse_config({"channels": {"review": {
    "enabled": True, "recognise": [{"sender": "shop@shop.test", "subject": "*order*"}]}}}).policy))  # fmt: skip
# Approved senders that do not include the sender: refused at RCPT without a channel, at end of message with
# the channel that would have granted it.
POLICIES.append(Policy.from_settings(parse_config({"buyers": {"approved_senders": ["@elsewhere.test"]},
                                                   "channels": {"review": {"enabled": True, "token": TOKEN}}}).policy))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(POLICIES),
    st.sampled_from(RECIPIENTS),
    st.lists(st.sampled_from(HEADERS), max_size=4),
    st.sampled_from(list(SubmissionPath)),
    st.frozensets(st.sampled_from(KEYS)),
    st.booleans(),
    st.booleans(),
)
def test_every_decision_is_in_the_space(policy: Policy, raw: str, headers, path, keys, reviewed: bool,
                                        with_order: bool) -> None:  # fmt: skip
    space = set(possible_decisions())
    for combo in decisions(policy, raw, headers, path, keys, reviewed, with_order):
        assert combo in space, combo


def decisions(policy: Policy, raw: str, headers, path, keys, reviewed: bool, with_order: bool,
              restricted: bool = False):
    # As the adapter classifies: on the SMTP path the envrcpt text is what smtpd queued.
    recipient = classify_recipient(raw, policy.settings.buyers, smtp=path is SubmissionPath.SMTP)
    facts = MessageFacts(sender=parse_address("<shop@shop.test>"), path=path, headers=tuple(headers))
    order_id = policy.read_order_id(facts).order_id if with_order else None
    facts = MessageFacts(facts.sender, facts.path, facts.headers, order_id, opted_out=keys,
                         reviewed_orders=frozenset({ORDER}) if reviewed else frozenset(), thread_senders=keys,
                         restricted=frozenset({"*"}) if restricted else frozenset())  # fmt: skip
    for decision in (policy.decide(facts, recipient), policy.decide_at_rcpt(facts.sender, recipient, path)):
        if decision is not None:
            yield decision.outcome, decision.reason, decision.channel
    # The same message through the transaction, which adds the content rules' refusals.
    trx = Transaction(policy, path, facts.sender)
    early = trx.rcpt(raw)
    if early is not None:
        yield early.outcome, early.reason, early.channel
    for name, value in headers:
        trx.header(name, value)
    read = trx.facts()
    answered = replace(facts, headers=read.headers, order_id=read.order_id if with_order else None)
    for decision in trx.judge(answered).decisions:
        yield decision.outcome, decision.reason, decision.channel


def test_every_combination_of_the_space_occurs() -> None:
    # The space is no wider than the policy: each pre-created series can be counted.
    header_sets = [c for n in range(3) for c in itertools.combinations(HEADERS, n)]
    seen = {
        combo
        for policy, raw, headers, keys, reviewed, with_order, restricted in itertools.product(
            POLICIES, RECIPIENTS, header_sets, [frozenset(), frozenset(KEYS)], [False, True], [False, True],
            [False, True])
        for combo in decisions(policy, raw, headers, SubmissionPath.SMTP, keys, reviewed, with_order, restricted)
    }  # fmt: skip
    assert seen == set(possible_decisions())
