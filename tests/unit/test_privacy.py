"""Addresses in the log: full, masked or keyed-hashed, and never the buyer's local part unless full."""

from __future__ import annotations

import pytest

from amzguard.address import parse_address
from amzguard.decision_log import decision_line
from amzguard.address import BuyerPatterns, classify_recipient
from amzguard.policy import Decision, Mode, Outcome, Reason, SubmissionPath
from amzguard.privacy import AddressPrivacy, AddressStyle

KEY = b"log-hash-key-for-tests-0001"
MASKED = AddressPrivacy(AddressStyle.MASKED, marked_prefixes=("blacklisted-",))
HASHED = AddressPrivacy(AddressStyle.HASHED, KEY, ("blacklisted-",))


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("<q7x2k9m4p1z8w3v5@marketplace.amazon.de>", "q***@marketplace.amazon.de"),
        ("<blacklisted-40417@amazon.fr>", "blacklisted-4***@amazon.fr"),
        ("<Blacklisted-40417@amazon.fr>", "Blacklisted-4***@amazon.fr"),
        ("<blacklisted-@amazon.fr>", "blacklisted-***@amazon.fr"),
        ("<>", ""),
        ("postmaster", "p***"),
    ],
)
def test_masked(raw: str, masked: str) -> None:
    assert MASKED.render(parse_address(raw)) == masked


def test_hashed_is_stable_keyed_and_unreadable() -> None:
    first = HASHED.render(parse_address("<blacklisted-40417@amazon.fr>"))
    assert first.startswith("blacklisted-#") and first.endswith("@amazon.fr")
    assert "40417" not in first
    # the same mailbox in another spelling hashes alike; another mailbox or another key differs
    assert HASHED.render(parse_address("<BLACKLISTED-40417@Amazon.FR.>")).split("#")[1] == first.split("#")[1]
    assert HASHED.render(parse_address("<blacklisted-40418@amazon.fr>")) != first
    other_key = AddressPrivacy(AddressStyle.HASHED, b"another-key-of-16-chars", ("blacklisted-",))
    assert other_key.render(parse_address("<blacklisted-40417@amazon.fr>")) != first


def test_full_is_unchanged() -> None:
    assert AddressPrivacy(AddressStyle.FULL).render(parse_address("<a.b@c.example>")) == "a.b@c.example"


def test_decision_line_uses_the_style() -> None:
    patterns = BuyerPatterns(marked_prefixes=("blacklisted-",), relay_domains=("marketplace.amazon.de",))
    decision = Decision(classify_recipient("<q7x2k9m4p1z8w3v5@marketplace.amazon.de>", patterns), Outcome.REFUSE,
                        Reason.BUYER_MAIL)  # fmt: skip
    line = decision_line("4XQ", parse_address("<shop@shop.test>"), decision, SubmissionPath.SMTP, "rcpt",
                         Mode.ENFORCE, MASKED)  # fmt: skip
    assert line == ("4XQ: from=<s***@shop.test> rcpt=<q***@marketplace.amazon.de> path=smtp stage=rcpt "
                    "channel=none decision=refuse reason=buyer-mail")  # fmt: skip
