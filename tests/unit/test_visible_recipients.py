"""The visible To:/Cc: follows the unmarked envelope (issue 12 item 2): the rewrite of one field, and the
plan a transaction makes of it. Addresses are made up."""

from __future__ import annotations

import re
from email.utils import getaddresses

from hypothesis import given, settings
from hypothesis import strategies as st

from amzguard.address import parse_address
from amzguard.config import parse_config
from amzguard.explain import plan_lines
from amzguard.policy import ChangeHeader, Mode, Policy, SubmissionPath
from amzguard.policy.visible_recipients import marked_key, rewrite_field
from amzguard.transaction import MAX_ADDRESS_FIELD, Transaction

TOKEN = "fixture-review-token-0123456789"
MARKED = "blacklisted-q7x2k9m4p1z8w3v5@marketplace.amazon.de"
UNMARKED = "q7x2k9m4p1z8w3v5@marketplace.amazon.de"
MAP = {marked_key("blacklisted-q7x2k9m4p1z8w3v5", "marketplace.amazon.de"): UNMARKED}


def test_display_name_and_other_addresses_kept() -> None:
    value = f'"Max M." <{MARKED}>, other@shop.example'
    assert rewrite_field(value, MAP).value == f'"Max M." <{UNMARKED}>, other@shop.example'


def test_bare_address_with_comment_group_and_encoded_word() -> None:
    assert rewrite_field(f"{MARKED} (Max)", MAP).value == f"{UNMARKED} (Max)"
    group = f"Kunden: a@shop.example, =?utf-8?q?M=C3=BCller?= <{MARKED.upper()}>;, b@shop.example"
    assert rewrite_field(group, MAP).value == f"Kunden: a@shop.example, =?utf-8?q?M=C3=BCller?= <{UNMARKED}>;, b@shop.example"


def test_quoted_local_part_is_matched_unquoted() -> None:
    assert rewrite_field('"blacklisted-q7x2k9m4p1z8w3v5"@marketplace.amazon.de', MAP).value == UNMARKED


def test_folding_outside_the_address_is_kept() -> None:
    value = f'"Max M."\n\t<{MARKED}>,\n other@shop.example'
    assert rewrite_field(value, MAP).value == f'"Max M."\n\t<{UNMARKED}>,\n other@shop.example'


def test_address_in_a_display_name_or_comment_is_not_an_address() -> None:
    value = f'"{MARKED}" <other@shop.example> ({MARKED})'
    result = rewrite_field(value, MAP)
    assert result.value is None


def test_unsafe_fields_stay_and_say_so() -> None:
    for value in (f"Max <blacklisted-q7x2k9m4p1z8w3v5@\n marketplace.amazon.de>",  # fold inside the address
                  f'"unterminated <{MARKED}>', f"Max <{MARKED}", f"Max <<{MARKED}>>"):  # fmt: skip
        result = rewrite_field(value, MAP)
        assert result.value is None and result.replaced >= 1, value


def test_field_without_the_marked_address_is_untouched() -> None:
    assert rewrite_field("a@shop.example, B <b@shop.example>", MAP).replaced == 0


# -- property: only the marked address changes ----------------------------------------------------

atom = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8)
other_address = st.builds(lambda l, d: f"{l}@{d}.example", atom, atom)
display = st.one_of(
    st.none(),
    st.builds(lambda w: " ".join(w), st.lists(atom, min_size=1, max_size=3)),
    st.builds(lambda t: '"' + t.replace("\\", "").replace('"', "") + '"',
              st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=12)),
    st.builds(lambda w: f"=?utf-8?q?{w}?=", atom),
)
comment = st.one_of(st.just(""), st.builds(lambda w: f" ({w})", atom))
separator = st.sampled_from([", ", ",", ",\r\n ", ",\n\t", " ,  "])


def mailbox(name: str | None, address: str, note: str) -> str:
    return f"{name} <{address}>{note}" if name is not None else f"{address}{note}"


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(display, st.one_of(other_address, st.just(MARKED), st.just(MARKED.upper())), comment),
             min_size=1, max_size=6),
    separator,
)  # fmt: skip
def test_rewrite_changes_only_the_marked_addresses(boxes, sep) -> None:
    value = sep.join(mailbox(*box) for box in boxes)
    result = rewrite_field(value, MAP)
    named = sum(1 for _, address, _ in boxes if address.casefold() == MARKED)
    assert result.replaced == named
    if not named:
        assert result.value is None
        return
    assert result.value is not None, value
    before, after = getaddresses([value]), getaddresses([result.value])
    assert [name for name, _ in after] == [name for name, _ in before]
    expected = [UNMARKED if address.casefold() == MARKED else address for _, address in before]
    assert [address for _, address in after] == expected
    # Only the address tokens' text changed: everything else is the original byte for byte.
    assert result.value == re.sub(re.escape(MARKED), UNMARKED, value, flags=re.IGNORECASE)


# -- the plan a transaction makes -------------------------------------------------------------------


def policy() -> Policy:
    return Policy.from_settings(parse_config({"channels": {"review": {"enabled": True, "token": TOKEN}}}).policy)


def judge(headers: list[tuple[str, str | bytes]], to: str = MARKED):
    trx = Transaction(policy(), SubmissionPath.SMTP, parse_address("<support@shop.test>"))
    assert trx.rcpt(f"<{to}>") is None
    for name, value in [("X-Amzguard-Channel", f"review {TOKEN}"), ("Subject", "Order 305-1234567-1234567"), *headers]:
        trx.header(name, value.encode() if isinstance(value, str) else value)
    return trx.judge()


def test_plan_rewrites_each_field_naming_the_marked_address_by_its_index() -> None:
    judgement = judge([("To", f'"Max M." <{MARKED}>'), ("Cc", "a@shop.example"), ("cc", f"{MARKED}, b@shop.example")])
    changes = [c for c in judgement.plan.changes if isinstance(c, ChangeHeader)]
    assert changes == [ChangeHeader("To", 1, f'"Max M." <{UNMARKED}>'), ChangeHeader("cc", 2, f"{UNMARKED}, b@shop.example")]
    assert judgement.plan.kept_fields == ()
    lines = plan_lines(judgement.plan, Mode.ENFORCE)
    assert f'  rewrite header To (field 1) to: "Max M." <{UNMARKED}>' in lines


def test_plan_keeps_an_unsafe_or_too_long_field_and_names_it() -> None:
    long_field = ", ".join(f"a{n}@shop.example" for n in range(MAX_ADDRESS_FIELD // 10)) + f", {MARKED}"
    judgement = judge([("To", f"Max <blacklisted-q7x2k9m4p1z8w3v5@\n marketplace.amazon.de>"), ("Cc", long_field),
                       ("Cc", f"{MARKED}".encode() + b" (M\xfcller)")])  # fmt: skip
    assert not [c for c in judgement.plan.changes if isinstance(c, ChangeHeader)]
    assert judgement.plan.kept_fields == ("To[1]", "Cc[2]")  # the long one is cut before its marked address
    assert "  keep header To[1]: names the marked address, cannot be rewritten safely" in plan_lines(judgement.plan, Mode.ENFORCE)


def test_fields_are_not_collected_without_an_unmarked_recipient() -> None:
    trx = Transaction(policy(), SubmissionPath.SMTP, parse_address("<support@shop.test>"))
    trx.rcpt("<q7x2k9m4p1z8w3v5@marketplace.amazon.de>")
    trx.header("To", b"q7x2k9m4p1z8w3v5@marketplace.amazon.de")
    assert trx.address_fields == []
    assert not [c for c in trx.judge().plan.changes if isinstance(c, ChangeHeader)]
