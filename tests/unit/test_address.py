"""Address parsing and buyer classification over a table of spellings (all addresses made up)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amzguard.address import (
    BuyerPatterns,
    classify_recipient,
    domain_matches,
    format_address,
    normalise_domain,
    parse_address,
    strip_marker,
)
from amzguard.config import DEFAULT_MARKED_PREFIXES, DEFAULT_RELAY_DOMAINS

PATTERNS = BuyerPatterns(marked_prefixes=DEFAULT_MARKED_PREFIXES, relay_domains=DEFAULT_RELAY_DOMAINS)

RELAY, MARKED, BOTH, OTHER = "relay", "marked", "both", "other"

# (raw envelope recipient, expected class, expected address once the marker is removed)
TABLE: list[tuple[object, str, str | None]] = [
    # every marketplace, plain
    *[(f"<q7x2k9m4p1z8w3v5@{d}>", RELAY, None) for d in DEFAULT_RELAY_DOMAINS],
    # relay spellings
    ("q7x2k9m4p1z8w3v5@marketplace.amazon.de", RELAY, None),
    ("<Q7X2K9M4P1Z8W3V5@MARKETPLACE.AMAZON.DE>", RELAY, None),
    ("<q7x2k9m4p1z8w3v5@Marketplace.Amazon.De.>", RELAY, None),
    ("<q7x2k9m4p1z8w3v5@marketplace.amazon.de..>", RELAY, None),
    ("  <q7x2k9m4p1z8w3v5@marketplace.amazon.de>  ", RELAY, None),
    ("<q7x2k9m4p1z8w3v5+C12345@marketplace.amazon.de>", RELAY, None),
    ('<"q7x2k9m4p1z8w3v5"@marketplace.amazon.de>', RELAY, None),
    ('<"q7x2 k9m4"@marketplace.amazon.com>', RELAY, None),
    ("<@mx1.example.net,@mx2.example.net:q7x2k9m4p1z8w3v5@marketplace.amazon.fr>", RELAY, None),
    ("<q7x2k9m4p1z8w3v5@m.marketplace.amazon.co.jp>", RELAY, None),
    ("<q7x2k9m4p1z8w3v5@eu.marketplace.amazon.co.uk>", RELAY, None),
    ("<q7x2k9m4p1z8w3v5(buyer)@marketplace.amazon.it>", RELAY, None),
    ("<q7x2k9m4p1z8w3v5@marketplace.amazon.es (comment)>", RELAY, None),
    ("<q7x2k9m4p1z8w3v5@marketplace\u3002amazon\u3002de>", RELAY, None),
    ("<q7x2k9m4p1z8w3v5@ｍａｒｋｅｔｐｌａｃｅ.amazon.de>", RELAY, None),
    ("<q7x2k9m4p1z8w3v5@marketplace . amazon . de>", RELAY, None),
    (b"<q7x2k9m4p1z8w3v5@marketplace.amazon.de>", RELAY, None),
    ("<q7x2k9m4p1z8w3v5%marketplace.amazon.de@mx.shop.test>", RELAY, None),
    ("<marketplace.amazon.de!q7x2k9m4p1z8w3v5@mx.shop.test>", RELAY, None),
    ("<käufer@marketplace.amazon.de>", RELAY, None),
    # marked (domain need not be a relay domain)
    ("<blacklisted-12345@amazon.fr>", MARKED, "12345@amazon.fr"),
    ("blacklisted-12345@amazon.de", MARKED, "12345@amazon.de"),
    ("<BLACKLISTED-12345@amazon.de>", MARKED, "12345@amazon.de"),
    ("<Blacklisted-Ab12Cd@Amazon.DE>", MARKED, "Ab12Cd@amazon.de"),
    ('<"blacklisted-12345"@amazon.fr>', MARKED, "12345@amazon.fr"),
    ('<"blacklisted-"12345@amazon.fr>', MARKED, "12345@amazon.fr"),
    ("<blacklisted-12345+order@amazon.fr>", MARKED, "12345+order@amazon.fr"),
    ("<blacklisted-max.mustermann@example.org>", MARKED, "max.mustermann@example.org"),
    ('<"blacklisted-a b"@example.org>', MARKED, '"a b"@example.org'),
    ("<blacklisted-12345@amazon.fr.>", MARKED, "12345@amazon.fr"),
    ("<@relay.example:blacklisted-9@amazon.it>", MARKED, "9@amazon.it"),
    ("<blacklisted-@amazon.fr>", MARKED, None),
    ("<blacklisted-12345%amazon.fr@mx.shop.test>", MARKED, "12345%amazon.fr@mx.shop.test"),
    ("<shop!blacklisted-7@mx.shop.test>", MARKED, None),
    # both
    ("<blacklisted-q7x2k9m4p1z8w3v5@marketplace.amazon.de>", BOTH, "q7x2k9m4p1z8w3v5@marketplace.amazon.de"),
    ("<BLACKLISTED-Q7X2@MARKETPLACE.AMAZON.COM.>", BOTH, "Q7X2@marketplace.amazon.com"),
    # look-alikes and ordinary mail
    ("<q7x2k9m4p1z8w3v5@marketplace.amazon.de.example.com>", OTHER, None),
    ("<q7x2k9m4p1z8w3v5@notmarketplace.amazon.de>", OTHER, None),
    ("<q7x2k9m4p1z8w3v5@marketplace-amazon.de>", OTHER, None),
    ("<q7x2k9m4p1z8w3v5@marketplace.amazon.dex>", OTHER, None),
    ("<q7x2k9m4p1z8w3v5@amazon.de>", OTHER, None),
    ("<q7x2k9m4p1z8w3v5@marketplace.amazon>", OTHER, None),
    ("<marketplace.amazon.de@example.com>", OTHER, None),
    ("<seller-support@amazon.de>", OTHER, None),
    ("<notblacklisted-1@amazon.fr>", OTHER, None),
    ("<black-listed-1@amazon.fr>", OTHER, None),
    ("<blacklisted1@amazon.fr>", OTHER, None),
    ("<x-blacklisted-1@amazon.fr>", OTHER, None),
    ("<owner@shop.test>", OTHER, None),
    ("owner@shop.test", OTHER, None),
    ("<Support+tickets@Shop.Test>", OTHER, None),
    ("<postmaster>", OTHER, None),
    ("<>", OTHER, None),
    ("", OTHER, None),
    ("   ", OTHER, None),
    ("<<<>>>", OTHER, None),
    ("@@@", OTHER, None),
    ("<user@[192.0.2.1]>", OTHER, None),
    ("<\"unterminated@marketplace.amazon.de>", RELAY, None),
    (None, OTHER, None),
    (12345, OTHER, None),
    ("a" * 10000 + "@marketplace.amazon.de", RELAY, None),
    ("blacklisted-" + "b" * 10000 + "@example.org", MARKED, "b" * 10000 + "@example.org"),
    (b"\xff\xfe@example.org", OTHER, None),
    ("\x00blacklisted-1@amazon.fr", MARKED, "1@amazon.fr"),
]


def _expected_flags(kind: str) -> tuple[bool, bool]:
    return {RELAY: (True, False), MARKED: (False, True), BOTH: (True, True), OTHER: (False, False)}[kind]


def test_table_is_large_enough() -> None:
    assert len(TABLE) >= 60


@pytest.mark.parametrize(("raw", "kind", "unmarked"), TABLE, ids=[repr(row[0])[:60] for row in TABLE])
def test_classify_recipient(raw: object, kind: str, unmarked: str | None) -> None:
    recipient = classify_recipient(raw, PATTERNS)
    assert (recipient.relay, recipient.marked) == _expected_flags(kind)
    assert recipient.is_buyer == (kind != OTHER)
    assert recipient.unmarked == unmarked


def test_unterminated_quote_does_not_hide_the_domain() -> None:
    address = parse_address('<"unterminated@marketplace.amazon.de>')
    assert address.domain == "marketplace.amazon.de"


def test_raw_text_is_kept_for_milter_actions() -> None:
    assert classify_recipient("<Blacklisted-1@Amazon.FR>", PATTERNS).raw == "<Blacklisted-1@Amazon.FR>"


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("Marketplace.Amazon.DE.", "marketplace.amazon.de"),
        (" marketplace.amazon.de ", "marketplace.amazon.de"),
        ("marketplace\uff0eamazon\uff0ede", "marketplace.amazon.de"),
        ("", ""),
    ],
)
def test_normalise_domain(domain: str, expected: str) -> None:
    assert normalise_domain(domain) == expected


def test_strip_marker_keeps_the_rest_exactly() -> None:
    assert strip_marker("BlackListed-AbC.dEf+X", ("blacklisted-",)) == "AbC.dEf+X"
    assert strip_marker("blacklisted", ("blacklisted-",)) is None


def test_configured_prefixes_are_used() -> None:
    patterns = BuyerPatterns(marked_prefixes=("amzbuyer_", "blocked."), relay_domains=("marketplace.amazon.de",))
    assert classify_recipient("<amzbuyer_77@example.org>", patterns).unmarked == "77@example.org"
    assert classify_recipient("<blocked.77@example.org>", patterns).marked
    assert not classify_recipient("<blacklisted-77@example.org>", patterns).marked
    assert not classify_recipient("<x@marketplace.amazon.fr>", patterns).relay


@pytest.mark.parametrize(
    ("local", "domain", "expected"),
    [
        ("abc", "example.org", "abc@example.org"),
        ("a b", "example.org", '"a b"@example.org'),
        ('a"b', "example.org", '"a\\"b"@example.org'),
        (".abc", "example.org", '".abc"@example.org'),
        ("käufer", "example.org", "käufer@example.org"),
        ("postmaster", "", "postmaster"),
    ],
)
def test_format_address(local: str, domain: str, expected: str) -> None:
    assert format_address(local, domain) == expected
    assert parse_address(expected).local == local


@given(
    domain=st.text(alphabet="am.zx-", max_size=24),
    suffixes=st.lists(st.text(alphabet="am.zx-", max_size=10), max_size=5),
)
def test_domain_matching_is_exactly_a_label_aligned_suffix_test(domain: str, suffixes: list[str]) -> None:
    # The set lookup over the domain's tails must answer as the plain definition does, for any input.
    expected = any(domain == suffix or domain.endswith("." + suffix) for suffix in suffixes)
    assert domain_matches(domain, tuple(suffixes)) is expected
    assert domain_matches(domain, frozenset(suffixes)) is expected
