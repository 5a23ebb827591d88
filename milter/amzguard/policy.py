"""The decision: which recipients of a message may receive it, and what the MTA must do about the rest.

Everything here is pure: facts in, decisions and milter actions out. The pymilter adapter collects the
facts, calls in here, and applies the returned actions; tests drive this module directly.

A buyer recipient (Amazon relay domain or shop-plugin marker) is refused unless a *channel rule* grants the
message to it. Channel rules are small objects with one question each (review request, reply in the
buyer's thread, critical message), so channels are added as rules, not written into the decision loop.
A rule that grants may still veto (an opted-out buyer, a second review request for one order).

What only a database knows (opt-outs, orders already asked for a review, messages a buyer sent us) reaches
the policy as facts: the policy says what it needs to know (``store_questions``), the adapter looks it up
and passes the answers in ``MessageFacts``, and the policy says what to remember (``store_records``).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from email.utils import getaddresses
from enum import StrEnum
from typing import ClassVar, Protocol, TypeVar, runtime_checkable

from .address import (
    Address,
    BuyerPatterns,
    Recipient,
    buyer_key,
    classify_recipient,
    domain_matches,
    format_address,
    normalise_domain,
    parse_address,
    recipient_keys,
)
from .orderid import decoded_header, find_order_id, order_id_in_body

T = TypeVar("T")

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
    REPLY = "reply"
    """A reply in a thread the buyer started (In-Reply-To/References); passes an opt-out."""
    CRITICAL = "critical"
    """A message needed to complete the order, marked in the subject (``[Important]``); passes an opt-out."""


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
    OPTED_OUT = "opted-out"
    """A review request to a buyer in the opt-out register (Amazon would block it anyway)."""
    DUPLICATE_REVIEW = "duplicate-review"
    """A second review request for an order that already had one (Amazon allows one per order)."""
    NO_ORDER_ID = "no-order-id"
    """A review request without an order id, with ``missing_order_id: refuse``."""
    UNRESOLVED_ROUTE = "unresolved-route"
    """A buyer address in a routing form (``%``, ``!``, ``@`` in the local part) whose destination is not
    known exactly: refused whatever channel would grant it, because amzguard cannot say which mailbox it
    would judge (fail closed, see address.routed_forms)."""


class MissingOrderId(StrEnum):
    """What to do with a review request in which no order id is found."""

    ALLOW = "allow"
    REFUSE = "refuse"


class ReplyCheck(StrEnum):
    """How hard the reply channel looks at a claimed reply."""

    REFERENCE = "reference"
    """In-Reply-To or References names a Message-ID whose domain is an Amazon buyer relay domain."""
    THREAD = "thread"
    """In-Reply-To or References names a Message-ID that amzguard recorded on a message this very buyer
    sent to the shop (through the same MTA, within the store's retention)."""


@dataclass(frozen=True, slots=True)
class ReviewChannelSettings:
    enabled: bool
    header: str
    token: bytes
    allowed_senders: tuple[str, ...]
    """Empty: any envelope sender may use the channel. Entries: ``user@domain`` or ``@domain``."""
    one_per_order: bool
    """Refuse a review request for an order that already had one (needs the order id and the store)."""
    missing_order_id: MissingOrderId


# The settings classes have no defaults: the defaults are the config key table's (config_keys.py), and
# code that builds settings by hand (tests) says what it wants or starts from config.parse_config.


@dataclass(frozen=True, slots=True)
class ReplyChannelSettings:
    enabled: bool
    check: ReplyCheck
    reference_domains: tuple[str, ...]
    """Message-ID domains that count as Amazon's (subdomains too); empty: the buyer relay domains."""
    subject_prefixes: tuple[str, ...]
    """If set, the subject must also start with one of these (``Re:``, ``AW:``), any letter case."""
    allowed_senders: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CriticalChannelSettings:
    enabled: bool
    marker: str
    """Must appear in the subject, anywhere, in any letter case, brackets included."""
    allowed_senders: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PolicySettings:
    buyers: BuyerPatterns
    review: ReviewChannelSettings
    reply_text: str
    mixed_recipients: MixedRecipients
    bounce_domain: str
    mode: Mode
    reply: ReplyChannelSettings
    critical: CriticalChannelSettings
    reason_texts: tuple[tuple[Reason, str], ...]
    """Refusal text per reason; a reason not listed is answered with ``reply_text``."""

    def text_for(self, reason: Reason) -> str:
        for listed, text in self.reason_texts:
            if listed is reason:
                return text
        return self.reply_text


@dataclass(frozen=True, slots=True)
class MessageFacts:
    """What the MTA told us about one message, as far as the policy needs it."""

    sender: Address
    path: SubmissionPath
    headers: tuple[tuple[str, str], ...] = ()
    """Only the header fields some rule asked for (see ``wanted_headers``), in message order."""
    order_id: str | None = None
    """The Amazon order id of a review request (see ``Policy.read_order_id``)."""
    opted_out: frozenset[str] = frozenset()
    """Register keys (``buyer_key``) of this message's buyer recipients that are in the opt-out register."""
    reviewed_orders: frozenset[str] = frozenset()
    """Order ids among the asked ones that already had a review request."""
    thread_senders: frozenset[str] = frozenset()
    """Register keys of the buyers who sent the messages this one refers to (In-Reply-To/References)."""

    def header_values(self, name: str) -> list[str]:
        wanted = name.casefold()
        return [value for field_name, value in self.headers if field_name.casefold() == wanted]

    def subject(self) -> str:
        """The first Subject field, RFC 2047 decoded; empty if there is none."""
        values = self.header_values("subject")
        return " ".join(decoded_header(values[0]).split()) if values else ""


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

    def veto(self, facts: MessageFacts, recipient: Recipient) -> Reason | None:
        """Why a message this rule grants must still not reach this buyer, or None."""


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
class ReviewChannel:
    """The shop's review-request mailer tags its message with a secret; tagged mail may reach buyers,
    except a buyer in the opt-out register and an order that already had its one review request."""

    settings: ReviewChannelSettings
    marked_prefixes: tuple[str, ...] = ()
    channel: Channel = Channel.REVIEW
    vetoes: ClassVar[tuple[Reason, ...]] = (Reason.OPTED_OUT, Reason.DUPLICATE_REVIEW, Reason.NO_ORDER_ID)
    """Every reason ``veto`` can return (the metrics create exactly these series)."""

    def headers(self) -> tuple[str, ...]:
        if not self.settings.enabled:
            return (self.settings.header.casefold(),)
        return (self.settings.header.casefold(), "subject", *CONTENT_HEADERS)

    def possible(self, sender: Address) -> bool:
        return self.settings.enabled and sender_allowed(sender, self.settings.allowed_senders)

    def tagged(self, facts: MessageFacts) -> bool:
        """The message carries a valid tag from a sender allowed to use the channel."""
        if not self.possible(facts.sender):
            return False
        token = self.settings.token
        return any(tag_value_matches(value, token) for value in facts.header_values(self.settings.header))

    def grants(self, facts: MessageFacts, recipient: Recipient) -> bool:
        return self.tagged(facts)

    def veto(self, facts: MessageFacts, recipient: Recipient) -> Reason | None:
        if any(key in facts.opted_out for key in recipient_keys(recipient, self.marked_prefixes)):
            return Reason.OPTED_OUT
        if facts.order_id is None:
            return Reason.NO_ORDER_ID if self.settings.missing_order_id is MissingOrderId.REFUSE else None
        if self.settings.one_per_order and facts.order_id in facts.reviewed_orders:
            return Reason.DUPLICATE_REVIEW
        return None

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
class ReplyChannel:
    """A reply in a thread the buyer started; Amazon delivers these even to buyers who opted out.

    What is checked (and nothing else), see ``ReplyCheck``: ``reference`` looks only at the message's own
    In-Reply-To/References, which the sending software writes, so it stops honest mistakes (order mail
    that is no reply) but not software that fakes a reference; ``thread`` also needs the buyer's own
    message to have passed this MTA, which the shop cannot fake by writing headers.
    """

    settings: ReplyChannelSettings
    buyers: BuyerPatterns
    channel: Channel = Channel.REPLY
    vetoes: ClassVar[tuple[Reason, ...]] = ()

    def headers(self) -> tuple[str, ...]:
        if not self.settings.enabled:
            return ()
        names = ["in-reply-to", "references"]
        if self.settings.subject_prefixes:
            names.append("subject")
        if self.settings.check is ReplyCheck.THREAD:
            names += ["from", "message-id"]
        return tuple(names)

    def possible(self, sender: Address) -> bool:
        return self.settings.enabled and sender_allowed(sender, self.settings.allowed_senders)

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
class CriticalChannel:
    """A message needed to complete the order, marked as Amazon asks (``[Important]`` in the subject).

    Amazon has retired this override in some marketplaces and watches for its overuse, so it can be
    switched off and limited to some senders.
    """

    settings: CriticalChannelSettings
    channel: Channel = Channel.CRITICAL
    vetoes: ClassVar[tuple[Reason, ...]] = ()

    def headers(self) -> tuple[str, ...]:
        return ("subject",) if self.settings.enabled else ()

    def possible(self, sender: Address) -> bool:
        return self.settings.enabled and sender_allowed(sender, self.settings.allowed_senders)

    def grants(self, facts: MessageFacts, recipient: Recipient) -> bool:
        if not self.possible(facts.sender):
            return False
        return self.settings.marker.casefold() in facts.subject().casefold()

    def veto(self, facts: MessageFacts, recipient: Recipient) -> Reason | None:
        return None


CHANNEL_RULES: tuple[type, ...] = (ReviewChannel, ReplyChannel, CriticalChannel)
"""The rule classes ``Policy.from_settings`` builds, in the order they are asked."""


def _rule_channel(rule: type) -> Channel:
    return next(f.default for f in fields(rule) if f.name == "channel")  # type: ignore[return-value]


def possible_decisions(rules: tuple[type, ...] = CHANNEL_RULES) -> tuple[tuple[Outcome, Reason, Channel], ...]:
    """Every (outcome, reason, channel) that ``Policy.decide`` and ``decide_at_rcpt`` can return.

    Read off the decision tree in ``Policy.decide``: a recipient that is no buyer is delivered
    (not-buyer, no channel); a buyer whose destination or queued spelling is not certain is refused
    (unresolved-route, no channel); a buyer no rule grants is refused (buyer-mail, no channel); a buyer a rule
    grants is refused with one of that rule's ``vetoes``, or refused as marker-only (nothing left after
    the marker), or delivered, marked or unmarked (channel). So a reason like opted-out appears only with
    the channel that vetoes it. The metrics pre-create exactly these label sets; a property test checks
    that the policy never returns anything else.
    """
    combos = [(Outcome.DELIVER, Reason.NOT_BUYER, Channel.NONE), (Outcome.REFUSE, Reason.BUYER_MAIL, Channel.NONE),
              (Outcome.REFUSE, Reason.UNRESOLVED_ROUTE, Channel.NONE)]
    for rule in rules:
        channel = _rule_channel(rule)
        combos += [(Outcome.REFUSE, veto, channel) for veto in rule.vetoes]  # type: ignore[attr-defined]
        combos += [(Outcome.REFUSE, Reason.MARKER_ONLY, channel), (Outcome.DELIVER, Reason.CHANNEL, channel),
                   (Outcome.DELIVER_UNMARKED, Reason.CHANNEL, channel)]  # fmt: skip
    return tuple(combos)


def tagged_channels(rules: tuple[type, ...] = CHANNEL_RULES) -> tuple[Channel, ...]:
    """Channels whose rule recognises its mail by a secret (``TaggedChannelRule``): the only ones a wrong
    secret can be counted for."""
    return tuple(_rule_channel(rule) for rule in rules if callable(getattr(rule, "bad_token", None)))


# --- The store's part: questions before the decision, records after it -------------------------------


@dataclass(frozen=True, slots=True)
class StoreQuestions:
    """What the adapter must look up in the store before the policy can decide."""

    buyer_keys: tuple[str, ...] = ()
    """Is any of these in the opt-out register?"""
    order_id: str | None = None
    """Did this order already have a review request?"""
    message_ids: tuple[str, ...] = ()
    """Which buyers sent these messages?"""

    def __bool__(self) -> bool:
        return bool(self.buyer_keys or self.order_id or self.message_ids)


@dataclass(frozen=True, slots=True)
class ReviewSent:
    """A review request for ``order_id`` went to ``buyer`` (a register key)."""

    order_id: str
    buyer: str


@dataclass(frozen=True, slots=True)
class BuyerMessage:
    """The buyer ``buyer`` sent the shop the message ``message_id`` (for the reply channel's thread check)."""

    message_id: str
    buyer: str


StoreRecord = ReviewSent | BuyerMessage


def _unmark_unsure(facts: MessageFacts, recipient: Recipient) -> bool:
    """A marked buyer on the SMTP path whose queued spelling amzguard cannot reproduce (a comment or white
    space in the RCPT text, see queued.internal_form): unmarking it would add the unmarked copy while a
    delete that matches nothing leaves the marked one, so it is refused instead (fail closed). The oracle
    found ``<@a.example:(c)blacklisted-…@amazon.co.uk>`` delivered twice. On the sendmail(1) path no delete
    is certain and that is documented (docs/recipients.md); behind Sendmail deletes are exact."""
    return recipient.marked and facts.path is SubmissionPath.SMTP and not recipient.delete_exact


@dataclass(frozen=True, slots=True)
class Policy:
    settings: PolicySettings
    rules: tuple[ChannelRule, ...] = field(default=())

    @classmethod
    def from_settings(cls, settings: PolicySettings) -> Policy:
        # The review rule comes first: a tagged review request is judged as one (opt-out, one per order)
        # even if it also looks like a reply or carries the critical marker.
        rules: tuple[ChannelRule, ...] = (
            ReviewChannel(settings.review, settings.buyers.marked_prefixes),
            ReplyChannel(settings.reply, settings.buyers),
            CriticalChannel(settings.critical),
        )
        return cls(settings=settings, rules=rules)

    def _rule(self, kind: type[T]) -> T | None:
        return next((rule for rule in self.rules if isinstance(rule, kind)), None)

    # -- what the adapter must read, look up and remember ------------------------------------------

    def wants_body_step(self) -> bool:
        """Whether the body is needed at all (review requests are searched for an order id); if not,
        the body step is negotiated away for the whole connection."""
        review = self._rule(ReviewChannel)
        return review is not None and review.settings.enabled

    def wants_body(self, facts: MessageFacts) -> bool:
        """Whether this message's body must be read: a tagged review request without an order id in
        its subject. Every other message skips its body."""
        review = self._rule(ReviewChannel)
        return review is not None and review.tagged(facts) and find_order_id(facts.subject()) is None

    def secret_to_find(self, facts: MessageFacts) -> bytes | None:
        """The review secret, for a null-sender message (a bounce) whose body must not carry it out
        (secret_scan.py says where such bounces come from); None for every other message."""
        review = self._rule(ReviewChannel)
        if review is None or not review.settings.enabled or not facts.sender.is_empty:
            return None
        return review.settings.token or None

    def read_order_id(self, facts: MessageFacts, body: bytes = b"") -> MessageFacts:
        """The facts with the order id of a tagged review request: from the subject, else the body."""
        review = self._rule(ReviewChannel)
        if review is None or not review.tagged(facts):
            return facts
        content = [(name, value) for name, value in facts.headers if name.casefold() in CONTENT_HEADERS]
        found = find_order_id(facts.subject()) or (order_id_in_body(content, body) if body else None)
        return replace(facts, order_id=found)

    def store_questions(self, facts: MessageFacts, recipients: Iterable[Recipient]) -> StoreQuestions:
        buyers = [recipient for recipient in recipients if recipient.is_buyer]
        if not buyers:
            return StoreQuestions()
        keys: tuple[str, ...] = ()
        order_id = None
        review = self._rule(ReviewChannel)
        if review is not None and review.tagged(facts):
            prefixes = self.settings.buyers.marked_prefixes
            keys = tuple(dict.fromkeys(key for r in buyers for key in recipient_keys(r, prefixes)))
            order_id = facts.order_id if review.settings.one_per_order else None
        ids: tuple[str, ...] = ()
        reply = self._rule(ReplyChannel)
        if reply is not None and reply.settings.check is ReplyCheck.THREAD and reply.possible(facts.sender):
            ids = referenced_ids(facts)
        return StoreQuestions(buyer_keys=keys, order_id=order_id, message_ids=ids)

    def store_records(self, facts: MessageFacts, decisions: Iterable[Decision]) -> tuple[StoreRecord, ...]:
        """What the store must remember once the message is accepted: which buyer got the review request
        for which order (to refuse a second one and to resolve Amazon's opt-out notices), and, for the
        thread check, which messages buyers sent the shop."""
        decisions = tuple(decisions)
        records: list[StoreRecord] = []
        prefixes = self.settings.buyers.marked_prefixes
        if facts.order_id:
            for decision in decisions:
                if decision.channel is Channel.REVIEW and not decision.refused:
                    records.extend(ReviewSent(facts.order_id, key)
                                   for key in recipient_keys(decision.recipient, prefixes)[:1])  # fmt: skip
        reply = self._rule(ReplyChannel)
        if reply is not None and reply.settings.enabled and reply.settings.check is ReplyCheck.THREAD:
            to_shop = any(not d.recipient.is_buyer and not d.refused for d in decisions)
            own_ids = [i for value in facts.header_values("message-id")[:1] for i in message_ids(value)][:1]
            if to_shop and own_ids:
                records.extend(BuyerMessage(own_ids[0], key) for key in reply.buyer_senders(facts))
        return tuple(records)

    def fast_path_possible(self) -> bool:
        """Whether any message at all can leave the milter at DATA under these settings (``accepts_at_data``).

        Not with the reply channel's thread check: it records the messages buyers send the shop (From:
        and Message-ID), which are mail without buyer recipients. Not with a tagged channel open to every
        sender: then any message may carry the secret, and only the end of message deletes it. When this
        is False, DATA stays a no-reply step on unix sockets (nothing to decide there)."""
        reply = self._rule(ReplyChannel)
        if reply is not None and reply.settings.enabled and reply.settings.check is ReplyCheck.THREAD:
            return False
        review = self._rule(ReviewChannel)
        return review is None or not review.settings.enabled or bool(review.settings.allowed_senders)

    def accepts_at_data(self, sender: Address, recipients: Iterable[Recipient]) -> bool:
        """Whether this message may be accepted at DATA, before its headers: the MTA then sends no header,
        body or end-of-message events for it (the fast path for ordinary mail, 7 in 10 messages of a shop).

        Only when no recipient still in the envelope is a buyer (every decision is then not-buyer, which
        reads no header), no rule reads mail without buyers (``fast_path_possible``), the message is no
        bounce whose body is searched for the review secret (``secret_to_find``), and the sender
        cannot use a tagged channel: mail that may carry the review secret still goes to the end of
        message, where the tag is deleted (``stripped_headers``). A tag on other mail is removed by the
        shipped ``smtp_header_checks`` when it leaves by SMTP (docs/fast-path.md)."""
        if any(recipient.is_buyer for recipient in recipients) or not self.fast_path_possible():
            return False
        if self.secret_to_find(MessageFacts(sender=sender, path=SubmissionPath.UNKNOWN)) is not None:
            return False  # a bounce: its body is searched for the secret (secret_scan.py)
        return not any(callable(getattr(rule, "bad_token", None)) and rule.possible(sender) for rule in self.rules)

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
        if recipient.unresolved:
            return Decision(recipient, Outcome.REFUSE, Reason.UNRESOLVED_ROUTE)
        if any(rule.possible(sender) for rule in self.rules):
            return None
        return Decision(recipient, Outcome.REFUSE, Reason.BUYER_MAIL)

    def decide(self, facts: MessageFacts, recipient: Recipient) -> Decision:
        """The final decision for one recipient at end of message."""
        if not recipient.is_buyer:
            return Decision(recipient, Outcome.DELIVER, Reason.NOT_BUYER)
        if recipient.unresolved or _unmark_unsure(facts, recipient):
            return Decision(recipient, Outcome.REFUSE, Reason.UNRESOLVED_ROUTE)
        for rule in self.rules:
            if rule.grants(facts, recipient):
                veto = rule.veto(facts, recipient)
                if veto is not None:
                    return Decision(recipient, Outcome.REFUSE, veto, rule.channel)
                if not recipient.marked:
                    return Decision(recipient, Outcome.DELIVER, Reason.CHANNEL, rule.channel)
                if recipient.unmarked is None:
                    return Decision(recipient, Outcome.REFUSE, Reason.MARKER_ONLY, rule.channel)
                return Decision(recipient, Outcome.DELIVER_UNMARKED, Reason.CHANNEL, rule.channel)
        return Decision(recipient, Outcome.REFUSE, Reason.BUYER_MAIL)

    def bad_token_channels(self, facts: MessageFacts) -> tuple[Channel, ...]:
        """Channels whose tag the message carries with a wrong secret (a fact for metrics, not a decision)."""
        return tuple(
            rule.channel for rule in self.rules if isinstance(rule, TaggedChannelRule) and rule.bad_token(facts)
        )

    def rcpt_reject(self, recipient: Recipient, reason: Reason = Reason.BUYER_MAIL) -> Reject:
        return Reject(refusal_text(self.settings.text_for(reason), [recipient]))

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
    """A text that cleanup(8) internalises to the queued recipient (``Recipient.delete_forms``)."""


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
    """What to tell the MTA at end of message: refuse it whole, or accept it with these changes.

    A refused message still carries its header deletions: on the sendmail(1) path Postfix bounces it to
    the sender with the original attached, and header edits requested before the REJECT are applied to
    the queue file it bounces (measured on Postfix 3.7.11), so the review secret stays out of the bounce."""

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
    header_changes: list[Change] = []
    for name in policy.stripped_headers():
        # Delete from the last field backwards so the remaining indexes stay valid.
        for index in range(header_counts.get(name.casefold(), 0), 0, -1):
            header_changes.append(DeleteHeader(name, index))
    refused = [d for d in decisions if d.refused]
    delivered = [d for d in decisions if not d.refused]
    # Never tell a sender that a recipient was refused unless it really is removed: a delete that Postfix
    # cannot be shown to match (sendmail(1) path, see Recipient.delete_exact) refuses the message whole.
    deletes_certain = all(d.recipient.delete_exact for d in refused)
    if refused and (not delivered or settings.mixed_recipients is MixedRecipients.REJECT or not deletes_certain):
        return MessagePlan(reject=Reject(grouped_refusal_text(settings, refused)), changes=tuple(header_changes))
    changes: list[Change] = []
    for decision in refused:
        changes.extend(DeleteRecipient(text) for text in decision.recipient.delete_forms)
        changes.append(
            AddRecipient(
                refusal_address(decision.recipient, decision.reason, settings.bounce_domain),
                orcpt_parameter(decision.recipient),
            )
        )
    for decision in delivered:
        if decision.outcome is Outcome.DELIVER_UNMARKED and decision.recipient.unmarked:
            # Where the delete is not certain (sendmail(1) path), every text that can match is deleted; a
            # marked copy that survives (source route, canonical_maps) goes to the marked address, which is
            # no relay address: the buyer gets only the unmarked copy (docs/recipients.md).
            changes.extend(DeleteRecipient(text) for text in decision.recipient.delete_forms)
            changes.append(AddRecipient(f"<{decision.recipient.unmarked}>"))
    return MessagePlan(reject=None, changes=(*changes, *header_changes))


def refusal_text(reply_text: str, recipients: list[Recipient]) -> str:
    """Reply text naming the refused recipients, so a bounce of the whole message says who and why."""
    names = ", ".join(f"<{r.address.text()}>" for r in recipients[:3])
    if len(recipients) > 3:
        names += f" and {len(recipients) - 3} more"
    text = f"{names}: {reply_text}" if names else reply_text
    return _reply_safe(text)


def _reply_safe(text: str) -> str:
    # libmilter drops replies containing a single '%'; keep the text printable ASCII. Most texts already
    # are, and checking that with str methods is ~10x cheaper than rebuilding them character by character.
    if text.isascii() and text.isprintable() and "%" not in text:
        return text[:900]
    return "".join(char if " " <= char <= "~" and char != "%" else "?" for char in text)[:900]


def grouped_refusal_text(settings: PolicySettings, refused: Iterable[Decision]) -> str:
    """One reply for a whole refused message: the refused recipients grouped by their reason's text."""
    groups: dict[str, list[Recipient]] = {}
    for decision in refused:
        groups.setdefault(settings.text_for(decision.reason), []).append(decision.recipient)
    return _reply_safe("; ".join(refusal_text(text, recipients) for text, recipients in groups.items()))



__all__ = [
    "AddRecipient",
    "BuyerMessage",
    "CHANNEL_RULES",
    "Channel",
    "ChannelRule",
    "CriticalChannel",
    "CriticalChannelSettings",
    "Decision",
    "DeleteHeader",
    "DeleteRecipient",
    "MessageFacts",
    "MessagePlan",
    "MissingOrderId",
    "MixedRecipients",
    "Mode",
    "Outcome",
    "Policy",
    "PolicySettings",
    "Reason",
    "Reject",
    "ReplyChannel",
    "ReplyChannelSettings",
    "ReplyCheck",
    "ReviewChannel",
    "ReviewChannelSettings",
    "ReviewSent",
    "StoreQuestions",
    "StoreRecord",
    "SubmissionPath",
    "TaggedChannelRule",
    "format_address",
    "plan_message",
    "possible_decisions",
    "refusal_address",
    "tagged_channels",
]
