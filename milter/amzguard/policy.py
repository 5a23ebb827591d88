"""The decision: which recipients of a message may receive it, and what the MTA must do about the rest.

Everything here is pure: facts in, decisions and milter actions out. The pymilter adapter collects the
facts, calls in here, and applies the returned actions; tests drive this module directly.

A buyer recipient (Amazon relay domain or shop-plugin marker) is refused unless a *channel rule* grants the
message to it. Channel rules are small objects with one question each, so later channels (replies,
critical messages, opt-outs) are added as rules, not written into the decision loop.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from .address import Address, BuyerPatterns, Recipient, format_address

REFUSAL_CODE = "550"
REFUSAL_STATUS = "5.7.1"


class SubmissionPath(StrEnum):
    """How the message entered Postfix; the two paths obey different milter rules."""

    SMTP = "smtp"
    """smtpd(8): a recipient may be refused at RCPT, a message refused at end of data."""
    LOCAL = "sendmail"
    """sendmail(1)/pickup: refusing at RCPT is a milter configuration error; refusal at end bounces."""
    UNKNOWN = "unknown"
    """Could not tell: only the actions that are safe on both paths are used."""


class Mode(StrEnum):
    ENFORCE = "enforce"
    MONITOR = "monitor"


class MixedRecipients(StrEnum):
    """What to do when a message has buyer recipients to refuse and other recipients to deliver to."""

    BOUNCE = "bounce"
    """Deliver to the others; swap each refused recipient for an address that Postfix's ``error:``
    transport bounces, so the sender gets a DSN naming it (needs etc/postfix/amzguard-transport.regexp)."""
    REJECT = "reject"
    """Refuse the whole message; needs nothing in Postfix, but the other recipients get nothing."""


class Channel(StrEnum):
    """Why a message may reach a buyer after all."""

    NONE = "none"
    REVIEW = "review"


class Outcome(StrEnum):
    DELIVER = "deliver"
    DELIVER_UNMARKED = "deliver-unmarked"
    REFUSE = "refuse"


class Reason(StrEnum):
    """Machine-readable reason of a decision; also the bounce subdomain and a metrics label."""

    NOT_BUYER = "not-buyer"
    CHANNEL = "channel"
    BUYER_MAIL = "buyer-mail"
    MARKER_ONLY = "marker-only"
    """Granted by a channel, but the marked address has nothing left once the marker is removed."""


@dataclass(frozen=True, slots=True)
class ReviewChannelSettings:
    enabled: bool
    header: str
    token: bytes
    allowed_senders: tuple[str, ...] = ()
    """Empty: any envelope sender may use the channel. Entries: ``user@domain`` or ``@domain``."""


@dataclass(frozen=True, slots=True)
class PolicySettings:
    buyers: BuyerPatterns
    review: ReviewChannelSettings
    reply_text: str
    mixed_recipients: MixedRecipients = MixedRecipients.BOUNCE
    bounce_domain: str = "amzguard.invalid"
    mode: Mode = Mode.ENFORCE


@dataclass(frozen=True, slots=True)
class MessageFacts:
    """What the MTA told us about one message, as far as the policy needs it."""

    sender: Address
    path: SubmissionPath
    headers: tuple[tuple[str, str], ...] = ()
    """Only the header fields some rule asked for (see ``wanted_headers``), in message order."""

    def header_values(self, name: str) -> list[str]:
        wanted = name.casefold()
        return [value for field_name, value in self.headers if field_name.casefold() == wanted]


@dataclass(frozen=True, slots=True)
class Decision:
    recipient: Recipient
    outcome: Outcome
    reason: Reason
    channel: Channel = Channel.NONE

    @property
    def refused(self) -> bool:
        return self.outcome is Outcome.REFUSE


class ChannelRule(Protocol):
    """One way a message may legitimately reach a buyer."""

    channel: Channel

    def headers(self) -> tuple[str, ...]:
        """Header field names this rule reads (lower case)."""

    def possible(self, sender: Address) -> bool:
        """Whether the rule could still grant a message from this sender (answered before headers)."""

    def grants(self, facts: MessageFacts, recipient: Recipient) -> bool:
        """Whether the message may reach this buyer recipient through this channel."""


def sender_allowed(sender: Address, allowed: tuple[str, ...]) -> bool:
    if not allowed:
        return True
    mailbox = f"{sender.local.casefold()}@{sender.domain}"
    for entry in allowed:
        entry = entry.casefold()
        if entry.startswith("@") and sender.domain == entry[1:]:
            return True
        if entry == mailbox:
            return True
    return False


def tag_value_matches(value: str, token: bytes) -> bool:
    """A review tag reads ``review <token>``; the token is compared in constant time."""
    words = value.split()
    if len(words) != 2 or words[0].casefold() != "review":
        return False
    candidate = words[1].encode("utf-8", "surrogateescape")
    return hmac.compare_digest(candidate, token)


@dataclass(frozen=True, slots=True)
class ReviewChannel:
    """The shop's review-request mailer tags its message with a secret; tagged mail may reach buyers."""

    settings: ReviewChannelSettings
    channel: Channel = Channel.REVIEW

    def headers(self) -> tuple[str, ...]:
        return (self.settings.header.casefold(),)

    def possible(self, sender: Address) -> bool:
        return self.settings.enabled and sender_allowed(sender, self.settings.allowed_senders)

    def grants(self, facts: MessageFacts, recipient: Recipient) -> bool:
        if not self.possible(facts.sender):
            return False
        token = self.settings.token
        return any(tag_value_matches(value, token) for value in facts.header_values(self.settings.header))


@dataclass(frozen=True, slots=True)
class Policy:
    settings: PolicySettings
    rules: tuple[ChannelRule, ...] = field(default=())

    @classmethod
    def from_settings(cls, settings: PolicySettings) -> Policy:
        return cls(settings=settings, rules=(ReviewChannel(settings.review),))

    def wanted_headers(self) -> frozenset[str]:
        """Lower-case names of the header fields the adapter must collect."""
        return frozenset(name for rule in self.rules for name in rule.headers())

    def stripped_headers(self) -> tuple[str, ...]:
        """Header fields that must never leave the MTA (they carry the review secret)."""
        return (self.settings.review.header,)

    def decide_at_rcpt(self, sender: Address, recipient: Recipient, path: SubmissionPath) -> Decision | None:
        """A refusal that is already certain before the headers are seen, or None to decide at end of message.

        Only on the SMTP path: refusing a recipient at RCPT of a sendmail(1) submission is a Postfix
        milter configuration error that leaves the message stuck in the maildrop.
        """
        if path is not SubmissionPath.SMTP or not recipient.is_buyer:
            return None
        if any(rule.possible(sender) for rule in self.rules):
            return None
        return Decision(recipient, Outcome.REFUSE, Reason.BUYER_MAIL)

    def decide(self, facts: MessageFacts, recipient: Recipient) -> Decision:
        """The final decision for one recipient at end of message."""
        if not recipient.is_buyer:
            return Decision(recipient, Outcome.DELIVER, Reason.NOT_BUYER)
        for rule in self.rules:
            if rule.grants(facts, recipient):
                if not recipient.marked:
                    return Decision(recipient, Outcome.DELIVER, Reason.CHANNEL, rule.channel)
                if recipient.unmarked is None:
                    return Decision(recipient, Outcome.REFUSE, Reason.MARKER_ONLY, rule.channel)
                return Decision(recipient, Outcome.DELIVER_UNMARKED, Reason.CHANNEL, rule.channel)
        return Decision(recipient, Outcome.REFUSE, Reason.BUYER_MAIL)

    def rcpt_reject(self, recipient: Recipient) -> Reject:
        return Reject(refusal_text(self.settings.reply_text, [recipient]))

    def plan(
        self, facts: MessageFacts, decisions: tuple[Decision, ...], header_counts: dict[str, int]
    ) -> MessagePlan:
        return plan_message(self, facts, decisions, header_counts)


# --- Actions: what the adapter applies through libmilter --------------------------------------------


@dataclass(frozen=True, slots=True)
class Reject:
    """Refuse (a recipient at RCPT, or the whole message at end of data) with a permanent error."""

    text: str
    code: str = REFUSAL_CODE
    status: str = REFUSAL_STATUS


@dataclass(frozen=True, slots=True)
class DeleteRecipient:
    address: str
    """Exactly as the MTA passed it to the envrcpt callback."""


@dataclass(frozen=True, slots=True)
class AddRecipient:
    address: str
    esmtp: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DeleteHeader:
    name: str
    index: int
    """1-based among the fields of that name, as smfi_chgheader counts."""


Change = DeleteRecipient | AddRecipient | DeleteHeader


@dataclass(frozen=True, slots=True)
class MessagePlan:
    """What to tell the MTA at end of message: refuse it whole, or accept it with these changes."""

    reject: Reject | None
    changes: tuple[Change, ...] = ()


def _xtext(text: str) -> str | None:
    """RFC 3461 xtext for ORCPT; None for non-ASCII (the ``rfc822`` type cannot carry it)."""
    if not text.isascii():
        return None
    return "".join(
        char if "!" <= char <= "~" and char not in "+=" else f"+{ord(char):02X}" for char in text
    )


def _bounce_label(text: str) -> str:
    kept = "".join(char if char.isascii() and (char.isalnum() or char in "._-") else "_" for char in text)
    return kept.strip(".")[:100] or "_"


def refusal_address(recipient: Recipient, reason: Reason, bounce_domain: str) -> str:
    """The stand-in recipient that Postfix's ``error:`` transport bounces in place of a refused buyer.

    Its local part shows the refused address (``local=domain``) and its domain the reason, so the bounce
    itself says who was refused and why even before one reads the Original-Recipient field.
    """
    address = recipient.address
    local = f"{_bounce_label(address.local)}={_bounce_label(address.domain)}"
    return f"{local}@{reason.value}.{bounce_domain}"


def orcpt_parameter(recipient: Recipient) -> tuple[str, ...]:
    encoded = _xtext(recipient.address.text())
    return (f"ORCPT=rfc822;{encoded}",) if encoded else ()


def plan_message(
    policy: Policy, facts: MessageFacts, decisions: tuple[Decision, ...], header_counts: dict[str, int]
) -> MessagePlan:
    """Turn the end-of-message decisions into one plan.

    ``decisions`` are for the recipients still in the envelope (those refused at RCPT are gone already);
    ``header_counts`` gives, per lower-case header name, how many fields of that name the message has.
    """
    settings = policy.settings
    if settings.mode is Mode.MONITOR:
        return MessagePlan(reject=None)
    refused = [d for d in decisions if d.refused]
    delivered = [d for d in decisions if not d.refused]
    if refused and (not delivered or settings.mixed_recipients is MixedRecipients.REJECT):
        return MessagePlan(reject=Reject(refusal_text(settings.reply_text, [d.recipient for d in refused])))
    changes: list[Change] = []
    for decision in refused:
        changes.append(DeleteRecipient(decision.recipient.raw))
        changes.append(
            AddRecipient(
                refusal_address(decision.recipient, decision.reason, settings.bounce_domain),
                orcpt_parameter(decision.recipient),
            )
        )
    for decision in delivered:
        if decision.outcome is Outcome.DELIVER_UNMARKED and decision.recipient.unmarked:
            changes.append(DeleteRecipient(decision.recipient.raw))
            changes.append(AddRecipient(f"<{decision.recipient.unmarked}>"))
    for name in policy.stripped_headers():
        # Delete from the last field backwards so the remaining indexes stay valid.
        for index in range(header_counts.get(name.casefold(), 0), 0, -1):
            changes.append(DeleteHeader(name, index))
    return MessagePlan(reject=None, changes=tuple(changes))


def refusal_text(reply_text: str, recipients: list[Recipient]) -> str:
    """Reply text naming the refused recipients, so a bounce of the whole message says who and why."""
    names = ", ".join(f"<{r.address.text()}>" for r in recipients[:3])
    if len(recipients) > 3:
        names += f" and {len(recipients) - 3} more"
    text = f"{names}: {reply_text}" if names else reply_text
    # libmilter drops replies containing a single '%'; keep the text printable ASCII. Most texts already
    # are, and checking that with str methods is ~10x cheaper than rebuilding them character by character.
    if text.isascii() and text.isprintable() and "%" not in text:
        return text[:900]
    return "".join(char if " " <= char <= "~" and char != "%" else "?" for char in text)[:900]



__all__ = [
    "AddRecipient",
    "Channel",
    "ChannelRule",
    "Decision",
    "DeleteHeader",
    "DeleteRecipient",
    "MessageFacts",
    "MessagePlan",
    "MixedRecipients",
    "Mode",
    "Outcome",
    "Policy",
    "PolicySettings",
    "Reason",
    "Reject",
    "ReviewChannel",
    "ReviewChannelSettings",
    "SubmissionPath",
    "format_address",
    "plan_message",
    "refusal_address",
]
