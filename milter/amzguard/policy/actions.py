"""Actions: what the adapter applies through libmilter, and how decisions become one plan per message."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..address import Recipient
from ..content import ContentAction
from .visible_recipients import marked_key, rewrite_field
from .model import REFUSAL_CODE, REFUSAL_STATUS, Decision, MessageFacts, MixedRecipients, Mode, Outcome, PolicySettings, Reason

if TYPE_CHECKING:
    from .decide import Policy

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


@dataclass(frozen=True, slots=True)
class ChangeHeader:
    """Replace a field's value (smfi_chgheader): the visible To:/Cc: that named a marked address."""

    name: str
    index: int
    """1-based among the fields of that name, as smfi_chgheader counts."""
    value: str


@dataclass(frozen=True, slots=True)
class AddressField:
    """A To:/Cc: field as the message has it, collected only when some recipient may be unmarked."""

    name: str
    index: int
    """1-based among the fields of that name."""
    value: str
    complete: bool = True
    """False when the transaction kept only part of it (too long): such a field is never rewritten."""


Change = DeleteRecipient | AddRecipient | DeleteHeader | ChangeHeader


@dataclass(frozen=True, slots=True)
class MessagePlan:
    """What to tell the MTA at end of message: refuse it whole, or accept it with these changes.

    A refused message still carries its header deletions: on the sendmail(1) path Postfix bounces it to
    the sender with the original attached, and header edits requested before the REJECT are applied to
    the queue file it bounces (measured on Postfix 3.7.11), so the review secret stays out of the bounce."""

    reject: Reject | None
    changes: tuple[Change, ...] = ()
    kept_fields: tuple[str, ...] = ()
    """``To``/``Cc`` fields naming an unmarked recipient's marked address that could not be rewritten
    safely (``Name[index]``): they stay as they are; the adapter logs and counts them."""


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
    policy: Policy,
    facts: MessageFacts,
    decisions: tuple[Decision, ...],
    header_counts: dict[str, int],
    address_fields: tuple[AddressField, ...] = (),
) -> MessagePlan:
    """Turn the end-of-message decisions into one plan.

    ``decisions`` are for the recipients still in the envelope (those refused at RCPT are gone already);
    ``header_counts`` gives, per lower-case header name, how many fields of that name the message has.
    """
    settings = policy.settings
    if settings.mode is Mode.MONITOR:
        return MessagePlan(reject=None)
    header_changes = _deleted_headers(policy.stripped_headers(), header_counts)
    refused = [d for d in decisions if d.refused]
    delivered = [d for d in decisions if not d.refused]
    # Never tell a sender that a recipient was refused unless it really is removed: a delete that Postfix
    # cannot be shown to match (sendmail(1) path, see Recipient.delete_exact) refuses the message whole.
    deletes_certain = all(d.recipient.delete_exact for d in refused)
    if refused and (not delivered or settings.mixed_recipients is MixedRecipients.REJECT or not deletes_certain):
        return MessagePlan(reject=Reject(grouped_refusal_text(settings, refused)), changes=tuple(header_changes))
    changes: list[Change] = []
    unmarked: dict[str, str] = {}
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
            marked = decision.recipient.address
            unmarked[marked_key(marked.local, marked.domain)] = decision.recipient.unmarked
    field_changes, kept = _rewritten_fields(address_fields, unmarked)
    # Content findings with action remove (List-Unsubscribe): the fields go, the message passes.
    removed = {f.header for d in delivered for f in d.findings if f.action is ContentAction.REMOVE and f.header}
    content_changes = _deleted_headers(sorted(removed, key=str.casefold), header_counts)
    return MessagePlan(
        reject=None, changes=(*changes, *field_changes, *header_changes, *content_changes), kept_fields=kept
    )


def _rewritten_fields(
    fields: tuple[AddressField, ...], unmarked: dict[str, str]
) -> tuple[list[Change], tuple[str, ...]]:
    """The visible To:/Cc: follow the envelope: each field naming a marked address that was unmarked."""
    if not unmarked:
        return [], ()
    changes: list[Change] = []
    kept: list[str] = []
    for field in fields:
        rewrite = rewrite_field(field.value, unmarked)
        if rewrite.value is not None and field.complete:
            changes.append(ChangeHeader(field.name, field.index, rewrite.value))
        elif rewrite.replaced:
            kept.append(f"{field.name}[{field.index}]")
    return changes, tuple(kept)


def _deleted_headers(names: Iterable[str], header_counts: dict[str, int]) -> list[Change]:
    """Every field of these names, deleted from the last field backwards so the remaining indexes stay valid."""
    changes: list[Change] = []
    for name in dict.fromkeys(names):
        for index in range(header_counts.get(name.casefold(), 0), 0, -1):
            changes.append(DeleteHeader(name, index))
    return changes


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


def decision_text(settings: PolicySettings, decision: Decision) -> str:
    """The refusal text of one decision: its reason's text, and for ``content`` the refusing findings."""
    text = settings.text_for(decision.reason)
    if decision.reason is Reason.CONTENT:
        refusing = [f.text() for f in decision.findings if f.action is ContentAction.REFUSE]
        if refusing:
            more = f" (and {len(refusing) - MAX_REPLY_FINDINGS} more)" if len(refusing) > MAX_REPLY_FINDINGS else ""
            text = f"{text}: {'; '.join(refusing[:MAX_REPLY_FINDINGS])}{more}"
    return text


MAX_REPLY_FINDINGS = 4
"""Findings named in a refusal (a marketing template has a dozen; the decision line and lint list all)."""


def grouped_refusal_text(settings: PolicySettings, refused: Iterable[Decision]) -> str:
    """One reply for a whole refused message: the refused recipients grouped by their reason's text."""
    groups: dict[str, list[Recipient]] = {}
    for decision in refused:
        groups.setdefault(decision_text(settings, decision), []).append(decision.recipient)
    return _reply_safe("; ".join(refusal_text(text, recipients) for text, recipients in groups.items()))
