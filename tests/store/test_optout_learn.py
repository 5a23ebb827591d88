"""Learning opt-outs from Amazon's notices (made-up fixtures in tests/fixtures/notices, see its README)."""

from __future__ import annotations

import email
from pathlib import Path

import pytest

from amzguard.address import BuyerPatterns
from amzguard.config import DEFAULT_MARKED_PREFIXES, DEFAULT_RELAY_DOMAINS
from amzguard.store import SqliteStore
from amzguard.optout_learn import NOTICE_PHRASES, Outcome, learn, read_notice, split_messages
from amzguard.policy import ReviewSent

NOTICES = Path(__file__).resolve().parents[1] / "fixtures" / "notices"
PATTERNS = BuyerPatterns(marked_prefixes=DEFAULT_MARKED_PREFIXES, relay_domains=DEFAULT_RELAY_DOMAINS)

# order id -> buyer, as the milter records every review request it lets through
SENT = {
    "302-1000001-2000001": "a1a1a1a1a1a1a1a1@marketplace.amazon.com",
    "302-1000002-2000002": "b2b2b2b2b2b2b2b2@marketplace.amazon.de",
    "302-1000003-2000003": "c3c3c3c3c3c3c3c3@marketplace.amazon.fr",
    "302-1000004-2000004": "d4d4d4d4d4d4d4d4@marketplace.amazon.it",
    "302-1000005-2000005": "e5e5e5e5e5e5e5e5@marketplace.amazon.es",
    "302-1000007-2000007": "g7g7g7g7g7g7g7g7@marketplace.amazon.com",
    "302-1000009-2000009": "40417@amazon.fr",  # a marked buyer (blacklisted-40417@amazon.fr) got it
}


@pytest.fixture()
def store(tmp_path: Path) -> SqliteStore:
    store = SqliteStore(tmp_path / "store.sqlite")
    store.record(ReviewSent(order, buyer) for order, buyer in SENT.items())
    return store


def load(name: str) -> email.message.Message:
    return email.message_from_bytes((NOTICES / name).read_bytes())


@pytest.mark.parametrize(
    ("fixture", "language", "order"),
    [
        ("en_order_only.eml", "en", "302-1000001-2000001"),
        ("de_order_only.eml", "de", "302-1000002-2000002"),
        ("fr_order_only.eml", "fr", "302-1000003-2000003"),
        ("it_html_only.eml", "it", "302-1000004-2000004"),
        ("es_base64.eml", "es", "302-1000005-2000005"),
        ("en_newer_form.eml", "en", "302-1000007-2000007"),
        ("forwarded_by_rule.eml", "de", "302-1000009-2000009"),
    ],
)
def test_each_language_is_learned_through_the_order(store: SqliteStore, fixture: str, language: str,
                                                    order: str) -> None:  # fmt: skip
    [result] = learn([load(fixture)], store, PATTERNS)
    assert result.outcome is Outcome.LEARNED, result
    assert (result.buyer, result.order_id, result.language) == (SENT[order], order, language)
    assert result.detail == "order id resolved through the review requests sent"
    [entry] = store.entries()
    assert (entry.buyer, entry.order_id, entry.source) == (SENT[order], order, "notice")
    # Learning the same notice again changes nothing.
    [again] = learn([load(fixture)], store, PATTERNS)
    assert again.outcome is Outcome.KNOWN and len(store.entries()) == 1


def test_every_language_has_a_fixture() -> None:
    covered = {read_notice(load(path.name), PATTERNS).language  # type: ignore[union-attr]
               for path in NOTICES.glob("*.eml") if read_notice(load(path.name), PATTERNS)}  # fmt: skip
    assert covered == set(NOTICE_PHRASES)


def test_notice_with_the_original_attached_needs_no_record(tmp_path: Path) -> None:
    empty = SqliteStore(tmp_path / "empty.sqlite")
    [result] = learn([load("en_with_original.eml")], empty, PATTERNS)
    assert result.outcome is Outcome.LEARNED
    # The buyer from the original's To: (sub-address removed), the order from its subject.
    assert (result.buyer, result.order_id) == ("x9y8z7w6v5u4t3s2@marketplace.amazon.co.uk", "026-1000006-2000006")
    assert result.detail == "address in the notice"


def test_unknown_order_without_address_is_reported_not_guessed(store: SqliteStore) -> None:
    [result] = learn([load("en_unresolved.eml")], store, PATTERNS)
    assert result.outcome is Outcome.UNRESOLVED
    assert result.order_id == "302-9999999-9999999" and result.buyer is None
    assert "not among the review requests amzguard remembers" in result.detail
    assert store.entries() == []


def test_other_amazon_mail_is_not_a_notice(store: SqliteStore) -> None:
    [result] = learn([load("not_a_notice.eml")], store, PATTERNS)
    assert result.outcome is Outcome.UNRECOGNISED and result.label == "<notice-en-5@amazon.example>"
    assert store.entries() == []


def test_several_addresses_are_resolved_only_by_the_order(store: SqliteStore) -> None:
    text = (
        "Subject: Message delivery failure\n\nWe were unable to deliver the message you sent for order "
        "[302-1000001-2000001] to a1a1a1a1a1a1a1a1@marketplace.amazon.com or zz@marketplace.amazon.com because the "
        "buyer has chosen to opt out of receiving unsolicited messages from sellers.\n"
    )
    [picked] = learn([email.message_from_string(text)], store, PATTERNS)
    assert picked.buyer == "a1a1a1a1a1a1a1a1@marketplace.amazon.com"
    assert picked.detail == "address in the notice, chosen by the order"
    [ambiguous] = learn([email.message_from_string(text.replace("302-1000001", "302-5555555"))], store, PATTERNS)
    assert ambiguous.outcome is Outcome.UNRESOLVED and "several buyer addresses" in ambiguous.detail


def test_mbox_with_several_messages(store: SqliteStore) -> None:
    parts = []
    for name in ("en_order_only.eml", "not_a_notice.eml", "de_order_only.eml"):
        body = (NOTICES / name).read_bytes().replace(b"\nFrom ", b"\n>From ")
        parts.append(b"From seller-notification@amazon.example Mon Nov 23 08:00:00 2026\n" + body + b"\n")
    messages = split_messages(b"".join(parts))
    assert len(messages) == 3
    outcomes = [result.outcome for result in learn(messages, store, PATTERNS)]
    assert outcomes == [Outcome.LEARNED, Outcome.UNRECOGNISED, Outcome.LEARNED]


def test_split_messages_single_and_empty() -> None:
    assert len(split_messages((NOTICES / "en_order_only.eml").read_bytes())) == 1
    assert split_messages(b"") == [] and split_messages(b"\n\n") == []
    quoted = b"From a@b Mon Nov 23 08:00:00 2026\nSubject: x\n\n>From the start\n"
    [message] = split_messages(quoted)
    assert message.get_payload() == "From the start\n"


def test_a_notice_about_the_shared_business_address_registers_nobody(store: SqliteStore) -> None:
    """The returned original went to the address Amazon Business buyers share (marked, any letter case)."""
    [result] = learn([load("en_shared_business_address.eml")], store, PATTERNS)
    assert result.outcome is Outcome.SHARED
    assert (result.buyer, result.order_id) == ("no-reply-amazon-iba-buyer@marketplace.amazon.de", "302-1000011-2000011")
    assert store.entries() == []


def test_the_shared_address_found_through_the_order_registers_nobody(store: SqliteStore) -> None:
    """A notice naming only the order, whose review request went to the shared address."""
    store.record([ReviewSent("302-1000012-2000012", "no-reply-amazon-iba-buyer@marketplace.amazon.co.uk")])
    notice = (NOTICES / "en_order_only.eml").read_bytes().replace(b"302-1000001-2000001", b"302-1000012-2000012")
    assert b"302-1000012-2000012" in notice
    [result] = learn([email.message_from_bytes(notice)], store, PATTERNS)
    assert result.outcome is Outcome.SHARED, result
    assert result.buyer == "no-reply-amazon-iba-buyer@marketplace.amazon.co.uk"
    assert store.entries() == []
