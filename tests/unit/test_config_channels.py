"""Config keys of the reply and critical channels, the review channel's order rules, the store, reason texts."""

from __future__ import annotations

from pathlib import Path

import pytest

from amzguard.config import DEFAULT_REASON_TEXTS, DEFAULT_STORE_PATH, ConfigError, load_config, parse_config
from amzguard.content import ContentAction, ContentRule
from amzguard.policy import Reason, ReplyCheck

REPO = Path(__file__).resolve().parents[2]


def test_defaults() -> None:
    config = parse_config(None)
    policy = config.policy
    assert policy.reply.enabled and policy.reply.check is ReplyCheck.REFERENCE
    assert policy.reply.reference_domains == () and policy.reply.subject_prefixes == ()
    assert policy.critical.enabled and policy.critical.markers == ("[Important]", "[Wichtig]")
    assert policy.review.one_per_order and policy.content.action(ContentRule.MISSING_ORDER_ID) is ContentAction.LOG
    assert config.store.path == DEFAULT_STORE_PATH
    assert (config.store.on_error, config.store.retention_days) == ("tempfail", 730)
    for reason, text in DEFAULT_REASON_TEXTS.items():
        assert policy.text_for(reason) == text
    assert policy.text_for(Reason.BUYER_MAIL) == policy.reply_text


def test_shipped_config_matches_the_defaults() -> None:
    shipped = load_config(REPO / "etc" / "amzguard.yml")
    defaults = parse_config(None)
    assert shipped.policy.reply == defaults.policy.reply
    assert shipped.policy.critical == defaults.policy.critical
    assert shipped.policy.reason_texts == defaults.policy.reason_texts
    assert shipped.store == defaults.store


def test_transport_map_has_a_line_per_reason_with_the_default_text() -> None:
    table = (REPO / "etc" / "postfix" / "amzguard-transport.regexp").read_text()
    for reason, text in DEFAULT_REASON_TEXTS.items():
        assert f"/@{reason.value}\\.amzguard\\.invalid$/" in table
        assert f"error:5.7.1 {text}" in table


def test_values_are_read(tmp_path: Path) -> None:
    config_file = tmp_path / "amzguard.yml"
    config_file.write_text(
        "channels:\n"
        "  review: {one_per_order: false, missing_order_id: refuse}\n"
        "  reply: {check: thread, reference_domains: [Mail.Amazon.Example.], subject_prefixes: ['Re:', 'AW:'],"
        " allowed_senders: ['@helpdesk.shop.test']}\n"
        "  critical: {enabled: false, marker: '[Wichtig]'}\n"
        "store: {path: data/optout.sqlite, on_error: continue, retention_days: 30}\n"
        "refusal: {opted_out_text: 'Opted out.'}\n"
    )
    config = load_config(config_file)
    policy = config.policy
    assert (policy.review.one_per_order, policy.content.action(ContentRule.MISSING_ORDER_ID)) == (False, ContentAction.REFUSE)
    assert policy.reply.check is ReplyCheck.THREAD
    assert policy.reply.reference_domains == ("mail.amazon.example",)
    assert policy.reply.subject_prefixes == ("Re:", "AW:")
    assert policy.reply.allowed_senders == ("@helpdesk.shop.test",)
    assert (policy.critical.enabled, policy.critical.markers) == (False, ("[Wichtig]",))  # the old key: that one only
    assert config.store.path == tmp_path.resolve() / "data" / "optout.sqlite"  # relative to the config file
    assert (config.store.on_error, config.store.retention_days) == ("continue", 30)
    assert policy.text_for(Reason.OPTED_OUT) == "Opted out."


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"channels": {"reply": {"enabled": 1}}}, "channels.reply.enabled: expected true or false"),
        ({"channels": {"reply": {"check": "strict"}}}, "channels.reply.check: expected 'reference' or 'thread'"),
        ({"channels": {"reply": {"reference_domains": ["not a domain"]}}}, "channels.reply.reference_domains"),
        ({"channels": {"reply": {"subject_prefixes": "Re:"}}}, "channels.reply.subject_prefixes"),
        ({"channels": {"reply": {"allowed_senders": ["x"]}}}, "channels.reply.allowed_senders"),
        ({"channels": {"reply": {"strict": True}}}, "channels.reply.strict: unknown key"),
        ({"channels": {"critical": {"marker": ""}}}, "channels.critical.marker"),
        ({"channels": {"critical": {"marker": "100% [x]"}}}, "channels.critical.marker"),
        ({"channels": {"critical": {"markers": []}}}, "channels.critical.markers: expected a non-empty list"),
        ({"channels": {"critical": {"markers": "[Important]"}}}, "channels.critical.markers"),
        ({"channels": {"critical": {"markers": ["[Important]", ""]}}}, "channels.critical.markers"),
        ({"channels": {"critical": {"markers": ["[Important]"], "marker": "[Wichtig]"}}},
         "channels.critical.marker: expected not set beside channels.critical.markers"),
        ({"channels": {"critical": {"enabled": "no"}}}, "channels.critical.enabled"),
        ({"channels": {"review": {"one_per_order": "yes"}}}, "channels.review.one_per_order"),
        ({"channels": {"review": {"missing_order_id": "drop"}}}, "channels.review.missing_order_id: expected 'allow'"),
        ({"store": {"path": ""}}, "store.path: expected a file path"),
        ({"store": {"on_error": "accept"}}, "store.on_error: expected 'tempfail' or 'continue'"),
        ({"store": {"retention_days": 0}}, "store.retention_days"),
        ({"store": {"database": "/x"}}, "store.database: unknown key"),
        ({"refusal": {"opted_out_text": "50% off"}}, "refusal.opted_out_text"),
        ({"refusal": {"duplicate_review_text": "a\nb"}}, "refusal.duplicate_review_text"),
        ({"refusal": {"no_order_id_text": ""}}, "refusal.no_order_id_text"),
    ],
)
def test_bad_values_name_the_key(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, source="amzguard.yml")
    assert message in str(caught.value)
