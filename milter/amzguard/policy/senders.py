"""Approved senders (``buyers.approved_senders``): Amazon relays mail to a buyer's relay address only from
the seller's registered address or one approved in Seller Central (Settings > Notification preferences >
Messaging Permissions), per marketplace (amazon-facts.md, confirmed). Mail from any other address is
refused there, after it left the shop, so the shop learns of it late or not at all; refused here, the
sender gets the 550 at once, with a text that says where to approve the address.

What is checked, for a buyer recipient at a relay domain whose message a channel grants: the envelope
sender and every From: mailbox must each be an approved address (``user@domain``) or of an approved domain
(``@domain``). Both, because which of the two Amazon's relay checks is not published: a message that passes
here passes whichever it is (fail closed). A mailer whose bounce address differs from its From: (a
third-party mailer's VERP address) needs both listed. A missing From:, two From: fields, or one without a
readable mailbox is not approved.

Pure: the entries come from the config, the addresses from the facts; the marketplace of a buyer from its
relay domain (policy/restriction.py). A marketplace for which nothing is approved (no own entries and no
``*`` entries) is not checked: the admin approved senders for other marketplaces only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import getaddresses

from ..address import Address, Recipient, normalise_domain, parse_address
from .restriction import ALL, buyer_marketplaces, valid_marketplace


@dataclass(frozen=True, slots=True)
class ApprovedSenders:
    """``buyers.approved_senders``: entries approved for every marketplace, and per marketplace."""

    everywhere: tuple[str, ...] = ()
    """Entries (``user@domain``, ``@domain``, case folded) approved for every marketplace (a list, or ``*``)."""
    by_marketplace: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Marketplace (``de``, ``co.uk``) and the entries approved for it beside ``everywhere``."""

    def active(self) -> bool:
        """Whether any sender is approved at all (empty: the check is off)."""
        return bool(self.everywhere or self.by_marketplace)

    def entries_for(self, marketplace: str | None) -> tuple[str, ...]:
        """What is approved for one marketplace (None: a relay domain of no known marketplace)."""
        own = next((entries for name, entries in self.by_marketplace if name == marketplace), ())
        return self.everywhere + own

    def checks(self, recipient: Recipient) -> tuple[tuple[str, ...], ...]:
        """The entry lists this recipient's sender must meet, one per marketplace it may be routed to
        (empty: not checked — no relay recipient, or nothing approved for its marketplace)."""
        if not recipient.relay or not self.active():
            return ()
        if not self.by_marketplace:
            return (self.everywhere,)  # a list: the same for every marketplace, none to look up
        marketplaces: tuple[str | None, ...] = buyer_marketplaces(recipient) or (None,)
        return tuple(entries for entries in map(self.entries_for, marketplaces) if entries)


NO_APPROVED_SENDERS = ApprovedSenders()


def listed(address: Address, entries: tuple[str, ...]) -> bool:
    """Whether an address is one of the entries or of one of their ``@domain``s (an empty list: no).
    ``entries`` are case folded, as the config gives them (``_entries``)."""
    domain = address.domain
    if not domain:
        return False
    return f"{address.local.casefold()}@{domain}" in entries or f"@{domain}" in entries


_ATOMS = r'[^\s"(),:;<>@\[\]\\]+'
_SIMPLE_FROM = re.compile(
    rf'\s*(?:(?:[^"(),:;<>@\[\]\\]*|"[^"\\]*")\s*<(?P<angle>{_ATOMS}@{_ATOMS})>|(?P<bare>{_ATOMS}@{_ATOMS}))\s*'
)
"""``Name <local@domain>``, ``"Name, Inc." <local@domain>`` or ``local@domain``: nearly every shop mailer's
From:. Read without email.utils (9.4 us a field, most of the check's cost); anything else goes to it.
A property test checks both readings agree (tests/unit/test_senders.py)."""


def from_mailboxes(from_values: list[str]) -> tuple[Address, ...] | None:
    """The mailboxes of the message's one From: field, or None when it has none, several fields, or a
    mailbox that cannot be read (then nothing can be approved)."""
    if len(from_values) != 1:
        return None
    simple = _SIMPLE_FROM.fullmatch(from_values[0])
    if simple is not None:
        return (parse_address(simple["angle"] or simple["bare"]),)
    return parsed_from_mailboxes(from_values[0])


def parsed_from_mailboxes(value: str) -> tuple[Address, ...] | None:
    """``from_mailboxes`` of any field, by email.utils' parser."""
    pairs = getaddresses([value])
    addresses = tuple(parse_address(addr) for _, addr in pairs if addr)
    if not addresses or len(addresses) != len(pairs) or any(not a.domain or not a.local for a in addresses):
        return None
    return addresses


def envelope_approved(approved: ApprovedSenders, sender: Address, recipient: Recipient) -> bool:
    """Whether the envelope sender may write to this buyer (the null sender never may)."""
    return all(listed(sender, entries) for entries in approved.checks(recipient))


def sender_approved(approved: ApprovedSenders, sender: Address, from_values: list[str], recipient: Recipient) -> bool:
    """Whether envelope sender and From: may both write to this buyer (``from_values``: the From: fields)."""
    checks = approved.checks(recipient)
    if not checks:
        return True
    mailboxes = from_mailboxes(from_values)
    if mailboxes is None:
        return False
    return all(listed(sender, entries) and all(listed(m, entries) for m in mailboxes) for entries in checks)


def unapproved(approved: ApprovedSenders, senders: tuple[str, ...]) -> tuple[str, ...]:
    """The entries of a channel's ``allowed_senders`` (or a recognise entry's sender) that no list of
    ``approved`` covers: mail from them to relay buyers is refused wherever the check applies, so the config
    says two contrary things (``@domain`` is covered only by the same ``@domain``, not by some of its users)."""
    if not approved.active():
        return ()
    lists = (approved.everywhere, *(entries for _, entries in approved.by_marketplace))
    missing = []
    for sender in senders:
        (entry,) = _entries((sender,))
        if entry.startswith("@"):
            covered = any(entry in entries for entries in lists)
        else:
            covered = any(listed(parse_address(entry), entries) for entries in lists)
        if not covered:
            missing.append(sender)
    return tuple(missing)


def parse_approved(value: object) -> ApprovedSenders:
    """The config value (already shape-checked by the key table): a list approves for every marketplace,
    a mapping per marketplace (``*``: every marketplace). Marketplace names as ``valid_marketplace``."""
    if isinstance(value, list | tuple):
        return ApprovedSenders(everywhere=_entries(value))
    everywhere: tuple[str, ...] = ()
    by_marketplace: dict[str, tuple[str, ...]] = {}
    for name, entries in dict(value or {}).items():  # type: ignore[call-overload]
        marketplace = valid_marketplace(str(name))
        if marketplace == ALL:
            everywhere += _entries(entries)
        elif marketplace is not None:
            by_marketplace[marketplace] = by_marketplace.get(marketplace, ()) + _entries(entries)
    return ApprovedSenders(everywhere=tuple(dict.fromkeys(everywhere)),
                           by_marketplace=tuple((m, tuple(dict.fromkeys(e))) for m, e in by_marketplace.items()))


def _entries(values: object) -> tuple[str, ...]:
    """Entries as ``listed`` compares them: local part case folded, domain as addresses have it."""
    entries = []
    for value in values or ():  # type: ignore[attr-defined]
        local, _, domain = str(value).strip().rpartition("@")
        entries.append(f"{local.casefold()}@{normalise_domain(domain)}")
    return tuple(dict.fromkeys(entries))
