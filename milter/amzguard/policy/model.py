"""What the policy reasons about: paths, modes, channels, outcomes, reasons, settings, the facts of one
message, a decision, and what the store is asked and told. Plain frozen data, no logic but lookups."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from ..address import Address, BuyerPatterns, Recipient
from ..content import ContentSettings, Finding
from ..orderid import decoded_header
from .senders import ApprovedSenders

if TYPE_CHECKING:
    from .limits import LimitSettings
    from .recognise import RecogniseEntry

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


class RecognisedBy(StrEnum):
    """How a review request was recognised, strongest first (the decision log's ``recognised_by``):
    the tag needs the secret, a SASL login its password; a client address is met by every process on
    that host, an envelope sender by every local user and relay client, a subject by every sender."""

    TAG = "tag"
    SASL = "sasl"
    CLIENT = "client"
    SENDER = "sender"
    SUBJECT = "subject"


PROACTIVE_CHANNELS = frozenset({Channel.REVIEW, Channel.CRITICAL})
"""Messages the seller starts: Amazon wants the order id in each (the ``missing-order-id`` content rule)."""


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
    """A review request or critical message without an order id, with ``content.rules.missing_order_id:
    refuse`` (the only refusing content finding; with others the reason is ``content``)."""
    UNRESOLVED_ROUTE = "unresolved-route"
    """A buyer address in a routing form (``%``, ``!``, ``@`` in the local part) whose destination is not
    known exactly: refused whatever channel would grant it, because amzguard cannot say which mailbox it
    would judge (fail closed, see address.routed_forms)."""
    CONTENT = "content"
    """Granted by a channel, but the content breaks Amazon's rules (content rules with action ``refuse``;
    the decision's findings say which)."""
    MESSAGING_RESTRICTED = "messaging-restricted"
    """A review request or critical message to a marketplace where Amazon restricted the account from
    proactive messages (policy/restriction.py); replies still pass."""
    SENDER_NOT_APPROVED = "sender-not-approved"
    """A message to a buyer's relay address whose envelope sender or From: is not in
    ``buyers.approved_senders`` (policy/senders.py): Amazon would refuse it. At RCPT on the SMTP path when
    the envelope sender alone already fails, whatever channel would grant it."""


class MissingOrderId(StrEnum):
    """The old ``channels.review.missing_order_id`` key, now ``content.rules.missing_order_id``."""

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
    recognise: tuple[RecogniseEntry, ...] = ()
    """Review requests recognised without the tag (policy/recognise.py); empty: only the tag. With
    entries the secret is optional (``token`` empty: the tag is off)."""


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
    markers: tuple[str, ...]
    """One of them must appear in the subject, anywhere, in any letter case, brackets included."""
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
    content: ContentSettings
    """What a message a channel grants to a buyer may contain (judged by ``transaction.Transaction``)."""
    limits: LimitSettings
    """Amazon's daily limit of proactive messages per marketplace (policy/limits.py; empty: off)."""
    approved_senders: ApprovedSenders
    """Who may write to buyers' relay addresses (``buyers.approved_senders``; empty: not checked)."""

    def text_for(self, reason: Reason) -> str:
        for listed, text in self.reason_texts:
            if listed is reason:
                return text
        return self.reply_text


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a message comes from beyond its envelope sender, as the MTA says it (None: not known)."""

    sasl_login: str | None = None
    """Postfix's ``{auth_authen}`` at MAIL FROM: None when the client did not authenticate, when the macro
    is not sent (``milter_mail_macros``), and on the sendmail(1) path."""
    client: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    """The SMTP client's address (the connect callback's, else ``{client_addr}``); None on the sendmail(1)
    path, where Postfix's cleanup reports a made-up localhost/127.0.0.1 for every local submission."""


NO_ORIGIN = Origin()


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
    origin: Origin = NO_ORIGIN
    """SASL login and client address (for ``channels.review.recognise``)."""
    restricted: frozenset[str] = frozenset()
    """Marketplaces under a messaging restriction now (policy/restriction.py; ``*``: all)."""
    _subject: str | None = field(default=None, init=False, repr=False, compare=False)
    """``subject()`` once decoded: several rules read it per message (review entries, the order id, the
    critical markers, reply prefixes), and decoding an RFC 2047 subject costs 5.7 us (0.7 us a plain one).
    ``dataclasses.replace`` starts it afresh, so facts with other headers never see a stale one."""

    def header_values(self, name: str) -> list[str]:
        wanted = name.casefold()
        return [value for field_name, value in self.headers if field_name.casefold() == wanted]

    def subject(self) -> str:
        """The first Subject field, RFC 2047 decoded; empty if there is none."""
        subject = self._subject
        if subject is None:
            values = self.header_values("subject")
            subject = " ".join(decoded_header(values[0]).split()) if values else ""
            object.__setattr__(self, "_subject", subject)  # a cache of a pure function of the frozen headers
        return subject


@dataclass(frozen=True, slots=True)
class Decision:
    recipient: Recipient
    outcome: Outcome
    reason: Reason
    channel: Channel = Channel.NONE
    findings: tuple[Finding, ...] = ()
    """Content findings for a buyer a channel granted (every action but ``off``)."""
    recognised_by: tuple[RecognisedBy, ...] = ()
    """How the granting channel recognised the message (the review channel: tag, or an entry's criteria)."""

    @property
    def refused(self) -> bool:
        return self.outcome is Outcome.REFUSE


@dataclass(frozen=True, slots=True)
class StoreQuestions:
    """What the adapter must look up in the store before the policy can decide."""

    buyer_keys: tuple[str, ...] = ()
    """Is any of these in the opt-out register?"""
    order_id: str | None = None
    """Did this order already have a review request?"""
    message_ids: tuple[str, ...] = ()
    """Which buyers sent these messages?"""
    restrictions: bool = False
    """Which marketplaces are under a messaging restriction?"""

    def __bool__(self) -> bool:
        return bool(self.buyer_keys or self.order_id or self.message_ids or self.restrictions)

    def merged(self, other: StoreQuestions) -> StoreQuestions:
        """Both rules' questions as one look-up."""
        return StoreQuestions(
            buyer_keys=tuple(dict.fromkeys(self.buyer_keys + other.buyer_keys)),
            order_id=self.order_id or other.order_id,
            message_ids=tuple(dict.fromkeys(self.message_ids + other.message_ids)),
            restrictions=self.restrictions or other.restrictions,
        )


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


@dataclass(frozen=True, slots=True)
class ProactiveSent:
    """``count`` proactive messages (one per buyer) go to ``marketplace`` today (the store's UTC day),
    if the day's count stays within ``limit`` (None: counted whatever the count, see policy/limits.py)."""

    marketplace: str
    count: int
    limit: int | None


StoreRecord = ReviewSent | BuyerMessage | ProactiveSent
