"""Review requests recognised without the tag (issue 12 item 1): each criterion of a
``channels.review.recognise`` entry alone and combined, the config errors, what RCPT already knows, the
fast path, and the way the decision log, explain and lint name it. Addresses and subjects are made up."""

from __future__ import annotations

import dataclasses
import fnmatch
import ipaddress
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amzguard.address import BuyerPatterns, classify_recipient, parse_address
from amzguard.config import DEFAULT_MARKED_PREFIXES, DEFAULT_RELAY_DOMAINS, ConfigError, parse_config
from amzguard.decision_log import decision_line
from amzguard.explain import explain
from amzguard.policy import (
    Channel,
    MessageFacts,
    Mode,
    Origin,
    Outcome,
    Policy,
    Reason,
    RecognisedBy,
    RecogniseEntry,
    StoreQuestions,
    SubjectPattern,
    SubmissionPath,
    client_address,
    client_network,
    possible_decisions,
)
from amzguard.policy.recognise import CriterionError
from amzguard.transaction import Transaction

TOKEN = "recognise-test-token-0123456789"
ORDER = "302-1234567-7654321"
BUYER = "<q7x2k9m4p1z8w3v5@marketplace.amazon.de>"
MARKED = "<blacklisted-q7x2k9m4p1z8w3v5@marketplace.amazon.de>"
PATTERNS = BuyerPatterns(marked_prefixes=DEFAULT_MARKED_PREFIXES, relay_domains=DEFAULT_RELAY_DOMAINS)
PHP = "www-data@shop.test"
TOOL = "review-tool"
SUBJECT = "Ihre Meinung zu Ihrer Bestellung *"
GOOD_SUBJECT = ("Subject", f"Ihre Meinung zu Ihrer Bestellung {ORDER}")


def review(entries: list[dict], others: bool = True, **extra: object) -> Policy:
    """The review channel with these entries; ``others=False``: reply and critical off (so that only the
    review channel decides what RCPT may refuse)."""
    channels: dict = {"review": {"enabled": True, "recognise": entries, **extra}}
    if not others:
        channels |= {"reply": {"enabled": False}, "critical": {"enabled": False}}
    return Policy.from_settings(parse_config({"channels": channels}).policy)


def facts(sender: str = PHP, headers=(GOOD_SUBJECT,), path=SubmissionPath.SMTP, **origin: object) -> MessageFacts:
    return MessageFacts(sender=parse_address(sender), path=path, headers=tuple(headers), origin=Origin(**origin))


def rcpt(raw: str = BUYER):
    return classify_recipient(raw, PATTERNS, smtp=True)


def decide(policy: Policy, message: MessageFacts, raw: str = BUYER):
    return policy.decide(message, rcpt(raw))


# -- config --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "key", "wording"),
    [
        ({}, "recognise[0]", "at least one of sender, sasl_login, client, subject"),
        ({"subjct": "x"}, "recognise[0].subjct", "unknown key"),
        ({"sender": "www-data"}, "recognise[0].sender", "'user@domain' or '@domain'"),
        ({"sender": ["a@b.test"]}, "recognise[0].sender", "a non-empty string"),
        ({"sasl_login": ""}, "recognise[0].sasl_login", "a non-empty string"),
        ({"client": "192.0.2.7/24"}, "recognise[0].client", "host bits set"),
        ({"client": "shop.test"}, "recognise[0].client", "CIDR"),
        ({"client": "::ffff:192.0.2.0/120"}, "recognise[0].client", "IPv4 form"),
        ({"subject": "*"}, "recognise[0].subject", "does not match every subject"),
        ({"subject": " *** "}, "recognise[0].subject", "does not match every subject"),
        ({"subject": "x" * 201}, "recognise[0].subject", "at most 200"),
        ({"subject": "a\tb\x00"}, "recognise[0].subject", "printable"),
    ],
)
def test_a_bad_entry_is_a_config_error_naming_its_key(entry: dict, key: str, wording: str) -> None:
    data = {"channels": {"review": {"enabled": True, "recognise": [{"sender": "a@b.test"}, entry]}}}
    key = key.replace("[0]", "[1]")
    with pytest.raises(ConfigError, match=rf"^a\.yml: channels\.review\.{re.escape(key)}: .*{re.escape(wording)}"):
        parse_config(data, source="a.yml")


def test_not_a_list_of_mappings_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"channels\.review\.recognise: expected a list of mappings"):
        parse_config({"channels": {"review": {"recognise": ["sender: a@b.test"]}}})


def test_with_entries_the_secret_is_optional_but_a_named_file_must_exist(tmp_path) -> None:
    base = tmp_path / "amzguard.yml"
    entries = [{"sasl_login": TOOL}]
    off = parse_config({"channels": {"review": {"enabled": True, "recognise": entries,
                                                "token_file": None}}}, source=base)  # fmt: skip
    assert off.policy.review.token == b""
    with pytest.raises(ConfigError, match=r"channels\.review\.token_file: expected a readable file"):
        parse_config({"channels": {"review": {"enabled": True, "recognise": entries, "token_file": "missing"}}},
                     source=base)  # fmt: skip
    with pytest.raises(ConfigError, match=r"channels\.review\.token: expected a secret"):
        parse_config({"channels": {"review": {"enabled": True}}}, source=base)  # no entries: still needed
    both = parse_config({"channels": {"review": {"enabled": True, "recognise": entries, "token": TOKEN}}})
    assert both.policy.review.token == TOKEN.encode()


def test_an_entry_without_criterion_cannot_be_built_in_code_either() -> None:
    with pytest.raises(CriterionError):
        RecogniseEntry()


# -- each criterion alone --------------------------------------------------------------------------------


def test_sender_alone() -> None:
    policy = review([{"sender": PHP}])
    decision = decide(policy, facts())
    assert (decision.outcome, decision.reason, decision.channel) == (Outcome.DELIVER, Reason.CHANNEL, Channel.REVIEW)
    assert decision.recognised_by == (RecognisedBy.SENDER,)
    assert decide(policy, facts(sender="WWW-Data@Shop.TEST")).channel is Channel.REVIEW  # mailbox: any case
    assert decide(policy, facts(sender="shop@shop.test")).reason is Reason.BUYER_MAIL
    assert decide(policy, facts(sender="")).reason is Reason.BUYER_MAIL  # a bounce meets no sender entry
    domain = review([{"sender": "@shop.test"}])
    assert decide(domain, facts(sender="anyone@shop.test")).channel is Channel.REVIEW
    assert decide(domain, facts(sender="anyone@sub.shop.test")).reason is Reason.BUYER_MAIL


def test_sasl_login_alone_is_compared_exactly() -> None:
    policy = review([{"sasl_login": TOOL}])
    decision = decide(policy, facts(sasl_login=TOOL))
    assert decision.channel is Channel.REVIEW and decision.recognised_by == (RecognisedBy.SASL,)
    for other in (None, "Review-Tool", "review-tool2", "review"):
        assert decide(policy, facts(sasl_login=other)).reason is Reason.BUYER_MAIL, other


def test_client_alone_v4_and_v6() -> None:
    policy = review([{"client": "192.0.2.0/28"}, {"client": "2001:db8:5::/48"}])
    inside = decide(policy, facts(client=ipaddress.ip_address("192.0.2.15")))
    assert inside.channel is Channel.REVIEW and inside.recognised_by == (RecognisedBy.CLIENT,)
    assert decide(policy, facts(client=ipaddress.ip_address("2001:db8:5:ffff::1"))).channel is Channel.REVIEW
    for outside in ("192.0.2.16", "2001:db8:6::1", "::ffff:192.0.2.1"):
        address = ipaddress.ip_address(outside)
        assert decide(policy, facts(client=address)).reason is Reason.BUYER_MAIL, outside
    assert decide(policy, facts(client=None)).reason is Reason.BUYER_MAIL  # no client known: not met


def test_subject_alone_is_a_glob_over_the_decoded_subject() -> None:
    policy = review([{"subject": SUBJECT}])
    assert decide(policy, facts(sender="anyone@else.test")).recognised_by == (RecognisedBy.SUBJECT,)
    encoded = ("Subject", "=?utf-8?q?IHRE_Meinung_zu?=  Ihrer\r\n Bestellung 302-1234567-7654321")
    assert decide(policy, facts(headers=[encoded])).channel is Channel.REVIEW
    for subject in ("Re: Ihre Meinung zu Ihrer Bestellung 1", "Ihre Meinung zu Ihrer Bestellung", ""):
        assert decide(policy, facts(headers=[("Subject", subject)])).reason is Reason.BUYER_MAIL, subject
    assert decide(policy, facts(headers=[])).reason is Reason.BUYER_MAIL


# -- combinations ------------------------------------------------------------------------------------------


CRITERIA = {
    "sender": (PHP, {"sender": "shop@shop.test"}),
    "sasl_login": (TOOL, {"sasl_login": "someone-else"}),
    "client": ("192.0.2.0/24", {"client": ipaddress.ip_address("198.51.100.1")}),
    "subject": (SUBJECT, {"headers": [("Subject", "Ihre Bestellung wurde versandt")]}),
}
MET = {"sender": PHP, "sasl_login": TOOL, "client": ipaddress.ip_address("192.0.2.9"), "headers": [GOOD_SUBJECT]}


@pytest.mark.parametrize("names", [(a, b) for a in CRITERIA for b in CRITERIA if a < b] + [tuple(CRITERIA)])
def test_every_criterion_of_an_entry_must_hold(names: tuple[str, ...]) -> None:
    policy = review([{name: CRITERIA[name][0] for name in names}])
    assert decide(policy, facts(**MET)).channel is Channel.REVIEW
    expected = tuple(by for by in RecognisedBy if by.value in {n.split("_")[0] for n in names})
    assert decide(policy, facts(**MET)).recognised_by == expected
    for broken in names:
        assert decide(policy, facts(**{**MET, **CRITERIA[broken][1]})).reason is Reason.BUYER_MAIL, broken


def test_the_first_matching_entry_names_the_way_and_the_tag_comes_first() -> None:
    policy = review([{"sasl_login": TOOL, "subject": SUBJECT}, {"sender": PHP}], token=TOKEN)
    assert decide(policy, facts(sasl_login=TOOL)).recognised_by == (RecognisedBy.SASL, RecognisedBy.SUBJECT)
    assert decide(policy, facts()).recognised_by == (RecognisedBy.SENDER,)
    tagged = facts(headers=[GOOD_SUBJECT, ("X-Amzguard-Channel", f"review {TOKEN}")], sasl_login=TOOL)
    assert decide(policy, tagged).recognised_by == (RecognisedBy.TAG,)


def test_allowed_senders_still_bound_the_channel() -> None:
    policy = review([{"sasl_login": TOOL}], allowed_senders=["tool@shop.test"])
    assert decide(policy, facts(sender="tool@shop.test", sasl_login=TOOL)).channel is Channel.REVIEW
    assert decide(policy, facts(sender="other@shop.test", sasl_login=TOOL)).reason is Reason.BUYER_MAIL


def test_the_channel_off_recognises_nothing() -> None:
    policy = Policy.from_settings(parse_config({"channels": {"review": {"recognise": [{"sender": PHP}]}}}).policy)
    assert decide(policy, facts()).reason is Reason.BUYER_MAIL


# -- vetoes and the store, exactly as for tagged mail ----------------------------------------------------------


def test_opt_out_one_per_order_and_marker_apply_as_for_tagged_mail() -> None:
    policy = review([{"sender": PHP, "subject": SUBJECT}])
    message = facts()
    assert policy.read_order_id(message).order_id == ORDER
    questions = policy.store_questions(policy.read_order_id(message), [rcpt()])
    assert questions == StoreQuestions(buyer_keys=("q7x2k9m4p1z8w3v5@marketplace.amazon.de",), order_id=ORDER,
                                 restrictions=True)
    answered = dataclasses.replace(policy.read_order_id(message), reviewed_orders=frozenset({ORDER}))
    duplicate = decide(policy, answered)
    assert (duplicate.reason, duplicate.recognised_by) == (Reason.DUPLICATE_REVIEW, (RecognisedBy.SENDER, RecognisedBy.SUBJECT))
    opted = dataclasses.replace(message, opted_out=frozenset({"q7x2k9m4p1z8w3v5@marketplace.amazon.de"}))
    assert decide(policy, opted).reason is Reason.OPTED_OUT
    marked = decide(policy, message, MARKED)
    assert marked.outcome is Outcome.DELIVER_UNMARKED
    ordered = policy.read_order_id(message)
    assert [r.order_id for r in policy.store_records(ordered, (decide(policy, ordered),))] == [ORDER]


def test_a_recognised_request_without_order_id_in_the_subject_reads_the_body() -> None:
    policy = review([{"sender": PHP}])
    assert policy.wants_body(facts(headers=[("Subject", "Ihre Meinung")]))
    assert not policy.wants_body(facts(sender="shop@shop.test", headers=[("Subject", "Ihre Meinung")]))


def test_recognised_decisions_stay_in_the_decision_space() -> None:
    space = set(possible_decisions())
    policy = review([{"sender": PHP}])
    for message in (facts(), facts(sender="x@y.test"), dataclasses.replace(facts(), reviewed_orders=frozenset({ORDER}))):
        for raw in (BUYER, MARKED, "<blacklisted-@amazon.fr>", "<owner@shop.test>"):
            d = decide(policy, policy.read_order_id(message), raw)
            assert (d.outcome, d.reason, d.channel) in space


# -- what RCPT knows, the fast path ----------------------------------------------------------------------------


def test_rcpt_refuses_only_what_no_entry_and_no_tag_can_grant() -> None:
    policy = review([{"sasl_login": TOOL, "subject": SUBJECT}, {"sender": PHP}], others=False)  # tag off
    smtp, sender = SubmissionPath.SMTP, parse_address("shop@shop.test")
    assert policy.decide_at_rcpt(sender, rcpt(), smtp, Origin(sasl_login=TOOL)) is None
    assert policy.decide_at_rcpt(parse_address(PHP), rcpt(), smtp) is None
    refused = policy.decide_at_rcpt(sender, rcpt(), smtp, Origin(sasl_login="someone"))
    assert refused is not None and refused.reason is Reason.BUYER_MAIL
    assert policy.decide_at_rcpt(sender, rcpt(), SubmissionPath.LOCAL) is None  # never at RCPT there
    tagged = review([{"sasl_login": TOOL}], others=False, token=TOKEN)
    assert tagged.decide_at_rcpt(sender, rcpt(), smtp) is None  # any sender may carry the tag


def test_the_transaction_carries_the_origin_to_rcpt_and_end_of_message() -> None:
    policy = review([{"sasl_login": TOOL}], others=False)
    trx = Transaction(policy, SubmissionPath.SMTP, parse_address("tool@shop.test"), origin=Origin(sasl_login=TOOL))
    assert trx.rcpt(BUYER) is None
    trx.header(*GOOD_SUBJECT)
    judgement = trx.judge()
    assert [d.recognised_by for d in judgement.decisions] == [(RecognisedBy.SASL,)]
    without = Transaction(policy, SubmissionPath.SMTP, parse_address("tool@shop.test"))
    refused = without.rcpt(BUYER)
    assert refused is not None and refused.reason is Reason.BUYER_MAIL


def test_entries_leave_the_fast_path_to_mail_without_buyers() -> None:
    only_entries = review([{"sender": PHP}])
    assert only_entries.fast_path_possible()
    assert only_entries.accepts_at_data(parse_address(PHP), [rcpt("<customer@example.net>")])
    assert not only_entries.accepts_at_data(parse_address(PHP), [rcpt()])
    with_tag = review([{"sender": PHP}], token=TOKEN)
    assert not with_tag.fast_path_possible()  # any sender may carry the secret
    bounded = review([{"sender": PHP}], token=TOKEN, allowed_senders=[PHP])
    assert bounded.fast_path_possible()
    assert not bounded.accepts_at_data(parse_address(PHP), [rcpt("<customer@example.net>")])
    assert bounded.accepts_at_data(parse_address("shop@shop.test"), [rcpt("<customer@example.net>")])


# -- the decision log, explain -----------------------------------------------------------------------------


def test_decision_log_names_the_way() -> None:
    policy = review([{"sender": PHP, "subject": SUBJECT}])
    line = decision_line("4XQ", parse_address(PHP), decide(policy, facts()), SubmissionPath.LOCAL, "eom", Mode.ENFORCE)
    assert line.endswith(" decision=deliver reason=channel recognised_by=sender+subject")
    refused = decide(policy, facts(sender="shop@shop.test"))
    assert "recognised_by" not in decision_line("4XQ", parse_address(PHP), refused, SubmissionPath.SMTP, "eom", Mode.ENFORCE)


def test_explain_takes_the_origin() -> None:
    config = parse_config({"channels": {"review": {"enabled": True, "recognise": [{"sasl_login": TOOL}]},
                                        "reply": {"enabled": False}, "critical": {"enabled": False}},
                           "store": {"path": "/nonexistent/amzguard-test.sqlite"}})  # fmt: skip
    headers = [GOOD_SUBJECT]
    granted = explain(config, [BUYER], "tool@shop.test", SubmissionPath.SMTP, headers, Origin(sasl_login=TOOL))
    assert any(line.startswith("  buyer: Amazon relay domain (marketplace.amazon.de); granted by the review channel "
                               "(recognised by sasl);") for line in granted), granted  # fmt: skip
    refused = explain(config, [BUYER], "tool@shop.test", SubmissionPath.SMTP, headers)
    assert any("refuse at RCPT TO (reason buyer-mail" in line for line in refused)


# -- properties: subject globs, client networks -------------------------------------------------------------

TEXT = st.text(st.characters().filter(str.isprintable), max_size=60)


def normal(text: str) -> str:
    return " ".join(text.split())


@settings(max_examples=300, deadline=None)
@given(TEXT.filter(lambda s: normal(s) != ""), st.data())
def test_a_subject_meets_its_own_escaped_form_and_any_slice_between_stars(subject: str, data) -> None:
    subject = normal(subject)
    escaped = "".join(f"[{ch}]" if ch in "*?[" else ch for ch in subject)
    if len(escaped) <= 200:
        assert SubjectPattern.compile(escaped).matches(subject.upper().lower())
        assert SubjectPattern.compile(escaped).matches(subject.swapcase()) == (
            subject.swapcase().casefold() == subject.casefold())
    start = data.draw(st.integers(0, len(subject) - 1))
    end = data.draw(st.integers(start + 1, len(subject)))
    piece = "".join(f"[{ch}]" if ch in "*?[" else ch for ch in subject[start:end]).strip()
    if piece and len(piece) < 198:
        assert SubjectPattern.compile(f"*{piece}*").matches(subject)


@settings(max_examples=300, deadline=None)
@given(st.text(st.sampled_from("ab *?[]!-"), min_size=1, max_size=12), st.text(st.sampled_from("abAB -[]"), max_size=12))
def test_subject_glob_agrees_with_fnmatch_on_casefolded_text(pattern: str, subject: str) -> None:
    try:
        compiled = SubjectPattern.compile(pattern)
    except CriterionError:
        assert not normal(pattern).strip("*")
        return
    subject = normal(subject)
    assert compiled.matches(subject) == fnmatch.fnmatchcase(subject.casefold(), normal(pattern).casefold())


def oracle_in(address: int, bits: int, network: int, prefix: int) -> bool:
    shift = bits - prefix
    return address >> shift == network >> shift


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([4, 6]), st.data())
def test_client_networks_v4_and_v6(version: int, data) -> None:
    bits = 32 if version == 4 else 128
    prefix = data.draw(st.integers(0, bits))
    host = data.draw(st.integers(0, 2**bits - 1))
    network_int = host >> (bits - prefix) << (bits - prefix)
    kind = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    text = f"{kind(network_int)}/{prefix}"
    if version == 6 and prefix >= 96 and kind(network_int).ipv4_mapped is not None:
        with pytest.raises(CriterionError):
            client_network(text)
        return
    entry = RecogniseEntry(client=client_network(text))
    candidate = data.draw(st.integers(0, 2**bits - 1))
    expected = oracle_in(candidate, bits, network_int, prefix)
    address = client_address(str(kind(candidate)))
    if address is not None and address.version != version:  # an IPv4-mapped IPv6 address counts as IPv4
        expected = False
    assert entry.possible(parse_address(""), Origin(client=address)) == expected
    other = ipaddress.IPv6Address(candidate % 2**128) if version == 4 else ipaddress.IPv4Address(candidate % 2**32)
    if version == 6 or other.ipv4_mapped is None:  # a v6 address never meets a v4 network, nor v4 a v6 one
        assert not entry.possible(parse_address(""), Origin(client=other))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("192.0.2.1", "192.0.2.1"), ("[192.0.2.1]", "192.0.2.1"), ("IPv6:2001:db8::1", "2001:db8::1"),
     ("::ffff:192.0.2.1", "192.0.2.1"), ("fe80::1%eth0", "fe80::1"), ("unknown", None), ("", None), (None, None),
     ("localhost", None), ("192.0.2.300", None)],
)  # fmt: skip
def test_client_address_forms(text: str | None, expected: str | None) -> None:
    address = client_address(text)
    assert (str(address) if address is not None else None) == expected


# -- the command line: explain and lint take --sasl-login and --client ------------------------------------------


def cli_config(tmp_path) -> str:
    import yaml

    path = tmp_path / "amzguard.yml"
    channels = {"review": {"enabled": True, "recognise": [{"client": "192.0.2.0/24", "subject": SUBJECT}]},
                "reply": {"enabled": False}, "critical": {"enabled": False}}  # fmt: skip
    path.write_text(yaml.safe_dump({"channels": channels, "store": {"path": str(tmp_path / "s.sqlite")}}))
    return str(path)


def test_cli_options(tmp_path, capsys) -> None:
    from amzguard.cli import main

    config = cli_config(tmp_path)
    subject = f"--header=Subject: Ihre Meinung zu Ihrer Bestellung {ORDER}"
    assert main(["explain", "-c", config, "--sender", PHP, subject, "--client", "192.0.2.4", BUYER]) == 0
    assert "(recognised by client+subject)" in capsys.readouterr().out
    assert main(["explain", "-c", config, "--sender", PHP, subject, "--client", "198.51.100.4", BUYER]) == 0
    assert "refuse at RCPT TO (reason buyer-mail" in capsys.readouterr().out
    assert main(["explain", "-c", config, "--sendmail", "--client", "192.0.2.4", BUYER]) == 2
    assert "do not exist on the sendmail(1) path" in capsys.readouterr().err
    assert main(["explain", "-c", config, "--client", "shop.test", BUYER]) == 2
    assert "--client: not an IP address" in capsys.readouterr().err
    eml = tmp_path / "request.eml"
    eml.write_bytes(f"From: {PHP}\r\nTo: {BUYER}\r\nSubject: Ihre Meinung zu Ihrer Bestellung {ORDER}\r\n\r\n"
                    "Wie zufrieden sind Sie mit Ihrer Bestellung?\r\n".encode())  # fmt: skip (invented wording)
    assert main(["lint", "-c", config, "--client", "192.0.2.4", "--format", "json", str(eml)]) == 0
    import json

    [result] = json.loads(capsys.readouterr().out)
    assert [r["recognised_by"] for r in result["recipients"]] == [["client", "subject"]]
    assert main(["lint", "-c", config, str(eml)]) == 1  # without the client: order mail, refused


@settings(max_examples=200, deadline=None)
@given(TEXT.filter(lambda s: normal(s) != "" and len(s) < 60), st.sampled_from(["utf-8", "iso-8859-1"]), st.sampled_from(["q", "b"]))
def test_a_pattern_meets_the_decoded_subject_however_it_was_encoded(subject: str, charset: str, encoding: str) -> None:
    """The criterion sees what a reader sees: RFC 2047 words decoded, folding and white space runs collapsed."""
    from email.charset import BASE64, QP, Charset
    from email.header import Header

    try:
        subject.encode(charset)
    except UnicodeEncodeError:
        charset = "utf-8"
    chosen = Charset(charset)
    chosen.header_encoding = QP if encoding == "q" else BASE64
    encoded = Header(subject, chosen, maxlinelen=40).encode()  # folded into several encoded words
    message = facts(headers=[("Subject", encoded)])
    escaped = "".join(f"[{ch}]" if ch in "*?[" else ch for ch in normal(subject))
    assert message.subject() == normal(subject)
    if len(escaped) <= 200:
        assert SubjectPattern.compile(escaped).matches(message.subject())
        assert review([{"subject": escaped}]).decide(message, rcpt()).channel is Channel.REVIEW
