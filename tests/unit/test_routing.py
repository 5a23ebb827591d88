"""The recipient Postfix routes to and the text it queued: tables from the real Postfix 3.7.11, and
properties over open-ended spellings (hypothesis). All addresses made up."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amzguard.address import BuyerPatterns, classify_recipient, format_address, parse_address, routed_forms
from amzguard.config import DEFAULT_MARKED_PREFIXES, DEFAULT_RELAY_DOMAINS
from amzguard.queued import delete_argument, internal_form, smtp_queued_form

PATTERNS = BuyerPatterns(marked_prefixes=DEFAULT_MARKED_PREFIXES, relay_domains=DEFAULT_RELAY_DOMAINS)

# RCPT argument -> the original recipient smtpd queued (ORCP), read back from the maillog's orig_to= and
# confirmed by a delete-recipient naming it removing the recipient (tests/e2e/test_exactness.py).
QUEUED = [
    ('<"q7x@marketplace.amazon.de">', "q7x@marketplace.amazon.de"),
    ("<q7x\\@marketplace.amazon.de>", "q7x@marketplace.amazon.de"),
    ("<@a.example:q7x@marketplace.amazon.de>", "q7x@marketplace.amazon.de"),
    ("<@a.example,@b.example:q7x@marketplace.amazon.de>", "q7x@marketplace.amazon.de"),
    ("<q7x@marketplace.amazon.de.>", "q7x@marketplace.amazon.de."),
    ("<Q7X@Marketplace.AMAZON.de>", "Q7X@Marketplace.AMAZON.de"),
    ("<x@marketplace.amazon.de@[127.0.0.1]>", "x@marketplace.amazon.de@[127.0.0.1]"),
    ('<"a b"@example.org>', "a b@example.org"),
    ("q7x@marketplace.amazon.de", "q7x@marketplace.amazon.de"),
]


@pytest.mark.parametrize(("raw", "queued"), QUEUED)
def test_smtp_queued_form(raw: str, queued: str) -> None:
    assert smtp_queued_form(raw) == (queued, True)


@pytest.mark.parametrize("raw", ["<x(comment)@example.org>", "<x @example.org>", '<"open@example.org>', "<a@b>,<c@d>"])
def test_what_tok822_would_regroup_is_not_claimed_exact(raw: str) -> None:
    assert smtp_queued_form(raw)[1] is False


def test_delete_argument_quotes_what_cleanup_must_read_as_one_local_part() -> None:
    assert delete_argument("a b@example.org") == '"a b"@example.org'
    assert delete_argument("x@marketplace.amazon.de@[127.0.0.1]") == '"x@marketplace.amazon.de"@[127.0.0.1]'
    assert delete_argument("q7x@marketplace.amazon.de.") == "q7x@marketplace.amazon.de."


# (envelope address, what Postfix's resolver made of it with localhost/[127.0.0.1] local)
RESOLVED = [
    ("x@marketplace.amazon.de@[127.0.0.1]", "x@marketplace.amazon.de"),
    ("x%marketplace.amazon.de%localhost@localhost", "x@marketplace.amazon.de"),
    ("localhost!marketplace.amazon.de!x@localhost", "x@marketplace.amazon.de"),
    ('"x%y"@[127.0.0.1]', "x@y"),
]


@pytest.mark.parametrize(("raw", "resolved"), RESOLVED)
def test_every_form_postfix_resolved_to_is_among_the_routed_forms(raw: str, resolved: str) -> None:
    forms, complete = routed_forms(parse_address(raw))
    assert complete and resolved in [form.text() for form in forms]


def test_rcpt_addr_decides_when_postfix_resolved_it() -> None:
    # Postfix resolved it to a plain relay address: that is judged, spelled as the client wrote it.
    recipient = classify_recipient("<Q7X%marketplace.amazon.de@localhost>", PATTERNS,
                                   resolved="q7x@marketplace.amazon.de", smtp=True)  # fmt: skip
    assert recipient.address.text() == "Q7X@marketplace.amazon.de" and recipient.relay and not recipient.unresolved
    # The raw text looked like a buyer's, but Postfix delivers to a local mailbox of that name: trust Postfix.
    recipient = classify_recipient('<"x@marketplace.amazon.de"@localhost>', PATTERNS,
                                   resolved="shopmailbox@mx.shop.test", smtp=True)  # fmt: skip
    assert not recipient.is_buyer
    # Postfix left routing syntax (the right-hand side was not local): not sure where it goes.
    recipient = classify_recipient("<x%marketplace.amazon.de@example.org>", PATTERNS,
                                   resolved="x%marketplace.amazon.de@example.org", smtp=True)  # fmt: skip
    assert recipient.is_buyer and recipient.unresolved


def test_without_rcpt_addr_more_than_one_routed_form_is_unresolved() -> None:
    assert classify_recipient("x%marketplace.amazon.de@localhost", PATTERNS).unresolved
    assert not classify_recipient("q7x@marketplace.amazon.de", PATTERNS).unresolved


def test_sendmail_path_deletes_the_envrcpt_form_and_its_trailing_dot_twin() -> None:
    recipient = classify_recipient("blacklisted-1@amazon.fr", PATTERNS)
    assert recipient.delete_forms == ("blacklisted-1@amazon.fr", "blacklisted-1@amazon.fr.")
    assert recipient.delete_exact is False
    assert classify_recipient("<blacklisted-1@amazon.fr>", PATTERNS, smtp=True).delete_exact is True


# -- properties -------------------------------------------------------------------------------------

_LOCAL_CHARS = st.sampled_from(list("abcXYZ019.-_+%!@ \"\\()<>,;:"))
_LABEL = st.text(alphabet="abcdefXYZ0123456789", min_size=1, max_size=8)


@st.composite
def _domains(draw) -> str:
    labels = draw(st.lists(_LABEL, min_size=1, max_size=4))
    return ".".join(labels) + draw(st.sampled_from(["", "."]))


@st.composite
def _spellings(draw) -> tuple[str, str]:
    """An RCPT argument spelling one (local, domain), and the internal form Postfix queues for it."""
    local = draw(st.text(_LOCAL_CHARS, min_size=1, max_size=12))
    domain = draw(_domains())
    style = draw(st.sampled_from(["quoted", "escaped"]))
    if style == "quoted":
        written = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    else:  # every special character as a quoted-pair outside quotes
        written = "".join(ch if ch.isalnum() else "\\" + ch for ch in local)
    route = draw(st.sampled_from(["", "@a.example:", "@a.example,@b.example:"]))
    return f"<{route}{written}@{domain}>", f"{local}@{domain}"


@given(_spellings())
def test_queued_form_of_any_quoting_is_the_internal_text(case: tuple[str, str]) -> None:
    raw, internal = case
    assert smtp_queued_form(raw) == (internal, True)


@given(local=st.text(_LOCAL_CHARS, min_size=1, max_size=12), domain=_domains())
def test_delete_argument_internalises_back_to_the_queued_text(local: str, domain: str) -> None:
    internal = f"{local}@{domain}"
    assert internal_form(delete_argument(internal)) == (internal, True)


_HOSTS = st.sampled_from(["localhost", "[127.0.0.1]", "shop.test", "mx.shop.test"])


@given(
    buyer=st.sampled_from(["q7x@marketplace.amazon.de", "blacklisted-20@amazon.fr", "k2@m.marketplace.amazon.co.jp"]),
    wraps=st.lists(st.tuples(st.sampled_from(["at", "percent", "bang"]), _HOSTS), min_size=1, max_size=4),
    quoted=st.booleans(),
)
def test_a_buyer_hidden_in_nested_routing_forms_is_found(buyer: str, wraps: list[tuple[str, str]], quoted: bool) -> None:
    """Whatever nesting of @-in-local-part, percent hack and bang path, with any right-hand host (local or
    not: amzguard cannot know), the buyer is found and the route is not claimed to be resolved."""
    local, _, domain = buyer.rpartition("@")
    for kind, host in wraps:
        local = {"at": f"{local}@{domain}", "percent": f"{local}%{domain}", "bang": f"{domain}!{local}"}[kind]
        domain = host
    text = format_address(local, domain) if quoted else f"{local}@{domain}"
    recipient = classify_recipient(text, PATTERNS)
    assert recipient.is_buyer and recipient.unresolved, text
