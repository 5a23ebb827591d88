"""Review requests recognised without a tag: by what the MTA already knows about a message.

Most shop software cannot add amzguard's tag header (magnalister's "e-mail to the buyer" sends through the
shop's own PHP ``mail()``), so ``channels.review.recognise`` lists entries, each a few criteria that must
all hold: the envelope sender, the SASL login (Postfix's ``{auth_authen}``), the client's address or
network, a pattern for the decoded subject. Pure: the facts come in ``MessageFacts.origin`` (adapter,
explain, lint) and the subject; nothing here does I/O.

How strong each criterion is (docs/design.md says it for admins): a subject pattern is met by any sender
allowed to use the channel; an envelope sender by every local user (``sendmail -f``) and every client
allowed to relay; a client address by every process on that host; a SASL login only by who has its
password; the tag only by who has the secret. Hence the order ``RecognisedBy`` lists them in.

Subject patterns are globs, not regular expressions: ``*`` any text, ``?`` one character, ``[...]`` a set,
matched against the whole decoded subject (white space runs collapsed to one space), in any letter case.
A shop admin copies the subject the plugin writes and puts ``*`` where the order id or the name goes; in
a regular expression the ``(``, ``.``, ``+`` and ``?`` such subjects contain would silently mean something
else, and a pattern that matches only part of the subject would be met by subjects it was never meant for.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from dataclasses import dataclass

from ..address import Address
from .model import MessageFacts, Origin, RecognisedBy

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_SUBJECT_PATTERN = 200
"""Characters of a subject pattern; Amazon's subjects are short (the shop's template plus the order id)."""


class CriterionError(ValueError):
    """A criterion that cannot be used; config.py turns it into a ConfigError naming the key."""


@dataclass(frozen=True, slots=True)
class SubjectPattern:
    """A glob over the decoded subject, compiled once at config load."""

    text: str
    regex: re.Pattern[str]

    @classmethod
    def compile(cls, text: str) -> SubjectPattern:
        if not text.strip() or len(text) > MAX_SUBJECT_PATTERN or not text.isprintable():
            raise CriterionError(f"a glob of at most {MAX_SUBJECT_PATTERN} printable characters")
        normal = " ".join(text.split()).casefold()
        if not normal.strip("*"):
            raise CriterionError("a pattern that does not match every subject (leave subject out instead)")
        try:
            regex = re.compile(fnmatch.translate(normal))
        except re.error as exc:
            raise CriterionError(f"a valid glob ({exc})") from None
        return cls(text, regex)

    def matches(self, subject: str) -> bool:
        """``subject``: decoded, white space collapsed (``MessageFacts.subject``)."""
        return self.regex.match(subject.casefold()) is not None


def client_network(text: str) -> IPNetwork:
    """An address (``192.0.2.7``, ``2001:db8::7``) or a network in CIDR form (``192.0.2.0/24``); host bits
    set (``192.0.2.7/24``) are refused: whoever wrote it meant a network or a host, and cannot both."""
    try:
        network = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise CriterionError(f"an IPv4 or IPv6 address or network in CIDR form ({exc})") from None
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            raise CriterionError(f"the IPv4 form ({mapped}/{network.prefixlen - 96}) instead of an IPv4-mapped one")
    return network


def client_address(text: str | None) -> IPAddress | None:
    """The client's address as the MTA reports it (``1.2.3.4``, ``IPv6:2001:db8::1``, ``[...]``,
    IPv4-mapped IPv6 as IPv4); None for anything that is no address (fail closed: no client criterion
    can be met)."""
    if not text:
        return None
    text = text.strip().strip("[]")
    if text[:5].casefold() == "ipv6:":
        text = text[5:]
    text = text.partition("%")[0]  # a scope id (fe80::1%eth0) names an interface, not another host
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def sender_matches(sender: Address, entry: str) -> bool:
    """``user@domain`` (that mailbox, any letter case) or ``@domain`` (any user of that domain)."""
    if sender.is_empty:
        return False
    entry = entry.casefold()
    if entry.startswith("@"):
        return sender.domain == entry[1:]
    return entry == f"{sender.local.casefold()}@{sender.domain}"


@dataclass(frozen=True, slots=True)
class RecogniseEntry:
    """One entry of ``channels.review.recognise``: every criterion given must hold (at least one is)."""

    sender: str | None = None
    sasl_login: str | None = None
    """Compared exactly: the name the SASL server reports, as the mail log's ``sasl_username=`` shows it."""
    client: IPNetwork | None = None
    subject: SubjectPattern | None = None

    def __post_init__(self) -> None:
        if not self.criteria():
            raise CriterionError("at least one of sender, sasl_login, client, subject")

    def criteria(self) -> tuple[RecognisedBy, ...]:
        given = {
            RecognisedBy.SASL: self.sasl_login is not None,
            RecognisedBy.CLIENT: self.client is not None,
            RecognisedBy.SENDER: self.sender is not None,
            RecognisedBy.SUBJECT: self.subject is not None,
        }
        return tuple(by for by, present in given.items() if present)

    def possible(self, sender: Address, origin: Origin) -> bool:
        """Whether the entry can still match, known what RCPT knows (sender, login, client; no subject)."""
        if self.sender is not None and not sender_matches(sender, self.sender):
            return False
        if self.sasl_login is not None and origin.sasl_login != self.sasl_login:
            return False
        if self.client is not None and not _in_network(origin.client, self.client):
            return False
        return True

    def matches(self, facts: MessageFacts) -> bool:
        if not self.possible(facts.sender, facts.origin):
            return False
        return self.subject is None or self.subject.matches(facts.subject())


def _in_network(address: IPAddress | None, network: IPNetwork) -> bool:
    # A missing address (the sendmail(1) path, no macro) meets no network; v4 never meets a v6 network.
    return address is not None and address.version == network.version and address in network


def recognising_entry(entries: tuple[RecogniseEntry, ...], facts: MessageFacts) -> RecogniseEntry | None:
    """The first entry the message meets, or None."""
    return next((entry for entry in entries if entry.matches(facts)), None)
