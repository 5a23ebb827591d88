"""Property tests: no input breaks classification or the policy, and no spelling lets a buyer through."""

from __future__ import annotations

import string

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from amzguard.address import BuyerPatterns, classify_recipient, format_address, parse_address
from amzguard.config import DEFAULT_MARKED_PREFIXES, DEFAULT_RELAY_DOMAINS, parse_config
from amzguard.policy import (
    MessageFacts,
    Outcome,
    Policy,
    SubmissionPath,
)

PATTERNS = BuyerPatterns(marked_prefixes=DEFAULT_MARKED_PREFIXES, relay_domains=DEFAULT_RELAY_DOMAINS)
TOKEN = b"property-token-0123456789"
POLICY = Policy.from_settings(
    parse_config(
        {"channels": {"review": {"enabled": True, "token": TOKEN.decode()}, "reply": {"enabled": False},
                      "critical": {"enabled": False}}}
    ).policy
)  # fmt: skip
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any text, including lone surrogates (undecodable octets), NUL and control characters.
any_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=200)
long_text = st.text(alphabet=st.sampled_from('a@."<>()\\ \x00\udcff%!:,-'), min_size=5000, max_size=10000)
any_input = st.one_of(any_text, st.binary(max_size=200), st.none(), st.integers())
# Long inputs are costly to generate; a few dozen show the parser stays linear and total.
LONG = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])

ATEXT = string.ascii_letters + string.digits + "!#$&'*+-/=?^_`{|}~"
plain_local = st.text(alphabet=ATEXT, min_size=1, max_size=30)
relay_domain = st.sampled_from(DEFAULT_RELAY_DOMAINS)
sub_label = st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=8)


@FAST
@given(any_input)
@example("\udcff" * 3 + "@marketplace.amazon.de")
@example("<" * 5000)
def test_classification_never_raises(raw: object) -> None:
    recipient = classify_recipient(raw, PATTERNS)
    assert isinstance(recipient.is_buyer, bool)


@FAST
@given(any_input, st.lists(st.tuples(any_text, any_text), max_size=5), st.sampled_from(list(SubmissionPath)))
def test_policy_never_raises(raw: object, headers: list[tuple[str, str]], path: SubmissionPath) -> None:
    recipient = classify_recipient(raw, PATTERNS)
    facts = MessageFacts(sender=parse_address(raw), path=path, headers=tuple(headers))
    decision = POLICY.decide(facts, recipient)
    POLICY.decide_at_rcpt(facts.sender, recipient, path)
    plan = POLICY.plan(facts, (decision,), {"x-amzguard-channel": 1})
    if plan.reject is not None:
        assert plan.reject.text.isascii() and "%" not in plan.reject.text and "\n" not in plan.reject.text


@LONG
@given(long_text)
def test_long_input_is_classified_and_normalised(raw: str) -> None:
    recipient = classify_recipient(raw, PATTERNS)
    once = recipient.address
    assert parse_address(once.text()).domain == once.domain


@FAST
@given(any_input)
def test_normalising_twice_equals_once(raw: object) -> None:
    once = parse_address(raw)
    twice = parse_address(once.text())
    assert (twice.local, twice.domain) == (once.local, once.domain)


def _casings(text: str, flips: list[bool]) -> str:
    return "".join(c.upper() if flip else c.lower() for c, flip in zip(text, flips + [False] * len(text)))


@st.composite
def disguised(draw: st.DrawFn, local: str, domain: str) -> str:
    """One spelling of local@domain that names the same mailbox."""
    domain = _casings(domain, draw(st.lists(st.booleans(), max_size=len(domain))))
    if draw(st.booleans()):
        domain += "." * draw(st.integers(1, 3))
    if draw(st.booleans()):
        local += "+" + draw(plain_local)
    if draw(st.booleans()):
        local = local.replace("\\", "\\\\").replace('"', '\\"')
        local = f'"{local}"'
    text = f"{local}@{domain}"
    if draw(st.booleans()):
        text = f"{local}(buyer)@{domain} (comment)"
    if draw(st.booleans()):
        text = f"<@relay.example,@mx.example:{text}>"
    elif draw(st.booleans()):
        text = f"<{text}>"
    space = draw(st.sampled_from(["", " ", "\t", "  "]))
    return f"{space}{text}{space}"


@FAST
@given(st.data(), plain_local, relay_domain, st.lists(sub_label, max_size=2))
def test_relay_addresses_cannot_be_disguised(data: st.DataObject, local: str, domain: str, subs: list[str]) -> None:
    full_domain = ".".join([*subs, domain])
    raw = data.draw(disguised(local, full_domain))
    recipient = classify_recipient(raw, PATTERNS)
    assert recipient.relay, raw
    assert POLICY.decide(MessageFacts(parse_address("<s@shop.test>"), SubmissionPath.SMTP), recipient).outcome is (
        Outcome.REFUSE
    )


@FAST
@given(st.data(), plain_local, st.sampled_from(["amazon.fr", "amazon.de", "example.org"]),
       st.lists(st.booleans(), min_size=12, max_size=12))  # fmt: skip
def test_marked_addresses_cannot_be_disguised(
    data: st.DataObject, rest: str, domain: str, flips: list[bool]
) -> None:
    local = _casings("blacklisted-", flips) + rest
    raw = data.draw(disguised(local, domain))
    recipient = classify_recipient(raw, PATTERNS)
    assert recipient.marked, raw
    facts = MessageFacts(parse_address("<s@shop.test>"), SubmissionPath.LOCAL)
    assert POLICY.decide(facts, recipient).outcome is Outcome.REFUSE


@FAST
@given(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FFF), min_size=1, max_size=40),
       st.sampled_from(["amazon.fr", "marketplace.amazon.de", "shop.example"]))  # fmt: skip
def test_removing_the_marker_keeps_the_rest_intact(rest: str, domain: str) -> None:
    raw = format_address("blacklisted-" + rest, domain)
    recipient = classify_recipient(f"<{raw}>", PATTERNS)
    assert recipient.marked
    assert recipient.unmarked == format_address(rest, domain)
    assert parse_address(recipient.unmarked).local == rest


@FAST
@given(any_text)
def test_review_tag_without_the_token_never_grants(value: str) -> None:
    assume(TOKEN.decode() not in value)
    facts = MessageFacts(parse_address("<s@shop.test>"), SubmissionPath.SMTP, (("X-Amzguard-Channel", value),))
    recipient = classify_recipient("<q7x2@marketplace.amazon.de>", PATTERNS)
    assert POLICY.decide(facts, recipient).outcome is Outcome.REFUSE


FAST_PATH_POLICY = Policy.from_settings(
    parse_config(
        {"channels": {"review": {"enabled": True, "token": TOKEN.decode(), "allowed_senders": ["review@shop.test"]},
                      "reply": {"allowed_senders": ["review@shop.test"]},
                      "critical": {"allowed_senders": ["review@shop.test"]}}}
    ).policy
)  # fmt: skip
recipient_text = st.one_of(
    any_text,
    st.builds(lambda local, domain: f"{local}@{domain}", plain_local, relay_domain),
    st.builds(lambda local: f"blacklisted-{local}@amazon.fr", plain_local),
    st.builds(lambda local: f"{local}@example.com", plain_local),
)
sender_text = st.one_of(any_text, st.sampled_from(["<>", "review@shop.test", "shop@shop.test", "REVIEW@Shop.Test"]))


# Most drawn messages have a buyer or a review sender and are filtered out by assume(): more examples, no
# filter health check (it failed one run in three), and derandomised so every run checks the same ones.
@settings(max_examples=800, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])  # fmt: skip
@given(sender_text, st.lists(recipient_text, min_size=1, max_size=4),
       st.lists(st.tuples(st.sampled_from(["Subject", "X-Amzguard-Channel", "In-Reply-To", "From"]), any_text),
                max_size=4),
       st.sampled_from(list(SubmissionPath)))  # fmt: skip
def test_the_fast_path_never_takes_a_message_the_end_of_message_would_change(
    sender: str, rcpts: list[str], headers: list[tuple[str, str]], path: SubmissionPath
) -> None:
    """A message accepted at DATA is one that the end of message, whatever its headers, would deliver to
    every recipient unchanged: no refusal, no recipient swapped; only its tag (if any) would be deleted."""
    recipients = [classify_recipient(raw, PATTERNS) for raw in rcpts]
    facts = MessageFacts(sender=parse_address(sender), path=path, headers=tuple(headers))
    assume(FAST_PATH_POLICY.accepts_at_data(facts.sender, recipients))
    decisions = tuple(FAST_PATH_POLICY.decide(facts, recipient) for recipient in recipients)
    assert all(decision.outcome is Outcome.DELIVER for decision in decisions)
    plan = FAST_PATH_POLICY.plan(facts, decisions, {"x-amzguard-channel": 1})
    assert plan.reject is None
    assert all(type(change).__name__ == "DeleteHeader" for change in plan.changes)
    assert not facts.sender.is_empty and not FAST_PATH_POLICY.store_questions(facts, recipients)
