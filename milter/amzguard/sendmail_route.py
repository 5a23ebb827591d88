"""Which MTA is on a milter connection, and where Sendmail routes a recipient. Pure: no I/O, no pymilter.

Sendmail resolves every recipient through ruleset 0 to a mailer triple (``$#mailer $@host $:user``)
before the milter hears of it, and sends that triple at RCPT as ``{rcpt_mailer}``, ``{rcpt_host}`` and
``{rcpt_addr}`` (its default ``confMILTER_MACROS_ENVRCPT``). Measured on Sendmail 8.17.1.9 with the
shipped snippet (docs/sendmail.md has the whole table): ``<"q7x@marketplace.amazon.de">``,
``<x%marketplace.amazon.de%[127.0.0.1]@[127.0.0.1]>``, ``<"x@marketplace.amazon.de"@[127.0.0.1]>``,
``<mx.shop.test!marketplace.amazon.de!x>``, ``<@a.example,@b.example:q7x@…>`` and
``<q7x(comment)@marketplace.amazon.de.>`` all arrive as mailer ``relay`` with ``{rcpt_addr}`` the address
the relay was then given (``q7x@marketplace.amazon.de`` / ``x@marketplace.amazon.de``); ``<root@mx.shop.test>``
arrives as mailer ``local`` with ``{rcpt_addr}`` ``root``. So behind Sendmail amzguard judges what Sendmail
will do, not its own re-parse of the RCPT text, and fails closed where Sendmail said nothing it can use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from enum import StrEnum

from .address import Address, BuyerPatterns, Recipient, classify_recipient


class Mta(StrEnum):
    """The MTA on the other end of a milter connection, told by the connect macro ``v``."""

    POSTFIX = "postfix"
    SENDMAIL = "sendmail"
    UNKNOWN = "unknown"


_SENDMAIL_VERSION = re.compile(r"[0-9]+\.[0-9]+(?:\.[0-9]+)*(?:/[0-9][0-9.]*)?")
"""Sendmail's ``$v``: its version alone (``8.17.1.9``; some builds append a config version, ``/8.17.1``)."""


def mta_of(version: str | None) -> Mta:
    """Tell Postfix from Sendmail by the connect macro ``v``; anything else is UNKNOWN.

    Postfix sends ``v`` by default (``milter_connect_macros``) as ``$mail_name $mail_version``,
    "Postfix 3.7.11"; Sendmail sends it only when asked (the shipped etc/sendmail/amzguard.mc adds it to
    ``confMILTER_MACROS_CONNECT``) and then as its bare version, "8.17.1.9". ``j`` and ``{daemon_name}``
    cannot tell them apart: both are the host name or a name the admin chose on either MTA.
    """
    if not version:
        return Mta.UNKNOWN
    text = version.strip()
    if text.startswith("Postfix"):
        return Mta.POSTFIX
    if _SENDMAIL_VERSION.fullmatch(text):
        return Mta.SENDMAIL
    return Mta.UNKNOWN


class RouteKind(StrEnum):
    RELAY = "relay"
    """Sendmail hands the message to another host: ``address`` is the address it relays to."""
    LOCAL = "local"
    """Delivered on this host (``address`` is the local user, without a domain)."""
    UNRESOLVED = "unresolved"
    """Sendmail said nothing amzguard can trust (macro missing, a mailer it does not know, ``error``):
    judge the RCPT text by over-approximation and refuse what may be a buyer (fail closed)."""


RELAY_MAILERS = frozenset({"relay", "smtp", "esmtp", "smtp8", "dsmtp"})
"""The cf's SMTP mailers (cf/mailer/smtp.m4): their ``$:`` is the whole address given to the next hop."""

LOCAL_MAILERS = frozenset({"local"})
"""cf/mailer/local.m4's ``local``: its ``$:`` is the user on this host. ``prog`` and the ``*file*`` and
``*include*`` pseudo-mailers arise only from aliases and .forward at delivery (an SMTP RCPT of ``|cmd``
is refused: "Cannot mail directly to programs"), so they are not expected here and fail closed."""


@dataclass(frozen=True, slots=True)
class SendmailRoute:
    """What Sendmail said it will do with one recipient."""

    kind: RouteKind
    address: str
    """RELAY: the address relayed to; LOCAL: the local user; UNRESOLVED: empty."""
    why: str = ""
    """For UNRESOLVED: what was missing or unknown, for the log."""


def sendmail_route(mailer: str | None, host: str | None, addr: str | None) -> SendmailRoute:
    """Read Sendmail's ``{rcpt_mailer}``, ``{rcpt_host}``, ``{rcpt_addr}`` for one recipient.

    ``error`` (``$#error``) is a recipient Sendmail refuses itself; it does not reach a milter that, like
    amzguard, does not negotiate SMFIP_RCPT_REJ, so seeing it means something unexpected: fail closed.
    """
    if mailer is None or addr is None:
        missing = [name for name, value in (("{rcpt_mailer}", mailer), ("{rcpt_addr}", addr)) if value is None]
        return SendmailRoute(RouteKind.UNRESOLVED, "", f"no {' '.join(missing)} from Sendmail")
    name = mailer
    value = addr.strip()
    if not value:
        return SendmailRoute(RouteKind.UNRESOLVED, "", f"empty {{rcpt_addr}} for mailer {name}")
    if name in RELAY_MAILERS:
        if not host:
            # Ruleset 0 always names a host for the SMTP mailers; without one the triple is not what we know.
            return SendmailRoute(RouteKind.UNRESOLVED, "", f"mailer {name} without {{rcpt_host}}")
        return SendmailRoute(RouteKind.RELAY, value)
    if name in LOCAL_MAILERS:
        return SendmailRoute(RouteKind.LOCAL, value)
    return SendmailRoute(RouteKind.UNRESOLVED, "", f"mailer {name} is not one amzguard knows")


def sendmail_delete_argument(envrcpt: str) -> str:
    """The delete-recipient argument that removes a recipient behind Sendmail: its envrcpt text, in <>.

    Sendmail's ``smfi_delrcpt`` (milter.c -> recipient.c ``removefromlist``) parses the argument through
    rulesets 3 and 0 like a RCPT and removes the queued recipient with the same mailer, user and host
    (``sameaddr``) or the same printable address. The text Sendmail itself parsed at RCPT therefore
    resolves to the same triple: on the 30 buyer spellings of tests/fixtures/sendmail_recipients.tsv and
    an RCPT without brackets, the envrcpt text removed every one (so did ``{rcpt_addr}``); another
    spelling of the same mailbox removes it too, but the user is compared case-sensitively
    (``<q7x@…>`` does not remove ``<Q7X@…>``). The angle brackets matter: without ``<``, ``,``, ``;`` or ``(`` Sendmail may split
    the argument at spaces (old-style address lists), and a quoted local part may hold one.
    """
    text = envrcpt.strip()
    if text.startswith("<") and text.endswith(">"):
        return text
    return f"<{text}>"


def classify_sendmail_recipient(
    raw: str, patterns: BuyerPatterns, *, mailer: str | None, host: str | None, addr: str | None
) -> Recipient:
    """Classify a recipient by where Sendmail routes it (the RCPT macros of this recipient).

    RELAY: the relayed address is judged like Postfix's resolved recipient (classify_recipient with it as
    ``resolved``), so a relayed address that still holds routing syntax (``x%marketplace.amazon.de@partner``,
    which the next hop may unwrap) is unresolved. LOCAL: delivered on this host, not a buyer (aliases and
    .forward expand after the milter, as on Postfix: docs/sendmail.md). UNRESOLVED: every form the RCPT text
    may be routed to counts, and a buyer by any of them is refused whatever channel would grant it.
    The delete is the envrcpt text in either case, and is certain (``sendmail_delete_argument``).
    """
    route = sendmail_route(mailer, host, addr)
    deletes = (sendmail_delete_argument(raw),)
    if route.kind is RouteKind.LOCAL:
        user = Address(raw=raw, local=route.address, domain="")
        return Recipient(address=user, relay=False, marked=False, unmarked=None, forms=(user,),
                         delete_forms=deletes, delete_exact=True)  # fmt: skip
    if route.kind is RouteKind.RELAY:
        recipient = classify_recipient(raw, patterns, resolved=route.address, smtp=True)
    else:
        recipient = replace(classify_recipient(raw, patterns), unresolved=True)
    return replace(recipient, delete_forms=deletes, delete_exact=True)


def uncertain_deletes(recipient: Recipient) -> Recipient:
    """For an MTA that did not say which it is (no ``v``): Postfix's delete texts plus Sendmail's, none of
    them certain, so a message that needs a delete to refuse a buyer is refused whole instead."""
    deletes = tuple(dict.fromkeys((*recipient.delete_forms, sendmail_delete_argument(recipient.raw))))
    return replace(recipient, delete_forms=deletes, delete_exact=False)
