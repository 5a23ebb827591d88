"""Amazon's messaging restriction in the pure policy (issue 12 item 4): which marketplace an address or a
notice names, and the veto it puts on review requests and critical messages, never on replies. Addresses
and notices are made up."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amzguard.policy import Channel, Outcome, Reason
from amzguard.policy.restriction import (
    ALL,
    NOTICE_TEXT,
    marketplace_of,
    notice_marketplaces,
    restriction_notice,
    valid_marketplace,
)
from tests.unit.test_channels import AMAZON_REF, BUYER, MARKED, TAG, facts, make_policy, verdict

UK_BUYER = "<k3m9x2q7p1z8w4v5@marketplace.amazon.co.uk>"


@pytest.mark.parametrize(("domain", "marketplace"), [
    ("marketplace.amazon.de", "de"), ("MARKETPLACE.Amazon.CO.UK", "co.uk"), ("m.marketplace.amazon.co.jp", "co.jp"),
    ("amazon.com", "com"), ("marketplace.amazon.com.be", "com.be"), ("amazon.de.", "de"),
    ("shop.test", None), ("notamazon.de", None), ("amazon.example.org", None),
])  # fmt: skip
def test_marketplace_of(domain: str, marketplace: str | None) -> None:
    assert marketplace_of(domain) == marketplace


def test_valid_marketplace() -> None:
    assert [valid_marketplace(t) for t in ("de", "CO.UK", "amazon.fr", "*", "all", "d e", "", "x.y.z")] == [
        "de", "co.uk", "fr", ALL, ALL, None, None, None]


def test_a_notice_names_its_marketplace_by_sender_else_by_text_else_all() -> None:
    assert notice_marketplaces(["amazon.de"], "see amazon.co.uk") == ("de",)
    assert notice_marketplaces(["relay.example"], "Visit sellercentral.amazon.co.uk for more") == ("co.uk",)
    assert notice_marketplaces(["relay.example"], "amazon.de and amazon.fr") == (ALL,)  # several: all
    assert notice_marketplaces([], "nothing") == (ALL,)


def test_restriction_notice_needs_the_phrase_in_any_case_and_spacing() -> None:
    text = "This message was not delivered because your account WAS restricted\n from  sending proactive messages."
    assert restriction_notice(text, [NOTICE_TEXT], ["amazon.it"]) == ("it",)
    assert restriction_notice("The buyer opted out from receiving this message", [NOTICE_TEXT], []) is None


def test_a_restriction_refuses_review_requests_and_critical_messages_but_not_replies() -> None:
    policy = make_policy()
    review = facts([TAG], restricted=frozenset({"de"}))
    assert verdict(policy, review) == (Outcome.REFUSE, Reason.MESSAGING_RESTRICTED, Channel.REVIEW)
    assert verdict(policy, review, UK_BUYER) == (Outcome.DELIVER, Reason.CHANNEL, Channel.REVIEW)  # other marketplace
    critical = facts([("Subject", "[Important] your delivery")], restricted=frozenset({ALL}))
    assert verdict(policy, critical, UK_BUYER) == (Outcome.REFUSE, Reason.MESSAGING_RESTRICTED, Channel.CRITICAL)
    reply = facts([AMAZON_REF], restricted=frozenset({ALL}))
    assert verdict(policy, reply) == (Outcome.DELIVER, Reason.CHANNEL, Channel.REPLY)
    # A marked address judged by the marketplace of its unmarked form's domain (amazon.fr): restricted by fr.
    assert verdict(policy, facts([TAG], restricted=frozenset({"fr"})), MARKED)[1] is Reason.MESSAGING_RESTRICTED
    assert verdict(policy, facts([TAG], restricted=frozenset()), BUYER)[1] is Reason.CHANNEL


def test_restriction_is_asked_only_for_proactive_messages_to_buyers() -> None:
    from tests.unit.test_channels import rcpt

    policy = make_policy()
    assert policy.store_questions(facts([TAG]), [rcpt(BUYER)]).restrictions
    assert policy.store_questions(facts([("Subject", "[Important] x")]), [rcpt(BUYER)]).restrictions
    assert not policy.store_questions(facts([AMAZON_REF]), [rcpt(BUYER)]).restrictions
    assert not policy.store_questions(facts([TAG]), [rcpt("<owner@shop.test>")])


@given(st.sets(st.sampled_from(["de", "fr", "co.uk", "com", ALL])))
def test_restricted_iff_its_marketplace_or_all_is(restricted: set[str]) -> None:
    got = verdict(make_policy(), facts([TAG], restricted=frozenset(restricted)))[1]
    assert (got is Reason.MESSAGING_RESTRICTED) == bool(restricted & {"de", ALL})


def test_the_gauges_are_read_from_the_store_per_scrape(tmp_path) -> None:
    import time

    from prometheus_client.parser import text_string_to_metric_families

    from amzguard.metrics import Metrics
    from amzguard.policy.restriction import Restriction
    from amzguard.store import SqliteStore, StoreError

    store = SqliteStore(tmp_path / "s.sqlite")
    metrics = Metrics()
    current: list[object] = [store]
    metrics.watch_register(lambda: current[0])  # type: ignore[arg-type, return-value]

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(metrics.exposition().decode()) for s in f.samples
                if s.name.startswith("amzguard_messaging_restriction")}  # fmt: skip

    assert scrape() == {("amzguard_messaging_restrictions", ()): 0}
    store.restrict([Restriction("de", int(time.time()) + 3600), Restriction("fr", int(time.time()) - 1)])
    got = scrape()  # another process (optout learn, another host) wrote it: seen at the next scrape
    assert got[("amzguard_messaging_restrictions", ())] == 1
    assert 3500 < got[("amzguard_messaging_restriction_seconds_remaining", (("marketplace", "de"),))] <= 3600
    assert len(got) == 2  # the ended fr restriction is not exported

    class Broken:
        def restrictions(self) -> list[Restriction]:
            raise StoreError("down")

        def counts_by_source(self) -> dict[str, int]:
            raise StoreError("down")

    current[0] = Broken()
    value = scrape()[("amzguard_messaging_restrictions", ())]
    assert value != value  # NaN: unknown, not "no restriction"
