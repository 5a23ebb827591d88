"""The channel rules: each one way a message may legitimately reach a buyer (review request, reply in the
buyer's thread, critical message). A rule declares what it needs (header fields, the body, store
questions, records, header fields to strip), so ``Policy`` asks its rules instead of knowing them by
class, and a new channel is a new class here."""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from email.utils import getaddresses
from typing import ClassVar, Protocol, runtime_checkable

from ..address import (
    Address,
    BuyerPatterns,
    Recipient,
    buyer_key,
    classify_recipient,
    domain_matches,
    normalise_domain,
    parse_address,
    recipient_keys,
)
from ..orderid import find_order_id
from .model import (
    BuyerMessage,
    Channel,
    CriticalChannelSettings,
    Decision,
    MessageFacts,
    NO_ORIGIN,
    Origin,
    Reason,
    RecognisedBy,
    ReplyChannelSettings,
    ReplyCheck,
    ReviewChannelSettings,
    ReviewSent,
    StoreQuestions,
    StoreRecord,
)
from .recognise import recognising_entry
from .restriction import is_restricted
from .senders import listed

class ChannelRule(Protocol):
    """One way a message may legitimately reach a buyer."""

    channel: Channel

    def headers(self) -> tuple[str, ...]:
        """Header field names this rule reads (lower case)."""

    def possible(self, sender: Address, origin: Origin = NO_ORIGIN) -> bool:
        """Whether the rule could still grant a message from this sender, with this SASL login and client
        (answered before headers)."""

    def enabled(self) -> bool:
        """Whether the rule can grant anything at all (its channel is on)."""

    def grants(self, facts: MessageFacts, recipient: Recipient) -> bool:
        """Whether the message may reach this buyer recipient through this channel."""

    def veto(self, facts: MessageFacts, recipient: Recipient) -> Reason | None:
        """Why a message this rule grants must still not reach this buyer, or None."""

    # -- what the rule needs, declared (Policy combines them over its rules) --------------------------

    def reads_bodies(self) -> bool:
        """Whether the rule may ever need a message's body (else the body step may go)."""

    def wants_body(self, facts: MessageFacts) -> bool:
        """Whether this rule needs this message's body (beyond what the content rules read)."""

    def reads_order_id(self, facts: MessageFacts) -> bool:
        """Whether this message's order id matters to this rule (it is then read from subject or body)."""

    def store_questions(self, facts: MessageFacts, buyers: list[Recipient]) -> StoreQuestions:
        """What the store must answer before this rule can decide for these buyer recipients."""

    def store_records(self, facts: MessageFacts, decisions: tuple[Decision, ...]) -> tuple[StoreRecord, ...]:
        """What the store must remember once the message is accepted."""

    def uses_store(self) -> bool:
        """Whether the rule may ever ask or tell the store (its start-up check depends on it)."""

    def stripped_headers(self) -> tuple[str, ...]:
        """Header fields that must never leave the MTA."""

    def bad_token(self, facts: MessageFacts) -> bool:
        """The message carries this channel's tag with a wrong secret (rules without a tag: never)."""

    def may_carry_secret(self, sender: Address) -> bool:
        """Whether mail from this sender may carry this channel's secret (then only the end of message
        deletes it, so it cannot be accepted at DATA)."""

    def recognised_by(self, facts: MessageFacts) -> tuple[RecognisedBy, ...]:
        """How the rule recognised a message it grants (the decision log's ``recognised_by``; most rules:
        nothing to say). Non-empty only for a message the rule grants: ``Policy.decide`` takes a non-empty
        answer as the grant and does not ask ``grants`` again."""


class ChannelBase:
    """What every channel rule shares: on/off and ``allowed_senders`` (its ``settings`` has both), and the
    declarations of a rule that needs no body, no order id and no store, and strips nothing (a rule
    overrides those it needs)."""

    __slots__ = ()
    settings: ReviewChannelSettings | ReplyChannelSettings | CriticalChannelSettings
    vetoes: ClassVar[tuple[Reason, ...]] = ()
    """Every reason ``veto`` can return (the metrics create exactly these series)."""

    def possible(self, sender: Address, origin: Origin = NO_ORIGIN) -> bool:
        return self.settings.enabled and sender_allowed(sender, self.settings.allowed_senders)

    def enabled(self) -> bool:
        return self.settings.enabled

    def reads_bodies(self) -> bool:
        return False

    def wants_body(self, facts: MessageFacts) -> bool:
        return False

    def reads_order_id(self, facts: MessageFacts) -> bool:
        return False

    def store_questions(self, facts: MessageFacts, buyers: list[Recipient]) -> StoreQuestions:
        return StoreQuestions()

    def store_records(self, facts: MessageFacts, decisions: tuple[Decision, ...]) -> tuple[StoreRecord, ...]:
        return ()

    def uses_store(self) -> bool:
        return False

    def stripped_headers(self) -> tuple[str, ...]:
        return ()

    def bad_token(self, facts: MessageFacts) -> bool:
        return False

    def may_carry_secret(self, sender: Address) -> bool:
        return False

    def recognised_by(self, facts: MessageFacts) -> tuple[RecognisedBy, ...]:
        return ()


@runtime_checkable
class TaggedChannelRule(Protocol):
    """A channel rule that recognises its messages by a secret in a tag header.

    Optional beside ``ChannelRule``: rules that have it can say when a tag was present but its secret
    wrong, which the metrics count (a misconfigured shop mailer, or someone guessing the secret).
    """

    channel: Channel

    def bad_token(self, facts: MessageFacts) -> bool:
        """The message carries this channel's tag, but no tag field holds the right secret."""


def sender_allowed(sender: Address, allowed: tuple[str, ...]) -> bool:
    """A channel's ``allowed_senders``: empty lets every sender use it."""
    return not allowed or listed(sender, tuple(entry.casefold() for entry in allowed))


def tag_keyword(value: str) -> str:
    """The channel a tag field names (its first word, case-folded); empty for an empty field."""
    words = value.split()
    return words[0].casefold() if words else ""


def tag_value_matches(value: str, token: bytes) -> bool:
    """A review tag reads ``review <token>``; the token is compared in constant time."""
    words = value.split()
    if len(words) != 2 or words[0].casefold() != "review":
        return False
    candidate = words[1].encode("utf-8", "surrogateescape")
    return hmac.compare_digest(candidate, token)


CONTENT_HEADERS = ("content-type", "content-transfer-encoding")
"""Needed to decode a body in which an order id is searched."""

MAX_REFERENCED_IDS = 50
"""Message-IDs read from In-Reply-To/References; a long thread names its start first and its latest last."""


@dataclass(frozen=True, slots=True)
class ReviewChannel(ChannelBase):
    """The shop's review-request mailer tags its message with a secret, or the message meets an entry of
    ``channels.review.recognise`` (sender, SASL login, client, subject: policy/recognise.py); such mail
    may reach buyers, except a buyer in the opt-out register and an order that already had its one review
    request. Both ways are judged alike from there on (opt-out, one per order, content rules)."""

    settings: ReviewChannelSettings
    marked_prefixes: tuple[str, ...] = ()
    channel: Channel = Channel.REVIEW
    vetoes: ClassVar[tuple[Reason, ...]] = (Reason.MESSAGING_RESTRICTED, Reason.OPTED_OUT, Reason.DUPLICATE_REVIEW)
    """Every reason ``veto`` can return (the metrics create exactly these series; no-order-id is the
    content rule's now, see ``possible_decisions``)."""

    def headers(self) -> tuple[str, ...]:
        if not self.settings.enabled:
            return (self.settings.header.casefold(),)
        return (self.settings.header.casefold(), "subject", *CONTENT_HEADERS)

    def possible(self, sender: Address, origin: Origin = NO_ORIGIN) -> bool:
        # Precise at RCPT: with the tag off (no secret), only a sender, login and client some entry can
        # still match (its subject is not known yet) keeps a buyer recipient to the end of message.
        if not self._open_to(sender):
            return False
        return bool(self.settings.token) or any(e.possible(sender, origin) for e in self.settings.recognise)

    def _open_to(self, sender: Address) -> bool:
        return self.settings.enabled and sender_allowed(sender, self.settings.allowed_senders)

    def may_carry_secret(self, sender: Address) -> bool:
        return bool(self.settings.token) and self._open_to(sender)

    def tagged(self, facts: MessageFacts) -> bool:
        """The message carries a valid tag from a sender allowed to use the channel."""
        if not self.may_carry_secret(facts.sender):
            return False
        token = self.settings.token
        return any(tag_value_matches(value, token) for value in facts.header_values(self.settings.header))

    def recognised_by(self, facts: MessageFacts) -> tuple[RecognisedBy, ...]:
        """``(tag,)`` for tagged mail (the tag is asked first: the strongest), else the criteria of the first
        entry the message meets, else nothing (the channel does not grant it)."""
        if self.tagged(facts):
            return (RecognisedBy.TAG,)
        if not self.settings.recognise or not self._open_to(facts.sender):
            return ()
        entry = recognising_entry(self.settings.recognise, facts)
        return entry.criteria() if entry is not None else ()

    def grants(self, facts: MessageFacts, recipient: Recipient) -> bool:
        return bool(self.recognised_by(facts))

    def veto(self, facts: MessageFacts, recipient: Recipient) -> Reason | None:
        # A missing order id is the content rule missing-order-id now (transaction.py), for review
        # requests and critical messages alike.
        if is_restricted(facts.restricted, recipient):
            return Reason.MESSAGING_RESTRICTED
        if any(key in facts.opted_out for key in recipient_keys(recipient, self.marked_prefixes)):
            return Reason.OPTED_OUT
        if self.settings.one_per_order and facts.order_id and facts.order_id in facts.reviewed_orders:
            return Reason.DUPLICATE_REVIEW
        return None

    def reads_bodies(self) -> bool:
        return self.settings.enabled

    def wants_body(self, facts: MessageFacts) -> bool:
        # A review request without an order id in its subject: the id is searched in the body.
        return bool(self.recognised_by(facts)) and find_order_id(facts.subject()) is None

    def reads_order_id(self, facts: MessageFacts) -> bool:
        return bool(self.recognised_by(facts))

    def store_questions(self, facts: MessageFacts, buyers: list[Recipient]) -> StoreQuestions:
        if not self.recognised_by(facts):
            return StoreQuestions()
        keys = tuple(dict.fromkeys(key for r in buyers for key in recipient_keys(r, self.marked_prefixes)))
        return StoreQuestions(buyer_keys=keys, order_id=facts.order_id if self.settings.one_per_order else None,
                              restrictions=True)

    def store_records(self, facts: MessageFacts, decisions: tuple[Decision, ...]) -> tuple[StoreRecord, ...]:
        # Which buyer got the review request for which order: to refuse a second one, and to resolve
        # Amazon's opt-out notices, which may name only the order.
        if not facts.order_id:
            return ()
        return tuple(
            ReviewSent(facts.order_id, key)
            for d in decisions
            if d.channel is Channel.REVIEW and not d.refused
            for key in recipient_keys(d.recipient, self.marked_prefixes)[:1]
        )

    def uses_store(self) -> bool:
        return self.settings.enabled

    def stripped_headers(self) -> tuple[str, ...]:
        # Always, also with the channel off: the secret must never leave the MTA.
        return (self.settings.header,)

    def bad_token(self, facts: MessageFacts) -> bool:
        # Only fields that name this channel count, so another channel's tag in the same header is no
        # false alarm. With the channel off and no secret loaded every review tag is bad: none can match.
        tags = [value for value in facts.header_values(self.settings.header) if tag_keyword(value) == "review"]
        return bool(tags) and not any(tag_value_matches(value, self.settings.token) for value in tags)


def message_ids(value: str) -> list[str]:
    """The Message-IDs in an In-Reply-To/References value, without angle brackets.

    RFC 5322 ids are ``<left@right>``; old mailers also wrote bare ``left@right`` or added phrases, so
    bracketed ids are taken when there are any, else every white-space word with an ``@``.
    """
    bracketed = re.findall(r"<([^<>\s]+@[^<>\s]+)>", value)
    if bracketed:
        return bracketed
    return [word.strip("<>,;") for word in value.split() if "@" in word.strip("<>,;")]


def referenced_ids(facts: MessageFacts) -> tuple[str, ...]:
    ids: list[str] = []
    for name in ("in-reply-to", "references"):
        for value in facts.header_values(name):
            ids.extend(message_ids(value))
    return tuple(dict.fromkeys(ids))[:MAX_REFERENCED_IDS]


def _subject_starts_with(facts: MessageFacts, prefixes: tuple[str, ...]) -> bool:
    subject = facts.subject().casefold()
    return any(subject.startswith(prefix.casefold()) for prefix in prefixes)


@dataclass(frozen=True, slots=True)
class ReplyChannel(ChannelBase):
    """A reply in a thread the buyer started; Amazon delivers these even to buyers who opted out.

    What is checked (and nothing else), see ``ReplyCheck``: ``reference`` looks only at the message's own
    In-Reply-To/References, which the sending software writes, so it stops honest mistakes (order mail
    that is no reply) but not software that fakes a reference; ``thread`` also needs the buyer's own
    message to have passed this MTA, which the shop cannot fake by writing headers.
    """

    settings: ReplyChannelSettings
    buyers: BuyerPatterns
    channel: Channel = Channel.REPLY

    def headers(self) -> tuple[str, ...]:
        if not self.settings.enabled:
            return ()
        names = ["in-reply-to", "references"]
        if self.settings.subject_prefixes:
            names.append("subject")
        if self.settings.check is ReplyCheck.THREAD:
            names += ["from", "message-id"]
        return tuple(names)

    def grants(self, facts: MessageFacts, recipient: Recipient) -> bool:
        if not self.possible(facts.sender):
            return False
        if self.settings.subject_prefixes and not _subject_starts_with(facts, self.settings.subject_prefixes):
            return False
        ids = referenced_ids(facts)
        if self.settings.check is ReplyCheck.THREAD:
            keys = recipient_keys(recipient, self.buyers.marked_prefixes)
            return bool(ids) and any(key in facts.thread_senders for key in keys)
        domains = self.settings.reference_domains or self.buyers.relay_domains
        return any(domain_matches(normalise_domain(ref.rpartition("@")[2]), domains) for ref in ids)

    def veto(self, facts: MessageFacts, recipient: Recipient) -> Reason | None:
        return None

    def _threads(self) -> bool:
        return self.settings.enabled and self.settings.check is ReplyCheck.THREAD

    def store_questions(self, facts: MessageFacts, buyers: list[Recipient]) -> StoreQuestions:
        if not (self._threads() and self.possible(facts.sender)):
            return StoreQuestions()
        return StoreQuestions(message_ids=referenced_ids(facts))

    def store_records(self, facts: MessageFacts, decisions: tuple[Decision, ...]) -> tuple[StoreRecord, ...]:
        # For the thread check: the messages buyers sent the shop (at least one recipient not a buyer).
        if not self._threads():
            return ()
        to_shop = any(not d.recipient.is_buyer and not d.refused for d in decisions)
        own_ids = [i for value in facts.header_values("message-id")[:1] for i in message_ids(value)][:1]
        if not (to_shop and own_ids):
            return ()
        return tuple(BuyerMessage(own_ids[0], key) for key in self.buyer_senders(facts))

    def uses_store(self) -> bool:
        return self._threads()

    def buyer_senders(self, facts: MessageFacts) -> tuple[str, ...]:
        """Register keys of the relay addresses this message comes from (From: and envelope sender)."""
        candidates = [facts.sender]
        for value in facts.header_values("from")[:1]:
            candidates.extend(parse_address(addr) for _, addr in getaddresses([value]) if addr)
        keys = []
        for address in candidates:
            recipient = classify_recipient(address.text(), self.buyers)
            if recipient.relay:
                keys.append(buyer_key(recipient.address, self.buyers.marked_prefixes))
        return tuple(dict.fromkeys(key for key in keys if key))


@dataclass(frozen=True, slots=True)
class CriticalChannel(ChannelBase):
    """A message needed to complete the order, marked as Amazon asks (``[Important]``, on amazon.de
    ``[Wichtig]``, in the subject).

    Amazon has retired this override in some marketplaces and watches for its overuse, so it can be
    switched off and limited to some senders.
    """

    settings: CriticalChannelSettings
    channel: Channel = Channel.CRITICAL

    def headers(self) -> tuple[str, ...]:
        return ("subject",) if self.settings.enabled else ()

    def grants(self, facts: MessageFacts, recipient: Recipient) -> bool:
        if not self.possible(facts.sender):
            return False
        subject = facts.subject().casefold()
        return any(marker.casefold() in subject for marker in self.settings.markers)

    vetoes: ClassVar[tuple[Reason, ...]] = (Reason.MESSAGING_RESTRICTED,)

    def veto(self, facts: MessageFacts, recipient: Recipient) -> Reason | None:
        return Reason.MESSAGING_RESTRICTED if is_restricted(facts.restricted, recipient) else None

    def store_questions(self, facts: MessageFacts, buyers: list[Recipient]) -> StoreQuestions:
        # A critical message is proactive: a messaging restriction holds for it too.
        return StoreQuestions(restrictions=True) if any(self.grants(facts, b) for b in buyers) else StoreQuestions()

    def uses_store(self) -> bool:
        return self.settings.enabled
