"""The MTA test and Sendmail's mailer triple, over the macro values recorded on a real Sendmail."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amzguard.address import BuyerPatterns, classify_recipient
from amzguard.config import DEFAULT_MARKED_PREFIXES, DEFAULT_RELAY_DOMAINS
from amzguard.secret_scan import SecretScan
from amzguard.sendmail_route import (
    Mta,
    RouteKind,
    classify_sendmail_recipient,
    mta_of,
    sendmail_delete_argument,
    sendmail_route,
    uncertain_deletes,
)

TABLE = Path(__file__).resolve().parents[1] / "fixtures" / "sendmail_recipients.tsv"


@dataclass(frozen=True)
class Row:
    """One line of tests/fixtures/sendmail_recipients.tsv (see its header)."""

    rcpt: str
    reply: int
    mailer: str | None
    host: str | None
    addr: str | None
    relayed: str | None
    kind: str


def _field(value: str) -> str | None:
    return None if value == "-" else value


def sendmail_rows() -> list[Row]:
    rows = []
    for line in TABLE.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        rcpt, reply, mailer, host, addr, relayed, kind = line.split("\t")
        rows.append(Row(rcpt, int(reply), _field(mailer), _field(host), _field(addr), _field(relayed), kind))
    return rows


ROWS = sendmail_rows()
SEEN = [row for row in ROWS if row.kind != "sendmail"]


def test_table_covers_the_issue_spellings() -> None:
    spellings = {row.rcpt for row in ROWS}
    for wanted in ('"q7x@marketplace.amazon.de"', "q7x\\@marketplace.amazon.de",
                   "x%marketplace.amazon.de%[127.0.0.1]@[127.0.0.1]", '"x@marketplace.amazon.de"@[127.0.0.1]',
                   "x%marketplace.amazon.de@mx.shop.test", "marketplace.amazon.de!x@mx.shop.test",
                   "@a.example:q7x@marketplace.amazon.de", "q7x@marketplace.amazon.de.", "Q7X@Marketplace.AMAZON.de",
                   '"blacklisted-40417"@amazon.fr', "root@mx.shop.test"):  # fmt: skip
        assert wanted in spellings
    assert {row.kind for row in ROWS} == {"buyer", "unresolved", "other", "local", "sendmail"}


@pytest.mark.parametrize(
    ("version", "mta"),
    [
        ("Postfix 3.7.11", Mta.POSTFIX),
        ("Postfix 3.12-20250101", Mta.POSTFIX),
        ("8.17.1.9", Mta.SENDMAIL),  # what the shipped snippet makes Sendmail send
        ("8.14.5/8.14.5", Mta.SENDMAIL),
        (" 8.18.1 ", Mta.SENDMAIL),
        (None, Mta.UNKNOWN),  # Sendmail without the snippet's connect macros, or an unknown MTA
        ("", Mta.UNKNOWN),
        ("Exim 4.96", Mta.UNKNOWN),
        ("8", Mta.UNKNOWN),
        ("8.17.1.9 Postfix", Mta.UNKNOWN),
    ],
)
def test_mta_of(version: str | None, mta: Mta) -> None:
    assert mta_of(version) is mta


@pytest.mark.parametrize("row", SEEN, ids=[row.rcpt for row in SEEN])
def test_recorded_triples(row: Row) -> None:
    route = sendmail_route(row.mailer, row.host, row.addr)
    if row.kind == "local":
        assert route == sendmail_route("local", "", row.addr)
        assert route.kind is RouteKind.LOCAL and route.address == row.addr and "@" not in route.address
    else:
        # what Sendmail relayed is exactly the {rcpt_addr} it announced
        assert route.kind is RouteKind.RELAY and route.address == row.addr
        if row.relayed is not None:
            assert route.address == row.relayed


@pytest.mark.parametrize(
    ("mailer", "host", "addr", "why"),
    [
        (None, "[127.0.0.1]", "q7x@marketplace.amazon.de", "no {rcpt_mailer}"),
        ("relay", "[127.0.0.1]", None, "no {rcpt_addr}"),
        (None, None, None, "no {rcpt_mailer} {rcpt_addr}"),
        ("relay", "[127.0.0.1]", "  ", "empty {rcpt_addr}"),
        ("relay", "", "q7x@marketplace.amazon.de", "without {rcpt_host}"),
        ("relay", None, "q7x@marketplace.amazon.de", "without {rcpt_host}"),
        ("error", "5.1.1", "User unknown", "mailer error"),
        ("uucp-dom", "marketplace.amazon.de", "q7x@marketplace.amazon.de", "mailer uucp-dom"),
        ("prog", "", "|/usr/bin/forward", "mailer prog"),
        ("*file*", "", "/tmp/x", "mailer *file*"),
        ("Relay", "[127.0.0.1]", "q7x@marketplace.amazon.de", "mailer Relay"),  # mailer names are exact
    ],
)
def test_what_amzguard_cannot_trust_fails_closed(mailer: str | None, host: str | None, addr: str | None,
                                                 why: str) -> None:  # fmt: skip
    route = sendmail_route(mailer, host, addr)
    assert route.kind is RouteKind.UNRESOLVED and route.address == ""
    assert why in route.why


@pytest.mark.parametrize("mailer", ["relay", "smtp", "esmtp", "smtp8", "dsmtp"])
def test_every_smtp_mailer_is_a_relay(mailer: str) -> None:
    route = sendmail_route(mailer, "mx.partner.example", "partner@example.org")
    assert route.kind is RouteKind.RELAY and route.address == "partner@example.org"


@pytest.mark.parametrize("row", SEEN, ids=[row.rcpt for row in SEEN])
def test_sendmail_delete_argument_keeps_what_sendmail_gave(row: Row) -> None:
    assert sendmail_delete_argument(f"<{row.rcpt}>") == f"<{row.rcpt}>"


def test_sendmail_delete_argument_brackets_an_unbracketed_envrcpt() -> None:
    # RCPT TO:q7x@... (no brackets) reaches the milter without them; the delete needs them (new-style list)
    assert sendmail_delete_argument("q7x@marketplace.amazon.de") == "<q7x@marketplace.amazon.de>"
    assert sendmail_delete_argument(' "q7x x"@marketplace.amazon.de ') == '<"q7x x"@marketplace.amazon.de>'


@given(st.text(max_size=80))
def test_sendmail_delete_argument_is_always_one_bracketed_address(text: str) -> None:
    argument = sendmail_delete_argument(text)
    assert argument.startswith("<") and argument.endswith(">")
    assert sendmail_delete_argument(argument) == argument


@given(st.one_of(st.none(), st.text(max_size=20)), st.one_of(st.none(), st.text(max_size=20)),
       st.one_of(st.none(), st.text(max_size=60)))  # fmt: skip
def test_sendmail_route_never_raises_and_trusts_only_known_mailers(mailer, host, addr) -> None:
    route = sendmail_route(mailer, host, addr)
    if route.kind is RouteKind.RELAY:
        assert mailer in {"relay", "smtp", "esmtp", "smtp8", "dsmtp"} and host and route.address == addr.strip()
    elif route.kind is RouteKind.LOCAL:
        assert mailer == "local" and route.address == addr.strip()
    else:
        assert route.address == "" and route.why


# -- the recipient amzguard judges behind Sendmail ----------------------------------------------------

PATTERNS = BuyerPatterns(marked_prefixes=DEFAULT_MARKED_PREFIXES, relay_domains=DEFAULT_RELAY_DOMAINS)


def classify(row: Row):
    return classify_sendmail_recipient(f"<{row.rcpt}>", PATTERNS, mailer=row.mailer, host=row.host, addr=row.addr)


@pytest.mark.parametrize("row", SEEN, ids=[row.rcpt for row in SEEN])
def test_recorded_spellings_are_judged_by_their_route(row: Row) -> None:
    recipient = classify(row)
    assert recipient.is_buyer is (row.kind in ("buyer", "unresolved")), row
    assert recipient.unresolved is (row.kind == "unresolved"), row
    # the delete names the envrcpt text, which Sendmail resolves to the same recipient (e2e: test_sendmail_routes)
    assert recipient.delete_forms == (f"<{row.rcpt}>",) and recipient.delete_exact
    assert recipient.raw == f"<{row.rcpt}>"


@pytest.mark.parametrize(
    ("rcpt", "unmarked"),
    [
        ('"blacklisted-40417"@amazon.fr', "40417@amazon.fr"),
        ('"blacklisted-40417@amazon.fr"', "40417@amazon.fr"),
        ("blacklisted-40417@amazon.fr", "40417@amazon.fr"),
    ],
)
def test_marked_spellings_are_unmarked_to_the_relayed_mailbox(rcpt: str, unmarked: str) -> None:
    [row] = [row for row in ROWS if row.rcpt == rcpt]
    recipient = classify(row)
    assert recipient.marked and recipient.unmarked == unmarked


def test_a_local_user_is_not_a_buyer_whatever_the_text() -> None:
    # Sendmail said local: the message stays on this host (aliases expand later, docs/sendmail.md)
    recipient = classify_sendmail_recipient("<x%marketplace.amazon.de@mx.shop.test>", PATTERNS,
                                            mailer="local", host="", addr="x%marketplace.amazon.de")  # fmt: skip
    assert not recipient.is_buyer and recipient.address.local == "x%marketplace.amazon.de"


@pytest.mark.parametrize("mailer", [None, "error", "uucp-dom"])
def test_without_a_route_every_reading_counts_and_buyers_are_unresolved(mailer: str | None) -> None:
    for raw in ("<blacklisted-40417@amazon.fr>", "<x%marketplace.amazon.de@mx.shop.test>",
                '<"q7x@marketplace.amazon.de">', "<mx.shop.test!marketplace.amazon.de!x>"):  # fmt: skip
        recipient = classify_sendmail_recipient(raw, PATTERNS, mailer=mailer, host=None, addr=None)
        assert recipient.is_buyer and recipient.unresolved, raw
    partner = classify_sendmail_recipient("<partner@example.org>", PATTERNS, mailer=None, host=None, addr=None)
    assert not partner.is_buyer


LOCALS = st.text(alphabet=st.sampled_from("abcxyz0129.-+_"), min_size=1, max_size=12).filter(
    lambda s: not s.startswith(".") and not s.endswith(".") and ".." not in s)  # fmt: skip
BUYER_ADDRS = st.one_of(
    st.builds(lambda local, domain: f"{local}@{domain}", LOCALS, st.sampled_from(DEFAULT_RELAY_DOMAINS)),
    st.builds(lambda local, domain: f"blacklisted-{local}@{domain}", LOCALS, st.sampled_from(["amazon.fr", "shop.test"])),
)


@given(st.text(max_size=60), BUYER_ADDRS, st.sampled_from(sorted(["relay", "smtp", "esmtp", "smtp8", "dsmtp"])))
def test_no_rcpt_text_hides_a_buyer_that_sendmail_relays_to(raw: str, relayed: str, mailer: str) -> None:
    """Whatever the client wrote, what Sendmail relays to decides: a buyer there is a buyer."""
    assert classify_recipient(relayed, PATTERNS).is_buyer
    recipient = classify_sendmail_recipient(raw, PATTERNS, mailer=mailer, host="[127.0.0.1]", addr=relayed)
    assert recipient.is_buyer


@given(st.text(max_size=60))
def test_an_unknown_mta_gets_uncertain_deletes_that_include_sendmails(raw: str) -> None:
    recipient = uncertain_deletes(classify_recipient(raw, PATTERNS, smtp=True))
    assert not recipient.delete_exact
    assert sendmail_delete_argument(raw) in recipient.delete_forms
    assert len(set(recipient.delete_forms)) == len(recipient.delete_forms)


# -- the review secret in a bounce's body -------------------------------------------------------------

@given(st.binary(max_size=200), st.binary(max_size=200), st.lists(st.integers(0, 500), max_size=6))
def test_secret_scan_finds_the_needle_wherever_the_chunks_are_cut(before: bytes, after: bytes, cuts: list[int]) -> None:
    needle = b"t3st-review-token-7Qx9Lm2"
    for present in (True, False):
        data = before + (needle if present else b"") + after
        scan = SecretScan(needle)
        edges = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
        for start, end in zip(edges, edges[1:]):
            scan.feed(data[start:end])
        assert scan.found is (needle in data)


def test_secret_scan_needs_a_secret() -> None:
    with pytest.raises(ValueError):
        SecretScan(b"")
