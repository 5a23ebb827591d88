"""What the content rules judge and what they say: rule names, actions, findings, settings.

Pure data, no I/O. The rule and action enums are also the labels of
``amzguard_content_findings_total{rule,action}``, so a new rule is a new enum member and shows up in the
metrics, the config and the docs by itself.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from functools import lru_cache


class ContentRule(StrEnum):
    """One thing Amazon forbids in a message to a buyer (docs/content-rules.md says why each exists)."""

    LIST_UNSUBSCRIBE = "list-unsubscribe"
    """``List-Unsubscribe`` / ``List-Unsubscribe-Post`` header fields (shop mailers add them on their own)."""
    UNSUBSCRIBE_LINK = "unsubscribe-link"
    """An opt-out / unsubscribe link in the body."""
    TRACKING_PIXEL = "tracking-pixel"
    """A remote image of 1-2 px, or an image at a typical open-tracking URL."""
    HTTP_IMAGE = "http-image"
    """An image loaded over plain ``http:``."""
    FOREIGN_LINK = "foreign-link"
    """A link to a host outside the allow-list (Amazon's sites and carriers' tracking pages by default)."""
    EMAIL_ADDRESS = "email-address"
    """An e-mail address in the text (or a ``mailto:`` link)."""
    PHONE_NUMBER = "phone-number"
    """A phone number in the text (or a ``tel:`` link)."""
    EMOJI = "emoji"
    """An emoji in the subject or the text."""
    ATTACHMENT_SIZE = "attachment-size"
    """Attachments larger than the configured total (10 MB, Amazon's limit)."""
    ATTACHMENT_TYPE = "attachment-type"
    """An attachment of a type outside the configured list."""
    MISSING_ORDER_ID = "missing-order-id"
    """A proactive message (review request, critical message) without the 17-digit order id."""
    INCENTIVE_WORDING = "incentive-wording"
    """A reward for a review, asking for a positive/5-star review only, asking to change or remove one."""


class ContentAction(StrEnum):
    """What a rule's finding does to the message for that buyer."""

    OFF = "off"
    """The rule is not evaluated at all (and needs nothing read for it)."""
    LOG = "log"
    """Logged and counted; the message passes."""
    REFUSE = "refuse"
    """The buyer recipient is refused with the findings in the reply text."""
    REMOVE = "remove"
    """The header field is deleted and the message passes (only ``list-unsubscribe``)."""


REMOVABLE_RULES: frozenset[ContentRule] = frozenset({ContentRule.LIST_UNSUBSCRIBE})
"""Rules whose evidence is a header field that can simply go; ``remove`` is refused for the others."""

UNSUBSCRIBE_HEADERS: tuple[str, ...] = ("list-unsubscribe", "list-unsubscribe-post")


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing a rule found: which rule, what it does, the evidence, and where (line in the message).

    ``line`` counts from 1 at the first header line; 0 when the position is not known (a header given
    without its line, as the milter receives them).
    """

    rule: ContentRule
    action: ContentAction
    evidence: str
    line: int = 0
    header: str | None = None
    """For ``remove``: the header field name to delete (as written in the message)."""

    def text(self) -> str:
        """``rule: evidence``, the form used in decision lines and refusal texts."""
        return f"{self.rule.value}: {self.evidence}"


DEFAULT_ACTIONS: dict[ContentRule, ContentAction] = {
    ContentRule.LIST_UNSUBSCRIBE: ContentAction.REMOVE,
    ContentRule.UNSUBSCRIBE_LINK: ContentAction.REFUSE,
    ContentRule.TRACKING_PIXEL: ContentAction.REFUSE,
    ContentRule.HTTP_IMAGE: ContentAction.REFUSE,
    ContentRule.FOREIGN_LINK: ContentAction.REFUSE,
    ContentRule.EMAIL_ADDRESS: ContentAction.REFUSE,
    ContentRule.PHONE_NUMBER: ContentAction.REFUSE,
    ContentRule.EMOJI: ContentAction.REFUSE,
    ContentRule.ATTACHMENT_SIZE: ContentAction.REFUSE,
    ContentRule.ATTACHMENT_TYPE: ContentAction.REFUSE,
    # Log, not refuse: it keeps what channels.review.missing_order_id: allow did before the rule existed
    # (review requests without an id passed), and critical messages were never checked. Amazon wants the
    # id in every proactive message: set refuse once your templates pass `amzguard lint`.
    ContentRule.MISSING_ORDER_ID: ContentAction.LOG,
    # Wording rules misfire (a buyer's quoted complaint, "no reward is offered"): log only by default.
    ContentRule.INCENTIVE_WORDING: ContentAction.LOG,
}

# Amazon's own sites (the facts disagree on links to them; a review request usually links Amazon's review
# page, so they pass by default) and carriers' tracking pages (allowed by Amazon's German G1701 page).
# Subdomains match, label-aligned: track.amazon.de, nolp.dhl.de.
AMAZON_SITES: tuple[str, ...] = tuple(
    f"amazon.{tld}"
    for tld in (
        "com", "de", "co.uk", "fr", "it", "es", "nl", "se", "pl", "com.be", "co.jp", "ca", "com.mx", "in",
        "com.br", "com.au", "com.tr", "eg", "ae", "sa", "sg", "ie",
    )
)  # fmt: skip
CARRIER_SITES: tuple[str, ...] = (
    "dhl.de", "dhl.com", "dhl.co.uk", "dhl.fr", "dhl.it", "dhl.es", "dhl.nl", "deutschepost.de",
    "dpd.de", "dpd.com", "dpd.co.uk", "dpd.fr", "dpd.nl", "dpdgroup.com", "ups.com", "fedex.com", "tnt.com",
    "gls-group.eu", "gls-group.com", "gls-pakete.de", "gls-italy.com", "gls-spain.es", "gls-france.com",
    "myhermes.de", "hermesworld.com", "evri.com", "royalmail.com", "parcelforce.com", "usps.com",
    "laposte.fr", "colissimo.fr", "chronopost.fr", "mondialrelay.fr", "poste.it", "brt.it", "sda.it",
    "correos.es", "seur.com", "mrw.es", "postnl.nl", "postnl.com", "bpost.be", "postnord.se",
    "postnord.com", "inpost.pl", "canadapost-postescanada.ca", "canadapost.ca", "auspost.com.au",
    "japanpost.jp", "post.japanpost.jp",
)  # fmt: skip
DEFAULT_LINK_DOMAINS: tuple[str, ...] = AMAZON_SITES + CARRIER_SITES

DEFAULT_ATTACHMENT_TYPES: tuple[str, ...] = ("application/pdf", "image/jpeg", "image/png", "text/plain")
"""Invoices, instructions, warranty and labels are PDFs or photos/scans in practice; Amazon publishes no
list of formats, so this is a choice (and configurable). ``image/*`` style wildcards are allowed."""

DEFAULT_MAX_ATTACHMENT_BYTES = 10 * 1000 * 1000
"""Amazon's "10 MB per message" (reported), taken as decimal megabytes, the smaller reading."""

DEFAULT_MAX_BYTES = 256 * 1024
"""Bytes of text parts decoded and searched; the same bound the order id search always had. Attachments
are measured beyond it (their bytes counted, never kept)."""

LANGUAGES: tuple[str, ...] = ("en", "de", "fr", "it", "es")


@dataclass(frozen=True, slots=True)
class ContentSettings:
    """The ``content:`` section. Defaults here are the shipped defaults (config.py parses into this)."""

    actions: tuple[tuple[ContentRule, ContentAction], ...] = tuple(DEFAULT_ACTIONS.items())
    max_bytes: int = DEFAULT_MAX_BYTES
    link_domains: tuple[str, ...] = DEFAULT_LINK_DOMAINS
    """Hosts (and their subdomains) that links may point to; the shop's own domains are not in it."""
    address_domains: tuple[str, ...] = ()
    """E-mail address domains that are no finding: the buyer relay domains (a reply quoting the buyer's
    own relay address in its attribution line); filled from ``buyers.relay_domains``."""
    attachment_types: tuple[str, ...] = DEFAULT_ATTACHMENT_TYPES
    max_attachment_bytes: int = DEFAULT_MAX_ATTACHMENT_BYTES
    languages: tuple[str, ...] = LANGUAGES
    """Languages whose built-in incentive phrases are used."""
    phrases: tuple[str, ...] | None = None
    """Replaces the built-in phrase lists when set (``content.wording.phrases``)."""
    extra_phrases: tuple[str, ...] = ()
    """Added to the built-in (or replacing) phrases."""
    skip_quoted: bool = True
    """Quoted text (``>`` lines, ``<blockquote>``) is the buyer's own words in a reply: not judged."""

    def action(self, rule: ContentRule) -> ContentAction:
        for listed, action in self.actions:
            if listed is rule:
                return action
        return DEFAULT_ACTIONS[rule]

    def table(self) -> dict[ContentRule, ContentAction]:
        """Every rule's action (the defaults filled in)."""
        return {**DEFAULT_ACTIONS, **dict(self.actions)}

    def active(self) -> frozenset[ContentRule]:
        """The rules whose action is not ``off`` (asked several times per message: cached per action set)."""
        return _active(self.actions)


    def with_actions(self, **changes: ContentAction) -> ContentSettings:
        """A copy with some actions changed (keyword = rule name with underscores); for tests and bench."""
        table = dict(self.actions)
        for key, action in changes.items():
            table[ContentRule(key.replace("_", "-"))] = action
        return replace(self, actions=tuple(table.items()))


@lru_cache(maxsize=64)
def _active(actions: tuple[tuple[ContentRule, ContentAction], ...]) -> frozenset[ContentRule]:
    table = {**DEFAULT_ACTIONS, **dict(actions)}
    return frozenset(rule for rule, action in table.items() if action is not ContentAction.OFF)


BODY_RULES: frozenset[ContentRule] = frozenset(set(ContentRule) - {ContentRule.LIST_UNSUBSCRIBE})
"""Rules that need the body (all but the header rule; ``missing-order-id`` needs it only when the subject
has no order id)."""


@dataclass(frozen=True, slots=True)
class ContentVerdict:
    """All findings for one message, and what they mean together."""

    findings: tuple[Finding, ...] = ()
    truncated: bool = False
    """The text was cut at ``max_bytes``: rules saw only the first part (attachments were still measured)."""
    order_id: str | None = None
    """The first order id seen (subject first, then the text), for the order-id rule and the review channel."""

    @property
    def refused(self) -> bool:
        return any(f.action is ContentAction.REFUSE for f in self.findings)

    def by_action(self, action: ContentAction) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.action is action)
