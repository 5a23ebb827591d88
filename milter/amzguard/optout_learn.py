"""Learning opt-outs from Amazon's notices: "We were unable to deliver the message you sent for order [id]
because the buyer has chosen to opt out of receiving unsolicited messages from sellers."

Amazon sends that notice after the fact, and it is the only way a seller learns of an opt-out. It names the
order id; whether it also carries the buyer's relay address or the returned original is not known. So a
notice is resolved in this order, and never guessed:

1. the buyer address(es) in the returned original (its To/Cc), if the notice carries one;
2. buyer addresses written in the notice's own text;
3. the order id, looked up among the review requests amzguard let through (``review_sent`` in the store).

A message that is not recognised as an opt-out notice, or a notice that names no buyer amzguard can find
(several candidates, or an order it never saw), is reported and changes nothing.

The wording below follows the English notice quoted by several seller tools (docs/amazon-facts.md). The German,
French, Italian and Spanish phrases are **our own plausible translations, not Amazon's text**: when a real
notice is not recognised, add its key phrase to ``NOTICE_PHRASES`` (a unit test guards each language).

Parsing is pure; only ``learn`` touches the store.
"""

from __future__ import annotations

import email
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.message import Message
from email.utils import getaddresses
from enum import StrEnum

from .address import BuyerPatterns, buyer_key, classify_recipient, is_shared_buyer
from .policy.restriction import Restriction, restriction_notice
from .store import OptOut, Store
from .orderid import decoded_header, find_order_id, part_text

# Key phrases per language, matched on the notice's text case folded with white space runs made single
# spaces. One phrase is enough; the order id or a buyer address must be found too.
NOTICE_PHRASES: dict[str, tuple[re.Pattern[str], ...]] = {
    "en": (
        re.compile(r"buyer has (?:chosen|decided|elected) to opt[ -]?out of receiving unsolicited messages"),
        re.compile(r"buyer opted out (?:from|of) receiving (?:this message|unsolicited messages)"),
    ),
    # Made-up translations (see the module docstring): key words of "opted out of unsolicited messages".
    "de": (re.compile(r"keine unaufgeforderten nachrichten (?:mehr )?von verkäufern"),),
    "fr": (re.compile(r"ne (?:pas|plus) recevoir de messages non sollicités"),),
    "it": (re.compile(r"non ricevere (?:più )?messaggi non richiesti"),),
    "es": (re.compile(r"no recibir (?:más )?mensajes no solicitados"),),
}

MAX_DEPTH = 3
"""A notice forwarded as an attachment is one level down; its returned original one more."""

_ADDRESS_RE = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+")


class Outcome(StrEnum):
    LEARNED = "learned"
    KNOWN = "already registered"
    UNRECOGNISED = "not an opt-out notice"
    UNRESOLVED = "unresolved"
    RESTRICTED = "restriction recorded"
    """Amazon's notice that the account was restricted from proactive messages (policy/restriction.py)."""
    SHARED = "shared address, not registered"
    """The notice names the shared Amazon Business address (``address.is_shared_buyer``): every business
    buyer may arrive under it, so one buyer's opt-out must not silence all of them."""


@dataclass(frozen=True, slots=True)
class Notice:
    """What one recognised notice says (before the store is asked)."""

    language: str
    order_id: str | None
    buyers: tuple[str, ...]
    """Register keys of buyer addresses in the returned original, else in the notice text; may be empty."""


@dataclass(frozen=True, slots=True)
class LearnResult:
    outcome: Outcome
    label: str
    """Which message this is about: its Message-ID or subject."""
    buyer: str | None = None
    order_id: str | None = None
    language: str | None = None
    detail: str = ""


# -- reading input ----------------------------------------------------------------------------------


def split_messages(data: bytes) -> list[Message]:
    """One RFC 5322 message, or every message of an mbox (``From `` separator lines; Postfix's pipe with
    ``flags=F`` writes one such line too)."""
    if not data.startswith(b"From "):
        return [email.message_from_bytes(data)] if data.strip() else []
    chunks: list[list[bytes]] = []
    previous_blank = True
    for line in data.splitlines(keepends=True):
        if line.startswith(b"From ") and previous_blank:
            chunks.append([])
        else:
            if chunks:
                # mboxrd quoting: ">From " (any number of '>') lost one '>' when written
                chunks[-1].append(line[1:] if re.match(rb">+From ", line) else line)
        previous_blank = line in (b"\n", b"\r\n")
    return [email.message_from_bytes(b"".join(chunk)) for chunk in chunks if b"".join(chunk).strip()]


# -- recognising a notice ---------------------------------------------------------------------------


def _flat(text: str) -> str:
    return " ".join(text.casefold().split())


def _own_text_and_attachments(message: Message) -> tuple[str, list[Message]]:
    """The message's own readable text (subject and text parts) and the messages attached to it."""
    texts = [decoded_header(str(message.get("Subject", "")))]
    attached: list[Message] = []

    def visit(part: Message) -> None:
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            attached.extend(sub for sub in part.get_payload() if isinstance(sub, Message))
        elif ctype == "text/rfc822-headers":
            attached.append(email.message_from_string(part_text(part)))
        elif part.is_multipart():
            for sub in part.get_payload():
                if isinstance(sub, Message):
                    visit(sub)
        elif part.get_content_maintype() == "text":
            texts.append(part_text(part))

    visit(message)
    return "\n".join(texts), attached


def _language(text: str) -> str | None:
    flat = _flat(text)
    for language, phrases in NOTICE_PHRASES.items():
        if any(phrase.search(flat) for phrase in phrases):
            return language
    return None


def _buyer_keys(addresses: Iterable[str], patterns: BuyerPatterns) -> tuple[str, ...]:
    keys = []
    for address in addresses:
        recipient = classify_recipient(address, patterns)
        if recipient.is_buyer:
            keys.append(buyer_key(recipient.address, patterns.marked_prefixes))
    return tuple(dict.fromkeys(key for key in keys if key))


def _original_recipients(original: Message) -> list[str]:
    names = ("To", "Cc", "Delivered-To", "X-Original-To")
    fields = [str(value) for name in names for value in original.get_all(name, [])]
    return [address for _, address in getaddresses(fields) if address]


def read_notice(message: Message, patterns: BuyerPatterns, depth: int = 0) -> Notice | None:
    """The opt-out notice in ``message`` (itself, or forwarded as an attachment), or None."""
    text, attached = _own_text_and_attachments(message)
    language = _language(text)
    if language is None:
        if depth < MAX_DEPTH:
            for inner in attached:
                found = read_notice(inner, patterns, depth + 1)
                if found is not None:
                    return found
        return None
    originals_text = []
    buyers: tuple[str, ...] = ()
    for original in attached:
        buyers = buyers or _buyer_keys(_original_recipients(original), patterns)
        original_text, _ = _own_text_and_attachments(original)
        originals_text.append(original_text)
    if not buyers:
        buyers = _buyer_keys(_ADDRESS_RE.findall(text), patterns)
    order_id = find_order_id(text) or next(filter(None, (find_order_id(t) for t in originals_text)), None)
    return Notice(language=language, order_id=order_id, buyers=buyers)


def _label(message: Message) -> str:
    message_id = " ".join(str(message.get("Message-ID", "")).split())
    if message_id:
        return message_id
    subject = " ".join(decoded_header(str(message.get("Subject", ""))).split())
    return f'"{subject[:80]}"' if subject else "(no Message-ID, no subject)"


# -- resolving and recording ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RestrictionNotices:
    """How a restriction notice reads (``restriction.notice_phrases``) and how long it holds."""

    phrases: tuple[str, ...]
    days: int


def _restriction(message: Message, notices: RestrictionNotices, store: Store) -> LearnResult | None:
    """A restriction notice recorded (per marketplace the notice names, else all), or None if it is none."""
    text, attached = _own_text_and_attachments(message)
    senders = [address for _, address in getaddresses([str(v) for v in message.get_all("From", [])])]
    marketplaces = restriction_notice(text, notices.phrases, (a.rpartition("@")[2] for a in senders))
    if marketplaces is None:
        return None
    until = int(store.clock()) + notices.days * 86400
    counts = store.restrict(Restriction(m, until, "notice") for m in marketplaces)
    detail = f"{', '.join(marketplaces)} for {notices.days} days" + ("" if counts.changed else " (already held longer)")
    return LearnResult(Outcome.RESTRICTED, _label(message), detail=detail)


def learn(messages: Iterable[Message], store: Store, patterns: BuyerPatterns,
          restrictions: RestrictionNotices | None = None) -> Iterator[LearnResult]:  # fmt: skip
    """Record the opt-out of each recognised notice, or the restriction of a restriction notice; yield one
    result per message.

    Raises ``StoreError`` when the store cannot be used (the caller tempfails: nothing is lost).
    """
    for message in messages:
        label = _label(message)
        restricted = _restriction(message, restrictions, store) if restrictions else None
        if restricted is not None:
            yield restricted
            continue
        notice = read_notice(message, patterns)
        if notice is None:
            yield LearnResult(Outcome.UNRECOGNISED, label)
            continue
        buyer, detail = _resolve(notice, store)
        if buyer is None:
            yield LearnResult(Outcome.UNRESOLVED, label, None, notice.order_id, notice.language, detail)
            continue
        if is_shared_buyer(buyer, patterns):
            yield LearnResult(Outcome.SHARED, label, buyer, notice.order_id, notice.language, detail)
            continue
        counts = store.add([OptOut(buyer, order_id=notice.order_id, source="notice")])
        outcome = Outcome.LEARNED if counts.changed else Outcome.KNOWN
        yield LearnResult(outcome, label, buyer, notice.order_id, notice.language, detail)


def _resolve(notice: Notice, store: Store) -> tuple[str | None, str]:
    """The one buyer a notice is about, and how it was found (or why not)."""
    by_order = store.buyer_for_order(notice.order_id) if notice.order_id else None
    if len(notice.buyers) == 1:
        return notice.buyers[0], "address in the notice"
    if len(notice.buyers) > 1:
        if by_order in notice.buyers:
            return by_order, "address in the notice, chosen by the order"
        return None, f"several buyer addresses in the notice ({len(notice.buyers)}) and the order does not pick one"
    if by_order is not None:
        return by_order, "order id resolved through the review requests sent"
    if notice.order_id is None:
        return None, "neither an order id nor a buyer address in the notice"
    return None, f"order {notice.order_id} is not among the review requests amzguard remembers, and no address"
