"""The ``content:`` section: defaults, every key, errors that name the key, the old missing_order_id key."""

from __future__ import annotations

import pytest

from amzguard.config import DEFAULT_RELAY_DOMAINS, ConfigError, parse_config
from amzguard.content import (
    DEFAULT_ACTIONS,
    DEFAULT_ATTACHMENT_TYPES,
    DEFAULT_LINK_DOMAINS,
    ContentAction,
    ContentRule,
)


def test_defaults() -> None:
    content = parse_config(None).content
    assert {rule: content.action(rule) for rule in ContentRule} == DEFAULT_ACTIONS
    assert content.action(ContentRule.LIST_UNSUBSCRIBE) is ContentAction.REMOVE
    assert content.action(ContentRule.INCENTIVE_WORDING) is ContentAction.LOG
    assert content.action(ContentRule.MISSING_ORDER_ID) is ContentAction.LOG
    assert content.link_domains == DEFAULT_LINK_DOMAINS and "dhl.de" in content.link_domains
    assert content.attachment_types == DEFAULT_ATTACHMENT_TYPES
    assert (content.max_bytes, content.max_attachment_bytes, content.skip_quoted) == (262144, 10_000_000, True)
    assert content.address_domains == DEFAULT_RELAY_DOMAINS


def test_every_key() -> None:
    content = parse_config(
        {
            "buyers": {"relay_domains": ["marketplace.amazon.de"]},
            "content": {
                "max_bytes": 65536,
                "skip_quoted": False,
                "rules": {"emoji": "log", "foreign_link": "off", "list_unsubscribe": "refuse"},
                "links": {"allowed_domains": ["Amazon.DE."], "extra_domains": ["shop.example"]},
                "attachments": {"max_total_bytes": 5_000_000, "types": ["application/pdf", "Image/*"]},
                "wording": {"languages": ["de"], "phrases": ["gratis"], "extra_phrases": ["bonus"]},
            },
        }
    ).content
    assert content.action(ContentRule.EMOJI) is ContentAction.LOG
    assert ContentRule.FOREIGN_LINK not in content.active()
    assert content.action(ContentRule.LIST_UNSUBSCRIBE) is ContentAction.REFUSE
    assert content.link_domains == ("amazon.de", "shop.example")
    assert content.attachment_types == ("application/pdf", "image/*")
    assert (content.max_bytes, content.max_attachment_bytes, content.skip_quoted) == (65536, 5_000_000, False)
    assert (content.languages, content.phrases, content.extra_phrases) == (("de",), ("gratis",), ("bonus",))
    assert content.address_domains == ("marketplace.amazon.de",)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"content": {"rules": {"emoji": "remove"}}}, "content.rules.emoji: expected one of off, log, refuse"),
        ({"content": {"rules": {"emojis": "log"}}}, "content.rules.emojis: unknown key"),
        ({"content": {"rules": {"emoji": True}}}, "content.rules.emoji: expected"),
        ({"content": {"max_bytes": 10}}, "content.max_bytes: expected an integer number of bytes 4096..16777216"),
        ({"content": {"links": {"allowed_domains": ["not a domain"]}}}, "content.links.allowed_domains: expected"),
        ({"content": {"attachments": {"types": ["pdf"]}}}, "content.attachments.types: expected a list of MIME types"),
        ({"content": {"attachments": {"max_total_bytes": 0}}}, "content.attachments.max_total_bytes: expected"),
        ({"content": {"wording": {"languages": ["nl"]}}}, "content.wording.languages: expected a list of languages"),
        ({"content": {"wording": {"phrases": [""]}}}, "content.wording.phrases: expected a list of phrases"),
        ({"content": "on"}, "content: expected a mapping"),
    ],
)
def test_bad_values_name_the_key(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, source="amzguard.yml")
    assert str(caught.value).startswith(f"amzguard.yml: {message}")


def test_old_missing_order_id_key_is_folded_into_the_rule() -> None:
    def rule(data: object) -> ContentAction:
        return parse_config(data).content.action(ContentRule.MISSING_ORDER_ID)

    assert rule({"channels": {"review": {"missing_order_id": "allow"}}}) is ContentAction.LOG
    assert rule({"channels": {"review": {"missing_order_id": "refuse"}}}) is ContentAction.REFUSE
    agreeing = {"channels": {"review": {"missing_order_id": "refuse"}}, "content": {"rules": {"missing_order_id": "refuse"}}}
    assert rule(agreeing) is ContentAction.REFUSE
    with pytest.raises(ConfigError, match="content.rules.missing_order_id: expected the same as channels.review"):
        rule({"channels": {"review": {"missing_order_id": "allow"}}, "content": {"rules": {"missing_order_id": "refuse"}}})
