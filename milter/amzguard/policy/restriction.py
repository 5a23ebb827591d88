"""Amazon's messaging restriction: while it holds, proactive messages (review requests, critical messages)
to that marketplace's buyers are refused here (``messaging-restricted``), because Amazon drops them anyway
and each one sent into a restriction is one more mark against the account; replies still pass, as they do
at Amazon (amazon-facts.md: "your account was restricted from sending proactive messages").

Pure: which marketplace a buyer address or a notice belongs to, and whether a restriction covers it. The
store keeps the restrictions (table ``restriction``); the policy gets the ones in force as a fact
(``MessageFacts.restricted``).

A marketplace is named by its Amazon domain's suffix after ``amazon.``: ``de``, ``co.uk``, ``com``,
``co.jp``, ``com.be``. ``ALL`` stands for a restriction whose notice does not say which marketplace.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..address import Recipient

ALL = "*"
"""The marketplace of a restriction that holds for every marketplace."""

DEFAULT_DAYS = 30
"""Tools report restrictions of 5 to 30 days (amazon-facts.md); the longest, so none is lifted too early."""

NOTICE_TEXT = "your account was restricted from sending proactive messages"
"""The known English note (amazon-facts.md), the default of ``restriction.notice_phrases``."""

_MARKETPLACE_RE = re.compile(r"(?:^|\.)amazon\.((?:[a-z]{2,3}\.)?[a-z]{2,3})\.?$")
_DOMAIN_RE = re.compile(r"(?<![a-z0-9.-])(?:[a-z0-9-]+\.)*amazon\.(?:[a-z]{2,3}\.)?[a-z]{2,3}(?![a-z0-9-])")


@dataclass(frozen=True, slots=True)
class Restriction:
    marketplace: str
    """A marketplace suffix (``de``) or ``ALL``."""
    until: int
    """Unix time the restriction ends."""
    source: str = "cli"
    """``cli`` (``amzguard restriction add``) or ``notice`` (learned by ``optout learn``)."""
    added_at: int = 0

    def in_force(self, now: float) -> bool:
        """Whether it still holds at unix time ``now`` (the store's SQL asks the same: ``until > now``)."""
        return self.until > now


@functools.lru_cache(maxsize=1024)
def marketplace_of(domain: str) -> str | None:
    """The marketplace of an Amazon domain (``marketplace.amazon.co.uk`` → ``co.uk``), else None. Cached: a
    few domains (Amazon's ~22 and the shop's) are asked for every buyer decision (0.42 us a regex search)."""
    found = _MARKETPLACE_RE.search(domain.casefold().strip())
    return found.group(1) if found else None


def valid_marketplace(text: str) -> str | None:
    """``text`` as a marketplace name (``de``, ``co.uk``, ``*``; ``amazon.de`` is taken too), or None."""
    text = text.casefold().strip()
    if text in (ALL, "all"):
        return ALL
    if re.fullmatch(r"(?:[a-z]{2,3}\.)?[a-z]{2,3}", text):
        return text
    return marketplace_of(text)


def notice_marketplaces(sender_domains: Iterable[str], text: str) -> tuple[str, ...]:
    """The marketplaces a restriction notice is about: the domain it came from (``amazon.de`` →
    ``de``), else the Amazon domains written in it if they name exactly one marketplace, else ``ALL``
    (a notice that names several or none restricts everything: fail closed)."""
    for domain in sender_domains:
        found = marketplace_of(domain)
        if found:
            return (found,)
    named = {m for m in (marketplace_of(d) for d in _DOMAIN_RE.findall(text.casefold())) if m}
    return (named.pop(),) if len(named) == 1 else (ALL,)


def restriction_notice(text: str, phrases: Iterable[str], sender_domains: Iterable[str]) -> tuple[str, ...] | None:
    """The marketplaces a message restricts if it is Amazon's restriction notice (one of ``phrases``, which
    are case folded with single spaces, in its text), else None."""
    flat = " ".join(text.casefold().split())
    if not any(phrase in flat for phrase in phrases):
        return None
    return notice_marketplaces(sender_domains, text)


def is_restricted(restricted: frozenset[str], recipient: Recipient) -> bool:
    """Whether a restriction in force (``restricted``: their marketplaces) covers this buyer."""
    if not restricted:
        return False
    if ALL in restricted:
        return True
    return any(marketplace in restricted for marketplace in buyer_marketplaces(recipient))


def buyer_marketplaces(recipient: Recipient) -> tuple[str, ...]:
    """The marketplaces of a buyer recipient: of each form it may be routed to, and of its unmarked
    address (``blacklisted-x@marketplace.amazon.de`` → ``de``); empty for an address at no Amazon domain."""
    domains = [form.domain for form in (recipient.address, *recipient.forms)]
    if recipient.unmarked:
        domains.append(recipient.unmarked.rpartition("@")[2])
    return tuple(dict.fromkeys(m for m in map(marketplace_of, domains) if m))
