"""Recipient spellings for the differential (oracle) test: many ways to write one mailbox.

Why this exists: an MTA, not amzguard, decides where an envelope address goes. Postfix and Sendmail unquote
(``"q7x@marketplace.amazon.de"``), drop escapes (``q7x\\@…``), source routes (``@a,@b:…``) and trailing dots,
and unwrap routing forms to a fixpoint when the right-hand host is their own (``x@dom@[127.0.0.1]``,
``x%dom%localhost@localhost``, ``localhost!dom!x@mx.shop.test``). Wherever amzguard reads a spelling
differently from the MTA, shop mail leaks to an Amazon buyer. The oracle test sends these spellings through a
real MTA without amzguard to learn where each really goes, and through one with amzguard to check that no
buyer gets what no channel granted.

A generated :class:`Spelling` knows the mailbox it was built around and whether that is a buyer, but only for
reporting: the verdict always comes from the MTA (a spelling built around a buyer may well be routed to a
local host, or refused, by the MTA).

Two front ends share one builder, so a case found by one can be reproduced with the other:

* :func:`spellings` / :func:`mailboxes` / :func:`spellings_of`: hypothesis strategies (shrinkable draws);
* :class:`SeededSpellings`: a plain ``random.Random`` generator for long soak and bench runs.

Pure code: no I/O, no amzguard import (the test must not share the parser it checks). Every address here is
made up.
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from hypothesis import strategies as st

T = TypeVar("T")

#: Marketplace relay domains of the shipped config (etc/amzguard.yml), a sample big enough to vary the tld.
RELAY_DOMAINS: tuple[str, ...] = (
    "marketplace.amazon.com",
    "marketplace.amazon.de",
    "marketplace.amazon.co.uk",
    "marketplace.amazon.fr",
    "marketplace.amazon.it",
    "marketplace.amazon.es",
    "marketplace.amazon.co.jp",
    "marketplace.amazon.com.au",
    "marketplace.amazon.com.be",
    "marketplace.amazon.com.mx",
)
#: Subdomains Amazon uses below a relay domain (``m.marketplace.amazon.co.jp``).
RELAY_SUBDOMAINS: tuple[str, ...] = (
    "m.marketplace.amazon.co.jp", "m.marketplace.amazon.de", "mx.marketplace.amazon.fr")
#: magnalister's marker; the MTA sees it in any letter case.
MARKER = "blacklisted-"
#: Domains magnalister writes after the marker (not relay domains: the marker alone makes them buyers).
MARKED_DOMAINS: tuple[str, ...] = ("amazon.fr", "amazon.de", "amazon.co.uk", "example.net")
#: Mailboxes that are no buyer but look close to one (lookalike domains, a marker not at the start).
NON_BUYERS: tuple[str, ...] = (
    "partner@example.org",
    "orders@remote.example",
    "q7x2k9m4p1z8w3v5@notmarketplace.amazon.de",
    "q7x2k9m4p1z8w3v5@marketplace.amazon.de.example.com",
    "blacklisted@example.org",
    "info-blacklisted-12@example.org",
    "amazon@marketplace-amazon.example",
)
_ALIAS_CHARS = string.ascii_lowercase + string.digits


class Chooser(Protocol):
    """The few random decisions the builder takes; implemented over hypothesis draws and ``random.Random``."""

    def choice(self, options: Sequence[T]) -> T: ...

    def integer(self, low: int, high: int) -> int: ...

    def chance(self, percent: int) -> bool: ...


class RandomChooser:
    """:class:`Chooser` over a seeded ``random.Random`` (reproducible from the seed alone)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def choice(self, options: Sequence[T]) -> T:
        return options[self.rng.randrange(len(options))]

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def chance(self, percent: int) -> bool:
        return self.rng.randrange(100) < percent


class DrawChooser:
    """:class:`Chooser` over hypothesis ``draw``: every decision shrinks toward the plainest spelling."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw

    def choice(self, options: Sequence[T]) -> T:
        return self.draw(st.sampled_from(list(options)))

    def integer(self, low: int, high: int) -> int:
        return self.draw(st.integers(low, high))

    def chance(self, percent: int) -> bool:
        # Shrinks to False (the transformation not applied); integers() is not uniform, which only shifts
        # the mix, not what can be drawn.
        return self.draw(st.integers(0, 99)) >= 100 - percent


@dataclass(frozen=True)
class Context:
    """What one MTA instance counts as its own hosts, and where a remote routing hop points.

    ``local_hosts``: right-hand sides the MTA delivers itself, so it strips them and routes again
    (Postfix: ``$mydestination``, address literals of ``inet_interfaces``; Sendmail: class w). The oracle
    test lists what Debian's defaults make local (``localhost``, ``$myhostname``, ``[127.0.0.1]``) and the
    shop's own domain.
    """

    local_hosts: tuple[str, ...] = ("shop.test", "localhost", "mx.shop.test", "[127.0.0.1]")
    remote_hosts: tuple[str, ...] = ("relay.example", "a.example")
    relay_domains: tuple[str, ...] = RELAY_DOMAINS
    relay_subdomains: tuple[str, ...] = RELAY_SUBDOMAINS
    marked_domains: tuple[str, ...] = MARKED_DOMAINS
    non_buyers: tuple[str, ...] = NON_BUYERS
    comments: bool = True
    """Whether to write RFC 5322 comments: Postfix's parser reads them in envelopes too."""


@dataclass(frozen=True)
class Mailbox:
    """The mailbox a spelling is built around; ``buyer`` and ``marked`` only for reports."""

    local: str
    domain: str
    buyer: bool
    marked: bool

    @property
    def address(self) -> str:
        return f"{self.local}@{self.domain}"


@dataclass(frozen=True)
class Spelling:
    """One way to write a mailbox, and the constructions used (``forms``), in the order applied."""

    text: str
    mailbox: Mailbox
    forms: tuple[str, ...] = field(default=())

    @property
    def plain(self) -> bool:
        return not self.forms

    def describe(self) -> str:
        kind = "buyer" if self.mailbox.buyer else "other"
        return f"{self.text!r} (built around {kind} {self.mailbox.address}; {'+'.join(self.forms) or 'plain'})"


# --------------------------------------------------------------------------- mailboxes


def _alias(ch: Chooser) -> str:
    """An Amazon-style relay alias: 13-16 lower-case alphanumerics (made up)."""
    return "".join(ch.choice(_ALIAS_CHARS) for _ in range(ch.integer(13, 16)))


def _random_case(ch: Chooser, text: str) -> str:
    """Change the case of some letters (at least one when there is a letter)."""
    letters = [i for i, c in enumerate(text) if c.isalpha()]
    if not letters:
        return text
    chars = list(text)
    mode = ch.integer(0, 2)
    for i in letters:
        if mode == 0 or (mode == 2 and ch.chance(40)):
            chars[i] = chars[i].swapcase()
    if mode == 1:
        i = ch.choice(letters)
        chars[i] = chars[i].swapcase()
    return "".join(chars)


def build_mailbox(ch: Chooser, ctx: Context) -> Mailbox:
    kind = ch.integer(0, 9)
    if kind <= 4:  # a relay buyer, sometimes with a +case sub-address, sometimes below the relay domain
        local = _alias(ch)
        if ch.chance(20):
            local += f"+{ch.integer(100000, 999999)}"
        domain = ch.choice(ctx.relay_subdomains) if ch.chance(15) else ch.choice(ctx.relay_domains)
        return Mailbox(local, domain, buyer=True, marked=False)
    if kind <= 7:  # a marked buyer, on a relay or a plain domain, marker in any case
        marker = _random_case(ch, MARKER) if ch.chance(30) else MARKER
        rest = str(ch.integer(10000, 99999)) if ch.chance(60) else _alias(ch)
        domain = ch.choice(ctx.relay_domains) if ch.chance(25) else ch.choice(ctx.marked_domains)
        return Mailbox(marker + rest, domain, buyer=True, marked=True)
    local, domain = ch.choice(ctx.non_buyers).rsplit("@", 1)
    return Mailbox(local, domain, buyer=False, marked=False)


# --------------------------------------------------------------------------- spellings


def quote(text: str) -> str:
    """An RFC 5321 quoted string of ``text`` (backslash and quote escaped)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _host(ch: Chooser, ctx: Context) -> tuple[str, str]:
    """A routing hop: one of the MTA's own hosts (mostly) or a remote one; sometimes case-changed or dotted."""
    local = ch.chance(80)
    host = ch.choice(ctx.local_hosts if local else ctx.remote_hosts)
    tag = "local" if local else "remote"
    if ch.chance(25) and not host.startswith("["):
        host = _random_case(ch, host)
    if ch.chance(10) and not host.startswith("["):
        host += "."
    return host, tag


_ROUTES = ("at", "percent", "bang", "quoted-at")


def build_spelling(ch: Chooser, ctx: Context, mailbox: Mailbox) -> Spelling:
    """Write ``mailbox`` in one of many ways an MTA may read as (or route to) it."""
    forms: list[str] = []
    local, domain = mailbox.local, mailbox.domain
    if ch.chance(30):
        domain = _random_case(ch, domain)
        forms.append("case-domain")
    if ch.chance(15):
        local = _random_case(ch, local)
        forms.append("case-local")
    if ch.chance(10):
        domain += "."
        forms.append("trailing-dot")
    depth = ch.choice((0, 0, 0, 1, 1, 2, 3))
    for _ in range(depth):
        route = ch.choice(_ROUTES)
        host, tag = _host(ch, ctx)
        if route == "at":
            local = f"{local}@{domain}"
        elif route == "percent":
            local = f"{local}%{domain}"
        elif route == "bang":
            local = f"{domain}!{local}"
        else:
            local = quote(f"{local}@{domain}")
        domain = host
        forms.append(f"{route}:{tag}")
    render = ch.integer(0, 19)
    plain_local = '"' not in local and "\\" not in local
    if render == 0 and not local.startswith('"'):
        text = f"{quote(local)}@{domain}"
        forms.append("quote-local")
    elif render == 1 and plain_local and len(local) > 2:
        start = ch.integer(0, len(local) - 2)
        end = ch.integer(start + 1, len(local) - 1)
        text = f'{local[:start]}"{local[start:end]}"{local[end:]}@{domain}'
        forms.append("quote-partial")
    elif render == 2 and plain_local:
        at = ch.integer(0, len(local) - 1)
        text = f'"{local[:at]}\\{local[at:]}"@{domain}'
        forms.append("quoted-pair")
    elif render in (3, 4):
        text = quote(f"{local}@{domain}")
        forms.append("quote-whole")
    elif render == 5 and plain_local:
        text = f"{local}\\@{domain}"
        forms.append("escaped-at")
    elif render == 6 and ctx.comments:
        where = ch.integer(0, 2)
        comment = ch.choice(("(c)", "(shop)", "(a@b)", "(x(y))"))
        text = (f"{comment}{local}@{domain}", f"{local}{comment}@{domain}", f"{local}@{domain}{comment}")[where]
        forms.append("comment")
    else:
        text = f"{local}@{domain}"
    if ch.chance(8):
        route_hosts = ch.choice(("@a.example:", "@a.example,@b.example:", "@[127.0.0.1]:", "@localhost:"))
        text = route_hosts + text
        forms.append("source-route")
    return Spelling(text=text, mailbox=mailbox, forms=tuple(forms))


# --------------------------------------------------------------------------- front ends


def mailboxes(ctx: Context = Context()) -> st.SearchStrategy[Mailbox]:
    """Hypothesis: mailboxes (relay buyers, marked buyers, lookalike non-buyers)."""
    return st.composite(lambda draw: build_mailbox(DrawChooser(draw), ctx))()


def spellings_of(mailbox: Mailbox, ctx: Context = Context()) -> st.SearchStrategy[Spelling]:
    """Hypothesis: spellings of one given mailbox (shrinks toward the mailbox written plainly)."""
    return st.composite(lambda draw: build_spelling(DrawChooser(draw), ctx, mailbox))()


def spellings(ctx: Context = Context()) -> st.SearchStrategy[Spelling]:
    """Hypothesis: spellings of generated mailboxes."""
    return mailboxes(ctx).flatmap(lambda mailbox: spellings_of(mailbox, ctx))


class SeededSpellings:
    """The same spellings from a seed, without hypothesis (``make soak``, benchmarks)."""

    def __init__(self, seed: int, ctx: Context = Context()) -> None:
        self.ctx = ctx
        self.chooser = RandomChooser(random.Random(seed))

    def mailbox(self) -> Mailbox:
        return build_mailbox(self.chooser, self.ctx)

    def spell(self, mailbox: Mailbox) -> Spelling:
        return build_spelling(self.chooser, self.ctx, mailbox)

    def spelling(self) -> Spelling:
        return self.spell(self.mailbox())


def plain(mailbox: Mailbox) -> Spelling:
    """The mailbox written as it is (the control every run needs: it must behave as documented)."""
    return Spelling(text=mailbox.address, mailbox=mailbox)

