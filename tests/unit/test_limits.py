"""The daily limit's pure part (policy/limits.py): settings, what counts, marketplaces, the UTC day."""

from __future__ import annotations

import dataclasses
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amzguard.address import parse_address
from amzguard.config import ConfigError, parse_config
from amzguard.policy import Mode, Policy, ProactiveSent, ReviewSent, SubmissionPath
from amzguard.policy.limits import MAX_LIMIT, NO_LIMITS, LimitError, LimitSettings, parse_limits, utc_day
from amzguard.transaction import Judgement, Transaction

TOKEN = "fixture-review-token-0123456789"
ORDER = "302-1234567-7654321"
DE = "q7x2m4k9z1bc3de@marketplace.amazon.de"
DE2 = "r8y3n5l0a2cd4ef@marketplace.amazon.de"
UK = "s9z4p6m1b3de5fg@marketplace.amazon.co.uk"
MARKED_FR = "blacklisted-40417@amazon.fr"


# -- settings -----------------------------------------------------------------------------------------


def test_an_integer_limits_each_marketplace_separately() -> None:
    settings = parse_limits(700)
    assert settings == LimitSettings((("*", 700),))
    assert settings.limit_for("de") == settings.limit_for("co.jp") == 700
    assert settings.bucket("de") == "*"


def test_a_mapping_limits_the_listed_ones_and_star_the_rest() -> None:
    settings = parse_limits({"de": 1100, "amazon.co.uk": 800, "*": 50})
    assert settings.per_day == (("*", 50), ("co.uk", 800), ("de", 1100))
    assert (settings.limit_for("de"), settings.limit_for("co.uk"), settings.limit_for("fr")) == (1100, 800, 50)
    assert (settings.bucket("de"), settings.bucket("fr")) == ("de", "*")
    without_star = parse_limits({"de": 2})
    assert without_star.limit_for("fr") is None and without_star.bucket("fr") is None


@pytest.mark.parametrize("value", [None, {}])
def test_unset_or_empty_is_off(value: object) -> None:
    assert parse_limits(value) == NO_LIMITS and not NO_LIMITS.enabled


@pytest.mark.parametrize(("value", "message"), [
    (0, "positive integer"), (-5, "positive integer"), (True, "positive integer"), (1.5, "positive integer"),
    ("100", "positive integer"), (MAX_LIMIT + 1, "positive integer"), ({"de": 0}, "positive integer"),
    ({"de": None}, "positive integer"), ({"xx.yy.zz": 5}, "marketplace names"), ({False: 5}, "quote it"),
    ({1: 5}, "quote it"), ({"de": 5, "amazon.de": 6}, "de twice"), ({"": 5}, "marketplace names"),
])  # fmt: skip
def test_bad_values_are_clear_errors(value: object, message: str) -> None:
    with pytest.raises(LimitError, match=message):
        parse_limits(value)


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^cfg: limits.proactive_per_day: expected .*got 'nowhere.example.'"):
        parse_config({"limits": {"proactive_per_day": {"nowhere.example.": 5}}}, source="cfg")
    with pytest.raises(ConfigError, match=r"^cfg: limits.proactive_per_day: expected a positive integer"):
        parse_config({"limits": {"proactive_per_day": {"de": -1}}}, source="cfg")
    with pytest.raises(ConfigError, match=r"^cfg: limits.proactive_per_day: expected a positive integer, or a mapping"):
        parse_config({"limits": {"proactive_per_day": [5]}}, source="cfg")
    with pytest.raises(ConfigError, match=r"^cfg: limits.per_week: unknown key"):
        parse_config({"limits": {"per_week": 5}}, source="cfg")
    assert parse_config({"limits": {"proactive_per_day": {"de": 3}}}).policy.limits.limit_for("de") == 3


@given(st.one_of(st.integers(), st.booleans(), st.floats(), st.text(), st.none(),
                 st.dictionaries(st.one_of(st.text(max_size=12), st.integers(), st.booleans()),
                                 st.one_of(st.integers(), st.text(max_size=3), st.none()), max_size=5)))  # fmt: skip
def test_any_value_is_settings_or_a_clear_error(value: object) -> None:
    try:
        settings = parse_limits(value)
    except LimitError as exc:
        assert str(exc).startswith("expected ")
        return
    for marketplace, limit in settings.per_day:
        assert settings.limit_for(marketplace) == limit and 0 < limit <= MAX_LIMIT


# -- the UTC day ----------------------------------------------------------------------------------------


def test_utc_day_boundaries() -> None:
    assert (utc_day(0), utc_day(86399.999), utc_day(86400)) == ("1970-01-01", "1970-01-01", "1970-01-02")
    assert utc_day(1_798_761_599) == "2026-12-31" and utc_day(1_798_761_600) == "2027-01-01"


@given(st.integers(min_value=0, max_value=4_102_444_800))
def test_utc_day_is_the_utc_calendar_day(t: int) -> None:
    assert utc_day(t) == time.strftime("%Y-%m-%d", time.gmtime(t))
    assert utc_day(t - t % 86400) == utc_day(t - t % 86400 + 86399) != utc_day(t - t % 86400 + 86400)


# -- what counts --------------------------------------------------------------------------------------------


def policy(limits: object = {"de": 2, "fr": 5}, mode: str = "enforce", **channels: object) -> Policy:
    data = {"mode": mode, "limits": {"proactive_per_day": limits},
            "channels": {"review": {"enabled": True, "token": TOKEN}, **channels}}
    return Policy.from_settings(parse_config(data).policy)


def judge(pol: Policy, to: list[str], subject: str, tagged: bool = True, extra: tuple[tuple[str, str], ...] = (),
          opted_out: frozenset[str] = frozenset()) -> Judgement:  # fmt: skip
    trx = Transaction(pol, SubmissionPath.SMTP, parse_address("<support@shop.test>"))
    for address in to:
        trx.rcpt(f"<{address}>")
    headers = [("From", "support@shop.test"), ("To", ", ".join(to)), ("Subject", subject), *extra]
    if tagged:
        headers.append(("X-Amzguard-Channel", f"review {TOKEN}"))
    for name, value in headers:
        trx.header(name, value.encode())
    return trx.judge(dataclasses.replace(trx.facts(), opted_out=opted_out))


def counts(judgement: Judgement) -> list[ProactiveSent]:
    return [r for r in judgement.records if isinstance(r, ProactiveSent)]


def test_a_review_request_counts_one_per_buyer_per_marketplace_with_its_limit() -> None:
    got = judge(policy(), [DE, DE2, UK, MARKED_FR, "owner@shop.test"], f"Order {ORDER}: your review")
    assert counts(got) == [ProactiveSent("de", 2, 2), ProactiveSent("fr", 1, 5)]  # co.uk: not limited
    assert [r for r in got.records if isinstance(r, ReviewSent)]  # in the same records as the review request


def test_the_same_buyer_twice_counts_once() -> None:
    got = judge(policy(), [DE, DE.upper().replace("MARKETPLACE.AMAZON.DE", "marketplace.amazon.de")], f"Order {ORDER}")
    assert counts(got) == [ProactiveSent("de", 1, 2)]


def test_a_critical_message_counts_and_a_reply_never() -> None:
    assert counts(judge(policy(), [DE], "[Important] your delivery address", tagged=False)) == [
        ProactiveSent("de", 1, 2)]
    reply = judge(policy(), [DE], "Re: your question", tagged=False,
                  extra=(("In-Reply-To", "<0100018c.77ab@marketplace.amazon.de>"),))  # fmt: skip
    assert reply.decisions[0].channel.value == "reply" and not reply.decisions[0].refused
    assert counts(reply) == []


def test_refused_opted_out_or_off_counts_nothing() -> None:
    assert counts(judge(policy(), [DE], "Your order shipped", tagged=False)) == []  # order mail: refused
    assert counts(judge(policy(), [DE], f"Order {ORDER}", opted_out=frozenset({DE}))) == []
    assert counts(judge(policy(limits=None), [DE], f"Order {ORDER}")) == []
    # refusal.mixed_recipients reject: one buyer refused refuses the whole message, nothing counts.
    data = {"limits": {"proactive_per_day": 5}, "refusal": {"mixed_recipients": "reject"},
            "channels": {"review": {"enabled": True, "token": TOKEN}}}  # fmt: skip
    pol = Policy.from_settings(parse_config(data).policy)
    assert counts(judge(pol, [DE, DE2], f"Order {ORDER}", opted_out=frozenset({DE2}))) == []


def test_monitor_mode_counts_what_would_be_delivered() -> None:
    pol = policy(mode="monitor")
    assert pol.settings.mode is Mode.MONITOR
    assert counts(judge(pol, [DE, DE2], f"Order {ORDER}", opted_out=frozenset({DE2}))) == [ProactiveSent("de", 1, 2)]


def test_the_limit_makes_the_policy_use_the_store() -> None:
    plain = {"channels": {"review": {"enabled": False}, "critical": {"enabled": False}}}
    assert not Policy.from_settings(parse_config(plain).policy).uses_store()
    assert Policy.from_settings(parse_config({**plain, "limits": {"proactive_per_day": 1}}).policy).uses_store()


MARKETS = ("de", "fr", "co.uk", "com", "co.jp")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from(MARKETS), st.booleans(), st.booleans()), max_size=8),
       st.dictionaries(st.sampled_from(MARKETS + ("*",)), st.integers(1, 50), max_size=3))  # fmt: skip
def test_counts_are_the_distinct_delivered_buyers_of_limited_marketplaces(
    buyers: list[tuple[int, str, bool, bool]], limits: dict[str, int]
) -> None:
    """Any mix of relay and marked buyers, opted out or not, repeated or not: one count per distinct
    buyer delivered, per marketplace that has a limit, each record with that marketplace's limit."""
    pol = policy(limits=limits or None)
    to, opted, expected = [], set(), {}  # type: ignore[var-annotated]
    for n, market, marked, opted_out in buyers:
        address = f"blacklisted-{n}@amazon.{market}" if marked else f"q{n}x7k2m9z1bc3de@marketplace.amazon.{market}"
        key = f"{n}@amazon.{market}" if marked else address
        to.append(address)
        if opted_out:
            opted.add(key)
    for address in to:
        marked = address.startswith("blacklisted-")
        key = address.removeprefix("blacklisted-")
        market = key.rpartition("amazon.")[2]
        if key not in opted and pol.settings.limits.limit_for(market) is not None:
            expected.setdefault(market, set()).add(key)
    if not to:
        return
    got = judge(pol, list(dict.fromkeys(to)), f"Order {ORDER}", opted_out=frozenset(opted))
    assert counts(got) == [ProactiveSent(m, len(keys), pol.settings.limits.limit_for(m))
                           for m, keys in sorted(expected.items())]  # fmt: skip
